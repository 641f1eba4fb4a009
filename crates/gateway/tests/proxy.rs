//! A gateway node against the in-process store, over real HTTP on loopback: routing,
//! round robin, hot updates, refusals as JSON, bad objects skipped, upstream failures,
//! heartbeat, and a shutdown that drains requests in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use model::cluster::NodeHeartbeat;
use model::snapshot::Revision;
use serde_json::{json, Value};
use store::memory::MemoryStore;
use store::{
    ConfigStore, KeyValue, LeaseId, Listing, Op, RawWatch, StoreError, StoreRevision, Txn,
    TxnOutcome,
};
use testkit::upstream::{Answer, NamedUpstream, ScriptedUpstream};

mod common;
use common::{raw_exchange, upstream, Node, Options, INSTANCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
        "routes/dead",
        json!({"id": "dead", "paths": ["/dead"], "upstream": inline(dead, json!({"connect": 1}))}),
    )
    .await;
    node.put(
        "routes/slow",
        json!({"id": "slow", "paths": ["/slow"], "upstream": inline(slow_port, json!({"read": 0.3}))}),
    )
    .await;
    // Written last: once it serves, the routes written before it are served too.
    node.put(
        "routes/echo",
        json!({"id": "echo", "paths": ["/echo"], "hosts": ["*.example.com"], "upstream": inline(port, json!({}))}),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_waiting_at_the_drain_timeout() {
    let gate = Arc::new(Semaphore::new(0));
    let (port, mut seen) = raw_upstream(gate.clone()).await;
    let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
    let options = Options {
        drain_timeout: Some(Duration::from_millis(500)),
        ..Options::default()
    };
    let mut node = Node::start_on_with(store.clone(), store, options).await;
    node.put(
        "routes/held",
        json!({"id": "held", "paths": ["/held"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": port}]}}),
    )
    .await;
    // The upstream never answers: a request that would outlive any drain.
    let request = tokio::spawn({
        let http = node.http.clone();
        let url = format!("{}/held", node.url);
        async move {
            loop {
                let _ = http.get(&url).send().await;
            }
        }
    });
    seen.recv().await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), node.stop())
        .await
        .expect("shutdown gives up on the request after the drain timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "stopped after {took:?}");
    request.abort();
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_once_for_routing_and_forwarding() {
    let admin = NamedUpstream::start("admin").await;
    let public = NamedUpstream::start("public").await;
    let mut node = Node::start().await;
    node.put("upstreams/admin", upstream("admin", &[&admin]))
        .await;
    node.put("upstreams/public", upstream("public", &[&public]))
        .await;
    node.put(
        "routes/admin",
        json!({"id": "admin", "paths": ["/admin/*"], "upstream_id": "admin", "remote_addrs": ["10.0.0.0/8"]}),
    )
    .await;
    node.put(
        "routes/public",
        json!({"id": "public", "paths": ["/public/*"], "upstream_id": "public"}),
    )
    .await;
    node.until("/public/x", 200, "public").await;

    // (request target, status, upstream, path the upstream saw). reqwest would clean
    // dot segments itself, so these go over a raw connection.
    let cases = [
        ("/public/a", 200, Some("public"), "/public/a"),
        ("/public//a/./b", 200, Some("public"), "/public/a/b"),
        (
            "/public/%61?q=%2e%2e",
            200,
            Some("public"),
            "/public/a?q=%2e%2e",
        ),
        ("/%70ublic/x", 200, Some("public"), "/public/x"),
        ("/admin/../public/x", 200, Some("public"), "/public/x"),
        // Escaping the public tree lands on the guarded route, which refuses the
        // loopback client: its remote_addrs only take 10.0.0.0/8.
        ("/public/../admin/secret", 404, None, ""),
        ("/public/%2e%2e/admin/secret", 404, None, ""),
        ("/public/.%2E/admin/secret", 404, None, ""),
        ("//admin/secret", 404, None, ""),
        // Encoded slashes and backslashes are decoded before dot segments (the
        // default policy), so they cannot climb out of /public either.
        ("/public/..%2Fadmin/secret", 404, None, ""),
        ("/public/..%2fadmin/secret", 404, None, ""),
        ("/public/..%5Cadmin/secret", 404, None, ""),
        ("/public/a%2Fb", 200, Some("public"), "/public/a/b"),
        ("/public/%zz", 400, None, ""),
    ];
    for (target, status, upstream, path) in cases {
        let request = format!("GET {target} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
        let response = raw_exchange(&node.url, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&response), status, "{target}: {response}");
        assert_eq!(header_of(&response, "x-upstream"), upstream, "{target}");
        if upstream.is_some() {
            assert_eq!(header_of(&response, "x-path"), Some(path), "{target}");
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicates_pick_routes_over_http() {
    let stable = NamedUpstream::start("stable").await;
    let canary = NamedUpstream::start("canary").await;
    let user = NamedUpstream::start("user").await;
    let mut node = Node::start().await;
    node.put("upstreams/stable", upstream("stable", &[&stable]))
        .await;
    node.put("upstreams/canary", upstream("canary", &[&canary]))
        .await;
    node.put("upstreams/user", upstream("user", &[&user])).await;
    node.put(
        "routes/stable",
        json!({"id": "stable", "paths": ["/app/*"], "upstream_id": "stable"}),
    )
    .await;
    node.put(
        "routes/canary",
        json!({"id": "canary", "paths": ["/app/*"], "upstream_id": "canary",
               "headers": [{"name": "x-canary", "op": "equals", "value": "1"}]}),
    )
    .await;
    node.put(
        "routes/beta-cookie",
        json!({"id": "beta-cookie", "paths": ["/app/*"], "upstream_id": "canary",
               "cookies": [{"name": "beta", "op": "present"}], "query": [{"name": "off", "op": "absent"}]}),
    )
    .await;
    node.put(
        "routes/user",
        json!({"id": "user", "paths": ["/users/{id}"], "methods": ["GET"], "upstream_id": "user"}),
    )
    .await;
    node.put(
        "routes/expired",
        json!({"id": "expired", "paths": ["/old"], "upstream_id": "user",
               "time_window": {"before": "2020-01-01T00:00:00Z"}}),
    )
    .await;
    node.until("/users/1", 200, "user").await;

    let url = |p: &str| format!("{}{p}", node.url);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (node.http.get(url("/app/x")), 200, "stable"),
        (
            node.http.get(url("/app/x")).header("x-canary", "1"),
            200,
            "canary",
        ),
        (
            node.http.get(url("/app/x")).header("x-canary", "2"),
            200,
            "stable",
        ),
        (
            node.http
                .get(url("/app/x"))
                .header("cookie", "a=1; beta=on"),
            200,
            "canary",
        ),
        (
            node.http
                .get(url("/app/x?off=1"))
                .header("cookie", "beta=on"),
            200,
            "stable",
        ),
        (node.http.get(url("/users/42")), 200, "user"),
        (node.http.get(url("/users/42/more")), 404, ""),
        (node.http.delete(url("/users/42")), 405, ""),
        (node.http.get(url("/old")), 404, ""),
    ];
    for (request, status, body) in cases {
        let (s, b, headers) = node.send(request).await;
        assert_eq!(s, status, "{b}");
        if status == 200 {
            assert_eq!(b, body);
        }
        if status == 405 {
            assert_eq!(headers["allow"], "GET");
        }
    }
    node.stop().await;
}

/// D2's pipeline: the path must hit a route (404), the method must be one it takes
/// (405), then the route's filters may refuse (403, with the filter's message): a
/// refusal, not a predicate that lets another route take the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_which_stage_refused() {
    let app = NamedUpstream::start("app").await;
    let mut node = Node::start_with(gateway::HttpSettings {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..gateway::HttpSettings::default()
    })
    .await;
    node.put("upstreams/app", upstream("app", &[&app])).await;
    node.put(
        "routes/open",
        json!({"id": "open", "paths": ["/x"], "upstream_id": "app"}),
    )
    .await;
    node.put(
        "routes/internal",
        json!({"id": "internal", "paths": ["/internal/*"], "methods": ["GET"], "upstream_id": "app",
               "plugins": {"ip-restriction": {"allowlist": ["10.0.0.0/8"], "denylist": ["10.9.0.0/16"],
                                              "message": "internal clients only"}}}),
    )
    .await;
    node.put(
        "routes/blocked",
        json!({"id": "blocked", "hosts": ["blocked.test"], "paths": ["/*"], "upstream_id": "app",
               "plugins": {"ip-restriction": {"denylist": ["127.0.0.1"]}}}),
    )
    .await;
    node.until("/x", 200, "app").await;

    let base = node.url.clone();
    let url = |p: &str| format!("{base}{p}");
    let xff = |ip: &str| {
        node.http
            .get(url("/internal/a"))
            .header("x-forwarded-for", ip.to_owned())
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (node.http.get(url("/x")), 200, ""),
        (
            node.http.get(url("/nowhere")),
            404,
            "no route matches the request",
        ),
        (
            node.http.get(url("/internal/a")),
            403,
            "internal clients only",
        ),
        (xff("10.1.2.3"), 200, ""),
        (xff("10.9.1.1"), 403, "internal clients only"),
        (
            node.http.post(url("/internal/a")),
            405,
            "method not allowed",
        ),
    ];
    for (i, (request, status, message)) in cases.into_iter().enumerate() {
        let (s, body, headers) = node.send(request).await;
        assert_eq!(s, status, "case {i}: {body}");
        if status == 200 {
            assert_eq!(body, "app", "case {i}");
        } else {
            assert_eq!(headers["content-type"], "application/json", "case {i}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"], message, "case {i}");
            let code = match status {
                403 => "forbidden",
                404 => "route_not_found",
                _ => "method_not_allowed",
            };
            assert_eq!(body["code"], code, "case {i}");
        }
    }
    // The default message; reqwest would add a Host of its own, so a raw request.
    let blocked = b"GET /y HTTP/1.1\r\nhost: blocked.test\r\nconnection: close\r\n\r\n";
    let response = raw_exchange(&node.url, blocked, Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), 403, "{response}");
    assert!(
        response.ends_with(r#"{"code":"forbidden","error":"Your IP address is not allowed"}"#),
        "{response}"
    );
    // Without the filter the request passes: a change takes it away without a restart.
    node.put(
        "routes/blocked",
        json!({"id": "blocked", "hosts": ["blocked.test"], "paths": ["/*"], "upstream_id": "app"}),
    )
    .await;
    let mut served = false;
    for _ in 0..100 {
        let response = raw_exchange(&node.url, blocked, Duration::from_secs(5)).await;
        if status_of(&response) == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the filter stayed after the change");
    node.stop().await;
}

/// The client address behind a trusted proxy is read from X-Forwarded-For, on a node
/// whose routes read no header themselves (the fast path collects headers only when
/// something reads them); from an untrusted peer the header is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_addresses_come_from_trusted_proxies_only() {
    let inner = NamedUpstream::start("inner").await;
    let outer = NamedUpstream::start("outer").await;
    for (trusted, behind_proxy) in [(true, "inner"), (false, "outer")] {
        let mut node = Node::start_with(gateway::HttpSettings {
            trusted_proxies: if trusted {
                vec!["127.0.0.0/8".parse().unwrap()]
            } else {
                Vec::new()
            },
            ..gateway::HttpSettings::default()
        })
        .await;
        node.put("upstreams/inner", upstream("inner", &[&inner]))
            .await;
        node.put("upstreams/outer", upstream("outer", &[&outer]))
            .await;
        node.put(
            "routes/inner",
            json!({"id": "inner", "paths": ["/p"], "upstream_id": "inner", "remote_addrs": ["10.0.0.0/8"]}),
        )
        .await;
        node.put(
            "routes/outer",
            json!({"id": "outer", "paths": ["/p"], "upstream_id": "outer", "priority": -1}),
        )
        .await;
        node.until("/p", 200, "outer").await;
        let url = format!("{}/p", node.url);
        // Spoofed entries left of the last untrusted one are the client's own claim.
        let via_proxy = node
            .http
            .get(&url)
            .header("x-forwarded-for", "192.0.2.9, 10.1.2.3");
        let (status, body, _) = node.send(via_proxy).await;
        assert_eq!(
            (status, body.as_str()),
            (200, behind_proxy),
            "trusted: {trusted}"
        );
        let spoofed = node
            .http
            .get(&url)
            .header("x-forwarded-for", "10.1.2.3, 192.0.2.9");
        let (status, body, _) = node.send(spoofed).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "outer"),
            "trusted: {trusted}"
        );
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_smuggling_probes_are_refused() {
    let (port, mut seen) = raw_upstream(Arc::new(Semaphore::new(1000))).await;
    let mut node = Node::start_with(gateway::HttpSettings {
        max_uri_bytes: 1024,
        max_header_bytes: 4096,
        max_body_bytes: 1000,
        ..gateway::HttpSettings::default()
    })
    .await;
    node.put(
        "upstreams/raw",
        json!({"id": "raw", "nodes": [{"host": "127.0.0.1", "port": port}]}),
    )
    .await;
    node.put(
        "routes/all",
        json!({"id": "all", "paths": ["/*"], "upstream_id": "raw"}),
    )
    .await;
    node.until("/ok", 200, "").await;
    while seen.try_recv().is_ok() {}

    let long_uri = format!("/{}", "a".repeat(1100));
    let big_header = "v".repeat(5000);
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "URI over the limit",
            format!("GET {long_uri} HTTP/1.1\r\nhost: h\r\n\r\n"),
            414,
        ),
        (
            "header over the limit",
            format!("GET / HTTP/1.1\r\nhost: h\r\nx-big: {big_header}\r\n\r\n"),
            431,
        ),
        (
            "declared body over the limit",
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 5000\r\n\r\n".to_owned(),
            413,
        ),
        (
            "two different Content-Lengths",
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde".to_owned(),
            400,
        ),
        (
            "a signed Content-Length",
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: +4\r\n\r\nabcd".to_owned(),
            400,
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nhost: h\r\nx-a: 1\r\n  folded\r\n\r\n".to_owned(),
            400,
        ),
        (
            "a bad chunk size",
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_owned(),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let response = raw_exchange(&node.url, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(!response.is_empty(), "{what}: no response");
        assert_eq!(status_of(&response), status, "{what}: {response}");
        // One response and the connection closed: nothing smuggled behind it.
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "{what}: {response}"
        );
        // Refused before anything went upstream. A bad chunk is found only when the
        // body streams, after the head went out: the upstream connection is then
        // cut before a complete request reached it.
        if what != "a bad chunk size" {
            assert!(seen.try_recv().is_err(), "{what}: forwarded");
        }
        while seen.try_recv().is_ok() {}
    }

    // Both framings: refused (RFC 9112 §6.1 allows it), nothing reaches the upstream,
    // and the connection closes, so whatever hides behind the body is never read.
    let smuggle = "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 44\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: h\r\n\r\n";
    let response = raw_exchange(&node.url, smuggle.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), 400, "{response}");
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert!(
        seen.try_recv().is_err(),
        "a request with both framings reached the upstream"
    );

    // A chunked body that grows past the limit is cut off.
    let mut request = b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        request.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "b".repeat(600)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw_exchange(&node.url, &request, Duration::from_secs(5)).await;
    assert!(
        response.is_empty() || status_of(&response) == 413,
        "chunked body over the limit: {response}"
    );

    // Within the limits everything passes.
    assert_eq!(node.get("GET", "/a").await.0, 200);
    let (status, body, _) = node
        .send(node.http.post(format!("{}/b", node.url)).body("abc"))
        .await;
    assert_eq!(status, 200, "{body}");
    node.stop().await;
}

/// Reads one response (its head and a `content-length` body) off a kept-alive
/// connection; returns its status and body.
async fn read_response(conn: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length: usize = header_of(&head, "content-length")
        .unwrap_or_else(|| panic!("no content-length: {head}"))
        .parse()
        .unwrap();
    while data.len() < head_end + length {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed in a body");
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned();
    (status_of(&head), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_must_arrive_within_the_header_read_timeout() {
    // Answers with the request body once it has it all; "a" without one.
    let a = ScriptedUpstream::start(|r| {
        let body = String::from_utf8_lossy(&r.body);
        Answer::new(200, if body.is_empty() { "a" } else { &body })
    })
    .await;
    let mut node = Node::start_with(gateway::HttpSettings {
        header_read_timeout: Duration::from_millis(500),
        ..gateway::HttpSettings::default()
    })
    .await;
    node.put(
        "upstreams/up",
        json!({"id": "up", "nodes": [{"host": "127.0.0.1", "port": a.port()}]}),
    )
    .await;
    node.put(
        "routes/all",
        json!({"id": "all", "paths": ["/*"], "upstream_id": "up"}),
    )
    .await;
    node.until("/x", 200, "a").await;
    let addr = node.url.trim_start_matches("http://").to_owned();

    // Slowloris: the request line at once, then one header byte every 100 ms, each
    // far within any per-read timeout. The head's deadline cuts the connection.
    let slowloris = async {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let start = Instant::now();
        let (mut rd, mut wr) = conn.split();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut header = b"x-slow: ".iter().cycle();
        let cut = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                tokio::select! {
                    read = rd.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    },
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        let _ = wr.write_all(&[*header.next().unwrap()]).await;
                    }
                }
            }
        })
        .await;
        assert!(cut.is_ok(), "a head dribbled for 3 s was not cut");
        (start.elapsed(), String::from_utf8_lossy(&got).into_owned())
    };
    // Meanwhile other connections are served.
    let normal = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        node.get("GET", "/x").await
    };
    let ((took, got), (status, body, _)) = tokio::join!(slowloris, normal);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "cut after {took:?}"
    );
    // Closed without a response, as nginx does.
    assert!(got.is_empty(), "{got}");
    assert_eq!((status, body.as_str()), (200, "a"));

    // A connection that sends nothing at all is not held either.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "an idle new connection was kept for 3 s");
    assert!(start.elapsed() < Duration::from_millis(1500));

    // Keep-alive: heads sent at once, idle between requests longer than the timeout.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_response(&mut conn).await,
            (200, "a".to_owned()),
            "request {i}"
        );
    }
    // A body is not part of the head: sent slowly, it still goes through.
    conn.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    for b in b"abcd" {
        tokio::time::sleep(Duration::from_millis(250)).await;
        conn.write_all(&[*b]).await.unwrap();
    }
    assert_eq!(read_response(&mut conn).await, (200, "abcd".to_owned()));
    node.stop().await;
}

