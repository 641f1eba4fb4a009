//! The union (requirement X4): which EndpointSlices Portico must hold in each
//! production cluster, computed from what every cluster's watches last saw, and the
//! writes that bring what a production cluster holds there.
//!
//! Pure: no I/O, the time is passed in. The cluster controllers keep a
//! [`ClusterView`] per cluster up to date; the aggregator calls [`plan`] and hands each
//! production cluster's [`Write`]s to its writer.
//!
//! The rules, stricter than the anchors' (seed 004, Cilium ClusterMesh, Submariner,
//! Istio, Karmada):
//! - A production Service (`ex-remote: "false"` in a production cluster) is united
//!   with the Service of the same namespace and name labelled `ex-remote: "true"` in
//!   each peak cluster. A `peer-cluster` label narrows the pairing: on the production
//!   side it names the one peak cluster to take from, on the peak side the one
//!   production cluster to give to. The production cluster's own endpoints stay in the
//!   slices its built-in controller owns; Portico adds one set of slices per peak
//!   cluster, labelled with it, and never touches slices it does not manage.
//! - Only ready peak endpoints are carried over.
//! - A peer whose caches never completed a list since the controller started is
//!   **unknown**: what Portico wrote for it before stays exactly as it is (a restart
//!   does not flap the slices). An empty or half-loaded cache is never taken for "no
//!   endpoints".
//! - A peer that was reached and then lost keeps its last known endpoints for a grace
//!   period (default 60 s), then they stay listed as not ready until it is back, so
//!   traffic stops going to a cluster that may be dead without forgetting it.
//! - A production cluster is written only while its own view is complete (the
//!   controller knows which slices it holds); another cluster's state never stops it.
//! - Nothing changes when nothing differs: a plan over the slices a cluster already
//!   holds is empty, so the events of Portico's own writes cause no new writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The `endpointslice.kubernetes.io/managed-by` value of Portico's slices.
pub const MANAGED_BY: &str = "portico-xcluster";

/// The most endpoints one slice holds (the built-in controller's default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The default time a lost peer's endpoints stay ready.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// A Service across clusters: its namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A cluster's place (from the admin's cluster registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The private cloud: its production Services receive the union.
    Production,
    /// The public cloud: its Services give their endpoints away.
    Peak,
}

/// One port of a slice, as EndpointSlices list them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub name: Option<String>,
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub app_protocol: Option<String>,
}

/// The address family of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    IPv4,
    IPv6,
}

impl AddressType {
    pub fn of(address: &IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => AddressType::IPv4,
            IpAddr::V6(_) => AddressType::IPv6,
        }
    }

    /// The name EndpointSlices use.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }
}

/// How the aggregator knows a cluster now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Link {
    /// No complete list since the controller started: what it holds is unknown.
    #[default]
    Unknown,
    /// Its watches are live and its caches complete.
    Synced,
    /// It was synced; its last successful contact was at `since`.
    Lost { since: Instant },
}

/// A Service labelled for cross-cluster traffic, as one cluster's watches saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// Its `ex-remote` label: `true` on the peak side.
    pub remote: bool,
    /// Its `peer-cluster` label.
    pub peer: Option<String>,
    /// Its ready endpoints from the cluster's own slices (never Portico's), by the
    /// slices' port lists (sorted).
    pub ready: BTreeMap<Vec<Port>, BTreeSet<IpAddr>>,
}

/// Everything one cluster's controller knows, as the aggregator sees it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub role: Role,
    pub link: Link,
    /// The Services carrying the `ex-remote` label.
    pub services: BTreeMap<ServiceKey, ServiceView>,
    /// The slices Portico manages in this cluster, by namespace and name, as last seen
    /// (production clusters).
    pub managed: BTreeMap<(String, String), Slice>,
}

impl ClusterView {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            link: Link::Unknown,
            services: BTreeMap::new(),
            managed: BTreeMap::new(),
        }
    }
}

/// One endpoint of a Portico slice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub address: IpAddr,
    pub ready: bool,
}

