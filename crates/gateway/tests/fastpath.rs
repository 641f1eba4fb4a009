//! The HTTP/1.1 fast path over real sockets: every response framing (length, chunked
//! with trailers, close-delimited, HEAD, 204, interim 1xx), request bodies, pipelining,
//! hop-by-hop headers, pooled connections the node closed, broken upstream responses,
//! and a connection moving to Pingora's path mid-way. The framing cases run through
//! both paths (`fast_path` on and off) and must look the same to the client.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use testkit::upstream::{Answer, ScriptedUpstream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::Node;

/// What a [`RawUpstream`] does after answering.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    KeepOpen,
    Close,
}

/// An HTTP/1.1 upstream that answers each request with raw bytes chosen by its target,
/// so a test controls the framing byte for byte. Request bodies (Content-Length) are
/// read and dropped.
struct RawUpstream {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

type RawScript = dyn Fn(&str) -> (Vec<u8>, After) + Send + Sync;

impl RawUpstream {
    async fn start(script: impl Fn(&str) -> (Vec<u8>, After) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let script: Arc<RawScript> = Arc::new(script);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(Self::serve(stream, script.clone()));
            }
        });
        Self { port, task }
    }

    async fn serve(stream: TcpStream, script: Arc<RawScript>) {
        let mut stream = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                    return;
                }
                if header == "\r\n" {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            let (answer, after) = script(&target);
            if stream.get_mut().write_all(&answer).await.is_err() || after == After::Close {
                return;
            }
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node (fast path on or off) with route `/*` to `port`.
async fn node_to(port: u16, fast_path: bool) -> Node {
    let mut node = Node::start_with(gateway::HttpSettings {
        fast_path,
        ..Default::default()
    })
    .await;
    node.route(
        "r",
        "/*",
        json!({"id": "r", "nodes": [{"host": "127.0.0.1", "port": port, "weight": 1}]}),
    )
    .await;
    node.until("/ready", 200, "").await;
    node
}

/// Sends `request` on `conn` and reads until `want` responses' worth of bytes matched
/// `done`, or the peer closes; returns everything read.
async fn exchange(conn: &mut TcpStream, request: &[u8], done: impl Fn(&str) -> bool) -> String {
    conn.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if done(&text) {
            return text;
        }
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
            Ok(Ok(0)) => return text,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return text,
            Err(_) => panic!("no complete answer; read so far: {text:?}"),
        }
    }
}

fn framing_script(target: &str) -> (Vec<u8>, After) {
    let answer: &[u8] = match target {
        "/ready" | "/length" => b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Kind: length\r\n\r\nlength",
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3\r\nchu\r\n4;ext=1\r\nnked\r\n0\r\nx-sum: 7\r\n\r\n",
        "/close" => b"HTTP/1.0 200 OK\r\nX-Kind: close\r\n\r\nuntil the end",
        "/empty" => b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n",
        "/interim" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        "/hop" => b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up-Private\r\nKeep-Alive: timeout=5\r\nX-Up-Private: 1\r\nX-Public: 1\r\nContent-Length: 2\r\n\r\nok",
        "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "/garbage" => b"SMTP ready\r\n\r\n",
        "/cut" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
        "/silent" => b"",
        _ => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    };
    let after = match target {
        "/close" | "/cut" | "/silent" => After::Close,
        _ => After::KeepOpen,
    };
    (answer.to_vec(), after)
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_the_same_on_both_paths() {
    let upstream = RawUpstream::start(framing_script).await;
    for fast_path in [true, false] {
        let node = node_to(upstream.port, fast_path).await;
        let client = &node.http;
        let get = |path: &str| client.get(node.at(path)).header("host", "a.example");

        let resp = get("/length").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-kind"], "length");
        assert_eq!(resp.text().await.unwrap(), "length");

        let resp = get("/chunked").send().await.unwrap();
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        assert_eq!(
            resp.text().await.unwrap(),
            "chunked",
            "fast_path {fast_path}"
        );

        let resp = get("/close").send().await.unwrap();
        assert_eq!(resp.headers()["x-kind"], "close");
        assert_eq!(resp.text().await.unwrap(), "until the end");

        let resp = get("/empty").send().await.unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(resp.text().await.unwrap(), "");

        let resp = client
            .head(node.at("/length"))
            .header("host", "a.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-length"], "6");
        assert_eq!(resp.text().await.unwrap(), "");

        let resp = get("/interim").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "final");

        // The node's hop-by-hop headers stay on its hop.
        let resp = get("/hop").send().await.unwrap();
        assert_eq!(resp.headers()["x-public"], "1");
        for private in ["x-up-private", "keep-alive"] {
            assert!(
                resp.headers().get(private).is_none(),
                "{private} leaked (fast_path {fast_path})"
            );
        }

        // Both framings: chunked wins, Content-Length is not passed on (RFC 9112 §6.3).
        let resp = get("/both").send().await.unwrap();
        assert!(resp.headers().get("content-length").is_none());
        assert_eq!(resp.text().await.unwrap(), "");

        // Broken answers: not HTTP, nothing at all -> 502.
        for path in ["/garbage", "/silent"] {
            let resp = get(path).send().await.unwrap();
            assert_eq!(resp.status(), 502, "{path} (fast_path {fast_path})");
        }
        // A body cut short never looks complete to the client.
        let cut = match get("/cut").send().await {
            Ok(resp) => resp.bytes().await.is_err(),
            Err(_) => true,
        };
        assert!(
            cut,
            "a cut body was delivered as complete (fast_path {fast_path})"
        );
        node.stop().await;
    }
}

