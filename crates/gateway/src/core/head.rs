//! The strict HTTP/1.1 request head (RFC 9112): the one admission rule every HTTP/1
//! request passes, whichever engine reads it. The fast path parses its heads with
//! [`parse`]; on Pingora's path the connection guard (`guard.rs`) runs the same
//! function on each head before Pingora acts on it. A head is refused (400, the
//! connection closed) when:
//!
//! - the request line is not `method SP request-target SP HTTP/1.x CRLF` with exactly
//!   one space between the parts (httparse's default, strict configuration);
//! - a line ends in a bare LF, a CR stands alone, or a header value holds NUL or
//!   another control character (httparse refuses those in values);
//! - a header name is followed by whitespace before the colon, or a line is folded
//!   (obs-fold);
//! - the target holds a fragment (`#`), a byte outside ASCII, or is not origin-form
//!   (`/…`), absolute-form (`http://…`), `*` (OPTIONS) or authority-form (CONNECT);
//! - the framing is invalid or doubled: two Content-Length lines (even equal ones), a
//!   Content-Length that is not digits, Content-Length with Transfer-Encoding,
//!   Transfer-Encoding in HTTP/1.0, or a Transfer-Encoding other than exactly
//!   `chunked` (501 for a coding the gateway does not implement);
//! - Host is missing (HTTP/1.1), doubled, holds userinfo or anything that is not a
//!   host and port, or disagrees with the authority of an absolute-form target;
//! - Connection nominates a header the gateway must see end to end (Host,
//!   Content-Length, Transfer-Encoding, Forwarded, X-Forwarded-*, X-Real-IP), or more
//!   than [`MAX_NOMINATIONS`] of them.
//!
//! Size limits come before any of that: a target over the node's limit is 414, a head
//! over its limit or with more than [`MAX_HEADERS`] lines 431.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use super::headers::{is_protected, tokens};
use super::refusal::Refusal;

/// Header lines per request or response head; Pingora's limit, on both engines.
pub const MAX_HEADERS: usize = 256;
/// Largest response head read from an upstream (Pingora's `MAX_HEADER_SIZE`).
pub const MAX_RESPONSE_HEAD_BYTES: usize = 1_048_575;
/// Headers one Connection header may nominate besides `close`, `keep-alive` and
/// `upgrade`.
pub const MAX_NOMINATIONS: usize = 8;

/// The request head's size limits (the node's settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Content-Length (0 when absent).
    Length(u64),
    Chunked,
}

/// The form of the request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    Origin,
    Absolute,
    Authority,
    Asterisk,
}

/// A request head that passed every rule above.
#[derive(Debug)]
pub struct Head<'b> {
    pub method: &'b str,
    /// The target as sent.
    pub target: &'b str,
    pub form: TargetForm,
    /// The path (origin or absolute form), without the query; `*` or the authority
    /// for the other forms.
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The host the request is for, canonical (see [`canonical_host`]): from an
    /// absolute-form target, else from Host; empty when neither names one.
    pub host: Cow<'b, str>,
    /// The Host header as sent (None when absent).
    pub host_header: Option<&'b str>,
    pub framing: BodyFraming,
    /// The connection ends after this request (Connection: close, or HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
    /// Upgrade (with `Connection: upgrade`) was asked for.
    pub upgrade: bool,
    /// `Expect` is present.
    pub expect: bool,
    /// Connection named headers other than close / keep-alive / upgrade.
    pub nominates: bool,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
}

/// Parses and checks the head at the start of `buf`. `Ok(None)`: incomplete (the
/// caller reads more, within its size cap). `headers` is the storage httparse fills.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS],
    limits: Limits,
) -> Result<Option<(Head<'b>, &'h [httparse::Header<'b>])>, Refusal> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, limits)?;
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadersTooLarge),
        Err(_) => {
            // A request line over the limit is 414 even when the rest is broken.
            check_partial(buf, limits)?;
            return Err(Refusal::BadRequest);
        }
    };
    let head = check(&req, &buf[..len], limits)?;
    Ok(Some((head, req.headers)))
}

/// Limits that can be judged before a head is complete.
fn check_partial(buf: &[u8], limits: Limits) -> Result<(), Refusal> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let line_end = memchr::memchr(b'\n', line);
    let line_len = line_end.unwrap_or(line.len());
    // method SP target SP HTTP/1.1: the target is what the line holds beyond ~16 bytes.
    if line_len > limits.max_uri_bytes + 32 {
        return Err(Refusal::UriTooLong);
    }
    if buf.len() > limits.max_uri_bytes + limits.max_header_bytes + 4096 {
        return Err(Refusal::HeadersTooLarge);
    }
    if buf.contains(&0) {
        return Err(Refusal::BadRequest);
    }
    Ok(())
}

