//! The admin's write path on real processes (an admin, an agent on the in-memory
//! store): changes per second through the API, each committed to the database and
//! pushed to the agent before the answer, with 8 writers at once, into SQLite and into
//! PostgreSQL (a database created for the run at 127.0.0.1:5432 and dropped after; skipped
//! with a note when none runs); and the time to apply a YAML file of 10 000 routes in
//! one revision (dry run, apply, and the same file again). Run with
//! `cargo bench -p portico --bench admin_writes`; `bench/run.sh` records it in
//! `bench/results/admin_writes.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::process::Process;

const TOKEN: &str = "bench-admin-token-0123456789";
const AGENT_TOKEN: &str = "bench-agent-token-0123456789";
const WRITERS: usize = 8;
const WINDOW: Duration = Duration::from_secs(5);
const ROUTES: usize = 10_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("## admin writes ({WRITERS} writers, {}s windows)", WINDOW.as_secs());
        println!("| database | changes/s | p50 (ms) | p99 (ms) | 10k-route YAML: dry run (s) | apply (s) | again, unchanged (s) |");
        println!("|---|---|---|---|---|---|---|");
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = format!("sqlite://{}/admin.db", dir.path().display());
        measure("SQLite", &sqlite, dir.path()).await;
        match postgres_database() {
            Some((url, name)) => {
                measure("PostgreSQL", &url, dir.path()).await;
                drop_postgres_database(&name);
            }
            None => println!("| PostgreSQL | not running at 127.0.0.1:5432: skipped | | | | | |"),
        }
    });
}

async fn measure(label: &str, database: &str, dir: &Path) {
    let bin = Path::new(env!("CARGO_BIN_EXE_portico"));
    let agent_listen = format!("127.0.0.1:{}", testkit::free_port());
    let _agent = Process::start(
        &format!("agent-{label}"),
        bin,
        &["agent", "--listen", &agent_listen, "--store", "memory://"],
        &[
            ("PORTICO_INSTANCES", "bench"),
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
        ],
        dir,
    );
    let admin_listen = format!("127.0.0.1:{}", testkit::free_port());
    let _admin = Process::start(
        &format!("admin-{label}"),
        bin,
        &["admin", "--listen", &admin_listen, "--database", database],
        &[
            ("PORTICO_ADMIN_TOKEN", TOKEN),
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
        ],
        dir,
    );
    let api = format!("http://{admin_listen}/gateway/apiserver/v1");
    let http = reqwest::Client::new();
    let send = move |method: reqwest::Method, path: String, body: String, yaml: bool| {
        let http = http.clone();
        let url = format!("{api}{path}");
        async move {
            let request = http
                .request(method, url)
                .bearer_auth(TOKEN)
                .header(
                    "content-type",
                    if yaml {
                        "application/yaml"
                    } else {
                        "application/json"
                    },
                )
                .body(body);
            request.send().await
        }
    };
    // Wait for the admin, register the cluster, wait for the instance.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = json!({"name": "c1", "agent_address": format!("http://{agent_listen}")});
        if let Ok(r) = send(
            reqwest::Method::POST,
            "/clusters".into(),
            body.to_string(),
            false,
        )
        .await
        {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the admin did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = "/clusters/c1/instances/bench";
    loop {
        let r = send(reqwest::Method::GET, base.into(), String::new(), false).await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the instance was not discovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Changes per second: each writer replaces its own upstream over and over.
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let send = send.clone();
        writers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u32;
            while started.elapsed() < WINDOW {
                let body = json!({"id": format!("u{w}"), "nodes": [{"host": "127.0.0.1", "port": 1000 + n % 1000}]});
                let at = Instant::now();
                let r = send(reqwest::Method::PUT, format!("{base}/upstreams/u{w}"), body.to_string(), false)
                    .await
                    .expect("the admin answers");
                assert!(r.status().is_success(), "write refused: {}", r.status());
                latencies.push(at.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in writers {
        latencies.extend(w.await.expect("writer"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];

    // A 10k-route file: the time to check it, apply it, and apply it again.
    let mut yaml = String::from(
        "upstreams:\n  - id: up\n    nodes: [{host: 127.0.0.1, port: 8080}]\nroutes:\n",
    );
    for i in 0..ROUTES {
        yaml.push_str(&format!(
            "  - {{id: r{i}, paths: [/svc{i}/*], upstream_id: up}}\n"
        ));
    }
    let mut timings = Vec::new();
    for query in ["?dry_run=true", "", ""] {
        let at = Instant::now();
        let r = send(
            reqwest::Method::PUT,
            format!("{base}/config{query}"),
            yaml.clone(),
            true,
        )
        .await
        .expect("the admin answers");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "apply refused: {status} {}",
            &text[..text.len().min(300)]
        );
        timings.push(at.elapsed().as_secs_f64());
    }
    println!(
        "| {label} | {rate:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        timings[0],
        timings[1],
        timings[2]
    );
}

/// A database for the run on the local PostgreSQL, if one answers.
fn postgres_database() -> Option<(String, String)> {
    let name = format!("portico_bench_{}", std::process::id());
    let created = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .ok()?;
    created
        .status
        .success()
        .then(|| (format!("postgres://postgres@127.0.0.1:5432/{name}"), name))
}

fn drop_postgres_database(name: &str) {
    let _ = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .output();
}
