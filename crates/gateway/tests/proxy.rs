//! A gateway node against the in-process store, over real HTTP on loopback: routing,
//! round robin, hot updates, refusals as JSON, bad objects skipped, upstream failures,
//! heartbeat, and a shutdown that drains requests in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use model::cluster::NodeHeartbeat;
use model::snapshot::Revision;
use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::{
    ConfigStore, KeyValue, LeaseId, Listing, Op, RawWatch, StoreError, StoreRevision, Txn,
    TxnOutcome,
};
use testkit::upstream::NamedUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
        Self::start_on(store.clone(), store).await
    }

    /// The gateway reads `gateway_store`; the test writes (as the agent) and reads
    /// heartbeats through `store`.
    async fn start_on(gateway_store: Arc<dyn ConfigStore>, store: Arc<dyn ConfigStore>) -> Self {
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
            gateway_store,
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
        self.send(
            self.http
                .request(method.parse().unwrap(), format!("{}{path}", self.url)),
        )
        .await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let resp = request
            .header("host", "api.example.com:8080")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.text().await.unwrap(), headers)
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("gateway stops")
            .unwrap()
            .unwrap();
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

/// A store the gateway can lose: while `down`, every call fails as unreachable and
/// open watches end, as with a partitioned etcd.
struct Partitionable {
    inner: Arc<dyn ConfigStore>,
    down: tokio::sync::watch::Sender<bool>,
}

impl Partitionable {
    fn check(&self) -> Result<(), StoreError> {
        if *self.down.borrow() {
            return Err(StoreError::Unavailable("partitioned by the test".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ConfigStore for Partitionable {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.check()?;
        self.inner.list(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.check()?;
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, start: StoreRevision) -> Result<RawWatch, StoreError> {
        self.check()?;
        let stream = self.inner.watch(prefix, start).await?;
        let mut down = self.down.subscribe();
        let cut = async move {
            let _ = down.wait_for(|down| *down).await;
        };
        Ok(stream.take_until(Box::pin(cut)).boxed())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        self.check()?;
        self.inner.grant_lease(ttl_secs).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.revoke_lease(lease).await
    }
}

/// A one-request-per-connection HTTP server that answers, once `gate` gives it a permit, with its
/// request head as the body, so tests see what reached the upstream. Each request
/// received is announced on the returned channel.
async fn raw_upstream(gate: Arc<Semaphore>) -> (u16, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen_tx.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = seen.send(());
                match gate.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    head.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.write_all(&head).await;
            });
        }
    });
    (port, seen_rx)
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
    let store = node.store.clone();
    node.stop().await;
    assert!(store.get(&key).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_upstream_as_sent_and_failures_are_json() {
    let open = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (port, _seen) = raw_upstream(open).await;
    // Never answers.
    let (slow_port, _slow_seen) = raw_upstream(Arc::new(Semaphore::new(0))).await;
    let dead = testkit::free_port();
    let mut node = Node::start().await;
    let inline = |port: u16, timeout: Value| json!({"nodes": [{"host": "127.0.0.1", "port": port}], "timeout": timeout});
    node.put(
        "routes/echo",
        json!({"id": "echo", "paths": ["/echo"], "hosts": ["*.example.com"], "upstream": inline(port, json!({}))}),
    )
    .await;
    node.put(
        "routes/dead",
        json!({"id": "dead", "paths": ["/dead"], "upstream": inline(dead, json!({"connect": 1}))}),
    )
    .await;
    node.put(
        "routes/slow",
        json!({"id": "slow", "paths": ["/slow"], "upstream": inline(slow_port, json!({"read": 0.3}))}),
    )
    .await;
    node.until("/echo", 200, "").await;

    // Host passes unchanged (port included); the client is appended to X-Forwarded-For.
    let (_, head, _) = node
        .send(
            node.http
                .get(format!("{}/echo", node.url))
                .header("x-forwarded-for", "203.0.113.9"),
        )
        .await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("get /echo http/1.1\r\n"), "{head}");
    assert!(
        head.contains("\r\nhost: api.example.com:8080\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nx-forwarded-for: 203.0.113.9, 127.0.0.1\r\n"),
        "{head}"
    );

    // Nothing listens: 502. The upstream does not answer within its read timeout: 504.
    for (path, status, code) in [
        ("/dead", 502, "bad_gateway"),
        ("/slow", 504, "gateway_timeout"),
    ] {
        let (got, body, headers) = node.get("GET", path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["code"],
            code,
            "{path}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_keeps_the_last_config_serving() {
    let a = NamedUpstream::start("a").await;
    let b = NamedUpstream::start("b").await;
    let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
    let (down, _) = tokio::sync::watch::channel(false);
    let partitionable = Arc::new(Partitionable {
        inner: store.clone(),
        down: down.clone(),
    });
    let mut node = Node::start_on(partitionable, store).await;
    node.put("upstreams/up", upstream("up", &[&a])).await;
    node.put(
        "routes/r",
        json!({"id": "r", "paths": ["/r"], "upstream_id": "up"}),
    )
    .await;
    node.until("/r", 200, "a").await;

    // Cut off, the node keeps serving what it has while the agent writes on.
    down.send_replace(true);
    node.put("upstreams/up", upstream("up", &[&b])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.get("GET", "/r").await.1, "a");

    // Back: the watch resumes and catches up; so does the heartbeat.
    down.send_replace(false);
    node.until("/r", 200, "b").await;
    let key = node.keyspace.node(INSTANCE, "node-1");
    let want = Revision(node.revision);
    let start = Instant::now();
    loop {
        let beat = node.store.get(&key).await.unwrap();
        let applied = beat.map(|kv| {
            serde_json::from_slice::<NodeHeartbeat>(&kv.value)
                .unwrap()
                .applied_revision
        });
        if applied == Some(want) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "heartbeat shows {applied:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let gate = Arc::new(Semaphore::new(1));
    let (port, mut seen) = raw_upstream(gate.clone()).await;
    let mut node = Node::start().await;
    node.put(
        "routes/held",
        json!({"id": "held", "paths": ["/held"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": port}]}}),
    )
    .await;
    node.until("/held", 200, "").await;
    seen.recv().await.unwrap();

    let request = tokio::spawn({
        let http = node.http.clone();
        let url = format!("{}/held", node.url);
        async move { http.get(url).send().await }
    });
    // The request has reached the upstream, which holds it until given a permit.
    seen.recv().await.unwrap();
    let listen = node.url.trim_start_matches("http://").to_owned();
    let stopping = tokio::spawn(node.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown returned while a request was in flight"
    );
    // Not accepting any more, while still serving the request in flight.
    assert!(tokio::net::TcpStream::connect(&listen).await.is_err());

    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes once the request is done")
        .unwrap();
    let response = request
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(response.status(), 200);
}