async fn status_of_node(http: &reqwest::Client, status: std::net::SocketAddr) -> (u16, u16, Value) {
    let get = |path: &str| http.get(format!("http://{status}{path}")).send();
    let healthz = get("/healthz").await.unwrap().status().as_u16();
    let ready = get("/readyz").await.unwrap().status().as_u16();
    let body = get("/status").await.unwrap().json().await.unwrap();
    (healthz, ready, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_serves_the_local_snapshot_while_the_store_is_down() {
    let a = NamedUpstream::start("a").await;
    let b = NamedUpstream::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("node.snapshot.json");
    let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
    let (down, _) = tokio::sync::watch::channel(false);
    let partitionable: Arc<dyn ConfigStore> = Arc::new(Partitionable {
        inner: store.clone(),
        down: down.clone(),
    });
    let status = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let options = || Options {
        snapshot_file: Some(snapshot.clone()),
        status_listen: Some(status),
        ..Options::default()
    };

    // A first life: config from the store, written to the snapshot file.
    let mut node = Node::start_on_with(partitionable.clone(), store.clone(), options()).await;
    node.put("upstreams/up", upstream("up", &[&a])).await;
    node.put(
        "routes/r",
        json!({"id": "r", "paths": ["/r"], "upstream_id": "up"}),
    )
    .await;
    node.until("/r", 200, "a").await;
    // A route to a registered service: its nodes are kept in the file as well.
    let registered = node.keyspace.registry_node("default", "orders", "n1");
    let registered_node = json!({"namespace": "default", "service": "orders", "node_id": "n1",
        "host": "127.0.0.1", "port": a.port(), "weight": 1, "lease": "1", "ttl_secs": 30,
        "registered_at_ms": 1});
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: registered,
                value: registered_node.to_string().into_bytes(),
                lease: None,
            }],
        })
        .await
        .unwrap();
    node.put(
        "routes/reg",
        json!({"id": "reg", "paths": ["/reg"], "upstream_id": "lb://orders"}),
    )
    .await;
    node.until("/reg", 200, "a").await;
    let (healthz, ready, body) = status_of_node(&node.http, status).await;
    assert_eq!((healthz, ready), (200, 200));
    assert_eq!(body["config_source"], "store");
    assert_eq!(body["routes"], 2);
    let start = Instant::now();
    while !std::fs::read_to_string(&snapshot)
        .is_ok_and(|t| t.contains("/registry/default/orders/n1") && t.contains("routes/reg"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no snapshot written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revision = node.revision;
    node.stop().await;

    // The store is unreachable when the node starts again: it serves the snapshot
    // and says so; the heartbeat cannot be written meanwhile.
    down.send_replace(true);
    let mut node = Node::start_on_with(partitionable, store, options()).await;
    node.revision = revision;
    let (_, ready, _) = status_of_node(&node.http, status).await;
    assert_eq!(ready, 503, "ready before any config");
    node.until("/r", 200, "a").await;
    node.until("/reg", 200, "a").await;
    let (_, ready, body) = status_of_node(&node.http, status).await;
    assert_eq!(ready, 200);
    assert_eq!(body["config_source"], "local_snapshot");
    assert_eq!(body["applied_revision"], revision);

    // The store comes back: its content replaces the snapshot's.
    node.put("upstreams/up", upstream("up", &[&b])).await;
    down.send_replace(false);
    node.until("/r", 200, "b").await;
    let (_, _, body) = status_of_node(&node.http, status).await;
    assert_eq!(body["config_source"], "store");
    let key = node.keyspace.node(INSTANCE, "node-1");
    let start = Instant::now();
    loop {
        let beat = node.store.get(&key).await.unwrap();
        let beat = beat.map(|kv| serde_json::from_slice::<NodeHeartbeat>(&kv.value).unwrap());
        if beat.as_ref().is_some_and(|b| {
            b.applied_revision == Revision(node.revision)
                && b.config_source == model::cluster::ConfigSource::Store
        }) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{beat:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The file names its instance (a node of another instance refuses it).
    node.stop().await;
    let text = std::fs::read_to_string(&snapshot).unwrap();
    assert!(text.contains("\"instance\":\"instance_a\""));
}
