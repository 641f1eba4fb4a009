//! The aggregator (requirements X3, X4): one task that takes every cluster
//! controller's reports from one channel, keeps each cluster's [`ClusterView`], plans
//! the union ([`crate::union::plan`]) and hands each production cluster's writes to
//! its writer, one batch in flight per cluster.
//!
//! Its own writes are recognised (X4, seed 004's warning): when a batch is done, the
//! slices the cluster answered with are taken as what it holds, so the next plan is
//! already empty, and the watch events those writes cause carry the same slices and
//! change nothing. A steady state therefore makes no writes at all.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::mpsc;

use crate::cluster::Report;
use crate::union::{self, ClusterView, Link, Role, ServiceKey, Write};

/// What the aggregator knows and did, for the status page and metrics.
#[derive(Debug, Clone)]
pub struct Status {
    pub clusters: BTreeMap<String, ClusterStatus>,
    /// (production cluster, Service) → the union's ready addresses.
    pub union_sizes: BTreeMap<(String, ServiceKey), usize>,
    /// Plans made, and writes applied, deleted and failed.
    pub plans: u64,
    pub applied: u64,
    pub deleted: u64,
    pub failed: u64,
    /// From the first report a plan acted on to its writes being done, last time.
    pub last_reconcile: Option<Duration>,
    pub problems: Vec<String>,
    /// Whether this replica holds the Lease (only the leader writes).
    pub leader: bool,
    /// Every reconcile's duration, as [`Status::last_reconcile`] measures it (shared:
    /// clones observe into the same histogram).
    pub reconcile: Histogram,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            clusters: BTreeMap::new(),
            union_sizes: BTreeMap::new(),
            plans: 0,
            applied: 0,
            deleted: 0,
            failed: 0,
            last_reconcile: None,
            problems: Vec::new(),
            leader: false,
            // 1 ms to about 16 s.
            reconcile: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

/// One cluster as the status shows it.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub role: Role,
    pub provider: String,
    pub link: Link,
    /// The last time the cluster was synced (its watches and probe answering).
    pub last_synced: Option<SystemTime>,
    /// Ready endpoints this (peak) cluster gives to production Services.
    pub contributed: usize,
    /// The same per production Service it gives endpoints to.
    pub contributed_by_service: BTreeMap<ServiceKey, usize>,
    /// Labelled Services it holds.
    pub services: usize,
}

/// The aggregator's state.
pub struct Aggregator {
    views: BTreeMap<String, ClusterView>,
    writers: BTreeMap<String, mpsc::Sender<Vec<Write>>>,
    /// Clusters with a batch being written, and when the work that led to it began.
    in_flight: BTreeMap<String, Instant>,
    grace: Duration,
    /// Something changed since the last plan, and since when.
    dirty_since: Option<Instant>,
    /// Writes failed: plan again at this time (not at once, which would hammer a
    /// cluster that refuses them).
    retry_at: Option<Instant>,
    status: Status,
}

