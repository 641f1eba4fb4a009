//! Kubernetes discovery for gateways (requirement X5): an upstream names a Service
//! (`namespace/name`, a port) and the clusters to take it from; its nodes are the
//! union of the Service's ready endpoints in those clusters, with the controller's
//! failure semantics, updated without a reload.
//!
//! Two halves:
//! - [`Sources`] runs one source per cluster that some upstream names (and only
//!   those): a kube-rs client from the cluster's kubeconfig, one watch of the
//!   EndpointSlices of the Services wanted there (a `kubernetes.io/service-name in
//!   (…)` selector, started again when the wanted set changes), and the same probe,
//!   credential reloading and link rules as the controller's cluster controllers
//!   ([`crate::cluster::LinkTracker`]). Sources send [`Update`]s through one channel.
//! - [`EndpointView`] holds what the updates said and answers an upstream's nodes
//!   ([`EndpointView::nodes`]); it is plain data, so the gateway keeps it with its
//!   compiler and the rules are unit-tested without a cluster.
//!
//! The failure semantics are the controller's ([`crate::union`]): a cluster not listed
//! completely yet (or a Service the current list does not cover yet) contributes
//! nothing, never "zero endpoints" in place of what another list said; a cluster that
//! stops answering keeps contributing its last known endpoints for the grace period
//! after its last successful contact, then nothing until it answers again; no cluster
//! waits for another.
//!
//! A production cluster may also hold the controller's slices (managed by
//! `portico-xcluster`) carrying another cluster's endpoints: such a slice is skipped
//! when the upstream names its source cluster too (the gateway reads that cluster
//! itself, with its own grace), and used otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{mpsc, watch};

use crate::cluster::{
    build_client, object_key, probe_loop, probe_outcome, watch_failed, AbortOnDrop, End,
    LinkTracker,
};
use crate::config::{ClusterSpec, Timings};
use crate::slices::{self, LABEL_SERVICE_NAME};
use crate::union::{Link, Port, ServiceKey};

/// The Service ports an upstream sends to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortWant {
    /// The Service has one port: that one.
    Only,
    /// The port of this name.
    Name(String),
    /// The port with this number (the endpoints', as slices list it).
    Number(i32),
}

/// What an upstream in Kubernetes discovery mode asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Want {
    pub service: ServiceKey,
    pub port: PortWant,
    /// The clusters to unite, by name.
    pub clusters: Vec<String>,
}

/// The ready endpoints one slice of a Service gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoints {
    /// Sorted.
    pub ports: Vec<Port>,
    /// Ready addresses, sorted.
    pub addresses: Vec<IpAddr>,
    /// For a slice the cross-cluster controller wrote: the cluster its endpoints
    /// come from.
    pub mirrored_from: Option<String>,
}

impl SliceEndpoints {
    /// What `slice` gives; `None` for a slice without addresses to use (FQDN slices,
    /// unrestricted ports).
    pub fn of(slice: &EndpointSlice) -> Option<Self> {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            return None;
        }
        let mut addresses = slices::ready_addresses(slice);
        addresses.sort();
        addresses.dedup();
        Some(Self {
            ports: slices::ports_of(slice)?,
            addresses,
            mirrored_from: slices::is_managed(slice)
                .then(|| slices::source_of(slice).map(str::to_owned))
                .flatten(),
        })
    }

    /// The port of this slice `want` names, when it has one (TCP only).
    fn port(&self, want: &PortWant) -> Option<u16> {
        let tcp = self.ports.iter().filter(|p| p.protocol == "TCP");
        let port = match want {
            PortWant::Only if self.ports.len() == 1 => self.ports.first(),
            PortWant::Only => None,
            PortWant::Name(name) => tcp.clone().find(|p| p.name.as_ref() == Some(name)),
            PortWant::Number(number) => tcp.clone().find(|p| p.port == *number),
        }?;
        if port.protocol != "TCP" {
            return None;
        }
        u16::try_from(port.port).ok().filter(|p| *p > 0)
    }
}

