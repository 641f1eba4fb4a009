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
//! Node health is a few atomics read on every pick without a lock; the counters behind
//! them sit in a small per-node mutex taken only when an outcome or a probe is recorded.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use model::upstream::{CheckKind, HashOn, LoadBalancing, Upstream};
use pingora_core::upstreams::peer::HttpPeer;
use rand::Rng;

/// Connection and I/O timeouts for requests to this pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// How long an idle connection is kept for reuse (`keepalive_pool.idle_timeout`).
    pub idle: Duration,
}

/// One upstream's nodes, its balancer and its health checks.
#[derive(Debug)]
pub struct UpstreamPool {
    pub id: String,
    /// The definition, for the proxy: scheme, tls, pass_host, retries.
    pub upstream: Upstream,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealthReport {
    pub address: String,
    pub healthy: bool,
    /// Why it is down (`active: 3 failures in a row, last: status 500`).
    pub reason: Option<String>,
}

impl From<NodeHealthReport> for model::cluster::NodeHealth {
    fn from(r: NodeHealthReport) -> Self {
        Self {
            address: r.address,
            healthy: r.healthy,
            reason: r.reason,
        }
    }
}

/// The active check of a pool with durations converted; read by `health.rs`.
#[derive(Debug, Clone)]
pub(crate) struct ActivePolicy {
    pub kind: CheckKind,
    pub http_path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub statuses: Vec<u16>,
    pub successes: u32,
    pub failures: u32,
}

#[derive(Debug, Clone)]
struct PassivePolicy {
    statuses: Vec<u16>,
    failures: u32,
    eject_for: Duration,
}

impl UpstreamPool {
    /// Resolves the nodes and prepares the balancer. A node whose host does not resolve
    /// is left out with a warning; a pool left without nodes still serves its routes,
    /// with 502, since the route exists and only its upstream is unreachable.
    ///
    /// Resolving a DNS name blocks, so this runs off the async runtime's workers.
    pub fn build(upstream: &Upstream) -> Result<BuiltPool, PoolError> {
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
            match resolve(&node.host, port) {
                Some(addr) => nodes.push(Node::new(
                    addr,
                    node.host.clone(),
                    node.weight,
                    peer(addr, &node.host),
                    epoch,
                )),
                None => warnings.push(format!(
                    "nodes[{i}].host {:?} does not resolve; node left out",
                    node.host
                )),
            }
        }
        let balancer = Balancer::new(upstream, &nodes);
        let pool = Self {
            id: upstream.id.clone(),
            upstream: upstream.clone(),
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

    /// Whether the upstream has active or passive checks (the heartbeat reports those
    /// pools in full, others only when a node is down).
    pub fn has_health_checks(&self) -> bool {
        self.active.is_some() || self.passive.is_some()
    }

    /// Health as seen now, for the heartbeat: one entry per node.
    pub fn health_report(&self) -> Vec<NodeHealthReport> {
        let now = self.now_nanos();
        self.nodes
            .iter()
            .map(|node| {
                let counters = lock(&node.health);
                let mut reasons = Vec::new();
                if node.active_down.load(Ordering::Acquire) {
                    let why = counters.active_reason.as_deref().unwrap_or("probes failed");
                    reasons.push(format!("active: {why}"));
                }
                let until = node.ejected_until.load(Ordering::Acquire);
                if until > now {
                    let why = counters.passive_reason.as_deref().unwrap_or("failures");
                    let left = Duration::from_nanos(until - now).as_secs_f64();
                    reasons.push(format!("passive: {why}, ejected for another {left:.1}s"));
                }
                NodeHealthReport {
                    address: node.addr.to_string(),
                    healthy: reasons.is_empty(),
                    reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
                }
            })
            .collect()
    }

    /// The active check, if the upstream has one.
    pub(crate) fn active_check(&self) -> Option<&ActivePolicy> {
        self.active.as_ref()
    }

    /// Records one active probe of node `index`: `Ok` for a good probe, `Err(reason)`
    /// for a failed one. Flips the node after enough probes in a row and logs it.
    pub(crate) fn record_probe(&self, index: usize, result: Result<(), String>) {
        let (Some(policy), Some(node)) = (&self.active, self.nodes.get(index)) else {
            return;
        };
        let mut c = lock(&node.health);
        let down = node.active_down.load(Ordering::Acquire);
        match result {
            Ok(()) => {
                c.active_failures = 0;
                c.active_successes = c.active_successes.saturating_add(1);
                if down && c.active_successes >= policy.successes {
                    node.active_down.store(false, Ordering::Release);
                    c.active_reason = None;
                    tracing::info!(
                        upstream = %self.id,
                        node = %node.addr,
                        successes = c.active_successes,
                        "upstream node healthy again (active check)"
                    );
                }
            }
            Err(reason) => {
                c.active_successes = 0;
                c.active_failures = c.active_failures.saturating_add(1);
                if down {
                    c.active_reason = Some(format!(
                        "{} failures in a row, last: {reason}",
                        c.active_failures
                    ));
                } else if c.active_failures >= policy.failures {
                    node.active_down.store(true, Ordering::Release);
                    tracing::warn!(
                        upstream = %self.id,
                        node = %node.addr,
                        failures = c.active_failures,
                        reason = %reason,
                        "upstream node unhealthy (active check)"
                    );
                    c.active_reason = Some(format!(
                        "{} failures in a row, last: {reason}",
                        c.active_failures
                    ));
                }
            }
        }
    }

    /// Whether picking a node reads request headers (consistent hashing on a header or
    /// a cookie).
    pub fn reads_headers(&self) -> bool {
        matches!(self.balancer, Balancer::Chash(_))
            && matches!(self.upstream.hash_on, HashOn::Header | HashOn::Cookie)
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
        let Some(policy) = &self.passive else {
            return;
        };
        let failure = match outcome {
            Outcome::Failed => Some("connect error or timeout".to_owned()),
            Outcome::Status(status, _) if policy.statuses.contains(&status) => {
                Some(format!("status {status}"))
            }
            Outcome::Status(..) => None,
        };
        let now = self.now_nanos();
        let mut c = lock(&node.health);
        let Some(reason) = failure else {
            // A success ends the probation too: the node has shown it works.
            c.passive_failures = 0;
            c.probation = false;
            return;
        };
        if node.ejected_until.load(Ordering::Acquire) > now {
            // Already out: late answers of requests sent before do not extend it.
            return;
        }
        c.passive_failures = c.passive_failures.saturating_add(1);
        // Half-open: a node back from an ejection is ejected again by one failure.
        if c.probation || c.passive_failures >= policy.failures {
            let until = now.saturating_add(nanos(policy.eject_for)).max(1);
            node.ejected_until.store(until, Ordering::Release);
            let why = if c.probation {
                format!("failed again after an ejection ({reason})")
            } else {
                format!("{} failures in a row, last: {reason}", c.passive_failures)
            };
            tracing::warn!(
                upstream = %self.id,
                node = %node.addr,
                reason = %why,
                eject_for = ?policy.eject_for,
                "upstream node ejected (passive check)"
            );
            c.passive_reason = Some(why);
            c.passive_failures = 0;
            c.probation = true;
        }
    }

    fn now_nanos(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// The clock for ejections, read only when there can be any (0 otherwise, which
    /// every node's `ejected_until` of 0 passes).
    fn now_if_passive(&self) -> u64 {
        if self.passive.is_some() {
            self.now_nanos()
        } else {
            0
        }
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

    /// Up for the active checks and not ejected by the passive ones, as of `now`
    /// (nanoseconds since the pool's epoch).
    fn is_available(&self, now: u64) -> bool {
        !self.active_down.load(Ordering::Acquire)
            && self.ejected_until.load(Ordering::Acquire) <= now
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

#[derive(Debug, Default)]
struct HealthCounters {
    active_failures: u32,
    active_successes: u32,
    active_reason: Option<String>,
    passive_failures: u32,
    /// Set by an ejection, cleared by a success: the next failure ejects again.
    probation: bool,
    passive_reason: Option<String>,
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

/// Smooth weighted round robin (nginx's algorithm): each pick adds every allowed node's
/// weight to its current weight, takes the largest, and subtracts the allowed total from
/// it, which spreads a heavy node's turns instead of bursting them.
#[derive(Debug)]
struct RoundRobin {
    /// Shared by all requests, hence the lock; it is held for a few additions.
    current: Mutex<Vec<i64>>,
}

impl RoundRobin {
    fn new(len: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; len]),
        }
    }

    fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = lock(&self.current);
        let mut best: Option<usize> = None;
        let mut total = 0;
        for (i, node) in nodes.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            current[i] += node.weight;
            total += node.weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

/// Weighted random: each allowed node with probability weight / total.
#[derive(Debug)]
struct WeightedRandom;

impl WeightedRandom {
    fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let total: i64 = (0..nodes.len())
            .filter(|&i| allowed(i))
            .map(|i| nodes[i].weight)
            .sum();
        if total <= 0 {
            return None;
        }
        let mut r = rand::rng().random_range(0..total);
        for (i, node) in nodes.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            if r < node.weight {
                return Some(i);
            }
            r -= node.weight;
        }
        None
    }
}

/// Fewest requests in flight relative to the weight; the scan starts one node further
/// at each pick so ties rotate instead of always landing on the first node.
#[derive(Debug, Default)]
struct LeastConn {
    cursor: AtomicUsize,
}

impl LeastConn {
    fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let n = nodes.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !allowed(i) {
                continue;
            }
            // in_flight_i / weight_i < in_flight_b / weight_b, without division.
            let less = |b: usize| {
                let load = |j: usize| nodes[j].in_flight() as u128;
                let weight = |j: usize| nodes[j].weight.max(1) as u128;
                load(i) * weight(b) < load(b) * weight(i)
            };
            if best.is_none_or(less) {
                best = Some(i);
            }
        }
        best
    }
}

/// Consistent hashing on a ketama-like ring: every node owns ~160 points per unit of
/// weight (fewer when the ring would pass 64k points), placed by a hash of its
/// configured `host:port`, so adding or removing a node moves only the keys of its
/// points. The hash (FNV-1a with a murmur3 finaliser) is fixed: the same key lands on
/// the same node on every gateway node and after restarts.
#[derive(Debug)]
struct Chash {
    /// (point, node index), sorted by point.
    ring: Vec<(u64, usize)>,
    hash_on: HashOn,
    key: Option<String>,
    /// For requests with neither the key nor a client address.
    fallback: RoundRobin,
}

const POINTS_PER_WEIGHT: u64 = 160;
const MAX_RING_POINTS: u64 = 65_536;

impl Chash {
    fn new(upstream: &Upstream, nodes: &[Node]) -> Self {
        let total: u64 = nodes.iter().map(|n| n.weight.max(0) as u64).sum();
        let mut ring = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let weight = node.weight.max(0) as u64;
            let points = if total * POINTS_PER_WEIGHT <= MAX_RING_POINTS {
                weight * POINTS_PER_WEIGHT
            } else {
                (weight * MAX_RING_POINTS / total).max(1)
            };
            let port = node.addr.port().to_string();
            for point in 0..points {
                let mut h = Fnv1a::new();
                h.write(node.host.as_bytes());
                h.write(b":");
                h.write(port.as_bytes());
                h.write(b"-");
                h.write(point.to_string().as_bytes());
                ring.push((h.finish(), i));
            }
        }
        ring.sort_unstable();
        Self {
            ring,
            hash_on: upstream.hash_on,
            key: upstream.key.clone(),
            fallback: RoundRobin::new(nodes.len()),
        }
    }

