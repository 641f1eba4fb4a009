//! Upstream pools: the resolved nodes of one upstream, its load-balancing state and the
//! health of its nodes.
//!
//! A pool is built once per upstream definition (names are resolved then, off the
//! request path) and shared by every route that names the upstream and across reloads
//! that leave the upstream unchanged, so balancing and health state are shared too.
//!
//! ```text
//! pick(request, tried) → healthy node not tried (policy: roundrobin | random |
//!     least_conn | chash | ewma); none healthy → any node not tried; none → None
//! Pick (held by the request: counts as in flight) → record(outcome) → ewma latency,
//!     passive health (consecutive failures eject the node for `eject_for`)
//! active probes (health.rs) → record_probe → node up/down
//! ```
//!
//! This file holds the pool (building it, picking, the [`Pick`] a request holds); one
//! file per policy (`roundrobin.rs`, `random.rs`, `least_conn.rs`, `chash.rs`,
//! `ewma.rs`) and the nodes' passive and active health state (`health_state.rs`).

mod chash;
mod ewma;
mod health_state;
mod least_conn;
mod random;
mod roundrobin;

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use model::upstream::{LoadBalancing, PassHost, Scheme, Upstream};
use pingora_core::upstreams::peer::HttpPeer;

use crate::runtime::Effects;

use self::chash::Chash;
use self::ewma::{Ewma, PeakEwma};
pub(crate) use self::health_state::ActivePolicy;
pub use self::health_state::NodeHealthReport;
use self::health_state::{HealthCounters, PassivePolicy};
use self::least_conn::LeastConn;
use self::random::WeightedRandom;
use self::roundrobin::RoundRobin;

/// Connection and I/O timeouts for requests to this pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// How long an idle connection is kept for reuse (`keepalive_pool.idle_timeout`).
    pub idle: Duration,
}

/// The `Host` header requests to a pool's nodes carry (`pass_host`, compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRewrite {
    /// The client's `Host`, unchanged (`pass_host: pass`).
    Pass,
    /// The picked node's [`Node::host_header`] (`pass_host: node`).
    Node,
    /// This host (`pass_host: rewrite` with its `upstream_host`).
    Rewrite(Arc<str>),
}

/// One upstream's nodes, its balancer and its health checks, with the settings the
/// request path reads compiled once here (the model `Upstream` is not kept).
#[derive(Debug)]
pub struct UpstreamPool {
    pub id: String,
    /// Protocol spoken to the nodes (their peers carry the TLS settings).
    pub scheme: Scheme,
    /// Extra attempts, each on another node (`retries`).
    pub retries: u32,
    /// Statuses that make an idempotent request try another node, sorted and
    /// deduplicated; see [`UpstreamPool::retries_on`].
    retry_on_statuses: Box<[u16]>,
    /// The Host header sent to the nodes.
    pub pass_host: HostRewrite,
    pub timeouts: PoolTimeouts,
    /// Nodes with a weight above 0 whose address is known; a pick's `index` points here.
    nodes: Vec<Node>,
    balancer: Balancer,
    active: Option<ActivePolicy>,
    passive: Option<PassivePolicy>,
    /// Origin of the nanosecond clock of `Node::ejected_until`.
    epoch: Instant,
}

/// One node of a pool and its shared state.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    /// The host as configured (a name or an address): TLS server name, probe Host.
    pub host: String,
    /// The Host header for `pass_host: node`: `host`, with `:port` unless the port is
    /// the scheme's default; made once here rather than per request.
    pub host_header: String,
    /// The Pingora peer requests to this node use (scheme, TLS, CA, timeouts), set up
    /// once with the pool; each request clones it.
    pub peer: HttpPeer,
    pub weight: i64,
    /// Picks of this node not yet dropped: least_conn and ewma read it.
    in_flight: AtomicUsize,
    /// Peak-EWMA latency estimate; only the ewma policy uses it.
    ewma: Mutex<Ewma>,
    /// The active checks' verdict: set after `unhealthy.failures` failed probes in a
    /// row, cleared after `healthy.successes` good ones. Read on every pick.
    active_down: AtomicBool,
    /// End of the passive ejection in nanoseconds since the pool's epoch; 0 = never
    /// ejected. Read on every pick.
    ejected_until: AtomicU64,
    /// The counters behind the two flags above; written by outcomes and probes only.
    health: Mutex<HealthCounters>,
}

/// Why an upstream cannot be served at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    /// Validation keeps durations in range; this guards pools built from unchecked input.
    #[error("{field} must be a number of seconds above 0, not {value}")]
    BadDuration { field: &'static str, value: f64 },
    /// Validation checks the CA bundle too; kept for unchecked input.
    #[error("tls.ca {0}")]
    BadCa(String),
}

