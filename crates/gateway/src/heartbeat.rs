//! The node heartbeat: `nodes/{node_id}` on a lease, refreshed on a timer and rewritten
//! at once when the applied revision changes, so the admin sees convergence quickly.
//! Each beat carries the applied revision, where the config came from, upstream
//! health, skipped objects, Redis fallbacks, why the node serves nothing if unbound,
//! and its load (`core::load`: the last minute's requests and 5xx, connections and
//! requests in flight now).
//!
//! The lease is granted once and kept alive on every beat; when the store loses it
//! (expired while the store was unreachable, or the store restarted) a new one is
//! granted and the key written again. On stop the lease is revoked, which removes the
//! key at once instead of after the TTL.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use model::cluster::{NodeHeartbeat, NodeLoad};
use store::{ConfigStore, LeaseId, Op, StoreError, Txn};
use tokio::sync::watch;

use crate::core::load::Load;
use crate::proxy::InFlight;
use crate::runtime::{upstream_health, RuntimeConfig};
use crate::NodeStatus;

/// How long revoking the lease may take on the way out; the lease expires anyway.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Heartbeat {
    pub store: Arc<dyn ConfigStore>,
    pub key: String,
    pub node_id: String,
    pub address: String,
    pub interval: Duration,
    /// Read at every beat for the upstream health report.
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    /// Read at every beat for the load report.
    pub load: Arc<Load>,
    pub in_flight: Arc<InFlight>,
}

impl Heartbeat {
    /// Lease TTL: three missed beats, and never below 5 s (etcd's practical minimum).
    fn ttl_secs(&self) -> i64 {
        let secs = (self.interval.as_secs_f64() * 3.0).ceil().max(5.0);
        // A TTL beyond i64 seconds is not a real configuration; clamp instead of wrapping.
        secs.min(i64::MAX as f64) as i64
    }

    /// A single beat may not hold up the loop (and thus shutdown) for longer than this.
    fn beat_timeout(&self) -> Duration {
        self.interval.max(Duration::from_secs(1))
    }
}

/// Beats until `stop` flips to true, then revokes the lease.
pub(crate) async fn run(
    hb: Heartbeat,
    mut applied: watch::Receiver<NodeStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut lease: Option<LeaseId> = None;
    let mut ticker = tokio::time::interval(hb.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // A closed channel (config loop gone) disables this branch; keep beating.
            Ok(()) = applied.changed() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let status = *applied.borrow_and_update();
        let result = tokio::select! {
            result = tokio::time::timeout(hb.beat_timeout(), beat(&hb, &mut lease, status)) => {
                result.unwrap_or_else(|_| Err(StoreError::Unavailable("heartbeat timed out".into())))
            }
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match (&result, failing) {
            (Err(e), false) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
            (Ok(()), true) => tracing::info!("heartbeat restored"),
            _ => {}
        }
        failing = result.is_err();
    }
    if let Some(lease) = lease {
        // Best effort: if the store is down the lease expires by itself.
        match tokio::time::timeout(REVOKE_TIMEOUT, hb.store.revoke_lease(lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not revoke the heartbeat lease"),
            Err(_) => tracing::debug!("revoking the heartbeat lease timed out"),
        }
    }
}

/// One heartbeat: refresh (or obtain) the lease, then write the key on it.
async fn beat(
    hb: &Heartbeat,
    lease: &mut Option<LeaseId>,
    status: NodeStatus,
) -> Result<(), StoreError> {
    let id = match *lease {
        Some(id) => match hb.store.keep_alive(id).await {
            Ok(()) => id,
            Err(StoreError::LeaseNotFound) => {
                tracing::info!("heartbeat lease lost; granting a new one");
                *lease = None;
                hb.store.grant_lease(hb.ttl_secs()).await?
            }
            Err(e) => return Err(e),
        },
        None => hb.store.grant_lease(hb.ttl_secs()).await?,
    };
    *lease = Some(id);
    let config = hb.config.load();
    let beat = NodeHeartbeat {
        node_id: hb.node_id.clone(),
        address: hb.address.clone(),
        applied_revision: status.revision,
        applied_at_ms: status.applied_at_ms,
        updated_at_ms: crate::now_ms(),
        config_source: status.source,
        upstreams: upstream_health(&config),
        skipped: config
            .problems
            .iter()
            .take(NodeHeartbeat::MAX_SKIPPED)
            .map(|p| model::cluster::SkippedObject {
                key: p.key.clone(),
                reason: p.reason.clone(),
            })
            .collect(),
        redis_fallbacks: config
            .counters
            .redis_fallbacks
            .load(std::sync::atomic::Ordering::Relaxed),
        unbound: config.unbound.clone(),
        load: Some(node_load(&hb.load, &hb.in_flight)),
    };
    let value = serde_json::to_vec(&beat).map_err(|e| StoreError::Rejected(e.to_string()))?;
    let put = Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: hb.key.clone(),
            value,
            lease: Some(id),
        }],
    };
    match hb.store.txn(put).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if e == StoreError::LeaseNotFound {
                // Granted again on the next beat.
                *lease = None;
            }
            Err(e)
        }
    }
}

