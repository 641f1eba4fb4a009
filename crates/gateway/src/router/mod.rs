//! The route table: host → path index → predicates → method.
//!
//! Built off the request path once per config revision and swapped in whole; read by
//! every request. A lookup costs a hash lookup per candidate host table plus one walk
//! down a radix tree as deep as the request path, whatever the number of routes.
//!
//! Per host table, routes are indexed by the literal text their paths start with:
//! exact paths in a hash map; prefix, template (`/users/{id}`) and regex (`~…`) paths in
//! a radix tree keyed by their literal prefix (`/users/` for `/users/{id}`, `/api/v` for
//! `~/api/v[0-9]+`), so only routes whose literal prefix is a prefix of the request path
//! are ever looked at.
//!
//! Precedence, most specific first:
//! 1. path: an exact path beats everything; then the longer literal prefix; at equal
//!    literal prefix a prefix path beats a template, which beats a regex;
//! 2. host: an exact host beats a wildcard (longer suffix first), which beats a route
//!    without hosts;
//! 3. the higher `priority`;
//! 4. the smaller route id.
//!
//! A candidate is taken only when its path matches, its predicates (headers, query,
//! cookies, remote address, time window) hold and it accepts the method. Candidates whose
//! predicates fail are skipped as if their path did not match (404 when nothing else
//! matches, as in APISIX); candidates that only refuse the method are skipped in favour
//! of less specific ones, and when nothing accepts the method the answer is 405 with the
//! methods that would have been accepted.
//!
//! This file is the index (host tables, radix trees, lookup and precedence);
//! `route.rs` compiles one route: its paths, methods, predicates and plugins.

mod route;

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use model::route::METHODS;

pub(crate) use self::route::cidrs;
pub use self::route::CompiledRoute;
use self::route::{method_bit, CompiledPath};
use crate::balancer::UpstreamPool;

/// What a lookup needs to know of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Lowercase, without port.
    pub host: &'a str,
    /// Normalised (see `normalize`), without the query.
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The client's address after the trusted-proxy rules.
    pub client_ip: Option<IpAddr>,
    /// Now, in milliseconds since the Unix epoch (time windows).
    pub now_ms: i64,
}
impl<'a> RequestInfo<'a> {
    /// What the route's plugins see of the request.
    pub fn view(&self) -> crate::core::phase::RequestView<'a> {
        crate::core::phase::RequestView {
            method: self.method,
            path: self.path,
            query: self.query,
            host: self.host,
            headers: self.headers,
            client_ip: self.client_ip,
        }
    }
}
/// What a request is sent to when it matches a route.
#[derive(Debug)]
pub struct RouteTarget {
    pub route: Arc<CompiledRoute>,
    pub upstream: Arc<UpstreamPool>,
}

impl RouteTarget {
    pub fn route_id(&self) -> &str {
        &self.route.route.id
    }
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Match<'a> {
    Found(&'a Arc<RouteTarget>),
    /// Routes match the request but not its method; `allow` lists what they accept.
    MethodNotAllowed {
        allow: Vec<&'static str>,
    },
    NotFound,
}

/// Hash maps of the route table: hosts and paths come from clients, so the hasher is
/// seeded per process; foldhash is several times faster than SipHash on short keys.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct Router {
    /// Routes listing the exact host.
    by_host: HashMap<Arc<str>, PathTable>,
    /// Routes listing `*.example.com`, keyed by the suffix with its dot: `.example.com`.
    by_wildcard: HashMap<Box<str>, PathTable>,
    /// Routes without hosts.
    any_host: PathTable,
    len: usize,
    /// Some route's predicates read request headers or cookies.
    reads_headers: bool,
}

/// Routes of one host, indexed by path.
#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<Arc<str>, Vec<Entry>>,
    tree: Node,
    /// Tree entries gathered during a build, before the tree is made from them at once.
    pending: Vec<(Arc<str>, Entry)>,
}

/// A radix tree node: `label` is the text from its parent; the key of a node is the
/// concatenation of the labels from the root.
#[derive(Debug, Default)]
struct Node {
    label: Box<[u8]>,
    /// Sorted by the first byte of their labels, which differ.
    children: Vec<Node>,
    /// Routes whose literal prefix is this node's key, in the order they are tried:
    /// prefixes, then templates, then regexes; each by priority, then route id.
    entries: Vec<Entry>,
}

/// One path of one route under one host.
#[derive(Debug)]
struct Entry {
    kind: Kind,
    priority: i32,
    methods: u16,
    /// Index into the route's compiled paths.
    path: u16,
    target: Arc<RouteTarget>,
}

