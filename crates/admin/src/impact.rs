//! What a change does to routing, for dry runs: which requests a route would stop or
//! start taking. For every route the change creates, updates or deletes, one request
//! per path and host of its old and new versions is routed by the gateway's own router
//! on the config before and after; the requests whose route differs are the answer.
//!
//! Each sample request is one the route version itself takes: a concrete path for its
//! pattern (`/api/*` → `/api/x`, `/users/{id}` → `/users/1`, a regex path → a shortest
//! string it matches, `~/v[0-9]+/users` → `/v1/users`), a host for a wildcard host
//! (`*.a.com` → `x.a.com`), its first method, and headers, query arguments, cookies and
//! a client address that satisfy its predicates (an `equals` value, a string its
//! `regex` matches, a value for `present`, nothing for `absent` or a negated test).
//! A route version whose predicates no request can be built for (a regex with no
//! sample) gives none; a time window is not sampled (the requests are routed now).

use std::collections::{BTreeMap, BTreeSet};

use gateway::tester::TestTable;
use gateway::HttpSettings;
use model::diff::{ObjectDiff, Objects};
use model::resource::{Resource, ResourceKind};
use model::route::{compile_path_regex, compile_regex, MatchOp, Matcher, Route};
use model::snapshot::Snapshot;
use model::tester::{HeaderValues, RouteTest};
use regex_syntax::hir::{Class, Hir, HirKind};
use serde::Serialize;

/// Most sample requests one dry run routes.
const MAX_SAMPLES: usize = 200;

/// A request whose route the change would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Rerouted {
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    /// Headers the request carries (values under secret-looking names masked).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The address the request comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// The route taking it now (`None`: none, a 404 or 405).
    pub before: Option<String>,
    /// The route that would take it.
    pub after: Option<String>,
}

/// The requests the routes in `diff` would stop or start taking, from `before` to
/// `after` (built off the async workers: it compiles both configs).
pub(crate) async fn rerouted(
    before: &Objects,
    after: &Objects,
    diff: &[ObjectDiff],
) -> Vec<Rerouted> {
    let mut samples = BTreeSet::new();
    for d in diff.iter().filter(|d| d.kind == ResourceKind::Routes) {
        let key = (ResourceKind::Routes, d.id.clone());
        for objects in [before, after] {
            if let Some(Resource::Route(route)) = objects.get(&key) {
                samples.extend(samples_of(route));
            }
        }
    }
    if samples.is_empty() {
        return Vec::new();
    }
    let (before, after) = (snapshot(before), snapshot(after));
    let answer = tokio::task::spawn_blocking(move || {
        let (old, new) = (
            TestTable::from_snapshot(&before),
            TestTable::from_snapshot(&after),
        );
        let settings = HttpSettings::default();
        let route_of = |table: &TestTable, test: &RouteTest| {
            table
                .test(&settings, test)
                .ok()
                .and_then(|r| r.matched.map(|m| m.route_id))
        };
        samples
            .into_iter()
            .take(MAX_SAMPLES)
            .filter_map(|sample| {
                let test = sample.test();
                let (was, will) = (route_of(&old, &test), route_of(&new, &test));
                (was != will).then(|| Rerouted {
                    headers: sample
                        .headers
                        .iter()
                        .map(|(name, value)| {
                            (name.clone(), model::tester::unquoted_value(name, value))
                        })
                        .collect(),
                    method: sample.method,
                    host: sample.host,
                    path: sample.path,
                    query: sample.query,
                    client_ip: sample.client_ip,
                    before: was,
                    after: will,
                })
            })
            .collect()
    })
    .await;
    answer.unwrap_or_default()
}

fn snapshot(objects: &Objects) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for resource in objects.values() {
        snapshot.push(resource.clone());
    }
    snapshot
}

/// A request the dry run routes before and after the change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sample {
    method: String,
    host: Option<String>,
    path: String,
    headers: Vec<(String, String)>,
    query: Option<String>,
    client_ip: Option<String>,
}

impl Sample {
    fn test(&self) -> RouteTest {
        let mut headers: BTreeMap<String, HeaderValues> = BTreeMap::new();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), HeaderValues::One(value.clone()));
        }
        RouteTest {
            method: self.method.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            headers,
            query: self.query.clone(),
            client_ip: self.client_ip.clone(),
            tls: false,
        }
    }
}

/// One request per path and host of the route (method: its first, else GET), with
/// what its predicates ask for; none when they ask for what no sample gives.
fn samples_of(route: &Route) -> Vec<Sample> {
    let Some((headers, query, client_ip)) = predicates_sample(route) else {
        return Vec::new();
    };
    let method = route
        .methods
        .first()
        .cloned()
        .unwrap_or_else(|| "GET".into());
    let hosts: Vec<Option<String>> = if route.hosts.is_empty() {
        vec![None]
    } else {
        route
            .hosts
            .iter()
            .map(|h| {
                Some(
                    h.strip_prefix('*')
                        .map_or(h.clone(), |rest| format!("x{rest}")),
                )
            })
            .collect()
    };
    let mut out = Vec::new();
    for path in route.paths.iter().filter_map(|p| sample_path(p)) {
        for host in &hosts {
            out.push(Sample {
                method: method.clone(),
                host: host.clone(),
                path: path.clone(),
                headers: headers.clone(),
                query: query.clone(),
                client_ip: client_ip.clone(),
            });
        }
    }
    out
}

