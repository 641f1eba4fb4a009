//! The shared server over real loopback connections: the early 413, the header-read
//! timeout, the body deadline, the bearer check and graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikit::error::BodyFailure;
use apikit::{Limits, TokenHash};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "kit-test-token";

/// Echoes the body's length; body failures rendered as the APIs render them.
async fn echo(body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(body) => body.len().to_string().into_response(),
        Err(e) => match BodyFailure::of(&e) {
            BodyFailure::TooLarge => apikit::error::payload_too_large(1024),
            BodyFailure::TimedOut => apikit::error::request_timeout(),
            BodyFailure::Other(message) => {
                apikit::error::response(StatusCode::BAD_REQUEST, "bad_request", message, vec![])
            }
        },
    }
}

struct Server {
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    let app = Router::new()
        .route("/echo", post(echo))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(TokenHash::of(TOKEN)),
            apikit::auth::require_bearer,
        ));
    let limits = Limits {
        max_body: 1024,
        header_read_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(700),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(apikit::serve(listener, app, limits, rx));
    Server { addr, stop, task }
}

/// Reads until the server closes the connection (or 5 s pass); the text and how long
/// it took.
async fn read_all(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn head(content_length: u64, token: &str) -> String {
    format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_body_announced_too_large_is_refused_before_it_is_read() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // 13 MB announced, nothing of it sent: the answer must not wait for it.
    stream
        .write_all(head(13_000_000, TOKEN).as_bytes())
        .await
        .unwrap();
    let (answer, took) = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // 413 (not the 408 of the body deadline) means it came before any body was
    // awaited; the bound only keeps a loaded machine from failing the test.
    assert!(took < Duration::from_secs(2), "413 after {took:?}");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let chunk = "x".repeat(2000);
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (answer, _) = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn half_a_head_is_cut_after_the_header_read_timeout() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nAuthor")
        .await
        .unwrap();
    let (answer, took) = read_all(&mut stream).await;
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}: {answer}"
    );
    // Nothing of the request reached a handler.
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_after_the_header_read_timeout() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (answer, took) = read_all(&mut stream).await;
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}: {answer}"
    );
}

#[tokio::test]
async fn a_slow_body_is_cut_at_the_body_deadline() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head(100, TOKEN).as_bytes()).await.unwrap();
    // A byte every 100 ms would take 10 s; the deadline is 700 ms in total.
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        if stream.write_all(b"x").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401_and_the_right_one_passes() {
    let server = start().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/echo", server.addr);
    for token in [Some("wrong"), Some(""), None] {
        let mut request = http.post(&url).body("hello");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    let answer = http
        .post(&url)
        .bearer_auth(TOKEN)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "5");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let server = start().await;
    server.stop.send_replace(true);
    server.task.await.unwrap().unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}
