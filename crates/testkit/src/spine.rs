//! A whole Portico deployment of real processes for end-to-end tests and benchmarks:
//! one config store server (etcd, or Redis), one admin, two clusters (an agent each,
//! with its own key prefix in the store), and gateway nodes: two for `instance_a` and
//! one for `instance_b` in cluster `c1`, one for `instance_a` in cluster `c2`. Every
//! process is killed on drop.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::deployment;
use crate::etcd::EtcdServer;
use crate::process::Process;
use crate::redis::RedisServer;
use crate::upstream::NamedUpstream;

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
pub const AGENT_TOKEN: &str = "e2e-agent-token-9876543210";
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Which config store a spine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Etcd,
    Redis,
}

/// The config store server of a spine.
pub enum StoreServer {
    Etcd(EtcdServer),
    /// Without persistence: after [`StoreServer::start`] it is empty.
    Redis(RedisServer),
}

impl StoreServer {
    /// Starts a new, empty server of `kind`; waits until it answers.
    pub fn launch(kind: StoreKind) -> Self {
        match kind {
            StoreKind::Etcd => Self::Etcd(EtcdServer::launch()),
            StoreKind::Redis => Self::Redis(RedisServer::launch()),
        }
    }

    /// The URL `portico --store` takes, without a root.
    pub fn store_url(&self) -> String {
        match self {
            Self::Etcd(etcd) => etcd.store_url(),
            Self::Redis(redis) => redis.store_url(),
        }
    }

    /// Stops the server (SIGKILL, as a crash).
    pub fn stop(&mut self) {
        match self {
            Self::Etcd(etcd) => etcd.stop(),
            Self::Redis(redis) => redis.stop(),
        }
    }

    /// Starts it again after [`StoreServer::stop`]; waits until it answers.
    pub fn start(&mut self) {
        match self {
            Self::Etcd(etcd) => etcd.start(),
            Self::Redis(redis) => redis.start(),
        }
    }
}

/// Everything the flow needs, killed when dropped.
pub struct Spine {
    pub store: StoreServer,
    pub admin_url: String,
    pub agents: Vec<Process>,
    /// The agents' base URLs (`http://host:port`), cluster 1 first.
    pub agent_urls: Vec<String>,
    _admin: Process,
    /// Gateway nodes: cluster-1 instance_a (two nodes), cluster-1 instance_b,
    /// cluster-2 instance_a.
    pub gw_1a: [String; 2],
    pub gw_1b: String,
    pub gw_2a: String,
    _gateways: Vec<Process>,
    pub upstreams: [NamedUpstream; 3],
    pub http: reqwest::Client,
}

impl Spine {
    /// Starts everything on etcd with the `portico` binary at `bin`, the admin on
    /// `database`, logs in `dir`; returns once both clusters' instances are discovered.
    pub async fn start(bin: &Path, dir: &Path, database: &str) -> Self {
        Self::start_on(StoreKind::Etcd, bin, dir, database).await
    }

