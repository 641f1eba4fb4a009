//! One route compiled for matching: its paths (exact, prefix, template, regex), the
//! methods it accepts, its predicates (headers, query, cookies, remote address, time
//! window) and their tests. The index over many routes (host tables, radix tree,
//! precedence) is `router/mod.rs`; a route's plugins are `RouteTarget::plugins`.

use std::sync::Arc;

use ipnet::IpNet;
use model::route::{
    compile_regex, parse_cidr, MatchOp, Matcher, PathPattern, Route, TemplatePart, METHODS,
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
                    regex: compile_regex(&format!("^(?:{pattern})$"))
                        .map_err(|e| format!("paths[{i}]: {e}"))?,
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

    pub(super) fn accepts(&self, req: &RequestInfo<'_>) -> bool {
        self.predicates.as_ref().is_none_or(|p| p.hold(req))
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

    fn hold(&self, req: &RequestInfo<'_>) -> bool {
        if self.after_ms.is_some_and(|after| req.now_ms < after)
            || self.before_ms.is_some_and(|before| req.now_ms >= before)
        {
            return false;
        }
        if !self.remote.is_empty()
            && !req
                .client_ip
                .is_some_and(|ip| self.remote.iter().any(|net| net.contains(&ip)))
        {
            return false;
        }
        let headers = self.headers.iter().all(|(name, test)| {
            test.holds(
                req.headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes())),
            )
        });
        let query = self.query.iter().all(|(name, test)| {
            test.holds(
                form_urlencoded::parse(req.query.unwrap_or("").as_bytes())
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v),
            )
        });
        let cookies = self.cookies.iter().all(|(name, test)| {
            test.holds(
                req.headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='))
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| std::borrow::Cow::Borrowed(v)),
            )
        });
        headers && query && cookies
    }
}

impl Test {
    /// `values`: every value the request has under the name (none when absent).
    fn holds<'v>(&self, mut values: impl Iterator<Item = std::borrow::Cow<'v, str>>) -> bool {
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
