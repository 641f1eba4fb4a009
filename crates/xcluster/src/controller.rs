//! The controller as a whole (`portico xcluster`): reads the cluster list, runs one
//! cluster controller per cluster and the aggregator, reads the list again every
//! `reload_every` (X1: 30 s) and starts, stops or restarts cluster controllers as
//! clusters come, go or change, without touching the others.
//!
//! A list that cannot be read or checked at a reload is reported and the clusters
//! already running keep running as they were; the first read must succeed.
//!
//! Every replica watches and plans; only the one holding the Lease ([`crate::lease`])
//! writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::aggregator::{Aggregator, Status};
use crate::cluster::{self, ClusterHandle};
use crate::config::{ClusterSpec, Config, LeaseConfig, Timings};
use crate::lease::{self, LeaseSpecification};
use crate::registry::{Admin, Source};

/// What `portico xcluster` is started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster list file (see [`crate::config`]): timings, Lease, clusters.
    pub clusters: Option<PathBuf>,
    /// The admin whose cluster registry lists clusters too ([`crate::registry`]).
    pub admin: Option<Admin>,
    /// This replica's name in the Lease.
    pub identity: String,
}

/// How often the leader reports the clusters' state to the admin.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// How long to wait before reading the list again when the first read failed.
const FIRST_READ_RETRY: Duration = Duration::from_secs(5);

/// How often the aggregator looks at the clock when nothing is reported (a lost
/// cluster's grace running out, failed writes to retry).
const TICK: Duration = Duration::from_millis(250);

/// Runs until `stop` turns true. `status` is refreshed after every plan.
pub async fn run(
    options: Options,
    status: Arc<Mutex<Status>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let source = Arc::new(Source::new(options.clusters, options.admin)?);
    // The admin may not answer yet: wait for a first list (a file that does not parse
    // is an operator's error, answered at once).
    let mut config = loop {
        match source.load().await {
            Ok(config) => break config,
            Err(error) if error.starts_with("admin ") => {
                tracing::warn!(%error, "no cluster list yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(FIRST_READ_RETRY) => {}
                    _ = stop.changed() => if *stop.borrow() { return Ok(()) },
                }
            }
            Err(error) => return Err(error),
        }
    };
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut aggregator = Aggregator::new(config.timings.grace);
    let mut clusters: BTreeMap<String, ClusterHandle> = BTreeMap::new();
    start_and_stop(&config, &mut clusters, &mut aggregator, &report_tx, true);
    let (leader_tx, mut leader) = watch::channel(false);
    let mut election = Election::start(&config, &options.identity, &leader_tx);
    let mut reload = tokio::time::interval(config.timings.reload_every);
    reload.tick().await;
    let mut tick = tokio::time::interval(TICK);
    let mut report = tokio::time::interval(REPORT_EVERY);
    let mut reporting: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else { return Ok(()) };
                aggregator.take(report);
                while let Ok(report) = reports.try_recv() {
                    aggregator.take(report);
                }
            }
            _ = tick.tick() => {}
            _ = report.tick() => {
                // The leader tells the admin what it sees; one report at a time.
                if aggregator.status().leader && reporting.as_ref().is_none_or(|r| r.is_finished()) {
                    let source = source.clone();
                    let status = aggregator.status().clone();
                    let identity = options.identity.clone();
                    reporting = Some(tokio::spawn(async move {
                        source.report(&status, &identity).await;
                    }));
                }
            }
            _ = reload.tick() => match source.load().await {
                Ok(new) => {
                    let timings_changed = new.timings != config.timings;
                    aggregator.set_grace(new.timings.grace);
                    config = new;
                    start_and_stop(&config, &mut clusters, &mut aggregator, &report_tx, timings_changed);
                    if election.key != Election::key_of(&config) {
                        election.stop().await;
                        election = Election::start(&config, &options.identity, &leader_tx);
                    }
                }
                Err(error) => tracing::warn!(%error, "cluster list not reloaded; the clusters keep running as they were"),
            },
            _ = leader.changed() => aggregator.set_leader(*leader.borrow_and_update()),
            _ = stop.changed() => {
                if *stop.borrow() {
                    election.stop().await;
                    return Ok(());
                }
            }
        }
        aggregator.reconcile(Instant::now());
        *status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = aggregator.status().clone();
    }
}

/// Brings the running cluster controllers in line with `config`: stops those no
/// longer listed, starts new ones, restarts those whose entry changed (or all, when
/// `restart_all`: the timings changed).
fn start_and_stop(
    config: &Config,
    clusters: &mut BTreeMap<String, ClusterHandle>,
    aggregator: &mut Aggregator,
    reports: &mpsc::UnboundedSender<cluster::Report>,
    restart_all: bool,
) {
    let listed: BTreeMap<&str, _> = config
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let gone: Vec<String> = clusters
        .keys()
        .filter(|name| !listed.contains_key(name.as_str()))
        .cloned()
        .collect();
    for name in gone {
        tracing::info!(cluster = %name, "cluster removed from the list");
        clusters.remove(&name);
        aggregator.remove_cluster(&name);
    }
    for (name, spec) in listed {
        if !restart_all && clusters.get(name).is_some_and(|c| c.spec == *spec) {
            continue;
        }
        tracing::info!(cluster = %name, role = ?spec.role, provider = %spec.provider, "cluster controller starting");
        let handle = cluster::spawn(spec.clone(), config.timings.clone(), reports.clone());
        aggregator.add_cluster(name, spec.role, &spec.provider, handle.writes.clone());
        clusters.insert(name.to_owned(), handle);
    }
}

/// The Lease election of this replica, restarted when where the Lease lives changes.
struct Election {
    key: Option<(ClusterSpec, LeaseConfig, Timings)>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Election {
    fn key_of(config: &Config) -> Option<(ClusterSpec, LeaseConfig, Timings)> {
        let cluster = config.lease_cluster()?.clone();
        Some((cluster, config.lease.clone(), config.timings.clone()))
    }

    /// Starts electing in the Lease's cluster; with no production cluster there is
    /// nothing to write and this replica may lead alone.
    fn start(config: &Config, identity: &str, leader: &watch::Sender<bool>) -> Self {
        let key = Self::key_of(config);
        let (stop, stopped) = watch::channel(false);
        let task = key.clone().map(|(cluster, lease, timings)| {
            let spec = LeaseSpecification {
                namespace: lease.namespace,
                name: lease.name,
                duration: lease.duration,
                identity: identity.to_owned(),
            };
            tokio::spawn(elect(cluster, spec, timings, leader.clone(), stopped))
        });
        leader.send_replace(task.is_none());
        Self { key, stop, task }
    }

    /// Stops electing, giving the Lease up if this replica holds it.
    async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Election {
    /// Dropped without [`Election::stop`] (the controller's task was aborted): the
    /// election ends with it, without giving the Lease up, as a crash would.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn elect(
    cluster: ClusterSpec,
    spec: LeaseSpecification,
    timings: Timings,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match cluster::build_client(&cluster, &timings).await {
            Ok((client, _)) => {
                let ended =
                    lease::run(client, &spec, &leader, &mut stop, timings.request_timeout).await;
                if ended == lease::Ended::Stopped {
                    return;
                }
                tracing::info!(cluster = %cluster.name, "lease: credentials refused, reading the kubeconfig again");
            }
            Err(error) => {
                leader.send_replace(false);
                tracing::warn!(cluster = %cluster.name, %error, "lease: cannot make a client");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(timings.probe_every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}
