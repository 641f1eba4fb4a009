//! The route table: host → path (exact, then longest prefix) → method.
//!
//! Built once per config revision, read by every request. Precedence, most specific
//! first: an exact path beats a prefix and a longer prefix beats a shorter one; at equal
//! path specificity an exact host beats a wildcard host (longer suffix first), which
//! beats a route without hosts; then the higher `priority`; then the smaller route id.
//! A route whose host and path match but whose methods do not is skipped in favour of
//! less specific routes; only when nothing at all accepts the method is it a 405.

use std::collections::HashMap;
use std::sync::Arc;

use model::route::{PathPattern, Route, METHODS};

use crate::balancer::UpstreamPool;

/// What a request is sent to when it matches a route.
#[derive(Debug)]
pub struct RouteTarget {
    pub route_id: String,
    pub upstream: Arc<UpstreamPool>,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Match<'a> {
    Found(&'a RouteTarget),
    /// Routes match host and path but not the method; `allow` lists what they accept.
    MethodNotAllowed {
        allow: Vec<&'static str>,
    },
    NotFound,
}

#[derive(Debug, Default)]
pub struct Router {
    /// Routes listing the exact host.
    by_host: HashMap<String, PathTable>,
    /// Routes listing `*.example.com`, keyed by the suffix with its dot: `.example.com`.
    by_wildcard: HashMap<String, PathTable>,
    /// Routes without hosts.
    any_host: PathTable,
    len: usize,
}

/// Routes of one host, indexed by path.
#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<String, Vec<Entry>>,
    /// Longest prefix first, so the first prefix that matches is the most specific.
    prefixes: Vec<(String, Vec<Entry>)>,
}

/// One route under one (host, path); lists are sorted by priority, then route id.
#[derive(Debug)]
struct Entry {
    priority: i32,
    /// Bit i set = `METHODS[i]` accepted; [`ANY_METHOD`] when the route lists none.
    methods: u16,
    target: Arc<RouteTarget>,
}

const ANY_METHOD: u16 = u16::MAX;

/// How specific a candidate is; compared field by field, the greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// Exact paths rank above every prefix: `usize::MAX`; a prefix ranks by its length.
    path: usize,
    /// Exact host `usize::MAX`; wildcard by suffix length; no host 0.
    host: usize,
}

/// A method no route can list (WebDAV's, say); only routes without methods accept it.
const OTHER_METHOD: u16 = 1 << 15;

fn method_bit(method: &str) -> u16 {
    METHODS
        .iter()
        .position(|m| *m == method)
        .map_or(OTHER_METHOD, |i| 1 << i)
}

