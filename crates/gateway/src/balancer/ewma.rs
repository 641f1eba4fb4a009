//! Peak-EWMA: the node with the lowest latency estimate × load, between two picked at
//! random; and the per-node latency average it reads, fed by every outcome.

use std::time::{Duration, Instant};

use rand::Rng;

use super::{lock, Node};

/// Peak-EWMA (Finagle, linkerd): cost = latency estimate × (in flight + 1) / weight;
/// the power of two choices (two random distinct nodes, the cheaper wins) keeps one
/// slow node from drawing no traffic at all while others saturate.
#[derive(Debug)]
pub(super) struct PeakEwma;

/// Decay time of the latency average.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Cost of a node without a measurement yet: small, so new nodes get traffic soon.
const EWMA_DEFAULT: Duration = Duration::from_millis(1);

impl PeakEwma {
    pub(super) fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates = (0..nodes.len()).filter(|&i| allowed(i)).count();
        let nth = |n: usize| (0..nodes.len()).filter(|&i| allowed(i)).nth(n);
        if candidates < 2 {
            return nth(0);
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..candidates);
        let mut b = rng.random_range(0..candidates - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (nth(a)?, nth(b)?);
        let now = Instant::now();
        let cost = |i: usize| {
            let node = &nodes[i];
            let latency = lock(&node.ewma).estimate(now);
            latency * (node.in_flight() + 1) as f64 / node.weight.max(1) as f64
        };
        if cost(b) < cost(a) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

/// One node's latency average, in nanoseconds.
#[derive(Debug)]
pub(super) struct Ewma {
    nanos: f64,
    /// When `nanos` was last updated.
    stamp: Instant,
}

impl Ewma {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            nanos: EWMA_DEFAULT.as_nanos() as f64,
            stamp: now,
        }
    }

    /// The average decayed towards 0 over the time without answers, so a node that was
    /// slow once is tried again eventually.
    pub(super) fn estimate(&self, now: Instant) -> f64 {
        self.nanos * self.decay(now)
    }

    /// A sample above the average replaces it (peak); others are averaged in with a
    /// weight that grows with the time since the last sample.
    pub(super) fn observe(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos() as f64;
        if sample > self.nanos {
            self.nanos = sample;
        } else {
            let w = self.decay(now);
            self.nanos = self.nanos * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }

    fn decay(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{bare, pick_index, pick_node, pool_with};
    use super::*;
    use crate::balancer::{Outcome, Pick};

    #[test]
    fn ewma_avoids_the_slow_node() {
        let pool = pool_with(&[1, 1], json!({"type": "ewma"}));
        let mut slow = 0;
        for _ in 0..1_000 {
            let pick = bare(|input| pool.pick(input, &[])).unwrap();
            let latency = if pick.index == 0 {
                slow += 1;
                Duration::from_millis(100)
            } else {
                Duration::from_millis(1)
            };
            pick.record(Outcome::Status(200, latency));
        }
        assert!(slow < 100, "the 100 ms node got {slow} of 1000 picks");

        // A peak replaces the average at once; lower samples pull it down slowly.
        let now = Instant::now();
        let mut e = Ewma::new(now);
        e.observe(Duration::from_millis(50), now);
        assert_eq!(e.estimate(now), 50e6);
        e.observe(Duration::from_millis(10), now + Duration::from_secs(10));
        let after = e.estimate(now + Duration::from_secs(10));
        assert!(after > 10e6 && after < 50e6, "{after}");
        // Idle, the estimate decays so a slow node is tried again eventually.
        assert!(e.estimate(now + Duration::from_secs(100)) < 1e6);
    }

    #[test]
    fn ewma_weighs_in_flight_requests() {
        let pool = pool_with(&[1, 1], json!({"type": "ewma"}));
        // Equal latency; node 0 has requests in flight, so node 1 wins every duel.
        let held: Vec<Pick> = (0..3).map(|_| pick_node(&pool, 0)).collect();
        assert!((0..100).all(|_| pick_index(&pool, &[]) == Some(1)));
        drop(held);
    }
}
