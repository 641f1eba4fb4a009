//! Config propagation and the service registry, measured on real processes on loopback
//! (a config store server, the admin on SQLite, one agent per cluster, gateway nodes;
//! `testkit::deployment`). Scenarios:
//!
//! - `one-etcd`, `one-redis`: one cluster, one instance with two gateway nodes and
//!   `ROUTES` routes (10 000), `CHANGES` changes (200);
//! - `ten-etcd`, `ten-redis`: `CLUSTERS` clusters (10), each its own agent and root in
//!   one store server, one instance per cluster with two nodes (odd clusters) or one
//!   (even clusters), `ROUTES` routes each; the changes go to the clusters in turn;
//! - `registry-etcd`, `registry-redis`: one cluster, two nodes, a route to
//!   `lb://bench-svc`; `REGISTRATIONS` times (50) a test upstream registers through the
//!   agent and is deregistered, and `EXPIRIES` times (5) it registers with a 5 s TTL and
//!   stops heartbeating.
//!
//! A change is a `PUT` of the upstream every route uses, alternating its node between
//! two test upstreams; its clock starts when the admin's answer (`x-portico-sync:
//! applied`) arrives and stops when every node of its instance answers from the new
//! node (each node polled back to back on a keep-alive connection of its own). A
//! registration's clock starts when the agent's `201` arrives and stops when every node
//! sends the route's requests to it; an expiry is timed from the last heartbeat's
//! answer plus the TTL to every node answering 502. Percentiles are nearest-rank.
//!
//! `cargo bench -p portico --bench propagation` runs every scenario;
//! `SCENARIO=one-etcd,registry-redis` (or the names as arguments after `--`) runs
//! some; `CHANGES`, `ROUTES`, `CLUSTERS`, `REGISTRATIONS`, `EXPIRIES` scale them down.
//! `bench/run.sh` records the output in `bench/results/propagation.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::deployment::{Deployment, Layout};
use testkit::spine::{StoreKind, AGENT_TOKEN};
use testkit::upstream::NamedUpstream;

const SCENARIOS: [&str; 6] = [
    "one-etcd",
    "one-redis",
    "ten-etcd",
    "ten-redis",
    "registry-etcd",
    "registry-redis",
];
/// How long one change, registration or removal may take before the run fails.
const CHANGE_LIMIT: Duration = Duration::from_secs(20);
/// How long loading the routes into every instance may take.
const LOAD_LIMIT: Duration = Duration::from_secs(600);
/// The TTL of the registrations left to expire.
const TTL_SECS: u64 = 5;
/// The path every change is checked on, and the service the registry scenario uses.
const PROBE: &str = "/api/x";
const SERVICE: &str = "bench-svc";

/// The scale of a run, from the environment.
struct Knobs {
    changes: usize,
    routes: usize,
    clusters: usize,
    registrations: usize,
    expiries: usize,
}

impl Knobs {
    fn from_env() -> Self {
        let knob = |name: &str, default: usize| {
            std::env::var(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
            })
        };
        Self {
            changes: knob("CHANGES", 200),
            routes: knob("ROUTES", 10_000),
            clusters: knob("CLUSTERS", 10),
            registrations: knob("REGISTRATIONS", 50),
            expiries: knob("EXPIRIES", 5),
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument names a scenario.
    let from_args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let selected: Vec<String> = if from_args.is_empty() {
        std::env::var("SCENARIO")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        from_args
    };
    let selected: Vec<&str> = if selected.is_empty() {
        SCENARIOS.to_vec()
    } else {
        selected
            .iter()
            .map(|name| {
                SCENARIOS
                    .into_iter()
                    .find(|s| s == name)
                    .unwrap_or_else(|| panic!("unknown scenario {name}; known: {SCENARIOS:?}"))
            })
            .collect()
    };
    let knobs = Knobs::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for scenario in selected {
            run(scenario, &knobs).await;
        }
    });
}

async fn run(scenario: &str, knobs: &Knobs) {
    let (family, store) = scenario.split_once('-').expect("family-store");
    let store = match store {
        "etcd" => StoreKind::Etcd,
        _ => StoreKind::Redis,
    };
    match family {
        "one" => propagation(scenario, store, vec![2], knobs).await,
        "ten" => {
            let nodes = (0..knobs.clusters).map(|c| 2 - c % 2).collect();
            propagation(scenario, store, nodes, knobs).await;
        }
        _ => registry(scenario, store, knobs).await,
    }
}