/// An EndpointSlice Portico manages: the endpoints of one peak cluster for one
/// production Service, of one address family and port list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub namespace: String,
    pub name: String,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// The peak cluster the endpoints come from
    /// (`multicluster.kubernetes.io/source-cluster`).
    pub source: String,
    pub address_type: AddressType,
    /// Sorted.
    pub ports: Vec<Port>,
    /// Sorted by address, at most [`MAX_ENDPOINTS_PER_SLICE`].
    pub endpoints: Vec<Endpoint>,
}

/// A change to one production cluster's slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Create or replace (server-side apply) the slice.
    Apply(Slice),
    /// Delete the slice `name` in `namespace`.
    Delete { namespace: String, name: String },
}

/// What [`plan`] found.
#[derive(Debug, Default)]
pub struct Plan {
    /// Production cluster → the writes it needs, deletions last.
    pub writes: BTreeMap<String, Vec<Write>>,
    /// (production cluster, Service) → the distinct ready addresses of the union:
    /// the cluster's own and every peer's carried over as ready.
    pub union_sizes: BTreeMap<(String, ServiceKey), usize>,
    /// (peak cluster) → the endpoints it gives, carried over as ready, over all
    /// production Services.
    pub contributed: BTreeMap<String, usize>,
    /// (peak cluster) → Service → the endpoints it gives that Service, carried over as
    /// ready, over all production clusters.
    pub contributed_by_service: BTreeMap<String, BTreeMap<ServiceKey, usize>>,
    /// Services whose labels contradict their cluster's role, ignored.
    pub problems: Vec<String>,
}

impl Plan {
    /// Every write of every cluster.
    pub fn write_count(&self) -> usize {
        self.writes.values().map(Vec::len).sum()
    }
}

