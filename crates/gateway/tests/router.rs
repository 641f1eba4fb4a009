//! The route index through its public API: path, host, priority and method
//! precedence, predicates of every kind, and a property test holding the indexed
//! router to a deliberately simple linear matcher of the documented precedence.

use std::sync::Arc;

use gateway::balancer::UpstreamPool;
use gateway::router::{CompiledRoute, Match, RequestInfo, RouteTarget, Router};
use http::HeaderMap;
use model::route::{MatchOp, PathPattern, Route, TemplatePart, METHODS};
use model::upstream::Upstream;
use regex::Regex;
use serde_json::json;

fn pool() -> Arc<UpstreamPool> {
    static POOL: std::sync::OnceLock<Arc<UpstreamPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let up: Upstream =
            serde_json::from_value(json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]}))
                .unwrap();
        Arc::new(UpstreamPool::build(&up).unwrap().pool)
    })
    .clone()
}

fn route(mut json: serde_json::Value) -> (Arc<CompiledRoute>, Arc<UpstreamPool>) {
    json["upstream_id"] = "u".into();
    let route: Route = serde_json::from_value(json).unwrap();
    route.validate().unwrap();
    (Arc::new(CompiledRoute::compile(route).unwrap()), pool())
}

fn request<'a>(host: &'a str, path: &'a str, method: &'a str) -> RequestInfo<'a> {
    static NO_HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    RequestInfo {
        host,
        path,
        method,
        headers: NO_HEADERS.get_or_init(HeaderMap::new),
        query: None,
        client_ip: None,
        now_ms: 0,
        tls: false,
    }
}

fn describe(m: Match<'_>) -> String {
    match m {
        Match::Found(t) => t.route_id().to_owned(),
        Match::MethodNotAllowed { allow } => format!("405 {}", allow.join(",")),
        Match::NotFound => "404".into(),
    }
}

fn outcome(router: &Router, host: &str, path: &str, method: &str) -> String {
    describe(router.lookup(&request(host, path, method)))
}

fn check(routes: Vec<serde_json::Value>, cases: &[(&str, &str, &str, &str)]) {
    let router = Router::build(routes.into_iter().map(route).collect());
    for (host, path, method, want) in cases {
        assert_eq!(
            outcome(&router, host, path, method),
            *want,
            "{method} {host}{path}"
        );
    }
}

#[test]
fn path_precedence() {
    check(
        vec![
            json!({"id": "root", "paths": ["/*"]}),
            json!({"id": "api", "paths": ["/api/*"]}),
            json!({"id": "api-v1", "paths": ["/api/v1/*"]}),
            json!({"id": "api-x", "paths": ["/api/x"]}),
            json!({"id": "bare", "paths": ["/api"]}),
        ],
        &[
            ("h", "/api/x", "GET", "api-x"),
            ("h", "/api/y", "GET", "api"),
            ("h", "/api/", "GET", "api"),
            ("h", "/api", "GET", "bare"),
            ("h", "/api/v1/z", "GET", "api-v1"),
            ("h", "/api/v1", "GET", "api"),
            ("h", "/other", "GET", "root"),
            ("h", "/", "GET", "root"),
            // Exact means exact: no trailing-slash or case folding.
            ("h", "/api/x/", "GET", "api"),
            ("h", "/API/x", "GET", "root"),
        ],
    );
}

#[test]
fn priority_then_id_break_ties() {
    check(
        vec![
            json!({"id": "b-low", "paths": ["/p"], "priority": 1}),
            json!({"id": "a-low", "paths": ["/p"], "priority": 1}),
            json!({"id": "high", "paths": ["/q", "/p/*"], "priority": 5}),
            json!({"id": "low", "paths": ["/q", "/p/*"], "priority": 1}),
            // Priority never beats a more specific path.
            json!({"id": "urgent-prefix", "paths": ["/r*"], "priority": 100}),
            json!({"id": "plain-exact", "paths": ["/r"]}),
        ],
        &[
            ("h", "/p", "GET", "a-low"),
            ("h", "/q", "GET", "high"),
            ("h", "/p/1", "GET", "high"),
            ("h", "/r", "GET", "plain-exact"),
            ("h", "/rx", "GET", "urgent-prefix"),
        ],
    );
}

