//! Namespaces through the admin API (requirements N1–N3): ids generated and immutable,
//! `default` undeletable, a namespace holding instances undeletable, instances placed
//! by their agent's environment or by an operator, online nodes counted, and work in
//! one namespace never reaching another through any instance endpoint.

mod common;

use std::time::Duration;

use common::{route, upstream, wait_until, TestAdmin, TestAgent};
use reqwest::StatusCode;
use serde_json::{json, Value};
use store::ConfigStore;

async fn admin(dir: &tempfile::TempDir) -> TestAdmin {
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    TestAdmin::start(&db, Duration::from_secs(3600)).await
}

async fn create_namespace(admin: &TestAdmin, name: &str) -> String {
    let created = admin
        .send(
            "POST",
            "/namespaces",
            json!({"name": name, "description": "payments"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    created.body["id"].as_str().unwrap().to_owned()
}

fn namespace_ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_have_generated_immutable_ids_and_default_stays() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin(&dir).await;
    let list = admin.get("/namespaces").await;
    assert_eq!(namespace_ids(&list.body), ["default"]);

    let id = create_namespace(&admin, "Team A").await;
    assert!(id.starts_with("ns-") && id.len() == 19, "{id}");
    let shown = admin.get(&format!("/namespaces/{id}")).await;
    assert_eq!(shown.body["name"], "Team A");
    assert_eq!(shown.body["description"], "payments");
    assert_eq!(shown.body["online_nodes"], 0);

    // The id is the admin's to choose, and never changes.
    let given = admin
        .send("POST", "/namespaces", json!({"id": "mine", "name": "B"}))
        .await;
    assert_eq!(
        given.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        given.body
    );
    assert_eq!(given.fields(), ["id"]);
    let moved = admin
        .send(
            "PUT",
            &format!("/namespaces/{id}"),
            json!({"id": "other", "name": "Team A"}),
        )
        .await;
    assert_eq!(
        moved.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        moved.body
    );
    assert_eq!(moved.fields(), ["id"]);
    // Names are unique; bad names and unknown fields are refused with the field.
    let twin = admin
        .send("POST", "/namespaces", json!({"name": "Team A"}))
        .await;
    assert_eq!(twin.status, StatusCode::CONFLICT, "{}", twin.body);
    let blank = admin
        .send("POST", "/namespaces", json!({"name": " "}))
        .await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(blank.fields(), ["name"]);
    let unknown = admin
        .send("POST", "/namespaces", json!({"name": "C", "owner": "x"}))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);

    let renamed = admin
        .send(
            "PUT",
            &format!("/namespaces/{id}"),
            json!({"name": "Team A2", "description": ""}),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
    assert_eq!(renamed.body["id"], id.as_str());
    assert_eq!(renamed.body["name"], "Team A2");

    let default = admin.call("DELETE", "/namespaces/default", None).await;
    assert_eq!(default.status, StatusCode::CONFLICT, "{}", default.body);
    assert!(default.body["error"].as_str().unwrap().contains("default"));
    let missing = admin.call("DELETE", "/namespaces/ns-nope", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let gone = admin
        .call("DELETE", &format!("/namespaces/{id}"), None)
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);
    assert_eq!(
        namespace_ids(&admin.get("/namespaces").await.body),
        ["default"]
    );
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_placed_by_their_agent_or_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin(&dir).await;
    let team = create_namespace(&admin, "team").await;
    // The agent's environment: one instance in `team`, one in a namespace nobody
    // created, one saying nothing.
    let a_team = format!("inst_team@{team}");
    let agent = TestAgent::start(&["inst_default", &a_team, "inst_ghost@ghost"]).await;
    admin
        .register("c1", &agent, &["inst_default", &a_team, "inst_ghost@ghost"])
        .await;
    let listed = admin.get("/clusters/c1/instances").await;
    let placed: Vec<(String, String, bool)> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["namespace_source"], "agent");
            (
                i["name"].as_str().unwrap().to_owned(),
                i["namespace"].as_str().unwrap().to_owned(),
                i["namespace_exists"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            ("inst_default".to_owned(), "default".to_owned(), true),
            ("inst_ghost".to_owned(), "ghost".to_owned(), false),
            ("inst_team".to_owned(), team.clone(), true),
        ]
    );
    let in_team = admin.get(&format!("/namespaces/{team}/instances")).await;
    assert_eq!(in_team.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(in_team.body["items"][0]["name"], "inst_team");

    // A namespace holding an instance cannot be deleted; the refusal names it.
    let refused = admin
        .call("DELETE", &format!("/namespaces/{team}"), None)
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("c1/inst_team"),
        "{}",
        refused.body
    );

    // An operator moves it; the agent's next report does not move it back.
    let path = "/clusters/c1/instances/inst_team/namespace";
    let bad = admin
        .send("PUT", path, json!({"namespace": "no-such-namespace"}))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.fields(), ["namespace"]);
    let moved = admin
        .send("PUT", path, json!({"namespace": "default"}))
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    assert_eq!(moved.body["namespace"], "default");
    assert_eq!(moved.body["namespace_source"], "operator");
    poll_now(&admin, &agent).await;
    let after = admin
        .get("/clusters/c1/instances/inst_team?namespace=default")
        .await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
    assert_eq!(after.body["namespace_source"], "operator");
    let deleted = admin
        .call("DELETE", &format!("/namespaces/{team}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    // Handed back to the agent, it follows its report again: to a namespace that no
    // longer exists, so it is unbound.
    let back = admin.send("PUT", path, json!({"namespace": null})).await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    assert_eq!(back.body["namespace"], team.as_str());
    assert_eq!(back.body["namespace_exists"], false);
    assert_eq!(back.body["namespace_source"], "agent");
    admin.stop().await;
}

/// Makes the admin poll the cluster's agent now (a cluster update triggers a poll)
/// and waits for it to have answered.
async fn poll_now(admin: &TestAdmin, agent: &TestAgent) {
    let before = admin.get("/clusters/c1/instances").await.body["items"][0]["last_seen"]
        .as_i64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = admin
        .send(
            "PUT",
            "/clusters/c1",
            json!({"name": "c1", "agent_address": agent.url()}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_until("the agent polled again", || async {
        let now = admin.get("/clusters/c1/instances").await.body["items"][0]["last_seen"]
            .as_i64()
            .unwrap();
        (now > before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_nodes_are_counted_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin(&dir).await;
    let team = create_namespace(&admin, "team").await;
    let a_team = format!("inst_team@{team}");
    let agent = TestAgent::start(&["inst_default", &a_team]).await;
    for (instance, node) in [
        ("inst_team", "n1"),
        ("inst_team", "n2"),
        ("inst_default", "n3"),
    ] {
        let heartbeat = json!({"node_id": node, "address": "127.0.0.1:1", "applied_revision": 0,
            "updated_at_ms": 0});
        let put = store::Op::Put {
            key: agent.keyspace.node(instance, node),
            value: heartbeat.to_string().into_bytes(),
            lease: None,
        };
        let txn = store::Txn {
            compares: Vec::new(),
            ops: vec![put],
        };
        assert!(agent.store.txn(txn).await.unwrap().succeeded);
    }
    admin
        .register("c1", &agent, &["inst_default", &a_team])
        .await;
    let list = admin.get("/namespaces").await;
    let counts: Vec<(String, u64, u64)> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["instances"].as_u64().unwrap(),
                n["online_nodes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("default".into(), 1, 1), (team.clone(), 1, 2)]);
    admin.stop().await;
}

/// Every instance endpoint × namespace: work in one namespace never reads or changes
/// another's instance (404, nothing written), and works in its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated_through_every_instance_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin(&dir).await;
    let team = create_namespace(&admin, "team").await;
    let a_team = format!("inst_team@{team}");
    let agent = TestAgent::start(&["inst_default", &a_team]).await;
    admin
        .register("c1", &agent, &["inst_default", &a_team])
        .await;
    // Seed both instances, each through its own namespace.
    for (instance, ns) in [("inst_default", "default"), ("inst_team", team.as_str())] {
        for (kind, body) in [
            ("upstreams", upstream("up", 8080)),
            ("routes", route("r1", "up")),
        ] {
            let answer = admin
                .send(
                    "POST",
                    &format!("/clusters/c1/instances/{instance}/{kind}?namespace={ns}"),
                    body,
                )
                .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        }
    }

    let route_body = route("r2", "up").to_string();
    let put_body = route("r1", "up").to_string();
    // (method, path under the instance, body, status in its own namespace)
    let endpoints: Vec<(&str, &str, Option<&str>, StatusCode)> = vec![
        ("GET", "", None, StatusCode::OK),
        ("GET", "/nodes", None, StatusCode::OK),
        ("GET", "/changes", None, StatusCode::OK),
        ("GET", "/routes", None, StatusCode::OK),
        ("GET", "/routes/r1", None, StatusCode::OK),
        ("GET", "/routes/r1/plugins/effective", None, StatusCode::OK),
        ("POST", "/routes", Some(&route_body), StatusCode::CREATED),
        ("PUT", "/routes/r1", Some(&put_body), StatusCode::OK),
        ("DELETE", "/routes/r2", None, StatusCode::NO_CONTENT),
    ];
    let mut table = Vec::new();
    for (instance, own, other) in [
        ("inst_default", "default", team.as_str()),
        ("inst_team", team.as_str(), "default"),
    ] {
        for (method, suffix, body, own_status) in &endpoints {
            let base = format!("/clusters/c1/instances/{instance}{suffix}");
            let before = admin
                .get(&format!(
                    "/clusters/c1/instances/{instance}?namespace={own}"
                ))
                .await
                .body["revision"]
                .clone();
            for ns in [other, "ns-missing"] {
                let answer = admin
                    .call(method, &format!("{base}?namespace={ns}"), *body)
                    .await;
                table.push((instance, *method, *suffix, ns.to_owned(), answer.status));
                assert_eq!(
                    answer.status,
                    StatusCode::NOT_FOUND,
                    "{method} {base} in namespace {ns}: {}",
                    answer.body
                );
            }
            let after = admin
                .get(&format!(
                    "/clusters/c1/instances/{instance}?namespace={own}"
                ))
                .await
                .body["revision"]
                .clone();
            assert_eq!(before, after, "{method} {base}: nothing written elsewhere");
            let answer = admin
                .call(method, &format!("{base}?namespace={own}"), *body)
                .await;
            assert_eq!(
                answer.status, *own_status,
                "{method} {base} in its own namespace: {}",
                answer.body
            );
        }
    }
    // A namespace id that is not an id is refused as such.
    let bad = admin
        .get("/clusters/c1/instances/inst_default/routes?namespace=a%20b")
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.fields(), ["namespace"]);
    // Without the parameter the request works in `default`.
    let implicit = admin.get("/clusters/c1/instances/inst_team/routes").await;
    assert_eq!(implicit.status, StatusCode::NOT_FOUND);
    assert_eq!(table.len(), 2 * endpoints.len() * 2);
    admin.stop().await;
}
