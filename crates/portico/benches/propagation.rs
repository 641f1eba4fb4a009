//! Config propagation: the time from the admin API call returning to both gateway nodes
//! of an instance serving the change, over 100 changes, on real processes (etcd, admin
//! on SQLite, agent, two gateway nodes). Run with `cargo bench -p portico --bench
//! propagation`; `bench/run.sh` records it in `bench/results/propagation.md`.

use std::time::{Duration, Instant};

use testkit::spine::Spine;

const CHANGES: usize = 100;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(measure());
}

async fn measure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_portico"));
    let spine = Spine::start(bin, dir.path(), &db).await;
    spine.serve_api_from("c1", "instance_a", 0).await;
    let nodes: Vec<&str> = spine.gw_1a.iter().map(String::as_str).collect();
    spine.all_serve(&nodes, "/api/x", (200, "u1")).await;

    let mut samples = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let target = (i + 1) % 2;
        let want = format!("u{}", target + 1);
        let sync = spine
            .put("c1", "instance_a", "upstreams", spine.upstream(target))
            .await;
        assert_eq!(sync, "applied", "the push did not reach the agent");
        let returned = Instant::now();
        let mut pending: Vec<&str> = nodes.clone();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for node in pending {
                if spine.via(node, "/api/x").await.1 != want {
                    still.push(node);
                }
            }
            pending = still;
            assert!(
                returned.elapsed() < Duration::from_secs(10),
                "change {i} never arrived"
            );
        }
        samples.push(returned.elapsed());
    }
    samples.sort();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("## config propagation ({CHANGES} changes, admin call returned -> both nodes serve)");
    println!("| p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|");
    println!(
        "| {:.2} | {:.2} | {:.2} |",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*samples.last().expect("samples"))
    );
}
