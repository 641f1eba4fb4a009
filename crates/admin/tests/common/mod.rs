//! Test harness shared by the admin's integration tests: the real admin and the real
//! agent (on an in-process store) served on loopback, an in-process gateway node on the
//! agent's store, plus the CRUD + revision flow that every database must pass.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admin::{Admin, AdminConfig};
use model::resource::ResourceKind;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::ConfigStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "admin-test-token-0123456789";
pub const AGENT_TOKEN: &str = "agent-test-token-0123456789";
pub const API: &str = "/gateway/apiserver/v1";
pub const CERT: &str = include_str!("../../../model/tests/fixtures/example.crt");
pub const KEY: &str = include_str!("../../../model/tests/fixtures/example.key");
/// The data key test admins seal secrets with (base64 of 32 bytes of 7).
pub const DATA_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

pub fn data_key() -> admin::DataKey {
    admin::DataKey::from_base64(DATA_KEY).unwrap()
}

/// An admin served on a free loopback port until dropped.
pub struct TestAdmin {
    pub url: String,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestAdmin {
    /// An admin with the test data key and, for clusters registered without a token
    /// of their own, the shared token of earlier versions (`AGENT_TOKEN`).
    pub async fn start(database_url: &str, poll_interval: Duration) -> Self {
        Self::start_with(AdminConfig {
            database_url: database_url.to_owned(),
            poll_interval,
            agent_token: Some(AGENT_TOKEN.to_owned()),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            data_key: Some(data_key()),
            ..AdminConfig::default()
        })
        .await
    }

    pub async fn start_with(config: AdminConfig) -> Self {
        let (admin, _) = Admin::open(config).await.expect("the admin opens");
        Self::serve(admin).await
    }

    pub async fn serve(admin: Admin) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{API}", listener.local_addr().unwrap());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(admin.run(listener, rx));
        Self {
            url,
            http: reqwest::Client::new(),
            stop,
            task: Some(task),
        }
    }

