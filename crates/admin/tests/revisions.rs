//! Versions (requirement D4) through the admin API: every change is a revision with
//! author, time, message and the objects it wrote; any two revisions diff per object
//! and field; a rollback writes a new revision equal to an old one (previewed first,
//! history kept), restores secrets the old revision had, and reaches the store.

mod common;

use std::time::Duration;

use common::{route, upstream, TestAdmin, TestAgent};
use model::resource::ResourceKind;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BASE: &str = "/clusters/c1/instances/instance_a";
const SECRET_ONE: &str = "first-hs256-secret-0123456789abcdefghij";
const SECRET_TWO: &str = "second-hs256-secret-0123456789abcdefghi";

async fn start(dir: &tempfile::TempDir) -> (TestAdmin, TestAgent) {
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    (admin, agent)
}

/// A write with a revision message; returns the revision it made.
async fn write(
    admin: &TestAdmin,
    method: &str,
    path: &str,
    body: Option<Value>,
    message: &str,
) -> u64 {
    let mut request = admin
        .http
        .request(
            method.parse().unwrap(),
            format!("{}{BASE}{path}", admin.url),
        )
        .bearer_auth(common::ADMIN_TOKEN)
        .header("x-portico-message", message);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let revision = response
        .headers()
        .get("x-portico-revision")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    assert!(
        status.is_success(),
        "{method} {path}: {status} {}",
        response.text().await.unwrap()
    );
    revision.unwrap()
}

fn consumer(secret: &str) -> Value {
    json!({"id": "alice", "credentials": [
        {"type": "jwt-auth", "id": "j1", "key": "alice-kid", "algorithm": "HS256", "secret": secret}
    ]})
}