#[test]
fn host_precedence() {
    check(
        vec![
            json!({"id": "exact", "paths": ["/h"], "hosts": ["a.example.com"]}),
            json!({"id": "wild", "paths": ["/h"], "hosts": ["*.example.com"]}),
            json!({"id": "wild-deep", "paths": ["/h"], "hosts": ["*.b.example.com"]}),
            json!({"id": "any", "paths": ["/h"]}),
            json!({"id": "exact-prefix", "paths": ["/h*"], "hosts": ["a.example.com"]}),
            json!({"id": "mixed-case", "paths": ["/m"], "hosts": ["Shop.Example.ORG"]}),
            json!({"id": "any-exact", "paths": ["/e"]}),
            json!({"id": "host-prefix", "paths": ["/e*"], "hosts": ["a.example.com"]}),
        ],
        &[
            ("a.example.com", "/h", "GET", "exact"),
            ("c.example.com", "/h", "GET", "wild"),
            ("c.b.example.com", "/h", "GET", "wild-deep"),
            ("b.example.com", "/h", "GET", "wild"),
            // A wildcard needs a subdomain: the bare domain is not covered.
            ("example.com", "/h", "GET", "any"),
            ("xexample.com", "/h", "GET", "any"),
            ("other.org", "/h", "GET", "any"),
            ("", "/h", "GET", "any"),
            // The host-specific prefix beats nothing more specific by path.
            ("a.example.com", "/hx", "GET", "exact-prefix"),
            ("c.example.com", "/hx", "GET", "404"),
            ("shop.example.org", "/m", "GET", "mixed-case"),
            ("other.org", "/m", "GET", "404"),
            // Path specificity comes before host specificity.
            ("a.example.com", "/e", "GET", "any-exact"),
            ("a.example.com", "/ex", "GET", "host-prefix"),
        ],
    );
}

#[test]
fn methods_fall_through_then_405() {
    check(
        vec![
            json!({"id": "get", "paths": ["/m"], "methods": ["GET", "HEAD"]}),
            json!({"id": "post", "paths": ["/m"], "methods": ["POST"], "priority": 9}),
            json!({"id": "put", "paths": ["/put"], "methods": ["PUT"]}),
            json!({"id": "put-host", "paths": ["/put"], "methods": ["PATCH"], "hosts": ["x.io"]}),
            json!({"id": "catch-all", "paths": ["/c/*"]}),
            json!({"id": "c-delete", "paths": ["/c/d"], "methods": ["DELETE"]}),
        ],
        &[
            ("h", "/m", "GET", "get"),
            ("h", "/m", "HEAD", "get"),
            ("h", "/m", "POST", "post"),
            ("h", "/m", "DELETE", "405 GET,POST,HEAD"),
            ("h", "/m", "PROPFIND", "405 GET,POST,HEAD"),
            ("h", "/put", "GET", "405 PUT"),
            ("x.io", "/put", "GET", "405 PUT,PATCH"),
            ("x.io", "/put", "PATCH", "put-host"),
            ("x.io", "/put", "PUT", "put"),
            // A method-restricted route lets other methods reach a broader route.
            ("h", "/c/d", "DELETE", "c-delete"),
            ("h", "/c/d", "GET", "catch-all"),
            ("h", "/c/d", "PROPFIND", "catch-all"),
            ("h", "/nope", "GET", "404"),
        ],
    );
}

#[test]
fn counts_routes_not_entries() {
    let router = Router::build(vec![
        route(
            json!({"id": "r", "paths": ["/a", "/b*", "/a"], "hosts": ["x.io", "X.io", "*.y.io"]}),
        ),
        route(json!({"id": "s", "paths": ["/s"]})),
    ]);
    assert_eq!(router.len(), 2);
    assert!(!router.is_empty());
    assert!(Router::default().is_empty());
    assert_eq!(outcome(&router, "x.io", "/a", "GET"), "r");
    assert_eq!(outcome(&router, "z.y.io", "/bb", "GET"), "r");
}

