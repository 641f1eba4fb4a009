//! The cross-cluster controller at scale, on a real `portico xcluster` process against
//! 10 test Kubernetes API servers (testkit's `kube`) acting as 2 production and 8 peak
//! clusters, each holding 1,000 ready endpoints (10 Services × 100): the time from the
//! process's start to both production clusters holding the whole union (8,000 peak
//! endpoints each, in 80 slices); the latency of one peak endpoint added until both
//! production clusters list it; a whole peak cluster's 1,000 endpoints replaced at once;
//! the writes a steady state makes (should be none); the controller's resident memory.
//! Run with `cargo bench -p portico --bench xcluster`; `ONLY=xcluster bash bench/run.sh`
//! records it in `bench/results/xcluster.md`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::kube::KubeServer;
use testkit::process::Process;

const PRODUCTION: usize = 2;
const PEAKS: usize = 8;
const SERVICES: usize = 10;
const PER_SERVICE: usize = 100;
const CHANGES: usize = 30;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

fn cluster_name(i: usize) -> String {
    if i < PRODUCTION {
        format!("idc-{i}")
    } else {
        format!("peak-{}", i - PRODUCTION)
    }
}

fn service(name: &str, remote: bool) -> Value {
    json!({
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "labels": {"ex-remote": remote.to_string()}},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    })
}

/// The cluster's own slice of `service` with `addresses`.
fn slice(service: &str, addresses: &[String]) -> Value {
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-own"),
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
    })
}

/// `PER_SERVICE` addresses of cluster `c`, service `s`, generation `g`.
fn addresses(c: usize, s: usize, g: usize) -> Vec<String> {
    (0..PER_SERVICE)
        .map(|i| format!("10.{}.{}.{}", c * 10 + g, s, i + 1))
        .collect()
}