impl Router {
    /// Builds the table from valid, enabled routes (the caller has skipped the rest).
    pub fn build(routes: Vec<(Route, Arc<UpstreamPool>)>) -> Self {
        let mut router = Router::default();
        for (route, upstream) in routes {
            let target = Arc::new(RouteTarget {
                route_id: route.id.clone(),
                upstream,
            });
            let methods = match route.methods.as_slice() {
                [] => ANY_METHOD,
                listed => listed.iter().fold(0, |acc, m| acc | method_bit(m)),
            };
            let hosts: Vec<Option<String>> = if route.hosts.is_empty() {
                vec![None]
            } else {
                let mut hosts: Vec<_> = route
                    .hosts
                    .iter()
                    .map(|h| Some(h.to_ascii_lowercase()))
                    .collect();
                hosts.sort();
                hosts.dedup();
                hosts
            };
            for host in hosts {
                let table = match host {
                    None => &mut router.any_host,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => router.by_wildcard.entry(suffix.to_owned()).or_default(),
                        None => router.by_host.entry(h).or_default(),
                    },
                };
                for path in &route.paths {
                    let entry = Entry {
                        priority: route.priority,
                        methods,
                        target: target.clone(),
                    };
                    match PathPattern::parse(path) {
                        PathPattern::Exact(p) => {
                            table.exact.entry(p.to_owned()).or_default().push(entry)
                        }
                        // Merged with equal prefixes after sorting, so the build stays
                        // O(n log n) however many prefixes a host has.
                        PathPattern::Prefix(p) => table.prefixes.push((p.to_owned(), vec![entry])),
                    }
                }
            }
            router.len += 1;
        }
        let tables = std::iter::once(&mut router.any_host)
            .chain(router.by_host.values_mut())
            .chain(router.by_wildcard.values_mut());
        for table in tables {
            table
                .prefixes
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
            table.prefixes.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1.append(&mut later.1);
                }
                same
            });
            let lists = table
                .exact
                .values_mut()
                .chain(table.prefixes.iter_mut().map(|(_, e)| e));
            for entries in lists {
                entries.sort_by(|a, b| {
                    b.priority
                        .cmp(&a.priority)
                        .then_with(|| a.target.route_id.cmp(&b.target.route_id))
                });
                // A route listing two paths that normalise alike appears once.
                entries.dedup_by(|a, b| Arc::ptr_eq(&a.target, &b.target));
            }
        }
        router
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `host` lowercase without port; `path` as received, without the query.
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Match<'_> {
        let method = method_bit(method);
        let mut best: Option<(Rank, &RouteTarget)> = None;
        // Methods of routes whose host and path matched, for the `Allow` of a 405.
        let mut matched_methods: Option<u16> = None;

        // Wildcards: every suffix of the host that starts at a dot, longest first, so
        // `a.b.example.com` tries `.b.example.com`, `.example.com`, `.com`.
        let wildcards = host.match_indices('.').filter_map(|(i, _)| {
            let suffix = &host[i..];
            (i > 0)
                .then(|| self.by_wildcard.get(suffix))
                .flatten()
                .map(|t| (suffix.len(), t))
        });
        let tables = self
            .by_host
            .get(host)
            .map(|t| (usize::MAX, t))
            .into_iter()
            .chain(wildcards)
            .chain(std::iter::once((0, &self.any_host)));

        for (host_rank, table) in tables {
            let exact = table.exact.get(path).map(|e| (usize::MAX, e));
            let prefixes = table
                .prefixes
                .iter()
                .filter(|(p, _)| path.starts_with(p.as_str()))
                .map(|(p, e)| (p.len(), e));
            for (path_rank, entries) in exact.into_iter().chain(prefixes) {
                let rank = Rank {
                    path: path_rank,
                    host: host_rank,
                };
                if best.is_some_and(|(b, _)| b >= rank) {
                    // Candidates come most specific first: nothing later here can win.
                    break;
                }
                if let Some(entry) = entries.iter().find(|e| e.methods & method != 0) {
                    best = Some((rank, &entry.target));
                    break;
                }
                let seen = entries.iter().fold(0, |acc, e| acc | e.methods);
                matched_methods = Some(matched_methods.unwrap_or(0) | seen);
            }
        }
        match (best, matched_methods) {
            (Some((_, target)), _) => Match::Found(target),
            (None, Some(methods)) => Match::MethodNotAllowed {
                allow: METHODS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| methods & (1 << i) != 0)
                    .map(|(_, m)| *m)
                    .collect(),
            },
            (None, None) => Match::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::upstream::Upstream;
    use serde_json::json;

    fn route(mut json: serde_json::Value) -> (Route, Arc<UpstreamPool>) {
        json["upstream_id"] = "u".into();
        let route: Route = serde_json::from_value(json).unwrap();
        route.validate().unwrap();
        let up: Upstream =
            serde_json::from_value(json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]}))
                .unwrap();
        (route, Arc::new(UpstreamPool::build(&up).unwrap().pool))
    }

    fn outcome(router: &Router, host: &str, path: &str, method: &str) -> String {
        match router.lookup(host, path, method) {
            Match::Found(t) => t.route_id.clone(),
            Match::MethodNotAllowed { allow } => format!("405 {}", allow.join(",")),
            Match::NotFound => "404".into(),
        }
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
        assert!(matches!(router.lookup("x.io", "/a", "GET"), Match::Found(t) if t.route_id == "r"));
        assert!(
            matches!(router.lookup("z.y.io", "/bb", "GET"), Match::Found(t) if t.route_id == "r")
        );
    }
}
