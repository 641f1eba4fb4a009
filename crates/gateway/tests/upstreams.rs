//! Upstream behaviour over real HTTP on loopback: balancing policies, retries (when
//! they are safe and when they are not), passive and active health checks as the
//! heartbeat reports them, timeouts, keep-alive reuse and the Host sent to nodes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::upstream::{Answer, NamedUpstream, ScriptedUpstream};

mod common;
use common::Node;

/// Nodes on loopback with weight 1 each, for `upstream` JSON.
fn nodes(ports: &[u16]) -> Value {
    ports
        .iter()
        .map(|port| json!({"host": "127.0.0.1", "port": port, "weight": 1}))
        .collect()
}

/// Puts upstream `u` (nodes + `extra` fields) and a route `/*` to it; waits until the
/// route answers.
async fn serve(node: &mut Node, upstream: Value) {
    node.put("upstreams/u", upstream).await;
    node.put(
        "routes/r",
        json!({"id": "r", "paths": ["/*"], "upstream_id": "u"}),
    )
    .await;
    let start = Instant::now();
    loop {
        let (status, _, _) = node.get("GET", "/probe").await;
        if status != 404 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "route never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Counts which upstream answered each of `n` GETs (the body is its name).
async fn spread(node: &Node, n: usize, header: Option<(&str, String)>) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let mut request = node.http.get(format!("{}/x", node.url));
        if let Some((name, value)) = &header {
            request = request.header(*name, value);
        }
        let (status, body, _) = node.send(request).await;
        assert_eq!(status, 200, "{body}");
        *counts.entry(body).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_policies_spread_requests_as_configured() {
    let a = NamedUpstream::start("a").await;
    let b = NamedUpstream::start("b").await;
    let c = NamedUpstream::start("c").await;
    let mut node = Node::start().await;

    // Smooth weighted round robin is exact over a whole cycle: 3:1:1.
    let weighted = json!({"id": "u", "type": "roundrobin", "nodes": [
        {"host": "127.0.0.1", "port": a.port(), "weight": 3},
        {"host": "127.0.0.1", "port": b.port(), "weight": 1},
        {"host": "127.0.0.1", "port": c.port(), "weight": 1}]});
    serve(&mut node, weighted).await;
    // The probe of `serve` took one turn; a full number of cycles starts after it.
    let _ = spread(&node, 4, None).await;
    assert_eq!(
        spread(&node, 50, None).await,
        [("a".into(), 30), ("b".into(), 10), ("c".into(), 10)]
    );

    // Consistent hash on a header: one user always lands on one node, users spread.
    let ports = [a.port(), b.port(), c.port()];
    let chash = json!({"id": "u", "type": "chash", "hash_on": "header", "key": "x-user",
        "nodes": nodes(&ports)});
    node.put("upstreams/u", chash).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut homes = std::collections::BTreeSet::new();
    for user in 0..30 {
        let seen = spread(&node, 5, Some(("x-user", format!("user-{user}")))).await;
        assert_eq!(seen.len(), 1, "user-{user} moved between nodes: {seen:?}");
        homes.insert(seen[0].0.clone());
    }
    assert_eq!(homes.len(), 3, "30 users all hashed to {homes:?}");

    // Random and least_conn reach every node.
    for policy in ["random", "least_conn", "ewma"] {
        let upstream = json!({"id": "u", "type": policy, "nodes": nodes(&ports)});
        node.put("upstreams/u", upstream).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = spread(&node, 60, None).await;
        if policy == "random" {
            assert_eq!(seen.len(), 3, "{policy}: {seen:?}");
        } else {
            // Sequential requests leave every node idle: ties go round.
            assert!(seen.len() >= 2, "{policy}: {seen:?}");
        }
    }
    node.stop().await;
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    testkit::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_node() {
    let live = NamedUpstream::start("live").await;
    let mut node = Node::start().await;
    let upstream = json!({"id": "u", "nodes": nodes(&[dead_port(), live.port()]), "retries": 1});
    serve(&mut node, upstream.clone()).await;
    for _ in 0..20 {
        // Even a POST with a body: the dead node never received it.
        let (status, body, _) = node
            .send(node.http.post(format!("{}/x", node.url)).body("payload"))
            .await;
        assert_eq!((status, body.as_str()), (200, "live"));
    }
    // Without retries, the dead node's turns fail.
    node.put("upstreams/u", merge(upstream, json!({"retries": 0})))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut statuses = std::collections::BTreeSet::new();
    for _ in 0..10 {
        statuses.insert(node.get("GET", "/x").await.0);
    }
    assert_eq!(statuses, [200, 502].into());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_retried_only_when_replay_is_safe() {
    let failing = ScriptedUpstream::start(|_| Answer::new(503, "failing")).await;
    let good = ScriptedUpstream::start(|_| Answer::new(200, "good")).await;
    let mut node = Node::start().await;
    let upstream = json!({"id": "u", "nodes": nodes(&[failing.port(), good.port()]),
        "retries": 1, "retry_on_statuses": [503]});
    serve(&mut node, upstream).await;
    let before = failing.received().len();

    // Idempotent, no body: the 503 is dropped and the other node answers.
    for _ in 0..10 {
        let (status, body, _) = node.get("GET", "/x").await;
        assert_eq!((status, body.as_str()), (200, "good"));
    }
    let failing_gets = failing.received().len() - before;
    assert!(
        failing_gets >= 4,
        "round robin sent {failing_gets} of 10 to the failing node"
    );

    // A POST is not idempotent, a PUT with a body was sent already: never replayed.
    for method in ["POST", "PUT"] {
        let before = (failing.received().len(), good.received().len());
        let mut answers = Vec::new();
        for _ in 0..4 {
            let request = node
                .http
                .request(method.parse().unwrap(), format!("{}/x", node.url))
                .body("payload");
            answers.push(node.send(request).await.0);
        }
        let after = (failing.received().len(), good.received().len());
        // Each request reached exactly one node, once.
        assert_eq!((after.0 - before.0) + (after.1 - before.1), 4, "{method}");
        assert!(answers.contains(&503), "{method}: {answers:?}");
        assert_eq!(
            answers.iter().filter(|s| **s == 503).count(),
            after.0 - before.0,
            "{method}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_checks_eject_a_failing_node_and_the_heartbeat_says_so() {
    let broken = ScriptedUpstream::start(|_| Answer::new(500, "broken")).await;
    let good = ScriptedUpstream::start(|_| Answer::new(200, "good")).await;
    let mut node = Node::start().await;
    let upstream = json!({"id": "u", "nodes": nodes(&[broken.port(), good.port()]),
        "retries": 0,
        "checks": {"passive": {"unhealthy": {"http_statuses": [500], "failures": 2},
                               "eject_for": 30}}});
    serve(&mut node, upstream).await;
    for _ in 0..6 {
        node.get("GET", "/x").await;
    }
    // Ejected: every request goes to the good node now.
    let before = broken.received().len();
    for _ in 0..20 {
        let (status, body, _) = node.get("GET", "/x").await;
        assert_eq!((status, body.as_str()), (200, "good"));
    }
    assert_eq!(broken.received().len(), before);

    let broken_addr = format!("127.0.0.1:{}", broken.port());
    let start = Instant::now();
    loop {
        let beat = node.heartbeat().await;
        let health = beat.as_ref().and_then(|b| b.upstreams.first());
        let down = health.and_then(|u| u.nodes.iter().find(|n| n.address == broken_addr));
        if let (Some(health), Some(down)) = (health, down) {
            if !down.healthy {
                assert_eq!(health.upstream_id, "u");
                let reason = down.reason.as_deref().unwrap_or_default();
                assert!(reason.starts_with("passive"), "{reason}");
                assert!(health.nodes.iter().any(|n| n.healthy), "{health:?}");
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the heartbeat never reported the ejection: {beat:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_node_out_and_bring_it_back() {
    let sick = Arc::new(AtomicBool::new(true));
    let flaky = ScriptedUpstream::start({
        let sick = sick.clone();
        move |request| {
            if request.target == "/health" && sick.load(Ordering::SeqCst) {
                Answer::new(500, "sick")
            } else {
                Answer::new(200, "flaky")
            }
        }
    })
    .await;
    let steady = ScriptedUpstream::start(|_| Answer::new(200, "steady")).await;
    let mut node = Node::start().await;
    let upstream = json!({"id": "u", "nodes": nodes(&[flaky.port(), steady.port()]),
        "checks": {"active": {"type": "http", "http_path": "/health", "interval": 0.1,
            "timeout": 1, "healthy": {"successes": 2}, "unhealthy": {"failures": 2}}}});
    serve(&mut node, upstream).await;

    let flaky_addr = format!("127.0.0.1:{}", flaky.port());
    let flaky_health = || async {
        let beat = node.heartbeat().await?;
        let upstream = beat.upstreams.into_iter().find(|u| u.upstream_id == "u")?;
        upstream.nodes.into_iter().find(|n| n.address == flaky_addr)
    };
    let start = Instant::now();
    loop {
        if let Some(health) = flaky_health().await {
            if !health.healthy {
                let reason = health.reason.unwrap_or_default();
                assert!(reason.starts_with("active"), "{reason}");
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reported down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probes = flaky
        .received()
        .iter()
        .filter(|r| r.target == "/health")
        .count();
    assert!(probes >= 2, "{probes} probes");
    for _ in 0..10 {
        assert_eq!(node.get("GET", "/x").await.1, "steady");
    }

    sick.store(false, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(node.get("GET", "/x").await.1);
        }
        if seen.contains("flaky") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_keepalive_and_host_header() {
    let slow = ScriptedUpstream::start(|request| {
        let mut answer = Answer::new(200, request.header("host").unwrap_or_default());
        if request.target == "/slow" {
            answer.delay = Duration::from_secs(3);
        }
        answer
    })
    .await;
    let mut node = Node::start().await;
    let upstream = json!({"id": "u", "nodes": nodes(&[slow.port()]), "retries": 0,
        "timeout": {"connect": 1, "send": 1, "read": 0.3}});
    serve(&mut node, upstream.clone()).await;

    // Read timeout: 504, well before the node would have answered.
    let start = Instant::now();
    let (status, body, _) = node.get("GET", "/slow").await;
    assert_eq!(status, 504, "{body}");
    assert!(start.elapsed() < Duration::from_secs(2));

    // Keep-alive: sequential requests share one upstream connection.
    let connections = slow.connections();
    for _ in 0..20 {
        assert_eq!(node.get("GET", "/fast").await.0, 200);
    }
    assert!(
        slow.connections() - connections <= 1,
        "20 requests took {} connections",
        slow.connections() - connections
    );

    // Host: the client's by default (pass), the node's, or a fixed one.
    assert_eq!(node.get("GET", "/fast").await.1, "api.example.com:8080");
    let node_host = format!("127.0.0.1:{}", slow.port());
    for (extra, want) in [
        (json!({"pass_host": "node"}), node_host.as_str()),
        (
            json!({"pass_host": "rewrite", "upstream_host": "internal.svc"}),
            "internal.svc",
        ),
    ] {
        node.put("upstreams/u", merge(upstream.clone(), extra))
            .await;
        let start = Instant::now();
        while node.get("GET", "/fast").await.1 != want {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never sent {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    node.stop().await;
}
