//! The control plane's slowloris defence, set from the command line: `portico admin`
//! and `portico agent` started with `--header-read-timeout` and `--body-timeout` cut a
//! client that sends half a request head, or a body that stops, within those times
//! (library defaults 10 s / 30 s, tested in `apikit`).

use std::time::{Duration, Instant};

use testkit::process::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "timeouts-admin-token-0123456789";
const AGENT_TOKEN: &str = "timeouts-agent-token-0123456789";
const FLAGS: [&str; 4] = ["--header-read-timeout", "600ms", "--body-timeout", "900ms"];

/// Sends `sent`, then waits for the server to answer or close; returns what came back
/// and how long it took.
async fn stall(addr: &str, sent: &[u8]) -> (String, Duration) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(sent).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// `token`: the bearer token, so the request is authenticated before its body is read.
async fn cuts_slow_clients(what: &str, addr: &str, path: &str, token: &str) {
    let (_, took) = stall(addr, b"GET / HTTP/1.1\r\nHost: a\r\nX-Half: ").await;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "{what}: half a head cut after {took:?}"
    );
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\":"
    );
    let (answer, took) = stall(addr, head.as_bytes()).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{what}: a stalled body cut after {took:?}: {answer}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{what}: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_agent_take_their_client_timeouts_from_flags() {
    let bin = env!("CARGO_BIN_EXE_portico");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let agent_listen = format!("127.0.0.1:{}", testkit::free_port());
    let mut args = vec![
        "agent",
        "--listen",
        agent_listen.as_str(),
        "--store",
        "memory://",
    ];
    args.extend(FLAGS);
    let agent = Process::start(
        "agent",
        bin,
        &args,
        &[
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
            ("PORTICO_INSTANCES", "instance_a"),
        ],
        d,
    );

    let admin_listen = format!("127.0.0.1:{}", testkit::free_port());
    let database = format!("sqlite://{}/admin.db", d.display());
    let mut args = vec![
        "admin",
        "--listen",
        admin_listen.as_str(),
        "--database",
        database.as_str(),
    ];
    args.extend(FLAGS);
    let admin = Process::start(
        "admin",
        bin,
        &args,
        &[("PORTICO_ADMIN_TOKEN", ADMIN_TOKEN)],
        d,
    );

    testkit::wait_for_tcp(&agent_listen, Duration::from_secs(20)).await;
    testkit::wait_for_tcp(&admin_listen, Duration::from_secs(20)).await;
    cuts_slow_clients(
        "agent",
        &agent_listen,
        "/agent/apiserver/v1/proof",
        AGENT_TOKEN,
    )
    .await;
    cuts_slow_clients(
        "admin",
        &admin_listen,
        "/gateway/apiserver/v1/clusters",
        ADMIN_TOKEN,
    )
    .await;
    drop((agent, admin));
}
