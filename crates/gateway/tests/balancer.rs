//! Upstream pools through their public API: building (timeouts, compiled settings,
//! TLS, unresolvable nodes, the Host header per node), picking (exclusions, in-flight
//! counts) and consistent hashing (stickiness, spread, minimal disruption, every hash
//! source with its fallbacks). Per-policy details that need the internals stay next to
//! their code in `src/balancer/`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gateway::balancer::{
    HashInput, HostRewrite, Outcome, Pick, PoolError, PoolTimeouts, UpstreamPool,
};
use http::HeaderMap;
use model::upstream::{Scheme, Upstream};
use serde_json::{json, Value};

fn upstream(json: Value) -> Upstream {
    serde_json::from_value(json).unwrap()
}

/// A valid pool of nodes 127.0.0.1:1000+i with these weights, plus `extra` fields.
fn pool_with(weights: &[i64], extra: Value) -> Arc<UpstreamPool> {
    let nodes: Vec<_> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"host": "127.0.0.1", "port": 1000 + i, "weight": w}))
        .collect();
    let mut up = json!({"id": "u", "nodes": nodes});
    for (k, v) in extra.as_object().unwrap() {
        up[k] = v.clone();
    }
    let up = upstream(up);
    up.validate().unwrap();
    let built = UpstreamPool::build(&up).unwrap();
    assert!(built.warnings.is_empty());
    Arc::new(built.pool)
}

fn pool(weights: &[i64]) -> Arc<UpstreamPool> {
    pool_with(weights, json!({}))
}

/// A request with nothing chash could hash.
fn bare<R>(f: impl FnOnce(&HashInput<'_>) -> R) -> R {
    let headers = HeaderMap::new();
    f(&HashInput {
        client_ip: None,
        path: "/",
        headers: &headers,
        query: None,
    })
}

fn pick_index(pool: &Arc<UpstreamPool>, exclude: &[usize]) -> Option<usize> {
    bare(|input| pool.pick(input, exclude).map(|p| p.index))
}

/// A pick of node `index`, whatever the policy, by excluding the others.
fn pick_node(pool: &Arc<UpstreamPool>, index: usize) -> Pick {
    let others: Vec<usize> = (0..pool.len()).filter(|&i| i != index).collect();
    let pick = bare(|input| pool.pick(input, &others)).unwrap();
    assert_eq!(pick.index, index);
    pick
}

const ALL_POLICIES: [&str; 5] = ["roundrobin", "random", "least_conn", "chash", "ewma"];

#[test]
fn the_node_host_header_omits_only_the_scheme_default_port() {
    let headers = |scheme: &str, nodes: Value| {
        let up = upstream(json!({"id": "u", "scheme": scheme, "nodes": nodes}));
        let pool = UpstreamPool::build(&up).unwrap().pool;
        pool.nodes()
            .iter()
            .map(|n| n.host_header.clone())
            .collect::<Vec<_>>()
    };
    let nodes = json!([
        {"host": "127.0.0.1", "port": 80, "weight": 1},
        {"host": "127.0.0.1", "port": 443, "weight": 1},
        {"host": "::1", "port": 8080, "weight": 1},
    ]);
    assert_eq!(
        headers("http", nodes.clone()),
        ["127.0.0.1", "127.0.0.1:443", "[::1]:8080"]
    );
    assert_eq!(
        headers("https", nodes),
        ["127.0.0.1:80", "127.0.0.1", "[::1]:8080"]
    );
}

#[test]
fn excluded_nodes_are_not_picked_by_any_policy() {
    for lb in ALL_POLICIES {
        let pool = pool_with(&[1, 1, 1], json!({"type": lb}));
        for _ in 0..200 {
            assert_ne!(pick_index(&pool, &[0]), Some(0), "{lb}");
        }
        assert_eq!(pick_index(&pool, &[0, 2]), Some(1), "{lb}");
        assert_eq!(pick_index(&pool, &[0, 1, 2]), None, "{lb}");
    }
}

#[test]
fn a_pick_counts_as_in_flight_until_dropped() {
    let pool = pool(&[1]);
    let a = pick_node(&pool, 0);
    let b = pick_node(&pool, 0);
    assert_eq!(pool.nodes()[0].in_flight(), 2);
    // Recording the outcome does not end the exchange (the body may still stream).
    a.record(Outcome::Failed);
    assert_eq!(pool.nodes()[0].in_flight(), 2);
    drop(a);
    assert_eq!(pool.nodes()[0].in_flight(), 1);
    drop(b);
    assert_eq!(pool.nodes()[0].in_flight(), 0);
}

#[test]
fn a_pick_can_live_in_a_request_context() {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<Pick>();
    send_sync_static::<Arc<UpstreamPool>>();
}

#[test]
fn timeouts_come_from_the_upstream() {
    let built = UpstreamPool::build(&upstream(json!({
        "id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}],
        "timeout": {"connect": 0.5, "read": 2, "send": 3},
        "keepalive_pool": {"idle_timeout": 30}
    })))
    .unwrap();
    assert_eq!(
        built.pool.timeouts,
        PoolTimeouts {
            connect: Duration::from_millis(500),
            read: Duration::from_secs(2),
            write: Duration::from_secs(3),
            idle: Duration::from_secs(30),
        }
    );
}

#[test]
fn durations_out_of_range_are_refused_not_panicked_on() {
    for (extra, field) in [
        (json!({"timeout": {"connect": -1}}), "timeout.connect"),
        (json!({"timeout": {"read": 1e300}}), "timeout.read"),
        (
            json!({"keepalive_pool": {"idle_timeout": 0}}),
            "keepalive_pool.idle_timeout",
        ),
        (
            json!({"checks": {"active": {"interval": -5}}}),
            "checks.active.interval",
        ),
        (
            json!({"checks": {"passive": {"eject_for": 0}}}),
            "checks.passive.eject_for",
        ),
    ] {
        let mut up = json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]});
        for (k, v) in extra.as_object().unwrap() {
            up[k] = v.clone();
        }
        let err = UpstreamPool::build(&upstream(up)).unwrap_err();
        assert!(
            matches!(err, PoolError::BadDuration { field: f, .. } if f == field),
            "{err}"
        );
    }
}

