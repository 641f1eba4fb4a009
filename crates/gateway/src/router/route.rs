//! One route compiled for matching: its paths (exact, prefix, template, regex), the
//! methods it accepts, its predicates (headers, query, cookies, remote address, time
//! window) and their tests, each written once: the lookup and the route tester call
//! them alike ([`Failure`] names the predicate a request fails, [`FailureText`] tells
//! it for people). The index over many routes (host tables, radix tree, precedence) is
//! `router/mod.rs`; a route's plugins are `RouteTarget::plugins`.

use std::borrow::Cow;
use std::sync::Arc;

use ipnet::IpNet;
use model::route::{
    compile_path_regex, compile_regex, parse_cidr, MatchOp, Matcher, PathPattern, Route,
    TemplatePart, METHODS,
};
use regex::Regex;

use super::RequestInfo;

/// A route compiled for matching; built once per version of the route.
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Route,
    /// Lowercase, deduplicated; empty for any host.
    pub(super) hosts: Vec<Option<Arc<str>>>,
    /// Bit i set = `METHODS[i]` accepted; [`ANY_METHOD`] when the route lists none.
    pub(super) methods: u16,
    pub(super) paths: Vec<CompiledPath>,
    /// `None` when the route has no predicates, the common case.
    predicates: Option<Predicates>,
}

/// A validated list of IPs or CIDRs; `Err` names the entry (validation runs the same
/// parser, so it should not happen).
pub(crate) fn cidrs(field: &str, entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| parse_cidr(e).ok_or_else(|| format!("{field}[{i}]: not a CIDR")))
        .collect()
}

#[derive(Debug)]
pub(super) enum CompiledPath {
    Exact(Arc<str>),
    Prefix(Arc<str>),
    Template {
        literal: Arc<str>,
        parts: Vec<Part>,
        tail: bool,
    },
    Regex {
        literal: Arc<str>,
        regex: Regex,
    },
}

/// A predicate a request fails; the index is into the route's `headers`, `query` or
/// `cookies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    TimeWindow,
    RemoteAddr,
    Header(usize),
    Query(usize),
    Cookie(usize),
}

#[derive(Debug)]
pub(super) enum Part {
    Literal(String),
    Param,
}

#[derive(Debug, Default)]
struct Predicates {
    headers: Vec<(http::HeaderName, Test)>,
    query: Vec<(String, Test)>,
    cookies: Vec<(String, Test)>,
    remote: Vec<IpNet>,
    after_ms: Option<i64>,
    before_ms: Option<i64>,
}

#[derive(Debug)]
struct Test {
    op: TestOp,
    not: bool,
}

#[derive(Debug)]
enum TestOp {
    Equals(String),
    Regex(Regex),
    Present,
    Absent,
}

impl CompiledRoute {
    /// Compiles a valid route; `Err` says why a route that passed validation still
    /// cannot be served (it should not happen: validation runs the same parsers).
    pub fn compile(route: Route) -> Result<Self, String> {
        let methods = match route.methods.as_slice() {
            [] => ANY_METHOD,
            listed => listed.iter().fold(0, |acc, m| acc | method_bit(m)),
        };
        let mut paths = Vec::with_capacity(route.paths.len());
        for (i, path) in route.paths.iter().enumerate() {
            let pattern = PathPattern::parse(path).map_err(|e| format!("paths[{i}]: {e}"))?;
            let literal: Arc<str> = pattern.literal_prefix().into();
            paths.push(match pattern {
                PathPattern::Exact(_) => CompiledPath::Exact(literal),
                PathPattern::Prefix(_) => CompiledPath::Prefix(literal),
                PathPattern::Template { parts, tail } => CompiledPath::Template {
                    literal,
                    parts: parts
                        .into_iter()
                        .map(|p| match p {
                            TemplatePart::Literal(l) => Part::Literal(l.to_owned()),
                            TemplatePart::Param(_) => Part::Param,
                        })
                        .collect(),
                    tail,
                },
                PathPattern::Regex(pattern) => CompiledPath::Regex {
                    literal,
                    regex: compile_path_regex(pattern).map_err(|e| format!("paths[{i}]: {e}"))?,
                },
            });
        }
        let predicates = Predicates::compile(&route)?;
        let mut hosts: Vec<Option<Arc<str>>> = route
            .hosts
            .iter()
            .map(|h| Some(h.to_ascii_lowercase().into()))
            .collect();
        hosts.sort();
        hosts.dedup();
        Ok(Self {
            hosts,
            methods,
            paths,
            predicates,
            route,
        })
    }

    /// Whether matching this route reads request headers (header or cookie
    /// predicates).
    pub(super) fn reads_headers(&self) -> bool {
        self.predicates
            .as_ref()
            .is_some_and(|p| !p.headers.is_empty() || !p.cookies.is_empty())
    }

    /// Whether the request passes every predicate.
    #[inline]
    pub(super) fn accepts(&self, req: &RequestInfo<'_>) -> bool {
        self.failure(req).is_none()
    }