    fn pick(
        &self,
        nodes: &[Node],
        input: &HashInput<'_>,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self.key_hash(input) {
            Some(hash) => self.walk(hash, nodes.len(), allowed),
            None => self.fallback.pick(nodes, allowed),
        }
    }

    /// The hash of the request's key; missing key → the client address; neither → None.
    fn key_hash(&self, input: &HashInput<'_>) -> Option<u64> {
        let key = self.key.as_deref().unwrap_or_default();
        let primary = match self.hash_on {
            HashOn::Ip => None,
            HashOn::Header => input.headers.get(key).map(|v| hash_bytes(v.as_bytes())),
            HashOn::Cookie => cookie_hash(input.headers, key),
            HashOn::Query => input.query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(name, _)| name == key)
                    .map(|(_, value)| hash_bytes(value.as_bytes()))
            }),
            HashOn::Path => Some(hash_bytes(input.path.as_bytes())),
        };
        primary.or_else(|| {
            input.client_ip.map(|ip| match ip.to_canonical() {
                IpAddr::V4(v4) => hash_bytes(&v4.octets()),
                IpAddr::V6(v6) => hash_bytes(&v6.octets()),
            })
        })
    }

    /// The owner of the first point at or after `hash`; when it is not allowed, the next
    /// distinct node along the ring.
    fn walk(&self, hash: u64, len: usize, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|&(point, _)| point < hash);
        let at = |k: usize| self.ring[(start + k) % self.ring.len()].1;
        // The common case, without the bookkeeping of a walk.
        let owner = at(0);
        if allowed(owner) {
            return Some(owner);
        }
        let mut seen = vec![false; len];
        let mut distinct = 0;
        for k in 0..self.ring.len() {
            let i = at(k);
            if allowed(i) {
                return Some(i);
            }
            if !seen[i] {
                seen[i] = true;
                distinct += 1;
                if distinct == len {
                    break;
                }
            }
        }
        None
    }
}

