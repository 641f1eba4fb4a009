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
//! The index (host tables and trees) holds route slots, not targets: a config whose
//! routes did not change but whose upstreams or plugins did (an upstream moved to other
//! nodes, a registered node came) gets new targets over the same index instead of a
//! new index, a copy of one pointer per route instead of a rebuild.
//!
//! This file is the index (host tables, radix trees, lookup and precedence) and
//! [`CompiledRoute::check`], one route's verdict on a request with the same tests in
//! the same order, for the route tester to explain the routes a lookup never looks
//! at; `route.rs` compiles one route: its paths, methods, predicates and plugins.

mod route;

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use model::route::METHODS;

pub use self::route::CompiledRoute;
pub(crate) use self::route::{cidrs, Failure};
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
    index: Arc<Index>,
    /// Slot → what a request matching that slot's route is sent to; every route of the
    /// table, in the order given (the route tester explains each).
    targets: Vec<Arc<RouteTarget>>,
}

/// Where each route's paths are found: what a new table of the same routes reuses.
#[derive(Debug, Default)]
struct Index {
    /// Routes listing the exact host.
    by_host: HashMap<Arc<str>, PathTable>,
    /// Routes listing `*.example.com`, keyed by the suffix with its dot: `.example.com`.
    by_wildcard: HashMap<Box<str>, PathTable>,
    /// Routes without hosts.
    any_host: PathTable,
    /// Slot → the route indexed in it.
    routes: Vec<Arc<CompiledRoute>>,
    /// Some route's predicates read request headers or cookies.
    reads_headers: bool,
}

/// A built table's index, kept to build the next table over it when its routes are
/// the same ([`Router::build_over`]).
#[derive(Debug, Clone)]
pub struct RouterIndex(Arc<Index>);

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
    /// The route's place in [`Index::routes`] and [`Router::targets`].
    slot: u32,
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

/// Host ranks: an exact host above every wildcard (ranked by suffix length), a route
/// without hosts below all.
const EXACT_HOST: usize = usize::MAX;
const ANY_HOST: usize = 0;

fn wildcard_rank(suffix: &str) -> usize {
    suffix.len()
}

