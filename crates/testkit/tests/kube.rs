//! The test Kubernetes API server against the real client: kube-rs (the client the
//! cross-cluster controller uses) lists, pages, writes, applies and watches through it,
//! and its watcher recovers from 410 Gone and closed watches; the faults behave as
//! their names say, on the wire.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::{json, Value};
use testkit::kube::{Fault, KubeServer};

async fn client_for(server: &KubeServer, dir: &std::path::Path) -> kube::Client {
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config from kubeconfig");
    kube::Client::try_from(config).expect("client")
}

fn service(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "prod", "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

fn slice(name: &str, service: &str, addresses: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect::<Vec<_>>(),
    })
}

fn code_of(error: kube::Error) -> u16 {
    match error {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn kube_rs_lists_pages_writes_and_applies() {
    let server = KubeServer::start("prod").await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&server, dir.path()).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "prod");

    let created = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(service("web", json!({"ex-remote": "true"}))).unwrap(),
        )
        .await
        .expect("create");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("a resourceVersion");
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        code_of(
            services
                .create(&PostParams::default(), &created)
                .await
                .unwrap_err()
        ),
        409
    );
    for name in ["api", "db", "cache", "mq"] {
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(service(name, json!({}))).unwrap(),
            )
            .await
            .unwrap();
    }

    let remote = services
        .list(&ListParams::default().labels("ex-remote=true"))
        .await
        .unwrap();
    assert_eq!(remote.items.len(), 1);
    assert_eq!(remote.items[0].metadata.name.as_deref(), Some("web"));

    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = services.list(&params).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().filter_map(|s| s.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["api", "cache", "db", "mq", "web"]);

    // Optimistic concurrency: a replace with the old version is refused.
    let mut changed = services.get("web").await.unwrap();
    changed
        .metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "front".into());
    let replaced = services
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(
        code_of(
            services
                .replace("web", &PostParams::default(), &changed)
                .await
                .unwrap_err()
        ),
        409
    );

    let merged = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": null}}})),
        )
        .await
        .unwrap();
    assert!(!merged
        .metadata
        .labels
        .unwrap_or_default()
        .contains_key("tier"));

    // Server-side apply: created, unchanged on a second identical apply, then changed.
    let slices: Api<EndpointSlice> = Api::namespaced(client, "prod");
    let apply = PatchParams::apply("portico-xcluster");
    let first = slices
        .patch(
            "web-peak",
            &apply,
            &Patch::Apply(slice("web-peak", "web", &["10.1.0.1"])),
        )
        .await
        .unwrap();
    let writes_before = server.resource_version();
    let again = slices
        .patch(
            "web-peak",
            &apply,
            &Patch::Apply(slice("web-peak", "web", &["10.1.0.1"])),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        first.metadata.resource_version
    );
    assert_eq!(
        server.resource_version(),
        writes_before,
        "a no-op apply changes nothing"
    );
    let managed = again.metadata.managed_fields.unwrap_or_default();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].manager.as_deref(), Some("portico-xcluster"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));
    let moved = slices
        .patch(
            "web-peak",
            &apply,
            &Patch::Apply(slice("web-peak", "web", &["10.1.0.2"])),
        )
        .await
        .unwrap();
    assert_eq!(moved.endpoints[0].addresses, ["10.1.0.2"]);

    // The built-in controller's slice is not ours to take.
    server.apply(
        "endpointslice-controller.k8s.io",
        slice("web-own", "web", &["10.0.0.1"]),
    );
    let conflict = slices
        .patch(
            "web-own",
            &apply,
            &Patch::Apply(slice("web-own", "web", &["10.9.9.9"])),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(conflict), 409);
    assert_eq!(server.writes().get("portico-xcluster"), Some(&4));

    slices
        .delete("web-peak", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(code_of(slices.get("web-peak").await.unwrap_err()), 404);
}

#[tokio::test]
async fn kube_rs_watcher_follows_changes_and_relists_after_410() {
    let server = KubeServer::start("peak").await;
    server.set_bookmark_interval(Duration::from_millis(100));
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&server, dir.path()).await;
    server.apply("test", slice("web-a", "web", &["10.2.0.1"]));

    let slices: Api<EndpointSlice> = Api::namespaced(client, "prod");
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(
            slices,
            watcher::Config::default().labels("kubernetes.io/service-name=web"),
        ),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    wait_for(&reader, &["10.2.0.1"]).await;
    server.apply("test", slice("web-b", "web", &["10.2.0.2"]));
    server.apply("test", slice("api-a", "api", &["10.3.0.1"]));
    wait_for(&reader, &["10.2.0.1", "10.2.0.2"]).await;

    // A slice that leaves the selector is deleted for the watch.
    server.apply("test", slice("web-b", "api", &["10.2.0.2"]));
    wait_for(&reader, &["10.2.0.1"]).await;

    let (_, lists_before, watches_before, _) = server.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.apply("test", slice("web-c", "web", &["10.2.0.3"]));
    wait_for(&reader, &["10.2.0.1", "10.2.0.3"]).await;
    // The watch ends while the server answers 503; meanwhile a change is made and the
    // history compacted, so the watcher's resume point is gone when it is back.
    server.set_fault(Fault::Status(503));
    server.close_watches();
    server.delete("EndpointSlice", "prod", "web-a");
    server.compact();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.set_fault(Fault::None);
    wait_for(&reader, &["10.2.0.3"]).await;
    let (_, lists_after, watches_after, open) = server.requests();
    assert!(
        lists_after > lists_before,
        "the watcher listed again after 410"
    );
    assert!(watches_after > watches_before);
    assert_eq!(open, 1);
    task.abort();
}

