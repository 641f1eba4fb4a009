//! The request-head parser both engines share (`core::head`) through its public API:
//! well-formed heads pass, lenient ones are refused (RFC 9112), limits come first,
//! hosts are canonical; and a fixed-budget fuzz of the parser and the chunked scanner.

use gateway::core::head::{
    canonical_host, check_decoded, header_storage, parse, BodyFraming, Limits, MAX_HEADERS,
};
use gateway::core::refusal::Refusal;

const LIMITS: Limits = Limits {
    max_uri_bytes: 64,
    max_header_bytes: 256,
    max_body_bytes: 100,
};

fn check(raw: &[u8]) -> Result<Option<(BodyFraming, String, bool)>, Refusal> {
    let mut storage = header_storage();
    Ok(parse(raw, &mut storage, LIMITS)?.map(|(head, _)| {
        assert!(head.len <= raw.len());
        (head.framing, head.host.into_owned(), head.close)
    }))
}

fn refused(raw: &[u8]) -> u16 {
    match check(raw) {
        Err(refusal) => refusal.status(),
        Ok(other) => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(raw)),
    }
}

#[test]
fn well_formed_heads_pass() {
    let cases: &[(&[u8], BodyFraming, &str, bool)] = &[
        (
            b"GET / HTTP/1.1\r\nHost: a.io\r\n\r\n",
            BodyFraming::Length(0),
            "a.io",
            false,
        ),
        (
            b"\r\nGET /x?y HTTP/1.1\r\nHost: A.IO.:8080\r\n\r\n",
            BodyFraming::Length(0),
            "a.io",
            false,
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            BodyFraming::Length(5),
            "a",
            false,
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
            BodyFraming::Chunked,
            "a",
            false,
        ),
        (b"GET / HTTP/1.0\r\n\r\n", BodyFraming::Length(0), "", true),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            BodyFraming::Length(0),
            "",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\n\r\n",
            BodyFraming::Length(0),
            "a",
            true,
        ),
        (
            b"GET http://B.io/p HTTP/1.1\r\nHost: b.io\r\n\r\n",
            BodyFraming::Length(0),
            "b.io",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            BodyFraming::Length(0),
            "::1",
            false,
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            BodyFraming::Length(0),
            "a",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-V: caf\xc3\xa9\t!\r\n\r\n",
            BodyFraming::Length(0),
            "a",
            false,
        ),
    ];
    for (raw, framing, host, close) in cases {
        assert_eq!(
            check(raw),
            Ok(Some((*framing, host.to_string(), *close))),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
}

#[test]
fn lenient_heads_are_refused() {
    let bad: &[&[u8]] = &[
        // Request line.
        b"GET /p /q HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET relative HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
        // Line ends, folding, whitespace, control characters.
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x01c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x7fc\r\n\r\n",
        // Framing.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n",
        // Host.
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x@evil\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET http://a.io/ HTTP/1.1\r\nHost: b.io\r\n\r\n",
        b"GET http://u@a.io/ HTTP/1.1\r\nHost: a.io\r\n\r\n",
        b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
        // Connection nominations.
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: a,b,c,d,e,f,g,h,i\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: a b\r\n\r\n",
    ];
    for raw in bad {
        assert_eq!(refused(raw), 400, "{}", String::from_utf8_lossy(raw));
    }
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        501
    );
}

#[test]
fn connect_is_refused_by_the_core() {
    // A tunnel is not a request to route; the core's 405 (JSON), on every engine.
    assert_eq!(
        refused(b"CONNECT a.io:443 HTTP/1.1\r\nHost: a.io:443\r\n\r\n"),
        405
    );
    let uri: http::Uri = "a.io:443".parse().unwrap();
    let headers = http::HeaderMap::new();
    let decoded = check_decoded(&http::Method::CONNECT, &uri, &headers, LIMITS);
    assert_eq!(decoded, Err(Refusal::Connect));
}