/// Everything the instance serves now, as the API lists it.
async fn config(admin: &TestAdmin) -> Value {
    let mut all = serde_json::Map::new();
    for kind in ResourceKind::ALL {
        let list = admin.get(&format!("{BASE}/{}", kind.as_str())).await;
        assert_eq!(list.status, StatusCode::OK);
        all.insert(kind.as_str().to_owned(), list.body["items"].clone());
    }
    Value::Object(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_diff_and_rollback_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, agent) = start(&dir).await;
    let r1 = write(
        &admin,
        "POST",
        "/upstreams",
        Some(upstream("up", 8080)),
        "add the upstream",
    )
    .await;
    let r2 = write(&admin, "POST", "/routes", Some(route("r1", "up")), "add r1").await;
    let r3 = write(
        &admin,
        "POST",
        "/consumers",
        Some(consumer(SECRET_ONE)),
        "alice",
    )
    .await;
    let r4 = write(
        &admin,
        "POST",
        "/certificates",
        Some(common::certificate("cert")),
        "tls",
    )
    .await;
    let at_r4 = config(&admin).await;
    let mut changed = route("r1", "up");
    changed["paths"] = json!(["/api/*", "/v2/*"]);
    changed["priority"] = json!(7);
    let r5 = write(&admin, "PUT", "/routes/r1", Some(changed), "r1: add /v2").await;
    let r6 = write(
        &admin,
        "PUT",
        "/consumers/alice",
        Some(consumer(SECRET_TWO)),
        "rotate alice",
    )
    .await;
    let r7 = write(&admin, "DELETE", "/certificates/cert", None, "drop tls").await;
    let r8 = write(&admin, "POST", "/routes", Some(route("r2", "up")), "add r2").await;
    assert_eq!([r1, r2, r3, r4, r5, r6, r7, r8], [1, 2, 3, 4, 5, 6, 7, 8]);

    // The history: newest first, with author, message and objects.
    let list = admin.get(&format!("{BASE}/revisions")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    assert_eq!(items[0]["revision"], 8);
    assert_eq!(items[0]["author"], "admin");
    assert_eq!(items[0]["message"], "add r2");
    assert_eq!(
        items[0]["objects"],
        json!([{"kind": "routes", "id": "r2", "op": "create"}])
    );
    assert_eq!(items[3]["op"], "update");
    let paged = admin
        .get(&format!("{BASE}/revisions?before=3&limit=1"))
        .await;
    assert_eq!(paged.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(paged.body["items"][0]["revision"], 2);

    // One revision: what it changed, field by field; a secret only by name.
    let one = admin.get(&format!("{BASE}/revisions/5")).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    let fields: Vec<&str> = one.body["changes"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["paths[1]", "priority"]);
    let rotated = admin.get(&format!("{BASE}/revisions/6")).await;
    let text = rotated.body.to_string();
    assert!(
        !text.contains(SECRET_ONE) && !text.contains(SECRET_TWO),
        "{text}"
    );
    assert!(
        rotated.body["changes"][0]["fields"][0]["secret"]
            .as_bool()
            .unwrap(),
        "{text}"
    );
    assert_eq!(
        admin.get(&format!("{BASE}/revisions/99")).await.status,
        StatusCode::NOT_FOUND
    );

    // Any two revisions.
    let diff = admin.get(&format!("{BASE}/diff?from=4&to=8")).await;
    assert_eq!(diff.status, StatusCode::OK, "{}", diff.body);
    let summary: Vec<(String, String, String)> = diff.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["id"].as_str().unwrap().to_owned(),
                c["op"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("routes", "r1", "update"),
        ("routes", "r2", "create"),
        ("certificates", "cert", "delete"),
        ("consumers", "alice", "update"),
    ];
    for e in expected {
        assert!(
            summary.contains(&(e.0.to_owned(), e.1.to_owned(), e.2.to_owned())),
            "{e:?} in {summary:?}"
        );
    }
    assert_eq!(summary.len(), 4);
    assert!(!diff.body.to_string().contains("PRIVATE KEY"));
    let future = admin.get(&format!("{BASE}/diff?from=1&to=50")).await;
    assert_eq!(future.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(future.fields(), ["to"]);

    // Preview: the same diff, nothing written.
    let preview = admin
        .call(
            "POST",
            &format!("{BASE}/revisions/4/rollback?dry_run=true"),
            None,
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    assert_eq!(preview.body["dry_run"], true);
    assert_eq!(preview.body["revision"], 9);
    assert_eq!(preview.body["changes"].as_array().unwrap().len(), 4);
    assert_eq!(admin.instance("c1", "instance_a").await["revision"], 8);
    assert_eq!(
        admin.get(&format!("{BASE}/revisions")).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        8
    );

    // The rollback: a new revision 9 equal to 4; history keeps all nine.
    let done = admin
        .call("POST", &format!("{BASE}/revisions/4/rollback"), None)
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.header("x-portico-revision"), "9");
    assert_eq!(done.header("x-portico-sync"), "applied");
    assert_eq!(config(&admin).await, at_r4);
    let history = admin.get(&format!("{BASE}/revisions")).await;
    let items = history.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 9);
    assert_eq!(items[0]["op"], "rollback");
    assert_eq!(items[0]["message"], "rollback to revision 4");
    assert!(
        admin.get(&format!("{BASE}/diff?from=4&to=9")).await.body["changes"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The store serves revision 9: r2 gone, the certificate back with its key, alice's
    // first secret back.
    assert_eq!(agent.meta("instance_a").await, Some(9));
    assert_eq!(
        agent.stored_ids("instance_a", ResourceKind::Routes).await,
        ["r1"]
    );
    let cert = agent
        .stored("instance_a", ResourceKind::Certificates, "cert")
        .await
        .unwrap();
    assert!(cert["key"].as_str().unwrap().contains("PRIVATE KEY"));
    let alice = agent
        .stored("instance_a", ResourceKind::Consumers, "alice")
        .await
        .unwrap();
    assert_eq!(alice["credentials"][0]["secret"], SECRET_ONE);

    // Rolling back to where it is changes nothing and makes no revision.
    let same = admin
        .call("POST", &format!("{BASE}/revisions/9/rollback"), None)
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
    assert_eq!(same.body["changed"], false);
    assert_eq!(admin.instance("c1", "instance_a").await["revision"], 9);
    // Forward again: roll back the rollback.
    let forward = admin
        .call("POST", &format!("{BASE}/revisions/8/rollback"), None)
        .await;
    assert_eq!(forward.status, StatusCode::OK, "{}", forward.body);
    assert_eq!(forward.header("x-portico-revision"), "10");
    assert_eq!(
        agent.stored_ids("instance_a", ResourceKind::Routes).await,
        ["r1", "r2"]
    );
    let alice = agent
        .stored("instance_a", ResourceKind::Consumers, "alice")
        .await
        .unwrap();
    assert_eq!(alice["credentials"][0]["secret"], SECRET_TWO);
    // To the empty config, and the future refused.
    let empty = admin
        .call(
            "POST",
            &format!("{BASE}/revisions/0/rollback?dry_run=true"),
            None,
        )
        .await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert!(empty.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["op"] == "delete"));
    let future = admin
        .call("POST", &format!("{BASE}/revisions/11/rollback"), None)
        .await;
    assert_eq!(
        future.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        future.body
    );
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_messages_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _agent) = start(&dir).await;
    let long = "m".repeat(1025);
    let answer = admin
        .http
        .post(format!("{}{BASE}/upstreams", admin.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .header("x-portico-message", long)
        .json(&upstream("up", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(admin.instance("c1", "instance_a").await["revision"], 0);
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_check_everything_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, agent) = start(&dir).await;
    write(
        &admin,
        "POST",
        "/upstreams",
        Some(upstream("up", 8080)),
        "up",
    )
    .await;
    write(&admin, "POST", "/routes", Some(route("r1", "up")), "r1").await;
    let revision = || async { admin.instance("c1", "instance_a").await["revision"].clone() };
    assert_eq!(revision().await, 2);

    let created = admin
        .send(
            "POST",
            &format!("{BASE}/routes?dry_run=true"),
            route("r2", "up"),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.header("x-portico-sync"), "dry_run");
    assert_eq!(created.body["op"], "create");
    assert_eq!(created.body["revision"], 3);
    let mut changed = route("r1", "up");
    changed["paths"] = json!(["/v2/*"]);
    let updated = admin
        .send("PUT", &format!("{BASE}/routes/r1?dry_run=true"), changed)
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["op"], "update");
    assert_eq!(updated.body["fields"][0]["path"], "paths[0]");
    assert_eq!(updated.body["fields"][0]["after"], "/v2/*");
    // Which requests change route: the gateway's router on the config before and after.
    let mut rerouted: Vec<(String, Value, Value)> = updated.body["rerouted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_owned(),
                r["before"].clone(),
                r["after"].clone(),
            )
        })
        .collect();
    rerouted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rerouted,
        [
            ("/api/x".to_owned(), json!("r1"), Value::Null),
            ("/v2/x".to_owned(), Value::Null, json!("r1")),
        ],
        "{}",
        updated.body
    );
    // A regex path and predicates: the sample request is one the new version takes.
    let mut changed = route("r1", "up");
    changed["paths"] = json!(["~/v[0-9]+/users"]);
    changed["headers"] = json!([{"name": "x-version", "op": "equals", "value": "2"}]);
    changed["remote_addrs"] = json!(["10.8.0.0/16"]);
    let updated = admin
        .send("PUT", &format!("{BASE}/routes/r1?dry_run=true"), changed)
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let started = updated.body["rerouted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["after"] == "r1")
        .cloned()
        .unwrap_or_else(|| panic!("no request starts matching: {}", updated.body));
    assert_eq!(started["path"], "/v1/users", "{started}");
    assert_eq!(started["headers"], json!({"x-version": "2"}), "{started}");
    assert_eq!(started["client_ip"], "10.8.0.0", "{started}");
    assert_eq!(started["before"], Value::Null, "{started}");
    // What a real write would refuse, a dry run refuses the same way.
    let in_use = admin
        .call("DELETE", &format!("{BASE}/upstreams/up?dry_run=true"), None)
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{}", in_use.body);
    let missing = admin
        .send(
            "POST",
            &format!("{BASE}/routes?dry_run=true"),
            route("r3", "nope"),
        )
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    let deleted = admin
        .call("DELETE", &format!("{BASE}/routes/r1?dry_run=true"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(deleted.body["op"], "delete");
    assert_eq!(deleted.body["rerouted"][0]["path"], "/api/x");
    assert_eq!(deleted.body["rerouted"][0]["after"], Value::Null);
    // A rollback preview says the same of the routes it would change.
    let preview = admin
        .call(
            "POST",
            &format!("{BASE}/revisions/1/rollback?dry_run=true"),
            None,
        )
        .await;
    assert_eq!(
        preview.body["rerouted"][0]["before"], "r1",
        "{}",
        preview.body
    );
    // Nothing of it stored, logged or sent.
    assert_eq!(revision().await, 2);
    assert_eq!(agent.meta("instance_a").await, Some(2));
    assert_eq!(
        agent.stored_ids("instance_a", ResourceKind::Routes).await,
        ["r1"]
    );
    let r1 = admin.get(&format!("{BASE}/routes/r1")).await;
    assert_eq!(r1.body["paths"], json!(["/api/*"]));
    assert_eq!(
        admin.get(&format!("{BASE}/revisions")).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    admin.stop().await;
}
