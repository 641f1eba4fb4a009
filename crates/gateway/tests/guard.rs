//! The connection guard (`core::guard`) on an in-memory connection: what Pingora's
//! engine gets to read of a client's bytes, and when the connection is cut. Each test
//! takes the stream the guard hands to the application and reads it as Pingora would.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway::core::guard::Guard;
use gateway::core::load::{Load, Minute};
use gateway::{HttpSettings, MinRate};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_millis(200);

/// The application behind the guard: hands each stream to the test.
struct Capture(mpsc::UnboundedSender<Stream>);

#[async_trait]
impl ServerApp for Capture {
    async fn process_new(self: &Arc<Self>, stream: Stream, _: &ShutdownWatch) -> Option<Stream> {
        let _ = self.0.send(stream);
        None
    }
}

fn settings() -> HttpSettings {
    HttpSettings {
        header_read_timeout: TIMEOUT,
        body_rate: MinRate {
            grace: Duration::from_secs(2),
            bytes_per_sec: 500,
        },
        send_rate: MinRate {
            grace: Duration::from_secs(2),
            bytes_per_sec: 500,
        },
        ..HttpSettings::default()
    }
}

/// The guarded stream (the gateway's side) and the client's side of a connection.
async fn connect(settings: HttpSettings) -> (Stream, DuplexStream) {
    connect_counting(settings, Arc::default()).await
}

/// [`connect`], the requests the guard ends itself counted in `load`.
async fn connect_counting(settings: HttpSettings, load: Arc<Load>) -> (Stream, DuplexStream) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Arc::new(Guard::new(Capture(tx), &settings, load));
    let (server, client) = tokio::io::duplex(256 * 1024);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    app.process_new(Box::new(server), &shutdown).await;
    (rx.recv().await.unwrap(), client)
}

/// What the engine reads until `want` bytes arrived, the stream ends or fails.
async fn read_n(stream: &mut Stream, want: usize) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

async fn client_reads(client: &mut DuplexStream) -> String {
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut out))
        .await
        .expect("the client gets an answer")
        .unwrap();
    String::from_utf8_lossy(&out[..n]).into_owned()
}

#[tokio::test]
async fn admitted_requests_pass_unchanged_one_at_a_time() {
    let (mut stream, mut client) = connect(settings()).await;
    let requests: [&[u8]; 3] = [
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n",
    ];
    // Pipelined, in pieces, so heads and chunks are split across reads.
    for piece in requests.concat().chunks(7) {
        client.write_all(piece).await.unwrap();
    }
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(read_n(&mut stream, request.len()).await.unwrap(), *request);
        // The next request waits for this one's response (Pingora serves one at a
        // time): nothing more can be read until then.
        let mut more = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut more)).await;
        assert!(
            early.is_err(),
            "request {i}: the next one came before the response"
        );
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_refused_head_is_answered_by_the_core_and_never_reaches_the_engine() {
    for (head, status) in [
        (&b"GET /p /q HTTP/1.1\r\nHost: a\r\n\r\n"[..], 400),
        (b"GET /admin#x HTTP/1.0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x@evil\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
    ] {
        let load = Arc::new(Load::default());
        let (mut stream, mut client) = connect_counting(settings(), load.clone()).await;
        client.write_all(head).await.unwrap();
        let err = read_n(&mut stream, 1).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let answer = client_reads(&mut client).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {answer}",
            String::from_utf8_lossy(head)
        );
        assert!(answer.contains("\"code\""), "{answer}");
        // What the engine would write after the refusal is not sent.
        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // The engine never saw the request: it ended in the guard, counted once (a
        // 4xx or 501: a 501 is a 5xx).
        load.tick();
        assert_eq!(
            load.last_minute(),
            Minute {
                requests: 1,
                errors: u64::from(status >= 500)
            }
        );
    }
}

