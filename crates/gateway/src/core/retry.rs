//! The retry decision, one for every engine: a request gets at most `1 + retries`
//! attempts on distinct nodes. A connect failure is always retried (nothing reached the
//! node). Once the request was sent, it is retried only when [`replay_is_safe`]: an
//! idempotent method and no body, so a request with a body is never replayed; a pooled
//! connection the node had closed is retried on a new one under the same rule without
//! using the budget (the request never reached it).

use crate::balancer::UpstreamPool;

/// The attempts a request made: at most `1 + retries`, on distinct nodes.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    /// Attempts made (nodes picked).
    pub made: u32,
    /// Nodes an earlier attempt failed on; empty (no allocation) unless retrying.
    pub tried: Vec<usize>,
}

impl Attempts {
    /// Whether another attempt on another node is allowed after the node `failed`
    /// failed: budget left and a node not yet tried.
    pub fn may_try_another(&self, pool: &UpstreamPool, failed: usize) -> bool {
        let tried = self.tried.len() + usize::from(!self.tried.contains(&failed));
        self.made <= pool.retries && tried < pool.len()
    }

    /// What follows a failure after the request was (being) sent to `node`:
    /// `stale_pooled` when it went over a pooled connection the node had closed, so
    /// it never reached the node. Counts the attempt as not made, or remembers the
    /// node as failed, accordingly.
    pub fn after_send_failure(
        &mut self,
        pool: &UpstreamPool,
        node: usize,
        replay_safe: bool,
        stale_pooled: bool,
    ) -> AfterFailure {
        if !replay_safe {
            return AfterFailure::GiveUp;
        }
        if stale_pooled {
            self.made = self.made.saturating_sub(1);
            return AfterFailure::NewConnection;
        }
        if self.may_try_another(pool, node) {
            self.failed_on(node);
            return AfterFailure::AnotherNode;
        }
        AfterFailure::GiveUp
    }

    /// Remembers that `node` failed, so no later attempt picks it.
    pub fn failed_on(&mut self, node: usize) {
        if !self.tried.contains(&node) {
            self.tried.push(node);
        }
    }
}

/// The decision of [`Attempts::after_send_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// The same node on a new connection, the budget untouched (the node is not to
    /// blame).
    NewConnection,
    /// Another node; the failure counts against this one.
    AnotherNode,
    /// The client gets the gateway's error; the failure counts against the node.
    GiveUp,
}

/// Whether a request that reached a node may be sent again: an idempotent method and
/// no body.
pub fn replay_is_safe(method: &str, body_bytes: u64) -> bool {
    body_bytes == 0 && http::Method::from_bytes(method.as_bytes()).is_ok_and(|m| m.is_idempotent())
}
