//! The harness shared by the gateway's HTTP tests: a node on the in-process store (or
//! any store), written to as the agent writes, and small upstream helpers.

#![allow(dead_code)] // each test binary uses a different part of it

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::{ConfigStore, Op, Txn};
use testkit::upstream::NamedUpstream;

pub const INSTANCE: &str = "instance_a";

/// How a test node is set up beyond the defaults.
#[derive(Default)]
pub struct Options {
    pub http: gateway::HttpSettings,
    pub snapshot_file: Option<std::path::PathBuf>,
    pub status_listen: Option<std::net::SocketAddr>,
}

pub struct Node {
    pub url: String,
    pub store: Arc<dyn ConfigStore>,
    pub keyspace: Keyspace,
    pub revision: u64,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
}

impl Node {
    pub async fn start() -> Self {
        Self::start_with(gateway::HttpSettings::default()).await
    }

    pub async fn start_with(http: gateway::HttpSettings) -> Self {
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        let options = Options {
            http,
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
        options: Options,
    ) -> Self {
        let keyspace = Keyspace::default();
        let listen = format!("127.0.0.1:{}", testkit::free_port())
            .parse()
            .unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(gateway::run(
            gateway::GatewayConfig {
                listen,
                tls_listen: None,
                client_ca: None,
                instance: INSTANCE.into(),
                node_id: "node-1".into(),
                advertise_address: listen.to_string(),
                heartbeat_interval: Duration::from_millis(200),
                http: options.http,
                snapshot_file: options.snapshot_file,
                status_listen: options.status_listen,
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
