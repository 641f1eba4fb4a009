//! Smooth weighted round robin, nginx's algorithm: the default policy, and chash's
//! fallback for requests with nothing to hash.

use std::sync::Mutex;

use super::{lock, Node};

/// Smooth weighted round robin (nginx's algorithm): each pick adds every allowed node's
/// weight to its current weight, takes the largest, and subtracts the allowed total from
/// it, which spreads a heavy node's turns instead of bursting them.
#[derive(Debug)]
pub(super) struct RoundRobin {
    /// Shared by all requests, hence the lock; it is held for a few additions.
    current: Mutex<Vec<i64>>,
}

impl RoundRobin {
    pub(super) fn new(len: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; len]),
        }
    }

    pub(super) fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = lock(&self.current);
        let mut best: Option<usize> = None;
        let mut total = 0;
        for (i, node) in nodes.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            current[i] += node.weight;
            total += node.weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{counts, picks, pool};

    #[test]
    fn roundrobin_follows_the_weights_smoothly() {
        let cases: &[(&[i64], &[u16])] = &[
            (&[1], &[0, 0, 0]),
            (&[1, 1], &[0, 1, 0, 1]),
            (&[1, 1, 1], &[0, 1, 2, 0, 1, 2]),
            // nginx's example: 5,1,1 gives a a b a c a a — no burst of five a's.
            (&[5, 1, 1], &[0, 0, 1, 0, 2, 0, 0]),
            (&[2, 1], &[0, 1, 0, 0, 1, 0]),
            // Weight 0 is never picked, wherever it sits.
            (&[0, 3], &[1, 1, 1, 1]),
            (&[1, 0, 1], &[0, 2, 0, 2]),
        ];
        for (weights, want) in cases {
            assert_eq!(picks(&pool(weights), want.len()), *want, "{weights:?}");
        }
        let long = picks(&pool(&[5, 1, 1]), 700);
        assert_eq!(counts(long.iter().map(|&p| p as usize), 3), [500, 100, 100]);
    }
}
