//! Active health checks: a task per pool probes every node each `interval` and feeds the
//! results to the pool's node health (`UpstreamPool::record_probe`), which the balancer
//! reads on every pick.
//!
//! ```text
//! every interval: all nodes probed at once, each within `timeout`
//!   tcp   connect                        → good
//!   http  GET {http_path} HTTP/1.1, Host, Connection: close
//!         → status line; status in healthy.statuses → good, else bad
//! successes good in a row → healthy; failures bad in a row → unhealthy (logged)
//! ```
//!
//! The task holds only a `Weak` reference: it ends at the first tick after the pool was
//! dropped (the config no longer uses the upstream), so it needs no stop handle.
//!
//! Nodes of scheme `https`, `grpc` and `grpcs` are probed with a TCP connect only, even
//! when the check says `http`: the probe is hand-written HTTP/1.1 in clear text, which
//! a TLS or an HTTP/2-only (h2c) server would refuse and so be reported down while it
//! serves fine.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use model::upstream::{CheckKind, Scheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::balancer::UpstreamPool;

/// Starts the active checks of `pool`; `None` when its upstream has none (or when
/// called outside a Tokio runtime, which is logged). The task ends by itself once the
/// pool is dropped.
pub fn spawn_active_checks(pool: Arc<UpstreamPool>) -> Option<JoinHandle<()>> {
    let policy = pool.active_check()?;
    let runtime = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(upstream = %pool.id, error = %e, "active health checks not started: no async runtime");
            return None;
        }
    };
    let probe_http = policy.kind == CheckKind::Http && pool.scheme == Scheme::Http;
    let targets: Vec<Target> = pool
        .nodes()
        .iter()
        .map(|node| Target {
            addr: node.addr,
            request: probe_http.then(|| {
                let host = policy.host.as_deref().unwrap_or(&node.host);
                Arc::from(http_request(&policy.http_path, host, node.addr.port()))
            }),
        })
        .collect();
    let checks = Checks {
        targets,
        interval: policy.interval,
        timeout: policy.timeout,
        statuses: Arc::from(policy.statuses.as_slice()),
        pool: Arc::downgrade(&pool),
    };
    Some(runtime.spawn(checks.run()))
}

/// What a check task needs, prepared once: the nodes never change within a pool.
struct Checks {
    targets: Vec<Target>,
    interval: Duration,
    timeout: Duration,
    statuses: Arc<[u16]>,
    /// Upgraded only to record results, so the task never keeps a pool alive.
    pool: Weak<UpstreamPool>,
}

struct Target {
    addr: SocketAddr,
    /// The HTTP probe's bytes; `None` for a TCP probe.
    request: Option<Arc<[u8]>>,
}

impl Checks {
    async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        // A probe round slower than the interval delays the next one instead of
        // firing a burst of rounds to catch up.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.pool.strong_count() == 0 {
                return;
            }
            let mut probes = JoinSet::new();
            for (index, target) in self.targets.iter().enumerate() {
                let (addr, request) = (target.addr, target.request.clone());
                let (timeout, statuses) = (self.timeout, self.statuses.clone());
                probes.spawn(async move {
                    let result =
                        tokio::time::timeout(timeout, probe(addr, request.as_deref(), &statuses))
                            .await
                            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                    (index, result)
                });
            }
            let results = probes.join_all().await;
            let Some(pool) = self.pool.upgrade() else {
                return;
            };
            for (index, result) in results {
                pool.record_probe(index, result);
            }
        }
    }
}

/// One probe: `Ok` when the node is good, else why not.
async fn probe(addr: SocketAddr, request: Option<&[u8]>, statuses: &[u16]) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(request) = request else {
        return Ok(());
    };
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("sending the probe: {e}"))?;
    let status = read_status(&mut stream).await?;
    if statuses.contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Reads up to the end of the status line and returns its code.
async fn read_status(stream: &mut TcpStream) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            break end;
        }
        if buf.len() > 1024 {
            return Err("status line longer than 1024 bytes".to_owned());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    parse_status_line(&buf[..line_end]).ok_or_else(|| {
        format!(
            "not an HTTP status line: {:?}",
            String::from_utf8_lossy(&buf[..line_end.min(64)])
        )
    })
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (_minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The probe request. `path` and `host` are validated (no spaces or control
/// characters), so they cannot break out of their line.
fn http_request(path: &str, host: &str, port: u16) -> Vec<u8> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let authority = if port == 80 {
        host
    } else {
        format!("{host}:{port}")
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: portico-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// What needs the internals; the checks against real listeners are in
/// `tests/health.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed_strictly() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.1 200 OK", Some(200)),
            (b"HTTP/1.0 503 Service Unavailable", Some(503)),
            (b"HTTP/1.1 204", Some(204)),
            (b"HTTP/1.1 20 OK", None),
            (b"HTTP/1.1 2000 OK", None),
            (b"HTTP/2 200 OK", None),
            (b"SSH-2.0-OpenSSH", None),
            (b"", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_status_line(line),
                *want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn the_probe_request_names_the_host_and_closes() {
        let cases = [
            (
                "/",
                "api.internal",
                80,
                "GET / HTTP/1.1\r\nHost: api.internal\r\n",
            ),
            (
                "/h",
                "10.0.0.1",
                8080,
                "GET /h HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n",
            ),
            ("/h", "::1", 8080, "GET /h HTTP/1.1\r\nHost: [::1]:8080\r\n"),
        ];
        for (path, host, port, start) in cases {
            let request = String::from_utf8(http_request(path, host, port)).unwrap();
            assert!(request.starts_with(start), "{request}");
            assert!(
                request.ends_with("\r\nConnection: close\r\n\r\n"),
                "{request}"
            );
        }
    }
}