/// The load as the heartbeat reports it: the last minute's requests and errors (see
/// `core::load` for the window), connections and requests in flight now.
fn node_load(load: &Load, in_flight: &InFlight) -> NodeLoad {
    let minute = load.last_minute();
    NodeLoad {
        requests: minute.requests,
        errors: minute.errors,
        connections: load.connections(),
        in_flight: in_flight.count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::cluster::ConfigSource;
    use model::snapshot::Revision;
    use store::memory::MemoryStore;

    fn at(revision: u64) -> NodeStatus {
        NodeStatus {
            revision: Revision(revision),
            source: ConfigSource::Store,
            applied_at_ms: 1,
        }
    }

    fn heartbeat(store: Arc<dyn ConfigStore>, interval: Duration) -> Heartbeat {
        Heartbeat {
            store,
            key: "/portico/instances/i/nodes/n1".into(),
            node_id: "n1".into(),
            address: "10.0.0.1:80".into(),
            interval,
            config: Arc::default(),
            load: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    #[test]
    fn ttl_is_three_beats_but_at_least_five_seconds() {
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        let cases = [(200, 5), (2_000, 6), (1_500, 5), (2_100, 7), (10_000, 30)];
        for (interval_ms, ttl) in cases {
            let hb = heartbeat(store.clone(), Duration::from_millis(interval_ms));
            assert_eq!(hb.ttl_secs(), ttl, "{interval_ms} ms");
        }
    }

    async fn read(
        store: &Arc<dyn ConfigStore>,
        key: &str,
    ) -> Option<(NodeHeartbeat, Option<LeaseId>)> {
        let kv = store.get(key).await.unwrap()?;
        let beat: NodeHeartbeat = serde_json::from_slice(&kv.value).unwrap();
        Some((beat, kv.lease))
    }

    /// Waits for a heartbeat with `want`; returns its lease.
    async fn wait_for(store: &Arc<dyn ConfigStore>, key: &str, want: Revision) -> LeaseId {
        for _ in 0..500 {
            if let Some((beat, lease)) = read(store, key).await {
                if beat.applied_revision == want {
                    return lease.expect("the heartbeat is leased");
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no heartbeat with revision {want}");
    }

    #[tokio::test]
    async fn beats_follow_the_revision_and_survive_a_lost_lease() {
        let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
        let hb = heartbeat(store.clone(), Duration::from_secs(3600));
        let key = hb.key.clone();
        let (applied_tx, applied_rx) = watch::channel(NodeStatus::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(hb, applied_rx, stop_rx));

        // The first beat is immediate; a revision change is written without waiting
        // for the (hour-long) interval.
        let first = wait_for(&store, &key, Revision(0)).await;
        applied_tx.send_replace(at(3));
        assert_eq!(wait_for(&store, &key, Revision(3)).await, first);

        // The store loses the lease (and with it the key): a new one is granted.
        store.revoke_lease(first).await.unwrap();
        assert!(store.get(&key).await.unwrap().is_none());
        applied_tx.send_replace(at(4));
        let second = wait_for(&store, &key, Revision(4)).await;
        assert_ne!(second, first);
        let (beat, _) = read(&store, &key).await.unwrap();
        assert_eq!(beat.node_id, "n1");
        assert_eq!(beat.address, "10.0.0.1:80");
        assert!(beat.updated_at_ms > 0);
        assert_eq!(beat.config_source, ConfigSource::Store);
        // Nothing served: a load of zeros, reported (not left out).
        assert_eq!(beat.load, Some(NodeLoad::default()));

        // Stopping revokes the lease, which removes the key.
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(store.get(&key).await.unwrap().is_none());
        assert_eq!(
            store.keep_alive(second).await,
            Err(StoreError::LeaseNotFound)
        );
    }
}
