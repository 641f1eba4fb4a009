//! Test helpers shared by Portico's crates (dev-only): a real etcd and a real Redis on
//! free ports, child processes of the `portico` binary, named upstream servers, whole
//! deployments (the fixed one of the end-to-end tests, `spine`, and one of any shape
//! for benchmarks, `deployment`), a Kubernetes API server speaking the list/watch wire
//! protocol with fault injection (`kube`), a test certificate authority and synthetic
//! route tables for benchmarks.

pub mod deployment;
pub mod etcd;
pub mod kube;
pub mod process;
pub mod redis;
pub mod routes;
pub mod spine;
pub mod tls;
pub mod upstream;

use std::time::{Duration, Instant};

/// First port [`free_port`] hands out, and the end of its range: below Linux's
/// ephemeral range (32768–60999), which the kernel picks from for `bind(0)` and for
/// outgoing connections. A port from `bind(0)` released for a server to take later can
/// meanwhile be given to another test's `bind(0)` listener or client socket (the
/// server then fails to start while something else answers on its port); below that
/// range only `free_port` hands ports out.
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A loopback port that is free now and that no other call of this process was given:
/// taken in turn from [`FREE_PORTS`], from a start that differs per process, skipping
/// ports something listens on.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(FREE_PORTS.end - FREE_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = FREE_PORTS.start + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FREE_PORTS:?}")
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