#[tokio::test]
async fn the_raw_exchange_is_kept_alive_pipelined_and_closed_on_request() {
    let upstream = RawUpstream::start(framing_script).await;
    let node = node_to(upstream.port, true).await;
    let addr = node.url.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).await.unwrap();

    // Two requests in one write: both answered, in order, on the same connection.
    let text = exchange(
        &mut conn,
        b"GET /length HTTP/1.1\r\nHost: a\r\n\r\nGET /chunked HTTP/1.1\r\nHost: a\r\n\r\n",
        |t| t.ends_with("0\r\nx-sum: 7\r\n\r\n"),
    )
    .await;
    let length_at = text.find("length").unwrap();
    let chunked_at = text.find("3\r\nchu\r\n").unwrap();
    assert!(length_at < chunked_at, "{text:?}");
    assert!(!text.contains("Connection: close"), "{text:?}");

    // A close-delimited answer ends the client's connection too, and says so.
    let text = exchange(&mut conn, b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n", |_| {
        false
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.contains("Connection: close\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\nuntil the end"), "{text:?}");

    // A client asking to close gets its answer, then the connection ends.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let text = exchange(
        &mut conn,
        b"GET /length HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        |_| false,
    )
    .await;
    assert!(
        text.contains("Connection: close\r\n") && text.ends_with("length"),
        "{text:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn request_heads_and_bodies_reach_the_node_as_meant() {
    let upstream = ScriptedUpstream::start(|r| Answer::new(200, format!("{}", r.body.len()))).await;
    let node = node_to(upstream.port(), true).await;
    let addr = node.url.trim_start_matches("http://").to_string();

    // A body larger than any buffer arrives whole; so does one in the head's packet.
    let big = vec![b'x'; 3 * 1024 * 1024 + 17];
    let resp = node
        .http
        .post(node.at("/upload"))
        .header("host", "a.example")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), big.len().to_string());
    let last = upstream.received().pop().unwrap();
    assert_eq!(last.body, big);

    // Hop-by-hop headers, and those Connection names, stay on the client's hop; the
    // client's address is appended to X-Forwarded-For; dot segments are resolved.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let text = exchange(
        &mut conn,
        b"POST /a/../form?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 5\r\n\r\nhello",
        |t| t.ends_with("\r\n\r\n5"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    let got = upstream.received().pop().unwrap();
    assert_eq!(got.target, "/form?q=1");
    assert_eq!(got.body, b"hello");
    assert_eq!(got.header("host"), Some("a.example"));
    assert_eq!(
        got.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    for private in ["x-private", "keep-alive", "te", "connection"] {
        assert_eq!(got.header(private), None, "{private} was forwarded");
    }

    // The body arriving in pieces after the head.
    conn.write_all(b"PUT /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = exchange(&mut conn, b"56789", |t| t.ends_with("\r\n\r\n10")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert_eq!(upstream.received().pop().unwrap().body, b"0123456789");
    node.stop().await;
}

#[tokio::test]
async fn a_connection_moves_to_pingora_for_what_the_fast_path_does_not_serve() {
    let upstream = ScriptedUpstream::start(|r| Answer::new(200, r.target.clone())).await;
    let mut node = node_to(upstream.port(), true).await;
    node.put(
        "routes/r",
        json!({"id": "r", "paths": ["/api/*"], "methods": ["GET", "POST"], "upstream_id": "r"}),
    )
    .await;
    node.until("/api/ready", 200, "/api/ready").await;
    let addr = node.url.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let ok = |body: &'static str| move |t: &str| t.ends_with(body);

    let text = exchange(
        &mut conn,
        b"GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n",
        ok("/api/1"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    // No route: Pingora's path answers (the one place refusals are made)...
    let text = exchange(
        &mut conn,
        b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n",
        ok("}"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text:?}");
    assert!(text.contains("route_not_found"), "{text:?}");
    // ...and keeps the connection, chunked request bodies included.
    let text = exchange(
        &mut conn,
        b"POST /api/2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        ok("/api/2"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    let text = exchange(
        &mut conn,
        b"DELETE /api/3 HTTP/1.1\r\nHost: a\r\n\r\n",
        ok("}"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text:?}");

    // A head the fast path cannot parse gets Pingora's 400.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let text = exchange(
        &mut conn,
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        |_| false,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    node.stop().await;
}

#[tokio::test]
async fn pooled_connections_the_node_closed_are_not_failures() {
    // The node closes every connection after its answer without saying so: the next
    // request must not fail on the pooled (dead) connection, POSTs included.
    let upstream = RawUpstream::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            After::Close,
        )
    })
    .await;
    let node = node_to(upstream.port, true).await;
    for i in 0..30 {
        let request = if i % 2 == 0 {
            node.http.get(node.at("/x"))
        } else {
            node.http.post(node.at("/x")).body("data")
        };
        let resp = request.header("host", "a").send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
        // Let the close reach the gateway for some, race it for others.
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    node.stop().await;
}