/// What a source tells the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The cluster's link changed.
    Link { cluster: String, link: Link },
    /// A complete list of the slices of the Services in `covered`: replaces everything
    /// held for the cluster.
    Listed {
        cluster: String,
        covered: BTreeSet<ServiceKey>,
        services: BTreeMap<ServiceKey, Vec<SliceEndpoints>>,
    },
    /// A Service's slices after a watch event.
    Service {
        cluster: String,
        key: ServiceKey,
        slices: Vec<SliceEndpoints>,
    },
    /// The cluster's source stopped (no upstream names it, or it left the list):
    /// forget it.
    Gone { cluster: String },
}

impl Update {
    /// The cluster it is about.
    pub fn cluster(&self) -> &str {
        match self {
            Update::Link { cluster, .. }
            | Update::Listed { cluster, .. }
            | Update::Service { cluster, .. }
            | Update::Gone { cluster } => cluster,
        }
    }
}

/// An update as a source sent it, with the source's id: a stopped source's task may
/// still send one after [`Update::Gone`] (aborting a task is not immediate), which
/// [`Sources::accept`] then drops.
#[derive(Debug)]
pub struct Sent {
    source: u64,
    update: Update,
}

/// What the view holds of one cluster.
#[derive(Debug, Clone, Default)]
struct Held {
    link: Link,
    /// The Services the last complete list covered.
    covered: BTreeSet<ServiceKey>,
    services: BTreeMap<ServiceKey, Vec<SliceEndpoints>>,
    /// Its grace ran out and the change was marked.
    expired: bool,
}

impl Held {
    /// Whether its endpoints count at `now`.
    fn contributes(&self, now: Instant, grace: Duration) -> bool {
        match self.link {
            Link::Unknown => false,
            Link::Synced => true,
            Link::Lost { since } => now.saturating_duration_since(since) < grace,
        }
    }
}

/// A cluster as [`EndpointView::status`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub link: Link,
    /// Whether its endpoints count now.
    pub contributes: bool,
    /// Services the last complete list covered.
    pub services: usize,
    /// Ready addresses held, over those Services.
    pub endpoints: usize,
}

/// An upstream's nodes as the view answers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nodes {
    /// Distinct, sorted.
    pub addresses: Vec<SocketAddr>,
    /// Why a named cluster or a slice gives nothing (for the upstream's warnings).
    pub warnings: Vec<String>,
}

/// What the sources said, and what changed since the last [`EndpointView::take_changed`].
#[derive(Debug, Clone)]
pub struct EndpointView {
    grace: Duration,
    clusters: BTreeMap<String, Held>,
    /// (cluster, Service) whose endpoints changed.
    changed: BTreeSet<(String, ServiceKey)>,
    /// Clusters whose contribution as a whole started or stopped.
    changed_clusters: BTreeSet<String>,
}