#[test]
fn templates_and_regexes_rank_below_prefixes_of_equal_literal() {
    check(
        vec![
            json!({"id": "root", "paths": ["/*"]}),
            json!({"id": "user", "paths": ["/users/{id}"]}),
            json!({"id": "user-posts", "paths": ["/users/{id}/posts/*"]}),
            json!({"id": "me", "paths": ["/users/me"]}),
            json!({"id": "files", "paths": ["/files/*"]}),
            json!({"id": "file-id", "paths": ["/files/{id}"]}),
            json!({"id": "versioned", "paths": ["~/api/v[0-9]+/.*"]}),
            json!({"id": "api-tpl", "paths": ["/api/{version}/items"]}),
            json!({"id": "api-re", "paths": ["~/api/[a-z]+[0-9]/items"]}),
            json!({"id": "v2", "paths": ["/api/v2/*"]}),
            json!({"id": "any-segment", "paths": ["/{a}/{b}/leaf"]}),
        ],
        &[
            ("h", "/users/7", "GET", "user"),
            ("h", "/users/me", "GET", "me"),
            // A parameter is one non-empty segment.
            ("h", "/users/", "GET", "root"),
            ("h", "/users/7/x", "GET", "root"),
            ("h", "/users/7/posts/1", "GET", "user-posts"),
            ("h", "/users/7/posts", "GET", "root"),
            // Prefix beats template at the same literal prefix.
            ("h", "/files/9", "GET", "files"),
            // Template beats regex at the same literal prefix (`/api/`) ...
            ("h", "/api/ab1/items", "GET", "api-tpl"),
            ("h", "/api/x/items", "GET", "api-tpl"),
            // ... but a longer literal prefix wins: `~/api/v[0-9]+/.*` has `/api/v`.
            ("h", "/api/v1/items", "GET", "versioned"),
            ("h", "/api/v1/other", "GET", "versioned"),
            ("h", "/api/vx/other", "GET", "root"),
            // The longer literal prefix wins: `/api/v2/` over `/api/v`.
            ("h", "/api/v2/items", "GET", "v2"),
            // Equal literal prefix `/`: the prefix `/*` beats the template, even
            // for a host-specific template (path before host).
            ("h", "/x/y/leaf", "GET", "root"),
        ],
    );
}

fn router_of(routes: Vec<serde_json::Value>) -> Router {
    Router::build(routes.into_iter().map(route).collect())
}

