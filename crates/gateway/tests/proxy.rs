//! A gateway node against the in-process store, over real HTTP: routing, round robin,
//! hot updates, refusals as JSON, bad objects skipped, heartbeat, shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::cluster::NodeHeartbeat;
use model::snapshot::Revision;
use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::{ConfigStore, Op, Txn};
use testkit::upstream::NamedUpstream;

const INSTANCE: &str = "instance_a";

struct Node {
    url: String,
    store: Arc<dyn ConfigStore>,
    keyspace: Keyspace,
    revision: u64,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
}

impl Node {
    async fn start() -> Self {
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        let keyspace = Keyspace::default();
        let listen = format!("127.0.0.1:{}", testkit::free_port())
            .parse()
            .unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(gateway::run(
            gateway::GatewayConfig {
                listen,
                instance: INSTANCE.into(),
                node_id: "node-1".into(),
                advertise_address: listen.to_string(),
                heartbeat_interval: Duration::from_millis(200),
            },
            store.clone(),
            keyspace.clone(),
            rx,
        ));
        testkit::wait_for_tcp(&listen.to_string(), Duration::from_secs(10)).await;
        Self {
            url: format!("http://{listen}"),
            store,
            keyspace,
            revision: 0,
            stop,
            task,
            http: reqwest::Client::new(),
        }
    }

    /// Writes `key` (relative to the instance) and bumps meta, as the agent does.
    async fn put(&mut self, key: &str, value: Value) {
        self.write(vec![Op::Put {
            key: format!("{}{key}", self.keyspace.instance_prefix(INSTANCE)),
            value: value.to_string().into_bytes(),
            lease: None,
        }])
        .await;
    }

    async fn put_raw(&mut self, key: &str, raw: &str) {
        self.write(vec![Op::Put {
            key: format!("{}{key}", self.keyspace.instance_prefix(INSTANCE)),
            value: raw.as_bytes().to_vec(),
            lease: None,
        }])
        .await;
    }

    async fn delete(&mut self, key: &str) {
        self.write(vec![Op::Delete {
            key: format!("{}{key}", self.keyspace.instance_prefix(INSTANCE)),
        }])
        .await;
    }

    async fn write(&mut self, mut ops: Vec<Op>) {
        self.revision += 1;
        ops.push(Op::Put {
            key: self.keyspace.meta(INSTANCE),
            value: json!({"revision": self.revision}).to_string().into_bytes(),
            lease: None,
        });
        let outcome = self
            .store
            .txn(Txn {
                compares: vec![],
                ops,
            })
            .await
            .unwrap();
        assert!(outcome.succeeded);
    }

    async fn get(&self, method: &str, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        let resp = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("host", "api.example.com:8080")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.text().await.unwrap(), headers)
    }

    /// Waits until `path` answers `status` with `body` (empty = any body).
    async fn until(&self, path: &str, status: u16, body: &str) {
        let start = Instant::now();
        loop {
            let (s, b, _) = self.get("GET", path).await;
            if s == status && (body.is_empty() || b == body) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{path}: wanted {status} {body:?}, last {s} {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn upstream(id: &str, nodes: &[&NamedUpstream]) -> Value {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"host": "127.0.0.1", "port": n.port(), "weight": 1}))
        .collect();
    json!({"id": id, "nodes": nodes})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_routes_balances_and_follows_changes() {
    let a = NamedUpstream::start("a").await;
    let b = NamedUpstream::start("b").await;
    let c = NamedUpstream::start("c").await;
    let mut node = Node::start().await;

    // Empty config: everything is a JSON 404.
    let (status, body, headers) = node.get("GET", "/api/x").await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "route_not_found"
    );

    node.put("upstreams/up", upstream("up", &[&a, &b])).await;
    node.put(
        "routes/r1",
        json!({"id": "r1", "paths": ["/api/*"], "methods": ["GET"], "hosts": ["api.example.com"], "upstream_id": "up"}),
    )
    .await;
    node.until("/api/x", 200, "").await;

    // Round robin over two nodes alternates; the path and query reach the upstream as sent.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body, headers) = node.get("GET", "/api/x?q=1").await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-path"], "/api/x?q=1");
        seen.push(body);
    }
    assert!(
        seen == ["a", "b", "a", "b"] || seen == ["b", "a", "b", "a"],
        "{seen:?}"
    );

    // Method mismatch → 405 with Allow.
    let (status, body, headers) = node.get("POST", "/api/x").await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers["allow"], "GET");

    // Update: the upstream moves to c alone.
    node.put("upstreams/up", upstream("up", &[&c])).await;
    node.until("/api/x", 200, "c").await;

    // A broken object in the store is skipped; the good ones keep serving.
    node.put_raw("routes/broken", "{ this is not json").await;
    node.put(
        "routes/r2",
        json!({"id": "r2", "paths": ["/two"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": a.port()}]}}),
    )
    .await;
    node.until("/two", 200, "a").await;
    assert_eq!(node.get("GET", "/api/x").await.1, "c");

    // Delete → 404.
    node.delete("routes/r1").await;
    node.until("/api/x", 404, "").await;

    // An upstream that refuses connections → 502 as JSON.
    let dead = testkit::free_port();
    node.put(
        "routes/r3",
        json!({"id": "r3", "paths": ["/dead"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": dead}], "timeout": {"connect": 1}}}),
    )
    .await;
    node.until("/dead", 502, "").await;

    // The heartbeat carries the applied revision.
    let key = node.keyspace.node(INSTANCE, "node-1");
    let want = Revision(node.revision);
    let start = Instant::now();
    loop {
        if let Some(kv) = node.store.get(&key).await.unwrap() {
            let hb: NodeHeartbeat = serde_json::from_slice(&kv.value).unwrap();
            if hb.applied_revision == want {
                assert!(kv.lease.is_some(), "heartbeat must be on a lease");
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "heartbeat never showed {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Shutdown returns and withdraws the heartbeat.
    node.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), node.task)
        .await
        .expect("gateway stops")
        .unwrap()
        .unwrap();
    assert!(node.store.get(&key).await.unwrap().is_none());
}