impl EndpointView {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            clusters: BTreeMap::new(),
            changed: BTreeSet::new(),
            changed_clusters: BTreeSet::new(),
        }
    }

    pub fn set_grace(&mut self, grace: Duration) {
        if grace != self.grace {
            self.grace = grace;
            self.changed_clusters.extend(self.clusters.keys().cloned());
        }
    }

    /// Applies a source's update as of `now`; false when no upstream's nodes can
    /// have changed.
    pub fn apply(&mut self, update: Update, now: Instant) -> bool {
        let before = (self.changed.len(), self.changed_clusters.len());
        match update {
            Update::Link { cluster, link } => {
                let grace = self.grace;
                let held = self.clusters.entry(cluster.clone()).or_default();
                let was = held.contributes(now, grace);
                held.link = link;
                held.expired = false;
                if held.contributes(now, grace) != was {
                    self.changed_clusters.insert(cluster);
                }
            }
            Update::Listed {
                cluster,
                covered,
                services,
            } => {
                let held = self.clusters.entry(cluster.clone()).or_default();
                let keys: BTreeSet<ServiceKey> = held
                    .covered
                    .iter()
                    .chain(&covered)
                    .chain(held.services.keys())
                    .chain(services.keys())
                    .cloned()
                    .collect();
                let old = std::mem::replace(
                    held,
                    Held {
                        covered,
                        services,
                        ..held.clone()
                    },
                );
                for key in keys {
                    let before = (old.covered.contains(&key), old.services.get(&key));
                    let after = (held.covered.contains(&key), held.services.get(&key));
                    if before != after {
                        self.changed.insert((cluster.clone(), key));
                    }
                }
            }
            Update::Service {
                cluster,
                key,
                slices,
            } => {
                let held = self.clusters.entry(cluster.clone()).or_default();
                let old = if slices.is_empty() {
                    held.services.remove(&key)
                } else {
                    held.services.insert(key.clone(), slices.clone())
                };
                if old.unwrap_or_default() != slices {
                    self.changed.insert((cluster, key));
                }
            }
            Update::Gone { cluster } => {
                if self.clusters.remove(&cluster).is_some() {
                    self.changed_clusters.insert(cluster);
                }
            }
        }
        (self.changed.len(), self.changed_clusters.len()) != before
    }

    /// Marks the clusters whose grace ran out by `now`; false when there were none.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut any = false;
        for (name, held) in &mut self.clusters {
            if matches!(held.link, Link::Lost { .. })
                && !held.expired
                && !held.contributes(now, self.grace)
            {
                held.expired = true;
                self.changed_clusters.insert(name.clone());
                any = true;
            }
        }
        any
    }

    /// When the next lost cluster's grace runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.clusters
            .values()
            .filter(|held| !held.expired)
            .filter_map(|held| match held.link {
                Link::Lost { since } => Some(since + self.grace),
                _ => None,
            })
            .min()
    }

    /// What changed since the last call: (cluster, Service) pairs, and clusters
    /// whose whole contribution changed.
    pub fn take_changed(&mut self) -> (BTreeSet<(String, ServiceKey)>, BTreeSet<String>) {
        (
            std::mem::take(&mut self.changed),
            std::mem::take(&mut self.changed_clusters),
        )
    }

    /// The nodes of `want` at `now`: the union of the Service's ready endpoints in
    /// every named cluster that contributes.
    pub fn nodes(&self, want: &Want, now: Instant) -> Nodes {
        let mut addresses = BTreeSet::new();
        let mut warnings = Vec::new();
        for cluster in &want.clusters {
            let Some(held) = self.clusters.get(cluster) else {
                warnings.push(format!("cluster {cluster}: not listed yet"));
                continue;
            };
            if !held.contributes(now, self.grace) {
                warnings.push(match held.link {
                    Link::Lost { .. } => format!(
                        "cluster {cluster}: unreachable for longer than the grace period ({:?}); its endpoints are left out",
                        self.grace
                    ),
                    _ => format!("cluster {cluster}: not listed yet"),
                });
                continue;
            }
            if !held.covered.contains(&want.service) {
                warnings.push(format!(
                    "cluster {cluster}: {} not listed yet",
                    want.service
                ));
                continue;
            }
            for slice in held.services.get(&want.service).into_iter().flatten() {
                if slice
                    .mirrored_from
                    .as_ref()
                    .is_some_and(|source| want.clusters.contains(source))
                {
                    continue;
                }
                match slice.port(&want.port) {
                    Some(port) => addresses.extend(
                        slice
                            .addresses
                            .iter()
                            .map(|address| SocketAddr::new(*address, port)),
                    ),
                    None if slice.addresses.is_empty() => {}
                    None => warnings.push(format!(
                        "cluster {cluster}: a slice of {} has no TCP port {}",
                        want.service,
                        match &want.port {
                            PortWant::Only => "(it has several: name one)".to_owned(),
                            PortWant::Name(name) => format!("named {name:?}"),
                            PortWant::Number(n) => n.to_string(),
                        }
                    )),
                }
            }
        }
        warnings.dedup();
        Nodes {
            addresses: addresses.into_iter().collect(),
            warnings,
        }
    }

    /// Every cluster held, as of `now`.
    pub fn status(&self, now: Instant) -> BTreeMap<String, ClusterState> {
        self.clusters
            .iter()
            .map(|(name, held)| {
                let state = ClusterState {
                    link: held.link,
                    contributes: held.contributes(now, self.grace),
                    services: held.covered.len(),
                    endpoints: held
                        .services
                        .values()
                        .flatten()
                        .map(|s| s.addresses.len())
                        .sum(),
                };
                (name.clone(), state)
            })
            .collect()
    }
}

