//! The harness shared by the gateway's HTTP tests: a node on the in-process store (or
//! any store), written to as the agent writes, and small upstream helpers.

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::{ConfigStore, Op, Txn};
use testkit::upstream::NamedUpstream;

pub const INSTANCE: &str = "instance_a";

/// Set: nodes serve every request through Pingora's proxy (no fast path).
pub const PINGORA_ONLY: &str = "PORTICO_TEST_PINGORA_ONLY";

/// Requests a node has served when [`Node::start_on_with`] hands it over: its
/// start-up probe (`GET /`, a 404 until a route serves `/`). The node counts it in
/// its load like any request.
pub const START_PROBES: u64 = 1;

/// How a test node is set up beyond the defaults.
#[derive(Default)]
pub struct Options {
    pub http: gateway::HttpSettings,
    pub snapshot_file: Option<std::path::PathBuf>,
    pub status_listen: Option<std::net::SocketAddr>,
    /// Serve TLS too, on a second port.
    pub tls: bool,
    /// With `tls`: a PEM CA bundle every TLS client must present a certificate of.
    pub client_ca: Option<String>,
    /// Default 10 s.
    pub drain_timeout: Option<Duration>,
    /// Where to listen; default a free loopback port.
    pub listen: Option<SocketAddr>,
    /// The namespace the node is bound to (`--namespace`).
    pub namespace: Option<String>,
    /// Its Kubernetes cluster list (`--kubernetes-clusters`).
    pub kubernetes_clusters: Option<std::path::PathBuf>,
}

pub struct Node {
    /// `http://{listen}`.
    pub url: String,
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub store: Arc<dyn ConfigStore>,
    pub keyspace: Keyspace,
    pub revision: u64,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
    /// Keeps the client CA bundle on disk while the node runs.
    _client_ca: Option<tempfile::NamedTempFile>,
}

impl Node {
    pub async fn start() -> Self {
        Self::start_with(gateway::HttpSettings::default()).await
    }

    pub async fn start_with(http: gateway::HttpSettings) -> Self {
        Self::start_with_options(Options {
            http,
            ..Options::default()
        })
        .await
    }

    /// A node on its own in-process store.
    pub async fn start_with_options(options: Options) -> Self {
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        Self::start_on_with(store.clone(), store, options).await
    }

    /// A node with a TLS listener too; with `client_ca` (PEM) it requires client
    /// certificates signed by it.
    pub async fn start_tls(client_ca: Option<&str>) -> Self {
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        let options = Options {
            tls: true,
            client_ca: client_ca.map(str::to_owned),
            ..Options::default()
        };
        Self::start_on_with(store.clone(), store, options).await
    }

    /// The gateway reads `gateway_store`; the test writes (as the agent) and reads
    /// heartbeats through `store`.
    pub async fn start_on(
        gateway_store: Arc<dyn ConfigStore>,
        store: Arc<dyn ConfigStore>,
    ) -> Self {
        Self::start_on_with(gateway_store, store, Options::default()).await
    }

