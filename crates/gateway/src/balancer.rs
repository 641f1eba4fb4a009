//! Upstream pools: the resolved nodes of one upstream and its load-balancing state.
//!
//! A pool is built once per config revision (names are resolved then, off the request
//! path) and shared by every route that names the upstream, so round robin spreads the
//! traffic of all those routes together.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use model::upstream::{Scheme, Upstream};

/// Connection and I/O timeouts for requests to this pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

/// One upstream's nodes and its smooth weighted round-robin state.
#[derive(Debug)]
pub struct UpstreamPool {
    pub id: String,
    /// Nodes with a weight above 0 whose address is known.
    nodes: Vec<(SocketAddr, i64)>,
    total_weight: i64,
    /// Current weights of smooth weighted round robin (nginx's algorithm): each pick adds
    /// every node's weight, takes the largest, and subtracts the total from it. Shared by
    /// all requests of the revision, hence the lock; it is held for a few additions.
    current: Mutex<Vec<i64>>,
    pub timeouts: PoolTimeouts,
}

/// Why an upstream cannot be served at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("https upstreams need TLS support, coming with the data-plane issue")]
    TlsUnsupported,
}

/// A pool and what was left out of it (nodes whose host does not resolve).
#[derive(Debug)]
pub struct BuiltPool {
    pub pool: UpstreamPool,
    pub warnings: Vec<String>,
}

impl UpstreamPool {
    /// Resolves the nodes and prepares the balancer. A node whose host does not resolve
    /// is left out with a warning; a pool left without nodes still serves its routes,
    /// with 502, since the route exists and only its upstream is unreachable.
    ///
    /// Resolving a DNS name blocks, so this runs off the async runtime's workers.
    pub fn build(upstream: &Upstream) -> Result<BuiltPool, PoolError> {
        if upstream.scheme == Scheme::Https {
            return Err(PoolError::TlsUnsupported);
        }
        let mut nodes = Vec::with_capacity(upstream.nodes.len());
        let mut warnings = Vec::new();
        for (i, node) in upstream.nodes.iter().enumerate() {
            if node.weight <= 0 {
                continue;
            }
            // Validation keeps ports in 1..=65535; a bad value is reported, not trusted.
            let Ok(port) = u16::try_from(node.port) else {
                warnings.push(format!("nodes[{i}].port {} is out of range", node.port));
                continue;
            };
            match resolve(&node.host, port) {
                Some(addr) => nodes.push((addr, node.weight)),
                None => warnings.push(format!(
                    "nodes[{i}].host {:?} does not resolve; node left out",
                    node.host
                )),
            }
        }
        let secs = Duration::from_secs_f64;
        let pool = Self {
            id: upstream.id.clone(),
            total_weight: nodes.iter().map(|(_, w)| w).sum(),
            current: Mutex::new(vec![0; nodes.len()]),
            nodes,
            timeouts: PoolTimeouts {
                connect: secs(upstream.timeout.connect),
                read: secs(upstream.timeout.read),
                write: secs(upstream.timeout.send),
            },
        };
        Ok(BuiltPool { pool, warnings })
    }

    /// The next node, or `None` when no node could be resolved.
    pub fn pick(&self) -> Option<SocketAddr> {
        match self.nodes.as_slice() {
            [] => None,
            [(only, _)] => Some(*only),
            nodes => {
                // A poisoned lock only means another request panicked mid-pick; the
                // weights are still plain numbers, so keep balancing with them.
                let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
                let mut best = 0;
                for (i, (_, weight)) in nodes.iter().enumerate() {
                    current[i] += weight;
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= self.total_weight;
                Some(nodes[best].0)
            }
        }
    }

    /// Number of nodes requests can be sent to.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(json: serde_json::Value) -> Upstream {
        serde_json::from_value(json).unwrap()
    }

    fn pool(weights: &[i64]) -> UpstreamPool {
        let nodes: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| serde_json::json!({"host": "127.0.0.1", "port": 1000 + i, "weight": w}))
            .collect();
        let built =
            UpstreamPool::build(&upstream(serde_json::json!({"id": "u", "nodes": nodes}))).unwrap();
        assert!(built.warnings.is_empty());
        built.pool
    }

    fn picks(pool: &UpstreamPool, n: usize) -> Vec<u16> {
        (0..n).map(|_| pool.pick().unwrap().port() - 1000).collect()
    }

    #[test]
    fn distribution_follows_the_weights() {
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
    }

    #[test]
    fn long_runs_match_the_weights_exactly() {
        let mut counts = [0; 3];
        for p in picks(&pool(&[5, 1, 1]), 700) {
            counts[p as usize] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn timeouts_come_from_the_upstream() {
        let built = UpstreamPool::build(&upstream(serde_json::json!({
            "id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}],
            "timeout": {"connect": 0.5, "read": 2, "send": 3}
        })))
        .unwrap();
        assert_eq!(
            built.pool.timeouts,
            PoolTimeouts {
                connect: Duration::from_millis(500),
                read: Duration::from_secs(2),
                write: Duration::from_secs(3),
            }
        );
    }

    #[test]
    fn https_is_refused_and_unresolvable_nodes_are_left_out() {
        let https = upstream(serde_json::json!({
            "id": "u", "scheme": "https", "nodes": [{"host": "127.0.0.1", "port": 1}]
        }));
        assert_eq!(
            UpstreamPool::build(&https).unwrap_err(),
            PoolError::TlsUnsupported
        );

        let partly = upstream(serde_json::json!({
            "id": "u", "nodes": [
                {"host": "no-such-host.invalid", "port": 1},
                {"host": "127.0.0.1", "port": 2}
            ]
        }));
        let built = UpstreamPool::build(&partly).unwrap();
        assert_eq!(built.pool.len(), 1);
        assert_eq!(built.pool.pick(), Some("127.0.0.1:2".parse().unwrap()));
        assert_eq!(built.warnings.len(), 1);
        assert!(built.warnings[0].contains("does not resolve"), "{built:?}");

        let none = upstream(serde_json::json!({
            "id": "u", "nodes": [{"host": "no-such-host.invalid", "port": 1}]
        }));
        let built = UpstreamPool::build(&none).unwrap();
        assert!(built.pool.is_empty());
        assert_eq!(built.pool.pick(), None);
    }
}
