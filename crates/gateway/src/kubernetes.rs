//! The Kubernetes endpoints a gateway node follows (requirement X5): upstreams in
//! `kubernetes` discovery mode take their nodes from a Service's ready endpoints in
//! the clusters they name.
//!
//! The node reads its cluster list (`--kubernetes-clusters`, the controller's file
//! format, re-read on its `reload_every`) and runs a source (xcluster's
//! [`Sources`](xcluster::discovery::Sources)) for each cluster some upstream names; the
//! config loop applies the sources' updates here and builds again, remaking only the
//! pools of the upstreams whose Service changed (as for the registry). The failure
//! rules live in [`xcluster::discovery::EndpointView`]: a cluster not listed yet gives
//! nothing, a lost one keeps its endpoints for the grace period and then gives
//! nothing, and the loop builds again when a grace period runs out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use model::registry::{Discovery, DiscoveryKind, PortRef};
use model::upstream::UpstreamNode;
use xcluster::discovery::{EndpointView, PortWant, Update, Want};
use xcluster::union::{Link, ServiceKey};

/// The endpoints held, and the clusters the node's list names.
#[derive(Debug, Clone)]
pub struct KubernetesView {
    view: EndpointView,
    /// `None`: the node was started without a cluster list.
    clusters: Option<BTreeSet<String>>,
    /// Clusters that joined or left the list since the last build.
    listed: BTreeSet<String>,
}

impl Default for KubernetesView {
    fn default() -> Self {
        Self {
            view: EndpointView::new(xcluster::union::DEFAULT_GRACE),
            clusters: None,
            listed: BTreeSet::new(),
        }
    }
}

impl KubernetesView {
    /// Takes the node's cluster list (names) and grace period.
    pub fn set_clusters(&mut self, names: BTreeSet<String>, grace: Duration) {
        self.view.set_grace(grace);
        let old = self.clusters.take().unwrap_or_default();
        self.listed
            .extend(old.symmetric_difference(&names).cloned());
        self.clusters = Some(names);
    }

    /// Applies a source's update; false when no upstream's nodes can have changed.
    pub fn apply(&mut self, update: Update) -> bool {
        self.view.apply(update, Instant::now())
    }

    /// Marks the clusters whose grace ran out; false when none did.
    pub fn expire(&mut self) -> bool {
        self.view.expire(Instant::now())
    }

    /// When the next lost cluster's grace runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.view.next_expiry()
    }

    /// What changed since the last build: (cluster, Service) pairs, and clusters
    /// whose whole contribution (or place in the list) changed.
    pub(crate) fn take_changed(&mut self) -> (BTreeSet<(String, ServiceKey)>, BTreeSet<String>) {
        let (services, mut clusters) = self.view.take_changed();
        clusters.append(&mut self.listed);
        (services, clusters)
    }

    /// The nodes of an upstream in `kubernetes` mode as of now, and why a named cluster
    /// gives none.
    pub fn upstream_nodes(&self, discovery: &Discovery) -> (Vec<UpstreamNode>, Vec<String>) {
        let Some(want) = want_of(discovery) else {
            return (Vec::new(), Vec::new());
        };
        let mut warnings = Vec::new();
        match &self.clusters {
            None => warnings.push(
                "this gateway node has no Kubernetes cluster list (--kubernetes-clusters)"
                    .to_owned(),
            ),
            Some(known) => {
                for cluster in want.clusters.iter().filter(|c| !known.contains(*c)) {
                    warnings.push(format!(
                        "cluster {cluster}: not in this gateway node's cluster list"
                    ));
                }
            }
        }
        let nodes = self.view.nodes(&want, Instant::now());
        warnings.extend(nodes.warnings);
        let nodes = nodes
            .addresses
            .into_iter()
            .map(|address| UpstreamNode {
                host: address.ip().to_string(),
                port: i64::from(address.port()),
                weight: 1,
            })
            .collect();
        (nodes, warnings)
    }

    /// Each cluster as `/status` shows it (`last_contact_ms`: when a lost cluster last
    /// answered, unix milliseconds).
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let mut states = self.view.status(now);
        // Listed clusters no source reported on yet (none watched, or none answered).
        for name in self.clusters.iter().flatten() {
            states
                .entry(name.clone())
                .or_insert(xcluster::discovery::ClusterState {
                    link: Link::Unknown,
                    contributes: false,
                    services: 0,
                    endpoints: 0,
                });
        }
        let clusters: serde_json::Map<String, serde_json::Value> = states
            .into_iter()
            .map(|(name, state)| {
                let (link, lost_since_ms) = match state.link {
                    Link::Unknown => ("unknown", None),
                    Link::Synced => ("synced", None),
                    Link::Lost { since } => {
                        let ago = now.saturating_duration_since(since);
                        let at = std::time::SystemTime::now() - ago;
                        let ms = at
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                        ("lost", Some(ms))
                    }
                };
                let value = serde_json::json!({
                    "link": link,
                    "last_contact_ms": lost_since_ms,
                    "contributes": state.contributes,
                    "services": state.services,
                    "endpoints": state.endpoints,
                });
                (name, value)
            })
            .collect();
        serde_json::Value::Object(clusters)
    }
}

/// What a `kubernetes` discovery asks the sources for; `None` for another kind (or a
/// discovery that would not pass validation).
pub fn want_of(discovery: &Discovery) -> Option<Want> {
    if discovery.kind != DiscoveryKind::Kubernetes {
        return None;
    }
    let (namespace, name) = discovery.service.split_once('/')?;
    let port = match &discovery.port {
        None => PortWant::Only,
        Some(PortRef::Name(name)) => PortWant::Name(name.clone()),
        Some(PortRef::Number(n)) => PortWant::Number(i32::try_from(*n).ok()?),
    };
    Some(Want {
        service: ServiceKey::new(namespace, name),
        port,
        clusters: discovery.clusters.clone(),
    })
}

/// The Services each cluster must be watched for, over `discoveries`.
pub fn wanted<'a>(
    discoveries: impl IntoIterator<Item = &'a Discovery>,
) -> BTreeMap<String, BTreeSet<ServiceKey>> {
    let mut wanted: BTreeMap<String, BTreeSet<ServiceKey>> = BTreeMap::new();
    for want in discoveries.into_iter().filter_map(want_of) {
        for cluster in want.clusters {
            wanted
                .entry(cluster)
                .or_default()
                .insert(want.service.clone());
        }
    }
    wanted
}