/// How a route's host is indexed.
enum HostKey<'h> {
    Exact(&'h str),
    /// `*.example.com`, by its suffix with the dot: `.example.com`.
    Wildcard(&'h str),
}

impl<'h> HostKey<'h> {
    /// `host` is lowercase (see `CompiledRoute::hosts`).
    fn of(host: &'h str) -> Self {
        match host.strip_prefix('*') {
            Some(suffix) => HostKey::Wildcard(suffix),
            None => HostKey::Exact(host),
        }
    }
}

/// The wildcard keys a request's host falls under, longest first: every suffix that
/// starts at a dot after the first character, so `a.b.example.com` gives
/// `.b.example.com`, `.example.com`, `.com`, and `example.com` is not under
/// `.example.com`.
#[inline]
fn wildcard_suffixes(host: &str) -> impl Iterator<Item = &str> {
    host.match_indices('.')
        .filter(|(i, _)| *i > 0)
        .map(move |(i, _)| &host[i..])
}

impl Router {
    /// Builds the table from compiled, enabled routes and their upstream pools.
    pub fn build(routes: Vec<impl Into<RouteTarget>>) -> Self {
        Self::build_over(None, routes.into_iter().map(Into::into).collect())
    }

    /// Builds the table of `targets` over `previous`'s index when it was built from
    /// the very same routes (the same compiled objects, in the same order): only the
    /// targets are new. Otherwise indexes the routes anew.
    pub fn build_over(previous: Option<&RouterIndex>, targets: Vec<RouteTarget>) -> Self {
        let targets: Vec<Arc<RouteTarget>> = targets.into_iter().map(Arc::new).collect();
        let same_routes = |index: &Index| {
            index.routes.len() == targets.len()
                && index
                    .routes
                    .iter()
                    .zip(&targets)
                    .all(|(indexed, target)| Arc::ptr_eq(indexed, &target.route))
        };
        let index = match previous {
            Some(RouterIndex(index)) if same_routes(index) => index.clone(),
            _ => Arc::new(Index::build(
                targets.iter().map(|t| t.route.clone()).collect(),
            )),
        };
        Router { index, targets }
    }

    /// This table's index, for the next build ([`Router::build_over`]).
    pub fn index(&self) -> RouterIndex {
        RouterIndex(self.index.clone())
    }

    /// Whether the two tables share one index (the later was built over the earlier's).
    pub fn shares_index_with(&self, other: &Router) -> bool {
        Arc::ptr_eq(&self.index, &other.index)
    }

    /// Whether a lookup may read the request's headers; when not, callers may pass none.
    pub fn reads_headers(&self) -> bool {
        self.index.reads_headers
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Every route of the table, in the order it was built from.
    pub fn routes(&self) -> &[Arc<RouteTarget>] {
        &self.targets
    }

    pub fn lookup(&self, req: &RequestInfo<'_>) -> Match<'_> {
        let method = method_bit(req.method);
        let host = req.host;
        let index = &*self.index;
        let mut search = Search {
            req,
            routes: &index.routes,
            method,
            best: None,
            allowed: None,
        };
        if let Some(table) = index.by_host.get(host) {
            search.table(table, EXACT_HOST);
        }
        if !index.by_wildcard.is_empty() {
            for suffix in wildcard_suffixes(host) {
                if let Some(table) = index.by_wildcard.get(suffix) {
                    search.table(table, wildcard_rank(suffix));
                }
            }
        }
        search.table(&index.any_host, ANY_HOST);
        match (search.best, search.allowed) {
            (Some((_, slot)), _) => Match::Found(&self.targets[slot as usize]),
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

fn sort_entries(entries: &mut Vec<Entry>, routes: &[Arc<CompiledRoute>]) {
    let id = |e: &Entry| routes[e.slot as usize].route.id.as_str();
    entries.sort_by(|a, b| {
        b.kind
            .cmp(&a.kind)
            .then_with(|| b.priority.cmp(&a.priority))
            .then_with(|| id(a).cmp(id(b)))
            .then_with(|| a.path.cmp(&b.path))
    });
    // A route listing two paths that index alike (`/a*` twice, or `/a` and `/a`)
    // appears once; templates and regexes with the same literal prefix differ.
    entries.dedup_by(|a, b| {
        a.slot == b.slot && a.kind == b.kind && matches!(a.kind, Kind::Exact | Kind::Prefix)
    });
}

impl Index {
    /// Indexes `routes`; slot `i` is `routes[i]`.
    fn build(routes: Vec<Arc<CompiledRoute>>) -> Self {
        let mut index = Index::default();
        for (slot, compiled) in routes.iter().enumerate() {
            let route = &compiled.route;
            let any_host = [None];
            let hosts: &[Option<Arc<str>>] = if compiled.hosts.is_empty() {
                &any_host
            } else {
                &compiled.hosts
            };
            for host in hosts {
                let table = match host {
                    None => &mut index.any_host,
                    Some(h) => match HostKey::of(h) {
                        HostKey::Wildcard(suffix) => {
                            index.by_wildcard.entry(suffix.into()).or_default()
                        }
                        HostKey::Exact(_) => index.by_host.entry(h.clone()).or_default(),
                    },
                };
                for (i, path) in compiled.paths.iter().enumerate() {
                    let (kind, key) = (path.kind(), path.literal());
                    let entry = Entry {
                        kind,
                        priority: route.priority,
                        methods: compiled.methods,
                        // Validation caps a route's paths far below u16::MAX.
                        path: u16::try_from(i).unwrap_or(u16::MAX),
                        // A table holds far fewer than u32::MAX routes.
                        slot: u32::try_from(slot).unwrap_or(u32::MAX),
                    };
                    match kind {
                        Kind::Exact => table.exact.entry(key.clone()).or_default().push(entry),
                        _ => table.pending.push((key.clone(), entry)),
                    }
                }
            }
            index.reads_headers |= compiled.reads_headers();
        }
        let tables = std::iter::once(&mut index.any_host)
            .chain(index.by_host.values_mut())
            .chain(index.by_wildcard.values_mut());
        for table in tables {
            for entries in table.exact.values_mut() {
                sort_entries(entries, &routes);
            }
            let mut pending = std::mem::take(&mut table.pending);
            pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let (keys, entries): (Vec<Arc<str>>, Vec<Entry>) = pending.into_iter().unzip();
            let mut entries: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
            table.tree = Node::from_sorted(&keys, &mut entries, &routes, 0, Box::default());
        }
        index.routes = routes;
        index
    }
}

/// The state of one lookup across host tables.
struct Search<'r, 'q> {
    req: &'q RequestInfo<'q>,
    /// Slot → route.
    routes: &'r [Arc<CompiledRoute>],
    method: u16,
    /// The best candidate so far and its slot.
    best: Option<(Rank, u32)>,
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
            let route = &self.routes[entry.slot as usize];
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
            if CompiledRoute::accepts_method(entry.methods, self.method) {
                self.best = Some((rank, entry.slot));
                return true;
            }
            self.allowed = Some(self.allowed.unwrap_or(0) | entry.methods);
        }
        false
    }
}

/// How far a request gets through one route's checks, taken in the router's order
/// (host, path, predicates, method) with the router's own tests; the route tester's
/// view of what [`Router::lookup`] does for many routes at once through the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// None of its hosts is the request's.
    Host,
    /// None of its paths matches.
    Path,
    /// A predicate fails.
    Predicate(Failure),
    /// It does not accept the method.
    Method,
    /// It takes the request.
    Takes(Fit),
}

/// Where a route takes a request: which of its paths and hosts, and how specifically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fit {
    /// Index into the route's `paths`.
    pub path: usize,
    /// Index into its lowercase hosts ([`CompiledRoute::host`]); `None` for a route
    /// without hosts.
    pub host: Option<usize>,
    rank: Rank,
}

/// The precedence rule that puts one route taking a request ahead of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ahead {
    /// A more specific path (exact, then the longer literal prefix, then prefix over
    /// template over regex).
    Path,
    /// An equally specific path under a more specific host.
    Host,
    /// Equally specific, a higher priority.
    Priority,
    /// Equal in all of those, the smaller route id.
    Id,
}

impl CompiledRoute {
    /// The verdict of this route alone on `req`.
    pub(crate) fn check(&self, req: &RequestInfo<'_>) -> Verdict {
        let Some((host, host_rank)) = self.host_fit(req.host) else {
            return Verdict::Host;
        };
        let Some((path, path_rank)) = self.path_fit(req.path) else {
            return Verdict::Path;
        };
        if let Some(failure) = self.failure(req) {
            return Verdict::Predicate(failure);
        }
        if !CompiledRoute::accepts_method(self.methods, method_bit(req.method)) {
            return Verdict::Method;
        }
        Verdict::Takes(Fit {
            path,
            host,
            rank: Rank {
                path: path_rank,
                host: host_rank,
            },
        })
    }

    /// The most specific of its hosts the request's host is under, with its rank.
    fn host_fit(&self, host: &str) -> Option<(Option<usize>, usize)> {
        if self.hosts.is_empty() {
            return Some((None, ANY_HOST));
        }
        self.hosts
            .iter()
            .enumerate()
            .filter_map(|(i, pattern)| {
                let rank = match HostKey::of(pattern.as_deref()?) {
                    HostKey::Exact(exact) => (exact == host).then_some(EXACT_HOST)?,
                    HostKey::Wildcard(suffix) => wildcard_suffixes(host)
                        .any(|s| s == suffix)
                        .then(|| wildcard_rank(suffix))?,
                };
                Some((Some(i), rank))
            })
            .max_by_key(|(_, rank)| *rank)
    }

    /// The most specific of its paths that matches, with its rank; the first listed
    /// among equals, as the index tries them.
    fn path_fit(&self, path: &str) -> Option<(usize, u64)> {
        self.paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.matches(path))
            .map(|(i, p)| {
                let literal = match p {
                    CompiledPath::Exact(_) => path.len(),
                    _ => p.literal().len(),
                };
                (i, path_rank(p.kind(), literal))
            })
            .min_by_key(|&(i, rank)| (std::cmp::Reverse(rank), i))
    }

    /// Its host at `index` of [`Fit::host`], lowercase as matched.
    pub(crate) fn host(&self, index: usize) -> Option<&str> {
        self.hosts.get(index).and_then(|h| h.as_deref())
    }

    /// Why `self` (taking the request as `fit`) comes before `other` (taking it as
    /// `other_fit`) in the router's precedence; `None` when it does not.
    pub(crate) fn ahead_of(
        &self,
        fit: &Fit,
        other: &CompiledRoute,
        other_fit: &Fit,
    ) -> Option<Ahead> {
        use std::cmp::Ordering::{Greater, Less};
        match fit.rank.path.cmp(&other_fit.rank.path) {
            Greater => return Some(Ahead::Path),
            Less => return None,
            _ => {}
        }
        match fit.rank.host.cmp(&other_fit.rank.host) {
            Greater => return Some(Ahead::Host),
            Less => return None,
            _ => {}
        }
        match self.route.priority.cmp(&other.route.priority) {
            Greater => return Some(Ahead::Priority),
            Less => return None,
            _ => {}
        }
        (self.route.id < other.route.id).then_some(Ahead::Id)
    }
}

impl CompiledPath {
    fn kind(&self) -> Kind {
        match self {
            CompiledPath::Exact(_) => Kind::Exact,
            CompiledPath::Prefix(_) => Kind::Prefix,
            CompiledPath::Template { .. } => Kind::Template,
            CompiledPath::Regex { .. } => Kind::Regex,
        }
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
        routes: &[Arc<CompiledRoute>],
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
        sort_entries(&mut node.entries, routes);
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
                routes,
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
