//! The agent's service registry over real HTTP on loopback, on an in-process store:
//! who may register, what a registration writes (one leased key per namespace), bad
//! registrations refused by field with nothing written, heartbeats, deregistration
//! and listing by namespace and service.

use std::sync::Arc;

use model::registry::RegisteredNode;
use reqwest::StatusCode;
use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::ConfigStore;

const TOKEN: &str = "agent-test-token";
const REGISTRY_TOKEN: &str = "registry-test-token";

struct Agent {
    base: String,
    store: Arc<dyn ConfigStore>,
    keyspace: Keyspace,
    http: reqwest::Client,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Agent {
    async fn start() -> Self {
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        let keyspace = Keyspace::default();
        let state = agent::AgentState::new(
            store.clone(),
            keyspace.clone(),
            agent::parse_instance_list("instance_a"),
            None,
            TOKEN,
        )
        .unwrap()
        .with_registry_token(REGISTRY_TOKEN)
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!(
            "http://{}/agent/apiserver/v1",
            listener.local_addr().unwrap()
        );
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(agent::run(listener, state, rx));
        Self {
            base,
            store,
            keyspace,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self, service: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Some(REGISTRY_TOKEN),
            "POST",
            &format!("/registry/services/{service}/nodes"),
            Some(body),
        )
        .await
    }

    /// Every registry key in the store, with its lease.
    async fn stored(&self) -> Vec<(String, Option<i64>)> {
        self.store
            .list(&self.keyspace.registry_prefix())
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.lease.map(|l| l.0)))
            .collect()
    }
}

#[tokio::test]
async fn the_registry_token_opens_the_registry_and_nothing_else() {
    let agent = Agent::start().await;
    let list = "/registry/services";
    for token in [Some(TOKEN), Some(REGISTRY_TOKEN)] {
        let (status, body) = agent.call(token, "GET", list, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for token in [None, Some("wrong")] {
        let (status, _) = agent.call(token, "GET", list, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The admin's routes stay closed to it.
    let (status, _) = agent
        .call(Some(REGISTRY_TOKEN), "GET", "/instances", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A registry token equal to the agent's would open everything: refused.
    let state = agent::AgentState::new(
        Arc::new(MemoryStore::new()),
        Keyspace::default(),
        agent::parse_instance_list("i"),
        None,
        TOKEN,
    )
    .unwrap();
    assert!(state.with_registry_token(TOKEN).is_err());
}

#[tokio::test]
async fn a_registration_writes_one_leased_node_per_namespace() {
    let agent = Agent::start().await;
    let (status, answer) = agent
        .register(
            "orders",
            json!({"host": "10.0.0.7", "port": 8080, "weight": 3,
                   "metadata": {"version": "v2"}, "namespaces": "team-a, team-b,team-a",
                   "ttl_secs": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["node_id"], "10.0.0.7:8080");
    assert_eq!(answer["namespaces"], json!(["team-a", "team-b"]));
    assert_eq!(answer["ttl_secs"], 10);
    let lease: i64 = answer["lease"].as_str().unwrap().parse().unwrap();
    let stored = agent.stored().await;
    assert_eq!(
        stored,
        [
            (
                "/portico/registry/team-a/orders/10.0.0.7:8080".to_owned(),
                Some(lease)
            ),
            (
                "/portico/registry/team-b/orders/10.0.0.7:8080".to_owned(),
                Some(lease)
            ),
        ]
    );
    let kv = agent.store.get(&stored[0].0).await.unwrap().unwrap();
    let node: RegisteredNode = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!((node.port, node.weight), (8080, 3));
    assert_eq!(node.metadata["version"], "v2");

    // Without namespaces: `default`. Listing by namespace and by service.
    let (status, _) = agent
        .register("payments", json!({"host": "10.0.0.8", "port": 80}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, all) = agent
        .call(Some(TOKEN), "GET", "/registry/services", None)
        .await;
    let names: Vec<(&str, &str)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["namespace"].as_str().unwrap(),
                s["service"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("default", "payments"),
            ("team-a", "orders"),
            ("team-b", "orders")
        ]
    );
    let (_, team_b) = agent
        .call(
            Some(TOKEN),
            "GET",
            "/registry/services?namespace=team-b&service=orders",
            None,
        )
        .await;
    assert_eq!(team_b["items"].as_array().unwrap().len(), 1);
    assert_eq!(team_b["items"][0]["nodes"][0]["host"], "10.0.0.7");
    let (status, body) = agent
        .call(Some(TOKEN), "GET", "/registry/services?namespace=a/b", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn bad_registrations_name_their_fields_and_write_nothing() {
    let agent = Agent::start().await;
    let (status, body) = agent
        .register(
            "orders",
            json!({"host": "not a host", "port": 70000, "ttl_secs": 1, "namespaces": "a,b/c"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["host", "port", "ttl_secs", "namespaces"]);
    let (status, body) = agent
        .register("orders", json!({"host": "h", "port": 1, "colour": "red"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");
    let (status, _) = agent
        .register("bad/name", json!({"host": "h", "port": 1}))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a service name cannot hold a slash"
    );
    let (status, body) = agent
        .register("bad name", json!({"host": "h", "port": 1}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "service");
    assert!(agent.stored().await.is_empty());
}

#[tokio::test]
async fn heartbeats_keep_a_registration_and_deregistering_ends_it() {
    let agent = Agent::start().await;
    let (_, answer) = agent
        .register(
            "orders",
            json!({"host": "10.0.0.7", "port": 8080, "ttl_secs": 5}),
        )
        .await;
    let lease = answer["lease"].as_str().unwrap();
    let path = format!("/registry/leases/{lease}");
    let (status, body) = agent.call(Some(REGISTRY_TOKEN), "PUT", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lease"], lease);
    let (status, _) = agent
        .call(Some(REGISTRY_TOKEN), "DELETE", &path, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        agent.stored().await.is_empty(),
        "deregistered nodes are gone at once"
    );
    // Gone: a heartbeat says so, and the service registers again.
    for method in ["PUT", "DELETE"] {
        let (status, body) = agent.call(Some(REGISTRY_TOKEN), method, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body["error"].as_str().unwrap().contains("register again"));
    }
    let (status, body) = agent
        .call(Some(REGISTRY_TOKEN), "PUT", "/registry/leases/abc", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["details"][0]["field"], "lease");
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_is_removed_after_its_ttl() {
    let agent = Agent::start().await;
    let (_, kept) = agent
        .register(
            "orders",
            json!({"host": "10.0.0.1", "port": 80, "ttl_secs": 5}),
        )
        .await;
    let (_, dropped) = agent
        .register(
            "orders",
            json!({"host": "10.0.0.2", "port": 80, "ttl_secs": 5}),
        )
        .await;
    assert_eq!(agent.stored().await.len(), 2);
    let kept_path = format!("/registry/leases/{}", kept["lease"].as_str().unwrap());
    let start = std::time::Instant::now();
    loop {
        let (status, _) = agent
            .call(Some(REGISTRY_TOKEN), "PUT", &kept_path, None)
            .await;
        assert_eq!(status, StatusCode::OK, "the heartbeating node stays");
        let stored = agent.stored().await;
        if stored.len() == 1 {
            assert!(stored[0].0.ends_with("/10.0.0.1:80"), "{stored:?}");
            assert!(
                start.elapsed() >= std::time::Duration::from_secs(3),
                "removed before its TTL"
            );
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the silent node outlived its TTL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let dropped_path = format!("/registry/leases/{}", dropped["lease"].as_str().unwrap());
    let (status, _) = agent
        .call(Some(REGISTRY_TOKEN), "PUT", &dropped_path, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
