//! The route tester through the admin API: the gateway's own router answers which
//! route takes a request, with its plugins in running order, and why each other route
//! does not; the answer follows the instance's revision; a bad test names its field.

mod common;

use std::time::Duration;

use common::{upstream, TestAdmin, TestAgent};
use reqwest::StatusCode;
use serde_json::json;

const BASE: &str = "/clusters/c1/instances/instance_a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_router_answers_route_tests() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    for (kind, body) in [
        ("upstreams", upstream("up", 8080)),
        (
            "global_rules",
            json!({"id": "g", "plugins": {"request-id": {}}}),
        ),
        (
            "routes",
            json!({"id": "api", "paths": ["/api/*"], "upstream_id": "up",
                   "plugins": {"cors": {}}}),
        ),
        (
            "routes",
            json!({"id": "admin", "paths": ["/api/admin/*"], "methods": ["POST"],
                   "upstream_id": "up"}),
        ),
        (
            "routes",
            json!({"id": "beta", "paths": ["/api/*"], "hosts": ["beta.example.com"],
                   "upstream_id": "up"}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{BASE}/{kind}"), body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let test = |body: serde_json::Value| {
        let admin = &admin;
        async move {
            admin
                .send("POST", &format!("{BASE}/route-test"), body)
                .await
        }
    };
    let answer =
        test(json!({"method": "GET", "host": "www.example.com", "path": "/api/admin/x"})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["outcome"]["kind"], "matched", "{}", answer.body);
    assert_eq!(answer.body["matched"]["route_id"], "api", "{}", answer.body);
    let plugins: Vec<&str> = answer.body["matched"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        plugins.contains(&"cors") && plugins.contains(&"request-id"),
        "{plugins:?}"
    );
    let misses: Vec<(&str, &str)> = answer.body["near_misses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["route_id"].as_str().unwrap(),
                m["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        misses.contains(&("admin", "method_not_allowed")),
        "{misses:?}"
    );
    assert!(misses.contains(&("beta", "host_mismatch")), "{misses:?}");

    // The answer follows the instance: after a change, the new table answers.
    let answer = admin
        .send("DELETE", &format!("{BASE}/routes/api"), json!(null))
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let answer = test(json!({"host": "www.example.com", "path": "/api/x"})).await;
    assert_eq!(
        answer.body["matched"],
        serde_json::Value::Null,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["status"], 404, "{}", answer.body);
    assert_eq!(answer.body["outcome"]["kind"], "not_found");

    // A bad test names the field.
    let bad = test(json!({"path": "no-slash"})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.fields(), ["path"]);
    let unknown = test(json!({"path": "/", "colour": "blue"})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    admin.stop().await;
}
