//! What an instance is bound to reaches its agent's store (requirements N3, N5): its
//! namespace, whether that exists, and the namespace's plugin template overrides —
//! written when the agent is first polled, when an operator moves the instance, and
//! when the namespace's templates change. The effective plugins and the route tester
//! answer with the namespace's templates layered over the instance's, and say when the
//! instance's nodes serve nothing.

mod common;

use std::time::Duration;

use common::{upstream, wait_until, TestAdmin, TestAgent};
use model::cluster::InstanceBinding;
use reqwest::StatusCode;
use serde_json::json;
use store::ConfigStore;

const GHOST: &str = "ns-0123456789abcdef";

async fn binding(agent: &TestAgent, instance: &str) -> Option<InstanceBinding> {
    let kv = agent
        .store
        .get(&agent.keyspace.binding(instance))
        .await
        .unwrap()?;
    Some(serde_json::from_slice(&kv.value).unwrap())
}

async fn binding_becomes(
    agent: &TestAgent,
    instance: &str,
    check: impl Fn(&InstanceBinding) -> bool,
) -> InstanceBinding {
    wait_until(&format!("binding of {instance}"), || async {
        binding(agent, instance).await.filter(|b| check(b))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_follow_namespaces_and_their_templates() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["lost@ns-0123456789abcdef", "app"]).await;
    admin.register("c1", &agent, &["app", "lost"]).await;

    // The agent names a namespace nobody created: its nodes are to serve nothing.
    let lost = binding_becomes(&agent, "lost", |_| true).await;
    assert_eq!(
        lost,
        InstanceBinding {
            namespace: GHOST.into(),
            exists: false,
            plugin_templates: vec![],
        }
    );
    let app = binding_becomes(&agent, "app", |_| true).await;
    assert_eq!((app.namespace.as_str(), app.exists), ("default", true));

    // The route tester says so too.
    let tested = admin
        .send(
            "POST",
            &format!("/clusters/c1/instances/lost/route-test?namespace={GHOST}"),
            json!({"path": "/api/x"}),
        )
        .await;
    assert_eq!(tested.status, StatusCode::OK, "{}", tested.body);
    assert_eq!(tested.body["outcome"]["kind"], "not_found");
    assert!(
        tested.body["unbound"].as_str().unwrap().contains(GHOST),
        "{}",
        tested.body
    );

    // An operator moves it to a namespace that exists: bound at once.
    let moved = admin
        .send(
            "PUT",
            "/clusters/c1/instances/lost/namespace",
            json!({"namespace": "default"}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    binding_becomes(&agent, "lost", |b| b.exists && b.namespace == "default").await;

    // A route with request-id, and the namespace turning the plugin off.
    let base = "/clusters/c1/instances/app";
    for (kind, body) in [
        ("upstreams", upstream("up", 8080)),
        (
            "routes",
            json!({"id": "r1", "paths": ["/api/*"], "upstream_id": "up",
                   "plugins": {"request-id": {}}}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{base}/{kind}"), body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let effective = admin
        .get(&format!("{base}/routes/r1/plugins/effective"))
        .await;
    assert_eq!(effective.body["plugins"][0]["name"], "request-id");

    let off = json!({"id": "request-id", "enabled": false});
    let put = admin
        .send(
            "PUT",
            "/namespaces/default/plugin_templates/request-id",
            off.clone(),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
    assert_eq!(put.body, off);
    let again = admin
        .send(
            "PUT",
            "/namespaces/default/plugin_templates/request-id",
            off.clone(),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    // Every instance of the namespace gets it.
    for instance in ["app", "lost"] {
        binding_becomes(&agent, instance, |b| b.plugin_templates.len() == 1).await;
    }
    let effective = admin
        .get(&format!("{base}/routes/r1/plugins/effective"))
        .await;
    assert_eq!(effective.body["plugins"], json!([]), "{}", effective.body);
    assert_eq!(effective.body["skipped"][0]["name"], "request-id");
    let tested = admin
        .send(
            "POST",
            &format!("{base}/route-test"),
            json!({"path": "/api/x"}),
        )
        .await;
    assert_eq!(tested.body["matched"]["route_id"], "r1", "{}", tested.body);
    assert_eq!(
        tested.body["matched"]["plugins"],
        json!([]),
        "{}",
        tested.body
    );
    assert!(tested.body.get("unbound").is_none());

    let listed = admin.get("/namespaces/default/plugin_templates").await;
    assert_eq!(listed.body["items"], json!([off]));
    assert_eq!(
        admin
            .get("/namespaces/default/plugin_templates/request-id")
            .await
            .body,
        off
    );

    // Bad overrides are refused, naming the field, and change nothing.
    for (path, body, field) in [
        (
            "/namespaces/default/plugin_templates/request-id",
            json!({"id": "request-id", "defaults": {"header_name": 5}}),
            "defaults.header_name",
        ),
        (
            "/namespaces/default/plugin_templates/request-id",
            json!({"id": "limit-count"}),
            "id",
        ),
        (
            "/namespaces/default/plugin_templates/no-such",
            json!({"id": "no-such"}),
            "id",
        ),
    ] {
        let refused = admin.send("PUT", path, body).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert!(
            refused.fields().contains(&field.to_owned()),
            "{}",
            refused.body
        );
    }
    assert_eq!(
        admin.get("/namespaces/default/plugin_templates").await.body["items"],
        json!([off])
    );
    let missing = admin
        .send(
            "PUT",
            &format!("/namespaces/{GHOST}/plugin_templates/request-id"),
            off.clone(),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);

    // A namespace holding templates is not deleted; without them it is.
    let team = admin
        .send("POST", "/namespaces", json!({"name": "team"}))
        .await;
    let team = team.body["id"].as_str().unwrap().to_owned();
    let path = format!("/namespaces/{team}/plugin_templates/request-id");
    assert_eq!(
        admin.send("PUT", &path, off.clone()).await.status,
        StatusCode::CREATED
    );
    let refused = admin
        .call("DELETE", &format!("/namespaces/{team}"), None)
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(refused.body["error"]
        .as_str()
        .unwrap()
        .contains("request-id"));
    assert_eq!(
        admin.call("DELETE", &path, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        admin.call("DELETE", &path, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin
            .call("DELETE", &format!("/namespaces/{team}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // Removing the override hands the plugin back to the instance.
    let removed = admin
        .call(
            "DELETE",
            "/namespaces/default/plugin_templates/request-id",
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    binding_becomes(&agent, "app", |b| b.plugin_templates.is_empty()).await;
    let effective = admin
        .get(&format!("{base}/routes/r1/plugins/effective"))
        .await;
    assert_eq!(effective.body["plugins"][0]["name"], "request-id");
    admin.stop().await;
}
