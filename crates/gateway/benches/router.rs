//! Route lookup and table build at 1k, 10k and 100k routes (criterion).
//!
//! The routes (`testkit::routes`) mix what real tables hold: exact paths, prefixes,
//! templates and a few regexes, spread over a handful of hosts and wildcard hosts. The
//! request looked up is for the route inserted last, so a table that scanned in
//! insertion order would show it. Run: `cargo bench -p gateway --bench router`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::balancer::UpstreamPool;
use gateway::router::{CompiledRoute, Match, RequestInfo, Router};
use model::route::Route;
use model::upstream::Upstream;
use serde_json::json;

fn routes(n: usize) -> Vec<(Arc<CompiledRoute>, Arc<UpstreamPool>)> {
    let upstream: Upstream =
        serde_json::from_value(json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]}))
            .expect("upstream");
    let pool = Arc::new(UpstreamPool::build(&upstream).expect("pool").pool);
    (0..n)
        .map(|i| {
            let route: Route =
                serde_json::from_value(testkit::routes::route(i, "u")).expect("route");
            (
                Arc::new(CompiledRoute::compile(route).expect("compiles")),
                pool.clone(),
            )
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let headers = http::HeaderMap::new();
    for n in [1_000, 10_000, 100_000] {
        let router = Router::build(routes(n));
        let (host, path) = testkit::routes::request(n - 1);
        let req = RequestInfo {
            host: &host,
            path: &path,
            method: "GET",
            headers: &headers,
            query: None,
            client_ip: None,
            now_ms: 0,
            tls: false,
        };
        match router.lookup(&req) {
            Match::Found(t) => assert_eq!(t.route_id(), format!("r{}", n - 1)),
            other => panic!("{n}: {host}{path} → {other:?}"),
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &req, |b, req| {
            b.iter(|| matches!(black_box(&router).lookup(black_box(req)), Match::Found(_)))
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_table_build");
    group.sample_size(10);
    for n in [10_000, 100_000] {
        let input = routes(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            b.iter_with_large_drop(|| Router::build(black_box(input.clone())))
        });
    }
    group.finish();
}

/// What a node does when one route of a large config changes: the watch delivers one
/// key, the compiler re-parses that route and assembles a new config (route index
/// included). This is the cost a change pays, as opposed to the full build above.
fn one_change(c: &mut Criterion) {
    use gateway::runtime::{Compiler, ConfigObjects};
    use store::keys::Keyspace;
    let mut group = c.benchmark_group("one_change");
    group.sample_size(10);
    for n in [10_000, 100_000] {
        let keyspace = Keyspace::default();
        let mut objects = ConfigObjects::new(keyspace.clone(), "bench");
        let prefix = keyspace.instance_prefix("bench");
        let upstream = json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]});
        objects.put(
            format!("{prefix}upstreams/u"),
            upstream.to_string().into_bytes(),
        );
        for i in 0..n {
            let route = testkit::routes::route(i, "u").to_string().into_bytes();
            objects.put(format!("{prefix}routes/r{i}"), route);
        }
        let mut compiler = Compiler::new(objects);
        let first = compiler.build();
        assert_eq!(first.config.router.len(), n);
        let mut flip = 0u64;
        group.bench_function(BenchmarkId::new("route", n), |b| {
            b.iter_with_large_drop(|| {
                flip += 1;
                let mut route = testkit::routes::route(n / 2, "u");
                route["priority"] = json!(flip % 2);
                compiler.objects.put(
                    format!("{prefix}routes/r{}", n / 2),
                    route.to_string().into_bytes(),
                );
                compiler.build()
            })
        });
        // The upstream every route uses moves to another node (what the propagation
        // benchmark changes): no route compiles again, every route's target does.
        group.bench_function(BenchmarkId::new("upstream", n), |b| {
            b.iter_with_large_drop(|| {
                flip += 1;
                let upstream =
                    json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1 + flip % 2}]});
                compiler.objects.put(
                    format!("{prefix}upstreams/u"),
                    upstream.to_string().into_bytes(),
                );
                compiler.build()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, build, one_change);
criterion_main!(benches);
