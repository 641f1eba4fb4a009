//! The controller as a whole (`portico xcluster`): reads the cluster list, runs one
//! cluster controller per cluster and the aggregator, reads the list again every
//! `reload_every` (X1: 30 s) and starts, stops or restarts cluster controllers as
//! clusters come, go or change, without touching the others.
//!
//! A list that cannot be read or checked at a reload is reported and the clusters
//! already running keep running as they were; the first read must succeed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::aggregator::{Aggregator, Status};
use crate::cluster::{self, ClusterHandle};
use crate::config::Config;

/// How often the aggregator looks at the clock when nothing is reported (a lost
/// cluster's grace running out, failed writes to retry).
const TICK: Duration = Duration::from_millis(250);

/// Runs until `stop` turns true. `status` is refreshed after every plan.
pub async fn run(
    path: PathBuf,
    status: Arc<Mutex<Status>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut config = Config::load(&path)?;
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut aggregator = Aggregator::new(config.timings.grace);
    let mut clusters: BTreeMap<String, ClusterHandle> = BTreeMap::new();
    start_and_stop(&config, &mut clusters, &mut aggregator, &report_tx, true);
    let mut reload = tokio::time::interval(config.timings.reload_every);
    reload.tick().await;
    let mut tick = tokio::time::interval(TICK);
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
            _ = reload.tick() => match Config::load(&path) {
                Ok(new) => {
                    let timings_changed = new.timings != config.timings;
                    aggregator.set_grace(new.timings.grace);
                    config = new;
                    start_and_stop(&config, &mut clusters, &mut aggregator, &report_tx, timings_changed);
                }
                Err(error) => tracing::warn!(%error, "cluster list not reloaded; the clusters keep running as they were"),
            },
            _ = stop.changed() => {
                if *stop.borrow() {
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
