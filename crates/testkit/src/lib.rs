//! Test helpers shared by Portico's crates (dev-only): a real etcd on free ports, child
//! processes of the `portico` binary, named upstream servers, a whole deployment,
//! a test certificate authority and synthetic route tables for benchmarks.

pub mod etcd;
pub mod process;
pub mod routes;
pub mod spine;
pub mod tls;
pub mod upstream;

use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Waits until something accepts TCP connections on `addr`; panics after `timeout`.
pub async fn wait_for_tcp(addr: &str, timeout: Duration) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on {addr} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
