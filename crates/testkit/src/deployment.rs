//! A Portico deployment of any shape for benchmarks: one config store server (etcd or
//! Redis), one admin on a database the caller names, and any number of clusters, each
//! with its own agent, its own root in the store (`/c1`, `/c2` …), one instance
//! (`bench`) and as many gateway nodes as its [`Layout`] says. The process launchers
//! are shared with [`crate::spine::Spine`], so both start Portico the same way. Every
//! process is killed on drop.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::process::Process;
use crate::spine::{StoreKind, StoreServer, ADMIN_TOKEN, AGENT_TOKEN, DEADLINE};

/// The one instance of every cluster of a [`Deployment`].
pub const INSTANCE: &str = "bench";

/// What to start: the store kind and, per cluster (cluster 1 first), how many gateway
/// nodes its instance has.
#[derive(Debug, Clone)]
pub struct Layout {
    pub store: StoreKind,
    pub nodes_per_cluster: Vec<usize>,
}

/// One cluster of a [`Deployment`]: its agent and its instance's gateway nodes.
pub struct Cluster {
    /// `c1`, `c2` …, as registered with the admin.
    pub name: String,
    /// The agent's base URL (`http://host:port`).
    pub agent_url: String,
    /// The gateway nodes' base URLs.
    pub nodes: Vec<String>,
    pub agent: Process,
    _gateways: Vec<Process>,
}

/// The running deployment, killed when dropped.
pub struct Deployment {
    pub store: StoreServer,
    /// The admin API's base URL (`…/gateway/apiserver/v1`).
    pub admin_url: String,
    pub clusters: Vec<Cluster>,
    pub http: reqwest::Client,
    _admin: Process,
}

impl Deployment {
    /// Starts `layout` with the `portico` binary at `bin`, the admin on `database`,
    /// logs in `dir`; returns once the admin has discovered every cluster's instance.
    pub async fn start(layout: &Layout, bin: &Path, dir: &Path, database: &str) -> Self {
        let store = StoreServer::launch(layout.store);
        let mut clusters = Vec::new();
        for (i, &nodes) in layout.nodes_per_cluster.iter().enumerate() {
            let name = format!("c{}", i + 1);
            let store_url = format!("{}/{name}", store.store_url());
            let (agent, agent_url) =
                start_agent(&format!("agent-{name}"), bin, &store_url, INSTANCE, dir);
            let mut gateways = Vec::new();
            let mut urls = Vec::new();
            for n in 0..nodes {
                let (gateway, url) = start_gateway(
                    &format!("gw-{name}-{}", n + 1),
                    bin,
                    &store_url,
                    INSTANCE,
                    dir,
                );
                gateways.push(gateway);
                urls.push(url);
            }
            clusters.push(Cluster {
                name,
                agent_url,
                nodes: urls,
                agent,
                _gateways: gateways,
            });
        }
        let (admin, admin_listen) = start_admin(bin, database, dir);
        let deployment = Self {
            store,
            admin_url: format!("http://{admin_listen}/gateway/apiserver/v1"),
            clusters,
            http: reqwest::Client::new(),
            _admin: admin,
        };
        crate::wait_for_tcp(&admin_listen, DEADLINE).await;
        for cluster in &deployment.clusters {
            let (status, body) = deployment
                .admin(
                    "POST",
                    "/clusters",
                    Some(json!({"name": cluster.name, "agent_address": cluster.agent_url})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        for cluster in &deployment.clusters {
            deployment
                .until(&format!("{} discovered", cluster.name), || async {
                    let path = format!("/clusters/{}/instances/{INSTANCE}", cluster.name);
                    let (status, body) = deployment.admin("GET", &path, None).await;
                    (status == StatusCode::OK && body["status"] == "online").then_some(())
                })
                .await;
        }
        deployment
    }

    /// Calls the admin API with the admin token: (status, JSON body or the text).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(
                method.parse().expect("an HTTP method"),
                format!("{}{path}", self.admin_url),
            )
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin reachable");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Writes one object of `kind` into `cluster`'s instance through the admin;
    /// returns the sync state the admin reports (`x-portico-sync`).
    pub async fn put(&self, cluster: &str, kind: &str, body: &Value) -> String {
        let id = body["id"].as_str().expect("the object has an id");
        let url = format!(
            "{}/clusters/{cluster}/instances/{INSTANCE}/{kind}/{id}",
            self.admin_url
        );
        let response = self
            .http
            .put(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("admin reachable");
        sync_state(response, &format!("PUT {kind}/{id}")).await
    }

    /// Replaces `cluster`'s instance's whole config by the YAML file `yaml` (the
    /// declarative apply, one revision); returns the sync state the admin reports.
    pub async fn apply(&self, cluster: &str, yaml: String) -> String {
        let url = format!(
            "{}/clusters/{cluster}/instances/{INSTANCE}/config",
            self.admin_url
        );
        let response = self
            .http
            .put(url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/yaml")
            .body(yaml)
            .send()
            .await
            .expect("admin reachable");
        sync_state(response, &format!("PUT {cluster} config")).await
    }

    /// Polls until `check` yields a value, or fails after `DEADLINE`.
    pub async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The `x-portico-sync` header of a successful answer; panics on a refusal.
async fn sync_state(response: reqwest::Response, what: &str) -> String {
    let status = response.status();
    let sync = response
        .headers()
        .get("x-portico-sync")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "{what}: {status} {}",
        &text[..text.len().min(500)]
    );
    sync
}

/// Starts `portico agent` for `instances` (comma-separated) on `store`, with the
/// agent token; answers the process and its base URL.
pub fn start_agent(
    name: &str,
    bin: &Path,
    store: &str,
    instances: &str,
    dir: &Path,
) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", crate::free_port());
    let agent = Process::start(
        name,
        bin,
        &["agent", "--listen", &listen, "--store", store],
        &[
            ("PORTICO_INSTANCES", instances),
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
        ],
        dir,
    );
    (agent, format!("http://{listen}"))
}

/// Starts `portico admin` on `database` (polling agents every 300 ms); answers the
/// process and its listen address.
pub fn start_admin(bin: &Path, database: &str, dir: &Path) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", crate::free_port());
    let admin = Process::start(
        "admin",
        bin,
        &[
            "admin",
            "--listen",
            &listen,
            "--database",
            database,
            "--poll-interval",
            "300ms",
        ],
        &[
            ("PORTICO_ADMIN_TOKEN", ADMIN_TOKEN),
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
        ],
        dir,
    );
    (admin, listen)
}

/// Starts a `portico gateway` node named `name` of `instance` on `store` (one worker
/// thread, heartbeat every 500 ms, its own snapshot file as separate machines would
/// have); answers the process and its base URL.
pub fn start_gateway(
    name: &str,
    bin: &Path,
    store: &str,
    instance: &str,
    dir: &Path,
) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", crate::free_port());
    let snapshot = dir.join(format!("{name}.snapshot.json"));
    let snapshot = snapshot.to_string_lossy();
    let gateway = Process::start(
        name,
        bin,
        &[
            "gateway",
            "--listen",
            &listen,
            "--instance",
            instance,
            "--store",
            store,
            "--node-id",
            name,
            "--heartbeat-interval",
            "500ms",
            "--threads",
            "1",
            "--snapshot-file",
            &snapshot,
        ],
        &[],
        dir,
    );
    (gateway, format!("http://{listen}"))
}
