//! Active health checks against real listeners on loopback: HTTP checks follow the
//! node's status (path, Host, statuses, thresholds), TCP checks a closed port, TLS
//! nodes get a connect only, the task ends with its pool, and no task runs without an
//! active check.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::balancer::{NodeHealthReport, UpstreamPool};
use gateway::health::spawn_active_checks;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
