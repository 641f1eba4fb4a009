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
use crate::core::phase::Chain;

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
    /// The client's connection is TLS.
    pub tls: bool,
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
            tls: self.tls,
            scope: &crate::core::phase::NO_SCOPE,
        }
    }
}
/// What a request is sent to when it matches a route.
#[derive(Debug)]
pub struct RouteTarget {
    pub route: Arc<CompiledRoute>,
    pub upstream: Arc<UpstreamPool>,
    /// The route's effective plugins (its own over its service's over the global
    /// rules'), in running order.
    pub plugins: Arc<Chain>,
}

/// A route without plugins (tests, benches).
impl From<(Arc<CompiledRoute>, Arc<UpstreamPool>)> for RouteTarget {
    fn from((route, upstream): (Arc<CompiledRoute>, Arc<UpstreamPool>)) -> Self {
        Self {
            route,
            upstream,
            plugins: Arc::default(),
        }
    }
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

use crate::HashMap;

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
    pub fn build(routes: Vec<impl Into<RouteTarget>>) -> Self {
        let mut router = Router::default();
        for target in routes {
            let target = Arc::new(target.into());
            let compiled = target.route.clone();
            let route = &compiled.route;
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
