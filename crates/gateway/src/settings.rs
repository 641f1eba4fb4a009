//! Node-level HTTP settings: request limits and how the client's address is found.
//!
//! These belong to the node (its command line), not to the instance's config: they
//! protect the node itself and depend on what stands in front of it.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use crate::core::rate::MinRate;
use crate::normalize::PathPolicy;

/// Limits and client-address rules applied to every request.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Longest request target (path and query) in bytes; longer gets 414.
    pub max_uri_bytes: usize,
    /// Largest request head (names + values) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes; larger gets 413 (before anything is sent
    /// upstream when the length is declared).
    pub max_body_bytes: u64,
    /// Total time to receive an HTTP/1.x request head, from its first byte (for the
    /// first request of a plaintext connection: from the connection); the connection is
    /// closed when it runs out. nginx's `client_header_timeout`. 0 is refused by the CLI.
    pub header_read_timeout: Duration,
    /// Peers whose `real_ip_header` is believed (load balancers, CDNs). Empty: the
    /// client is always the peer.
    pub trusted_proxies: Vec<IpNet>,
    /// The header trusted peers put the client's address in.
    pub real_ip_header: HeaderName,
    /// What happens to escaped slashes, backslashes and `;params` in paths.
    pub path: PathPolicy,
    /// How slowly a client may send a request body (Apache's mod_reqtimeout `body`).
    pub body_rate: MinRate,
    /// How slowly a client may take a response (bytes written to it).
    pub send_rate: MinRate,
    /// An HTTP/2 connection with no stream open is closed after this long.
    pub h2_idle_timeout: Duration,
    /// Serve plain HTTP/1.1 requests and HTTP/2 connections on the fast path
    /// (`fastpath/`); off, every request goes through Pingora's proxy.
    pub fast_path: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            // nginx's large_client_header_buffers is 4 × 8k; one line may be 8k.
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            // nginx's client_header_timeout default.
            header_read_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            real_ip_header: HeaderName::from_static("x-forwarded-for"),
            path: PathPolicy::default(),
            body_rate: MinRate::BODY,
            send_rate: MinRate::SEND,
            // nginx's keepalive_timeout, which also ends idle HTTP/2 connections.
            h2_idle_timeout: Duration::from_secs(75),
            fast_path: true,
        }
    }
}

impl HttpSettings {
    /// Whether [`client_ip`](Self::client_ip) may read the request's headers.
    pub fn reads_headers(&self) -> bool {
        !self.trusted_proxies.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the
    /// right-most address in the real-IP header that is not itself trusted (nginx's
    /// `real_ip_recursive on`). An unparsable entry ends the walk: the last address
    /// read before it is the client. Every address is canonical: an IPv4 client on a
    /// dual-stack listener (`::ffff:a.b.c.d`) is `a.b.c.d`, so IPv4 CIDRs (deny lists,
    /// trusted proxies, `remote_addrs`) match it.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let values: Vec<&str> = headers
            .get_all(&self.real_ip_header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            let ip = ip.to_canonical();
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_honours_trusted_proxies_only() {
        let settings = HttpSettings {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..HttpSettings::default()
        };
        let cases: &[(&str, &[&str], &str)] = &[
            // An untrusted peer cannot claim another address.
            ("203.0.113.9", &["1.2.3.4"], "203.0.113.9"),
            ("10.0.0.1", &[], "10.0.0.1"),
            ("10.0.0.1", &["1.2.3.4"], "1.2.3.4"),
            // The right-most untrusted entry: a client may prepend anything it likes.
            ("10.0.0.1", &["6.6.6.6, 1.2.3.4, 10.0.0.7"], "1.2.3.4"),
            ("10.0.0.1", &["6.6.6.6", "1.2.3.4"], "1.2.3.4"),
            ("10.0.0.1", &["10.0.0.8, 10.0.0.7"], "10.0.0.8"),
            ("10.0.0.1", &["junk, 10.0.0.7"], "10.0.0.7"),
            ("::1", &["2001:db8::5"], "2001:db8::5"),
            // IPv4 clients of a dual-stack listener, and mapped forms in the header.
            ("::ffff:203.0.113.9", &["1.2.3.4"], "203.0.113.9"),
            ("::ffff:10.0.0.1", &["::ffff:1.2.3.4"], "1.2.3.4"),
        ];
        for (peer, header, want) in cases {
            let mut headers = HeaderMap::new();
            for h in *header {
                headers.append("x-forwarded-for", h.parse().unwrap());
            }
            assert_eq!(
                settings.client_ip(Some(peer.parse().unwrap()), &headers),
                Some(want.parse().unwrap()),
                "{peer} {header:?}"
            );
        }
        let plain = HttpSettings::default();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        assert_eq!(
            plain.client_ip(Some("10.0.0.1".parse().unwrap()), &headers),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(plain.client_ip(None, &headers), None);
    }
}
