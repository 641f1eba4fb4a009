//! Plugins and governance through the admin API: services and the references they
//! take part in, consumers whose credentials are hashed before anything stores them
//! and never answered, plugin templates, and the effective plugins of a route.

mod common;

use std::time::Duration;

use common::{upstream, wait_until, TestAdmin, TestAgent};
use reqwest::StatusCode;
use serde_json::json;
use store::ConfigStore;

const BASE: &str = "/clusters/c1/instances/instance_a";

async fn start(dir: &tempfile::TempDir) -> (TestAdmin, TestAgent) {
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    (admin, agent)
}

/// Every resource the agent's store holds for the instance, as one text.
async fn stored(agent: &TestAgent) -> String {
    let prefix = agent
        .keyspace
        .kind_prefix("instance_a", model::resource::ResourceKind::Consumers);
    let listing = agent.store.list(&prefix).await.unwrap();
    listing
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_take_part_in_references() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _agent) = start(&dir).await;
    let created = admin
        .send("POST", &format!("{BASE}/upstreams"), upstream("up", 8080))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    // A service naming a missing upstream, a route naming a missing service.
    let bad = admin
        .send(
            "POST",
            &format!("{BASE}/services"),
            json!({"id": "s1", "upstream_id": "nope"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.fields(), ["upstream_id"]);
    let bad = admin
        .send(
            "POST",
            &format!("{BASE}/routes"),
            json!({"id": "r1", "paths": ["/a"], "service_id": "s1"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.fields(), ["service_id"]);

    let ok = admin
        .send(
            "POST",
            &format!("{BASE}/services"),
            json!({"id": "s1", "upstream_id": "up", "plugins": {"key-auth": {}}}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let ok = admin
        .send(
            "POST",
            &format!("{BASE}/routes"),
            json!({"id": "r1", "paths": ["/a"], "service_id": "s1"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    // Neither the service nor its upstream can go while used.
    let in_use = admin
        .call("DELETE", &format!("{BASE}/services/s1"), None)
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.body);
    assert_eq!(in_use.fields(), ["routes[r1].service_id"]);
    let in_use = admin
        .call("DELETE", &format!("{BASE}/upstreams/up"), None)
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.body);
    assert_eq!(in_use.fields(), ["services[s1].upstream_id"]);
    assert!(
        in_use.body["error"]
            .as_str()
            .unwrap()
            .contains("services s1"),
        "{}",
        in_use.body
    );
    // A traffic-split naming an upstream is a reference too.
    let split = admin
        .send(
            "POST",
            &format!("{BASE}/global_rules"),
            json!({"id": "g", "plugins": {"traffic-split": {"rules": [
                {"weighted_upstreams": [{"upstream_id": "nope", "weight": 1}]}]}}}),
        )
        .await;
    assert_eq!(
        split.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        split.body
    );
    assert_eq!(
        split.fields(),
        ["plugins.traffic-split.rules[0].weighted_upstreams[0].upstream_id"]
    );
    // The route lets go of the service: now it can be deleted, then the upstream.
    let put = admin
        .send(
            "PUT",
            &format!("{BASE}/routes/r1"),
            json!({"id": "r1", "paths": ["/a"], "upstream_id": "up"}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    let gone = admin
        .call("DELETE", &format!("{BASE}/services/s1"), None)
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);
    let in_use = admin
        .call("DELETE", &format!("{BASE}/upstreams/up"), None)
        .await;
    assert_eq!(in_use.fields(), ["routes[r1].upstream_id"]);
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_hashed_kept_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, agent) = start(&dir).await;
    let key = "alice-secret-key-0123";
    let password = "correct horse battery";
    let created = admin
        .send(
            "POST",
            &format!("{BASE}/consumers"),
            json!({"id": "alice", "credentials": [
                {"type": "key-auth", "id": "k1", "key": key},
                {"type": "basic-auth", "id": "b1", "username": "alice", "password": password}
            ]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let shown = created.body.to_string();
    assert!(!shown.contains(key) && !shown.contains(password) && !shown.contains("hash"));
    assert_eq!(created.body["credentials"][0]["id"], "k1");

    // The store holds hashes only; the change log, list and get show neither.
    wait_until("the consumer reaches the store", || async {
        stored(&agent).await.contains("key_hash").then_some(())
    })
    .await;
    let in_store = stored(&agent).await;
    assert!(!in_store.contains(key) && !in_store.contains(password));
    assert!(in_store.contains(&model::consumer::hash_key(key)));
    assert!(in_store.contains("pbkdf2-sha256$"));
    for path in [
        format!("{BASE}/consumers"),
        format!("{BASE}/consumers/alice"),
        format!("{BASE}/changes"),
    ] {
        let answer = admin.get(&path).await;
        assert_eq!(answer.status, StatusCode::OK);
        let text = answer.body.to_string();
        assert!(
            !text.contains(key) && !text.contains(password) && !text.contains("hash"),
            "{path}: {text}"
        );
    }
    let db = std::fs::read(dir.path().join("admin.db")).unwrap();
    let db = String::from_utf8_lossy(&db);
    assert!(
        !db.contains(key) && !db.contains(password),
        "clear secret in the database"
    );

    // Sent back as shown (no secrets): the credentials keep theirs.
    let again = admin
        .send(
            "PUT",
            &format!("{BASE}/consumers/alice"),
            created.body.clone(),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let revision = again.revision();
    wait_until("the update reaches the store", || async {
        let meta = agent
            .store
            .get(&agent.keyspace.meta("instance_a"))
            .await
            .unwrap()?;
        let meta: serde_json::Value = serde_json::from_slice(&meta.value).ok()?;
        (meta["revision"].as_u64() == Some(revision)).then_some(())
    })
    .await;
    assert_eq!(stored(&agent).await, in_store);

    // A new credential must give its secret; another consumer may not reuse a key
    // or a Basic username.
    let missing = admin
        .send(
            "POST",
            &format!("{BASE}/consumers"),
            json!({"id": "bob", "credentials": [{"type": "key-auth", "id": "k"}]}),
        )
        .await;
    assert_eq!(
        missing.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        missing.body
    );
    assert_eq!(missing.fields(), ["credentials[0].key"]);
    let taken = admin
        .send(
            "POST",
            &format!("{BASE}/consumers"),
            json!({"id": "bob", "credentials": [
                {"type": "key-auth", "id": "k", "key": key},
                {"type": "basic-auth", "id": "b", "username": "alice", "password": "other"}
            ]}),
        )
        .await;
    assert_eq!(
        taken.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        taken.body
    );
    assert_eq!(
        taken.fields(),
        ["credentials[0].key", "credentials[1].username"]
    );
    assert!(!taken.body.to_string().contains(key));
    // Invalid plugin configs are named by their path.
    let bad = admin
        .send(
            "POST",
            &format!("{BASE}/consumers"),
            json!({"id": "bob", "plugins": {"limit-count": {"count": 0, "time_window": 60}}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.fields(), ["plugins.limit-count.count"]);
    assert_eq!(bad.body["details"][0]["message"], "must be > 0");
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effective_plugins_of_a_route_follow_the_merge_rule_and_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _agent) = start(&dir).await;
    let writes = [
        ("upstreams", upstream("up", 8080)),
        (
            "global_rules",
            json!({"id": "g1", "plugins": {
                "request-id": {},
                "limit-count": {"count": 1000, "time_window": 60}
            }}),
        ),
        (
            "services",
            json!({"id": "s1", "upstream_id": "up", "plugins": {
                "key-auth": {"header": "x-key"},
                "limit-count": {"count": 100, "time_window": 60}
            }}),
        ),
        (
            "routes",
            json!({"id": "r1", "paths": ["/a"], "service_id": "s1", "plugins": {
                "key-auth": {}
            }}),
        ),
        (
            "consumers",
            json!({"id": "alice", "plugins": {
                "limit-count": {"count": 5, "time_window": 60, "key_type": "consumer"}
            }}),
        ),
    ];
    for (kind, body) in writes {
        let answer = admin.send("POST", &format!("{BASE}/{kind}"), body).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{kind}: {}",
            answer.body
        );
    }
    let effective = |query: &'static str| {
        let admin = &admin;
        async move {
            let answer = admin
                .get(&format!("{BASE}/routes/r1/plugins/effective{query}"))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            answer.body
        }
    };
    let order = |body: &serde_json::Value| -> Vec<String> {
        body["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}@{}:{}",
                    p["name"].as_str().unwrap(),
                    p["source"]["kind"].as_str().unwrap(),
                    p["priority"]
                )
            })
            .collect()
    };
    let body = effective("").await;
    assert_eq!(
        order(&body),
        [
            "request-id@global_rule:12015",
            "key-auth@route:2500",
            "limit-count@service:1002"
        ]
    );
    assert_eq!(body["servable"], true);
    let skipped: Vec<&str> = body["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        skipped,
        ["overridden by route:r1", "overridden by service:s1"]
    );
    // After authentication the consumer's limit replaces the service's.
    let body = effective("?consumer=alice").await;
    assert_eq!(
        order(&body),
        [
            "request-id@global_rule:12015",
            "key-auth@route:2500",
            "limit-count@consumer:1002"
        ]
    );

    // The template: request-id last, key-auth off, limit-count's default status.
    for template in [
        json!({"id": "request-id", "priority": -10}),
        json!({"id": "key-auth", "enabled": false}),
        json!({"id": "limit-count", "defaults": {"rejected_code": 503}}),
    ] {
        let answer = admin
            .send("POST", &format!("{BASE}/plugin_templates"), template)
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let body = effective("").await;
    assert_eq!(
        order(&body),
        ["limit-count@service:1002", "request-id@global_rule:-10"]
    );
    assert_eq!(body["plugins"][0]["config"]["rejected_code"], 503);
    assert!(body["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "key-auth" && s["reason"].as_str().unwrap().contains("disabled")));

    // Bad templates and queries are refused with the field or parameter named.
    let bad = admin
        .send(
            "POST",
            &format!("{BASE}/plugin_templates"),
            json!({"id": "limit-count", "defaults": {"count": "many"}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.fields(), ["defaults.count"]);
    let bad = admin
        .send(
            "POST",
            &format!("{BASE}/plugin_templates"),
            json!({"id": "nope"}),
        )
        .await;
    assert_eq!(bad.fields(), ["id"]);
    let missing = admin
        .get(&format!(
            "{BASE}/routes/r1/plugins/effective?consumer=nobody"
        ))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let unknown = admin
        .get(&format!("{BASE}/routes/r1/plugins/effective?user=x"))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let no_route = admin
        .get(&format!("{BASE}/routes/r9/plugins/effective"))
        .await;
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);
    admin.stop().await;
}