/// A pool and what was left out of it (nodes whose host does not resolve).
#[derive(Debug)]
pub struct BuiltPool {
    pub pool: UpstreamPool,
    pub warnings: Vec<String>,
}

/// What a pick needs from the request (only chash uses it).
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub client_ip: Option<IpAddr>,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
}

/// One chosen node. The request holds it until the upstream response is over: while it
/// lives it counts as in flight on its node (least_conn, ewma). Report the outcome with
/// [`Pick::record`]; dropping it releases the in-flight count.
pub struct Pick {
    pub index: usize,
    pub addr: SocketAddr,
    pool: Arc<UpstreamPool>,
    started: Instant,
}

/// How a request to a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered with this status after this time to the response header.
    Status(u16, Duration),
    /// Connect error, timeout or reset before a response header.
    Failed,
}

/// A node's health as seen now, for the heartbeat.
impl UpstreamPool {
    /// Resolves the nodes and prepares the balancer. A node whose host does not resolve
    /// is left out with a warning; a pool left without nodes still serves its routes,
    /// with 502, since the route exists and only its upstream is unreachable.
    ///
    /// Resolving a DNS name blocks, so this runs off the async runtime's workers.
    pub fn build(upstream: &Upstream) -> Result<BuiltPool, PoolError> {
        Self::build_with(upstream, Effects::Live)
    }

    /// [`build`](Self::build); in a dry build host names are not resolved and their
    /// nodes left out without a warning (the pool is never picked from).
    pub fn build_with(upstream: &Upstream, effects: Effects) -> Result<BuiltPool, PoolError> {
        let timeouts = PoolTimeouts {
            connect: seconds("timeout.connect", upstream.timeout.connect)?,
            read: seconds("timeout.read", upstream.timeout.read)?,
            write: seconds("timeout.send", upstream.timeout.send)?,
            idle: seconds(
                "keepalive_pool.idle_timeout",
                upstream.keepalive_pool.idle_timeout,
            )?,
        };
        let checks = upstream.checks.as_ref();
        let active = match checks.and_then(|c| c.active.as_ref()) {
            Some(a) => Some(ActivePolicy {
                kind: a.kind,
                http_path: a.http_path.clone(),
                host: a.host.clone(),
                interval: seconds("checks.active.interval", a.interval)?,
                timeout: seconds("checks.active.timeout", a.timeout)?,
                statuses: a.healthy.statuses.clone(),
                successes: a.healthy.successes.max(1),
                failures: a.unhealthy.failures.max(1),
            }),
            None => None,
        };
        let passive = match checks.and_then(|c| c.passive.as_ref()) {
            Some(p) => Some(PassivePolicy {
                statuses: p.unhealthy.http_statuses.clone(),
                failures: p.unhealthy.failures.max(1),
                eject_for: seconds("checks.passive.eject_for", p.eject_for)?,
            }),
            None => None,
        };

        let ca = upstream
            .tls
            .as_ref()
            .and_then(|tls| tls.ca.as_deref())
            .map(crate::tls::PeerCa::from_pem)
            .transpose()
            .map_err(PoolError::BadCa)?;
        let peer = |addr: SocketAddr, host: &str| {
            let mut peer = HttpPeer::new(addr, false, String::new());
            crate::tls::configure_peer(&mut peer, upstream.scheme, upstream.tls.as_ref(), host);
            if let Some(ca) = &ca {
                crate::tls::set_peer_ca(&mut peer, ca);
            }
            peer.options.connection_timeout = Some(timeouts.connect);
            peer.options.read_timeout = Some(timeouts.read);
            peer.options.write_timeout = Some(timeouts.write);
            peer.options.idle_timeout = Some(timeouts.idle);
            peer
        };
        let epoch = Instant::now();
        let mut nodes = Vec::with_capacity(upstream.nodes.len());
        let mut warnings = Vec::new();
        for (i, node) in upstream.nodes.iter().enumerate() {
            if node.weight <= 0 {
                continue;
            }
            // Validation keeps ports in 1..=65535; a bad value is reported, not trusted.
            let Ok(port) = u16::try_from(node.port) else {
                warnings.push(format!("nodes[{i}].port {} is out of range", node.port));
                continue;
            };
            let addr = match effects {
                Effects::Live => resolve(&node.host, port),
                Effects::Dry => node
                    .host
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, port)),
            };
            match (addr, effects) {
                (Some(addr), _) => nodes.push(Node::new(
                    addr,
                    node.host.clone(),
                    node.weight,
                    peer(addr, &node.host),
                    epoch,
                )),
                (None, Effects::Live) => warnings.push(format!(
                    "nodes[{i}].host {:?} does not resolve; node left out",
                    node.host
                )),
                (None, Effects::Dry) => {}
            }
        }
        let balancer = Balancer::new(upstream, &nodes);
        let mut retry_on_statuses = upstream.retry_on_statuses.clone();
        retry_on_statuses.sort_unstable();
        retry_on_statuses.dedup();
        let pass_host = match (upstream.pass_host, &upstream.upstream_host) {
            (PassHost::Pass, _) => HostRewrite::Pass,
            (PassHost::Node, _) => HostRewrite::Node,
            (PassHost::Rewrite, Some(host)) => HostRewrite::Rewrite(Arc::from(host.as_str())),
            // Validation requires upstream_host with rewrite; without one the client's
            // Host is kept, as before.
            (PassHost::Rewrite, None) => HostRewrite::Pass,
        };
        let pool = Self {
            id: upstream.id.clone(),
            scheme: upstream.scheme,
            retries: upstream.retries,
            retry_on_statuses: retry_on_statuses.into_boxed_slice(),
            pass_host,
            timeouts,
            nodes,
            balancer,
            active,
            passive,
            epoch,
        };
        Ok(BuiltPool { pool, warnings })
    }

    /// Picks a healthy node not in `exclude` (indexes already tried by this request).
    /// If every node left is unhealthy, picks among those: better a maybe-dead node than
    /// a certain 502 (as APISIX and nginx do). `None` when no node is left.
    pub fn pick(self: &Arc<Self>, input: &HashInput<'_>, exclude: &[usize]) -> Option<Pick> {
        let now = self.now_if_passive();
        let healthy = |i: usize| !exclude.contains(&i) && self.nodes[i].is_available(now);
        let index = self
            .balancer
            .pick(&self.nodes, input, healthy)
            .or_else(|| {
                self.balancer
                    .pick(&self.nodes, input, |i| !exclude.contains(&i))
            })?;
        let node = &self.nodes[index];
        node.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Pick {
            index,
            addr: node.addr,
            pool: Arc::clone(self),
            started: Instant::now(),
        })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Number of nodes requests can be sent to.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether picking a node reads request headers (consistent hashing on a header or
    /// a cookie).
    pub fn reads_headers(&self) -> bool {
        matches!(&self.balancer, Balancer::Chash(chash) if chash.reads_headers())
    }

    /// Whether a response with this status makes an idempotent request try another
    /// node (`retry_on_statuses`).
    pub fn retries_on(&self, status: u16) -> bool {
        self.retry_on_statuses.binary_search(&status).is_ok()
    }

    /// Feeds an outcome to ewma and to passive health.
    fn record(&self, index: usize, outcome: Outcome, started: Instant) {
        let Some(node) = self.nodes.get(index) else {
            return;
        };
        if matches!(self.balancer, Balancer::Ewma(_)) {
            // A failure costs at least a connect timeout, so a node refusing connections
            // fast does not look like the fastest node.
            let latency = match outcome {
                Outcome::Status(_, latency) => latency,
                Outcome::Failed => started.elapsed().max(self.timeouts.connect),
            };
            lock(&node.ewma).observe(latency, Instant::now());
        }
        self.record_passive(node, outcome);
    }
}