/// The writes that make every synced production cluster hold the union, as of `now`.
pub fn plan(clusters: &BTreeMap<String, ClusterView>, now: Instant, grace: Duration) -> Plan {
    let mut plan = Plan::default();
    for (name, cluster) in clusters {
        for (key, service) in &cluster.services {
            let fits = match cluster.role {
                Role::Production => !service.remote,
                Role::Peak => service.remote,
            };
            if !fits {
                plan.problems.push(format!(
                    "cluster {name:?}: service {key} is labelled ex-remote={} in a {} cluster; ignored",
                    service.remote,
                    if cluster.role == Role::Production { "production" } else { "peak" }
                ));
            }
        }
    }
    for (production, cluster) in clusters {
        if cluster.role != Role::Production || cluster.link != Link::Synced {
            continue;
        }
        let mut desired: BTreeMap<(String, String), Slice> = BTreeMap::new();
        // (Service name, namespace, peer) whose slices stay exactly as they are.
        let mut kept: BTreeSet<(String, String, String)> = BTreeSet::new();
        for (key, service) in &cluster.services {
            if service.remote {
                continue;
            }
            let mut union: BTreeSet<IpAddr> = service.ready.values().flatten().copied().collect();
            for (peer, peer_cluster) in clusters {
                if peer_cluster.role != Role::Peak
                    || service.peer.as_ref().is_some_and(|p| p != peer)
                {
                    continue;
                }
                let ready = match peer_cluster.link {
                    Link::Unknown => {
                        kept.insert((key.namespace.clone(), key.name.clone(), peer.clone()));
                        continue;
                    }
                    Link::Synced => true,
                    Link::Lost { since } => now.saturating_duration_since(since) < grace,
                };
                let Some(given) = peer_cluster
                    .services
                    .get(key)
                    .filter(|s| s.remote && s.peer.as_ref().is_none_or(|p| p == production))
                else {
                    continue;
                };
                for slice in slices(key, peer, given, ready) {
                    if ready {
                        union.extend(slice.endpoints.iter().map(|e| e.address));
                        *plan.contributed.entry(peer.clone()).or_default() += slice.endpoints.len();
                        *plan
                            .contributed_by_service
                            .entry(peer.clone())
                            .or_default()
                            .entry(key.clone())
                            .or_default() += slice.endpoints.len();
                    }
                    desired.insert((slice.namespace.clone(), slice.name.clone()), slice);
                }
            }
            plan.union_sizes
                .insert((production.clone(), key.clone()), union.len());
        }
        let mut writes = Vec::new();
        for (id, slice) in &desired {
            if cluster.managed.get(id) != Some(slice) {
                writes.push(Write::Apply(slice.clone()));
            }
        }
        for ((namespace, name), slice) in &cluster.managed {
            let key = (namespace.clone(), name.clone());
            let keep = kept.contains(&(
                namespace.clone(),
                slice.service.clone(),
                slice.source.clone(),
            ));
            if !desired.contains_key(&key) && !keep {
                writes.push(Write::Delete {
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
            }
        }
        if !writes.is_empty() {
            plan.writes.insert(production.clone(), writes);
        }
    }
    plan
}

/// The slices carrying `peer`'s ready endpoints of `service` (`given`), each marked
/// `ready`: per port list and address family, sorted, in runs of at most
/// [`MAX_ENDPOINTS_PER_SLICE`].
fn slices(service: &ServiceKey, peer: &str, given: &ServiceView, ready: bool) -> Vec<Slice> {
    let mut out = Vec::new();
    for (ports, addresses) in &given.ready {
        let mut ports = ports.clone();
        ports.sort();
        for family in [AddressType::IPv4, AddressType::IPv6] {
            let endpoints: Vec<Endpoint> = addresses
                .iter()
                .filter(|a| AddressType::of(a) == family)
                .map(|&address| Endpoint { address, ready })
                .collect();
            for (k, chunk) in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
                out.push(Slice {
                    namespace: service.namespace.clone(),
                    name: slice_name(&service.name, peer, family, &ports, k),
                    service: service.name.clone(),
                    source: peer.to_owned(),
                    address_type: family,
                    ports: ports.clone(),
                    endpoints: chunk.to_vec(),
                });
            }
        }
    }
    out
}

/// A slice's name: the Service's, the peer's made fit for a Kubernetes name, a hash
/// of the peer's exact name, the family and the ports (so two peers whose names differ
/// only in characters Kubernetes refuses, or two port lists, never share a name), and
/// the run's index. A valid DNS subdomain: lowercase letters, digits and `-`, at most
/// 253 characters.
pub fn slice_name(
    service: &str,
    peer: &str,
    family: AddressType,
    ports: &[Port],
    index: usize,
) -> String {
    let mut hash = Fnv::default();
    hash.write(peer.as_bytes());
    hash.write(&[0]);
    hash.write(family.as_str().as_bytes());
    for port in ports {
        hash.write(&[0]);
        hash.write(port.name.as_deref().unwrap_or("").as_bytes());
        hash.write(&[1]);
        hash.write(&port.port.to_be_bytes());
        hash.write(port.protocol.as_bytes());
        hash.write(&[2]);
        hash.write(port.app_protocol.as_deref().unwrap_or("").as_bytes());
    }
    let peer: String = peer
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(63)
        .collect();
    let service: String = service.chars().take(63).collect();
    let name = format!("{service}-{peer}-{:08x}-{index}", hash.finish() as u32);
    // Kubernetes names start and end with an alphanumeric: squeeze what sanitising left.
    let mut squeezed = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '-' && (squeezed.is_empty() || squeezed.ends_with('-')) {
            continue;
        }
        squeezed.push(c);
    }
    squeezed
}

