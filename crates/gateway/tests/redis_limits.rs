//! `limit-count` with the `redis` policy against the machine's Redis
//! (127.0.0.1:6379): exact per cluster under 64 concurrent clients on two nodes, and a
//! Redis that goes away in the middle of a run (requests are counted locally within
//! the bounded wait, the heartbeat says so, and Redis is used again once it is back);
//! the requests of a busy key go to Redis in batches, each still told its own exact
//! remaining count.
//! Each test counts under keys of its own and deletes them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::upstream::{Answer, ScriptedUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod common;
use common::Node;

const REDIS: &str = "127.0.0.1:6379";

/// A tenant no other run uses: the counters of this run only.
fn tenant(test: &str) -> String {
    format!("{test}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// Deletes every key that counts `tenant`.
fn clean(tenant: &str) {
    let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("portico:limit-count:*:{tenant}:*"))
        .query(&mut conn)
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    }
}

async fn node_with(url: &str, app: u16, count: u64) -> Node {
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app, "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/limited",
        json!({"id": "limited", "paths": ["/limited"], "upstream_id": "app",
               "plugins": {"limit-count": {
                   "count": count, "time_window": 86400, "key_type": "header",
                   "header": "x-tenant", "policy": "redis",
                   "redis": {"url": url, "timeout_ms": 200}}}}),
    )
    .await;
    node.until("/limited", 200, "ok").await;
    node
}

async fn call(node: &Node, tenant: &str) -> u16 {
    node.send(
        node.http
            .get(node.at("/limited"))
            .header("x-tenant", tenant),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_counts_exactly_per_cluster_under_64_clients() {
    let app = ScriptedUpstream::start(|_| Answer::new(200, "ok")).await;
    let url = format!("redis://{REDIS}");
    let nodes = Arc::new([
        node_with(&url, app.port(), 100).await,
        node_with(&url, app.port(), 100).await,
    ]);
    let tenant = Arc::new(tenant("exact"));
    let clients: Vec<JoinHandle<usize>> = (0..64)
        .map(|i| {
            let (nodes, tenant) = (nodes.clone(), tenant.clone());
            tokio::spawn(async move {
                let node = &nodes[i % 2];
                let mut admitted = 0;
                for _ in 0..10 {
                    match call(node, &tenant).await {
                        200 => admitted += 1,
                        429 => {}
                        other => panic!("status {other}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for client in clients {
        admitted += client.await.unwrap();
    }
    clean(&tenant);
    assert_eq!(
        admitted, 100,
        "640 requests on two nodes, a limit of 100 per cluster"
    );
    assert_eq!(
        nodes[0].heartbeat().await.map(|b| b.redis_fallbacks),
        Some(0)
    );
    let Ok(nodes) = Arc::try_unwrap(nodes) else {
        panic!("every client is done");
    };
    for node in nodes {
        node.stop().await;
    }
}

/// A TCP relay to Redis that can be cut (listener and every connection) and resumed.
struct Relay {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    /// `EVALSHA` commands the gateway sent through it.
    scripts: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(addr: Option<SocketAddr>) -> Relay {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let scripts = Arc::new(AtomicUsize::new(0));
        let (inner, counted) = (tasks.clone(), scripts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counted = counted.clone();
                let relay = tokio::spawn(async move {
                    let Ok(redis) = TcpStream::connect(REDIS).await else {
                        return;
                    };
                    let (mut client_in, mut client_out) = client.into_split();
                    let (mut redis_in, mut redis_out) = redis.into_split();
                    let answers = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut redis_in, &mut client_out).await;
                    });
                    // Commands go through whole, counted as they pass (the tail of
                    // each read is kept so a name split across reads still counts).
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    while let Ok(n @ 1..) = client_in.read(&mut buf).await {
                        if redis_out.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tail.extend_from_slice(&buf[..n]);
                        let found = tail.windows(7).filter(|w| w == b"EVALSHA").count();
                        counted.fetch_add(found, Ordering::Relaxed);
                        let keep = tail.len().min(6);
                        tail.drain(..tail.len() - keep);
                    }
                    answers.abort();
                });
                inner.lock().unwrap().push(relay);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay {
            addr,
            tasks,
            scripts,
        }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_goes_away_is_replaced_by_local_counting_then_used_again() {
    let app = ScriptedUpstream::start(|_| Answer::new(200, "ok")).await;
    let relay = Relay::start(None).await;
    let node = node_with(&format!("redis://{}", relay.addr), app.port(), 5).await;
    let tenant = tenant("away");
    for _ in 0..3 {
        assert_eq!(call(&node, &tenant).await, 200);
    }
    assert_eq!(node.heartbeat().await.unwrap().redis_fallbacks, 0);

    // Redis goes away: requests go on, each within the bounded wait, counted locally
    // (a fresh count of 5 on this node), and the fallbacks are reported.
    relay.cut();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        statuses.push(call(&node, &tenant).await);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a request waited {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let mut reported = 0;
    for _ in 0..50 {
        reported = node.heartbeat().await.unwrap().redis_fallbacks;
        if reported > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reported >= 8, "fallbacks reported: {reported}");

    // Redis is back: after the cool-down the shared count (3 used) decides again.
    let _relay = Relay::start(Some(relay.addr)).await;
    let mut back = false;
    for _ in 0..100 {
        let before = node.heartbeat().await.unwrap().redis_fallbacks;
        call(&node, &tenant).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if node.heartbeat().await.unwrap().redis_fallbacks == before {
            back = true;
            break;
        }
    }
    clean(&tenant);
    assert!(back, "Redis is used again once it answers");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_key_goes_to_redis_in_batches_and_every_request_is_told_its_own_count() {
    let app = ScriptedUpstream::start(|_| Answer::new(200, "ok")).await;
    let relay = Relay::start(None).await;
    let limit = 1_000_000u64;
    let node = Arc::new(node_with(&format!("redis://{}", relay.addr), app.port(), limit).await);
    let tenant = Arc::new(tenant("batch"));
    let before = relay.scripts.load(Ordering::Relaxed);
    let clients: Vec<JoinHandle<Vec<u64>>> = (0..64)
        .map(|_| {
            let (node, tenant) = (node.clone(), tenant.clone());
            tokio::spawn(async move {
                let mut remaining = Vec::new();
                for _ in 0..10 {
                    let (status, _, headers) = node
                        .send(
                            node.http
                                .get(node.at("/limited"))
                                .header("x-tenant", &*tenant),
                        )
                        .await;
                    assert_eq!(status, 200);
                    let left = headers["x-ratelimit-remaining"].to_str().unwrap();
                    remaining.push(left.parse().unwrap());
                }
                remaining
            })
        })
        .collect();
    let mut told = Vec::new();
    for client in clients {
        told.extend(client.await.unwrap());
    }
    let scripts = relay.scripts.load(Ordering::Relaxed) - before;
    clean(&tenant);
    // 640 requests, 640 different counts: exactly the ones a request at a time gives.
    let distinct: BTreeSet<u64> = told.iter().copied().collect();
    let expected: BTreeSet<u64> = (limit - 640..limit).collect();
    assert_eq!(distinct, expected);
    assert!(scripts < 640, "{scripts} script calls for 640 requests");
    assert_eq!(node.heartbeat().await.map(|b| b.redis_fallbacks), Some(0));
    let Ok(node) = Arc::try_unwrap(node) else {
        panic!("every client is done");
    };
    node.stop().await;
}
