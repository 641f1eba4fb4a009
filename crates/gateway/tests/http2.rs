//! HTTP/2 clients on both engines: the fast path's own HTTP/2 server
//! (`fastpath/h2.rs`) and Pingora's (a node with the fast path off) get the same
//! streams from an `h2` client, several at once on one connection; the client must
//! get the same status and body, and each node's upstream the same requests
//! (compared as in `differential.rs`: method, target, version, headers as a
//! multiset, body; framing and connection headers aside). Then what the HTTP/2 fast
//! path does on its own: chunked upstream responses decoded into DATA frames, a
//! stream whose body trickles or whose window never opens is cut while its siblings
//! go on.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use serde_json::json;
use testkit::upstream::{Answer, Received, ScriptedUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{comparable, Node, Options};

/// A node whose routes lead to the upstream on `upstream_port`, once `/a` answers
/// `ready`.
async fn node(
    fast_path: bool,
    upstream_port: u16,
    http: gateway::HttpSettings,
    ready: &str,
) -> Node {
    let mut node = Node::start_with_options(Options {
        http: gateway::HttpSettings { fast_path, ..http },
        ..Options::default()
    })
    .await;
    common::put_refusing_routes(&mut node, upstream_port).await;
    node.put(
        "routes/rid",
        json!({"id": "rid", "paths": ["/rid/*"], "upstream_id": "app",
               "plugins": {"request-id": {}}}),
    )
    .await;
    node.put(
        "routes/all",
        json!({"id": "all", "paths": ["/a", "/a/*", "/p"], "upstream_id": "app"}),
    )
    .await;
    node.until("/a", 200, ready).await;
    node
}

/// An HTTP/2 connection with prior knowledge.
async fn connect(node: &Node) -> SendRequest<Bytes> {
    connect_with(node, h2::client::Builder::new()).await
}

async fn connect_with(node: &Node, builder: h2::client::Builder) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (send, conn) = builder.handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One HTTP/2 request as the tests write it.
#[derive(Clone, Debug)]
struct Case {
    method: &'static str,
    uri: String,
    headers: Vec<(&'static str, String)>,
    /// DATA frames; empty: END_STREAM on the head.
    body: Vec<&'static [u8]>,
}

fn case(method: &'static str, uri: &str) -> Case {
    Case {
        method,
        uri: uri.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Case {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, parts: &[&'static [u8]]) -> Self {
        self.body = parts.to_vec();
        self
    }
}

/// Status, body, header names (sorted) of the answer; status 0 when the stream was
/// reset.
async fn send(client: &SendRequest<Bytes>, case: &Case) -> (u16, Vec<u8>, Vec<String>) {
    let mut client = client.clone().ready().await.unwrap();
    let mut request = http::Request::builder().method(case.method).uri(&case.uri);
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    let request = request.body(()).unwrap();
    let Ok((response, mut body)) = client.send_request(request, case.body.is_empty()) else {
        return (0, Vec::new(), Vec::new());
    };
    for (i, part) in case.body.iter().enumerate() {
        body.send_data(Bytes::from_static(part), i + 1 == case.body.len())
            .unwrap();
    }
    let Ok(response) = response.await else {
        return (0, Vec::new(), Vec::new());
    };
    let status = response.status().as_u16();
    // Pingora's HTTP/2 server adds Date; the fast path does not.
    let mut names: Vec<String> = response
        .headers()
        .keys()
        .filter(|k| *k != http::header::DATE)
        .map(|k| k.as_str().to_owned())
        .collect();
    names.sort();
    let mut recv = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let Ok(chunk) = chunk else {
            return (0, data, names);
        };
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (status, data, names)
}

fn cases() -> Vec<Case> {
    let big = "v".repeat(34 * 1024);
    vec![
        case("GET", "http://h/a?x=1&y=%2F")
            .header("accept", "*/*")
            .header("x-forwarded-for", "10.1.1.1"),
        case("GET", "http://h/a/cookies")
            .header("cookie", "a=1")
            .header("cookie", "b=2"),
        case("POST", "http://h/p")
            .header("content-length", "5")
            .body(&[b"hello"]),
        case("POST", "http://h/p").body(&[b"no ", b"length"]),
        case("PUT", "http://h/p")
            .header("content-type", "text/plain")
            .body(&[b""]),
        case("HEAD", "http://h/a"),
        case("DELETE", "http://x.h:8080/a/d").header("te", "trailers"),
        case("GET", "http://h/a/./b/../c//d"),
        // A plugin's header phases: the client's id goes upstream and comes back.
        case("GET", "http://h/rid/x").header("x-request-id", "client-id-1"),
        case("GET", "http://h/a/..%2fadmin/x"),
        case("GET", "http://H./a/host"),
        case("GET", "http://h/none"),
        case("POST", "http://h/get-only"),
        case("GET", "http://h/admin/x"),
        case("GET", "http://h/keyed/x"),
        case("GET", "http://h/rw/a/b?q=1")
            .header("x-drop", "1")
            .header("x-add", "0")
            .header("origin", "https://o.example"),
        case("OPTIONS", "http://h/rw/a")
            .header("origin", "https://o.example")
            .header("access-control-request-method", "PUT"),
        case("GET", "http://h/keyed/x?apikey=diff-key-0000&z=1"),
        case("POST", "http://h/keyed/y")
            .header("apikey", "diff-key-0000")
            .body(&[b"hi"]),
        case("POST", "http://h/keyed/y")
            .header("apikey", "wrong-key-000")
            .body(&[b"hi"]),
        case("GET", "http://h/a/conflict").header("host", "other"),
        case("GET", "http://h/a/same").header("host", "h"),
        case("GET", "http://user@h/a/userinfo"),
        case("CONNECT", "h:443"),
        case("GET", "http://h/a/big").header("x-big", big),
        case("POST", "http://h/p")
            .header("content-length", "3")
            .body(&[b"toolong"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_answer_the_same_streams_the_same_way() {
    let script = |r: &Received| Answer::new(200, format!("{} {}", r.method, r.target));
    let fast_up = ScriptedUpstream::start(script).await;
    let pingora_up = ScriptedUpstream::start(script).await;
    let settings = gateway::HttpSettings::default();
    let fast = node(true, fast_up.port(), settings.clone(), "GET /a").await;
    let pingora = node(false, pingora_up.port(), settings, "GET /a").await;
    let (fast_client, pingora_client) = (connect(&fast).await, connect(&pingora).await);
    let mut mismatches = Vec::new();
    let mut statuses = std::collections::BTreeSet::new();
    for case in cases() {
        let (fast_before, pingora_before) = (fast_up.received().len(), pingora_up.received().len());
        let fast_answer = send(&fast_client, &case).await;
        let pingora_answer = send(&pingora_client, &case).await;
        let fast_got: Vec<_> = fast_up.received()[fast_before..]
            .iter()
            .map(comparable)
            .collect();
        let pingora_got: Vec<_> = pingora_up.received()[pingora_before..]
            .iter()
            .map(comparable)
            .collect();
        statuses.insert(fast_answer.0);
        if case.uri.ends_with("/rid/x") {
            assert!(fast_answer.2.contains(&"x-request-id".to_owned()));
            let sent = ("x-request-id".to_owned(), "client-id-1".to_owned());
            assert!(fast_got.iter().all(|r| r.3.contains(&sent)), "{fast_got:?}");
        }
        // Pingora refuses a malformed HTTP/2 head (400) and CONNECT (405) before the
        // core sees them, with a page of its own instead of the core's JSON body.
        let same = if matches!(pingora_answer.0, 400 | 405) && !pingora_answer.1.starts_with(b"{") {
            fast_answer.0 == pingora_answer.0
        } else {
            fast_answer == pingora_answer
        };
        if !same || fast_got != pingora_got {
            let show = |(status, body, names): &(u16, Vec<u8>, Vec<String>)| {
                let body = String::from_utf8_lossy(body);
                format!("{status} {:?} {names:?}", &body[..body.len().min(80)])
            };
            mismatches.push(format!(
                "{} {} {:?}\n  fast path: {} {fast_got:?}\n  pingora:   {} {pingora_got:?}",
                case.method,
                case.uri,
                case.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                show(&fast_answer),
                show(&pingora_answer),
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} streams differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // Served and refused streams both: 200, 400, 403, 404, 405, 431, reset.
    // (Reset: more DATA than Content-Length announced.)
    for status in [0, 200, 400, 403, 404, 405, 431] {
        assert!(
            statuses.contains(&status),
            "{status} not reached: {statuses:?}"
        );
    }
    // Many streams at once on one connection.
    let many = (0..64).map(|i| {
        let client = fast_client.clone();
        async move { send(&client, &case("GET", &format!("http://h/a/{i}"))).await }
    });
    for (i, (status, body, _)) in futures::future::join_all(many)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!((status, body), (200, format!("GET /a/{i}").into_bytes()));
    }
    fast.stop().await;
    pingora.stop().await;
}

/// An upstream answering every request with a chunked body and a trailer.
async fn chunked_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut read = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
                        if conn.write_all(response).await.is_err() {
                            return;
                        }
                    }
                    match conn.read(&mut read).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&read[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upstream_responses_reach_http2_clients_decoded() {
    let upstream = chunked_upstream().await;
    for fast_path in [true, false] {
        let node = node(
            fast_path,
            upstream.port(),
            gateway::HttpSettings::default(),
            "hello world",
        )
        .await;
        let client = connect(&node).await;
        for _ in 0..3 {
            let (status, body, names) = send(&client, &case("GET", "http://h/a/chunks")).await;
            assert_eq!(status, 200, "fast path {fast_path}");
            assert_eq!(body, b"hello world", "fast path {fast_path}");
            assert!(names.contains(&"x-up".to_owned()), "{names:?}");
            assert!(
                !names.contains(&"transfer-encoding".to_owned()),
                "{names:?}"
            );
        }
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_stream_is_cut_and_its_siblings_go_on() {
    let upstream = ScriptedUpstream::start(|r| Answer::new(200, r.target.clone())).await;
    let node = node(
        true,
        upstream.port(),
        gateway::HttpSettings {
            body_rate: gateway::MinRate {
                grace: Duration::from_millis(800),
                bytes_per_sec: 500,
            },
            ..gateway::HttpSettings::default()
        },
        "/a",
    )
    .await;
    let client = connect(&node).await;
    let mut slow = client.clone().ready().await.unwrap();
    let request = http::Request::post("http://h/a/slow")
        .header("content-length", "100")
        .body(())
        .unwrap();
    let (response, mut body) = slow.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(b"x"), false).unwrap();
    let started = std::time::Instant::now();
    // A sibling stream is served meanwhile.
    let (status, answer, _) = send(&client, &case("GET", "http://h/a/sibling")).await;
    assert_eq!((status, answer), (200, b"/a/sibling".to_vec()));
    let ended = tokio::time::timeout(Duration::from_secs(5), response).await;
    let took = started.elapsed();
    assert!(
        matches!(ended, Ok(Err(_))),
        "the trickling stream was not reset"
    );
    assert!(took < Duration::from_secs(4), "cut after {took:?}");
    assert!(!upstream.received().iter().any(|r| r.target == "/a/slow"));
    // The connection still serves.
    let (status, _, _) = send(&client, &case("GET", "http://h/a/after")).await;
    assert_eq!(status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_window_never_opens_is_cut() {
    let upstream = ScriptedUpstream::start(|_| Answer::new(200, "z".repeat(4096))).await;
    let node = node(
        true,
        upstream.port(),
        gateway::HttpSettings {
            send_rate: gateway::MinRate {
                grace: Duration::from_millis(800),
                bytes_per_sec: 500,
            },
            ..gateway::HttpSettings::default()
        },
        &"z".repeat(4096),
    )
    .await;
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(100);
    let client = connect_with(&node, builder).await;
    let mut stream = client.ready().await.unwrap();
    let (response, _) = stream
        .send_request(
            http::Request::get("http://h/a/window").body(()).unwrap(),
            true,
        )
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let started = std::time::Instant::now();
    // The first 100 bytes fit the window; the client never releases them.
    let mut got = 0;
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.data()).await {
            Ok(Some(Ok(chunk))) => got += chunk.len(),
            other => break other,
        }
    };
    assert_eq!(got, 100);
    assert!(matches!(outcome, Ok(Some(Err(_)))), "{outcome:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "cut after {took:?}");
    node.stop().await;
}

/// An HTTP/2 (h2c) server answering each stream with what it got: the client's
/// X-Forwarded-For and authority, then the request body echoed, then a trailer.
async fn h2c_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let (parts, mut body) = request.into_parts();
                        let seen = format!(
                            "xff={} authority={}\n",
                            parts
                                .headers
                                .get("x-forwarded-for")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                            parts.uri.authority().map_or("-", |a| a.as_str()),
                        );
                        let mut send = respond
                            .send_response(http::Response::new(()), false)
                            .unwrap();
                        send.send_data(Bytes::from(seen), false).unwrap();
                        while let Some(Ok(data)) = body.data().await {
                            let _ = body.flow_control().release_capacity(data.len());
                            send.send_data(data, false).unwrap();
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-echo-trailer", "done".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_for_pingora_are_relayed_whole_with_the_client_s_address() {
    let echo = h2c_echo().await;
    let mut node = Node::start_with_options(Options::default()).await;
    node.put(
        "upstreams/h2",
        json!({"id": "h2", "scheme": "grpc",
               "nodes": [{"host": "127.0.0.1", "port": echo.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/h2",
        json!({"id": "h2", "paths": ["/echo/*"], "upstream_id": "h2"}),
    )
    .await;
    let client = connect(&node).await;
    // The route may take a moment to arrive.
    let mut answer = (0, Vec::new(), Vec::new());
    for _ in 0..100 {
        answer = send(&client, &case("GET", "http://h/echo/a")).await;
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer.0, 200, "{answer:?}");
    // Bodies both ways as they come, and the trailers.
    let mut stream = client.clone().ready().await.unwrap();
    let (response, mut body) = stream
        .send_request(
            http::Request::post("http://h/echo/b").body(()).unwrap(),
            false,
        )
        .unwrap();
    body.send_data(Bytes::from_static(b"ping "), false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut recv = response.into_body();
    let first = recv.data().await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first),
        "xff=127.0.0.1 authority=h\n"
    );
    let echoed = recv.data().await.unwrap().unwrap();
    assert_eq!(&echoed[..], b"ping ");
    body.send_data(Bytes::from_static(b"pong"), true).unwrap();
    let echoed = recv.data().await.unwrap().unwrap();
    assert_eq!(&echoed[..], b"pong");
    assert!(recv.data().await.is_none());
    let trailers = recv.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["x-echo-trailer"], "done");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_arriving_byte_by_byte_are_not_taken_for_http2() {
    let upstream = ScriptedUpstream::start(|r| Answer::new(200, r.target.clone())).await;
    let node = node(
        true,
        upstream.port(),
        gateway::HttpSettings::default(),
        "/a",
    )
    .await;
    let mut conn = TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    // "P" and "PR" are also how the HTTP/2 preface starts.
    for byte in b"POST /a/bytes HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n" {
        conn.write_all(&[*byte]).await.unwrap();
        conn.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("/a/bytes"), "{answer}");
    node.stop().await;
}