/// The ready peak addresses a production cluster's Portico slices hold (those
/// matching `selector` too, when given: the poll then costs little beside the work
/// measured).
fn united(server: &KubeServer, selector: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut labels = "endpointslice.kubernetes.io/managed-by=portico-xcluster".to_owned();
    if !selector.is_empty() {
        labels = format!("{labels},{selector}");
    }
    for slice in server.list("EndpointSlice", &labels) {
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            if endpoint["conditions"]["ready"].as_bool().unwrap_or(true) {
                all.insert(
                    endpoint["addresses"][0]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    all
}

async fn until(
    servers: &[KubeServer],
    selector: &str,
    limit: Duration,
    check: impl Fn(&BTreeSet<String>) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if servers[..PRODUCTION]
            .iter()
            .all(|s| check(&united(s, selector)))
        {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn slice_writes(servers: &[KubeServer]) -> u64 {
    servers[..PRODUCTION]
        .iter()
        .map(|s| {
            s.writes()
                .get("portico-xcluster")
                .copied()
                .unwrap_or_default()
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut servers = Vec::new();
    let mut list = String::from("probe_every: 1s\nclusters:\n");
    for c in 0..PRODUCTION + PEAKS {
        let name = cluster_name(c);
        let server = KubeServer::start(&name).await;
        for s in 0..SERVICES {
            let service_name = format!("svc-{s}");
            server.apply(
                "endpointslice-controller.k8s.io",
                service(&service_name, c >= PRODUCTION),
            );
            server.apply(
                "endpointslice-controller.k8s.io",
                slice(&service_name, &addresses(c, s, 0)),
            );
        }
        server.write_kubeconfig(&dir.path().join(format!("{name}.kubeconfig")));
        let role = if c < PRODUCTION { "production" } else { "peak" };
        list.push_str(&format!(
            "- {{name: {name}, role: {role}, kubeconfig: {name}.kubeconfig}}\n"
        ));
        servers.push(server);
    }
    std::fs::write(dir.path().join("clusters.yaml"), list).expect("cluster list");
    let expected: BTreeSet<String> = (PRODUCTION..PRODUCTION + PEAKS)
        .flat_map(|c| (0..SERVICES).flat_map(move |s| addresses(c, s, 0)))
        .collect();

    let started = Instant::now();
    let process = start_controller(dir.path());
    if until(&servers, "", Duration::from_secs(120), |held| {
        *held == expected
    })
    .await
    .is_none()
    {
        panic!("no complete union within 120 s; log:\n{}", process.log());
    }
    let slices: usize = servers[..PRODUCTION]
        .iter()
        .map(|s| {
            s.list(
                "EndpointSlice",
                "endpointslice.kubernetes.io/managed-by=portico-xcluster",
            )
            .len()
        })
        .sum();
    let cold_total = started.elapsed();

    // One endpoint added in a peak cluster, CHANGES times.
    let mut latencies = Vec::new();
    for n in 0..CHANGES {
        let c = PRODUCTION + n % PEAKS;
        let s = n % SERVICES;
        let mut with_one_more = addresses(c, s, 0);
        let extra = format!("10.{}.{s}.{}", c * 10, 200 + n);
        with_one_more.push(extra.clone());
        servers[c].apply(
            "endpointslice-controller.k8s.io",
            slice(&format!("svc-{s}"), &with_one_more),
        );
        let selector = format!(
            "kubernetes.io/service-name=svc-{s},multicluster.kubernetes.io/source-cluster={}",
            cluster_name(c)
        );
        let took = until(&servers, &selector, Duration::from_secs(10), |held| {
            held.contains(&extra)
        })
        .await
        .expect("a new peak endpoint reaches production");
        latencies.push(took);
        servers[c].apply(
            "endpointslice-controller.k8s.io",
            slice(&format!("svc-{s}"), &addresses(c, s, 0)),
        );
        until(&servers, &selector, Duration::from_secs(10), |held| {
            !held.contains(&extra)
        })
        .await
        .expect("removed");
    }
    latencies.sort();

    // A whole peak cluster's 1,000 endpoints replaced at once.
    let c = PRODUCTION;
    for s in 0..SERVICES {
        servers[c].apply(
            "endpointslice-controller.k8s.io",
            slice(&format!("svc-{s}"), &addresses(c, s, 1)),
        );
    }
    let mut replaced = expected.clone();
    for s in 0..SERVICES {
        for a in addresses(c, s, 0) {
            replaced.remove(&a);
        }
        replaced.extend(addresses(c, s, 1));
    }
    let swap = until(&servers, "", Duration::from_secs(30), |held| {
        *held == replaced
    })
    .await
    .expect("the replaced cluster converges");

    // Steady: nothing written for 10 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = slice_writes(&servers);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady = slice_writes(&servers) - before;
    let rss = process.pid().map(rss_kib).unwrap_or_default();

    println!("## xcluster: {PRODUCTION} production + {PEAKS} peak clusters × {} endpoints ({SERVICES} Services × {PER_SERVICE})", SERVICES * PER_SERVICE);
    println!("| measure | value |");
    println!("|---|---|");
    println!("| process start → both production clusters hold the union ({} peak endpoints each, {slices} slices in all) | {:.2} s |", expected.len(), cold_total.as_secs_f64());
    println!("| one peak endpoint added → listed in both production clusters, p50 / p99 / max of {CHANGES} | {:.1} / {:.1} / {:.1} ms |", percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 1.0));
    println!(
        "| a peak cluster's 1,000 endpoints replaced at once → converged | {:.0} ms |",
        swap.as_secs_f64() * 1000.0
    );
    println!("| slice writes in 10 s of steady state | {steady} |");
    println!(
        "| controller resident memory | {:.1} MiB |",
        rss as f64 / 1024.0
    );
    drop(process);
}

fn start_controller(dir: &Path) -> Process {
    let status = format!("127.0.0.1:{}", testkit::free_port());
    Process::start(
        "xcluster",
        env!("CARGO_BIN_EXE_portico"),
        &[
            "xcluster",
            "--clusters",
            dir.join("clusters.yaml").to_str().expect("utf-8 path"),
            "--status-listen",
            &status,
        ],
        &[("PORTICO_LOG", "warn")],
        dir,
    )
}