    /// The first predicate the request fails (see [`Failure`]).
    #[inline]
    pub(super) fn failure(&self, req: &RequestInfo<'_>) -> Option<Failure> {
        self.predicates.as_ref().and_then(|p| p.failure(req))
    }

    /// Whether the route accepts a method (its bit from [`method_bit`]).
    #[inline]
    pub(super) fn accepts_method(methods: u16, method: u16) -> bool {
        methods & method != 0
    }
}

/// A failed predicate told for people (the route tester): which one, what it asks
/// for, what the request has. Values under names that look secret are masked
/// (`model::tester::shown_value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailureText {
    /// `header "x-tenant"`, `time window` …
    pub what: String,
    pub expected: String,
    pub got: String,
}

impl CompiledRoute {
    /// `failure` (from [`CompiledRoute::failure`] on `req`) told for people.
    pub(crate) fn explain_failure(&self, failure: Failure, req: &RequestInfo<'_>) -> FailureText {
        let route = &self.route;
        let Some(p) = &self.predicates else {
            return FailureText {
                what: "predicates".to_owned(),
                expected: String::new(),
                got: String::new(),
            };
        };
        let matcher = |kind: &str, m: &Matcher, got: Vec<Cow<'_, str>>| {
            let value = |v: &str| model::tester::shown_value(&m.name, v);
            let test = match (m.op, &m.value) {
                (MatchOp::Equals, Some(v)) => format!("equal to {}", value(v)),
                (MatchOp::Regex, Some(v)) => format!("matching {}", value(v)),
                (MatchOp::Present, _) | (MatchOp::Equals | MatchOp::Regex, None) => {
                    "present".to_owned()
                }
                (MatchOp::Absent, _) => "absent".to_owned(),
            };
            let got = if got.is_empty() {
                "absent".to_owned()
            } else {
                got.iter().map(|v| value(v)).collect::<Vec<_>>().join(", ")
            };
            FailureText {
                what: format!("{kind} {:?}", m.name),
                expected: if m.not { format!("not {test}") } else { test },
                got,
            }
        };
        match failure {
            Failure::TimeWindow => {
                let window = route.time_window.as_ref();
                let bound = |name: &str, at: Option<&String>| at.map(|t| format!("{name} {t}"));
                let expected = [
                    bound("after", window.and_then(|w| w.after.as_ref())),
                    bound("before", window.and_then(|w| w.before.as_ref())),
                ];
                let now = std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(req.now_ms).unwrap_or(0));
                FailureText {
                    what: "time window".to_owned(),
                    expected: expected
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" and "),
                    got: format!("now: {}", httpdate::fmt_http_date(now)),
                }
            }
            Failure::RemoteAddr => FailureText {
                what: "client address".to_owned(),
                expected: format!("in {}", route.remote_addrs.join(", ")),
                got: req
                    .client_ip
                    .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
            },
            Failure::Header(i) => {
                let (name, _) = &p.headers[i];
                matcher(
                    "header",
                    &route.headers[i],
                    header_values(req.headers, name).collect(),
                )
            }
            Failure::Query(i) => {
                let (name, _) = &p.query[i];
                matcher(
                    "query argument",
                    &route.query[i],
                    query_values(req.query, name).collect(),
                )
            }
            Failure::Cookie(i) => {
                let (name, _) = &p.cookies[i];
                matcher(
                    "cookie",
                    &route.cookies[i],
                    cookie_values(req.headers, name).collect(),
                )
            }
        }
    }
}

impl Predicates {
    fn compile(route: &Route) -> Result<Option<Self>, String> {
        fn test(field: &str, m: &Matcher) -> Result<Test, String> {
            let op = match (m.op, &m.value) {
                (MatchOp::Equals, Some(v)) => TestOp::Equals(v.clone()),
                (MatchOp::Regex, Some(v)) => {
                    TestOp::Regex(compile_regex(v).map_err(|e| format!("{field}.value: {e}"))?)
                }
                (MatchOp::Present, _) => TestOp::Present,
                (MatchOp::Absent, _) => TestOp::Absent,
                (_, None) => return Err(format!("{field}.value: missing")),
            };
            Ok(Test { op, not: m.not })
        }
        let mut p = Predicates::default();
        for (i, m) in route.headers.iter().enumerate() {
            let field = format!("headers[{i}]");
            let name = http::HeaderName::from_bytes(m.name.as_bytes())
                .map_err(|e| format!("{field}.name: {e}"))?;
            p.headers.push((name, test(&field, m)?));
        }
        for (i, m) in route.query.iter().enumerate() {
            p.query
                .push((m.name.clone(), test(&format!("query[{i}]"), m)?));
        }
        for (i, m) in route.cookies.iter().enumerate() {
            p.cookies
                .push((m.name.clone(), test(&format!("cookies[{i}]"), m)?));
        }
        p.remote = cidrs("remote_addrs", &route.remote_addrs)?;
        if let Some(window) = &route.time_window {
            let (after, before) = window
                .bounds_ms()
                .map_err(|(field, why)| format!("time_window.{field}: {why}"))?;
            p.after_ms = after;
            p.before_ms = before;
        }
        let none = p.headers.is_empty()
            && p.query.is_empty()
            && p.cookies.is_empty()
            && p.remote.is_empty()
            && p.after_ms.is_none()
            && p.before_ms.is_none();
        Ok((!none).then_some(p))
    }