#[test]
fn predicates_each_kind() {
    let router = router_of(vec![
        json!({"id": "fallback", "paths": ["/*"]}),
        json!({"id": "hdr-eq", "paths": ["/h"], "headers": [{"name": "X-Env", "op": "equals", "value": "canary"}]}),
        json!({"id": "hdr-re", "paths": ["/h"], "headers": [{"name": "x-env", "op": "regex", "value": "^stag"}], "priority": -1}),
        json!({"id": "hdr-absent", "paths": ["/ha"], "headers": [{"name": "x-debug", "op": "absent"}]}),
        json!({"id": "hdr-not", "paths": ["/hn"], "headers": [{"name": "x-env", "op": "equals", "value": "prod", "not": true}]}),
        json!({"id": "q-present", "paths": ["/q"], "query": [{"name": "debug", "op": "present"}]}),
        json!({"id": "q-eq", "paths": ["/qe"], "query": [{"name": "v", "op": "equals", "value": "a b"}]}),
        json!({"id": "cookie", "paths": ["/c"], "cookies": [{"name": "beta", "op": "regex", "value": "^(1|yes)$"}]}),
        json!({"id": "cidr", "paths": ["/ip"], "remote_addrs": ["10.0.0.0/8", "2001:db8::/32"]}),
        json!({"id": "window", "paths": ["/t"], "time_window": {"after": "2026-01-01T00:00:00+01:00", "before": "2026-01-02T00:00:00+01:00"}}),
        json!({"id": "after", "paths": ["/ta"], "time_window": {"after": "2026-01-01T00:00:00Z"}}),
        json!({"id": "all", "paths": ["/all"], "methods": ["POST"], "headers": [{"name": "x-a", "op": "present"}], "query": [{"name": "b", "op": "absent"}]}),
    ]);
    let jan1_noon_utc = 1_767_268_800_000; // 2026-01-01T12:00:00Z
    struct Case {
        path: &'static str,
        headers: &'static [(&'static str, &'static str)],
        query: Option<&'static str>,
        ip: Option<&'static str>,
        now: i64,
        method: &'static str,
        want: &'static str,
    }
    let case = |path, headers, query, want| Case {
        path,
        headers,
        query,
        ip: None,
        now: jan1_noon_utc,
        method: "GET",
        want,
    };
    let cases = [
        case("/h", &[("x-env", "canary")], None, "hdr-eq"),
        case(
            "/h",
            &[("x-env", "other"), ("x-env", "canary")],
            None,
            "hdr-eq",
        ),
        case("/h", &[("x-env", "staging")], None, "hdr-re"),
        case("/h", &[("x-env", "Canary")], None, "fallback"),
        case("/h", &[], None, "fallback"),
        case("/ha", &[], None, "hdr-absent"),
        case("/ha", &[("x-debug", "")], None, "fallback"),
        case("/hn", &[("x-env", "dev")], None, "hdr-not"),
        case("/hn", &[], None, "hdr-not"),
        case("/hn", &[("x-env", "prod")], None, "fallback"),
        case("/q", &[], Some("debug"), "q-present"),
        case("/q", &[], Some("a=1&debug=&b"), "q-present"),
        case("/q", &[], Some("debugx=1"), "fallback"),
        case("/q", &[], None, "fallback"),
        case("/qe", &[], Some("v=a+b"), "q-eq"),
        case("/qe", &[], Some("v=a%20b"), "q-eq"),
        case("/qe", &[], Some("v=ab"), "fallback"),
        case("/c", &[("cookie", "a=1; beta=yes")], None, "cookie"),
        case(
            "/c",
            &[("cookie", "a=1"), ("cookie", "beta=1")],
            None,
            "cookie",
        ),
        case("/c", &[("cookie", "beta=no")], None, "fallback"),
        case("/c", &[("cookie", "xbeta=1")], None, "fallback"),
        Case {
            ip: Some("10.1.2.3"),
            ..case("/ip", &[], None, "cidr")
        },
        Case {
            ip: Some("2001:db8::1"),
            ..case("/ip", &[], None, "cidr")
        },
        Case {
            ip: Some("11.0.0.1"),
            ..case("/ip", &[], None, "fallback")
        },
        case("/ip", &[], None, "fallback"),
        case("/t", &[], None, "window"),
        // The window is in +01:00: it began at 2025-12-31T23:00Z.
        Case {
            now: 1_767_222_000_000,
            ..case("/t", &[], None, "window")
        },
        Case {
            now: 1_767_221_999_999,
            ..case("/t", &[], None, "fallback")
        },
        // `before` is exclusive: 2026-01-01T23:00:00Z.
        Case {
            now: 1_767_308_400_000,
            ..case("/t", &[], None, "fallback")
        },
        case("/ta", &[], None, "after"),
        Case {
            now: 1_767_225_599_999,
            ..case("/ta", &[], None, "fallback")
        },
        Case {
            method: "POST",
            ..case("/all", &[("x-a", "1")], None, "all")
        },
        Case {
            method: "POST",
            ..case("/all", &[("x-a", "1")], Some("b=2"), "fallback")
        },
        // Predicates hold but the method does not: the fallback takes it.
        case("/all", &[("x-a", "1")], None, "fallback"),
    ];
    for c in cases {
        let mut headers = HeaderMap::new();
        for (k, v) in c.headers {
            headers.append(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        let req = RequestInfo {
            host: "h",
            path: c.path,
            method: c.method,
            headers: &headers,
            query: c.query,
            client_ip: c.ip.map(|ip| ip.parse().unwrap()),
            now_ms: c.now,
            tls: false,
        };
        assert_eq!(
            describe(router.lookup(&req)),
            c.want,
            "{} {:?} {:?} {:?}",
            c.path,
            c.headers,
            c.query,
            c.ip
        );
    }
}

#[test]
fn failed_predicates_are_404_and_method_is_405() {
    let router = router_of(vec![
        json!({"id": "canary", "paths": ["/p"], "methods": ["GET"], "headers": [{"name": "x-env", "op": "equals", "value": "canary"}]}),
        json!({"id": "post-only", "paths": ["/m"], "methods": ["POST"]}),
    ]);
    // Predicates fail: as if the path did not match.
    assert_eq!(outcome(&router, "h", "/p", "GET"), "404");
    // Predicates would fail too: no 405 advertises a method that would not work.
    assert_eq!(outcome(&router, "h", "/p", "POST"), "404");
    assert_eq!(outcome(&router, "h", "/m", "GET"), "405 POST");
}

/// Path kinds at equal literal prefix, most specific last (the reference's own copy
/// of the documented order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Regex = 0,
    Template = 1,
    Prefix = 2,
    Exact = 3,
}

/// The documented path precedence as a number: an exact path beats everything, then
/// the longer literal prefix, then the kind.
fn path_rank(kind: Kind, literal_len: usize) -> u64 {
    match kind {
        Kind::Exact => u64::MAX,
        _ => (literal_len as u64) * 4 + kind as u64,
    }
}

/// Bit i set = `METHODS[i]` listed.
fn method_bits(methods: &[String]) -> u16 {
    methods
        .iter()
        .filter_map(|m| METHODS.iter().position(|k| k == m))
        .fold(0, |acc, i| acc | 1 << i)
}

/// The route's header predicates (the only kind the property test generates: equals).
fn headers_hold(route: &Route, req: &RequestInfo<'_>) -> bool {
    route.headers.iter().all(|m| {
        assert_eq!(m.op, MatchOp::Equals, "the reference knows equals only");
        let equal = req
            .headers
            .get_all(m.name.as_str())
            .iter()
            .any(|v| v.to_str().ok() == m.value.as_deref());
        equal != m.not
    })
}

/// A deliberately simple matcher: every route, every host and path, compared by the
/// documented precedence. The indexed router must agree with it.
fn reference(routes: &[(Arc<CompiledRoute>, Arc<UpstreamPool>)], req: &RequestInfo<'_>) -> String {
    // (path rank, host rank, priority, reversed id) → the greatest wins.
    type Key<'a> = (u64, usize, i32, std::cmp::Reverse<&'a str>);
    let mut best: Option<(Key<'_>, &str)> = None;
    let mut allowed: Option<u16> = None;
    for (compiled, _) in routes {
        let r = &compiled.route;
        let host_ranks: Vec<usize> = if r.hosts.is_empty() {
            vec![0]
        } else {
            r.hosts
                .iter()
                .filter_map(|h| {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix('*') {
                        Some(suffix) => (req.host.ends_with(suffix)
                            && req.host.len() > suffix.len())
                        .then_some(suffix.len()),
                        None => (h == req.host).then_some(usize::MAX),
                    }
                })
                .collect()
        };
        let Some(&host) = host_ranks.iter().max() else {
            continue;
        };
        let mut path_best = None;
        for p in &r.paths {
            let pattern = PathPattern::parse(p).unwrap();
            let literal = pattern.literal_prefix();
            let (kind, ok) = match &pattern {
                PathPattern::Exact(e) => (Kind::Exact, req.path == *e),
                PathPattern::Prefix(pre) => (Kind::Prefix, req.path.starts_with(pre)),
                PathPattern::Template { parts, tail } => {
                    let mut re = String::from("^");
                    for part in parts {
                        match part {
                            TemplatePart::Literal(l) => re.push_str(&regex::escape(l)),
                            TemplatePart::Param(_) => re.push_str("[^/]+"),
                        }
                    }
                    if *tail {
                        re.push_str(".*");
                    }
                    re.push('$');
                    (Kind::Template, Regex::new(&re).unwrap().is_match(req.path))
                }
                PathPattern::Regex(re) => (
                    Kind::Regex,
                    req.path.starts_with(literal)
                        && Regex::new(&format!("^(?:{re})$"))
                            .unwrap()
                            .is_match(req.path),
                ),
            };
            if ok {
                let rank = path_rank(kind, literal.len());
                path_best = path_best.max(Some(rank));
            }
        }
        let Some(path) = path_best else { continue };
        if !headers_hold(r, req) {
            continue;
        }
        if !r.methods.is_empty() && !r.methods.iter().any(|m| m == req.method) {
            allowed = Some(allowed.unwrap_or(0) | method_bits(&r.methods));
            continue;
        }
        let key = (path, host, r.priority, std::cmp::Reverse(r.id.as_str()));
        if best.as_ref().is_none_or(|(b, _)| key > *b) {
            best = Some((key, r.id.as_str()));
        }
    }
    match (best, allowed) {
        (Some((_, id)), _) => id.to_owned(),
        (None, Some(methods)) => format!(
            "405 {}",
            METHODS
                .iter()
                .enumerate()
                .filter(|(i, _)| methods & (1 << i) != 0)
                .map(|(_, m)| *m)
                .collect::<Vec<_>>()
                .join(",")
        ),
        (None, None) => "404".into(),
    }
}

mod property {
    use proptest::prelude::*;

    use super::*;

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "ab", "v1", "x"])
    }

    fn path_of(segments: &[&str]) -> String {
        format!("/{}", segments.join("/"))
    }

    fn route_path() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(segment(), 0..4),
            0..6u8,
            any::<prop::sample::Index>(),
        )
            .prop_map(|(segments, kind, at)| {
                let base = path_of(&segments);
                match kind {
                    0 | 1 => base,
                    2 => format!("{base}*"),
                    3 if !segments.is_empty() => {
                        let mut s: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
                        let i = at.index(s.len());
                        s[i] = "{p}".into();
                        path_of(&s.iter().map(String::as_str).collect::<Vec<_>>())
                    }
                    4 => format!("{base}/{{p}}*"),
                    _ => format!("~{}(/[ab]+)?", base.trim_end_matches('/')),
                }
            })
    }

    fn route_json() -> impl Strategy<Value = serde_json::Value> {
        (
            prop::collection::vec(route_path(), 1..3),
            prop::sample::select(vec![
                vec![],
                vec!["x.io"],
                vec!["*.x.io"],
                vec!["a.x.io", "*.io"],
            ]),
            prop::sample::subsequence(vec!["GET", "POST", "PUT"], 0..3),
            -1..2i32,
            any::<bool>(),
        )
            .prop_map(|(paths, hosts, methods, priority, header)| {
                let mut r = json!({
                    "paths": paths, "hosts": hosts, "methods": methods, "priority": priority,
                });
                if header {
                    r["headers"] = json!([{"name": "x-v", "op": "equals", "value": "1"}]);
                }
                r
            })
    }

    proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn indexed_router_agrees_with_linear_reference(
                routes in prop::collection::vec(route_json(), 1..25),
                requests in prop::collection::vec(
                    (
                        prop::collection::vec(segment(), 0..5),
                        any::<bool>(),
                        prop::sample::select(vec!["x.io", "a.x.io", "b.a.x.io", "y.io", "other"]),
                        prop::sample::select(vec!["GET", "POST", "DELETE"]),
                        any::<bool>(),
                    ),
                    1..30,
                ),
            ) {
                let routes: Vec<_> = routes
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut r)| {
                        r["id"] = format!("r{i:02}").into();
                        route(r)
                    })
                    .collect();
                let router = Router::build(routes.clone());
                let mut with_header = HeaderMap::new();
                with_header.insert("x-v", http::HeaderValue::from_static("1"));
                let without = HeaderMap::new();
                for (segments, slash, host, method, header) in requests {
                    let mut path = path_of(&segments);
                    if slash && !path.ends_with('/') {
                        path.push('/');
                    }
                    let req = RequestInfo {
                        host,
                        path: &path,
                        method,
                        headers: if header { &with_header } else { &without },
                        query: None,
                        client_ip: None,
                        now_ms: 0,
                                    tls: false,
    };
                    prop_assert_eq!(
                        describe(router.lookup(&req)),
                        reference(&routes, &req),
                        "{} {}{}", method, host, path
                    );
                }
            }
        }
}

