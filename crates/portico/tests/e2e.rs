//! The spine end to end, on real components started as an operator starts them:
//! one admin (`portico admin`), two clusters each with its agent (`portico agent`) and
//! its own prefix in a real store (Debian's `etcd-server`, or its `redis-server`
//! without persistence), and gateway nodes (`portico gateway`). Covers requirements
//! M1–M6, D1, D6, G5: a change made through the admin reaches every node of the
//! instance and no other; the reconcile loop delivers changes made while an agent was
//! down; gateways keep serving while the store is down; a Redis that comes back empty
//! is refilled by the reconcile loop and the gateways follow it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use testkit::spine::{Spine, StoreKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spine_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let mut spine = Spine::start(env!("CARGO_BIN_EXE_portico").as_ref(), dir.path(), &db).await;
    full_flow(&mut spine).await;
    bad_input_changes_nothing(&spine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spine_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let mut spine = Spine::start_on(
        StoreKind::Redis,
        env!("CARGO_BIN_EXE_portico").as_ref(),
        dir.path(),
        &db,
    )
    .await;
    full_flow(&mut spine).await;
    bad_input_changes_nothing(&spine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spine_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgDatabase::create();
    let mut spine = Spine::start(env!("CARGO_BIN_EXE_portico").as_ref(), dir.path(), &db.url).await;
    full_flow(&mut spine).await;
}

async fn full_flow(spine: &mut Spine) {
    let c1a: Vec<&str> = spine.gw_1a.iter().map(String::as_str).collect();
    // Create an upstream and a route in cluster 1 / instance_a: both nodes serve it.
    let (status, body) = spine
        .admin(
            "POST",
            "/clusters/c1/instances/instance_a/upstreams",
            Some(spine.upstream(0)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = spine
        .admin(
            "POST",
            "/clusters/c1/instances/instance_a/route",
            Some(json!({"id": "r1", "paths": ["/api/*"], "upstream_id": "up"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    spine.all_serve(&c1a, "/api/x", (200, "u1")).await;

    // Isolation: instance_b of cluster 1 and instance_a of cluster 2 see nothing.
    assert_eq!(spine.via(&spine.gw_1b, "/api/x").await.0, 404);
    assert_eq!(spine.via(&spine.gw_2a, "/api/x").await.0, 404);

    // The same instance name in cluster 2 is configured on its own.
    spine.serve_api_from("c2", "instance_a", 1).await;
    spine
        .all_serve(&[&spine.gw_2a], "/api/x", (200, "u2"))
        .await;
    spine.all_serve(&c1a, "/api/x", (200, "u1")).await;

    // Update: the upstream moves to u3, the route gains an exact path.
    assert_eq!(
        spine
            .put("c1", "instance_a", "upstreams", spine.upstream(2))
            .await,
        "applied"
    );
    spine.all_serve(&c1a, "/api/x", (200, "u3")).await;
    spine
        .put(
            "c1",
            "instance_a",
            "routes",
            json!({"id": "r1", "paths": ["/api/*", "/health"], "upstream_id": "up"}),
        )
        .await;
    spine.all_serve(&c1a, "/health", (200, "u3")).await;

    // Delete: 404 everywhere in the instance.
    let (status, body) = spine
        .admin(
            "DELETE",
            "/clusters/c1/instances/instance_a/routes/r1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    spine.all_serve(&c1a, "/api/x", (404, "")).await;
    spine
        .all_serve(&[&spine.gw_2a], "/api/x", (200, "u2"))
        .await;
    spine
        .put(
            "c1",
            "instance_a",
            "routes",
            json!({"id": "r1", "paths": ["/api/*"], "upstream_id": "up"}),
        )
        .await;
    spine.all_serve(&c1a, "/api/x", (200, "u3")).await;
    assert_eq!(spine.via(&spine.gw_1b, "/api/x").await.0, 404);

    // Agent down: the change is accepted and delivered by reconcile once it is back.
    spine.agents[0].kill();
    let sync = spine
        .put("c1", "instance_a", "upstreams", spine.upstream(0))
        .await;
    assert_eq!(sync, "pending");
    assert_eq!(spine.via(c1a[0], "/api/x").await.1, "u3");
    spine.agents[0].restart();
    spine.all_serve(&c1a, "/api/x", (200, "u1")).await;

    // Store down: gateways keep serving the last good config.
    spine.store.stop();
    for _ in 0..20 {
        for node in &c1a {
            assert_eq!(spine.via(node, "/api/x").await, (200, "u1".to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Store back (a Redis without persistence comes back empty; reconcile refills it
    // and the gateways relist): a new change arrives.
    spine.store.start();
    spine
        .put("c1", "instance_a", "upstreams", spine.upstream(1))
        .await;
    spine.all_serve(&c1a, "/api/x", (200, "u2")).await;

    // Every node reports the revision it serves; both c1 nodes converge on the DB's.
    let (_, instance) = spine
        .admin("GET", "/clusters/c1/instances/instance_a", None)
        .await;
    let revision = instance["revision"].as_u64().unwrap();
    spine
        .until("heartbeats carry the applied revision", || async {
            let (_, body) = spine
                .admin("GET", "/clusters/c1/instances/instance_a/nodes", None)
                .await;
            let nodes = body["items"].as_array()?.clone();
            let converged = nodes
                .iter()
                .filter(|n| n["applied_revision"].as_u64() == Some(revision))
                .count();
            (converged == 2).then_some(())
        })
        .await;
    // The admin says so in one answer: 2 of 2 nodes, and how long it took from the
    // commit to the last node swapping it in.
    let convergence = spine
        .until("the admin sees the revision on every node", || async {
            let (_, body) = spine
                .admin("GET", "/clusters/c1/instances/instance_a/convergence", None)
                .await;
            (body["converged"] == true).then_some(body)
        })
        .await;
    assert_eq!(convergence["revision"].as_u64(), Some(revision));
    assert_eq!(
        (
            convergence["nodes"].as_u64(),
            convergence["reached"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(convergence["behind"], serde_json::json!([]));
    let took = convergence["took_ms"]
        .as_i64()
        .expect("both nodes said when");
    assert!((0..30_000).contains(&took), "{convergence}");
}

/// Bad input through the admin API: the right status, a message naming the field, and
/// neither the DB nor the store changed.
async fn bad_input_changes_nothing(spine: &Spine) {
    let base = "/clusters/c1/instances/instance_a";
    let before = (
        spine.admin("GET", &format!("{base}/routes"), None).await.1,
        spine
            .admin("GET", &format!("{base}/upstreams"), None)
            .await
            .1,
    );
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/routes", "{\"id\": \"r9\", ", 400, ""),
        (
            "POST",
            "/routes",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"up","colour":"red"}"#,
            400,
            "colour",
        ),
        (
            "POST",
            "/upstreams",
            r#"{"id":"u9","nodes":[{"host":"127.0.0.1","port":70000}]}"#,
            422,
            "nodes[0].port",
        ),
        (
            "POST",
            "/routes",
            r#"{"id":"r9","paths":["x"],"methods":["FETCH"],"upstream_id":"up"}"#,
            422,
            "paths[0]",
        ),
        (
            "POST",
            "/routes",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"nope"}"#,
            422,
            "upstream_id",
        ),
        (
            "POST",
            "/routes",
            r#"{"id":"r1","paths":["/x"],"upstream_id":"up"}"#,
            409,
            "",
        ),
        ("DELETE", "/upstreams/up", "", 409, ""),
        (
            "PUT",
            "/routes/r1",
            r#"{"id":"other","paths":["/x"],"upstream_id":"up"}"#,
            422,
            "id",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (got, answer) = spine
            .admin_raw(method, &format!("{base}{path}"), body)
            .await;
        assert_eq!(got.as_u16(), *status, "{method} {path} {body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
        if !field.is_empty() {
            let fields: Vec<&str> = answer["details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["field"].as_str().unwrap())
                .collect();
            assert!(fields.contains(field), "{method} {path}: {answer}");
        }
    }
    for (path, status) in [
        ("/clusters/nope/instances/instance_a/routes", 404),
        ("/clusters/c1/instances/nope/routes", 404),
        ("/clusters/c1/instances/instance_a/widgets", 404),
    ] {
        let (got, answer) = spine
            .admin_raw(
                "POST",
                path,
                r#"{"id":"r9","paths":["/x"],"upstream_id":"up"}"#,
            )
            .await;
        assert_eq!(got.as_u16(), status, "{path}: {answer}");
    }
    let unauthorised = spine
        .http
        .get(format!("{}/clusters", spine.admin_url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), StatusCode::UNAUTHORIZED);

    let after = (
        spine.admin("GET", &format!("{base}/routes"), None).await.1,
        spine
            .admin("GET", &format!("{base}/upstreams"), None)
            .await
            .1,
    );
    assert_eq!(before, after, "the DB changed");
    // The store (through the agent that wrote it) still serves the same config.
    for node in &spine.gw_1a {
        assert_eq!(spine.via(node, "/x").await.0, 404);
        assert_eq!(spine.via(node, "/api/x").await, (200, "u2".to_owned()));
    }
}

/// A uniquely named PostgreSQL database on the machine's server, dropped afterwards.
struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    fn create() -> Self {
        let name = format!("portico_e2e_{}_{}", std::process::id(), rand_suffix());
        psql(&format!("CREATE DATABASE {name}"));
        Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .output()
        .expect("psql must be installed to run the PostgreSQL test");
    assert!(
        out.status.success(),
        "PostgreSQL at 127.0.0.1:5432 must be running (trust auth): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