/// The sources of the clusters some upstream names.
pub struct Sources {
    timings: Timings,
    specs: BTreeMap<String, ClusterSpec>,
    running: BTreeMap<String, Running>,
    updates: mpsc::UnboundedSender<Sent>,
    /// The id the next source gets.
    next_id: u64,
}

struct Running {
    id: u64,
    spec: ClusterSpec,
    wanted: watch::Sender<BTreeSet<ServiceKey>>,
    _task: AbortOnDrop,
}

impl Sources {
    /// No source yet; their updates arrive on the receiver.
    pub fn new(timings: Timings) -> (Self, mpsc::UnboundedReceiver<Sent>) {
        let (updates, receiver) = mpsc::unbounded_channel();
        let sources = Self {
            timings,
            specs: BTreeMap::new(),
            running: BTreeMap::new(),
            updates,
            next_id: 0,
        };
        (sources, receiver)
    }

    /// The update `sent` carries, unless its source was stopped since.
    pub fn accept(&self, sent: Sent) -> Option<Update> {
        let current = match &sent.update {
            Update::Gone { .. } => true,
            update => self
                .running
                .get(update.cluster())
                .is_some_and(|running| running.id == sent.source),
        };
        current.then_some(sent.update)
    }

    /// Takes a new list: a source whose cluster left it or changed stops (and is
    /// started again with the new spec when still wanted, see [`Sources::want`]).
    pub fn set_clusters(&mut self, specs: Vec<ClusterSpec>, timings: Timings) {
        let restart_all = timings != self.timings;
        self.timings = timings;
        self.specs = specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| restart_all || self.specs.get(*name) != Some(&running.spec))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.stop(&name);
        }
    }

    /// Runs a source for every listed cluster with Services wanted, each watching
    /// those Services; stops the others.
    pub fn want(&mut self, mut wanted: BTreeMap<String, BTreeSet<ServiceKey>>) {
        wanted.retain(|cluster, services| !services.is_empty() && self.specs.contains_key(cluster));
        let unwanted: Vec<String> = self
            .running
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in unwanted {
            self.stop(&name);
        }
        for (cluster, services) in wanted {
            match self.running.get(&cluster) {
                Some(running) => {
                    running.wanted.send_if_modified(|held| {
                        let changed = *held != services;
                        *held = services;
                        changed
                    });
                }
                None => {
                    let spec = self.specs[&cluster].clone();
                    let (wanted, receiver) = watch::channel(services);
                    let id = self.next_id;
                    self.next_id += 1;
                    let task = tokio::spawn(run_source(
                        id,
                        spec.clone(),
                        self.timings.clone(),
                        receiver,
                        self.updates.clone(),
                    ));
                    tracing::info!(%cluster, "kubernetes discovery: watching");
                    self.running.insert(
                        cluster,
                        Running {
                            id,
                            spec,
                            wanted,
                            _task: AbortOnDrop(task),
                        },
                    );
                }
            }
        }
    }

    fn stop(&mut self, cluster: &str) {
        if let Some(running) = self.running.remove(cluster) {
            tracing::info!(%cluster, "kubernetes discovery: stopped watching");
            let _ = self.updates.send(Sent {
                source: running.id,
                update: Update::Gone {
                    cluster: cluster.to_owned(),
                },
            });
        }
    }
}