    /// The first predicate `req` fails, in the router's order: time window, client
    /// address, headers, query, cookies.
    #[inline]
    fn failure(&self, req: &RequestInfo<'_>) -> Option<Failure> {
        if !self.in_window(req.now_ms) {
            return Some(Failure::TimeWindow);
        }
        if !self.takes_client(req.client_ip) {
            return Some(Failure::RemoteAddr);
        }
        for (i, (name, test)) in self.headers.iter().enumerate() {
            if !test.holds(header_values(req.headers, name)) {
                return Some(Failure::Header(i));
            }
        }
        for (i, (name, test)) in self.query.iter().enumerate() {
            if !test.holds(query_values(req.query, name)) {
                return Some(Failure::Query(i));
            }
        }
        for (i, (name, test)) in self.cookies.iter().enumerate() {
            if !test.holds(cookie_values(req.headers, name)) {
                return Some(Failure::Cookie(i));
            }
        }
        None
    }

    fn in_window(&self, now_ms: i64) -> bool {
        !(self.after_ms.is_some_and(|after| now_ms < after)
            || self.before_ms.is_some_and(|before| now_ms >= before))
    }

    fn takes_client(&self, client_ip: Option<std::net::IpAddr>) -> bool {
        self.remote.is_empty()
            || client_ip.is_some_and(|ip| self.remote.iter().any(|net| net.contains(&ip)))
    }
}

/// Every value the request has for header `name` (none when absent).
fn header_values<'a>(
    headers: &'a http::HeaderMap,
    name: &'a http::HeaderName,
) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// Every value of query argument `name`, decoded.
fn query_values<'a>(
    query: Option<&'a str>,
    name: &'a str,
) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Every value of cookie `name` across the `Cookie` headers.
fn cookie_values<'a>(
    headers: &'a http::HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| Cow::Borrowed(v))
}

impl Test {
    /// `values`: every value the request has under the name (none when absent).
    fn holds<'v>(&self, mut values: impl Iterator<Item = Cow<'v, str>>) -> bool {
        let result = match &self.op {
            TestOp::Present => values.next().is_some(),
            TestOp::Absent => values.next().is_none(),
            TestOp::Equals(want) => values.any(|v| v == want.as_str()),
            TestOp::Regex(regex) => values.any(|v| regex.is_match(&v)),
        };
        result != self.not
    }
}

impl CompiledPath {
    /// The literal text the path starts with (the whole path when exact): the key the
    /// route table indexes it by.
    pub(super) fn literal(&self) -> &Arc<str> {
        match self {
            CompiledPath::Exact(literal) | CompiledPath::Prefix(literal) => literal,
            CompiledPath::Template { literal, .. } | CompiledPath::Regex { literal, .. } => literal,
        }
    }

    /// Whether `path` matches: what the table's index finds (the literal is the
    /// path, or a prefix of it), then [`matches_rest`](Self::matches_rest).
    pub(super) fn matches(&self, path: &str) -> bool {
        let indexed = match self {
            CompiledPath::Exact(literal) => path == &**literal,
            _ => path.starts_with(&**self.literal()),
        };
        indexed && self.matches_rest(path)
    }

    /// Whether `path` matches, given that it starts with the literal prefix.
    pub(super) fn matches_rest(&self, path: &str) -> bool {
        match self {
            CompiledPath::Exact(p) => path == &**p,
            CompiledPath::Prefix(_) => true,
            CompiledPath::Template { parts, tail, .. } => {
                let mut rest = path;
                for part in parts {
                    match part {
                        Part::Literal(l) => match rest.strip_prefix(l.as_str()) {
                            Some(r) => rest = r,
                            None => return false,
                        },
                        Part::Param => {
                            let end = rest.find('/').unwrap_or(rest.len());
                            if end == 0 {
                                return false;
                            }
                            rest = &rest[end..];
                        }
                    }
                }
                *tail || rest.is_empty()
            }
            CompiledPath::Regex { regex, .. } => regex.is_match(path),
        }
    }
}

pub(super) const ANY_METHOD: u16 = u16::MAX;

/// A method no route can list (WebDAV's, say); only routes without methods accept it.
const OTHER_METHOD: u16 = 1 << 15;

pub(super) fn method_bit(method: &str) -> u16 {
    METHODS
        .iter()
        .position(|m| *m == method)
        .map_or(OTHER_METHOD, |i| 1 << i)
}
