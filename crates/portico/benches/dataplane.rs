//! Data-plane benchmarks on real processes (etcd, nginx as the upstream, one
//! `portico gateway --threads 1` pinned to core 0, load on core 1):
//!
//! 1. throughput and p99 with 1, 10 000 and 100 000 routes loaded, the requested route
//!    inserted last (wrk, keep-alive), and the gateway's resident memory at each size:
//!    one gateway per size, all running, measured in `ROUNDS` (3) alternating rounds,
//!    medians reported;
//! 2. replacing all 10 000 routes while a fixed load of 2 000 requests/s runs: failed
//!    requests and the latency percentiles during the swap.
//!
//! Run with `cargo bench -p portico --bench dataplane` (`bench/run.sh` runs it too);
//! needs etcd, nginx, wrk and taskset. `ROUTE_COUNTS=1,10000` limits the sizes.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{ConfigStore, Op, Txn};
use testkit::etcd::EtcdServer;
use testkit::process::Process;

const PROXY_CPU: &str = "0";
const LOAD_CPU: &str = "1";
/// etcd's default --max-txn-ops is 128.
const BATCH: usize = 100;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// An nginx answering `200 ok` on a free port, on the load core.
fn nginx_upstream(dir: &std::path::Path) -> (Process, u16) {
    let port = testkit::free_port();
    let conf = dir.join("upstream.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {dir}/upstream.pid; error_log {dir}/upstream.err;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;\n\
             location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            dir = dir.display()
        ),
    )
    .expect("nginx conf");
    let conf = conf.to_string_lossy();
    let prefix = dir.to_string_lossy();
    let args = ["-c", LOAD_CPU, "nginx", "-c", &conf, "-p", &prefix];
    (Process::start("upstream", "taskset", &args, &[], dir), port)
}

async fn write_routes(
    store: &Arc<dyn ConfigStore>,
    instance: &str,
    n: usize,
    upstream_id: &str,
    revision: u64,
) {
    let prefix = format!("/portico/instances/{instance}");
    let mut ops = Vec::with_capacity(BATCH);
    for i in 0..n {
        ops.push(Op::Put {
            key: format!("{prefix}/routes/r{i}"),
            value: testkit::routes::route(i, upstream_id)
                .to_string()
                .into_bytes(),
            lease: None,
        });
        if ops.len() == BATCH || i + 1 == n {
            let batch = std::mem::take(&mut ops);
            store
                .txn(Txn {
                    compares: vec![],
                    ops: batch,
                })
                .await
                .expect("write routes");
        }
    }
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: format!("{prefix}/meta"),
                value: format!("{{\"revision\":{revision}}}").into_bytes(),
                lease: None,
            }],
        })
        .await
        .expect("write meta");
}

fn gateway(
    bin: &str,
    port: u16,
    instance: &str,
    store_url: &str,
    dir: &std::path::Path,
) -> Process {
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "-c",
        PROXY_CPU,
        bin,
        "gateway",
        "--listen",
        &listen,
        "--instance",
        instance,
        "--store",
        store_url,
        "--threads",
        "1",
        "--no-snapshot",
    ];
    // taskset execs the gateway: the child's pid is the gateway's.
    Process::start(instance, "taskset", &args, &[("PORTICO_LOG", "warn")], dir)
}

