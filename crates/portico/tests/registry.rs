//! The service registry end to end on real processes (requirements N4, N6, D3): test
//! services register through their cluster's agent, serve traffic through the gateway
//! by `lb://service` and by an upstream in registry mode selecting a version, stay
//! in the pool while they heartbeat, leave it when they stop (after their TTL) or
//! deregister, are served only in the namespaces they registered into, and stay
//! served from the last known nodes while the store is down; one service name in two
//! namespaces is served by each namespace's own nodes; on etcd and on Redis.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::spine::{Spine, StoreKind, AGENT_TOKEN};
use testkit::upstream::NamedUpstream;

/// Registers through the agent of cluster `c1` with the agent token (the registry
/// token is covered by the agent's own tests).
async fn register(spine: &Spine, service: &str, body: Value) -> String {
    let (status, answer) = agent_call(
        spine,
        "POST",
        &format!("/services/{service}/nodes"),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["lease"].as_str().unwrap().to_owned()
}

async fn agent_call(
    spine: &Spine,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("{}/agent/apiserver/v1/registry{path}", spine.agent_urls[0]);
    let mut req = spine
        .http
        .request(method.parse().unwrap(), url)
        .bearer_auth(AGENT_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("agent reachable");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Which upstreams answer `path` on `gateway` over `n` requests (502s as "502").
async fn answering(spine: &Spine, gateway: &str, path: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let (status, body) = spine.via(gateway, path).await;
        seen.insert(if status == 200 {
            body
        } else {
            status.to_string()
        });
    }
    seen
}

async fn until_answering(spine: &Spine, gateway: &str, path: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    spine
        .until(&format!("{path} answered by {want:?}"), || async {
            (answering(spine, gateway, path, 8).await == want).then_some(())
        })
        .await;
}

/// Heartbeats `lease` every 500 ms until dropped.
fn keep_alive(spine: &Spine, lease: &str) -> tokio::task::JoinHandle<()> {
    let url = format!(
        "{}/agent/apiserver/v1/registry/leases/{lease}",
        spine.agent_urls[0]
    );
    let http = spine.http.clone();
    tokio::spawn(async move {
        loop {
            let _ = http.put(&url).bearer_auth(AGENT_TOKEN).send().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_etcd() {
    registered_services_serve_until_they_stop_heartbeating(StoreKind::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_redis() {
    registered_services_serve_until_they_stop_heartbeating(StoreKind::Redis).await;
}

async fn registered_services_serve_until_they_stop_heartbeating(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let bin = env!("CARGO_BIN_EXE_portico").as_ref();
    let mut spine = Spine::start_on(kind, bin, dir.path(), &db).await;
    let v1 = NamedUpstream::start("orders-v1").await;
    let v2 = NamedUpstream::start("orders-v2").await;
    let gw = spine.gw_1a[0].clone();

    // Routes to a service nobody registered yet: valid config, 502 until it is.
    spine
        .put(
            "c1",
            "instance_a",
            "routes",
            json!({"id": "orders", "paths": ["/orders/*"], "upstream_id": "lb://orders"}),
        )
        .await;
    spine
        .put(
            "c1",
            "instance_a",
            "upstreams",
            json!({"id": "orders-canary",
                   "discovery": {"type": "registry", "service": "orders", "metadata": {"version": "v2"}}}),
        )
        .await;
    spine
        .put(
            "c1",
            "instance_a",
            "routes",
            json!({"id": "canary", "paths": ["/canary/*"], "upstream_id": "orders-canary"}),
        )
        .await;
    spine
        .put(
            "c1",
            "instance_a",
            "routes",
            json!({"id": "payments", "paths": ["/payments/*"], "upstream_id": "lb://payments"}),
        )
        .await;
    spine.all_serve(&[&gw], "/orders/1", (502, "")).await;

    // A bad upstream in registry mode is refused by field, and nothing changes.
    let (status, body) = spine
        .admin(
            "PUT",
            "/clusters/c1/instances/instance_a/upstreams/bad",
            Some(
                json!({"id": "bad", "nodes": [{"host": "127.0.0.1", "port": 1}],
                        "discovery": {"type": "registry", "service": "bad name"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["nodes", "discovery.service"], "{body}");

    // v1 registers (default namespace), then v2 into default and team-b.
    let lease_v1 = register(
        &spine,
        "orders",
        json!({"host": "127.0.0.1", "port": v1.port(), "metadata": {"version": "v1"}, "ttl_secs": 5}),
    )
    .await;
    let heartbeat_v1 = keep_alive(&spine, &lease_v1);
    until_answering(&spine, &gw, "/orders/1", &["orders-v1"]).await;
    spine.all_serve(&[&gw], "/canary/1", (502, "")).await;
    let lease_v2 = register(
        &spine,
        "orders",
        json!({"host": "127.0.0.1", "port": v2.port(), "metadata": {"version": "v2"},
               "namespaces": "default,team-b", "ttl_secs": 5}),
    )
    .await;
    let heartbeat_v2 = keep_alive(&spine, &lease_v2);
    until_answering(&spine, &gw, "/orders/1", &["orders-v1", "orders-v2"]).await;
    until_answering(&spine, &gw, "/canary/1", &["orders-v2"]).await;
    // Both nodes of the instance follow, not only the one asked.
    until_answering(&spine, &spine.gw_1a[1].clone(), "/canary/1", &["orders-v2"]).await;

    // A registration into another namespace is not served here.
    let lease_pay = register(
        &spine,
        "payments",
        json!({"host": "127.0.0.1", "port": v1.port(), "namespaces": "team-b", "ttl_secs": 30}),
    )
    .await;
    let (_, listed) = agent_call(&spine, "GET", "/services?service=payments", None).await;
    assert_eq!(listed["items"][0]["namespace"], "team-b", "{listed}");
    assert_eq!(
        answering(&spine, &gw, "/payments/1", 4).await,
        ["502".to_owned()].into()
    );

    // The admin lists what is registered into a namespace, across clusters.
    let (status, listed) = spine
        .admin("GET", "/namespaces/default/registry", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["unreachable"], json!([]), "{listed}");
    let items = listed["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "only orders is in default, and only in c1: {listed}"
    );
    assert_eq!(
        (&items[0]["cluster"], &items[0]["service"]),
        (&json!("c1"), &json!("orders"))
    );
    let mut versions: Vec<&str> = items[0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["version"].as_str().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, ["v1", "v2"]);
    let (status, _) = spine
        .admin("GET", "/namespaces/no-such/registry", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    same_service_in_two_namespaces(&spine).await;

    // v1 stops heartbeating: gone from the pool once its TTL (5 s) has passed.
    heartbeat_v1.abort();
    let stopped = Instant::now();
    spine
        .until("v1 leaves the pool after its TTL", || async {
            (answering(&spine, &gw, "/orders/1", 8).await == ["orders-v2".to_owned()].into())
                .then_some(())
        })
        .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(3),
        "v1 left before its TTL"
    );
    let (status, _) = agent_call(&spine, "PUT", &format!("/leases/{lease_v1}"), None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an expired registration must register again"
    );

    // Through the admin: registering (namespaces checked), heartbeating, deregistering.
    let (status, body) = spine
        .admin(
            "POST",
            "/clusters/c1/registry/services/orders/nodes",
            Some(json!({"host": "127.0.0.1", "port": v1.port(), "namespaces": "no-such"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "namespaces", "{body}");
    let (status, answer) = spine
        .admin(
            "POST",
            "/clusters/c1/registry/services/orders/nodes",
            Some(json!({"host": "127.0.0.1", "port": v1.port(), "ttl_secs": 30})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let lease = answer["lease"].as_str().unwrap();
    until_answering(&spine, &gw, "/orders/1", &["orders-v1", "orders-v2"]).await;
    let leases = format!("/clusters/c1/registry/leases/{lease}");
    let (status, body) = spine.admin("PUT", &leases, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = spine.admin("DELETE", &leases, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    until_answering(&spine, &gw, "/orders/1", &["orders-v2"]).await;
    let (status, _) = spine.admin("PUT", &leases, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = spine
        .admin("PUT", "/clusters/c9/registry/leases/1", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = spine
        .admin("DELETE", "/clusters/c1/registry/leases/abc", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // The store goes down: the gateway keeps the last known nodes.
    spine.store.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        answering(&spine, &gw, "/orders/1", 8).await,
        ["orders-v2".to_owned()].into()
    );
    spine.store.start();
    heartbeat_v2.abort();

    // Deregistering removes a node at once (once the agent reaches the store again;
    // a Redis without persistence comes back empty, the registration with it).
    let gone = spine
        .until("v2 deregistered", || async {
            let (status, _) =
                agent_call(&spine, "DELETE", &format!("/leases/{lease_v2}"), None).await;
            (status == StatusCode::NO_CONTENT || status == StatusCode::NOT_FOUND).then_some(status)
        })
        .await;
    if kind == StoreKind::Etcd {
        assert_eq!(
            gone,
            StatusCode::NO_CONTENT,
            "etcd keeps leases across a restart"
        );
    }
    spine.all_serve(&[&gw], "/orders/1", (502, "")).await;
    spine.all_serve(&[&gw], "/canary/1", (502, "")).await;
    let _ = agent_call(&spine, "DELETE", &format!("/leases/{lease_pay}"), None).await;
}

/// One service name registered into two namespaces: each instance's `lb://` route is
/// served by its own namespace's nodes only (instance_b moved into a new namespace).
async fn same_service_in_two_namespaces(spine: &Spine) {
    let in_default = NamedUpstream::start("inventory-default").await;
    let in_team = NamedUpstream::start("inventory-team").await;
    let (status, created) = spine
        .admin("POST", "/namespaces", Some(json!({"name": "team"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let team = created["id"].as_str().unwrap().to_owned();
    let (status, body) = spine
        .admin(
            "PUT",
            "/clusters/c1/instances/instance_b/namespace",
            Some(json!({"namespace": team})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let route =
        json!({"id": "inventory", "paths": ["/inventory/*"], "upstream_id": "lb://inventory"});
    spine.put("c1", "instance_a", "routes", route.clone()).await;
    let (status, body) = spine
        .admin(
            "PUT",
            &format!("/clusters/c1/instances/instance_b/routes/inventory?namespace={team}"),
            Some(route),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let lease_default = register(
        spine,
        "inventory",
        json!({"host": "127.0.0.1", "port": in_default.port(), "ttl_secs": 30}),
    )
    .await;
    let lease_team = register(
        spine,
        "inventory",
        json!({"host": "127.0.0.1", "port": in_team.port(), "namespaces": team, "ttl_secs": 30}),
    )
    .await;
    until_answering(
        spine,
        &spine.gw_1a[0],
        "/inventory/1",
        &["inventory-default"],
    )
    .await;
    until_answering(spine, &spine.gw_1b, "/inventory/1", &["inventory-team"]).await;
    for lease in [lease_default, lease_team] {
        let (status, _) = agent_call(spine, "DELETE", &format!("/leases/{lease}"), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    spine
        .all_serve(&[&spine.gw_1a[0], &spine.gw_1b], "/inventory/1", (502, ""))
        .await;
}