/// Value of the cookie `name` in the request's `Cookie` headers, hashed.
fn cookie_hash(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| hash_bytes(value.as_bytes()))
}

/// 64-bit FNV-1a; the finish step mixes the bits (murmur3's fmix64) since plain FNV
/// spreads similar short inputs poorly over the high bits a ring lookup depends on.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.write(bytes);
    h.finish()
}

/// Peak-EWMA (Finagle, linkerd): cost = latency estimate × (in flight + 1) / weight;
/// the power of two choices (two random distinct nodes, the cheaper wins) keeps one
/// slow node from drawing no traffic at all while others saturate.
#[derive(Debug)]
struct PeakEwma;

/// Decay time of the latency average.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Cost of a node without a measurement yet: small, so new nodes get traffic soon.
const EWMA_DEFAULT: Duration = Duration::from_millis(1);

impl PeakEwma {
    fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates = (0..nodes.len()).filter(|&i| allowed(i)).count();
        let nth = |n: usize| (0..nodes.len()).filter(|&i| allowed(i)).nth(n);
        if candidates < 2 {
            return nth(0);
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..candidates);
        let mut b = rng.random_range(0..candidates - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (nth(a)?, nth(b)?);
        let now = Instant::now();
        let cost = |i: usize| {
            let node = &nodes[i];
            let latency = lock(&node.ewma).estimate(now);
            latency * (node.in_flight() + 1) as f64 / node.weight.max(1) as f64
        };
        if cost(b) < cost(a) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

/// One node's latency average, in nanoseconds.
#[derive(Debug)]
struct Ewma {
    nanos: f64,
    /// When `nanos` was last updated.
    stamp: Instant,
}

impl Ewma {
    fn new(now: Instant) -> Self {
        Self {
            nanos: EWMA_DEFAULT.as_nanos() as f64,
            stamp: now,
        }
    }

    /// The average decayed towards 0 over the time without answers, so a node that was
    /// slow once is tried again eventually.
    fn estimate(&self, now: Instant) -> f64 {
        self.nanos * self.decay(now)
    }

    /// A sample above the average replaces it (peak); others are averaged in with a
    /// weight that grows with the time since the last sample.
    fn observe(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos() as f64;
        if sample > self.nanos {
            self.nanos = sample;
        } else {
            let w = self.decay(now);
            self.nanos = self.nanos * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }

    fn decay(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use http::HeaderMap;
    use serde_json::{json, Value};

    use super::*;

    fn upstream(json: Value) -> Upstream {
        serde_json::from_value(json).unwrap()
    }

    /// A valid pool of nodes 127.0.0.1:1000+i with these weights, plus `extra` fields.
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

    /// The node (as port - 1000, i.e. its place in the config) of `n` picks, each
    /// released at once.
    fn picks(pool: &Arc<UpstreamPool>, n: usize) -> Vec<u16> {
        bare(|input| {
            (0..n)
                .map(|_| pool.pick(input, &[]).unwrap().addr.port() - 1000)
                .collect()
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

    fn counts(picks: impl IntoIterator<Item = usize>, len: usize) -> Vec<usize> {
        let mut counts = vec![0; len];
        for p in picks {
            counts[p] += 1;
        }
        counts
    }

    const ALL_POLICIES: [&str; 5] = ["roundrobin", "random", "least_conn", "chash", "ewma"];

    #[test]
    fn roundrobin_follows_the_weights_smoothly() {
        let cases: &[(&[i64], &[u16])] = &[
            (&[1], &[0, 0, 0]),
            (&[1, 1], &[0, 1, 0, 1]),
            (&[1, 1, 1], &[0, 1, 2, 0, 1, 2]),
            // nginx's example: 5,1,1 gives a a b a c a a — no burst of five a's.
            (&[5, 1, 1], &[0, 0, 1, 0, 2, 0, 0]),
            (&[2, 1], &[0, 1, 0, 0, 1, 0]),
            // Weight 0 is never picked, wherever it sits.
            (&[0, 3], &[1, 1, 1, 1]),
            (&[1, 0, 1], &[0, 2, 0, 2]),
        ];
        for (weights, want) in cases {
            assert_eq!(picks(&pool(weights), want.len()), *want, "{weights:?}");
        }
        let long = picks(&pool(&[5, 1, 1]), 700);
        assert_eq!(counts(long.iter().map(|&p| p as usize), 3), [500, 100, 100]);
    }

    #[test]
    fn random_follows_the_weights() {
        let pool = pool_with(&[1, 1, 2], json!({"type": "random"}));
        let got = counts(picks(&pool, 20_000).into_iter().map(usize::from), 3);
        for (count, want) in got.iter().zip([5_000.0, 5_000.0, 10_000.0]) {
            let off = (*count as f64 - want).abs() / want;
            assert!(off < 0.05, "{got:?}");
        }
    }

    #[test]
    fn least_conn_prefers_fewer_in_flight_and_respects_weights() {
        let pool = pool_with(&[1, 1, 1], json!({"type": "least_conn"}));
        // Held picks spread over the three nodes before any gets a second one.
        let held: Vec<Pick> =
            bare(|input| (0..3).map(|_| pool.pick(input, &[]).unwrap()).collect());
        let mut seen: Vec<usize> = held.iter().map(|p| p.index).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        // Node 1 done: it is the only one with nothing in flight.
        let mut held = held;
        held.retain(|p| p.index != 1);
        for _ in 0..5 {
            assert_eq!(pick_index(&pool, &[]), Some(1));
        }
        assert_eq!(pool.nodes()[0].in_flight(), 1);
        drop(held);
        assert!(pool.nodes().iter().all(|n| n.in_flight() == 0));

        // All idle: ties rotate instead of always landing on node 0.
        let idle = counts((0..30).map(|_| pick_index(&pool, &[]).unwrap()), 3);
        assert_eq!(idle, [10, 10, 10]);

        // Weights 3:1 — held picks settle at three on node 0 per one on node 1.
        let weighted = pool_with(&[3, 1], json!({"type": "least_conn"}));
        let held: Vec<Pick> =
            bare(|input| (0..8).map(|_| weighted.pick(input, &[]).unwrap()).collect());
        assert_eq!(counts(held.iter().map(|p| p.index), 2), [6, 2]);
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

    #[test]
    fn chash_walks_the_ring_past_excluded_and_unhealthy_nodes() {
        let pool = chash(3, "header", Some("x-user"));
        let owner = |exclude: &[usize]| {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", "bob".parse().unwrap());
            let input = HashInput {
                client_ip: None,
                path: "/",
                headers: &headers,
                query: None,
            };
            pool.pick(&input, exclude).map(|p| p.index)
        };
        let home = owner(&[]).unwrap();
        let next = owner(&[home]).unwrap();
        assert_ne!(next, home);
        // The same alternate every time, so the key's traffic stays on one node.
        assert!((0..100).all(|_| owner(&[home]) == Some(next)));
        let last = owner(&[home, next]).unwrap();
        assert!(last != home && last != next);
        assert_eq!(owner(&[0, 1, 2]), None);
        // An unhealthy owner is walked past the same way.
        pool.nodes()[home]
            .active_down
            .store(true, Ordering::Release);
        assert_eq!(owner(&[]), Some(next));
    }

    #[test]
    fn chash_ring_size_follows_weights_within_a_cap() {
        let small = chash(3, "ip", None);
        let Balancer::Chash(ring) = &small.balancer else {
            unreachable!()
        };
        assert_eq!(ring.ring.len(), 3 * 160);
        let heavy = pool_with(&[1_000_000, 1_000_000, 1], json!({"type": "chash"}));
        let Balancer::Chash(ring) = &heavy.balancer else {
            unreachable!()
        };
        assert!(ring.ring.len() <= 65_536 + 3, "{}", ring.ring.len());
        assert!(
            ring.ring.iter().any(|&(_, i)| i == 2),
            "every node keeps a point"
        );
    }

    #[test]
    fn the_hash_is_fixed() {
        // FNV-1a 64 reference vectors: a change here would remap every chash key.
        let raw = |s: &[u8]| {
            let mut h = Fnv1a::new();
            h.write(s);
            h.0
        };
        assert_eq!(raw(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(hash_bytes(b"portico"), hash_bytes(b"portico"));
        assert_ne!(hash_bytes(b"user-1"), hash_bytes(b"user-2"));
    }

    #[test]
    fn ewma_avoids_the_slow_node() {
        let pool = pool_with(&[1, 1], json!({"type": "ewma"}));
        let mut slow = 0;
        for _ in 0..1_000 {
            let pick = bare(|input| pool.pick(input, &[])).unwrap();
            let latency = if pick.index == 0 {
                slow += 1;
                Duration::from_millis(100)
            } else {
                Duration::from_millis(1)
            };
            pick.record(Outcome::Status(200, latency));
        }
        assert!(slow < 100, "the 100 ms node got {slow} of 1000 picks");

        // A peak replaces the average at once; lower samples pull it down slowly.
        let now = Instant::now();
        let mut e = Ewma::new(now);
        e.observe(Duration::from_millis(50), now);
        assert_eq!(e.estimate(now), 50e6);
        e.observe(Duration::from_millis(10), now + Duration::from_secs(10));
        let after = e.estimate(now + Duration::from_secs(10));
        assert!(after > 10e6 && after < 50e6, "{after}");
        // Idle, the estimate decays so a slow node is tried again eventually.
        assert!(e.estimate(now + Duration::from_secs(100)) < 1e6);
    }

    #[test]
    fn ewma_weighs_in_flight_requests() {
        let pool = pool_with(&[1, 1], json!({"type": "ewma"}));
        // Equal latency; node 0 has requests in flight, so node 1 wins every duel.
        let held: Vec<Pick> = (0..3).map(|_| pick_node(&pool, 0)).collect();
        assert!((0..100).all(|_| pick_index(&pool, &[]) == Some(1)));
        drop(held);
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

    fn passive(eject_for: f64) -> Arc<UpstreamPool> {
        pool_with(
            &[1, 1],
            json!({"checks": {"passive": {"eject_for": eject_for, "unhealthy": {"failures": 3}}}}),
        )
    }

    fn fail(pool: &Arc<UpstreamPool>, node: usize, status: u16) {
        pick_node(pool, node).record(Outcome::Status(status, Duration::from_millis(1)));
    }

    fn picked(pool: &Arc<UpstreamPool>, node: usize) -> bool {
        (0..20).any(|_| pick_index(pool, &[]) == Some(node))
    }

    #[test]
    fn passive_checks_eject_after_consecutive_failures_for_a_while() {
        let pool = passive(0.2);
        fail(&pool, 0, 503);
        fail(&pool, 0, 503);
        assert!(picked(&pool, 0), "two failures are not enough");
        fail(&pool, 0, 503);
        assert!(!picked(&pool, 0), "ejected after three");
        let report = &pool.health_report()[0];
        assert!(!report.healthy);
        let reason = report.reason.as_deref().unwrap();
        assert!(
            reason
                .starts_with("passive: 3 failures in a row, last: status 503, ejected for another"),
            "{reason}"
        );
        assert!(pool.health_report()[1].healthy);

        std::thread::sleep(Duration::from_millis(250));
        assert!(picked(&pool, 0), "back after eject_for");
        assert!(pool.health_report()[0].healthy);
        // Half-open: one more failure ejects it again at once.
        fail(&pool, 0, 502);
        assert!(!picked(&pool, 0));
        assert!(pool.health_report()[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("failed again after an ejection"));
    }

    #[test]
    fn passive_successes_reset_the_count_and_other_statuses_are_fine() {
        let pool = passive(10.0);
        for status in [503, 503, 200, 503, 503, 404, 503, 503] {
            fail(&pool, 0, status);
        }
        assert!(picked(&pool, 0), "no three failures in a row");
        pick_node(&pool, 0).record(Outcome::Failed);
        assert!(!picked(&pool, 0), "a connect error counts too");
        // Dropped without an outcome: not counted either way.
        let pool = passive(10.0);
        for _ in 0..5 {
            drop(pick_node(&pool, 1));
        }
        assert!(picked(&pool, 1));
    }

    #[test]
    fn with_every_node_ejected_a_node_is_still_picked() {
        let pool = passive(10.0);
        for node in 0..2 {
            for _ in 0..3 {
                fail(&pool, node, 500);
            }
        }
        assert!(pool.health_report().iter().all(|r| !r.healthy));
        assert!(pick_index(&pool, &[]).is_some());
        assert_eq!(pick_index(&pool, &[1]), Some(0));
    }

    #[test]
    fn without_passive_checks_failures_change_nothing() {
        let pool = pool(&[1, 1]);
        for _ in 0..10 {
            fail(&pool, 0, 503);
        }
        assert!(picked(&pool, 0));
        assert!(!pool.has_health_checks());
        assert!(pool
            .health_report()
            .iter()
            .all(|r| r.healthy && r.reason.is_none()));
    }

    #[test]
    fn active_probes_flip_a_node_after_enough_in_a_row() {
        let pool = pool_with(
            &[1, 1],
            json!({"checks": {"active": {"healthy": {"successes": 2}, "unhealthy": {"failures": 3}}}}),
        );
        let bad = || Err("status 500".to_owned());
        let steps: &[(Result<(), String>, bool)] = &[
            (bad(), true),
            (bad(), true),
            (Ok(()), true), // resets the failures
            (bad(), true),
            (bad(), true),
            (bad(), false), // third in a row
            (Ok(()), false),
            (bad(), false), // resets the successes
            (Ok(()), false),
            (Ok(()), true), // second in a row
        ];
        for (i, (result, healthy)) in steps.iter().enumerate() {
            pool.record_probe(0, result.clone());
            let report = &pool.health_report()[0];
            assert_eq!(report.healthy, *healthy, "after step {i}");
            assert_eq!(picked(&pool, 0), *healthy, "after step {i}");
            if !healthy {
                let reason = report.reason.as_deref().unwrap();
                assert!(
                    reason.starts_with("active: ") && reason.ends_with("last: status 500"),
                    "{reason}"
                );
            }
        }
        assert!(pool.health_report()[1].healthy);
        assert_eq!(pool.health_report()[1].address, "127.0.0.1:1001");
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
    fn tls_upstreams_build_and_unresolvable_nodes_are_left_out() {
        let https = upstream(json!({
            "id": "u", "scheme": "https", "tls": {"sni": "api.example.com"},
            "pass_host": "node", "retries": 2,
            "nodes": [{"host": "localhost", "port": 443}]
        }));
        let built = UpstreamPool::build(&https).unwrap();
        assert_eq!(built.pool.upstream, https);
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
}
