//! The holes found by trying the gateway as an attacker, each closed and kept closed:
//! request smuggling through Connection nominations (and the pooled connection it
//! would poison), deny lists on a dual-stack listener, fragments, lenient parses,
//! HTTP/2 connections without an end, slow bodies, upstream heads with many lines.
//! `cargo xtask test` runs this suite on both engines (fast path on, then off).

use std::time::Duration;

use serde_json::json;
use testkit::upstream::{Answer, ScriptedUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{Node, Options};

fn scripted(upstream: &ScriptedUpstream) -> serde_json::Value {
    json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": upstream.port(), "weight": 1}]})
}

/// A node with `/*` open to all and `/admin` denied to loopback clients; its
/// upstream answers with the target it received.
async fn guarded_node(options: Options) -> (Node, ScriptedUpstream) {
    let app = ScriptedUpstream::start(|r| Answer::new(200, r.target.clone())).await;
    let mut node = Node::start_with_options(options).await;
    node.put("upstreams/app", scripted(&app)).await;
    node.put(
        "routes/admin",
        json!({"id": "admin", "paths": ["/admin", "/admin/*"], "upstream_id": "app",
               "plugins": {"ip-restriction": {"denylist": ["127.0.0.0/8"]}}}),
    )
    .await;
    node.put(
        "routes/all",
        json!({"id": "all", "paths": ["/*"], "upstream_id": "app"}),
    )
    .await;
    node.until("/public", 200, "/public").await;
    (node, app)
}

fn targets(app: &ScriptedUpstream) -> Vec<String> {
    app.received().into_iter().map(|r| r.target).collect()
}

/// Sends `request` on a new connection and reads until the node closes it (or 5 s).
async fn exchange(node: &Node, request: &[u8]) -> String {
    let addr = node.url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_nominations_cannot_smuggle_a_request_or_poison_the_pool() {
    let (node, app) = guarded_node(Options::default()).await;
    let before = targets(&app).len();
    let smuggled = "GET /admin HTTP/1.1\r\nHost: h\r\n\r\n";
    let attack = format!(
        "POST /public HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let response = exchange(&node, attack.as_bytes()).await;
    assert_eq!(status(&response), 400, "{response}");
    assert!(response.contains("\"code\":\"bad_request\""), "{response}");
    // The pool-poisoning variant: half a head left behind would prefix the next
    // client's request on a reused upstream connection.
    let half = "GET /admin HTTP/1.1\r\nX-Ignore: ";
    let attack = format!(
        "POST /public HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, content-length\r\nContent-Length: {}\r\n\r\n{half}",
        half.len()
    );
    assert_eq!(status(&exchange(&node, attack.as_bytes()).await), 400);
    for other in [
        "Connection: Transfer-Encoding",
        "Connection: Host",
        "Connection: X-Forwarded-For",
        "Connection: a, b, c, d, e, f, g, h, i",
    ] {
        let request = format!("GET /public HTTP/1.1\r\nHost: h\r\n{other}\r\n\r\n");
        assert_eq!(
            status(&exchange(&node, request.as_bytes()).await),
            400,
            "{other}"
        );
    }
    // The next client is served alone: nothing of the attacks reached the upstream.
    let response = exchange(
        &node,
        b"GET /public/next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), 200);
    assert!(response.ends_with("/public/next"), "{response}");
    assert_eq!(targets(&app)[before..], ["/public/next"]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_lists_hold_for_ipv4_clients_of_a_dual_stack_listener() {
    let listen = format!("[::]:{}", testkit::free_port()).parse().unwrap();
    let (node, _app) = guarded_node(Options {
        listen: Some(listen),
        ..Options::default()
    })
    .await;
    // 127.0.0.1 arrives as ::ffff:127.0.0.1; the IPv4 deny list still applies.
    let response = exchange(
        &node,
        b"GET /admin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), 403, "{response}");
    let response = exchange(
        &node,
        b"GET /public HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), 200, "{response}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_and_lenient_parses_are_refused_on_every_engine() {
    let (node, app) = guarded_node(Options::default()).await;
    let before = targets(&app).len();
    let cases: &[(&str, &[u8], u16)] = &[
        ("fragment", b"GET /admin#x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        ("fragment, HTTP/1.0", b"GET /admin#x HTTP/1.0\r\n\r\n", 400),
        ("extra space", b"GET /p /q HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (
            "bare LF in a chunk extension",
            b"POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        ("Connection: host", b"GET /public HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n", 400),
        ("userinfo in Host", b"GET /public HTTP/1.1\r\nHost: x@evil\r\n\r\n", 400),
        ("obs-fold", b"GET /public HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400),
        ("space before colon", b"GET /public HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        ("NUL", b"GET /public HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
        (
            "both framings",
            b"POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "conflicting authority",
            b"GET http://other/public HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        (
            "unknown coding",
            b"POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
    ];
    for (what, request, want) in cases {
        let response = exchange(&node, request).await;
        assert_eq!(status(&response), *want, "{what}: {response}");
        assert!(response.contains("\"code\""), "{what}: {response}");
    }
    assert_eq!(targets(&app).len(), before, "nothing reached the upstream");
    // An escaped slash cannot climb out of a prefix: decoded, then normalised.
    let response = exchange(
        &node,
        b"GET /public/..%2fadmin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), 403, "{response}");
    let response = exchange(
        &node,
        b"GET /public/a%2Fb HTTP/1.1\r\nHost: H.\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.ends_with("/public/a/b"), "{response}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_without_a_stream_end() {
    let (node, _app) = guarded_node(Options {
        http: gateway::HttpSettings {
            header_read_timeout: Duration::from_millis(500),
            h2_idle_timeout: Duration::from_millis(700),
            ..gateway::HttpSettings::default()
        },
        ..Options::default()
    })
    .await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    for (what, sent) in [
        ("half a preface", PREFACE[..10].to_vec()),
        ("the preface alone", PREFACE.to_vec()),
        (
            "preface and SETTINGS, then nothing",
            [PREFACE, &settings].concat(),
        ),
    ] {
        let started = std::time::Instant::now();
        let addr = node.url.trim_start_matches("http://");
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&sent).await.unwrap();
        let mut sink = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut sink)).await;
        assert!(
            ended.is_ok(),
            "{what}: the connection is still open after 5 s"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "{what}: closed after {took:?}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_cut_and_frees_its_upstream_connection() {
    let (node, app) = guarded_node(Options {
        http: gateway::HttpSettings {
            body_rate: gateway::MinRate {
                grace: Duration::from_millis(800),
                bytes_per_sec: 500,
            },
            ..gateway::HttpSettings::default()
        },
        ..Options::default()
    })
    .await;
    let addr = node.url.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"POST /public/slow HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if conn.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), conn.read(&mut probe)).await
        {
            if n == 0
                || probe[..n].starts_with(b"HTTP/1.1 4")
                || probe[..n].starts_with(b"HTTP/1.1 5")
            {
                cut = true;
                break;
            }
        }
    }
    let took = started.elapsed();
    assert!(cut, "a body at 3 bytes/s was not cut");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    // The request never completed upstream.
    assert!(!targets(&app).contains(&"/public/slow".to_owned()));
    // A normal upload goes through.
    let body = vec![b'u'; 4 * 1024 * 1024];
    let response = node
        .http
        .post(node.at("/public/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = app.received();
    assert_eq!(received.last().unwrap().body.len(), body.len());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_heads_may_carry_pingora_s_256_lines_on_every_engine() {
    use tokio::net::TcpListener;
    // An upstream whose answer carries `n` header lines, n from the target.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&got);
                let n: usize = line
                    .split(' ')
                    .nth(1)
                    .and_then(|t| t.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                let mut head =
                    String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n");
                for i in 0..n {
                    head.push_str(&format!("x-h{i}: {i}\r\n"));
                }
                head.push_str("\r\nok");
                let _ = conn.write_all(head.as_bytes()).await;
            });
        }
    });
    let mut node = Node::start().await;
    node.put(
        "upstreams/many",
        json!({"id": "many", "nodes": [{"host": "127.0.0.1", "port": port, "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/many",
        json!({"id": "many", "paths": ["/*"], "upstream_id": "many"}),
    )
    .await;
    node.until("/1", 200, "ok").await;
    for _ in 0..3 {
        // 200 lines: more than the fast path took before (64); never a node failure.
        let response = exchange(
            &node,
            b"GET /200 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status(&response), 200, "{response}");
        assert!(response.ends_with("ok") && response.contains("x-h199: 199"));
    }
    let response = exchange(
        &node,
        b"GET /300 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), 502, "{response}");
    node.stop().await;
}
