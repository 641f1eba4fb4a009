//! The route table: host → path (exact, then longest prefix) → method.
//!
//! Built once per config revision, read by every request. Precedence, most specific
//! first: an exact path beats a prefix, a longer prefix beats a shorter one; at equal
//! path specificity an exact host beats a wildcard host (longer suffix first), which
//! beats a route without hosts; then higher `priority`; then the smaller route id.

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

#[derive(Debug)]
struct Entry {
    priority: i32,
    route_id: String,
    /// Bit i set = `METHODS[i]` allowed; 0 = any method.
    methods: u16,
    target: Arc<RouteTarget>,
}

impl Entry {
    fn allows(&self, method: u16) -> bool {
        self.methods == 0 || self.methods & method != 0
    }
}

/// Routes of one host class, indexed by path.
#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<String, Vec<Entry>>,
    /// Sorted by prefix length, longest first.
    prefixes: Vec<(String, Vec<Entry>)>,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Match<'a> {
    Found(&'a Arc<RouteTarget>),
    /// A route matches host and path but not the method; `allow` lists what would.
    MethodNotAllowed {
        allow: Vec<&'static str>,
    },
    NotFound,
}

#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, PathTable>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard: Vec<(String, PathTable)>,
    any_host: PathTable,
    len: usize,
}

/// Path specificity: exact beats any prefix; longer prefixes beat shorter ones.
type Specificity = (u8, usize);

fn method_bit(method: &str) -> u16 {
    METHODS
        .iter()
        .position(|m| *m == method)
        .map_or(0, |i| 1 << i)
}

impl Router {
    /// Builds the table; routes must be valid (the caller skips invalid ones).
    pub fn build(routes: Vec<(Route, Arc<UpstreamPool>)>) -> Self {
        let mut router = Router::default();
        for (route, upstream) in routes {
            let target = Arc::new(RouteTarget {
                route_id: route.id.clone(),
                upstream,
            });
            let methods = route
                .methods
                .iter()
                .fold(0u16, |acc, m| acc | method_bit(m));
            let hosts: Vec<Option<String>> = if route.hosts.is_empty() {
                vec![None]
            } else {
                route
                    .hosts
                    .iter()
                    .map(|h| Some(h.to_ascii_lowercase()))
                    .collect()
            };
            for host in hosts {
                let table = match host {
                    None => &mut router.any_host,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => {
                            let pos = router.wildcard.iter().position(|(s, _)| s == suffix);
                            let i = pos.unwrap_or_else(|| {
                                router
                                    .wildcard
                                    .push((suffix.to_owned(), PathTable::default()));
                                router.wildcard.len() - 1
                            });
                            &mut router.wildcard[i].1
                        }
                        None => router.by_host.entry(h).or_default(),
                    },
                };
                for path in &route.paths {
                    let entry = Entry {
                        priority: route.priority,
                        route_id: route.id.clone(),
                        methods,
                        target: target.clone(),
                    };
                    match PathPattern::parse(path) {
                        PathPattern::Exact(p) => {
                            table.exact.entry(p.to_owned()).or_default().push(entry)
                        }
                        PathPattern::Prefix(p) => {
                            match table.prefixes.iter_mut().find(|(q, _)| q == p) {
                                Some((_, entries)) => entries.push(entry),
                                None => table.prefixes.push((p.to_owned(), vec![entry])),
                            }
                        }
                    }
                }
            }
            router.len += 1;
        }
        router
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let tables = std::iter::once(&mut router.any_host)
            .chain(router.by_host.values_mut())
            .chain(router.wildcard.iter_mut().map(|(_, t)| t));
        for table in tables {
            table
                .prefixes
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
            let lists = table
                .exact
                .values_mut()
                .chain(table.prefixes.iter_mut().map(|(_, e)| e));
            for entries in lists {
                entries.sort_by(|a, b| {
                    b.priority
                        .cmp(&a.priority)
                        .then_with(|| a.route_id.cmp(&b.route_id))
                });
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

    /// `host` lowercase without port; `path` as received (no query).
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Match<'_> {
        let method = method_bit(method);
        // (path specificity, host rank) of the best match so far.
        let mut best: Option<((Specificity, u8), &Arc<RouteTarget>)> = None;
        let mut path_matched_methods: u16 = 0;
        let mut path_matched_any = false;
        let wildcard = self
            .wildcard
            .iter()
            .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, t)| (1u8, t));
        let tables = self
            .by_host
            .get(host)
            .map(|t| (2u8, t))
            .into_iter()
            .chain(wildcard)
            .chain(std::iter::once((0u8, &self.any_host)));
        for (host_rank, table) in tables {
            let candidates = table
                .exact
                .get(path)
                .map(|e| ((2u8, path.len()), e))
                .into_iter()
                .chain(
                    table
                        .prefixes
                        .iter()
                        .filter(|(p, _)| path.starts_with(p.as_str()))
                        .map(|(p, e)| ((1u8, p.len()), e)),
                );
            for (specificity, entries) in candidates {
                let rank = (specificity, host_rank);
                if best.as_ref().is_some_and(|(b, _)| *b >= rank) {
                    // Everything later in this table is less specific.
                    break;
                }
                path_matched_any = true;
                if let Some(entry) = entries.iter().find(|e| e.allows(method)) {
                    best = Some((rank, &entry.target));
                    break;
                }
                for e in entries {
                    path_matched_methods |= if e.methods == 0 { u16::MAX } else { e.methods };
                }
            }
        }
        match best {
            Some((_, target)) => Match::Found(target),
            None if path_matched_any => Match::MethodNotAllowed {
                allow: METHODS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| path_matched_methods & (1 << i) != 0)
                    .map(|(_, m)| *m)
                    .collect(),
            },
            None => Match::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::UpstreamPool;

