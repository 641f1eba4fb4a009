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
//! over its limit or with more than [`MAX_HEADERS`] lines 431; a declared body over the
//! node's limit is 413 once the head passed. [`check_decoded`] applies the same limits
//! and Content-Length rule to a head another parser decoded (HTTP/2, by Pingora).

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

/// The request's size limits (the node's settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    /// Largest declared body (Content-Length); larger is 413.
    pub max_body_bytes: u64,
}

impl Limits {
    pub fn of(settings: &crate::settings::HttpSettings) -> Self {
        Self {
            max_uri_bytes: settings.max_uri_bytes,
            max_header_bytes: settings.max_header_bytes,
            max_body_bytes: settings.max_body_bytes,
        }
    }
}

/// A Content-Length value: plain digits, at most 19 of them (no sign, no list).
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What a header line counts against `max_header_bytes`.
fn line_bytes(name: usize, value: usize) -> usize {
    name + value + 4
}

/// The admission of a head another parser decoded (HTTP/2, or HTTP/1 as Pingora
/// read it), what [`parse`] is for raw bytes: CONNECT refused, the limits, the
/// Content-Length rule (HTTP/2 frames bodies itself: no Transfer-Encoding reaches
/// here), and the host ([`decoded_host`]). Returns the canonical host.
pub fn check_decoded<'a>(
    method: &http::Method,
    uri: &'a http::Uri,
    headers: &'a http::HeaderMap,
    limits: Limits,
) -> Result<Cow<'a, str>, Refusal> {
    if method == http::Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    let size: usize = headers
        .iter()
        .map(|(name, value)| line_bytes(name.as_str().len(), value.len()))
        .sum();
    if size > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => {}
        (Some(_), Some(_)) => return Err(Refusal::BadRequest),
        (Some(value), None) => match content_length(value.as_bytes()) {
            None => return Err(Refusal::BadRequest),
            Some(n) if n > limits.max_body_bytes => return Err(Refusal::BodyTooLarge),
            Some(_) => {}
        },
    }
    decoded_host(uri.authority().map(|a| a.as_str()), headers)
}

/// The canonical host of a request whose head was decoded (HTTP/2, or HTTP/1 as
/// Pingora read it): the authority (`:authority`, or an absolute-form target's)
/// else the Host header, each checked as [`parse`] checks an HTTP/1 Host; two Host
/// headers, or a Host that names another host than the authority, are refused (RFC
/// 9113 §8.3.1, RFC 9112 §3.2.2).
pub fn decoded_host<'a>(
    authority: Option<&'a str>,
    headers: &'a http::HeaderMap,
) -> Result<Cow<'a, str>, Refusal> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(Refusal::BadRequest),
        (Some(value), None) => Some(check_host(
            value.to_str().map_err(|_| Refusal::BadRequest)?,
        )?),
        (None, None) => None,
    };
    host_of(authority, header)
}

/// The host from the authority (checked) and the checked Host header: the
/// authority takes precedence and the two must agree.
fn host_of<'a>(
    authority: Option<&'a str>,
    header: Option<Cow<'a, str>>,
) -> Result<Cow<'a, str>, Refusal> {
    match (authority, header) {
        (Some(authority), header) => {
            let from_target = check_host(authority)?;
            if header.is_some_and(|h| !h.eq_ignore_ascii_case(&from_target)) {
                return Err(Refusal::BadRequest);
            }
            Ok(from_target)
        }
        (None, Some(header)) => Ok(header),
        (None, None) => Ok(Cow::Borrowed("")),
    }
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
        size += line_bytes(h.name.len(), h.value.len());
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(Refusal::BadRequest);
            }
            let value = std::str::from_utf8(h.value).map_err(|_| Refusal::BadRequest)?;
            host_header = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(Refusal::BadRequest);
            }
            length = Some(content_length(h.value).ok_or(Refusal::BadRequest)?);
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
    if length.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }
    let header_host = match host_header {
        Some(value) => Some(check_host(value)?),
        None => None,
    };
    let host = host_of(authority, header_host)?;
    if form == TargetForm::Authority {
        return Err(Refusal::Connect);
    }
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

/// The HTTP/2 connection preface (RFC 9113 §3.4): an h2c connection with prior
/// knowledge starts with it.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Storage for [`parse`].
pub fn header_storage<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}
