//! A node and its instance's binding (requirements N3, N5), through a running gateway:
//! an instance bound to a namespace that does not exist, or a node bound to another
//! namespace than its instance's, serves nothing and says why in its heartbeat; once
//! the binding is right the node serves again; the namespace's plugin templates
//! override the instance's.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::upstream::{Answer, ScriptedUpstream};

mod common;
use common::{Node, Options};

/// Writes the instance's binding as the agent does (no revision: it is not config).
async fn bind(node: &Node, binding: Value) {
    let outcome = node
        .store
        .txn(store::Txn {
            compares: vec![],
            ops: vec![store::Op::Put {
                key: node.keyspace.binding(common::INSTANCE),
                value: binding.to_string().into_bytes(),
                lease: None,
            }],
        })
        .await
        .unwrap();
    assert!(outcome.succeeded);
}

/// Waits until the node's heartbeat says `unbound` is as wanted.
async fn heartbeat_says(node: &Node, wanted: Option<&str>) -> model::cluster::NodeHeartbeat {
    let start = Instant::now();
    loop {
        if let Some(beat) = node.heartbeat().await {
            let unbound = beat.unbound.as_deref();
            let matches = match (wanted, unbound) {
                (None, None) => true,
                (Some(part), Some(reason)) => reason.contains(part),
                _ => false,
            };
            if matches {
                return beat;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no heartbeat with unbound {wanted:?}: {:?}",
            node.heartbeat().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve_app(node: &mut Node, app: &ScriptedUpstream) {
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/api",
        json!({"id": "api", "paths": ["/api/*"], "upstream_id": "app",
               "plugins": {"request-id": {}}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_of_a_missing_namespace_serves_nothing() {
    let app = ScriptedUpstream::start(|_| Answer::new(200, "app".to_owned())).await;
    let mut node = Node::start().await;
    serve_app(&mut node, &app).await;
    // No binding yet (an admin of an earlier version): the node serves.
    node.until("/api/x", 200, "app").await;
    heartbeat_says(&node, None).await;

    bind(
        &node,
        json!({"namespace": "ns-0123456789abcdef", "exists": false}),
    )
    .await;
    node.until("/api/x", 404, "").await;
    let beat = heartbeat_says(&node, Some("does not exist")).await;
    assert!(
        beat.unbound
            .as_ref()
            .unwrap()
            .contains("ns-0123456789abcdef"),
        "{beat:?}"
    );
    assert_eq!(beat.applied_revision.0, 0, "it serves no revision");
    assert!(
        beat.skipped.iter().any(|s| s.key.ends_with("/binding")),
        "{:?}",
        beat.skipped
    );
    // Config written meanwhile is kept, not served.
    node.put(
        "routes/more",
        json!({"id": "more", "paths": ["/more"], "upstream_id": "app"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(node.get("GET", "/more").await.0, 404);

    // The namespace is there again (created, or the instance moved): everything serves.
    bind(
        &node,
        json!({"namespace": "ns-0123456789abcdef", "exists": true}),
    )
    .await;
    node.until("/api/x", 200, "app").await;
    node.until("/more", 200, "app").await;
    let beat = heartbeat_says(&node, None).await;
    assert_eq!(beat.applied_revision.0, node.revision);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_bound_to_a_namespace_serves_only_its_instance_there() {
    let app = ScriptedUpstream::start(|_| Answer::new(200, "app".to_owned())).await;
    let mut node = Node::start_with_options(Options {
        namespace: Some("team-a".into()),
        ..Options::default()
    })
    .await;
    serve_app(&mut node, &app).await;
    // The store does not say the instance's namespace yet: nothing is served.
    let beat = heartbeat_says(&node, Some("does not say")).await;
    assert!(beat.unbound.unwrap().contains("team-a"));
    assert_eq!(node.get("GET", "/api/x").await.0, 404);

    bind(&node, json!({"namespace": "team-b", "exists": true})).await;
    let beat = heartbeat_says(&node, Some("belongs to namespace \"team-b\"")).await;
    assert!(beat
        .unbound
        .unwrap()
        .contains("bound to namespace \"team-a\""));
    assert_eq!(node.get("GET", "/api/x").await.0, 404);

    bind(&node, json!({"namespace": "team-a", "exists": true})).await;
    node.until("/api/x", 200, "app").await;
    heartbeat_says(&node, None).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_plugin_templates_override_the_instances() {
    let app = ScriptedUpstream::start(|_| Answer::new(200, "app".to_owned())).await;
    let mut node = Node::start().await;
    serve_app(&mut node, &app).await;
    bind(&node, json!({"namespace": "default", "exists": true})).await;
    node.until("/api/x", 200, "app").await;
    let (_, _, headers) = node.get("GET", "/api/x").await;
    assert!(headers.contains_key("x-request-id"));

    // The namespace turns the plugin off: no id any more, the route still serves.
    bind(
        &node,
        json!({"namespace": "default", "exists": true,
               "plugin_templates": [{"id": "request-id", "enabled": false}]}),
    )
    .await;
    wait_for_header(&node, "x-request-id", false).await;

    // The instance's template renames the header; the namespace's wins where it speaks.
    node.put(
        "plugin_templates/request-id",
        json!({"id": "request-id", "defaults": {"header_name": "x-instance-id"}}),
    )
    .await;
    bind(
        &node,
        json!({"namespace": "default", "exists": true,
               "plugin_templates": [{"id": "request-id", "enabled": true,
                                     "defaults": {"header_name": "x-namespace-id"}}]}),
    )
    .await;
    wait_for_header(&node, "x-namespace-id", true).await;
    // Without the override, the instance's template applies again.
    bind(&node, json!({"namespace": "default", "exists": true})).await;
    wait_for_header(&node, "x-instance-id", true).await;
    node.stop().await;
}

async fn wait_for_header(node: &Node, name: &str, present: bool) {
    let start = Instant::now();
    loop {
        let (status, _, headers) = node.get("GET", "/api/x").await;
        if status == 200 && headers.contains_key(name) == present {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} present={present}: {status} {headers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
