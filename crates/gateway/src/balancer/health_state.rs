//! The health state of a pool's nodes: what the active checks (probes run by
//! `health.rs`) and the passive checks (outcomes of real requests) concluded, read on
//! every pick, and the heartbeat's report of it.
//!
//! ```text
//! active probes → record_probe → after `unhealthy.failures` failed in a row the node is
//!     down, after `healthy.successes` good ones up again
//! outcomes → record_passive → consecutive failing statuses or connect errors eject the
//!     node for `eject_for`; back from an ejection one failure ejects it again
//! ```
//!
//! Node health is a few atomics read on every pick without a lock; the counters behind
//! them sit in a small per-node mutex taken only when an outcome or a probe is recorded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use model::upstream::CheckKind;

use super::{lock, nanos, Node, Outcome, UpstreamPool};

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
pub(super) struct PassivePolicy {
    pub(super) statuses: Vec<u16>,
    pub(super) failures: u32,
    pub(super) eject_for: Duration,
}

/// The counters behind a node's health flags.
#[derive(Debug, Default)]
pub(super) struct HealthCounters {
    active_failures: u32,
    active_successes: u32,
    active_reason: Option<String>,
    passive_failures: u32,
    /// Set by an ejection, cleared by a success: the next failure ejects again.
    probation: bool,
    passive_reason: Option<String>,
}

impl UpstreamPool {
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

    /// Feeds an outcome of `node` to the passive checks: a failing status or
    /// `Failed` counts towards an ejection, anything else resets the count.
    pub(super) fn record_passive(&self, node: &Node, outcome: Outcome) {
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
    pub(super) fn now_if_passive(&self) -> u64 {
        if self.passive.is_some() {
            self.now_nanos()
        } else {
            0
        }
    }
}

impl Node {
    /// Up for the active checks and not ejected by the passive ones, as of `now`
    /// (nanoseconds since the pool's epoch).
    pub(super) fn is_available(&self, now: u64) -> bool {
        !self.active_down.load(Ordering::Acquire)
            && self.ejected_until.load(Ordering::Acquire) <= now
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::tests::{pick_index, pick_node, pool, pool_with};
    use super::*;
    use crate::balancer::UpstreamPool;

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
}