/// Path kinds at equal literal prefix, most specific first when sorted descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Regex = 0,
    Template = 1,
    Prefix = 2,
    Exact = 3,
}
/// How specific a candidate is; compared field by field, the greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// Exact paths rank above everything: `u64::MAX`; others literal length × 4 + kind.
    path: u64,
    /// Exact host `usize::MAX`; wildcard by suffix length; no host 0.
    host: usize,
}

fn path_rank(kind: Kind, literal_len: usize) -> u64 {
    match kind {
        Kind::Exact => u64::MAX,
        _ => (literal_len as u64) * 4 + kind as u64,
    }
}

impl Router {
    /// Builds the table from compiled, enabled routes and their upstream pools.
    pub fn build(routes: Vec<(Arc<CompiledRoute>, Arc<UpstreamPool>)>) -> Self {
        let mut router = Router::default();
        for (compiled, upstream) in routes {
            let route = &compiled.route;
            let target = Arc::new(RouteTarget {
                route: compiled.clone(),
                upstream,
            });
            let any_host = [None];
            let hosts: &[Option<Arc<str>>] = if compiled.hosts.is_empty() {
                &any_host
            } else {
                &compiled.hosts
            };
            for host in hosts {
                let table = match host {
                    None => &mut router.any_host,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => router.by_wildcard.entry(suffix.into()).or_default(),
                        None => router.by_host.entry(h.clone()).or_default(),
                    },
                };
                for (i, path) in compiled.paths.iter().enumerate() {
                    let (kind, key) = match path {
                        CompiledPath::Exact(p) => (Kind::Exact, p),
                        CompiledPath::Prefix(p) => (Kind::Prefix, p),
                        CompiledPath::Template { literal, .. } => (Kind::Template, literal),
                        CompiledPath::Regex { literal, .. } => (Kind::Regex, literal),
                    };
                    let entry = Entry {
                        kind,
                        priority: route.priority,
                        methods: compiled.methods,
                        // Validation caps a route's paths far below u16::MAX.
                        path: u16::try_from(i).unwrap_or(u16::MAX),
                        target: target.clone(),
                    };
                    match kind {
                        Kind::Exact => table.exact.entry(key.clone()).or_default().push(entry),
                        _ => table.pending.push((key.clone(), entry)),
                    }
                }
            }
            router.len += 1;
            router.reads_headers |= compiled.reads_headers();
        }
        let tables = std::iter::once(&mut router.any_host)
            .chain(router.by_host.values_mut())
            .chain(router.by_wildcard.values_mut());
        for table in tables {
            for entries in table.exact.values_mut() {
                sort_entries(entries);
            }
            let mut pending = std::mem::take(&mut table.pending);
            pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let (keys, entries): (Vec<Arc<str>>, Vec<Entry>) = pending.into_iter().unzip();
            let mut entries: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
            table.tree = Node::from_sorted(&keys, &mut entries, 0, Box::default());
        }
        router
    }

    /// Whether a lookup may read the request's headers; when not, callers may pass none.
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn lookup(&self, req: &RequestInfo<'_>) -> Match<'_> {
        let method = method_bit(req.method);
        let host = req.host;
        let mut search = Search {
            req,
            method,
            best: None,
            allowed: None,
        };
        if let Some(table) = self.by_host.get(host) {
            search.table(table, usize::MAX);
        }
        // Wildcards: every suffix of the host that starts at a dot, longest first, so
        // `a.b.example.com` tries `.b.example.com`, `.example.com`, `.com`.
        if !self.by_wildcard.is_empty() {
            for (i, _) in host.match_indices('.').filter(|(i, _)| *i > 0) {
                let suffix = &host[i..];
                if let Some(table) = self.by_wildcard.get(suffix) {
                    search.table(table, suffix.len());
                }
            }
        }
        search.table(&self.any_host, 0);
        match (search.best, search.allowed) {
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

fn sort_entries(entries: &mut Vec<Entry>) {
    entries.sort_by(|a, b| {
        b.kind
            .cmp(&a.kind)
            .then_with(|| b.priority.cmp(&a.priority))
            .then_with(|| a.target.route_id().cmp(b.target.route_id()))
            .then_with(|| a.path.cmp(&b.path))
    });
    // A route listing two paths that index alike (`/a*` twice, or `/a` and `/a`)
    // appears once; templates and regexes with the same literal prefix differ.
    entries.dedup_by(|a, b| {
        Arc::ptr_eq(&a.target, &b.target)
            && a.kind == b.kind
            && matches!(a.kind, Kind::Exact | Kind::Prefix)
    });
}

/// The state of one lookup across host tables.
struct Search<'r, 'q> {
    req: &'q RequestInfo<'q>,
    method: u16,
    best: Option<(Rank, &'r Arc<RouteTarget>)>,
    /// Methods of candidates that matched all but the method, for the `Allow` of a 405.
    allowed: Option<u16>,
}

impl<'r> Search<'r, '_> {
    fn table(&mut self, table: &'r PathTable, host: usize) {
        let path = self.req.path;
        if let Some(entries) = table.exact.get(path) {
            if self.entries(entries, path.len(), host) {
                return;
            }
        }
        // Deepest node first: the longer literal prefix is the more specific.
        table
            .tree
            .deepest_first(path.as_bytes(), 0, &mut |depth, node| {
                self.entries(&node.entries, depth, host)
            });
    }

    /// Tries candidates in order; true when nothing later in this table can win.
    fn entries(&mut self, entries: &'r [Entry], depth: usize, host: usize) -> bool {
        for entry in entries {
            let rank = Rank {
                path: path_rank(entry.kind, depth),
                host,
            };
            if self.best.is_some_and(|(best, _)| best >= rank) {
                // Candidates come most specific first: nothing later here can win.
                return true;
            }
            let route = &entry.target.route;
            let path_matches = match entry.kind {
                Kind::Exact | Kind::Prefix => true,
                Kind::Template | Kind::Regex => route
                    .paths
                    .get(usize::from(entry.path))
                    .is_some_and(|p| p.matches_rest(self.req.path)),
            };
            if !path_matches || !route.accepts(self.req) {
                continue;
            }
            if entry.methods & self.method != 0 {
                self.best = Some((rank, &entry.target));
                return true;
            }
            self.allowed = Some(self.allowed.unwrap_or(0) | entry.methods);
        }
        false
    }
}

impl Node {
    /// The subtree holding `keys` (sorted; all sharing their first `depth` bytes, the
    /// new node's key) with their entries, built bottom-up in one pass: children are
    /// the runs of keys with the same next byte, each labelled with the run's longest
    /// common prefix (that of its first and last key, since the keys are sorted).
    fn from_sorted(
        keys: &[Arc<str>],
        entries: &mut [Option<Entry>],
        depth: usize,
        label: Box<[u8]>,
    ) -> Node {
        let mut node = Node {
            label,
            children: Vec::new(),
            entries: Vec::new(),
        };
        // Keys ending here sort first.
        let here = keys.partition_point(|k| k.len() == depth);
        node.entries = entries[..here]
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        sort_entries(&mut node.entries);
        let mut i = here;
        while i < keys.len() {
            let first = keys[i].as_bytes()[depth];
            let end = i + keys[i..].partition_point(|k| k.as_bytes()[depth] == first);
            let (a, b) = (keys[i].as_bytes(), keys[end - 1].as_bytes());
            let common = a[depth..]
                .iter()
                .zip(&b[depth..])
                .take_while(|(x, y)| x == y)
                .count();
            node.children.push(Node::from_sorted(
                &keys[i..end],
                &mut entries[i..end],
                depth + common,
                a[depth..depth + common].into(),
            ));
            i = end;
        }
        node
    }

    /// Offers `visit` each node holding entries whose key is a prefix of `path`, with
    /// its depth (key length), deepest first, until `visit` returns true. This node's
    /// key is `path[..depth]`. Recursion as deep as the tree, so no allocation.
    fn deepest_first<'n>(
        &'n self,
        path: &[u8],
        depth: usize,
        visit: &mut impl FnMut(usize, &'n Node) -> bool,
    ) -> bool {
        let rest = &path[depth..];
        if let Some(&first) = rest.first() {
            if let Ok(i) = self.children.binary_search_by(|c| c.label[0].cmp(&first)) {
                let child = &self.children[i];
                if rest.starts_with(&child.label)
                    && child.deepest_first(path, depth + child.label.len(), visit)
                {
                    return true;
                }
            }
        }
        !self.entries.is_empty() && visit(depth, self)
    }
}

#[cfg(test)]
mod tests {
    use model::route::{PathPattern, Route, TemplatePart};
    use model::upstream::Upstream;
    use regex::Regex;
    use serde_json::json;

    use super::*;

    fn pool() -> Arc<UpstreamPool> {
        static POOL: std::sync::OnceLock<Arc<UpstreamPool>> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            let up: Upstream = serde_json::from_value(
                json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]}),
            )
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

    /// A deliberately simple matcher: every route, every host and path, compared by the
    /// documented precedence. The indexed router must agree with it.
    fn reference(
        routes: &[(Arc<CompiledRoute>, Arc<UpstreamPool>)],
        req: &RequestInfo<'_>,
    ) -> String {
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
            if !compiled.accepts(req) {
                continue;
            }
            if compiled.methods & method_bit(req.method) == 0 {
                allowed = Some(allowed.unwrap_or(0) | compiled.methods);
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
        use super::*;
        use proptest::prelude::*;

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
                            let mut s: Vec<String> =
                                segments.iter().map(|s| s.to_string()).collect();
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
}