    pub async fn start_on_with(
        gateway_store: Arc<dyn ConfigStore>,
        store: Arc<dyn ConfigStore>,
        mut options: Options,
    ) -> Self {
        // `cargo xtask test` runs the proxy suites a second time with this set, so the
        // behaviour they check holds on Pingora's path as well as on the fast path.
        if std::env::var_os(PINGORA_ONLY).is_some() {
            options.http.fast_path = false;
        }
        let keyspace = Keyspace::default();
        let loopback = || -> SocketAddr {
            format!("127.0.0.1:{}", testkit::free_port())
                .parse()
                .unwrap()
        };
        let ca_file = options.client_ca.as_ref().map(|pem| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut file, pem.as_bytes()).unwrap();
            file
        });
        // A node that does not answer right after it started is started again, on
        // other ports, and says so: seen twice in a few hundred runs (a refused
        // connection just after the port accepted one), cause not found yet.
        let mut attempt = 0;
        let (listen, tls_listen, reach, stop, task) = loop {
            attempt += 1;
            let listen = options.listen.unwrap_or_else(loopback);
            let tls_listen = options.tls.then(loopback);
            let (stop, rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(gateway::run(
                gateway::GatewayConfig {
                    listen,
                    tls_listen,
                    client_ca: ca_file.as_ref().map(|f| f.path().to_path_buf()),
                    instance: INSTANCE.into(),
                    namespace: options.namespace.clone(),
                    node_id: "node-1".into(),
                    advertise_address: listen.to_string(),
                    heartbeat_interval: Duration::from_millis(200),
                    http: options.http.clone(),
                    snapshot_file: options.snapshot_file.clone(),
                    status_listen: options.status_listen,
                    drain_timeout: options.drain_timeout.unwrap_or(Duration::from_secs(10)),
                    threads: 1,
                    kubernetes_clusters: options.kubernetes_clusters.clone(),
                },
                gateway_store.clone(),
                keyspace.clone(),
                rx,
            ));
            let reach = if listen.ip().is_unspecified() {
                format!("127.0.0.1:{}", listen.port())
            } else {
                listen.to_string()
            };
            testkit::wait_for_tcp(&reach, Duration::from_secs(10)).await;
            if let Some(addr) = tls_listen {
                testkit::wait_for_tcp(&addr.to_string(), Duration::from_secs(10)).await;
            }
            // The start-up probe (START_PROBES), on a client dropped after it.
            let answered = reqwest::Client::new()
                .get(format!("http://{reach}/"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match answered {
                Ok(_) => break (listen, tls_listen, reach, stop, task),
                Err(e) if attempt < 3 => {
                    eprintln!(
                        "test node on {reach} did not answer after it started ({e}; its task \
                         finished: {}); starting it again",
                        task.is_finished()
                    );
                    stop.send_replace(true);
                    task.abort();
                }
                Err(e) => panic!("test node on {reach} did not answer after it started: {e}"),
            }
        };
        Self {
            url: format!("http://{reach}"),
            listen,
            tls_listen,
            _client_ca: ca_file,
            store,
            keyspace,
            revision: 0,
            stop,
            task,
            http: reqwest::Client::new(),
        }
    }

    /// `http://{listen}{path}`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The TLS listener; the node must have been started with one.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_listen.expect("the node has no TLS listener")
    }

    /// `https://{name}:{tls port}{path}`; clients resolve `name` to loopback.
    pub fn tls_url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.tls_addr().port())
    }

    /// An upstream `id` and a route `id` for `path` to it.
    pub async fn route(&mut self, id: &str, path: &str, upstream: Value) {
        self.put(&format!("upstreams/{id}"), upstream).await;
        self.put(
            &format!("routes/{id}"),
            json!({"id": id, "paths": [path], "upstream_id": id}),
        )
        .await;
    }

    /// Writes `key` (relative to the instance) and bumps meta, as the agent does.
    pub async fn put(&mut self, key: &str, value: Value) {
        self.write(vec![Op::Put {
            key: format!("{}{key}", self.keyspace.instance_prefix(INSTANCE)),
            value: value.to_string().into_bytes(),
            lease: None,
        }])
        .await;
    }

    pub async fn put_raw(&mut self, key: &str, raw: &str) {
        self.write(vec![Op::Put {
            key: format!("{}{key}", self.keyspace.instance_prefix(INSTANCE)),
            value: raw.as_bytes().to_vec(),
            lease: None,
        }])
        .await;
    }

    pub async fn delete(&mut self, key: &str) {
        self.write(vec![Op::Delete {
            key: format!("{}{key}", self.keyspace.instance_prefix(INSTANCE)),
        }])
        .await;
    }

    pub async fn write(&mut self, mut ops: Vec<Op>) {
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

    pub async fn get(&self, method: &str, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        self.send(
            self.http
                .request(method.parse().unwrap(), format!("{}{path}", self.url)),
        )
        .await
    }

    pub async fn send(
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

    /// The node's current heartbeat in the store.
    pub async fn heartbeat(&self) -> Option<model::cluster::NodeHeartbeat> {
        let key = self.keyspace.node(INSTANCE, "node-1");
        let kv = self.store.get(&key).await.unwrap()?;
        Some(serde_json::from_slice(&kv.value).unwrap())
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("gateway stops")
            .unwrap()
            .unwrap();
    }

    /// Waits until `path` answers `status` with `body` (empty = any body).
    pub async fn until(&self, path: &str, status: u16, body: &str) {
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

/// An upstream `id` whose nodes are `nodes` on loopback, weight 1 each.
pub fn upstream(id: &str, nodes: &[&NamedUpstream]) -> Value {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"host": "127.0.0.1", "port": n.port(), "weight": 1}))
        .collect();
    json!({"id": id, "nodes": nodes})
}

