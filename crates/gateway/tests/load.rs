//! The node's load in its heartbeat, over real HTTP on loopback: every request counted
//! once whichever way it went (HTTP/1 and HTTP/2, served by the fast path, handed or
//! bridged to Pingora, or all on Pingora's path with `PORTICO_TEST_PINGORA_ONLY`),
//! 5xx answers as errors, and client connections while they are open.

use std::time::{Duration, Instant};

use model::cluster::NodeLoad;
use serde_json::json;
use testkit::upstream::NamedUpstream;

mod common;
use common::{Node, START_PROBES};

/// Polls the node's heartbeat until its load satisfies `done`; the last load seen.
async fn load_until(node: &Node, what: &str, done: impl Fn(&NodeLoad) -> bool) -> NodeLoad {
    let start = Instant::now();
    loop {
        let load = node.heartbeat().await.and_then(|beat| beat.load);
        if let Some(load) = load.filter(|l| done(l)) {
            return load;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: the heartbeat's load stayed {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node serves the config written last, from its heartbeat (an HTTP
/// poll would add requests to the count under test).
async fn applied(node: &Node) {
    let start = Instant::now();
    while node
        .heartbeat()
        .await
        .is_none_or(|beat| beat.applied_revision.0 != node.revision)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "config not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Routes: `/ok/*` to a live upstream, `/down/*` to a port nothing listens on (502,
/// or 503 once passive checks mark it down), `/zip/*` with a plugin that reads the
/// response body (the fast path hands HTTP/1 to Pingora and bridges HTTP/2 to it).
async fn routes(node: &mut Node, live: &NamedUpstream) {
    let dead = testkit::free_port();
    node.put("upstreams/live", common::upstream("live", &[live]))
        .await;
    node.put(
        "upstreams/dead",
        json!({"id": "dead", "nodes": [{"host": "127.0.0.1", "port": dead, "weight": 1}]}),
    )
    .await;
    for (id, upstream, plugins) in [
        ("ok", "live", json!({})),
        ("down", "dead", json!({})),
        ("zip", "live", json!({"gzip": {"comp_level": 6}})),
    ] {
        node.put(
            &format!("routes/{id}"),
            json!({"id": id, "paths": [format!("/{id}/*")], "upstream_id": upstream,
                   "plugins": plugins}),
        )
        .await;
    }
    applied(node).await;
}

fn http1() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// Sends `count` GETs of `path` on `client`; each must answer with a status of `class`.
async fn send(node: &Node, client: &reqwest::Client, path: &str, count: usize, class: u16) {
    for i in 0..count {
        let response = client.get(node.at(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        assert_eq!(status / 100, class, "{path} #{i}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_5xx_of_the_last_minute_reach_the_heartbeat() {
    let live = NamedUpstream::start("live").await;
    let mut node = Node::start().await;
    routes(&mut node, &live).await;

    // 40 requests with the start-up probe, 10 of them answered 5xx by the gateway.
    let (h1, h2) = (http1(), h2c());
    send(&node, &h1, "/ok/a", 10, 2).await;
    send(&node, &h1, "/zip/a", 5, 2).await;
    send(&node, &h1, "/down/a", 5, 5).await;
    send(&node, &h2, "/ok/b", 9, 2).await;
    send(&node, &h2, "/zip/b", 5, 2).await;
    send(&node, &h2, "/down/b", 5, 5).await;
    let sent = START_PROBES + 39;
    assert_eq!(sent, 40);

    // The window is the last 60 one-second samples: the requests show once the next
    // sample is taken, and none is counted twice (the handed-over and bridged ones
    // included).
    let load = load_until(&node, "40 requests counted", |l| l.requests >= sent).await;
    assert_eq!((load.requests, load.errors), (40, 10), "{load:?}");
    assert_eq!(load.requests_per_second(), 40.0 / 60.0);
    assert_eq!(load.error_rate(), Some(0.25));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_client_connections_reach_the_heartbeat() {
    let live = NamedUpstream::start("live").await;
    let mut node = Node::start().await;
    routes(&mut node, &live).await;

    // Idle keep-alive connections, one client each: two HTTP/1 ones the fast path
    // serves, one HTTP/1 one it handed to Pingora, one HTTP/2 one whose stream it
    // bridged to Pingora over an in-memory connection (not a client connection).
    let clients = [http1(), http1(), http1(), h2c()];
    send(&node, &clients[0], "/ok/a", 1, 2).await;
    send(&node, &clients[1], "/ok/b", 1, 2).await;
    send(&node, &clients[2], "/zip/c", 1, 2).await;
    send(&node, &clients[3], "/zip/d", 1, 2).await;
    let load = load_until(&node, "4 connections", |l| l.connections == 4).await;
    assert_eq!(load.in_flight, 0, "{load:?}");

    // Closed by their clients: the count drops as the node sees them go.
    drop(clients);
    load_until(&node, "no connection", |l| l.connections == 0).await;
    node.stop().await;
}
