//! Which admin process reconciles: several admins may serve one database (PostgreSQL,
//! MySQL), all answering the API, but only the holder of the `reconciler` lease polls
//! agents and pushes snapshots. The lease is a row renewed every [`RENEW_EVERY`] and
//! valid for [`LEASE_TTL`]; when its holder dies, another admin takes it within
//! `LEASE_TTL + RENEW_EVERY`; a holder that stops cleanly hands it over at once.
//!
//! A holder that loses the database stops reconciling when its lease runs out by its own
//! clock (it stops [`MARGIN`] early), before another may take it. Two reconcilers at
//! once would still be safe — the agent applies a change only on top of the revision
//! before it, and snapshots are idempotent — the lease only avoids the double work.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rand::RngCore;
use tokio::sync::watch;

use crate::db::{now_ms, Db};

/// The lease the reconcile loop needs.
pub(crate) const RECONCILER: &str = "reconciler";
/// How long a lease lasts without renewal.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the holder renews (and the others try to take it).
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How early a holder stops trusting its lease, for clock drift between processes.
const MARGIN: Duration = Duration::from_millis(500);

/// This process's view of the lease.
pub(crate) struct Lease {
    /// Who this process is in the lease table.
    pub holder: String,
    /// Until when (unix ms, by our clock) this process holds it; 0: it does not.
    held_until: AtomicI64,
}

impl Lease {
    pub(crate) fn new() -> Self {
        let mut bytes = [0u8; 4];
        rand::rng().fill_bytes(&mut bytes);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "admin".into());
        Self {
            holder: format!("{host}-{}-{}", std::process::id(), hex::encode(bytes)),
            held_until: AtomicI64::new(0),
        }
    }

    /// Whether this process may reconcile now.
    pub(crate) fn held(&self) -> bool {
        now_ms() + (MARGIN.as_millis() as i64) < self.held_until.load(Ordering::Relaxed)
    }

    /// Takes or renews the lease; true when this process holds it.
    pub(crate) async fn renew(&self, db: &Db) -> bool {
        let started = now_ms();
        match db
            .take_lease(RECONCILER, &self.holder, LEASE_TTL, started)
            .await
        {
            Ok(true) => {
                let was = self
                    .held_until
                    .swap(started + LEASE_TTL.as_millis() as i64, Ordering::Relaxed);
                if was == 0 {
                    tracing::info!(holder = %self.holder, "this admin now reconciles");
                }
                true
            }
            Ok(false) => {
                self.drop_lease("another admin holds the reconciler lease");
                false
            }
            Err(e) => {
                // Keep what we hold until it runs out by our clock.
                tracing::warn!(error = %e, "cannot renew the reconciler lease");
                self.held()
            }
        }
    }

    fn drop_lease(&self, why: &str) {
        if self.held_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(holder = %self.holder, why, "this admin no longer reconciles");
        }
    }

    /// Renews every [`RENEW_EVERY`] until `shutdown`, then hands the lease over.
    pub(crate) async fn keep(&self, db: &Db, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(RENEW_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => break,
                _ = ticker.tick() => {
                    self.renew(db).await;
                }
            }
        }
        self.drop_lease("stopping");
        if let Err(e) = db.release_lease(RECONCILER, &self.holder).await {
            tracing::warn!(error = %e, "cannot hand the reconciler lease over");
        }
    }
}

/// Resolves once `shutdown` is true or its sender is gone (no guard kept).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