impl Node {
    fn new(addr: SocketAddr, host: String, weight: i64, peer: HttpPeer, epoch: Instant) -> Self {
        // The scheme's default port: 443 with TLS (https, grpcs), else 80.
        let default_port = if peer.is_tls() { 443 } else { 80 };
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let host_header = if addr.port() == default_port {
            bracketed
        } else {
            format!("{bracketed}:{}", addr.port())
        };
        Self {
            addr,
            host,
            host_header,
            peer,
            weight,
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma::new(epoch)),
            active_down: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            health: Mutex::new(HealthCounters::default()),
        }
    }

    /// Requests holding a pick of this node.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Pick {
    /// The chosen node (its configured host, weight…).
    pub fn node(&self) -> &Node {
        &self.pool.nodes[self.index]
    }

    /// Reports the outcome; feeds ewma (latency) and passive health (a failing status
    /// or `Failed` counts towards an ejection, anything else resets the count). The
    /// node counts the request as in flight until the pick is dropped (a streamed or
    /// upgraded response goes on after its status). Call it once per pick.
    pub fn record(&self, outcome: Outcome) {
        self.pool.record(self.index, outcome, self.started);
    }

    /// Time since the node was picked.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if let Some(node) = self.pool.nodes.get(self.index) {
            node.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("upstream", &self.pool.id)
            .field("index", &self.index)
            .field("addr", &self.addr)
            .finish()
    }
}