    /// Stops serving and waits until the database is closed.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Ends the admin as a crash would: its task is aborted without the shutdown
    /// signal, so nothing is handed over.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        // Dropping the sender would read as a shutdown to anything still listening.
        std::mem::forget(self.stop.clone());
    }

    /// A call with the admin token and a raw body; the answer's status, headers and JSON.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.call_as(Some(ADMIN_TOKEN), method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("the admin answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Value) -> Answer {
        self.call(method, path, Some(&body.to_string())).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    /// Registers `name` with its agent and the agent's token, and waits until the
    /// agent's instances show up.
    pub async fn register(&self, name: &str, agent: &TestAgent, instances: &[&str]) {
        let answer = self
            .send(
                "POST",
                "/clusters",
                json!({"name": name, "agent_address": agent.url(), "agent_token": agent.token}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert!(
            answer.body.get("agent_token").is_none(),
            "a given token is never answered"
        );
        // `name@namespace` entries are reported as `name`.
        let mut want: Vec<String> = instances
            .iter()
            .map(|s| s.split('@').next().unwrap().to_owned())
            .collect();
        want.sort();
        wait_until(&format!("instances of {name} discovered"), || async {
            (self.online_instances(name).await == want).then_some(())
        })
        .await;
    }

    pub async fn online_instances(&self, cluster: &str) -> Vec<String> {
        let answer = self.get(&format!("/clusters/{cluster}/instances")).await;
        let mut names: Vec<String> = answer.body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|i| i["status"] == "online")
                    .map(|i| i["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub async fn instance(&self, cluster: &str, instance: &str) -> Value {
        let answer = self
            .get(&format!("/clusters/{cluster}/instances/{instance}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    /// What the DB holds for an instance: every kind's list and the revision.
    pub async fn desired(&self, cluster: &str, instance: &str) -> (Vec<Value>, u64) {
        let mut lists = Vec::new();
        let mut revision = None;
        for kind in ResourceKind::ALL {
            let answer = self
                .get(&format!("/clusters/{cluster}/instances/{instance}/{kind}"))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            lists.push(answer.body["items"].clone());
            revision = answer.body["revision"].as_u64();
        }
        (lists, revision.expect("lists carry the revision"))
    }
}

impl Drop for TestAdmin {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn revision(&self) -> u64 {
        self.header("x-portico-revision")
            .parse()
            .unwrap_or_else(|_| panic!("no revision header: {self:?}"))
    }

    /// The `field`s of the error's details.
    pub fn fields(&self) -> Vec<String> {
        self.body["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|d| d["field"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The real agent on an in-process store, at a fixed address so it can be stopped and
/// started again "on the same host".
pub struct TestAgent {
    pub addr: SocketAddr,
    /// Served over HTTPS with this configuration when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The agent's `PORTICO_AGENT_TOKEN`.
    pub token: String,
    pub store: Arc<MemoryStore>,
    pub keyspace: Keyspace,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestAgent {
    pub async fn start(instances: &[&str]) -> Self {
        Self::start_with_token(instances, AGENT_TOKEN).await
    }

    pub async fn start_with_token(instances: &[&str], token: &str) -> Self {
        Self::start_with(instances, token, None).await
    }

    pub async fn start_with(
        instances: &[&str],
        token: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut agent = Self {
            addr: listener.local_addr().unwrap(),
            tls,
            token: token.to_owned(),
            store: Arc::new(MemoryStore::new()),
            keyspace: Keyspace::default(),
            stop: None,
            task: None,
        };
        agent.serve(listener, instances);
        agent
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener, instances: &[&str]) {
        let store: Arc<dyn ConfigStore> = self.store.clone();
        let state = agent::AgentState::new(
            store,
            self.keyspace.clone(),
            instances.iter().map(|s| s.to_string()),
            None,
            &self.token,
        )
        .unwrap()
        .with_store_info(model::cluster::StoreInfo {
            backend: model::cluster::StoreBackend::Memory,
            endpoints: Vec::new(),
        });
        let state = match &self.tls {
            Some(tls) => state.with_tls(tls.clone()),
            None => state,
        };
        let (stop, rx) = watch::channel(false);
        self.task = Some(tokio::spawn(agent::run(listener, state, rx)));
        self.stop = Some(stop);
    }

    /// Stops serving; connections are refused until [`TestAgent::restart`].
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Serves again on the same address and store, managing `instances`.
    pub async fn restart(&mut self, instances: &[&str]) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener, instances);
    }

    /// Replaces the store with an empty one (a wiped etcd) and serves again.
    pub async fn restart_with_empty_store(&mut self, instances: &[&str]) {
        self.stop().await;
        self.store = Arc::new(MemoryStore::new());
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener, instances);
    }

    /// The admin revision the store's meta key holds for `instance`.
    pub async fn meta(&self, instance: &str) -> Option<u64> {
        let kv = self
            .store
            .get(&self.keyspace.meta(instance))
            .await
            .unwrap()?;
        let meta: Value = serde_json::from_slice(&kv.value).unwrap();
        meta["revision"].as_u64()
    }

    /// A resource as stored, key included.
    pub async fn stored(&self, instance: &str, kind: ResourceKind, id: &str) -> Option<Value> {
        let kv = self
            .store
            .get(&self.keyspace.resource(instance, kind, id))
            .await
            .unwrap()?;
        Some(serde_json::from_slice(&kv.value).unwrap())
    }

    /// The ids stored for `instance` under `kind`, sorted.
    pub async fn stored_ids(&self, instance: &str, kind: ResourceKind) -> Vec<String> {
        let listing = self
            .store
            .list(&self.keyspace.kind_prefix(instance, kind))
            .await
            .unwrap();
        listing
            .kvs
            .iter()
            .map(|kv| kv.key.rsplit('/').next().unwrap().to_owned())
            .collect()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
    }
}

/// An in-process gateway node of `instance_a` on a store (an agent's), heartbeating
/// every 200 ms; stopped by [`TestGateway::stop`].
pub struct TestGateway {
    pub listen: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestGateway {
    /// Starts node `node_id`; returns once it listens.
    pub async fn start(node_id: &str, store: Arc<dyn ConfigStore>, keyspace: Keyspace) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
            .parse()
            .unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(gateway::run(
            gateway::GatewayConfig {
                listen,
                tls_listen: None,
                client_ca: None,
                instance: "instance_a".into(),
                namespace: None,
                node_id: node_id.into(),
                advertise_address: listen.to_string(),
                heartbeat_interval: Duration::from_millis(200),
                http: gateway::HttpSettings::default(),
                snapshot_file: None,
                status_listen: None,
                drain_timeout: Duration::from_secs(5),
                threads: 1,
                kubernetes_clusters: None,
            },
            store,
            keyspace,
            stopped,
        ));
        testkit::wait_for_tcp(&listen.to_string(), Duration::from_secs(10)).await;
        Self { listen, stop, task }
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the gateway stops")
            .unwrap()
            .unwrap();
    }
}

/// Polls `check` until it yields, for at most 15 s.
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn upstream(id: &str, port: u16) -> Value {
    json!({"id": id, "nodes": [{"host": "127.0.0.1", "port": port}]})
}

pub fn route(id: &str, upstream: &str) -> Value {
    json!({"id": id, "paths": ["/api/*"], "upstream_id": upstream})
}

pub fn certificate(id: &str) -> Value {
    json!({"id": id, "snis": ["example.test"], "cert": CERT, "key": KEY})
}

/// Create, read, list, update and delete on one instance, checking the revision every
/// change produces, the store the agent wrote, and that certificate keys never come
/// back. Runs unchanged on every database. `cluster` must not exist yet.
pub async fn crud_flow(admin: &TestAdmin, agent: &TestAgent, cluster: &str) {
    admin.register(cluster, agent, &["instance_a"]).await;
    let base = format!("/clusters/{cluster}/instances/instance_a");
    let start = admin.desired(cluster, "instance_a").await.1;

    // Create: 201, revision +1, applied to the store, audited.
    let answer = admin
        .send("POST", &format!("{base}/upstreams"), upstream("up", 8080))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.revision(), start + 1);
    let audit = admin
        .get("/audit?namespace=default&actor=admin&limit=5")
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    assert_eq!(
        audit.body["items"][0]["revision"],
        start + 1,
        "{}",
        audit.body
    );
    assert_eq!(audit.body["items"][0]["after"]["id"], "up");
    assert_eq!(answer.header("x-portico-sync"), "applied");
    assert_eq!(answer.body["nodes"][0]["port"], 8080);
    // The singular segment is accepted too.
    let answer = admin
        .send("POST", &format!("{base}/route"), route("r1", "up"))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.revision(), start + 2);

    // Read and list.
    let answer = admin.get(&format!("{base}/routes/r1")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["upstream_id"], "up");
    let answer = admin.get(&format!("{base}/routes")).await;
    assert_eq!(answer.body["revision"], start + 2);
    assert_eq!(answer.body["items"].as_array().unwrap().len(), 1);

    // Update (200) and create through PUT (201).
    let answer = admin
        .send("PUT", &format!("{base}/upstreams/up"), upstream("up", 9090))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.revision(), start + 3);
    let answer = admin
        .send("PUT", &format!("{base}/routes/r2"), route("r2", "up"))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.revision(), start + 4);

    // Delete: 204, then 404 without a new revision.
    let answer = admin
        .call("DELETE", &format!("{base}/routes/r2"), None)
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.revision(), start + 5);
    assert_eq!(answer.header("x-portico-sync"), "applied");
    let answer = admin
        .call("DELETE", &format!("{base}/routes/r2"), None)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    assert_eq!(
        admin.get(&format!("{base}/routes/r2")).await.status,
        StatusCode::NOT_FOUND
    );

    // Certificates: the key reaches the store, never an answer.
    let answer = admin
        .send(
            "POST",
            &format!("{base}/certificates"),
            certificate("cert1"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.revision(), start + 6);
    assert_no_key(&answer.body);
    assert_no_key(&admin.get(&format!("{base}/certificates")).await.body);
    assert_no_key(&admin.get(&format!("{base}/certificates/cert1")).await.body);
    let changes = admin.get(&format!("{base}/changes")).await;
    assert_eq!(changes.status, StatusCode::OK);
    assert_no_key(&changes.body);
    let stored = agent
        .stored("instance_a", ResourceKind::Certificates, "cert1")
        .await
        .expect("the certificate reached the store");
    assert_eq!(stored["key"], KEY);

    // The change log lists every change, newest first.
    let log: Vec<(u64, String, String)> = changes.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .take(6)
        .map(|c| {
            (
                c["revision"].as_u64().unwrap(),
                c["op"].as_str().unwrap().to_owned(),
                c["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String, String)> = [
        (6, "create", "cert1"),
        (5, "delete", "r2"),
        (4, "update", "r2"),
        (3, "update", "up"),
        (2, "create", "r1"),
        (1, "create", "up"),
    ]
    .iter()
    .map(|(r, op, id)| (start + r, op.to_string(), id.to_string()))
    .collect();
    assert_eq!(log, expected);

    // The store holds what the DB holds, at the same revision.
    let revision = start + 6;
    assert_eq!(agent.meta("instance_a").await, Some(revision));
    assert_eq!(
        agent.stored_ids("instance_a", ResourceKind::Routes).await,
        ["r1"]
    );
    assert_eq!(
        agent
            .stored("instance_a", ResourceKind::Upstreams, "up")
            .await
            .unwrap()["nodes"][0]["port"],
        9090
    );
    let instance = admin.instance(cluster, "instance_a").await;
    assert_eq!(instance["revision"], revision);
    assert_eq!(instance["applied_revision"], revision);
    assert_eq!(instance["status"], "online");
    assert_eq!(instance["agent_address"], agent.url());
}

/// Fails when a private key (or a `key` field) appears anywhere in `value`.
pub fn assert_no_key(value: &Value) {
    let text = value.to_string();
    assert!(
        !text.contains("PRIVATE KEY"),
        "a private key leaked: {text}"
    );
    assert!(!text.contains("\"key\""), "a key field leaked: {text}");
}

/// A database opened beside the admin, to look at rows as stored.
pub struct RawDb {
    conn: sqlx::AnyConnection,
    postgres: bool,
}

impl RawDb {
    pub async fn connect(url: &str) -> Self {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains('?') {
            format!("{url}?mode=rw")
        } else {
            url.to_owned()
        };
        Self {
            conn: sqlx::AnyConnection::connect(&url).await.unwrap(),
            postgres: url.starts_with("postgres"),
        }
    }

    /// `sql` with `?` placeholders, numbered for PostgreSQL.
    fn sql(&self, sql: &str) -> String {
        if !self.postgres {
            return sql.to_owned();
        }
        let mut n = 0;
        sql.chars()
            .map(|c| {
                if c == '?' {
                    n += 1;
                    format!("${n}")
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    /// The one text value `sql` selects with `args` bound, or `None`.
    pub async fn text(&mut self, sql: &str, args: &[&str]) -> Option<String> {
        use sqlx::Row;
        let sql = self.sql(sql);
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = query.bind(arg.to_string());
        }
        let row = query.fetch_optional(&mut self.conn).await.unwrap()?;
        match row.try_get::<Option<String>, _>(0) {
            Ok(value) => value,
            Err(_) => row
                .try_get::<Option<Vec<u8>>, _>(0)
                .unwrap()
                .map(|b| String::from_utf8(b).unwrap()),
        }
    }

    pub async fn execute(&mut self, sql: &str, args: &[&str]) {
        let sql = self.sql(sql);
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = query.bind(arg.to_string());
        }
        query.execute(&mut self.conn).await.unwrap();
    }

    pub async fn certificate_body(&mut self, id: &str) -> String {
        self.body("certificates", id).await
    }

    pub async fn body(&mut self, kind: &str, id: &str) -> String {
        self.text(
            "SELECT body FROM resources WHERE kind = ? AND id = ?",
            &[kind, id],
        )
        .await
        .expect("the row exists")
    }

    pub async fn agent_token(&mut self, cluster: &str) -> Option<String> {
        self.text(
            "SELECT agent_token FROM clusters WHERE name = ?",
            &[cluster],
        )
        .await
    }
}

/// Encryption at rest on one database: secrets are refused without a data key; sealed
/// under the key with its id; a row written in clear by an earlier version is sealed at
/// start; rotation re-seals everything with the new key while the old one still opens;
/// a missing or wrong key stops the admin with a clear error. `url` names an empty
/// database.
const JWT_SECRETS: [&str; 2] = [
    "jwt-secret-one-of-at-least-32-bytes",
    "jwt-secret-two-of-at-least-32-bytes",
];

pub async fn secrets_flow(url: &str) {
    const TOKEN: &str = "secrets-agent-token-0123456789";
    let k1 = data_key();
    let k2 = admin::DataKey::generate();
    let config = |primary: Option<admin::DataKey>, old: Vec<admin::DataKey>| AdminConfig {
        database_url: url.to_owned(),
        poll_interval: Duration::from_millis(200),
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        data_key: primary,
        old_data_keys: old,
        ..AdminConfig::default()
    };
    let mut agent = TestAgent::start_with_token(&["instance_a"], TOKEN).await;

    // Without a data key, neither a given nor a generated token is stored.
    let admin = TestAdmin::start_with(config(None, vec![])).await;
    for body in [
        json!({"name": "c1", "agent_address": agent.url(), "agent_token": TOKEN}),
        json!({"name": "c1", "agent_address": agent.url()}),
    ] {
        let answer = admin.send("POST", "/clusters", body).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
        assert_eq!(answer.body["code"], "no_data_key");
        assert_eq!(answer.fields(), ["agent_token"]);
        assert!(answer.body["error"]
            .as_str()
            .unwrap()
            .contains("--data-key-file"));
    }
    assert_eq!(admin.get("/clusters").await.body["items"], json!([]));
    admin.stop().await;

    // With k1: the token and the certificate key are sealed under it.
    let admin = TestAdmin::start_with(config(Some(k1.clone()), vec![])).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    let base = "/clusters/c1/instances/instance_a";
    let answer = admin
        .send(
            "POST",
            &format!("{base}/certificates"),
            certificate("cert1"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    // A consumer with two JWT secrets: sealed, each bound to its credential.
    let answer = admin
        .send(
            "POST",
            &format!("{base}/consumers"),
            json!({"id": "jwt-user", "credentials": [
                {"type": "jwt-auth", "id": "a", "key": "ka", "algorithm": "HS256", "secret": JWT_SECRETS[0]},
                {"type": "jwt-auth", "id": "b", "key": "kb", "algorithm": "HS256", "secret": JWT_SECRETS[1]}
            ]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert!(!answer.body.to_string().contains("jwt-secret-"));
    admin.stop().await;
    let mut raw = RawDb::connect(url).await;
    let body = raw.body("consumers", "jwt-user").await;
    assert!(!body.contains("jwt-secret-"), "{body}");
    assert_eq!(
        body.matches(&format!("enc:v1:{}:", k1.id())).count(),
        2,
        "{body}"
    );
    let body = raw.certificate_body("cert1").await;
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    assert!(body.contains(&format!("enc:v1:{}:", k1.id())), "{body}");
    let token = raw.agent_token("c1").await.unwrap();
    assert!(token.starts_with(&format!("enc:v1:{}:", k1.id())) && !token.contains(TOKEN));

    // A row as an earlier version wrote it, key in clear: readable, sealed at start.
    let clear = certificate("cert1").to_string();
    raw.execute(
        "UPDATE resources SET body = ? WHERE kind = 'certificates' AND id = 'cert1'",
        &[&clear],
    )
    .await;
    let admin = TestAdmin::start_with(config(Some(k1.clone()), vec![])).await;
    let body = raw.certificate_body("cert1").await;
    assert!(
        !body.contains("PRIVATE KEY") && body.contains(k1.id()),
        "{body}"
    );
    admin.stop().await;

    // Rotation: k2 primary, k1 old: every secret is sealed again under k2, and both
    // still open: a wiped store gets the certificate's real key through the agent's
    // token.
    let admin = TestAdmin::start_with(config(Some(k2.clone()), vec![k1.clone()])).await;
    assert!(raw.certificate_body("cert1").await.contains(k2.id()));
    assert!(raw.agent_token("c1").await.unwrap().contains(k2.id()));
    let body = raw.body("consumers", "jwt-user").await;
    assert_eq!(
        body.matches(&format!("enc:v1:{}:", k2.id())).count(),
        2,
        "{body}"
    );
    assert!(!body.contains(k1.id()), "{body}");
    agent.restart_with_empty_store(&["instance_a"]).await;
    let stored = wait_until("the snapshot reaches the wiped store", || async {
        agent
            .stored("instance_a", ResourceKind::Certificates, "cert1")
            .await
    })
    .await;
    assert_eq!(stored["key"], KEY);
    // The gateway needs the JWT secrets themselves: the store gets them opened.
    let stored = wait_until("the consumer reaches the wiped store", || async {
        agent
            .stored("instance_a", ResourceKind::Consumers, "jwt-user")
            .await
    })
    .await;
    assert_eq!(stored["credentials"][0]["secret"], JWT_SECRETS[0]);
    assert_eq!(stored["credentials"][1]["secret"], JWT_SECRETS[1]);
    admin.stop().await;

    // k2 alone is enough now; k1 alone or no key at all is refused with the key's id.
    // Old revisions open under it too: history was sealed again with the rest.
    let admin = TestAdmin::start_with(config(Some(k2.clone()), vec![])).await;
    for revision in 0..=2 {
        let preview = admin
            .call(
                "POST",
                &format!("{base}/revisions/{revision}/rollback?dry_run=true"),
                None,
            )
            .await;
        assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
        assert!(!preview.body.to_string().contains("jwt-secret-"));
    }
    admin.stop().await;
    for (primary, old) in [(Some(k1.clone()), vec![]), (None, vec![])] {
        let error = Admin::open(config(primary, old)).await.err().unwrap();
        let message = format!("{error:#}");
        assert!(
            message.contains(k2.id()) && message.contains("--data-key-old-file"),
            "{message}"
        );
    }

    // An altered value does not open: refused, never garbage.
    let token = raw.agent_token("c1").await.unwrap();
    // A character of the ciphertext (not the padding) changed.
    let at = token.len() - 10;
    let changed = if &token[at..at + 1] == "A" { "B" } else { "A" };
    let altered = format!("{}{changed}{}", &token[..at], &token[at + 1..]);
    raw.execute(
        "UPDATE clusters SET agent_token = ? WHERE name = 'c1'",
        &[&altered],
    )
    .await;
    let error = Admin::open(config(Some(k2.clone()), vec![]))
        .await
        .err()
        .unwrap();
    assert!(
        format!("{error:#}").contains("does not decrypt"),
        "{error:#}"
    );
}