/// Headers (cookies as one `cookie` header), a query string and a client address
/// that pass the route's predicates; `None` when one of them has no sample.
#[allow(clippy::type_complexity)]
fn predicates_sample(
    route: &Route,
) -> Option<(Vec<(String, String)>, Option<String>, Option<String>)> {
    let mut headers = Vec::new();
    for m in &route.headers {
        if let Some(value) = satisfying(m)? {
            headers.push((m.name.to_ascii_lowercase(), value));
        }
    }
    let mut cookies = Vec::new();
    for m in &route.cookies {
        if let Some(value) = satisfying(m)? {
            cookies.push(format!("{}={value}", m.name));
        }
    }
    if !cookies.is_empty() {
        headers.push(("cookie".to_owned(), cookies.join("; ")));
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any_query = false;
    for m in &route.query {
        if let Some(value) = satisfying(m)? {
            query.append_pair(&m.name, &value);
            any_query = true;
        }
    }
    let client_ip = match route.remote_addrs.first() {
        None => None,
        Some(addr) => Some(model::route::parse_cidr(addr)?.network().to_string()),
    };
    Some((headers, any_query.then(|| query.finish()), client_ip))
}

/// What a request sends under a matcher's name so that the test holds: `Some(None)`
/// sends nothing, `None` when there is no such value.
fn satisfying(m: &Matcher) -> Option<Option<String>> {
    match (m.op, m.not) {
        (MatchOp::Present, false) | (MatchOp::Absent, true) => Some(Some("1".to_owned())),
        (MatchOp::Absent, false)
        | (MatchOp::Present, true)
        | (MatchOp::Equals | MatchOp::Regex, true) => Some(None),
        (MatchOp::Equals, false) => m.value.clone().map(Some),
        // Unanchored, so the sample of the pattern itself matches.
        (MatchOp::Regex, false) => regex_sample(m.value.as_deref()?)
            .filter(|s| {
                compile_regex(m.value.as_deref().unwrap_or_default()).is_ok_and(|r| r.is_match(s))
            })
            .map(Some),
    }
}

/// A concrete path a route path takes; `None` for a regex path with no sample.
fn sample_path(path: &str) -> Option<String> {
    if let Some(pattern) = path.strip_prefix('~') {
        return regex_sample(pattern).filter(|sample| {
            sample.starts_with('/')
                && compile_path_regex(pattern).is_ok_and(|regex| regex.is_match(sample))
        });
    }
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' if in_param => {
                in_param = false;
                out.push('1');
            }
            _ if in_param => {}
            '*' => out.push('x'),
            c => out.push(c),
        }
    }
    Some(out)
}

/// A shortest string the regex matches (each repetition at its minimum, the first
/// alternative that has a sample, from each class a plain character when it has one);
/// `None` when the pattern does not parse or asks for what no sample gives. Callers
/// check the sample against the compiled pattern: assertions (`\b`) are not sampled.
fn regex_sample(pattern: &str) -> Option<String> {
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    let mut out = String::new();
    sample_into(&hir, &mut out)?;
    Some(out)
}

/// Longest repetition a sample spells out (`a{1000}` has none).
const MAX_REPEAT: u32 = 64;

fn sample_into(hir: &Hir, out: &mut String) -> Option<()> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(()),
        HirKind::Literal(literal) => {
            out.push_str(std::str::from_utf8(&literal.0).ok()?);
            Some(())
        }
        HirKind::Class(Class::Unicode(class)) => {
            let ranges: Vec<(char, char)> = class.iter().map(|r| (r.start(), r.end())).collect();
            out.push(plain_char(&ranges)?);
            Some(())
        }
        HirKind::Class(Class::Bytes(class)) => {
            let ascii = class
                .iter()
                .filter(|r| r.start().is_ascii())
                .map(|r| (char::from(r.start()), char::from(r.end().min(0x7f))))
                .collect::<Vec<_>>();
            out.push(plain_char(&ascii)?);
            Some(())
        }
        HirKind::Repetition(repetition) => {
            if repetition.min > MAX_REPEAT {
                return None;
            }
            for _ in 0..repetition.min {
                sample_into(&repetition.sub, out)?;
            }
            Some(())
        }
        HirKind::Capture(capture) => sample_into(&capture.sub, out),
        HirKind::Concat(parts) => parts.iter().try_for_each(|part| sample_into(part, out)),
        HirKind::Alternation(choices) => {
            let mark = out.len();
            for choice in choices {
                if sample_into(choice, out).is_some() {
                    return Some(());
                }
                out.truncate(mark);
            }
            None
        }
    }
}

