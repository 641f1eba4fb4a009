//! The node heartbeat: `nodes/{node_id}` on a lease, refreshed on a timer and rewritten
//! at once when the applied revision changes, so the admin sees convergence quickly.

use std::sync::Arc;
use std::time::Duration;

use model::cluster::NodeHeartbeat;
use model::snapshot::Revision;
use store::{ConfigStore, LeaseId, Op, StoreError, Txn};
use tokio::sync::watch;

pub(crate) struct Heartbeat {
    pub store: Arc<dyn ConfigStore>,
    pub key: String,
    pub node_id: String,
    pub address: String,
    pub interval: Duration,
}

impl Heartbeat {
    /// Lease TTL: a few missed beats, never below etcd's practical minimum.
    fn ttl_secs(&self) -> i64 {
        (self.interval.as_secs_f64() * 3.0).ceil().max(5.0) as i64
    }

    async fn write(&self, lease: LeaseId, revision: Revision) -> Result<(), StoreError> {
        let beat = NodeHeartbeat {
            node_id: self.node_id.clone(),
            address: self.address.clone(),
            applied_revision: revision,
            updated_at_ms: now_ms(),
        };
        self.store
            .txn(Txn {
                compares: vec![],
                ops: vec![Op::Put {
                    key: self.key.clone(),
                    value: serde_json::to_vec(&beat).expect("heartbeat serialises"),
                    lease: Some(lease),
                }],
            })
            .await
            .map(|_| ())
    }
}

pub(crate) async fn run(
    hb: Heartbeat,
    mut applied: watch::Receiver<Revision>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut lease: Option<LeaseId> = None;
    let mut ticker = tokio::time::interval(hb.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = applied.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let revision = *applied.borrow_and_update();
        let result = beat(&hb, &mut lease, revision).await;
        match (&result, failing) {
            (Err(e), false) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
            (Ok(()), true) => tracing::info!("heartbeat restored"),
            _ => {}
        }
        failing = result.is_err();
    }
    if let Some(lease) = lease {
        // Best effort: the lease expires by itself if the store is down.
        let _ = tokio::time::timeout(Duration::from_secs(1), hb.store.revoke_lease(lease)).await;
    }
}

/// One heartbeat: refresh (or obtain) the lease, then write the key on it.
async fn beat(
    hb: &Heartbeat,
    lease: &mut Option<LeaseId>,
    revision: Revision,
) -> Result<(), StoreError> {
    let id = match *lease {
        Some(id) => match hb.store.keep_alive(id).await {
            Ok(()) => id,
            Err(StoreError::LeaseNotFound) => {
                *lease = None;
                hb.store.grant_lease(hb.ttl_secs()).await?
            }
            Err(e) => return Err(e),
        },
        None => hb.store.grant_lease(hb.ttl_secs()).await?,
    };
    *lease = Some(id);
    match hb.write(id, revision).await {
        Err(StoreError::LeaseNotFound) => {
            *lease = None;
            Err(StoreError::LeaseNotFound)
        }
        other => other,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