/// One cluster's source: sessions (a client and its watch) one after another.
async fn run_source(
    id: u64,
    spec: ClusterSpec,
    timings: Timings,
    mut wanted: watch::Receiver<BTreeSet<ServiceKey>>,
    updates: mpsc::UnboundedSender<Sent>,
) {
    let mut source = Source {
        id,
        spec,
        timings,
        updates,
        link: LinkTracker::default(),
        complete: false,
    };
    loop {
        let (client, loaded_at) = match build_client(&source.spec, &source.timings).await {
            Ok(built) => built,
            Err(error) => {
                tracing::warn!(cluster = %source.spec.name, %error, "cannot make a client");
                source.set_link(false);
                tokio::time::sleep(source.timings.probe_every).await;
                continue;
            }
        };
        loop {
            match source.session(&client, loaded_at, &mut wanted).await {
                Session::Wanted => continue,
                Session::Ended(end) => {
                    tracing::info!(cluster = %source.spec.name, reason = ?end, "kubernetes discovery: new session");
                    break;
                }
            }
        }
    }
}

/// Why a source's session ended.
#[derive(Debug)]
enum Session {
    /// Other Services are wanted: watch them (same client).
    Wanted,
    /// See [`End`].
    Ended(End),
}

struct Source {
    id: u64,
    spec: ClusterSpec,
    timings: Timings,
    updates: mpsc::UnboundedSender<Sent>,
    link: LinkTracker,
    /// A complete list arrived at least once.
    complete: bool,
}

/// The slices of wanted Services held: slice (namespace, name) → its Service and
/// endpoints.
type Cache = BTreeMap<(String, String), (ServiceKey, SliceEndpoints)>;

/// The slices of `key` in `cache`.
fn slices_of(cache: &Cache, key: &ServiceKey) -> Vec<SliceEndpoints> {
    cache
        .values()
        .filter(|(service, _)| service == key)
        .map(|(_, slice)| slice.clone())
        .collect()
}

impl Source {
    fn send(&self, update: Update) {
        let _ = self.updates.send(Sent {
            source: self.id,
            update,
        });
    }

    fn set_link(&mut self, healthy: bool) {
        if let Some(link) = self.link.observe(self.complete, healthy) {
            tracing::info!(cluster = %self.spec.name, ?link, "kubernetes discovery: link");
            self.send(Update::Link {
                cluster: self.spec.name.clone(),
                link,
            });
        }
    }