async fn wait_served(client: &reqwest::Client, port: u16, i: usize) {
    let (host, path) = testkit::routes::request(i);
    let start = Instant::now();
    loop {
        let ok = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .header("host", &host)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "route {i} never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// wrk against one URL: (requests/s, p99 ms, error lines).
fn wrk(port: u16, host: &str, path: &str) -> (f64, f64, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let header = format!("Host: {host}");
    let run = |duration: &str| {
        Command::new("taskset")
            .args([
                "-c",
                LOAD_CPU,
                "wrk",
                "-t1",
                "-c64",
                "-d",
                duration,
                "--latency",
                "-H",
            ])
            .arg(&header)
            .arg(&url)
            .output()
            .expect("wrk")
    };
    run("3s");
    let out = String::from_utf8_lossy(&run("10s").stdout).into_owned();
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| to_ms(v.trim()))
        .unwrap_or(f64::NAN);
    let errors = out
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    (rps, p99, errors)
}

fn to_ms(v: &str) -> f64 {
    let unit_at = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let n: f64 = v[..unit_at].parse().unwrap_or(f64::NAN);
    match &v[unit_at..] {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = env!("CARGO_BIN_EXE_portico");
    let etcd = EtcdServer::launch();
    let (store, _) = store::open(&etcd.store_url()).await.expect("store");
    let (mut upstream, up_port) = nginx_upstream(dir.path());
    testkit::wait_for_tcp(&format!("127.0.0.1:{up_port}"), Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    let counts: Vec<usize> = std::env::var("ROUTE_COUNTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10_000, 100_000]);

    // One gateway per table size, all running; measured in alternating rounds so that
    // this shared machine's drift hits every size alike; medians reported.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut gateways = Vec::new();
    for &n in &counts {
        let instance = format!("bench{n}");
        let upstream =
            format!("{{\"id\":\"up\",\"nodes\":[{{\"host\":\"127.0.0.1\",\"port\":{up_port}}}]}}");
        store
            .txn(Txn {
                compares: vec![],
                ops: vec![Op::Put {
                    key: format!("/portico/instances/{instance}/upstreams/up"),
                    value: upstream.into_bytes(),
                    lease: None,
                }],
            })
            .await
            .expect("upstream");
        write_routes(&store, &instance, n, "up", 1).await;
        let port = testkit::free_port();
        let gw = gateway(bin, port, &instance, &etcd.store_url(), dir.path());
        testkit::wait_for_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).await;
        wait_served(&client, port, n - 1).await;
        gateways.push((n, gw, port, Vec::new()));
    }
    for _ in 0..rounds {
        for (n, _, port, runs) in gateways.iter_mut() {
            let (host, path) = testkit::routes::request(*n - 1);
            runs.push(wrk(*port, &host, &path));
        }
    }

    println!(
        "## routes loaded (1 gateway worker, wrk 64 connections, 10 s; last-inserted route; median of {rounds} alternating rounds)"
    );
    println!(
        "| routes | requests/s | p99 (ms) | vs 1 route | RSS (MiB) | all rounds (req/s) | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut base = None;
    for (n, gw, _, runs) in &gateways {
        let rps = median(runs.iter().map(|r| r.0).collect());
        let p99 = median(runs.iter().map(|r| r.1).collect());
        let all: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.0)).collect();
        let errors: Vec<&str> = runs
            .iter()
            .map(|r| r.2.as_str())
            .filter(|e| !e.is_empty())
            .collect();
        let rss = rss_kib(gw.pid().expect("the gateway runs")) as f64 / 1024.0;
        let base_rps = *base.get_or_insert(rps);
        println!(
            "| {n} | {rps:.0} | {p99:.2} | {:.2}x | {rss:.1} | {} | {} |",
            rps / base_rps,
            all.join(" / "),
            errors.join("; ")
        );
    }
    drop(gateways);

    swap_under_load(&store, &etcd, bin, dir.path(), up_port).await;
    // SIGTERM: nginx's master takes its worker down too (a SIGKILL would orphan it).
    upstream.stop();
}

/// Replaces 10 000 routes while 2 000 requests/s run over 16 keep-alive connections.
async fn swap_under_load(
    store: &Arc<dyn ConfigStore>,
    etcd: &EtcdServer,
    bin: &str,
    dir: &std::path::Path,
    up_port: u16,
) {
    const N: usize = 10_000;
    const RATE: u64 = 2_000;
    const CONNECTIONS: u64 = 16;
    let instance = "swap";
    let upstream =
        format!("{{\"id\":\"up\",\"nodes\":[{{\"host\":\"127.0.0.1\",\"port\":{up_port}}}]}}");
    for id in ["up", "up2"] {
        store
            .txn(Txn {
                compares: vec![],
                ops: vec![Op::Put {
                    key: format!("/portico/instances/{instance}/upstreams/{id}"),
                    value: upstream
                        .replace("\"up\"", &format!("\"{id}\""))
                        .into_bytes(),
                    lease: None,
                }],
            })
            .await
            .expect("upstream");
    }
    write_routes(store, instance, N, "up", 1).await;
    let port = testkit::free_port();
    let _gw = gateway(bin, port, instance, &etcd.store_url(), dir);
    testkit::wait_for_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS as usize)
        .build()
        .expect("client");
    wait_served(&client, port, N - 1).await;

    let failures = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(12);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let client = client.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 * CONNECTIONS / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = c as usize;
            while Instant::now() < stop_at {
                tick.tick().await;
                i = (i + 7919) % N;
                let (host, path) = testkit::routes::request(i);
                let sent = Instant::now();
                let ok = client
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .header("host", host)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                samples.push((sent, sent.elapsed()));
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let began = Instant::now();
    write_routes(store, instance, N, "up2", 2).await;
    // Done when the gateway's heartbeat reports the new revision (written last).
    let key = format!("/portico/instances/{instance}/nodes/");
    loop {
        let listing = store.list(&key).await.expect("heartbeats");
        let applied = listing.kvs.iter().any(|kv| {
            serde_json::from_slice::<model::cluster::NodeHeartbeat>(&kv.value)
                .is_ok_and(|b| b.applied_revision.0 == 2)
        });
        if applied {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "swap never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended = Instant::now();

    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("load task"));
    }
    let total = all.len();
    let mut during: Vec<Duration> = all
        .iter()
        .filter(|(sent, _)| *sent >= began && *sent <= ended)
        .map(|(_, d)| *d)
        .collect();
    let mut overall: Vec<Duration> = all.iter().map(|(_, d)| *d).collect();
    during.sort();
    overall.sort();
    let pct = |v: &[Duration], p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1000.0
        }
    };
    println!();
    println!(
        "## replacing {N} routes under {RATE} requests/s ({CONNECTIONS} keep-alive connections)"
    );
    println!("| requests | failed | swap took (ms) | requests during swap | p50 / p99 / max during swap (ms) | p99 overall (ms) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {total} | {} | {:.0} | {} | {:.2} / {:.2} / {:.2} | {:.2} |",
        failures.load(Ordering::Relaxed),
        (ended - began).as_secs_f64() * 1000.0,
        during.len(),
        pct(&during, 0.5),
        pct(&during, 0.99),
        pct(&during, 1.0),
        pct(&overall, 0.99),
    );
}
