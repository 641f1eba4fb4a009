//! Least connections: the node with the fewest requests in flight relative to its
//! weight.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Node;

/// Fewest requests in flight relative to the weight; the scan starts one node further
/// at each pick so ties rotate instead of always landing on the first node.
#[derive(Debug, Default)]
pub(super) struct LeastConn {
    cursor: AtomicUsize,
}

impl LeastConn {
    pub(super) fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let n = nodes.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !allowed(i) {
                continue;
            }
            // in_flight_i / weight_i < in_flight_b / weight_b, without division.
            let less = |b: usize| {
                let load = |j: usize| nodes[j].in_flight() as u128;
                let weight = |j: usize| nodes[j].weight.max(1) as u128;
                load(i) * weight(b) < load(b) * weight(i)
            };
            if best.is_none_or(less) {
                best = Some(i);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{bare, counts, pick_index, pool_with};
    use crate::balancer::Pick;

    #[test]
    fn least_conn_prefers_fewer_in_flight_and_respects_weights() {
        let pool = pool_with(&[1, 1, 1], json!({"type": "least_conn"}));
        // Held picks spread over the three nodes before any gets a second one.
        let held: Vec<Pick> =
            bare(|input| (0..3).map(|_| pool.pick(input, &[]).unwrap()).collect());
        let mut seen: Vec<usize> = held.iter().map(|p| p.index).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        // Node 1 done: it is the only one with nothing in flight.
        let mut held = held;
        held.retain(|p| p.index != 1);
        for _ in 0..5 {
            assert_eq!(pick_index(&pool, &[]), Some(1));
        }
        assert_eq!(pool.nodes()[0].in_flight(), 1);
        drop(held);
        assert!(pool.nodes().iter().all(|n| n.in_flight() == 0));

        // All idle: ties rotate instead of always landing on node 0.
        let idle = counts((0..30).map(|_| pick_index(&pool, &[]).unwrap()), 3);
        assert_eq!(idle, [10, 10, 10]);

        // Weights 3:1 — held picks settle at three on node 0 per one on node 1.
        let weighted = pool_with(&[3, 1], json!({"type": "least_conn"}));
        let held: Vec<Pick> =
            bare(|input| (0..8).map(|_| weighted.pick(input, &[]).unwrap()).collect());
        assert_eq!(counts(held.iter().map(|p| p.index), 2), [6, 2]);
    }
}