/// The policies; each keeps its own state, the nodes' shared state sits in `Node`.
#[derive(Debug)]
enum Balancer {
    RoundRobin(RoundRobin),
    Random(WeightedRandom),
    LeastConn(LeastConn),
    Chash(Chash),
    Ewma(PeakEwma),
}

impl Balancer {
    fn new(upstream: &Upstream, nodes: &[Node]) -> Self {
        match upstream.lb {
            LoadBalancing::Roundrobin => Self::RoundRobin(RoundRobin::new(nodes.len())),
            LoadBalancing::Random => Self::Random(WeightedRandom),
            LoadBalancing::LeastConn => Self::LeastConn(LeastConn::default()),
            LoadBalancing::Chash => Self::Chash(Chash::new(upstream, nodes)),
            LoadBalancing::Ewma => Self::Ewma(PeakEwma),
        }
    }

    /// A node among those `allowed`, or `None` when none is.
    fn pick(
        &self,
        nodes: &[Node],
        input: &HashInput<'_>,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Self::RoundRobin(b) => b.pick(nodes, allowed),
            Self::Random(b) => b.pick(nodes, allowed),
            Self::LeastConn(b) => b.pick(nodes, allowed),
            Self::Chash(b) => b.pick(nodes, input, allowed),
            Self::Ewma(b) => b.pick(nodes, allowed),
        }
    }
}

/// A poisoned lock only means another request panicked mid-update; the state is plain
/// numbers, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn seconds(field: &'static str, value: f64) -> Result<Duration, PoolError> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(PoolError::BadDuration { field, value }),
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().ok()?.next()
}

/// Helpers for the tests of the policies and the health state (next to their code),
/// and what needs the internals; the tests through the public API are in
/// `tests/balancer.rs`.
#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use http::HeaderMap;
    use serde_json::{json, Value};

    use super::*;

    fn upstream(json: Value) -> Upstream {
        serde_json::from_value(json).unwrap()
    }

    /// A valid pool of nodes 127.0.0.1:1000+i with these weights, plus `extra` fields.
    pub(super) fn pool_with(weights: &[i64], extra: Value) -> Arc<UpstreamPool> {
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

    pub(super) fn pool(weights: &[i64]) -> Arc<UpstreamPool> {
        pool_with(weights, json!({}))
    }

    /// A request with nothing chash could hash.
    pub(super) fn bare<R>(f: impl FnOnce(&HashInput<'_>) -> R) -> R {
        let headers = HeaderMap::new();
        f(&HashInput {
            client_ip: None,
            path: "/",
            headers: &headers,
            query: None,
        })
    }

    /// The node (as port - 1000, i.e. its place in the config) of `n` picks, each
    /// released at once.
    pub(super) fn picks(pool: &Arc<UpstreamPool>, n: usize) -> Vec<u16> {
        bare(|input| {
            (0..n)
                .map(|_| pool.pick(input, &[]).unwrap().addr.port() - 1000)
                .collect()
        })
    }

    pub(super) fn pick_index(pool: &Arc<UpstreamPool>, exclude: &[usize]) -> Option<usize> {
        bare(|input| pool.pick(input, exclude).map(|p| p.index))
    }

    /// A pick of node `index`, whatever the policy, by excluding the others.
    pub(super) fn pick_node(pool: &Arc<UpstreamPool>, index: usize) -> Pick {
        let others: Vec<usize> = (0..pool.len()).filter(|&i| i != index).collect();
        let pick = bare(|input| pool.pick(input, &others)).unwrap();
        assert_eq!(pick.index, index);
        pick
    }

    pub(super) fn counts(picks: impl IntoIterator<Item = usize>, len: usize) -> Vec<usize> {
        let mut counts = vec![0; len];
        for p in picks {
            counts[p] += 1;
        }
        counts
    }

    pub(super) const ALL_POLICIES: [&str; 5] =
        ["roundrobin", "random", "least_conn", "chash", "ewma"];

    #[test]
    fn unhealthy_nodes_are_avoided_unless_nothing_else_is_left() {
        for lb in ALL_POLICIES {
            let pool = pool_with(&[1, 1, 1], json!({"type": lb}));
            pool.nodes()[1].active_down.store(true, Ordering::Release);
            for _ in 0..200 {
                assert_ne!(pick_index(&pool, &[]), Some(1), "{lb}");
            }
            // Only the unhealthy node left: better it than a certain 502.
            assert_eq!(pick_index(&pool, &[0, 2]), Some(1), "{lb}");
            for node in pool.nodes() {
                node.active_down.store(true, Ordering::Release);
            }
            let all = counts((0..300).map(|_| pick_index(&pool, &[]).unwrap()), 3);
            assert!(all.iter().all(|&c| c > 0), "{lb}: {all:?}");
        }
    }
}
