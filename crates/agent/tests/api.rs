//! The agent's REST API against an in-process store, over real HTTP on loopback.

use std::sync::Arc;
use std::time::Duration;

use model::cluster::{AgentInstances, NodeHeartbeat};
use model::resource::ResourceKind;
use model::snapshot::Revision;
use reqwest::StatusCode;
use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::{ConfigStore, Op, Txn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "agent-test-token";

struct Agent {
    url: String,
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
            agent::parse_instance_list("instance_a, instance_b"),
            None,
            TOKEN,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/agent/apiserver/v1/instances",
            listener.local_addr().unwrap()
        );
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(agent::run(listener, state, rx));
        Self {
            url,
            store,
            keyspace,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        revision: Option<u64>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(rev) = revision {
            req = req.header("x-portico-revision", rev.to_string());
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn meta(&self, instance: &str) -> Option<u64> {
        let kv = self
            .store
            .get(&self.keyspace.meta(instance))
            .await
            .unwrap()?;
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        v["revision"].as_u64()
    }
}

fn upstream(port: u16) -> Value {
    json!({"id": "up", "nodes": [{"host": "127.0.0.1", "port": port}]})
}

#[tokio::test]
async fn requests_without_the_token_are_refused() {
    let agent = Agent::start().await;
    for token in [None, Some("wrong"), Some("agent-test-token-but-longer")] {
        let mut req = agent.http.get(&agent.url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
}

/// The agent proves it holds its token without it being sent: the proof verifies for
/// the right token only, and a malformed challenge is refused naming the field.
#[tokio::test]
async fn the_agent_proves_it_holds_its_token() {
    let agent = Agent::start().await;
    let url = agent.url.replace("/instances", "/proof");
    let challenge = "ab".repeat(32);
    let answer = agent
        .http
        .post(&url)
        .json(&json!({ "challenge": challenge }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let proof: Value = answer.json().await.unwrap();
    let proof = proof["proof"].as_str().unwrap();
    assert!(apikit::TokenHash::of(TOKEN).verify_proof(challenge.as_bytes(), proof));
    assert!(!apikit::TokenHash::of("another-token").verify_proof(challenge.as_bytes(), proof));
    for bad in [
        json!({"challenge": "short"}),
        json!({"challenge": 1}),
        json!({}),
    ] {
        let answer = agent.http.post(&url).json(&bad).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["details"][0]["field"], "challenge", "{bad}: {body}");
    }
}

/// A body announced over the 16 MiB limit gets 413 before any of it is
/// read; half a head is closed after the header-read timeout; a trickling snapshot gets
/// 408 at the body deadline; the store sees none of it.
#[tokio::test]
async fn oversized_and_slow_clients_are_cut() {
    let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
    let keyspace = Keyspace::default();
    let state = agent::AgentState::new(
        store.clone(),
        keyspace.clone(),
        ["instance_a".to_owned()],
        None,
        TOKEN,
    )
    .unwrap()
    .with_timeouts(Duration::from_millis(500), Duration::from_millis(700));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(agent::run(listener, state, rx));
    let head = |length: u64| {
        format!(
            "PUT /agent/apiserver/v1/instances/instance_a/snapshot HTTP/1.1\r\nHost: a\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
        )
    };

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(head(17 * 1024 * 1024).as_bytes())
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // 413 (not the 408 of the body deadline) means it came before any body was
    // awaited; the bound only keeps a loaded machine from failing the test.
    assert!(took < Duration::from_secs(2), "413 after {took:?}");

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /agent/apiserver/v1/instances HTTP/1.1\r\nAuthoriz")
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut stream).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    let body =
        json!({"revision": 1, "routes": [], "upstreams": [], "certificates": []}).to_string();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(head(body.len() as u64).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    let (answer, took) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took < Duration::from_secs(3), "408 after {took:?}");

    assert!(store
        .get(&keyspace.meta("instance_a"))
        .await
        .unwrap()
        .is_none());
}

/// Reads until the server closes the connection (at most 5 s): the text and the time.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn writes_move_content_and_meta_together_one_revision_at_a_time() {
    let agent = Agent::start().await;
    let (s, _) = agent
        .call(
            "POST",
            "/instance_a/upstreams",
            Some(1),
            Some(upstream(8080)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(agent.meta("instance_a").await, Some(1));
    assert_eq!(agent.meta("instance_b").await, None);

    // Same id again: already exists, nothing changes.
    let (s, body) = agent
        .call(
            "POST",
            "/instance_a/upstream",
            Some(2),
            Some(upstream(9090)),
        )
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );
    assert_eq!(agent.meta("instance_a").await, Some(1));

    // A gap (revision 5 on top of 1) is refused: the admin must send a snapshot.
    let route = json!({"id": "r1", "paths": ["/api/*"], "upstream_id": "up"});
    let (s, body) = agent
        .call("POST", "/instance_a/routes", Some(5), Some(route.clone()))
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("revision_conflict"))
    );
    let (s, _) = agent
        .call("POST", "/instance_a/routes", Some(2), Some(route))
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, _) = agent
        .call(
            "PUT",
            "/instance_a/upstreams/up",
            Some(3),
            Some(upstream(9090)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = agent
        .call("GET", "/instance_a/upstreams/up", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["nodes"][0]["port"], 9090);

    let (s, _) = agent
        .call("DELETE", "/instance_a/routes/r1", Some(4), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = agent
        .call("DELETE", "/instance_a/routes/r1", Some(5), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(agent.meta("instance_a").await, Some(4));
    let (_, list) = agent.call("GET", "/instance_a/routes", None, None).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn bad_requests_name_the_problem_and_change_nothing() {
    let agent = Agent::start().await;
    let cases = [
        (
            "POST",
            "/nope/routes",
            Some(1),
            json!({}),
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            "POST",
            "/instance_a/widgets",
            Some(1),
            json!({}),
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            "POST",
            "/instance_a/upstreams",
            None,
            upstream(1),
            StatusCode::BAD_REQUEST,
            "x-portico-revision",
        ),
        (
            "POST",
            "/instance_a/upstreams",
            Some(1),
            json!({"id": "up", "nodes": [{"host": "a", "port": 0}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nodes[0].port",
        ),
        (
            "POST",
            "/instance_a/upstreams",
            Some(1),
            json!({"id": "up", "nodes": [], "extra": 1}),
            StatusCode::BAD_REQUEST,
            "extra",
        ),
        (
            "PUT",
            "/instance_a/upstreams/other",
            Some(1),
            upstream(1),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
    ];
    for (method, path, rev, body, status, field) in cases {
        let (s, answer) = agent.call(method, path, rev, Some(body)).await;
        assert_eq!(s, status, "{method} {path}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["details"][0]["field"], field, "{answer}");
        }
    }
    let listing = agent.store.list("/portico/").await.unwrap();
    assert!(listing.kvs.is_empty(), "{listing:?}");
}

#[tokio::test]
async fn snapshot_replaces_everything_and_rewrites_only_what_changed() {
    let agent = Agent::start().await;
    agent
        .call(
            "POST",
            "/instance_a/upstreams",
            Some(1),
            Some(upstream(8080)),
        )
        .await;
    agent
        .call(
            "POST",
            "/instance_a/routes",
            Some(2),
            Some(json!({"id": "old", "paths": ["/old"], "upstream_id": "up"})),
        )
        .await;
    let up_key = agent
        .keyspace
        .resource("instance_a", ResourceKind::Upstreams, "up");
    let up_rev_before = agent
        .store
        .get(&up_key)
        .await
        .unwrap()
        .unwrap()
        .mod_revision;

    let snapshot = json!({
        "revision": 7,
        "upstreams": [upstream(8080)],
        "routes": [{"id": "new", "paths": ["/new"], "upstream_id": "up"}],
    });
    let (s, body) = agent
        .call("PUT", "/instance_a/snapshot", None, Some(snapshot.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(agent.meta("instance_a").await, Some(7));
    let (_, routes) = agent.call("GET", "/instance_a/routes", None, None).await;
    assert_eq!(routes["items"].as_array().unwrap().len(), 1);
    assert_eq!(routes["items"][0]["id"], "new");
    let up_rev_after = agent
        .store
        .get(&up_key)
        .await
        .unwrap()
        .unwrap()
        .mod_revision;
    assert_eq!(
        up_rev_before, up_rev_after,
        "an unchanged upstream was rewritten"
    );

    // Same revision again: a no-op; an older one: refused.
    let (s, _) = agent
        .call("PUT", "/instance_a/snapshot", None, Some(snapshot))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = agent
        .call(
            "PUT",
            "/instance_a/snapshot",
            None,
            Some(json!({"revision": 3})),
        )
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("revision_conflict"))
    );

    // A snapshot with a dangling reference is refused whole.
    let (s, body) = agent
        .call(
            "PUT",
            "/instance_a/snapshot",
            None,
            Some(json!({"revision": 8, "routes": [{"id": "r", "paths": ["/"], "upstream_id": "gone"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "routes[r].upstream_id");
    assert_eq!(agent.meta("instance_a").await, Some(7));
}

/// A snapshot larger than one store transaction (128 operations, etcd's default) is
/// written in several; after each one every route still finds its upstream, and meta
/// moves only with the last.
#[tokio::test]
async fn snapshots_larger_than_a_transaction_are_written_in_consistent_steps() {
    use futures::StreamExt;
    let agent = Agent::start().await;
    let prefix = agent.keyspace.instance_prefix("instance_a");
    let start = agent.store.list(&prefix).await.unwrap().revision + 1;
    let mut watch = agent.store.watch(&prefix, start).await.unwrap();
    let snapshot = |revision: u64, upstreams: usize, routes: usize, salt: usize| {
        let upstreams: Vec<Value> = (0..upstreams)
            .map(|u| json!({"id": format!("u{u}"), "nodes": [{"host": "127.0.0.1", "port": 8000 + u}]}))
            .collect();
        let routes: Vec<Value> = (0..routes)
            .map(|r| {
                json!({"id": format!("r{r}"), "paths": [format!("/r{r}")],
                       "upstream_id": format!("u{}", (r + salt) % upstreams.len())})
            })
            .collect();
        json!({"revision": revision, "upstreams": upstreams, "routes": routes})
    };

    // The store the gateways would see, replayed batch by batch.
    let mut seen: std::collections::BTreeMap<String, Value> = Default::default();
    let replay = |batch: store::WatchBatch,
                  seen: &mut std::collections::BTreeMap<String, Value>| {
        for event in batch.events {
            match event {
                store::WatchEvent::Put(kv) => {
                    seen.insert(kv.key, serde_json::from_slice(&kv.value).unwrap());
                }
                store::WatchEvent::Delete { key, .. } => {
                    seen.remove(&key);
                }
            }
        }
        let upstream = |id: &str| format!("{prefix}upstreams/{id}");
        for (key, value) in seen.iter() {
            if key.starts_with(&format!("{prefix}routes/")) {
                let id = value["upstream_id"].as_str().unwrap();
                assert!(
                    seen.contains_key(&upstream(id)),
                    "{key} names {id}, not in the store"
                );
            }
        }
        seen.get(&format!("{prefix}meta"))
            .map(|m| m["revision"].as_u64().unwrap())
    };

    for (revision, upstreams, routes, salt) in [(1, 10, 300, 0), (2, 4, 200, 1)] {
        let (s, body) = agent
            .call(
                "PUT",
                "/instance_a/snapshot",
                None,
                Some(snapshot(revision, upstreams, routes, salt)),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let mut batches = 0;
        loop {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
                .await
                .expect("the snapshot's writes")
                .unwrap()
                .unwrap();
            batches += 1;
            let meta = replay(batch, &mut seen);
            if meta == Some(revision) {
                break;
            }
            assert_eq!(
                meta,
                (revision > 1).then_some(revision - 1),
                "meta moved early"
            );
        }
        assert!(batches >= 3, "{batches} transactions");
        let (_, listed) = agent.call("GET", "/instance_a/routes", None, None).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), routes);
        let (_, listed) = agent.call("GET", "/instance_a/upstreams", None, None).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), upstreams);
        assert_eq!(seen.len(), routes + upstreams + 1);
    }
    // Nothing more was written after meta.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), watch.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn instances_report_revision_and_node_heartbeats() {
    let agent = Agent::start().await;
    agent
        .call(
            "POST",
            "/instance_b/upstreams",
            Some(1),
            Some(upstream(8080)),
        )
        .await;
    let heartbeat = NodeHeartbeat {
        node_id: "n1".into(),
        address: "127.0.0.1:9080".into(),
        applied_revision: Revision(1),
        applied_at_ms: 1,
        updated_at_ms: 1,
        config_source: model::cluster::ConfigSource::Store,
        upstreams: vec![model::cluster::UpstreamHealth {
            upstream_id: "u".into(),
            nodes: vec![model::cluster::NodeHealth {
                address: "10.0.0.1:80".into(),
                healthy: false,
                reason: Some("active: 3 failures".into()),
            }],
        }],
        skipped: vec![],
        redis_fallbacks: 0,
        unbound: None,
        // The node's load travels to the admin as the node wrote it.
        load: Some(model::cluster::NodeLoad {
            requests: 40,
            errors: 10,
            connections: 3,
            in_flight: 1,
        }),
    };
    agent
        .store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: agent.keyspace.node("instance_b", "n1"),
                value: serde_json::to_vec(&heartbeat).unwrap(),
                lease: None,
            }],
        })
        .await
        .unwrap();
    let resp = agent
        .http
        .get(&agent.url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let report: AgentInstances = resp.json().await.unwrap();
    let names: Vec<&str> = report.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["instance_a", "instance_b"]);
    assert_eq!(report.instances[0].revision, None);
    assert_eq!(report.instances[1].revision, Some(Revision(1)));
    assert_eq!(report.instances[1].nodes, vec![heartbeat]);
}

#[tokio::test]
async fn certificate_keys_are_stored_but_never_returned() {
    let agent = Agent::start().await;
    let cert = json!({
        "id": "c1",
        "snis": ["example.test"],
        "cert": include_str!("../../model/tests/fixtures/example.crt"),
        "key": include_str!("../../model/tests/fixtures/example.key"),
    });
    let (s, body) = agent
        .call("POST", "/instance_a/certificates", Some(1), Some(cert))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(!body.to_string().contains("PRIVATE KEY"));
    for path in ["/instance_a/certificates", "/instance_a/certificates/c1"] {
        let (_, body) = agent.call("GET", path, None, None).await;
        assert!(!body.to_string().contains("PRIVATE KEY"), "{path}: {body}");
    }
    let key = agent
        .keyspace
        .resource("instance_a", ResourceKind::Certificates, "c1");
    let stored = agent.store.get(&key).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&stored.value).contains("PRIVATE KEY"));
}
