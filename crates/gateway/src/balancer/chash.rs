//! Consistent hashing on a ketama-like ring: a key (header, cookie, query argument,
//! path or client address) always lands on the same node, and adding or removing a node
//! moves only that node's keys.

use std::net::IpAddr;

use model::upstream::{HashOn, Upstream};

use super::roundrobin::RoundRobin;
use super::{HashInput, Node};

/// Consistent hashing on a ketama-like ring: every node owns ~160 points per unit of
/// weight (fewer when the ring would pass 64k points), placed by a hash of its
/// configured `host:port`, so adding or removing a node moves only the keys of its
/// points. The hash (FNV-1a with a murmur3 finaliser) is fixed: the same key lands on
/// the same node on every gateway node and after restarts.
#[derive(Debug)]
pub(super) struct Chash {
    /// (point, node index), sorted by point.
    ring: Vec<(u64, usize)>,
    hash_on: HashOn,
    key: Option<String>,
    /// For requests with neither the key nor a client address.
    fallback: RoundRobin,
}

const POINTS_PER_WEIGHT: u64 = 160;
const MAX_RING_POINTS: u64 = 65_536;

impl Chash {
    pub(super) fn new(upstream: &Upstream, nodes: &[Node]) -> Self {
        let total: u64 = nodes.iter().map(|n| n.weight.max(0) as u64).sum();
        let mut ring = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let weight = node.weight.max(0) as u64;
            let points = if total * POINTS_PER_WEIGHT <= MAX_RING_POINTS {
                weight * POINTS_PER_WEIGHT
            } else {
                (weight * MAX_RING_POINTS / total).max(1)
            };
            let port = node.addr.port().to_string();
            for point in 0..points {
                let mut h = Fnv1a::new();
                h.write(node.host.as_bytes());
                h.write(b":");
                h.write(port.as_bytes());
                h.write(b"-");
                h.write(point.to_string().as_bytes());
                ring.push((h.finish(), i));
            }
        }
        ring.sort_unstable();
        Self {
            ring,
            hash_on: upstream.hash_on,
            key: upstream.key.clone(),
            fallback: RoundRobin::new(nodes.len()),
        }
    }

    /// Whether the key is read from the request's headers (a header or a cookie).
    pub(super) fn reads_headers(&self) -> bool {
        matches!(self.hash_on, HashOn::Header | HashOn::Cookie)
    }

    pub(super) fn pick(
        &self,
        nodes: &[Node],
        input: &HashInput<'_>,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self.key_hash(input) {
            Some(hash) => self.walk(hash, nodes.len(), allowed),
            None => self.fallback.pick(nodes, allowed),
        }
    }

    /// The hash of the request's key; missing key → the client address; neither → None.
    fn key_hash(&self, input: &HashInput<'_>) -> Option<u64> {
        let key = self.key.as_deref().unwrap_or_default();
        let primary = match self.hash_on {
            HashOn::Ip => None,
            HashOn::Header => input.headers.get(key).map(|v| hash_bytes(v.as_bytes())),
            HashOn::Cookie => cookie_hash(input.headers, key),
            HashOn::Query => input.query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(name, _)| name == key)
                    .map(|(_, value)| hash_bytes(value.as_bytes()))
            }),
            HashOn::Path => Some(hash_bytes(input.path.as_bytes())),
        };
        primary.or_else(|| {
            input.client_ip.map(|ip| match ip.to_canonical() {
                IpAddr::V4(v4) => hash_bytes(&v4.octets()),
                IpAddr::V6(v6) => hash_bytes(&v6.octets()),
            })
        })
    }

    /// The owner of the first point at or after `hash`; when it is not allowed, the next
    /// distinct node along the ring.
    fn walk(&self, hash: u64, len: usize, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|&(point, _)| point < hash);
        let at = |k: usize| self.ring[(start + k) % self.ring.len()].1;
        // The common case, without the bookkeeping of a walk.
        let owner = at(0);
        if allowed(owner) {
            return Some(owner);
        }
        let mut seen = vec![false; len];
        let mut distinct = 0;
        for k in 0..self.ring.len() {
            let i = at(k);
            if allowed(i) {
                return Some(i);
            }
            if !seen[i] {
                seen[i] = true;
                distinct += 1;
                if distinct == len {
                    break;
                }
            }
        }
        None
    }
}

/// Value of the cookie `name` in the request's `Cookie` headers, hashed.
fn cookie_hash(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| hash_bytes(value.as_bytes()))
}

/// 64-bit FNV-1a; the finish step mixes the bits (murmur3's fmix64) since plain FNV
/// spreads similar short inputs poorly over the high bits a ring lookup depends on.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use http::HeaderMap;
    use serde_json::json;

    use super::super::tests::pool_with;
    use super::*;
    use crate::balancer::{Balancer, UpstreamPool};

    fn chash(len: usize, hash_on: &str, key: Option<&str>) -> Arc<UpstreamPool> {
        let mut extra = json!({"type": "chash", "hash_on": hash_on});
        if let Some(key) = key {
            extra["key"] = json!(key);
        }
        pool_with(&vec![1; len], extra)
    }

    #[test]
    fn chash_walks_the_ring_past_excluded_and_unhealthy_nodes() {
        let pool = chash(3, "header", Some("x-user"));
        let owner = |exclude: &[usize]| {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", "bob".parse().unwrap());
            let input = HashInput {
                client_ip: None,
                path: "/",
                headers: &headers,
                query: None,
            };
            pool.pick(&input, exclude).map(|p| p.index)
        };
        let home = owner(&[]).unwrap();
        let next = owner(&[home]).unwrap();
        assert_ne!(next, home);
        // The same alternate every time, so the key's traffic stays on one node.
        assert!((0..100).all(|_| owner(&[home]) == Some(next)));
        let last = owner(&[home, next]).unwrap();
        assert!(last != home && last != next);
        assert_eq!(owner(&[0, 1, 2]), None);
        // An unhealthy owner is walked past the same way.
        pool.nodes()[home]
            .active_down
            .store(true, Ordering::Release);
        assert_eq!(owner(&[]), Some(next));
    }

    #[test]
    fn chash_ring_size_follows_weights_within_a_cap() {
        let small = chash(3, "ip", None);
        let Balancer::Chash(ring) = &small.balancer else {
            unreachable!()
        };
        assert_eq!(ring.ring.len(), 3 * 160);
        let heavy = pool_with(&[1_000_000, 1_000_000, 1], json!({"type": "chash"}));
        let Balancer::Chash(ring) = &heavy.balancer else {
            unreachable!()
        };
        assert!(ring.ring.len() <= 65_536 + 3, "{}", ring.ring.len());
        assert!(
            ring.ring.iter().any(|&(_, i)| i == 2),
            "every node keeps a point"
        );
    }

    #[test]
    fn the_hash_is_fixed() {
        // FNV-1a 64 reference vectors: a change here would remap every chash key.
        let raw = |s: &[u8]| {
            let mut h = Fnv1a::new();
            h.write(s);
            h.0
        };
        assert_eq!(raw(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(hash_bytes(b"portico"), hash_bytes(b"portico"));
        assert_ne!(hash_bytes(b"user-1"), hash_bytes(b"user-2"));
    }
}
