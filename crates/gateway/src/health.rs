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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use serde_json::{json, Value};
    use tokio::net::TcpListener;

    use super::*;
    use crate::balancer::NodeHealthReport;

    /// A loopback HTTP server answering every request with the current `status`,
    /// recording what it was sent.
    struct Upstream {
        addr: SocketAddr,
        status: Arc<AtomicU16>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn http_upstream(status: u16) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (answer, seen) = (status.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (answer, seen) = (answer.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 512];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let status = answer.load(Ordering::SeqCst);
                    let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Upstream {
            addr,
            status,
            requests,
        }
    }

    fn pool(nodes: &[SocketAddr], extra: Value) -> Arc<UpstreamPool> {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|a| json!({"host": a.ip().to_string(), "port": a.port()}))
            .collect();
        let mut up = json!({"id": "u", "nodes": nodes});
        for (k, v) in extra.as_object().unwrap() {
            up[k] = v.clone();
        }
        let up: model::upstream::Upstream = serde_json::from_value(up).unwrap();
        up.validate().unwrap();
        Arc::new(UpstreamPool::build(&up).unwrap().pool)
    }

    /// Waits up to 5 s for node `index`'s report to satisfy `done`.
    async fn wait_for(
        pool: &UpstreamPool,
        index: usize,
        done: impl Fn(&NodeHealthReport) -> bool,
    ) -> NodeHealthReport {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let report = pool.health_report().swap_remove(index);
            if done(&report) {
                return report;
            }
            assert!(Instant::now() < deadline, "still {report:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn http_checks_follow_the_status_of_the_node() {
        let up = http_upstream(500).await;
        let pool = pool(
            &[up.addr],
            json!({"checks": {"active": {
                "http_path": "/healthz?deep=1", "interval": 0.1, "timeout": 1,
                "healthy": {"successes": 2}, "unhealthy": {"failures": 3}
            }}}),
        );
        let task = spawn_active_checks(pool.clone()).unwrap();

        let down = wait_for(&pool, 0, |r| !r.healthy).await;
        let probes = up.requests.lock().unwrap().len();
        assert!(probes >= 3, "down after {probes} probes");
        let reason = down.reason.unwrap();
        assert!(
            reason.starts_with("active: ") && reason.ends_with("last: status 500"),
            "{reason}"
        );
        let first = up.requests.lock().unwrap()[0].clone();
        assert!(
            first.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
            "{first}"
        );
        assert!(
            first.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", up.addr.port())),
            "{first}"
        );
        assert!(first.contains("\r\nConnection: close\r\n"), "{first}");

        up.status.store(200, Ordering::SeqCst);
        let before = up.requests.lock().unwrap().len();
        let back = wait_for(&pool, 0, |r| r.healthy).await;
        assert_eq!(back.reason, None);
        let after = up.requests.lock().unwrap().len();
        assert!(
            after - before >= 2,
            "healthy after {} probes",
            after - before
        );
        task.abort();
    }

    #[tokio::test]
    async fn the_probe_host_can_be_set_and_an_unlisted_status_fails() {
        let up = http_upstream(302).await;
        let pool = pool(
            &[up.addr],
            json!({"checks": {"active": {
                "host": "health.internal", "interval": 0.05,
                "healthy": {"statuses": [200]}, "unhealthy": {"failures": 1}
            }}}),
        );
        let _task = spawn_active_checks(pool.clone()).unwrap();
        let down = wait_for(&pool, 0, |r| !r.healthy).await;
        assert!(down.reason.unwrap().ends_with("status 302"));
        let first = up.requests.lock().unwrap()[0].clone();
        assert!(
            first.contains(&format!("\r\nHost: health.internal:{}\r\n", up.addr.port())),
            "{first}"
        );
    }

    #[tokio::test]
    async fn tcp_checks_mark_a_closed_port_unhealthy() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool(
            &[closed, open.local_addr().unwrap()],
            json!({"checks": {"active": {"type": "tcp", "interval": 0.05, "unhealthy": {"failures": 2}}}}),
        );
        let _task = spawn_active_checks(pool.clone()).unwrap();
        let down = wait_for(&pool, 0, |r| !r.healthy).await;
        assert!(down.reason.unwrap().contains("connect: "));
        // Several rounds later the listening node is still up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(pool.health_report()[1].healthy);
        assert!(!pool.health_report()[0].healthy);
    }

    #[tokio::test]
    async fn tls_nodes_are_probed_with_a_connect_only() {
        // Accepts and never answers: an HTTP probe would time out, a connect succeeds.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                open.push(stream);
            }
        });
        let pool = pool(
            &[addr],
            json!({"scheme": "https", "checks": {"active": {
                "interval": 0.05, "timeout": 0.1, "unhealthy": {"failures": 1}
            }}}),
        );
        let _task = spawn_active_checks(pool.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(accepted.load(Ordering::SeqCst) >= 3);
        assert!(pool.health_report()[0].healthy);
    }

    #[tokio::test]
    async fn the_task_ends_when_the_pool_is_dropped() {
        let up = http_upstream(200).await;
        let pool = pool(
            &[up.addr],
            json!({"checks": {"active": {"interval": 0.05}}}),
        );
        let task = spawn_active_checks(pool.clone()).unwrap();
        wait_for(&pool, 0, |_| !up.requests.lock().unwrap().is_empty()).await;
        drop(pool);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the task ended")
            .unwrap();
    }

    #[tokio::test]
    async fn no_task_without_an_active_check() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(spawn_active_checks(pool(&[addr], json!({}))).is_none());
        let passive_only = pool(&[addr], json!({"checks": {"passive": {}}}));
        assert!(spawn_active_checks(passive_only).is_none());
    }

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