/// Starts the deployment, loads `ROUTES` routes into every instance, then times the
/// changes; prints one table.
async fn propagation(scenario: &str, store: StoreKind, nodes: Vec<usize>, knobs: &Knobs) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let bin = Path::new(env!("CARGO_BIN_EXE_portico"));
    let targets = [
        NamedUpstream::start("u1").await,
        NamedUpstream::start("u2").await,
    ];
    let total_nodes: usize = nodes.iter().sum();
    let layout = Layout {
        store,
        nodes_per_cluster: nodes,
    };
    let deployment = Deployment::start(&layout, bin, dir.path(), &db).await;
    let instances: Vec<Vec<Node>> = deployment
        .clusters
        .iter()
        .map(|c| c.nodes.iter().map(|url| Node::new(url)).collect())
        .collect();

    // Every instance gets the same file: upstream `up` at u1, the probe route, and
    // `ROUTES` routes more; it is loaded once the last route answers on every node.
    let loading = Instant::now();
    let yaml = config_file(targets[0].port(), knobs.routes);
    for cluster in &deployment.clusters {
        deployment.apply(&cluster.name, yaml.clone()).await;
    }
    let last = format!("/svc{}/x", knobs.routes.saturating_sub(1));
    for nodes in &instances {
        every_node(nodes, &last, &Want::Body("u1"), LOAD_LIMIT, Duration::ZERO)
            .await
            .unwrap_or_else(|| panic!("{last} was not served within {LOAD_LIMIT:?}"));
    }
    let loaded = loading.elapsed();

    let mut at = vec![0usize; instances.len()];
    let mut samples = Vec::with_capacity(knobs.changes);
    for i in 0..knobs.changes {
        let c = i % instances.len();
        at[c] = 1 - at[c];
        let want = if at[c] == 0 { "u1" } else { "u2" };
        let cluster = &deployment.clusters[c].name;
        let body = upstream(targets[at[c]].port());
        let sync = deployment.put(cluster, "upstreams", &body).await;
        assert_eq!(
            sync, "applied",
            "change {i}: the push did not reach the agent"
        );
        let returned = Instant::now();
        every_node(
            &instances[c],
            PROBE,
            &Want::Body(want),
            CHANGE_LIMIT,
            Duration::ZERO,
        )
        .await
        .unwrap_or_else(|| panic!("change {i} to {cluster} never arrived"));
        samples.push(millis(returned.elapsed()));
    }

    let routes = knobs.routes + 1;
    println!(
        "## {scenario}: admin call returned -> every node of the instance serves it \
         ({}, {} cluster(s), {total_nodes} nodes, {routes} routes per instance)",
        store_name(store),
        instances.len()
    );
    println!("| changes | p50 (ms) | p99 (ms) | max (ms) | routes loaded in (s) |");
    println!("|---|---|---|---|---|");
    let mut slowest: Vec<(usize, f64)> = samples.iter().copied().enumerate().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let summary = Summary::of(samples);
    println!(
        "| {} | {:.2} | {:.2} | {:.2} | {:.1} |",
        summary.count,
        summary.p50,
        summary.p99,
        summary.max,
        loaded.as_secs_f64()
    );
    // Which changes make the tail: the first after loading, or any.
    let slowest: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|(i, ms)| format!("#{i} {ms:.1} ms"))
        .collect();
    println!(
        "\nslowest changes (0 = first after loading): {}",
        slowest.join(", ")
    );
    println!();
}

/// Registrations through the agent until the gateway sends traffic, deregistrations
/// until it stops, and expiries from the TTL's end until it stops; prints one table.
async fn registry(scenario: &str, store: StoreKind, knobs: &Knobs) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let bin = Path::new(env!("CARGO_BIN_EXE_portico"));
    let service_node = NamedUpstream::start("registered").await;
    let layout = Layout {
        store,
        nodes_per_cluster: vec![2],
    };
    let deployment = Deployment::start(&layout, bin, dir.path(), &db).await;
    let cluster = &deployment.clusters[0];
    let nodes: Vec<Node> = cluster.nodes.iter().map(|url| Node::new(url)).collect();
    let route = json!({"id": "reg", "paths": ["/reg/*"], "upstream_id": format!("lb://{SERVICE}")});
    deployment.put(&cluster.name, "routes", &route).await;
    let path = "/reg/x";
    every_node(
        &nodes,
        path,
        &Want::Status(502),
        CHANGE_LIMIT,
        Duration::ZERO,
    )
    .await
    .expect("the route to an unregistered service answers 502");
    let registry = Registry {
        http: reqwest::Client::new(),
        base: format!("{}/agent/apiserver/v1/registry", cluster.agent_url),
        node: json!({"host": "127.0.0.1", "port": service_node.port(), "weight": 1}),
    };

    let mut registered = Vec::new();
    let mut deregistered = Vec::new();
    for i in 0..knobs.registrations {
        let lease = registry.register(30).await;
        let returned = Instant::now();
        every_node(
            &nodes,
            path,
            &Want::Body("registered"),
            CHANGE_LIMIT,
            Duration::ZERO,
        )
        .await
        .unwrap_or_else(|| panic!("registration {i} was never served"));
        registered.push(millis(returned.elapsed()));
        registry.deregister(&lease).await;
        let returned = Instant::now();
        every_node(
            &nodes,
            path,
            &Want::Status(502),
            CHANGE_LIMIT,
            Duration::ZERO,
        )
        .await
        .unwrap_or_else(|| panic!("deregistration {i} was never seen"));
        deregistered.push(millis(returned.elapsed()));
    }

    // Expiries: the removal can only follow the TTL's end, so these are polled with a
    // short pause rather than back to back for seconds.
    let mut expired = Vec::new();
    for i in 0..knobs.expiries {
        let lease = registry.register(TTL_SECS).await;
        every_node(
            &nodes,
            path,
            &Want::Body("registered"),
            CHANGE_LIMIT,
            Duration::ZERO,
        )
        .await
        .unwrap_or_else(|| panic!("registration {i} was never served"));
        registry.heartbeat(&lease).await;
        let deadline = Instant::now() + Duration::from_secs(TTL_SECS);
        every_node(
            &nodes,
            path,
            &Want::Status(502),
            Duration::from_secs(TTL_SECS) + CHANGE_LIMIT,
            Duration::from_millis(2),
        )
        .await
        .unwrap_or_else(|| panic!("expiry {i} was never seen"));
        let gone = Instant::now();
        expired.push(if gone >= deadline {
            millis(gone - deadline)
        } else {
            -millis(deadline - gone)
        });
    }

    println!(
        "## {scenario}: the service registry ({}, 1 cluster, {} nodes, route to lb://{SERVICE})",
        store_name(store),
        nodes.len()
    );
    println!("| measured | samples | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|");
    for (what, samples) in [
        (
            "registration answered -> every node sends it traffic",
            registered,
        ),
        (
            "deregistration answered -> no node sends it traffic",
            deregistered,
        ),
        (
            "TTL ended (last heartbeat + 5 s) -> no node sends it traffic",
            expired,
        ),
    ] {
        let s = Summary::of(samples);
        println!(
            "| {what} | {} | {:.2} | {:.2} | {:.2} |",
            s.count, s.p50, s.p99, s.max
        );
    }
    println!();
}