/// A table of the same compiled routes with new targets (an upstream moved) is built
/// over the previous index and sends requests to the new targets; a table whose routes
/// differ in any way is indexed anew.
#[test]
fn a_table_of_the_same_routes_reuses_the_index_with_new_targets() {
    let pool_at = |port: u16| {
        let up: Upstream = serde_json::from_value(
            json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": port}]}),
        )
        .unwrap();
        Arc::new(UpstreamPool::build(&up).unwrap().pool)
    };
    let routes: Vec<Arc<CompiledRoute>> = [
        json!({"id": "a", "paths": ["/a/*"]}),
        json!({"id": "b", "paths": ["/b"], "hosts": ["*.example.com"]}),
    ]
    .into_iter()
    .map(|r| route(r).0)
    .collect();
    let table = |routes: &[Arc<CompiledRoute>], port: u16| -> Vec<RouteTarget> {
        let pool = pool_at(port);
        routes
            .iter()
            .map(|r| (r.clone(), pool.clone()).into())
            .collect()
    };
    let first = Router::build_over(None, table(&routes, 1));
    let second = Router::build_over(Some(&first.index()), table(&routes, 2));
    assert!(second.shares_index_with(&first));
    for router in [&first, &second] {
        assert_eq!(outcome(router, "x.example.com", "/b", "GET"), "b");
        assert_eq!(outcome(router, "h", "/a/x", "GET"), "a");
        assert_eq!(outcome(router, "h", "/b", "GET"), "404");
    }
    let node = |router: &Router, host: &str, path: &str| match router
        .lookup(&request(host, path, "GET"))
    {
        Match::Found(target) => Arc::as_ptr(&target.upstream),
        other => panic!("{host}{path}: {}", describe(other)),
    };
    assert!(std::ptr::eq(
        node(&second, "h", "/a/x"),
        Arc::as_ptr(&second.routes()[0].upstream)
    ));
    assert!(!std::ptr::eq(
        node(&first, "h", "/a/x"),
        node(&second, "h", "/a/x")
    ));

    // One route compiled again (even to the same content), one removed, the order
    // changed: each gets an index of its own, and lookups follow the new routes.
    let recompiled = vec![
        routes[0].clone(),
        route(json!({"id": "b", "paths": ["/c"]})).0,
    ];
    let third = Router::build_over(Some(&second.index()), table(&recompiled, 3));
    assert!(!third.shares_index_with(&second));
    assert_eq!(outcome(&third, "h", "/c", "GET"), "b");
    assert_eq!(outcome(&third, "x.example.com", "/b", "GET"), "404");
    let fewer = Router::build_over(Some(&third.index()), table(&recompiled[..1], 3));
    assert!(!fewer.shares_index_with(&third));
    assert_eq!(outcome(&fewer, "h", "/c", "GET"), "404");
    let reordered: Vec<_> = recompiled.iter().rev().cloned().collect();
    let swapped = Router::build_over(Some(&third.index()), table(&reordered, 3));
    assert!(!swapped.shares_index_with(&third));
    assert_eq!(outcome(&swapped, "h", "/c", "GET"), "b");
    assert_eq!(outcome(&swapped, "h", "/a/x", "GET"), "a");
}
