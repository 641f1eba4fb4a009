//! Upstream pools: the resolved nodes of one upstream and the load-balancing state.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use model::upstream::{Scheme, Upstream};

/// Connection and I/O timeouts for requests to this pool's nodes.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

/// One upstream's nodes and its smooth weighted round-robin state.
#[derive(Debug)]
pub struct UpstreamPool {
    pub id: String,
    nodes: Vec<(SocketAddr, i64)>,
    total_weight: i64,
    /// Current weights of smooth weighted round robin (nginx's algorithm): each pick adds
    /// every node's weight, takes the largest, and subtracts the total from it.
    current: Mutex<Vec<i64>>,
    pub timeouts: PoolTimeouts,
}

impl UpstreamPool {
    /// Resolves the nodes and prepares the balancer; fails with a reason to report.
    pub fn build(upstream: &Upstream) -> Result<Self, String> {
        if upstream.scheme == Scheme::Https {
            return Err(
                "https upstreams need upstream TLS, which comes with the data-plane issue".into(),
            );
        }
        let mut nodes = Vec::new();
        for (i, node) in upstream.nodes.iter().enumerate() {
            if node.weight == 0 {
                continue;
            }
            let port =
                u16::try_from(node.port).map_err(|_| format!("nodes[{i}].port out of range"))?;
            let addr = match node.host.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port),
                Err(_) => (node.host.as_str(), port)
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(|| format!("nodes[{i}].host {:?} does not resolve", node.host))?,
            };
            nodes.push((addr, node.weight));
        }
        if nodes.is_empty() {
            return Err("no node with a weight above 0".into());
        }
        let secs = |s: f64| Duration::from_secs_f64(s);
        Ok(Self {
            id: upstream.id.clone(),
            total_weight: nodes.iter().map(|(_, w)| w).sum(),
            current: Mutex::new(vec![0; nodes.len()]),
            nodes,
            timeouts: PoolTimeouts {
                connect: secs(upstream.timeout.connect),
                read: secs(upstream.timeout.read),
                write: secs(upstream.timeout.send),
            },
        })
    }

    /// The next node.
    pub fn pick(&self) -> SocketAddr {
        if self.nodes.len() == 1 {
            return self.nodes[0].0;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut best = 0;
        for (i, (_, weight)) in self.nodes.iter().enumerate() {
            current[i] += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= self.total_weight;
        self.nodes[best].0
    }

    #[cfg(test)]
    pub(crate) fn for_tests(id: &str) -> Self {
        let up: Upstream = serde_json::from_value(serde_json::json!({
            "id": id, "nodes": [{"host": "127.0.0.1", "port": 1}]
        }))
        .unwrap();
        Self::build(&up).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[i64]) -> UpstreamPool {
        let nodes: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| serde_json::json!({"host": "127.0.0.1", "port": 1000 + i, "weight": w}))
            .collect();
        let up: Upstream =
            serde_json::from_value(serde_json::json!({"id": "u", "nodes": nodes})).unwrap();
        UpstreamPool::build(&up).unwrap()
    }

    fn picks(pool: &UpstreamPool, n: usize) -> Vec<u16> {
        (0..n).map(|_| pool.pick().port() - 1000).collect()
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(picks(&pool(&[1, 1]), 4), [0, 1, 0, 1]);
        assert_eq!(picks(&pool(&[1, 1, 1]), 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_spreads_the_heavy_node() {
        // nginx's example: weights 5,1,1 give a a b a c a a (no burst of five a's).
        assert_eq!(picks(&pool(&[5, 1, 1]), 7), [0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for p in picks(&pool(&[5, 1, 1]), 700) {
            counts[p as usize] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn zero_weight_nodes_are_never_picked() {
        assert!(picks(&pool(&[0, 3]), 10).iter().all(|p| *p == 1));
    }

    #[test]
    fn https_and_unresolvable_are_reported() {
        let up: Upstream = serde_json::from_value(serde_json::json!({
            "id": "u", "scheme": "https", "nodes": [{"host": "127.0.0.1", "port": 1}]
        }))
        .unwrap();
        assert!(UpstreamPool::build(&up).unwrap_err().contains("TLS"));
        let up: Upstream = serde_json::from_value(serde_json::json!({
            "id": "u", "nodes": [{"host": "no-such-host.invalid", "port": 1}]
        }))
        .unwrap();
        assert!(UpstreamPool::build(&up)
            .unwrap_err()
            .contains("does not resolve"));
    }
}