/// The addresses of the slices `reader` holds, sorted.
fn addresses(reader: &reflector::Store<EndpointSlice>) -> Vec<String> {
    let mut all: Vec<String> = reader
        .state()
        .iter()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
        .collect();
    all.sort();
    all
}

/// Waits until `reader` holds exactly `expected`.
async fn wait_for(reader: &reflector::Store<EndpointSlice>, expected: &[&str]) {
    let start = Instant::now();
    while addresses(reader) != expected {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "store holds {:?}, not {expected:?}",
            addresses(reader)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw watch request: the lines it answers within `wait`.
async fn watch_lines(server: &KubeServer, query: &str, wait: Duration) -> Vec<Value> {
    let http = reqwest::Client::new();
    let mut response = http
        .get(format!(
            "{}/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices?watch=true&{query}",
            server.url()
        ))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn watches_replay_bookmark_and_expire() {
    let server = KubeServer::start("wire").await;
    server.set_bookmark_interval(Duration::from_millis(100));
    let created = server.apply("test", slice("web-a", "web", &["10.0.0.1"]));
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    server.apply("test", slice("web-a", "web", &["10.0.0.2"]));
    server.delete("EndpointSlice", "prod", "web-a");

    let events = watch_lines(
        &server,
        &format!("resourceVersion={}&timeoutSeconds=1", rv - 1),
        Duration::from_secs(3),
    )
    .await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["ADDED", "MODIFIED", "DELETED"],
        "no bookmarks unless asked"
    );
    assert_eq!(events[2]["object"]["kind"], "EndpointSlice");

    let events = watch_lines(
        &server,
        &format!("resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(events[0]["type"], "MODIFIED");
    assert!(
        events.iter().filter(|e| e["type"] == "BOOKMARK").count() >= 3,
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        last["object"]["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );

    server.compact();
    let events = watch_lines(
        &server,
        &format!("resourceVersion={rv}"),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");

    // Without a version: the current objects as ADDED, then the changes.
    server.apply("test", slice("web-b", "web", &["10.0.0.3"]));
    let events = watch_lines(&server, "timeoutSeconds=1", Duration::from_secs(3)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ADDED");
}

#[tokio::test]
async fn faults_and_credentials_behave_on_the_wire() {
    let server = KubeServer::start("faulty").await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let url = format!("{}/api/v1/namespaces/prod/services", server.url());

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let status: Value = anonymous.json().await.unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some(401))
    );

    let old = server.token();
    assert_eq!(
        http.get(&url)
            .bearer_auth(&old)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let new = server.rotate_token();
    assert_eq!(
        http.get(&url)
            .bearer_auth(&old)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(&new)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let bad = http
        .get(format!("{url}?labelSelector=app%3D(x"))
        .bearer_auth(&new)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    server.set_fault(Fault::Status(503));
    let failing = http.get(&url).bearer_auth(&new).send().await.unwrap();
    assert_eq!(failing.status(), 503);

    server.set_fault(Fault::Slow(Duration::from_millis(300)));
    let start = Instant::now();
    assert_eq!(
        http.get(&url)
            .bearer_auth(&new)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(start.elapsed() >= Duration::from_millis(300));

    // A black hole: new requests time out, an open watch falls silent without closing.
    server.set_fault(Fault::None);
    server.set_bookmark_interval(Duration::from_millis(50));
    let mut watch = reqwest::Client::new()
        .get(format!(
            "{url}?watch=true&allowWatchBookmarks=true&resourceVersion={}",
            server.resource_version()
        ))
        .bearer_auth(&new)
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), watch.chunk()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "a bookmark arrives");
    server.set_fault(Fault::BlackHole);
    let hole = http.get(&url).bearer_auth(&new).send().await.unwrap_err();
    assert!(hole.is_timeout(), "{hole}");
    // Drain what was sent before the fault, then nothing more comes.
    while let Ok(Ok(Some(_))) =
        tokio::time::timeout(Duration::from_millis(200), watch.chunk()).await
    {}
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.chunk())
            .await
            .is_err(),
        "the watch is silent"
    );

    // Refused: the port is closed; it opens again when the fault clears.
    server.set_fault(Fault::Refuse);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err());
    server.set_fault(Fault::None);
    let start = Instant::now();
    loop {
        if let Ok(answer) = http.get(&url).bearer_auth(&new).send().await {
            assert_eq!(answer.status(), 200);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the server came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