#[tokio::test]
async fn a_bad_chunk_stops_the_body_where_it_goes_wrong() {
    let load = Arc::new(Load::default());
    let (mut stream, mut client) = connect_counting(settings(), load.clone()).await;
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    client.write_all(head).await.unwrap();
    client
        .write_all(b"5;a\nGET /admin HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let err = loop {
        match stream.read(&mut buf).await {
            Ok(0) => panic!("closed without refusal"),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // At most the head went through (read together with the bad line, not even
    // that); nothing of the broken chunk line did.
    assert!(
        head.starts_with(&seen),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(client_reads(&mut client).await.starts_with("HTTP/1.1 400 "));
    // A request whose head the engine read ends in the engine; one whose head never
    // got there (read together with the bad line) ends in the guard: once either way.
    load.tick();
    let ended_here = u64::from(seen.is_empty());
    assert_eq!(
        load.last_minute(),
        Minute {
            requests: ended_here,
            errors: 0
        }
    );
}

#[tokio::test]
async fn a_head_dribbled_past_the_deadline_is_cut() {
    tokio::time::pause();
    let (mut stream, mut client) = connect(settings()).await;
    tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" {
            if client.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(TIMEOUT / 10).await;
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let start = Instant::now();
    let err = read_n(&mut stream, 1).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(start.elapsed() < TIMEOUT + Duration::from_millis(50));
}

#[tokio::test]
async fn between_requests_only_keep_alive_applies_and_each_head_has_its_own_deadline() {
    tokio::time::pause();
    let (mut stream, mut client) = connect(settings()).await;
    let first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
    client.write_all(first).await.unwrap();
    assert_eq!(read_n(&mut stream, first.len()).await.unwrap(), first);
    stream
        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    // Idle for longer than the head timeout: not the guard's to cut.
    tokio::time::sleep(TIMEOUT * 5).await;
    client.write_all(b"GET /2 HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    let err = read_n(&mut stream, 1).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(start.elapsed() <= TIMEOUT + Duration::from_millis(5));
}

#[tokio::test]
async fn a_trickling_body_is_cut_and_a_steady_one_is_not() {
    tokio::time::pause();
    let (mut stream, mut client) = connect(settings()).await;
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n";
    client.write_all(head).await.unwrap();
    assert_eq!(read_n(&mut stream, head.len()).await.unwrap(), head);
    tokio::spawn(async move {
        for _ in 0..1000 {
            if client.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let start = Instant::now();
    let err = read_n(&mut stream, 1000).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    // 2 s of grace, 2 ms earned per byte: cut after about two seconds of waiting.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );

    let (mut stream, mut client) = connect(settings()).await;
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n";
    client.write_all(head).await.unwrap();
    tokio::spawn(async move {
        // 1 MiB in 64 KiB pieces, one every 500 ms: 128 KiB/s.
        for _ in 0..16 {
            client.write_all(&[b'y'; 65536]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let got = read_n(&mut stream, head.len() + 1048576).await.unwrap();
    assert_eq!(got.len(), head.len() + 1048576);
}

#[tokio::test]
async fn a_client_that_takes_nothing_is_cut() {
    tokio::time::pause();
    let (mut stream, client) = connect(settings()).await;
    let big = vec![b'z'; 4 * 1024 * 1024];
    let start = Instant::now();
    // The in-memory pipe holds 256 KiB; then writes wait on the client, which never
    // reads: one wait may last the grace (2 s), whatever was sent before.
    let err = stream.write_all(&big).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(client);
}

#[tokio::test]
async fn upgrades_tunnel_after_101_and_close_after_a_refusal_with_bytes_unchecked() {
    let (mut stream, mut client) = connect(settings()).await;
    let head = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    client.write_all(head).await.unwrap();
    assert_eq!(read_n(&mut stream, head.len()).await.unwrap(), head);
    stream
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        .await
        .unwrap();
    // Anything goes in the tunnel, bare LFs and NULs included.
    client.write_all(b"\x00\x01\nframes").await.unwrap();
    assert_eq!(read_n(&mut stream, 9).await.unwrap(), b"\x00\x01\nframes");

    let (mut stream, mut client) = connect(settings()).await;
    client.write_all(head).await.unwrap();
    assert_eq!(read_n(&mut stream, head.len()).await.unwrap(), head);
    // Bytes sent before the answer pass unchecked (they may be the new protocol's)…
    client.write_all(b"GET /admin HTTP/1.1\n\n").await.unwrap();
    assert_eq!(read_n(&mut stream, 21).await.unwrap().len(), 21);
    // …so when the upgrade is refused, the connection carries nothing more.
    stream
        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    client
        .write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_n(&mut stream, 1).await.unwrap(), b"");
}

#[tokio::test]
async fn the_http2_preface_and_first_settings_are_bounded_then_tunnelled() {
    tokio::time::pause();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // A client that stops inside the preface, or after it, is cut at the deadline.
    for sent in [&PREFACE[..10], PREFACE] {
        let (mut stream, mut client) = connect(settings()).await;
        client.write_all(sent).await.unwrap();
        let start = Instant::now();
        let err = read_n(&mut stream, 1).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(start.elapsed() <= TIMEOUT + Duration::from_millis(5));
    }
    // Preface and an empty SETTINGS frame: released whole, then no deadline.
    let (mut stream, mut client) = connect(settings()).await;
    let settings_frame = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let start: Vec<u8> = [PREFACE, &settings_frame].concat();
    client.write_all(&start).await.unwrap();
    assert_eq!(read_n(&mut stream, start.len()).await.unwrap(), start);
    tokio::time::sleep(TIMEOUT * 10).await;
    client.write_all(b"more").await.unwrap();
    assert_eq!(read_n(&mut stream, 4).await.unwrap(), b"more");
    // Something else than SETTINGS after the preface: not HTTP/2, closed.
    let (mut stream, mut client) = connect(settings()).await;
    client
        .write_all(&[PREFACE, &[0u8, 0, 0, 1, 0, 0, 0, 0, 1]].concat())
        .await
        .unwrap();
    assert!(read_n(&mut stream, 1).await.is_err());
}

#[tokio::test]
async fn the_engine_s_preface_probe_is_bounded_and_its_bytes_are_read_again() {
    tokio::time::pause();
    let (mut stream, mut client) = connect(settings()).await;
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let mut peeked = [0u8; 24];
    let start = Instant::now();
    // 19 bytes sent, 24 wanted: the probe waits, then the deadline ends it.
    let err = stream.try_peek(&mut peeked).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(start.elapsed() <= TIMEOUT + Duration::from_millis(5));

    let (mut stream, mut client) = connect(settings()).await;
    let head = b"GET /peeked HTTP/1.1\r\nHost: a\r\n\r\n";
    client.write_all(head).await.unwrap();
    assert!(stream.try_peek(&mut peeked).await.unwrap());
    assert_eq!(&peeked[..], &head[..24]);
    assert_eq!(read_n(&mut stream, head.len()).await.unwrap(), head);
}
