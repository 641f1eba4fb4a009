//! Declarative config through the admin API: an instance's config exported as YAML and
//! applied to an empty instance reproduces it exactly; an applied file creates,
//! updates and deletes to reach itself in one revision, previewed by a dry run; bad
//! files are refused naming the field, and change nothing.

mod common;

use std::time::Duration;

use common::{route, upstream, TestAdmin, TestAgent};
use reqwest::StatusCode;
use serde_json::{json, Value};

const A: &str = "/clusters/c1/instances/instance_a";
const B: &str = "/clusters/c1/instances/instance_b";

async fn apply(admin: &TestAdmin, base: &str, body: &str, query: &str) -> (StatusCode, Value) {
    let response = admin
        .http
        .put(format!("{}{base}/config{query}", admin.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .header("content-type", "application/yaml")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn export(admin: &TestAdmin, base: &str) -> String {
    let response = admin
        .http
        .get(format!("{}{base}/config", admin.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    response.text().await.unwrap()
}

/// The config without its revision, for comparing two instances.
fn objects(yaml: &str) -> Value {
    let mut value: Value = serde_yaml_ng::from_str(yaml).unwrap();
    value.as_object_mut().unwrap().remove("revision");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_apply_round_trip_and_declarative_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a", "instance_b"]).await;
    admin
        .register("c1", &agent, &["instance_a", "instance_b"])
        .await;
    for (kind, body) in [
        ("upstreams", upstream("up", 8080)),
        ("upstreams", upstream("up2", 8081)),
        (
            "services",
            json!({"id": "svc", "upstream_id": "up2", "plugins": {"request-id": {}}}),
        ),
        ("routes", route("r1", "up")),
        (
            "routes",
            json!({"id": "r2", "paths": ["/svc/*"], "service_id": "svc"}),
        ),
        ("consumer_groups", json!({"id": "gold", "plugins": {}})),
        (
            "global_rules",
            json!({"id": "g", "plugins": {"request-id": {}}}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{A}/{kind}"), body).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{kind}: {}",
            answer.body
        );
    }
    let yaml = export(&admin, A).await;
    assert!(yaml.contains("routes:") && yaml.contains("r2"), "{yaml}");

    // Applied to an empty instance: the same config, in one revision.
    let (status, preview) = apply(&admin, B, &yaml, "?dry_run=true").await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["changes"].as_array().unwrap().len(), 7);
    assert_eq!(admin.instance("c1", "instance_b").await["revision"], 0);
    let (status, done) = apply(&admin, B, &yaml, "").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["revision"], 1);
    assert_eq!(objects(&export(&admin, B).await), objects(&yaml));
    let history = admin.get(&format!("{B}/revisions")).await;
    assert_eq!(history.body["items"][0]["op"], "apply");
    assert_eq!(
        history.body["items"][0]["objects"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(agent.meta("instance_b").await, Some(1));
    // Applying it again changes nothing.
    let (_, again) = apply(&admin, B, &yaml, "").await;
    assert_eq!(again["changed"], false);
    assert_eq!(admin.instance("c1", "instance_b").await["revision"], 1);

    // A file that drops r2, the service and up2 and changes r1: deletes in the right
    // order (the route before the service before the upstream), one revision.
    let mut file: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    file["routes"] = json!([{"id": "r1", "paths": ["/v2/*"], "upstream_id": "up"}]);
    file.as_object_mut().unwrap().remove("services");
    file["upstreams"] = json!([upstream("up", 8080)]);
    let text = serde_yaml_ng::to_string(&file).unwrap();
    let (status, done) = apply(&admin, B, &text, "").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let ops: Vec<(String, String)> = done["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().into(),
                c["op"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert_eq!(
        admin.get(&format!("{B}/routes/r2")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin.get(&format!("{B}/routes/r1")).await.body["paths"],
        json!(["/v2/*"])
    );

    // Bad files: malformed YAML, an unknown field, a broken rule, a missing reference,
    // a duplicate: refused, nothing changes.
    let revision = admin.instance("c1", "instance_b").await["revision"].clone();
    for (body, status, field) in [
        ("routes: [", StatusCode::BAD_REQUEST, None),
        ("routes:\n  - id: r1\n    pathz: [/]\n", StatusCode::BAD_REQUEST, Some("routes[0].pathz")),
        (
            "upstreams:\n  - id: up\n    nodes: [{host: 127.0.0.1, port: 0}]\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("upstreams[up].nodes[0].port"),
        ),
        (
            "routes:\n  - id: r9\n    paths: [/]\n    upstream_id: nope\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("upstream_id"),
        ),
        (
            "upstreams:\n  - {id: up, nodes: [{host: a.test, port: 1}]}\n  - {id: up, nodes: [{host: a.test, port: 2}]}\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("upstreams[up]"),
        ),
    ] {
        let (got, answer) = apply(&admin, B, body, "").await;
        assert_eq!(got, status, "{body}: {answer}");
        if let Some(field) = field {
            let fields: Vec<&str> = answer["details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["field"].as_str().unwrap())
                .collect();
            assert!(fields.contains(&field), "{body}: {answer}");
        }
    }
    assert_eq!(
        admin.instance("c1", "instance_b").await["revision"],
        revision
    );

    // A namespace's export holds its instances.
    let ns = admin.get("/namespaces/default/config?format=json").await;
    assert_eq!(ns.status, StatusCode::OK, "{}", ns.body);
    assert_eq!(ns.body["instances"].as_array().unwrap().len(), 2);
    admin.stop().await;
}