/// The agent's registry API, called with the agent's own token.
struct Registry {
    http: reqwest::Client,
    base: String,
    node: Value,
}

impl Registry {
    /// Registers the test upstream into `SERVICE`; answers the lease.
    async fn register(&self, ttl_secs: u64) -> String {
        let mut body = self.node.clone();
        body["ttl_secs"] = json!(ttl_secs);
        let response = self
            .http
            .post(format!("{}/services/{SERVICE}/nodes", self.base))
            .bearer_auth(AGENT_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("agent reachable");
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "register: {answer}");
        answer["lease"].as_str().expect("a lease").to_owned()
    }

    async fn heartbeat(&self, lease: &str) {
        let status = self
            .http
            .put(format!("{}/leases/{lease}", self.base))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await
            .expect("agent reachable")
            .status();
        assert_eq!(status, StatusCode::OK, "heartbeat");
    }

    async fn deregister(&self, lease: &str) {
        let status = self
            .http
            .delete(format!("{}/leases/{lease}", self.base))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await
            .expect("agent reachable")
            .status();
        assert!(status.is_success(), "deregister: {status}");
    }
}

/// A gateway node with a client of its own, so its polls reuse one keep-alive
/// connection.
struct Node {
    url: String,
    client: reqwest::Client,
}

impl Node {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client"),
        }
    }
}

/// What a node should answer.
enum Want<'a> {
    /// 200 with this body (the test upstream's name).
    Body(&'a str),
    Status(u16),
}

/// Polls every node at once, each until it answers `path` as wanted, with `pause`
/// between its polls; `None` if one did not within `limit`.
async fn every_node(
    nodes: &[Node],
    path: &str,
    want: &Want<'_>,
    limit: Duration,
    pause: Duration,
) -> Option<()> {
    let mut polls = tokio::task::JoinSet::new();
    for node in nodes {
        let client = node.client.clone();
        let url = format!("{}{path}", node.url);
        let (body, status) = match want {
            Want::Body(body) => (Some((*body).to_owned()), 200),
            Want::Status(status) => (None, *status),
        };
        polls.spawn(async move {
            let start = Instant::now();
            while start.elapsed() < limit {
                if let Ok(response) = client.get(&url).send().await {
                    let got = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    if got == status && body.as_ref().is_none_or(|b| *b == text) {
                        return true;
                    }
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            false
        });
    }
    let mut all = true;
    while let Some(done) = polls.join_next().await {
        all &= done.expect("poll task");
    }
    all.then_some(())
}

/// The instance's config file: upstream `up` at `port`, the probe route and `routes`
/// routes more, all to `up`.
fn config_file(port: u16, routes: usize) -> String {
    let mut yaml = format!(
        "upstreams:\n  - id: up\n    nodes: [{{host: 127.0.0.1, port: {port}, weight: 1}}]\n\
         routes:\n  - {{id: api, paths: [/api/*], upstream_id: up}}\n"
    );
    for i in 0..routes {
        yaml.push_str(&format!(
            "  - {{id: r{i}, paths: [/svc{i}/*], upstream_id: up}}\n"
        ));
    }
    yaml
}

fn upstream(port: u16) -> Value {
    json!({"id": "up", "nodes": [{"host": "127.0.0.1", "port": port, "weight": 1}]})
}

fn store_name(store: StoreKind) -> &'static str {
    match store {
        StoreKind::Etcd => "etcd",
        StoreKind::Redis => "Redis",
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentiles of samples in milliseconds.
struct Summary {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self {
                count: 0,
                p50: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            };
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let n = samples.len();
            samples[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
        };
        Self {
            count: samples.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }
}