/// A received request as the differential tests compare it: method, target, version,
/// headers as a sorted multiset without framing and connection headers (either engine
/// may re-frame a body or say keep-alive), cookie lines joined (RFC 9113 §8.2.3 asks a
/// gateway to join HTTP/2 cookies for HTTP/1.1; the fast path does, Pingora forwards
/// them as they came), and the body.
pub fn comparable(
    r: &testkit::upstream::Received,
) -> (String, String, String, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "connection" | "content-length" | "transfer-encoding" | "cookie"
            )
        })
        .cloned()
        .collect();
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    if !cookies.is_empty() {
        headers.push(("cookie".to_owned(), cookies.join("; ")));
    }
    headers.sort();
    (
        r.method.clone(),
        r.target.clone(),
        r.version.clone(),
        headers,
        r.body.clone(),
    )
}

/// What both differential tests start from: upstream `app` on `port`, a route
/// `/admin/*` whose ip-restriction refuses loopback clients (403), `/get-only` for
/// GET alone (405 otherwise), `/keyed/*` behind key-auth (401 without the key
/// [`DIFF_KEY`], which never reaches the upstream) and a limit (headers only), and
/// `/rw/*` with proxy-rewrite (path, Host, headers) and cors.
/// The key of the differential tests' consumer.
pub const DIFF_KEY: &str = "diff-key-0000";

pub async fn put_refusing_routes(node: &mut Node, port: u16) {
    node.put(
        "consumers/differ",
        json!({"id": "differ", "credentials": [
            {"type": "key-auth", "id": "k", "key_hash": model::consumer::hash_key(DIFF_KEY)}
        ]}),
    )
    .await;
    node.put(
        "routes/rewritten",
        json!({"id": "rewritten", "paths": ["/rw/*"], "upstream_id": "app",
               "plugins": {"proxy-rewrite": {"regex_uri": ["^/rw/(.*)", "/new/$1"],
                                             "host": "inside.example",
                                             "headers": {"set": {"x-set": "1"}, "add": {"x-add": "2"},
                                                         "remove": ["x-drop"]}},
                           "cors": {"allow_origins": ["https://o.example"]}}}),
    )
    .await;
    node.put(
        "routes/keyed",
        json!({"id": "keyed", "paths": ["/keyed/*"], "upstream_id": "app",
               "plugins": {"key-auth": {},
                           "limit-count": {"count": 1000000, "time_window": 86400}}}),
    )
    .await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": port, "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/admin",
        json!({"id": "admin", "paths": ["/admin/*"], "upstream_id": "app",
               "plugins": {"ip-restriction": {"denylist": ["127.0.0.0/8"]}}}),
    )
    .await;
    node.put(
        "routes/get",
        json!({"id": "get", "paths": ["/get-only"], "methods": ["GET"], "upstream_id": "app"}),
    )
    .await;
}

/// Sends raw bytes on a new connection and reads until the gateway closes it or
/// `timeout` passes; returns what came back.
pub async fn raw_exchange(url: &str, request: &[u8], timeout: Duration) -> String {
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, request)
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        timeout,
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}