#[test]
fn limits_come_first() {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(64));
    assert_eq!(refused(long_target.as_bytes()), 414);
    // A target too long is 414 before the head ends.
    let partial = format!("GET /{}", "x".repeat(200));
    assert_eq!(refused(partial.as_bytes()), 414);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "y".repeat(300)
    );
    assert_eq!(refused(big.as_bytes()), 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..MAX_HEADERS {
        many.push_str(&format!("h{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(refused(many.as_bytes()), 431);
}

#[test]
fn declared_bodies_over_the_limit_are_413_on_either_parser() {
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"),
        413
    );
    assert!(check(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n").is_ok());
    // The same rules for a head Pingora decoded (HTTP/2).
    let decoded = |target_len: usize, headers: &[(&str, &str)]| {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let uri: http::Uri = format!("/{}", "x".repeat(target_len - 1)).parse().unwrap();
        check_decoded(&http::Method::POST, &uri, &map, LIMITS)
            .map(|_| ())
            .map_err(|r| r.status())
    };
    assert_eq!(decoded(10, &[("content-length", "100")]), Ok(()));
    assert_eq!(decoded(65, &[]), Err(414));
    assert_eq!(decoded(10, &[("x", &"y".repeat(300))]), Err(431));
    assert_eq!(decoded(10, &[("content-length", "101")]), Err(413));
    assert_eq!(decoded(10, &[("content-length", "+5")]), Err(400));
    assert_eq!(
        decoded(10, &[("content-length", "5"), ("content-length", "5")]),
        Err(400)
    );
}

#[test]
fn canonical_hosts() {
    for (raw, want) in [
        ("api.example.com", "api.example.com"),
        ("API.Example.com:8080", "api.example.com"),
        ("example.com.", "example.com"),
        ("Example.COM.:443", "example.com"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("", ""),
    ] {
        assert_eq!(canonical_host(raw), want, "{raw}");
    }
}

mod fuzz {
    //! A fixed-budget fuzz of the head parser (no nightly toolchain for cargo-fuzz
    //! here): well-formed heads, mutated byte by byte. Whatever it accepts holds
    //! the invariants the engines rely on.
    use super::*;
    use proptest::prelude::*;

    fn well_formed() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec!["GET", "POST", "PUT", "HEAD", "OPTIONS"]),
            "/[a-z0-9/._%-]{0,20}",
            prop::collection::vec(("[A-Za-z-]{1,10}", "[ -~]{0,20}"), 0..6),
            prop::option::of(0u32..100),
            any::<bool>(),
        )
            .prop_map(|(method, path, headers, length, chunked)| {
                let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: a.io\r\n");
                for (name, value) in headers {
                    raw.push_str(&format!("{name}: {value}\r\n"));
                }
                match (length, chunked) {
                    (_, true) => raw.push_str("Transfer-Encoding: chunked\r\n"),
                    (Some(n), false) => raw.push_str(&format!("Content-Length: {n}\r\n")),
                    _ => {}
                }
                raw.push_str("\r\n");
                raw.into_bytes()
            })
    }

    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            well_formed(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
        )
            .prop_map(|(mut raw, edits)| {
                for (at, byte, kind) in edits {
                    let i = at.index(raw.len());
                    match kind {
                        0 => raw[i] = byte,
                        1 => raw.insert(i, byte),
                        _ => {
                            raw.remove(i);
                        }
                    }
                }
                raw
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn accepted_heads_are_strict(raw in prop_oneof![well_formed(), mutated()]) {
            let mut storage = header_storage();
            if let Ok(Some((head, headers))) = parse(&raw, &mut storage, Limits {
                max_uri_bytes: 8192,
                max_header_bytes: 32768,
                max_body_bytes: u64::MAX,
            }) {
                let bytes = &raw[..head.len];
                // CRLF only, no NUL or control character but HTAB in the head.
                for (i, &b) in bytes.iter().enumerate() {
                    prop_assert!(b != 0);
                    if b == b'\n' {
                        prop_assert!(i > 0 && bytes[i - 1] == b'\r');
                    }
                    if b == b'\r' {
                        prop_assert!(bytes.get(i + 1) == Some(&b'\n'));
                    }
                    prop_assert!(b >= 0x20 || b == b'\t' || b == b'\r' || b == b'\n');
                }
                prop_assert!(!head.target.contains('#'));
                let lengths = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).count();
                let codings = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).count();
                prop_assert!(lengths + codings <= 1);
                let hosts = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count();
                prop_assert_eq!(hosts, 1);
                prop_assert!(!head.host.contains('@'));
            }
        }

        #[test]
        fn chunked_scanner_never_reads_past_its_input(
            body in prop::collection::vec(any::<u8>(), 0..64),
            split in any::<prop::sample::Index>(),
        ) {
            use gateway::core::chunked::ChunkedScanner;
            let mut whole = ChunkedScanner::default();
            let at_once = whole.feed(&body);
            if let Ok(Some(n)) = at_once {
                prop_assert!(n <= body.len());
            }
            // The same answer whatever the reads look like.
            let cut = split.index(body.len() + 1);
            let mut parts = ChunkedScanner::default();
            let split_result = match parts.feed(&body[..cut]) {
                Ok(Some(n)) => Ok(Some(n)),
                Ok(None) => parts.feed(&body[cut..]).map(|end| end.map(|n| n + cut)),
                Err(e) => Err(e),
            };
            prop_assert_eq!(at_once, split_result);
        }
    }
}
