//! Plugins through a running gateway, on the engine the suite runs on (`cargo xtask
//! test` runs it on the fast path, then on Pingora's path alone): each phase a plugin
//! acts in reaches the wire the same way.

use serde_json::json;
use testkit::upstream::{Answer, ScriptedUpstream};

mod common;
use common::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_goes_upstream_and_back() {
    let app = ScriptedUpstream::start(|r| {
        Answer::new(200, r.header("x-request-id").unwrap_or("none").to_owned())
    })
    .await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/ids",
        json!({"id": "ids", "paths": ["/ids/*"], "upstream_id": "app",
               "plugins": {"request-id": {}}}),
    )
    .await;
    node.put(
        "routes/quiet",
        json!({"id": "quiet", "paths": ["/quiet/*"], "upstream_id": "app",
               "plugins": {"request-id": {"header_name": "X-Trace", "include_in_response": false}}}),
    )
    .await;
    node.until("/ids/warm", 200, "").await;

    // A new id: the upstream and the client see the same one.
    let (status, body, headers) = node.get("GET", "/ids/a").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 36, "{body}");
    assert_eq!(headers["x-request-id"], body.as_str());
    let (_, other, _) = node.get("GET", "/ids/b").await;
    assert_ne!(other, body, "each request gets its own id");

    // The client's id is kept, and only one reaches the upstream.
    let response = node
        .http
        .get(node.at("/ids/c"))
        .header("x-request-id", "from-client")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "from-client");
    assert_eq!(response.text().await.unwrap(), "from-client");
    let last = app.received().pop().unwrap();
    assert_eq!(
        last.headers
            .iter()
            .filter(|(n, _)| n == "x-request-id")
            .count(),
        1
    );

    // Another header, not sent back.
    let (status, _, headers) = node.get("GET", "/quiet/x").await;
    assert_eq!(status, 200);
    assert!(headers.get("x-trace").is_none());
    assert_eq!(
        app.received()
            .pop()
            .unwrap()
            .header("x-trace")
            .map(str::len),
        Some(36)
    );
    node.stop().await;
}