    /// [`Spine::start`] with agents and gateways on a store of `kind`.
    pub async fn start_on(kind: StoreKind, bin: &Path, dir: &Path, database: &str) -> Self {
        let store_server = StoreServer::launch(kind);
        let upstreams = [
            NamedUpstream::start("u1").await,
            NamedUpstream::start("u2").await,
            NamedUpstream::start("u3").await,
        ];
        let mut agents = Vec::new();
        let mut agent_urls = Vec::new();
        for (i, (prefix, instances)) in [("/c1", "instance_a,instance_b"), ("/c2", "instance_a")]
            .into_iter()
            .enumerate()
        {
            let store = format!("{}{prefix}", store_server.store_url());
            let (agent, url) =
                deployment::start_agent(&format!("agent-c{}", i + 1), bin, &store, instances, dir);
            agents.push(agent);
            agent_urls.push(url);
        }
        let (admin, admin_listen) = deployment::start_admin(bin, database, dir);
        let mut gateways = Vec::new();
        let mut gateway = |name: &str, prefix: &str, instance: &str| {
            let store = format!("{}{prefix}", store_server.store_url());
            let (process, url) = deployment::start_gateway(name, bin, &store, instance, dir);
            gateways.push(process);
            url
        };
        let gw_1a = [
            gateway("gw-c1-a-1", "/c1", "instance_a"),
            gateway("gw-c1-a-2", "/c1", "instance_a"),
        ];
        let gw_1b = gateway("gw-c1-b", "/c1", "instance_b");
        let gw_2a = gateway("gw-c2-a", "/c2", "instance_a");
        let spine = Self {
            store: store_server,
            admin_url: format!("http://{admin_listen}/gateway/apiserver/v1"),
            agents,
            agent_urls: agent_urls.clone(),
            _admin: admin,
            gw_1a,
            gw_1b,
            gw_2a,
            _gateways: gateways,
            upstreams,
            http: reqwest::Client::new(),
        };
        for addr in [&admin_listen] {
            crate::wait_for_tcp(addr, DEADLINE).await;
        }
        for (i, url) in agent_urls.iter().enumerate() {
            let (status, body) = spine
                .admin(
                    "POST",
                    "/clusters",
                    Some(json!({"name": format!("c{}", i + 1), "agent_address": url})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        spine
            .until("instances discovered", || async {
                let c1 = spine.instance_names("c1").await;
                let c2 = spine.instance_names("c2").await;
                (c1 == ["instance_a", "instance_b"] && c2 == ["instance_a"]).then_some(())
            })
            .await;
        spine
    }

    /// Calls the admin API with the admin token.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.admin_url);
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("admin reachable");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn admin_raw(&self, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.admin_url))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("admin reachable");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn instance_names(&self, cluster: &str) -> Vec<String> {
        let (status, body) = self
            .admin("GET", &format!("/clusters/{cluster}/instances"), None)
            .await;
        if status != StatusCode::OK {
            return vec![];
        }
        let mut names: Vec<String> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "online")
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Writes a resource through the admin; returns the sync state it reports.
    pub async fn put(&self, cluster: &str, instance: &str, kind: &str, body: Value) -> String {
        let id = body["id"].as_str().unwrap().to_owned();
        let url = format!(
            "{}/clusters/{cluster}/instances/{instance}/{kind}/{id}",
            self.admin_url
        );
        let resp = self
            .http
            .put(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let sync = resp
            .headers()
            .get("x-portico-sync")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "PUT {kind}/{id}: {status} {text}");
        sync
    }

    /// GET through a gateway node: (status, upstream name or error body).
    pub async fn via(&self, gateway: &str, path: &str) -> (u16, String) {
        match self.http.get(format!("{gateway}{path}")).send().await {
            Ok(resp) => (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Polls until `check` yields a value, or fails after the deadline.
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

    /// Waits until every gateway in `nodes` answers `path` with `want` (status, body).
    pub async fn all_serve(&self, nodes: &[&str], path: &str, want: (u16, &str)) {
        for node in nodes {
            self.until(&format!("{node}{path} -> {want:?}"), || async {
                let (status, body) = self.via(node, path).await;
                (status == want.0 && (want.1.is_empty() || body == want.1)).then_some(())
            })
            .await;
        }
    }

    /// Configures `cluster`/`instance` through the admin: upstream `up` at test upstream
    /// `i` and route `r1` for `/api/*` to it.
    pub async fn serve_api_from(&self, cluster: &str, instance: &str, i: usize) {
        self.put(cluster, instance, "upstreams", self.upstream(i))
            .await;
        self.put(
            cluster,
            instance,
            "routes",
            json!({"id": "r1", "paths": ["/api/*"], "upstream_id": "up"}),
        )
        .await;
    }

    /// The upstream `up` pointing at test upstream `i` (named `u{i+1}`).
    pub fn upstream(&self, i: usize) -> Value {
        json!({"id": "up", "nodes": [{"host": "127.0.0.1", "port": self.upstreams[i].port(), "weight": 1}]})
    }
}