/// A character of the class fit for a path or a header: a plain one when the class
/// has one, else its first printable ASCII character.
fn plain_char(ranges: &[(char, char)]) -> Option<char> {
    let within = |c: char| ranges.iter().any(|(start, end)| *start <= c && c <= *end);
    "x1a0-_."
        .chars()
        .chain('!'..='~')
        .find(|c| within(*c))
        .or_else(|| {
            ranges
                .iter()
                .find_map(|(start, end)| (*start..=*end).take(256).find(|c| !c.is_control()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_paths() {
        assert_eq!(sample_path("/api/*").as_deref(), Some("/api/x"));
        assert_eq!(sample_path("/users/{id}/x").as_deref(), Some("/users/1/x"));
        assert_eq!(sample_path("/exact").as_deref(), Some("/exact"));
        assert_eq!(sample_path("~/v[0-9]+/users").as_deref(), Some("/v1/users"));
        assert_eq!(
            sample_path("~/(a|bc)+/[^/]+\\.json").as_deref(),
            Some("/a/x.json")
        );
        assert_eq!(sample_path("~/files/.*").as_deref(), Some("/files/"));
        assert_eq!(sample_path("~/(?i)API/\\d{3}").as_deref(), Some("/aPI/111"));
        // No sample: not a path, a word boundary the shortest string breaks, too long.
        assert_eq!(sample_path("~v[0-9]+"), None);
        assert_eq!(sample_path("~/a\\bb"), None);
        assert_eq!(sample_path("~/a{100}"), None);
    }

    #[test]
    fn regex_samples_match_their_pattern() {
        for pattern in [
            "^v[0-9]+$",
            "(?x) beta | gamma",
            "[[:alpha:]]{2,3}-[0-9a-f]{8}",
            "\\p{Greek}+",
            "(?-u:[a-c])+",
            "^(foo|)bar$",
        ] {
            let sample = regex_sample(pattern).unwrap_or_else(|| panic!("{pattern}: no sample"));
            assert!(
                compile_regex(pattern).unwrap().is_match(&sample),
                "{pattern}: {sample:?}"
            );
        }
    }

    fn matcher(name: &str, op: MatchOp, value: Option<&str>, not: bool) -> Matcher {
        Matcher {
            name: name.into(),
            op,
            value: value.map(Into::into),
            not,
        }
    }

    #[test]
    fn samples_pass_the_routes_predicates() {
        let mut route: Route = serde_json::from_value(serde_json::json!({
            "id": "r1", "paths": ["/a", "~/b/[0-9]+"], "methods": ["POST"],
            "hosts": ["*.example.com"], "remote_addrs": ["10.1.0.0/16"],
            "upstream": {"id": "u", "nodes": [{"host": "127.0.0.1", "port": 8080}]},
        }))
        .unwrap();
        route.headers = vec![
            matcher("X-Version", MatchOp::Equals, Some("v2"), false),
            matcher("x-tenant", MatchOp::Regex, Some("^t-[0-9]{2}$"), false),
            matcher("x-debug", MatchOp::Present, None, true),
            matcher("x-canary", MatchOp::Absent, None, true),
        ];
        route.query = vec![matcher("q", MatchOp::Equals, Some("a b&c"), false)];
        route.cookies = vec![matcher("beta", MatchOp::Present, None, false)];
        let samples = samples_of(&route);
        assert_eq!(samples.len(), 2);
        let first = &samples[0];
        assert_eq!(
            (
                first.method.as_str(),
                first.host.as_deref(),
                first.path.as_str()
            ),
            ("POST", Some("x.example.com"), "/a")
        );
        assert_eq!(samples[1].path, "/b/1");
        assert_eq!(
            first.headers,
            vec![
                ("x-version".to_owned(), "v2".to_owned()),
                ("x-tenant".to_owned(), "t-11".to_owned()),
                ("x-canary".to_owned(), "1".to_owned()),
                ("cookie".to_owned(), "beta=1".to_owned()),
            ]
        );
        assert_eq!(first.query.as_deref(), Some("q=a+b%26c"));
        assert_eq!(first.client_ip.as_deref(), Some("10.1.0.0"));
        // The gateway's own router takes every sample with this route.
        let mut snapshot = Snapshot::default();
        snapshot.push(Resource::Route(route.clone()));
        let table = TestTable::from_snapshot(&snapshot);
        for sample in &samples {
            let answer = table
                .test(&HttpSettings::default(), &sample.test())
                .unwrap();
            assert_eq!(
                answer.matched.as_ref().map(|m| m.route_id.as_str()),
                Some("r1"),
                "{sample:?} {answer:?}"
            );
        }
        // A regex value with no sample: the route version has no sample request.
        route.headers = vec![matcher("x", MatchOp::Regex, Some("a{500}"), false)];
        assert!(samples_of(&route).is_empty());
    }
}