/// 64-bit FNV-1a: a hash that stays the same across processes, versions and machines
/// (slice names must), which the standard library's hashers do not promise.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> Vec<Port> {
        vec![Port {
            name: Some("http".into()),
            port: 8080,
            protocol: "TCP".into(),
            app_protocol: None,
        }]
    }

    fn addresses(prefix: &str, n: usize) -> BTreeSet<IpAddr> {
        (0..n)
            .map(|i| {
                format!("{prefix}.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    fn service(remote: bool, peer: Option<&str>, ready: BTreeSet<IpAddr>) -> ServiceView {
        ServiceView {
            remote,
            peer: peer.map(str::to_owned),
            ready: BTreeMap::from([(http(), ready)]),
        }
    }

    fn orders() -> ServiceKey {
        ServiceKey::new("shop", "orders")
    }

    /// prod (production, serving orders from 10.0.x.x) and peak (peak, orders at
    /// 10.9.x.x with `n` endpoints), both synced.
    fn world(n: usize) -> BTreeMap<String, ClusterView> {
        let mut prod = ClusterView::new(Role::Production);
        prod.link = Link::Synced;
        prod.services
            .insert(orders(), service(false, None, addresses("10.0", 3)));
        let mut peak = ClusterView::new(Role::Peak);
        peak.link = Link::Synced;
        peak.services
            .insert(orders(), service(true, None, addresses("10.9", n)));
        BTreeMap::from([("prod".to_owned(), prod), ("peak".to_owned(), peak)])
    }

    /// Applies the plan's writes to the production clusters' views, as the writers and
    /// the watches of the written slices would.
    fn settle(world: &mut BTreeMap<String, ClusterView>, plan: &Plan) {
        for (cluster, writes) in &plan.writes {
            let managed = &mut world.get_mut(cluster).unwrap().managed;
            for write in writes {
                match write {
                    Write::Apply(slice) => {
                        managed
                            .insert((slice.namespace.clone(), slice.name.clone()), slice.clone());
                    }
                    Write::Delete { namespace, name } => {
                        managed.remove(&(namespace.clone(), name.clone()));
                    }
                }
            }
        }
    }

    /// [`world`] with `n` peak endpoints after its first plan was written: the
    /// steady state, and that first plan.
    fn settled(n: usize, now: Instant) -> (BTreeMap<String, ClusterView>, Plan) {
        let mut world = world(n);
        let first = plan(&world, now, DEFAULT_GRACE);
        settle(&mut world, &first);
        (world, first)
    }

    /// `cluster`'s view of the orders Service.
    fn orders_in<'w>(
        world: &'w mut BTreeMap<String, ClusterView>,
        cluster: &str,
    ) -> &'w mut ServiceView {
        world
            .get_mut(cluster)
            .unwrap()
            .services
            .get_mut(&orders())
            .unwrap()
    }

    fn applied(plan: &Plan, cluster: &str) -> Vec<Slice> {
        plan.writes
            .get(cluster)
            .into_iter()
            .flatten()
            .filter_map(|w| match w {
                Write::Apply(slice) => Some(slice.clone()),
                Write::Delete { .. } => None,
            })
            .collect()
    }

    fn deleted(plan: &Plan, cluster: &str) -> usize {
        plan.writes
            .get(cluster)
            .into_iter()
            .flatten()
            .filter(|w| matches!(w, Write::Delete { .. }))
            .count()
    }

    #[test]
    fn peak_endpoints_reach_the_production_service_and_a_steady_state_writes_nothing() {
        let now = Instant::now();
        let mut world = world(3);
        let plan = plan(&world, now, DEFAULT_GRACE);
        let slices = applied(&plan, "prod");
        assert_eq!(slices.len(), 1, "{plan:?}");
        let slice = &slices[0];
        assert_eq!(
            (slice.namespace.as_str(), slice.service.as_str()),
            ("shop", "orders")
        );
        assert_eq!(slice.source, "peak");
        assert_eq!(slice.address_type, AddressType::IPv4);
        assert_eq!(slice.ports, http());
        let got: Vec<String> = slice
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(got, ["10.9.0.1", "10.9.0.2", "10.9.0.3"]);
        assert!(slice.endpoints.iter().all(|e| e.ready));
        assert_eq!(plan.union_sizes[&("prod".to_owned(), orders())], 6);
        assert_eq!(plan.contributed["peak"], 3);
        assert_eq!(
            plan.contributed_by_service["peak"].values().sum::<usize>(),
            3,
            "the per-Service counts add up to the cluster's"
        );
        assert!(
            !plan.writes.contains_key("peak"),
            "peak clusters are never written"
        );

        settle(&mut world, &plan);
        let again = super::plan(&world, now, DEFAULT_GRACE);
        assert_eq!(again.write_count(), 0, "{again:?}");
    }

    #[test]
    fn a_removed_peak_endpoint_leaves_and_a_gone_service_takes_its_slices() {
        let now = Instant::now();
        let (mut world, first) = settled(3, now);

        let peak = world.get_mut("peak").unwrap();
        peak.services
            .insert(orders(), service(true, None, addresses("10.9", 2)));
        let shrunk = plan(&world, now, DEFAULT_GRACE);
        let slices = applied(&shrunk, "prod");
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].endpoints.len(), 2);
        assert_eq!(
            slices[0].name,
            applied(&first, "prod")[0].name,
            "same slice, updated"
        );
        settle(&mut world, &shrunk);

        // The peak Service loses its label: nothing to give, the slice goes.
        world.get_mut("peak").unwrap().services.clear();
        let gone = plan(&world, now, DEFAULT_GRACE);
        assert_eq!(deleted(&gone, "prod"), 1, "{gone:?}");
        settle(&mut world, &gone);
        assert!(world["prod"].managed.is_empty());

        // Back, then the production Service goes: its slices go with it.
        world
            .get_mut("peak")
            .unwrap()
            .services
            .insert(orders(), service(true, None, addresses("10.9", 2)));
        let back = plan(&world, now, DEFAULT_GRACE);
        settle(&mut world, &back);
        assert_eq!(world["prod"].managed.len(), 1);
        world.get_mut("prod").unwrap().services.clear();
        let unlabelled = plan(&world, now, DEFAULT_GRACE);
        assert_eq!(deleted(&unlabelled, "prod"), 1);

        // A peak cluster removed from the registry takes its slices too.
        let (mut world, _) = settled(2, now);
        world.remove("peak");
        let removed = plan(&world, now, DEFAULT_GRACE);
        assert_eq!(deleted(&removed, "prod"), 1);
    }

    #[test]
    fn a_lost_peer_keeps_its_endpoints_for_the_grace_period_then_they_are_not_ready() {
        let start = Instant::now();
        let (mut world, _) = settled(3, start);

        world.get_mut("peak").unwrap().link = Link::Lost { since: start };
        let within = plan(&world, start + Duration::from_secs(59), DEFAULT_GRACE);
        assert_eq!(within.write_count(), 0, "kept as they were: {within:?}");
        assert_eq!(within.union_sizes[&("prod".to_owned(), orders())], 6);

        let after = plan(&world, start + DEFAULT_GRACE, DEFAULT_GRACE);
        let slices = applied(&after, "prod");
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].endpoints.len(), 3, "still listed");
        assert!(slices[0].endpoints.iter().all(|e| !e.ready), "not ready");
        assert_eq!(after.union_sizes[&("prod".to_owned(), orders())], 3);
        assert!(!after.contributed.contains_key("peak"));
        settle(&mut world, &after);
        let later = plan(&world, start + DEFAULT_GRACE * 10, DEFAULT_GRACE);
        assert_eq!(later.write_count(), 0);

        // Back: ready again.
        world.get_mut("peak").unwrap().link = Link::Synced;
        let back = plan(&world, start + DEFAULT_GRACE * 11, DEFAULT_GRACE);
        assert!(applied(&back, "prod")[0].endpoints.iter().all(|e| e.ready));
    }

    #[test]
    fn an_unknown_peer_and_an_unsynced_production_cluster_change_nothing() {
        let now = Instant::now();
        let (mut world, _) = settled(3, now);

        // A restarted controller: the peer's caches are not loaded yet and its view
        // is empty. Its slices stay.
        let peak = world.get_mut("peak").unwrap();
        peak.link = Link::Unknown;
        peak.services.clear();
        let restarted = plan(&world, now, DEFAULT_GRACE);
        assert_eq!(restarted.write_count(), 0, "{restarted:?}");
        // Loaded with the same endpoints: still nothing to write.
        let peak = world.get_mut("peak").unwrap();
        peak.link = Link::Synced;
        peak.services
            .insert(orders(), service(true, None, addresses("10.9", 3)));
        assert_eq!(plan(&world, now, DEFAULT_GRACE).write_count(), 0);

        // The production cluster's own caches incomplete: nothing is written to it,
        // whatever the peers say.
        let mut world = self::world(3);
        world.get_mut("prod").unwrap().link = Link::Unknown;
        assert_eq!(plan(&world, now, DEFAULT_GRACE).write_count(), 0);
        world.get_mut("prod").unwrap().link = Link::Lost { since: now };
        assert_eq!(plan(&world, now, DEFAULT_GRACE).write_count(), 0);
    }

    #[test]
    fn large_and_mixed_services_are_cut_into_slices_of_at_most_100() {
        let now = Instant::now();
        let mut world = world(250);
        let peak = world.get_mut("peak").unwrap();
        let view = peak.services.get_mut(&orders()).unwrap();
        let grpc = vec![Port {
            name: Some("grpc".into()),
            port: 9090,
            protocol: "TCP".into(),
            app_protocol: Some("grpc".into()),
        }];
        view.ready.insert(
            grpc,
            ["fd00::1".parse().unwrap(), "10.8.0.1".parse().unwrap()].into(),
        );
        let plan = plan(&world, now, DEFAULT_GRACE);
        let slices = applied(&plan, "prod");
        let sizes: Vec<(usize, AddressType)> = slices
            .iter()
            .map(|s| (s.endpoints.len(), s.address_type))
            .collect();
        assert_eq!(sizes.len(), 5, "{sizes:?}");
        assert_eq!(
            sizes
                .iter()
                .filter(|(_, f)| *f == AddressType::IPv6)
                .count(),
            1
        );
        let http_sizes: Vec<usize> = slices
            .iter()
            .filter(|s| s.ports == http())
            .map(|s| s.endpoints.len())
            .collect();
        assert_eq!(http_sizes, [100, 100, 50]);
        let names: BTreeSet<&str> = slices.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 5, "names are distinct");
        assert_eq!(plan.union_sizes[&("prod".to_owned(), orders())], 3 + 252);
    }

    #[test]
    fn peer_cluster_labels_narrow_the_pairing_and_wrong_labels_are_reported() {
        let now = Instant::now();
        let mut world = world(3);
        let mut other = ClusterView::new(Role::Peak);
        other.link = Link::Synced;
        other
            .services
            .insert(orders(), service(true, None, addresses("10.7", 2)));
        world.insert("other".into(), other);
        assert_eq!(applied(&plan(&world, now, DEFAULT_GRACE), "prod").len(), 2);

        // The production side names its one peer.
        orders_in(&mut world, "prod").peer = Some("peak".into());
        let narrowed = plan(&world, now, DEFAULT_GRACE);
        let sources: Vec<String> = applied(&narrowed, "prod")
            .into_iter()
            .map(|s| s.source)
            .collect();
        assert_eq!(sources, ["peak"]);

        // The peak side gives to another production cluster only.
        orders_in(&mut world, "peak").peer = Some("elsewhere".into());
        assert!(applied(&plan(&world, now, DEFAULT_GRACE), "prod").is_empty());

        // ex-remote=true in a production cluster: not a production Service.
        let mut world = self::world(3);
        orders_in(&mut world, "prod").remote = true;
        let wrong = plan(&world, now, DEFAULT_GRACE);
        assert_eq!(wrong.write_count(), 0);
        assert_eq!(wrong.problems.len(), 1, "{:?}", wrong.problems);
        assert!(
            wrong.problems[0].contains("shop/orders"),
            "{:?}",
            wrong.problems
        );
    }

    #[test]
    fn slice_names_are_stable_valid_and_distinct() {
        let a = slice_name("orders", "peak_1", AddressType::IPv4, &http(), 0);
        assert_eq!(
            a,
            slice_name("orders", "peak_1", AddressType::IPv4, &http(), 0)
        );
        let b = slice_name("orders", "peak-1", AddressType::IPv4, &http(), 0);
        assert_ne!(a, b, "names differing in a refused character stay apart");
        assert!(a.starts_with("orders-peak-1-"), "{a}");
        for name in [
            a.clone(),
            b,
            slice_name("orders", "-_Peak_", AddressType::IPv6, &[], 12),
            slice_name(
                &"s".repeat(63),
                &"p".repeat(200),
                AddressType::IPv4,
                &http(),
                3,
            ),
        ] {
            assert!(name.len() <= 253, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(
                !name.starts_with('-') && !name.ends_with('-') && !name.contains("--"),
                "{name}"
            );
        }
        // Pinned: a name must never change between versions (it would churn every
        // slice on upgrade).
        assert_eq!(
            slice_name("orders", "peak", AddressType::IPv4, &http(), 0),
            "orders-peak-58a9e0be-0"
        );
        assert_ne!(
            slice_name("orders", "peak", AddressType::IPv4, &http(), 0),
            slice_name("orders", "peak", AddressType::IPv6, &http(), 0)
        );
    }
}
