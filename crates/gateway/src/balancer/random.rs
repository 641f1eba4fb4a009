//! Weighted random: each allowed node with probability weight / total.

use rand::Rng;

use super::Node;

#[derive(Debug)]
pub(super) struct WeightedRandom;

impl WeightedRandom {
    pub(super) fn pick(&self, nodes: &[Node], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let total: i64 = (0..nodes.len())
            .filter(|&i| allowed(i))
            .map(|i| nodes[i].weight)
            .sum();
        if total <= 0 {
            return None;
        }
        let mut r = rand::rng().random_range(0..total);
        for (i, node) in nodes.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            if r < node.weight {
                return Some(i);
            }
            r -= node.weight;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{counts, picks, pool_with};

    #[test]
    fn random_follows_the_weights() {
        let pool = pool_with(&[1, 1, 2], json!({"type": "random"}));
        let got = counts(picks(&pool, 20_000).into_iter().map(usize::from), 3);
        for (count, want) in got.iter().zip([5_000.0, 5_000.0, 10_000.0]) {
            let off = (*count as f64 - want).abs() / want;
            assert!(off < 0.05, "{got:?}");
        }
    }
}