/// How long after failed writes they are tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Aggregator {
    pub fn new(grace: Duration) -> Self {
        Self {
            views: BTreeMap::new(),
            writers: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            grace,
            dirty_since: None,
            retry_at: None,
            status: Status::default(),
        }
    }

    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Whether this replica writes; becoming the leader plans at once.
    pub fn set_leader(&mut self, leader: bool) {
        if leader && !self.status.leader {
            self.touch();
        }
        self.status.leader = leader;
    }

    /// A cluster joins (or is replaced): nothing is known of it yet.
    pub fn add_cluster(
        &mut self,
        name: &str,
        role: Role,
        provider: &str,
        writes: mpsc::Sender<Vec<Write>>,
    ) {
        self.views.insert(name.to_owned(), ClusterView::new(role));
        self.writers.insert(name.to_owned(), writes);
        self.in_flight.remove(name);
        self.status.clusters.insert(
            name.to_owned(),
            ClusterStatus {
                role,
                provider: provider.to_owned(),
                link: Link::Unknown,
                last_synced: None,
                contributed: 0,
                contributed_by_service: BTreeMap::new(),
                services: 0,
            },
        );
        self.touch();
    }

    /// A cluster left the list: its view goes, and with it the slices it gave.
    pub fn remove_cluster(&mut self, name: &str) {
        self.views.remove(name);
        self.writers.remove(name);
        self.in_flight.remove(name);
        self.status.clusters.remove(name);
        self.touch();
    }

    fn touch(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// Takes one report into the views.
    pub fn take(&mut self, report: Report) {
        match report {
            Report::Link { cluster, link } => {
                if let Some(view) = self.views.get_mut(&cluster) {
                    view.link = link;
                }
                if let Some(status) = self.status.clusters.get_mut(&cluster) {
                    status.link = link;
                    if link == Link::Synced {
                        status.last_synced = Some(SystemTime::now());
                    }
                }
            }
            Report::Complete {
                cluster,
                services,
                managed,
            } => {
                if let Some(view) = self.views.get_mut(&cluster) {
                    view.services = services;
                    view.managed = managed;
                }
            }
            Report::Service { cluster, key, view } => {
                if let Some(cluster) = self.views.get_mut(&cluster) {
                    match view {
                        Some(view) => cluster.services.insert(key, view),
                        None => cluster.services.remove(&key),
                    };
                }
            }
            Report::Managed {
                cluster,
                key,
                slice,
            } => {
                if let Some(cluster) = self.views.get_mut(&cluster) {
                    match slice {
                        Some(slice) => cluster.managed.insert(key, slice),
                        None => cluster.managed.remove(&key),
                    };
                }
            }
            Report::Written {
                cluster,
                held,
                failed,
            } => {
                let began = self.in_flight.remove(&cluster);
                if let Some(view) = self.views.get_mut(&cluster) {
                    for (key, slice) in held {
                        match slice {
                            Some(slice) => {
                                self.status.applied += 1;
                                view.managed.insert(key, slice);
                            }
                            None => {
                                self.status.deleted += 1;
                                view.managed.remove(&key);
                            }
                        }
                    }
                }
                self.status.failed += failed as u64;
                if failed > 0 {
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                    return;
                }
                if let Some(began) = began {
                    let took = began.elapsed();
                    self.status.last_reconcile = Some(took);
                    self.status.reconcile.observe(took.as_secs_f64());
                }
            }
        }
        self.touch();
    }

    /// Plans when something changed (or a lost cluster's grace may have run out) and
    /// sends each production cluster without a batch in flight its writes.
    pub fn reconcile(&mut self, now: Instant) {
        let losing = self
            .views
            .values()
            .any(|v| matches!(v.link, Link::Lost { .. }));
        let retry = self.retry_at.is_some_and(|at| at <= now);
        let Some(since) = self.dirty_since.or((losing || retry).then_some(now)) else {
            return;
        };
        if retry {
            self.retry_at = None;
        }
        let plan = union::plan(&self.views, now, self.grace);
        self.status.plans += 1;
        self.status.union_sizes = plan.union_sizes.clone();
        self.status.problems = plan.problems.clone();
        for (name, status) in &mut self.status.clusters {
            status.contributed = plan.contributed.get(name).copied().unwrap_or(0);
            status.contributed_by_service = plan
                .contributed_by_service
                .get(name)
                .cloned()
                .unwrap_or_default();
            status.services = self.views.get(name).map_or(0, |v| v.services.len());
        }
        if !self.status.leader {
            // A standby plans (its status shows what it would do) and writes nothing.
            self.dirty_since = None;
            return;
        }
        let mut waiting = false;
        for (cluster, writes) in plan.writes {
            if writes.is_empty() {
                continue;
            }
            if self.in_flight.contains_key(&cluster) {
                waiting = true;
                continue;
            }
            let Some(writer) = self.writers.get(&cluster) else {
                continue;
            };
            match writer.try_send(writes) {
                Ok(()) => {
                    self.in_flight.insert(cluster, since);
                }
                Err(_) => waiting = true,
            }
        }
        // Still dirty while a cluster waits for its batch to finish.
        self.dirty_since = waiting.then_some(since);
    }

    /// Whether a plan is owed (something changed and was not yet acted on).
    pub fn is_dirty(&self) -> bool {
        self.dirty_since.is_some()
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The production clusters with a batch being written.
    pub fn in_flight(&self) -> BTreeSet<String> {
        self.in_flight.keys().cloned().collect()
    }
}