    fn route(json: serde_json::Value) -> (Route, Arc<UpstreamPool>) {
        let mut json = json;
        json["upstream_id"] = "u".into();
        let route: Route = serde_json::from_value(json).unwrap();
        route.validate().unwrap();
        (route, Arc::new(UpstreamPool::for_tests("u")))
    }

    fn found(router: &Router, host: &str, path: &str, method: &str) -> String {
        match router.lookup(host, path, method) {
            Match::Found(t) => t.route_id.clone(),
            Match::MethodNotAllowed { allow } => format!("405 {}", allow.join(",")),
            Match::NotFound => "404".into(),
        }
    }

    #[test]
    fn precedence_table() {
        use serde_json::json;
        let router = Router::build(vec![
            route(json!({"id": "prefix-root", "paths": ["/*"]})),
            route(json!({"id": "prefix-api", "paths": ["/api/*"]})),
            route(json!({"id": "prefix-api-v1", "paths": ["/api/v1/*"]})),
            route(json!({"id": "exact-api-x", "paths": ["/api/x"]})),
            route(json!({"id": "b-low", "paths": ["/p"], "priority": 1})),
            route(json!({"id": "a-low", "paths": ["/p"], "priority": 1})),
            route(json!({"id": "high", "paths": ["/q"], "priority": 5})),
            route(json!({"id": "low", "paths": ["/q"], "priority": 1})),
            route(json!({"id": "host-exact", "paths": ["/h"], "hosts": ["a.example.com"]})),
            route(json!({"id": "host-wild", "paths": ["/h"], "hosts": ["*.example.com"]})),
            route(json!({"id": "host-wild-deep", "paths": ["/h"], "hosts": ["*.b.example.com"]})),
            route(json!({"id": "host-any", "paths": ["/h"]})),
            route(json!({"id": "host-prefix", "paths": ["/h*"], "hosts": ["a.example.com"]})),
            route(json!({"id": "get-only", "paths": ["/m"], "methods": ["GET", "HEAD"]})),
            route(json!({"id": "post-only", "paths": ["/m"], "methods": ["POST"], "priority": 9})),
            route(json!({"id": "put-only", "paths": ["/put"], "methods": ["PUT"]})),
        ]);
        let cases = [
            ("x.org", "/api/x", "GET", "exact-api-x"),
            ("x.org", "/api/y", "GET", "prefix-api"),
            ("x.org", "/api/v1/z", "GET", "prefix-api-v1"),
            ("x.org", "/other", "GET", "prefix-root"),
            ("x.org", "/p", "GET", "a-low"),
            ("x.org", "/q", "GET", "high"),
            ("a.example.com", "/h", "GET", "host-exact"),
            ("c.example.com", "/h", "GET", "host-wild"),
            ("c.b.example.com", "/h", "GET", "host-wild-deep"),
            ("example.com", "/h", "GET", "host-any"),
            ("a.example.com", "/hx", "GET", "host-prefix"),
            ("x.org", "/m", "GET", "get-only"),
            ("x.org", "/m", "POST", "post-only"),
            ("x.org", "/m", "DELETE", "prefix-root"),
        ];
        for (host, path, method, want) in cases {
            assert_eq!(
                found(&router, host, path, method),
                want,
                "{host}{path} {method}"
            );
        }
        // With no catch-all, a method mismatch is a 405 that lists what is allowed.
        let router = Router::build(vec![
            route(
                serde_json::json!({"id": "get-only", "paths": ["/m"], "methods": ["GET", "HEAD"]}),
            ),
            route(serde_json::json!({"id": "disabled-elsewhere", "paths": ["/n"]})),
        ]);
        assert_eq!(found(&router, "x", "/m", "POST"), "405 GET,HEAD");
        assert_eq!(found(&router, "x", "/nope", "GET"), "404");
        assert_eq!(router.len(), 2);
    }
}