#[test]
fn settings_the_request_path_reads_are_compiled_once() {
    let pool = |extra: Value| {
        let mut up = json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]});
        for (k, v) in extra.as_object().unwrap() {
            up[k] = v.clone();
        }
        UpstreamPool::build(&upstream(up)).unwrap().pool
    };
    let plain = pool(json!({}));
    assert_eq!(plain.scheme, Scheme::Http);
    let default = upstream(json!({"id": "u", "nodes": []}));
    assert_eq!(plain.retries, default.retries);
    assert_eq!(plain.pass_host, HostRewrite::Pass);
    assert!((100..600).all(|s| !plain.retries_on(s)));

    let set = pool(json!({
        "scheme": "grpc", "retries": 3, "retry_on_statuses": [504, 502, 504],
        "pass_host": "rewrite", "upstream_host": "api.internal"
    }));
    assert_eq!(set.scheme, Scheme::Grpc);
    assert_eq!(set.retries, 3);
    assert_eq!(set.pass_host, HostRewrite::Rewrite("api.internal".into()));
    let retried: Vec<u16> = (100..600).filter(|&s| set.retries_on(s)).collect();
    assert_eq!(retried, [502, 504]);
    // Rewrite without a host (validation refuses it) keeps the client's, as before.
    let no_host = pool(json!({"pass_host": "rewrite"}));
    assert_eq!(no_host.pass_host, HostRewrite::Pass);
}

#[test]
fn tls_upstreams_build_and_unresolvable_nodes_are_left_out() {
    let https = upstream(json!({
        "id": "u", "scheme": "https", "tls": {"sni": "api.example.com"},
        "pass_host": "node", "retries": 2,
        "nodes": [{"host": "localhost", "port": 443}]
    }));
    let built = UpstreamPool::build(&https).unwrap();
    assert_eq!(built.pool.scheme, Scheme::Https);
    assert_eq!(built.pool.retries, 2);
    assert_eq!(built.pool.pass_host, HostRewrite::Node);
    assert!(built.pool.nodes()[0].peer.is_tls());
    assert_eq!(built.pool.nodes()[0].host, "localhost");
    assert_eq!(built.pool.nodes()[0].addr.port(), 443);

    let partly = upstream(json!({
        "id": "u", "nodes": [
            {"host": "no-such-host.invalid", "port": 1},
            {"host": "127.0.0.1", "port": 2}
        ]
    }));
    let built = UpstreamPool::build(&partly).unwrap();
    let pool = Arc::new(built.pool);
    assert_eq!(pool.len(), 1);
    assert_eq!(
        bare(|input| pool.pick(input, &[])).map(|p| p.addr),
        Some("127.0.0.1:2".parse().unwrap())
    );
    assert_eq!(built.warnings.len(), 1);
    assert!(
        built.warnings[0].contains("does not resolve"),
        "{:?}",
        built.warnings
    );

    for lb in ALL_POLICIES {
        let none = upstream(json!({
            "id": "u", "type": lb, "nodes": [{"host": "no-such-host.invalid", "port": 1}]
        }));
        let pool = Arc::new(UpstreamPool::build(&none).unwrap().pool);
        assert!(pool.is_empty());
        assert!(bare(|input| pool.pick(input, &[])).is_none(), "{lb}");
        assert!(pool.health_report().is_empty());
    }
}

