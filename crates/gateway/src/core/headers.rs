//! The header policy of both directions, for both engines: which headers are
//! hop-by-hop (never forwarded), what a Connection header may nominate, how the client
//! is appended to X-Forwarded-For and which Host the upstream gets.
//!
//! The fast path writes headers as bytes and Pingora's adapter edits a header map; both
//! ask [`forwarded`] about each header and build X-Forwarded-For with
//! [`append_forwarded_for`], so the rule exists once.

use crate::balancer::{HostRewrite, Pick, UpstreamPool};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the obsolete Keep-Alive and
/// Proxy-Connection: never forwarded. (Transfer-Encoding is the adapter's to frame;
/// Upgrade is forwarded by the engine that proxies upgrades.)
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// Headers a Connection header may not nominate: removing them hop by hop would
/// change the message's framing or target, or hide who the client is (Envoy and
/// Pingora refuse the same nominations). A request nominating one is refused.
pub fn is_protected(name: &[u8]) -> bool {
    const PROTECTED: [&[u8]; 5] = [
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"forwarded",
        b"x-real-ip",
    ];
    PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name))
        || (name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-"))
}

pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// The comma-separated tokens of a header value (Connection, Transfer-Encoding),
/// trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The header names the Connection headers of a message nominate (besides `close`,
/// `keep-alive` and `upgrade`), to be removed hop by hop.
pub fn nominated<'a>(connection_values: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    connection_values
        .flat_map(tokens)
        .filter(|t| {
            ![&b"close"[..], b"keep-alive", b"upgrade"]
                .iter()
                .any(|keep| t.eq_ignore_ascii_case(keep))
        })
        .collect()
}

/// Whether a request header goes upstream as it is: not hop-by-hop (Upgrade is kept
/// when `upgrading`), not nominated by Connection, not Host or X-Forwarded-For (the
/// adapter writes those from [`upstream_host`] and [`append_forwarded_for`]).
pub fn forwarded(name: &[u8], nominated: &[&[u8]], upgrading: bool) -> bool {
    !(name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"x-forwarded-for")
        || (is_hop_by_hop(name) && !(upgrading && name.eq_ignore_ascii_case(b"upgrade")))
        || nominated.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// Whether a response header goes to the client: not hop-by-hop (Transfer-Encoding
/// aside, which the adapter decides with the framing), not nominated.
pub fn forwarded_back(name: &[u8], nominated: &[&[u8]]) -> bool {
    !((is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"transfer-encoding"))
        || nominated.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// X-Forwarded-For as sent upstream: the values the client sent (every line, in
/// order, joined) with the peer appended.
pub fn append_forwarded_for<'a>(
    out: &mut Vec<u8>,
    prior: impl Iterator<Item = &'a [u8]>,
    peer: Option<&str>,
) {
    out.clear();
    for value in prior {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(value);
    }
    if let Some(peer) = peer {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(peer.as_bytes());
    }
}

/// The Host header `pass_host` asks for; `None` keeps the client's.
pub fn upstream_host<'a>(pool: &'a UpstreamPool, pick: &'a Pick) -> Option<&'a str> {
    match &pool.pass_host {
        HostRewrite::Pass => None,
        HostRewrite::Rewrite(host) => Some(host),
        HostRewrite::Node => Some(&pick.node().host_header),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_names_cannot_be_nominated() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "X-Forwarded-For",
            "x-forwarded-host",
            "Forwarded",
            "X-Real-IP",
        ] {
            assert!(is_protected(name.as_bytes()), "{name}");
        }
        for name in ["x-secret", "x-forwarded", "cookie", "te"] {
            assert!(!is_protected(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn forwarding_rules() {
        let nominated = nominated([&b"close, X-Secret"[..], b"keep-alive"].into_iter());
        assert_eq!(nominated, vec![&b"X-Secret"[..]]);
        for (name, upgrading, want) in [
            ("accept", false, true),
            ("x-secret", false, false),
            ("keep-alive", false, false),
            ("proxy-connection", false, false),
            ("te", false, false),
            ("upgrade", false, false),
            ("upgrade", true, true),
            ("host", false, false),
            ("x-forwarded-for", false, false),
        ] {
            assert_eq!(
                forwarded(name.as_bytes(), &nominated, upgrading),
                want,
                "{name}"
            );
        }
        assert!(forwarded_back(b"transfer-encoding", &[]));
        assert!(!forwarded_back(b"keep-alive", &[]));
        let mut out = Vec::new();
        append_forwarded_for(
            &mut out,
            [&b"1.2.3.4"[..], b"5.6.7.8"].into_iter(),
            Some("9.9.9.9"),
        );
        assert_eq!(out, b"1.2.3.4, 5.6.7.8, 9.9.9.9");
        append_forwarded_for(&mut out, std::iter::empty(), Some("9.9.9.9"));
        assert_eq!(out, b"9.9.9.9");
    }
}