fn check<'b>(
    req: &httparse::Request<'_, 'b>,
    raw: &'b [u8],
    limits: Limits,
) -> Result<Head<'b>, Refusal> {
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Refusal::BadRequest);
    };
    if target.len() > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    // Every line ends in CRLF: a LF without CR before it is refused (httparse takes
    // bare LF as a line end; a CR without LF it refuses itself).
    for i in memchr::memchr_iter(b'\n', raw) {
        if i == 0 || raw[i - 1] != b'\r' {
            return Err(Refusal::BadRequest);
        }
    }
    // ASCII only, no fragment (httparse lets bytes over 0x7f and `#` through).
    if target.bytes().any(|b| b == b'#' || b >= 0x80) {
        return Err(Refusal::BadRequest);
    }
    let (form, authority, path, query) = split_target(method, target)?;

    let mut size = 0usize;
    let mut host_header: Option<&'b str> = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = minor == 0;
    let mut connection_upgrade = false;
    let mut upgrade_header = false;
    let mut expect = false;
    let mut nominations = 0usize;
    for h in req.headers.iter() {
        size += h.name.len() + h.value.len() + 4;
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(Refusal::BadRequest);
            }
            let value = std::str::from_utf8(h.value).map_err(|_| Refusal::BadRequest)?;
            host_header = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() || h.value.is_empty() || h.value.len() > 19 {
                return Err(Refusal::BadRequest);
            }
            if !h.value.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::BadRequest);
            }
            let n = h
                .value
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding {
                return Err(Refusal::BadRequest);
            }
            transfer_encoding = true;
            let mut codings = tokens(h.value);
            match (codings.next(), codings.next()) {
                (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => chunked = true,
                (None, _) => return Err(Refusal::BadRequest),
                // gzip, chunked and the like: codings this gateway does not decode.
                _ => return Err(Refusal::Status(501)),
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if !token.iter().all(|&b| is_token_byte(b)) {
                    return Err(Refusal::BadRequest);
                }
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    if minor == 0 {
                        close = false;
                    }
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                } else {
                    nominations += 1;
                    if nominations > MAX_NOMINATIONS || is_protected(token) {
                        return Err(Refusal::BadRequest);
                    }
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect = true;
        }
    }
    if size > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    if transfer_encoding && (length.is_some() || minor == 0) {
        return Err(Refusal::BadRequest);
    }
    if minor == 1 && host_header.is_none() {
        return Err(Refusal::BadRequest);
    }
    let header_host = match host_header {
        Some(value) => Some(check_host(value)?),
        None => None,
    };
    let host = match (authority, header_host) {
        (Some(authority), header) => {
            let from_target = check_host(authority)?;
            if header.is_some_and(|h| !h.eq_ignore_ascii_case(&from_target)) {
                return Err(Refusal::BadRequest);
            }
            from_target
        }
        (None, Some(header)) => header,
        (None, None) => Cow::Borrowed(""),
    };
    Ok(Head {
        method,
        target,
        form,
        path,
        query,
        minor,
        host,
        host_header,
        framing: if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::Length(length.unwrap_or(0))
        },
        close,
        upgrade: upgrade_header && connection_upgrade,
        expect,
        nominates: nominations > 0,
        len: raw.len(),
    })
}

/// tchar (RFC 9110 §5.6.2).
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

type Split<'b> = (TargetForm, Option<&'b str>, &'b str, Option<&'b str>);

/// The target's form, authority (absolute and authority form), path and query.
fn split_target<'b>(method: &str, target: &'b str) -> Result<Split<'b>, Refusal> {
    let split_query = |pq: &'b str| match pq.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (pq, None),
    };
    if target.starts_with('/') {
        let (path, query) = split_query(target);
        return Ok((TargetForm::Origin, None, path, query));
    }
    if method == "CONNECT" {
        return Ok((TargetForm::Authority, Some(target), target, None));
    }
    if target == "*" {
        if method != "OPTIONS" {
            return Err(Refusal::BadRequest);
        }
        return Ok((TargetForm::Asterisk, None, target, None));
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(Refusal::BadRequest);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(end);
    if authority.is_empty() {
        return Err(Refusal::BadRequest);
    }
    let (path, query) = match pq.strip_prefix('?') {
        Some(query) => ("/", Some(query)),
        None if pq.is_empty() => ("/", None),
        None => split_query(pq),
    };
    Ok((TargetForm::Absolute, Some(authority), path, query))
}

/// Checks a Host value (or an absolute target's authority): `host [":" port]` where
/// host is a bracketed IPv6 literal or a reg-name / IPv4 address (RFC 3986 §3.2.2),
/// no userinfo; returns the canonical host (see [`canonical_host`]).
fn check_host(value: &str) -> Result<Cow<'_, str>, Refusal> {
    let (host, port) = if let Some(v6) = value.strip_prefix('[') {
        let (literal, rest) = v6.split_once(']').ok_or(Refusal::BadRequest)?;
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(Refusal::BadRequest);
        }
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or(Refusal::BadRequest)?),
        };
        (&value[..literal.len() + 2], port)
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    if port.is_some_and(|p| p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(Refusal::BadRequest);
    }
    if !host.starts_with('[')
        && !host.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%')
                || b"!$&'()*+,;=".contains(&b)
        })
    {
        return Err(Refusal::BadRequest);
    }
    Ok(canonical_host(host))
}

/// A host as routing compares it: without port or IPv6 brackets, lowercase, without
/// a trailing dot (`API.Example.com.:8080` → `api.example.com`). Borrows in the
/// common case (already canonical).
pub fn canonical_host(raw: &str) -> Cow<'_, str> {
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => raw.split_once(':').map_or(raw, |(h, _)| h),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// How an upstream's response head is read, on both engines: Pingora's own parser
/// configuration (spaces after a header name and obs-fold are taken from upstreams),
/// so the two engines agree on which responses they relay. An engine that forwards a
/// folded value replaces its line breaks with spaces (RFC 9112 §5.2).
pub fn response_parser() -> httparse::ParserConfig {
    let mut parser = httparse::ParserConfig::default();
    parser.allow_spaces_after_header_name_in_responses(true);
    parser.allow_obsolete_multiline_headers_in_responses(true);
    parser
}

/// Storage for [`parse`].
pub fn header_storage<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_uri_bytes: 64,
        max_header_bytes: 256,
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
                use crate::core::chunked::ChunkedScanner;
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
}