fn chash(len: usize, hash_on: &str, key: Option<&str>) -> Arc<UpstreamPool> {
    let mut extra = json!({"type": "chash", "hash_on": hash_on});
    if let Some(key) = key {
        extra["key"] = json!(key);
    }
    pool_with(&vec![1; len], extra)
}

/// The node a header-hashed pool picks for `x-user: value`.
fn by_user(pool: &Arc<UpstreamPool>, value: &str) -> SocketAddr {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", value.parse().unwrap());
    let input = HashInput {
        client_ip: None,
        path: "/",
        headers: &headers,
        query: None,
    };
    pool.pick(&input, &[]).unwrap().addr
}

/// A request as chash sees it.
#[derive(Default)]
struct Req {
    ip: Option<IpAddr>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

impl Req {
    /// A request for `/` from 10.0.0.`ip`.
    fn from(ip: u8) -> Self {
        Self {
            ip: Some(IpAddr::from([10, 0, 0, ip])),
            path: "/".into(),
            ..Self::default()
        }
    }

    fn pick(&self, pool: &Arc<UpstreamPool>) -> SocketAddr {
        let input = HashInput {
            client_ip: self.ip,
            path: &self.path,
            headers: &self.headers,
            query: self.query.as_deref(),
        };
        pool.pick(&input, &[]).unwrap().addr
    }
}

#[test]
fn chash_sends_a_key_to_one_node_and_spreads_keys() {
    let pool = chash(3, "header", Some("x-user"));
    let first = by_user(&pool, "user-42");
    assert!((0..1000).all(|_| by_user(&pool, "user-42") == first));

    let mut per_node: HashMap<SocketAddr, usize> = HashMap::new();
    for i in 0..10_000 {
        *per_node
            .entry(by_user(&pool, &format!("user-{i}")))
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    for count in per_node.values() {
        assert!((1_500..=6_000).contains(count), "{per_node:?}");
    }
}

#[test]
fn chash_removing_a_node_moves_only_its_keys() {
    let four = chash(4, "header", Some("x-user"));
    let three = chash(3, "header", Some("x-user"));
    let removed: SocketAddr = "127.0.0.1:1003".parse().unwrap();
    let mut moved = 0;
    for i in 0..10_000 {
        let key = format!("user-{i}");
        let (before, after) = (by_user(&four, &key), by_user(&three, &key));
        if before != after {
            moved += 1;
            assert_eq!(before, removed, "{key} moved off a node that stayed");
        }
    }
    assert!(
        (1_000..4_000).contains(&moved),
        "{moved} of 10000 keys moved"
    );
}

#[test]
fn chash_hashes_each_source_and_falls_back_to_the_client_address() {
    // hash_on ip: one client, one node; clients spread over the nodes.
    let by_ip = chash(3, "ip", None);
    let first = Req::from(1).pick(&by_ip);
    assert!((0..100).all(|_| Req::from(1).pick(&by_ip) == first));
    let spread: HashSet<_> = (0..=255).map(|i| Req::from(i).pick(&by_ip)).collect();
    assert_eq!(spread.len(), 3);

    // (hash_on, key, the request carrying value v)
    type Carry = fn(Req, &str) -> Req;
    let cases: [(&str, Option<&str>, Carry); 4] = [
        ("header", Some("x-user"), |mut r, v| {
            r.headers.insert("x-user", v.parse().unwrap());
            r
        }),
        ("cookie", Some("sid"), |mut r, v| {
            let cookie = format!("a=1; sid={v}; b=2");
            r.headers
                .insert(http::header::COOKIE, cookie.parse().unwrap());
            r
        }),
        ("query", Some("user"), |mut r, v| {
            r.query = Some(format!("a=1&user={v}"));
            r
        }),
        ("path", None, |mut r, v| {
            r.path = format!("/items/{v}");
            r
        }),
    ];
    for (hash_on, key, carry) in cases {
        let pool = chash(3, hash_on, key);
        // The same value goes to the same node whatever the client address…
        let first = carry(Req::from(1), "alice").pick(&pool);
        assert!(
            (0..=255).all(|i| carry(Req::from(i), "alice").pick(&pool) == first),
            "{hash_on}"
        );
        // …and values spread over the nodes.
        let spread: HashSet<_> = (0..300)
            .map(|i| carry(Req::from(1), &format!("u{i}")).pick(&pool))
            .collect();
        assert_eq!(spread.len(), 3, "{hash_on}");
        if hash_on == "path" {
            continue; // a request always has a path
        }
        // Without the value the client address decides, as with hash_on ip…
        for i in 0..50 {
            assert_eq!(
                Req::from(i).pick(&pool),
                Req::from(i).pick(&by_ip),
                "{hash_on}"
            );
        }
        // …and without either, round robin.
        let rr: Vec<_> = (0..6).map(|_| Req::default().pick(&pool).port()).collect();
        assert_eq!(rr, [1000, 1001, 1002, 1000, 1001, 1002], "{hash_on}");
    }
}