    async fn session(
        &mut self,
        client: &kube::Client,
        loaded_at: Option<SystemTime>,
        wanted: &mut watch::Receiver<BTreeSet<ServiceKey>>,
    ) -> Session {
        let want = wanted.borrow_and_update().clone();
        let names: BTreeSet<&str> = want.iter().map(|k| k.name.as_str()).collect();
        let selector = format!(
            "{LABEL_SERVICE_NAME} in ({})",
            names.into_iter().collect::<Vec<_>>().join(",")
        );
        let watch_timeout = u32::try_from(self.timings.watch_timeout.as_secs()).unwrap_or(290);
        let slices = watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default()
                .labels(&selector)
                .timeout(watch_timeout),
        )
        .default_backoff();
        let mut slices = std::pin::pin!(slices);
        let (probe_tx, mut probes) = mpsc::channel(4);
        let _probe = AbortOnDrop(tokio::spawn(probe_loop(
            Api::<EndpointSlice>::all(client.clone()),
            ListParams::default().labels(&selector).limit(1),
            self.timings.clone(),
            probe_tx,
        )));
        let mut cache = Cache::new();
        let mut buffer: Option<Cache> = None;
        // Whether this session's watch listed completely: until then the view keeps
        // what the last session said.
        let mut listed = false;
        let mut failing = false;
        loop {
            let healthy = tokio::select! {
                event = slices.next() => match event {
                    Some(Ok(event)) => {
                        self.on_slice(event, &want, &mut cache, &mut buffer, &mut listed);
                        true
                    }
                    Some(Err(error)) => match watch_failed(&self.spec.name, "slice", &error) {
                        Ok(healthy) => healthy,
                        Err(end) => return Session::Ended(end),
                    },
                    None => false,
                },
                probe = probes.recv() => {
                    match probe_outcome(probe, failing, &self.spec, loaded_at, &mut self.link) {
                        Ok(healthy) => healthy,
                        Err(end) => return Session::Ended(end),
                    }
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        // The source is being dropped.
                        std::future::pending::<()>().await;
                    }
                    return Session::Wanted;
                }
            };
            if healthy {
                self.link.contact();
            }
            failing = !healthy;
            self.set_link(healthy);
        }
    }

    fn on_slice(
        &mut self,
        event: watcher::Event<EndpointSlice>,
        want: &BTreeSet<ServiceKey>,
        cache: &mut Cache,
        buffer: &mut Option<Cache>,
        listed: &mut bool,
    ) {
        // A slice of a wanted Service: its key and what it holds.
        let entry = |slice: &EndpointSlice| {
            let key = object_key(&slice.metadata)?;
            let service = ServiceKey::new(&key.0, slices::service_of(slice)?);
            want.contains(&service)
                .then(|| Some((key, (service, SliceEndpoints::of(slice)?))))
                .flatten()
        };
        match event {
            watcher::Event::Init => *buffer = Some(Cache::new()),
            watcher::Event::InitApply(slice) => {
                if let (Some(buffer), Some((key, held))) = (buffer.as_mut(), entry(&slice)) {
                    buffer.insert(key, held);
                }
            }
            watcher::Event::InitDone => {
                *cache = buffer.take().unwrap_or_default();
                *listed = true;
                self.complete = true;
                let mut services: BTreeMap<ServiceKey, Vec<SliceEndpoints>> = BTreeMap::new();
                for (service, slice) in cache.values() {
                    services
                        .entry(service.clone())
                        .or_default()
                        .push(slice.clone());
                }
                self.send(Update::Listed {
                    cluster: self.spec.name.clone(),
                    covered: want.clone(),
                    services,
                });
            }
            watcher::Event::Apply(slice) if *listed => {
                if let Some(key) = object_key(&slice.metadata) {
                    let held = entry(&slice);
                    self.replace(cache, key, held.map(|(_, held)| held));
                }
            }
            watcher::Event::Delete(slice) if *listed => {
                if let Some(key) = object_key(&slice.metadata) {
                    self.replace(cache, key, None);
                }
            }
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
        }
    }

    /// Holds `held` for the slice at `key` (nothing: deleted, or no longer of a wanted
    /// Service) and sends the Services it left or joined.
    fn replace(
        &self,
        cache: &mut Cache,
        key: (String, String),
        held: Option<(ServiceKey, SliceEndpoints)>,
    ) {
        let old = match held {
            Some(held) => cache
                .insert(key.clone(), held.clone())
                .map(|old| (old, Some(held))),
            None => cache.remove(&key).map(|old| (old, None)),
        };
        let touched: BTreeSet<ServiceKey> = match &old {
            Some((old, new)) if Some(old) == new.as_ref() => return,
            Some((old, new)) => [Some(old.0.clone()), new.as_ref().map(|n| n.0.clone())]
                .into_iter()
                .flatten()
                .collect(),
            None => match cache.get(&key) {
                Some((service, _)) => [service.clone()].into(),
                None => return,
            },
        };
        for service in touched {
            self.send(Update::Service {
                cluster: self.spec.name.clone(),
                slices: slices_of(cache, &service),
                key: service,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn port(name: &str, number: i32) -> Port {
        Port {
            name: Some(name.to_owned()),
            port: number,
            protocol: "TCP".into(),
            app_protocol: None,
        }
    }

    fn slice(ports: Vec<Port>, addresses: &[&str], mirrored_from: Option<&str>) -> SliceEndpoints {
        SliceEndpoints {
            ports,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            mirrored_from: mirrored_from.map(str::to_owned),
        }
    }

    fn web() -> ServiceKey {
        ServiceKey::new("shop", "web")
    }

    fn want(port: PortWant, clusters: &[&str]) -> Want {
        Want {
            service: web(),
            port,
            clusters: clusters.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    fn listed(cluster: &str, slices: Vec<SliceEndpoints>) -> Update {
        Update::Listed {
            cluster: cluster.into(),
            covered: [web()].into(),
            services: [(web(), slices)].into(),
        }
    }

    fn link(cluster: &str, link: Link) -> Update {
        Update::Link {
            cluster: cluster.into(),
            link,
        }
    }

    fn addresses(view: &EndpointView, want: &Want, now: Instant) -> Vec<String> {
        view.nodes(want, now)
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Two clusters, each listed and synced.
    fn two_clusters(now: Instant) -> EndpointView {
        let mut view = EndpointView::new(GRACE);
        let http = || vec![port("http", 8080)];
        view.apply(listed("idc", vec![slice(http(), &["10.0.0.1"], None)]), now);
        view.apply(
            listed(
                "peak",
                vec![
                    slice(http(), &["10.1.0.1", "10.1.0.2"], None),
                    slice(http(), &["10.1.0.2", "10.1.0.3"], None),
                ],
            ),
            now,
        );
        view.apply(link("idc", Link::Synced), now);
        view.apply(link("peak", Link::Synced), now);
        view.take_changed();
        view
    }

    #[test]
    fn the_union_of_the_named_clusters_ready_endpoints() {
        let now = Instant::now();
        let view = two_clusters(now);
        let both = want(PortWant::Name("http".into()), &["idc", "peak"]);
        assert_eq!(
            addresses(&view, &both, now),
            [
                "10.0.0.1:8080",
                "10.1.0.1:8080",
                "10.1.0.2:8080",
                "10.1.0.3:8080"
            ],
            "distinct addresses of both clusters"
        );
        let idc = want(PortWant::Only, &["idc"]);
        assert_eq!(addresses(&view, &idc, now), ["10.0.0.1:8080"]);
        let by_number = want(PortWant::Number(8080), &["idc"]);
        assert_eq!(addresses(&view, &by_number, now), ["10.0.0.1:8080"]);
        let wrong = want(PortWant::Name("grpc".into()), &["idc"]);
        let nodes = view.nodes(&wrong, now);
        assert!(nodes.addresses.is_empty());
        assert_eq!(
            nodes.warnings,
            ["cluster idc: a slice of shop/web has no TCP port named \"grpc\""]
        );
    }

    #[test]
    fn clusters_not_listed_yet_give_nothing_and_say_so() {
        let now = Instant::now();
        let mut view = EndpointView::new(GRACE);
        view.apply(
            listed(
                "idc",
                vec![slice(vec![port("http", 80)], &["10.0.0.1"], None)],
            ),
            now,
        );
        // Listed but its link not reported yet: what it holds is not trusted.
        let both = want(PortWant::Only, &["idc", "peak"]);
        let nodes = view.nodes(&both, now);
        assert!(nodes.addresses.is_empty());
        assert_eq!(
            nodes.warnings,
            [
                "cluster idc: not listed yet",
                "cluster peak: not listed yet"
            ]
        );
        view.apply(link("idc", Link::Synced), now);
        assert_eq!(addresses(&view, &both, now), ["10.0.0.1:80"]);
        // A Service the last list did not cover gives nothing rather than "none".
        let other = Want {
            service: ServiceKey::new("shop", "cart"),
            ..both
        };
        assert_eq!(
            view.nodes(&other, now).warnings,
            [
                "cluster idc: shop/cart not listed yet",
                "cluster peak: not listed yet"
            ]
        );
    }

    #[test]
    fn a_lost_cluster_keeps_its_endpoints_for_the_grace_then_gives_none() {
        let start = Instant::now();
        let mut view = two_clusters(start);
        let both = want(PortWant::Only, &["idc", "peak"]);
        let lost_at = start + Duration::from_secs(1);
        // Synced → lost: it still contributes, so no upstream needs building.
        assert!(!view.apply(link("peak", Link::Lost { since: lost_at }), lost_at));
        assert_eq!(view.next_expiry(), Some(lost_at + GRACE));
        let in_grace = lost_at + GRACE - Duration::from_millis(1);
        assert!(!view.expire(in_grace));
        assert_eq!(addresses(&view, &both, in_grace).len(), 4);
        let after = lost_at + GRACE;
        assert!(view.expire(after), "the grace ran out: build again");
        assert!(!view.expire(after), "marked once");
        assert_eq!(view.next_expiry(), None);
        assert_eq!(view.take_changed().1, ["peak".to_owned()].into());
        assert_eq!(addresses(&view, &both, after), ["10.0.0.1:8080"]);
        assert!(view.nodes(&both, after).warnings[0].starts_with("cluster peak: unreachable"));
        // Back: its endpoints count again.
        assert!(view.apply(link("peak", Link::Synced), after));
        assert_eq!(addresses(&view, &both, after).len(), 4);
    }

    #[test]
    fn changes_are_reported_per_cluster_and_service_only_when_they_change() {
        let now = Instant::now();
        let mut view = two_clusters(now);
        let same = listed(
            "idc",
            vec![slice(vec![port("http", 8080)], &["10.0.0.1"], None)],
        );
        assert!(!view.apply(same, now), "a relist with the same slices");
        let update = Update::Service {
            cluster: "idc".into(),
            key: web(),
            slices: vec![slice(vec![port("http", 8080)], &["10.0.0.9"], None)],
        };
        assert!(view.apply(update.clone(), now));
        assert!(!view.apply(update, now));
        assert_eq!(
            view.take_changed(),
            ([("idc".to_owned(), web())].into(), BTreeSet::new())
        );
        assert!(view.apply(
            Update::Gone {
                cluster: "peak".into()
            },
            now
        ));
        assert_eq!(view.take_changed().1, ["peak".to_owned()].into());
    }

    #[test]
    fn the_controllers_slices_count_only_for_clusters_not_read_directly() {
        let now = Instant::now();
        let mut view = EndpointView::new(GRACE);
        let http = || vec![port("http", 8080)];
        view.apply(
            listed(
                "idc",
                vec![
                    slice(http(), &["10.0.0.1"], None),
                    slice(http(), &["10.1.0.7"], Some("peak")),
                ],
            ),
            now,
        );
        view.apply(link("idc", Link::Synced), now);
        // Only idc named: the controller's copy of peak's endpoints is all there is.
        let idc = want(PortWant::Only, &["idc"]);
        assert_eq!(
            addresses(&view, &idc, now),
            ["10.0.0.1:8080", "10.1.0.7:8080"]
        );
        // Peak named too: the gateway reads peak itself (here: not yet), so the copy,
        // which may be older than peak's own grace allows, is skipped.
        let both = want(PortWant::Only, &["idc", "peak"]);
        assert_eq!(addresses(&view, &both, now), ["10.0.0.1:8080"]);
    }

    #[test]
    fn a_slice_is_read_as_the_endpointslice_api_says() {
        let object: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "portico-xcluster",
                "multicluster.kubernetes.io/source-cluster": "peak",
            }},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
            ],
        }))
        .unwrap();
        let read = SliceEndpoints::of(&object).unwrap();
        assert_eq!(read.mirrored_from.as_deref(), Some("peak"));
        assert_eq!(
            read.addresses,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ],
            "no ready condition counts as ready; not ready is left out"
        );
        assert_eq!(read.port(&PortWant::Name("http".into())), Some(8080));
        assert_eq!(read.port(&PortWant::Name("dns".into())), None, "UDP");
        assert_eq!(read.port(&PortWant::Only), None, "two ports: name one");
        let fqdn: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "addressType": "FQDN", "endpoints": [],
        }))
        .unwrap();
        assert_eq!(SliceEndpoints::of(&fqdn), None);
    }
}
