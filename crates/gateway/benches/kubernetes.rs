//! Gateways' `kubernetes` discovery at scale (requirement X5): a gateway node (the real
//! `gateway::run`, on the in-process store) with an upstream naming a Service in 10
//! test Kubernetes API servers (testkit's `kube`, the wire protocol kube-rs speaks),
//! each holding 1,000 ready endpoints of it (10 slices of 100): the time from the
//! node's start to every cluster listed and the union served; and the latency of one
//! endpoint change in a cluster until the node's requests reach the new endpoint, with
//! the 10,000-node pool beside it. Every endpoint is a real listener: one socket on
//! `0.0.0.0` answers on every loopback address with the address it was reached at.
//! Run with `cargo bench -p gateway --bench kubernetes`; `ONLY=kubernetes bash
//! bench/run.sh` records it in `bench/results/kubernetes.md`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::keys::Keyspace;
use store::memory::MemoryStore;
use store::{ConfigStore, Op, Txn};
use testkit::kube::KubeServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTERS: usize = 10;
const SLICES: usize = 10;
const PER_SLICE: usize = 100;
const CHANGES: usize = 30;
const INSTANCE: &str = "bench";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// A slice of `service` in namespace `shop` with `addresses` on `port`.
fn slice(service: &str, name: &str, port: u16, addresses: &[String]) -> Value {
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
    })
}

/// Answers every HTTP/1.1 request (no body) with the local address it came to.
async fn responder() -> u16 {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let local = socket.local_addr().map(|a| a.ip().to_string());
                let Ok(local) = local else { return };
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{local}",
                            local.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// Writes config into the store as the agent does (with the instance's meta).
async fn put(store: &Arc<dyn ConfigStore>, revision: u64, objects: &[(&str, Value)]) {
    let keyspace = Keyspace::default();
    let mut ops: Vec<Op> = objects
        .iter()
        .map(|(key, value)| Op::Put {
            key: format!("{}{key}", keyspace.instance_prefix(INSTANCE)),
            value: value.to_string().into_bytes(),
            lease: None,
        })
        .collect();
    ops.push(Op::Put {
        key: keyspace.meta(INSTANCE),
        value: json!({"revision": revision}).to_string().into_bytes(),
        lease: None,
    });
    let outcome = store
        .txn(Txn {
            compares: vec![],
            ops,
        })
        .await
        .expect("write");
    assert!(outcome.succeeded);
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn run() {
    let port = responder().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut list = String::from("probe_every: 1s\nclusters:\n");
    let mut servers = Vec::new();
    let mut names = Vec::new();
    for c in 0..CLUSTERS {
        let name = format!("c-{c}");
        let server = KubeServer::start(&name).await;
        for s in 0..SLICES {
            let addresses: Vec<String> = (0..PER_SLICE)
                .map(|i| format!("127.{}.{s}.{}", c + 1, i + 1))
                .collect();
            server.apply(
                "endpointslice-controller.k8s.io",
                slice("web", &format!("web-{s}"), port, &addresses),
            );
        }
        server.write_kubeconfig(&dir.path().join(format!("{name}.kubeconfig")));
        list.push_str(&format!(
            "- {{name: {name}, role: peak, kubeconfig: {name}.kubeconfig}}\n"
        ));
        names.push(name);
        servers.push(server);
    }
    // The probe Service: one endpoint, in the last cluster.
    let last = &servers[CLUSTERS - 1];
    let probe = |i: usize| format!("127.200.{}.{}", i / 200, i % 200 + 1);
    last.apply(
        "endpointslice-controller.k8s.io",
        slice("probe", "probe-0", port, &[probe(0)]),
    );
    let path = dir.path().join("clusters.yaml");
    std::fs::write(&path, list).expect("list");

    let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
    let upstream = |id: &str, service: &str| json!({"id": id, "discovery": {"type": "kubernetes", "service": service, "port": "http", "clusters": names}});
    put(
        &store,
        1,
        &[
            ("upstreams/web", upstream("web", "shop/web")),
            ("upstreams/probe", upstream("probe", "shop/probe")),
            (
                "routes/web",
                json!({"id": "web", "paths": ["/web"], "upstream_id": "web"}),
            ),
            (
                "routes/probe",
                json!({"id": "probe", "paths": ["/probe"], "upstream_id": "probe"}),
            ),
        ],
    )
    .await;
    let listen: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    let status: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let node = tokio::spawn(gateway::run(
        gateway::GatewayConfig {
            listen,
            tls_listen: None,
            client_ca: None,
            instance: INSTANCE.into(),
            namespace: None,
            node_id: "bench-1".into(),
            advertise_address: listen.to_string(),
            heartbeat_interval: Duration::from_secs(2),
            http: gateway::HttpSettings::default(),
            snapshot_file: None,
            status_listen: Some(status),
            drain_timeout: Duration::from_secs(1),
            threads: 1,
            kubernetes_clusters: Some(path),
        },
        store,
        Keyspace::default(),
        stop_rx,
    ));
    let client = reqwest::Client::new();
    // Start → every cluster synced with its 1,000 endpoints, and /web served.
    let union = loop {
        let answer = client.get(format!("http://{status}/status")).send().await;
        let state: Value = match answer {
            Ok(answer) => answer.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let endpoints: u64 = names
            .iter()
            .filter(|n| state["kubernetes"][n.as_str()]["link"] == "synced")
            .map(|n| {
                state["kubernetes"][n.as_str()]["endpoints"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        let all = (CLUSTERS * SLICES * PER_SLICE + 1) as u64;
        if endpoints == all {
            let web = client.get(format!("http://{listen}/web")).send().await;
            if web.is_ok_and(|r| r.status() == 200) {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not united within 60 s: {endpoints} of {all}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };

    // One endpoint changed → the node sends to the new one.
    let mut latencies = Vec::new();
    for i in 1..=CHANGES {
        let address = probe(i);
        let written = Instant::now();
        last.apply(
            "endpointslice-controller.k8s.io",
            slice("probe", "probe-0", port, std::slice::from_ref(&address)),
        );
        loop {
            let body = match client.get(format!("http://{listen}/probe")).send().await {
                Ok(answer) => answer.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if body == address {
                latencies.push(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "change {i} not served within 10 s (last {body:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();

    // The 10,000-node pool: requests spread over it.
    let mut seen = std::collections::BTreeSet::new();
    let spread_start = Instant::now();
    for _ in 0..2_000 {
        let answer = client.get(format!("http://{listen}/web")).send().await;
        if let Ok(answer) = answer {
            seen.insert(answer.text().await.unwrap_or_default());
        }
    }
    let spread = spread_start.elapsed();

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| node start → {CLUSTERS} clusters listed ({} endpoints of `shop/web` + 1) and served | {:.2} s |",
        CLUSTERS * SLICES * PER_SLICE,
        union.as_secs_f64()
    );
    println!(
        "| one endpoint changed in a cluster → the node's requests reach it, p50 / p99 / max of {CHANGES} | {:.1} / {:.1} / {:.1} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "| 2,000 sequential requests over the 10,000-node pool (round robin) | {} distinct endpoints, {:.0} requests/s |",
        seen.len(),
        2_000.0 / spread.as_secs_f64()
    );
    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), node).await;
}
