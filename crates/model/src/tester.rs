//! The route tester's question and answer, shared by the admin API, the CLI and the
//! console: [`RouteTest`] describes one request (method, host, path, headers, query,
//! client address); [`RouteTestResult`] says which route of the instance takes it,
//! with which plugins in which order, and for every other route why it does not.
//!
//! The answer is computed by the gateway's own router (`gateway::tester`), so what the
//! tester says is what a node does; these types only carry it. Values of headers,
//! query arguments and cookies whose names look secret (`Authorization`, `apikey`, a
//! session cookie …) never appear in an answer: [`shown_value`] masks them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plugin::EffectivePlugin;
use crate::route::http_token;
use crate::snapshot::Revision;
use crate::validate::{ValidationErrors, Validator};

/// One request to test, as a client would send it to a node of the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTest {
    /// `GET` when left out; any HTTP method token (methods no route can list are
    /// taken only by routes without methods, as on a node).
    #[serde(default = "default_method")]
    pub method: String,
    /// The `Host` the request carries, as sent (`api.example.com:8443`); left out,
    /// the request has none (only routes without hosts can take it), unless
    /// `headers` gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The request target's path as sent, not yet normalised; it may carry the query
    /// (`/search?q=1`).
    pub path: String,
    /// Request headers; a name sent several times takes a list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderValues>,
    /// The query string without `?`, when `path` does not carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The address the connection comes from; with the node's trusted proxies, the
    /// real-IP header in `headers` names the client as on a node. Left out, the
    /// client is unknown and routes with `remote_addrs` do not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// The connection is TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// The value of a request header: one, or a list when the name is sent several times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Self::One(v) => (Some(v.as_str()), &[][..]),
            Self::Many(vs) => (None, vs.as_slice()),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

fn default_method() -> String {
    "GET".to_owned()
}

/// Longest path or query a test may give; a node's own limit (414) is far below.
const MAX_TARGET: usize = 64 * 1024;

impl RouteTest {
    /// A `GET` of `path` with nothing else set.
    pub fn get(path: &str) -> Self {
        Self {
            method: default_method(),
            host: None,
            path: path.to_owned(),
            headers: BTreeMap::new(),
            query: None,
            client_ip: None,
            tls: false,
        }
    }

    /// Every problem with field paths: a method that is not an HTTP token, a path
    /// that is not in origin form, a query given twice, header names and values that
    /// HTTP cannot carry, a client address that does not parse.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        if self.method.is_empty() || self.method.len() > 32 || !http_token(&self.method) {
            v.error("method", "must be an HTTP method token such as GET");
        }
        if !self.path.starts_with('/') {
            v.error("path", "must start with '/'");
        } else if self.path.len() > MAX_TARGET {
            v.error("path", "must be at most 65536 characters");
        } else if !target_text(&self.path) {
            v.error(
                "path",
                "must be visible ASCII without '#' (percent-encode the rest)",
            );
        }
        if let Some(query) = &self.query {
            if self.path.contains('?') {
                v.error("query", "give the query in path or here, not both");
            } else if query.len() > MAX_TARGET || !target_text(query) {
                v.error(
                    "query",
                    "must be visible ASCII without '#' (percent-encode the rest)",
                );
            }
        }
        if let Some(host) = &self.host {
            if host.is_empty() || !field_value(host) {
                v.error(
                    "host",
                    "must be a host name or address, with an optional :port",
                );
            }
        }
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (name, values) in &self.headers {
            let field = format!("headers.{name}");
            if name.is_empty() || name.len() > 256 || !http_token(name) {
                v.error(&field, "must be a header name (an HTTP token)");
                continue;
            }
            if let Some(first) = seen.insert(name.to_ascii_lowercase(), name) {
                v.error(
                    &field,
                    format!("names the same header as {first:?} (names are case-insensitive)"),
                );
            }
            if name.eq_ignore_ascii_case("host") && self.host.is_some() {
                v.error(&field, "give the host in host, not here");
            }
            if let HeaderValues::Many(list) = values {
                if list.is_empty() {
                    v.error(&field, "must list at least one value");
                }
            }
            for (i, value) in values.iter().enumerate() {
                if !field_value(value) {
                    let at = match values {
                        HeaderValues::One(_) => field.clone(),
                        HeaderValues::Many(_) => format!("{field}[{i}]"),
                    };
                    v.error(
                        &at,
                        "must be a header value: no line breaks or control characters",
                    );
                }
            }
        }
        if let Some(ip) = &self.client_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                v.error("client_ip", "must be an IPv4 or IPv6 address");
            }
        }
        v.finish()
    }

    /// The path without its query, and the query (from `path` or `query`).
    pub fn target(&self) -> (&str, Option<&str>) {
        match self.path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (&self.path, self.query.as_deref()),
        }
    }

    /// Every header as (name, value), a listed name once per value, `host` first
    /// when given.
    pub fn header_lines(&self) -> impl Iterator<Item = (&str, &str)> {
        let host = self.host.as_deref().map(|h| ("host", h));
        host.into_iter().chain(
            self.headers
                .iter()
                .flat_map(|(name, values)| values.iter().map(move |v| (name.as_str(), v))),
        )
    }
}

/// Text a request target may carry as sent: visible ASCII but '#'.
fn target_text(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
}

/// An HTTP field value (RFC 9110 §5.5): no control characters but tab.
fn field_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// Whether a header, query argument or cookie of this name likely carries a secret
/// (credentials, tokens, sessions): its values are masked in answers.
pub fn looks_secret(name: &str) -> bool {
    const MARKERS: &[&str] = &[
        "auth",
        "key",
        "token",
        "secret",
        "pass",
        "session",
        "cookie",
        "sign",
        "credential",
        "jwt",
        "csrf",
        "xsrf",
    ];
    let name = name.to_ascii_lowercase();
    MARKERS.iter().any(|m| name.contains(m))
}

/// A request value as an answer may show it: quoted, or masked when its name looks
/// secret (only its length is told).
pub fn shown_value(name: &str, value: &str) -> String {
    if looks_secret(name) {
        masked(value)
    } else {
        format!("{value:?}")
    }
}

/// A request value as sent, or masked when its name looks secret.
pub fn unquoted_value(name: &str, value: &str) -> String {
    if looks_secret(name) {
        masked(value)
    } else {
        value.to_owned()
    }
}

fn masked(value: &str) -> String {
    format!("<masked, {} bytes>", value.len())
}

/// The tester's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteTestResult {
    /// The admin revision of the config the answer is for.
    pub revision: Revision,
    pub outcome: Outcome,
    /// The status a node answers before any plugin runs; `None` when the request
    /// is routed (its plugins may still answer: 401, 429 …).
    pub status: Option<u16>,
    /// The request as the router sees it; `None` when it was refused before routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<SeenRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<MatchedRoute>,
    /// Every other route of the instance and why it does not take the request, the
    /// closest first (see [`MissReason`]); at most [`MAX_NEAR_MISSES`].
    pub near_misses: Vec<NearMiss>,
    /// Routes left out of `near_misses` beyond the cap.
    #[serde(default)]
    pub truncated: usize,
    /// Why the instance's nodes serve nothing (its namespace does not exist): every
    /// request is then `not_found`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbound: Option<String>,
}

/// Near misses an answer lists at most.
pub const MAX_NEAR_MISSES: usize = 50;

/// What a node does with the request before any plugin runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// A route takes it: `matched`.
    Matched,
    /// 404: no route takes it.
    NotFound,
    /// 405: routes take its host, path and predicates but not its method; `allow`
    /// lists the methods they accept.
    MethodNotAllowed { allow: Vec<String> },
    /// 400: the request cannot be routed (its path does not normalise, its host is
    /// malformed …).
    BadRequest { reason: String },
    /// Refused before routing for another reason (414, 431, CONNECT …).
    Refused { code: String, reason: String },
}

/// The request after the node's rules: canonical host, normalised path, the client
/// address after the trusted-proxy rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeenRequest {
    pub method: String,
    /// Lowercase, without port; empty when the request names none.
    pub host: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

/// The route that takes the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MatchedRoute {
    pub route_id: String,
    /// Which of its `paths` matched (the most specific, when several do).
    pub path: String,
    /// Which of its `hosts` matched; `None` when it lists none (any host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// Whose upstream the request goes to: the route's own or its service's.
    pub upstream_from: UpstreamFrom,
    /// The stand-alone upstream it goes to; `None` for an inline one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// Its plugins in running order, as the node's chain holds them (global rules,
    /// service and route merged; a consumer's plugins join after authentication).
    pub plugins: Vec<EffectivePlugin>,
}

/// Whose upstream a route's requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFrom {
    Route,
    Service,
}

/// A route that does not take the request, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NearMiss {
    pub route_id: String,
    pub reason: MissReason,
    /// For people: what failed, in a sentence.
    pub detail: String,
    /// What the route asks for (a predicate's test, its methods …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What the request has instead (secret-looking values masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub got: Option<String>,
    /// For `shadowed`: the route that takes the request instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadowed_by: Option<String>,
}

/// Why a route does not take the request. The router checks, in order, the host, the
/// path, the predicates (time window, client address, headers, query, cookies) and
/// the method, then precedence among the routes that pass; a route that fails a later
/// check came closer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissReason {
    /// None of its hosts is the request's.
    HostMismatch,
    /// None of its paths matches.
    PathMismatch,
    /// Its time window is not open now.
    OutsideTimeWindow,
    /// The client address is not in its `remote_addrs`.
    RemoteAddrMismatch,
    /// A header predicate fails.
    HeaderMismatch,
    /// A query predicate fails.
    QueryMismatch,
    /// A cookie predicate fails.
    CookieMismatch,
    /// It takes everything about the request but its method.
    MethodNotAllowed,
    /// It takes the request, but a route ahead of it in precedence does too.
    Shadowed,
    /// The node does not serve it: its config has a problem (`detail`).
    SkippedInvalid,
    /// It is disabled.
    Disabled,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(test: &RouteTest) -> Vec<String> {
        match test.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn parses_with_defaults_and_refuses_unknown_fields() {
        let test: RouteTest = serde_json::from_str(
            r#"{"path": "/a?x=1", "host": "API.example.com:8443",
                "headers": {"x-one": "1", "x-two": ["a", "b"]}}"#,
        )
        .unwrap();
        assert_eq!(test.method, "GET");
        assert!(!test.tls);
        assert_eq!(test.target(), ("/a", Some("x=1")));
        let lines: Vec<_> = test.header_lines().collect();
        assert_eq!(
            lines,
            [
                ("host", "API.example.com:8443"),
                ("x-one", "1"),
                ("x-two", "a"),
                ("x-two", "b")
            ]
        );
        assert_eq!(fields(&test), Vec::<String>::new());
        assert!(serde_json::from_str::<RouteTest>(r#"{"path": "/", "verb": "GET"}"#).is_err());
        assert!(serde_json::from_str::<RouteTest>(r#"{"method": "GET"}"#).is_err());
    }

    #[test]
    fn every_problem_with_its_field() {
        let mut test = RouteTest::get("no-slash");
        test.method = "GE T".into();
        test.client_ip = Some("10.0.0.300".into());
        test.host = Some("a.example.com".into());
        test.headers
            .insert("bad name".into(), HeaderValues::One("x".into()));
        test.headers
            .insert("x-line".into(), HeaderValues::One("a\r\nb".into()));
        test.headers.insert(
            "X-List".into(),
            HeaderValues::Many(vec!["ok".into(), "\u{0}".into()]),
        );
        test.headers
            .insert("x-list".into(), HeaderValues::One("dup".into()));
        test.headers
            .insert("Host".into(), HeaderValues::One("b.example.com".into()));
        assert_eq!(
            fields(&test),
            [
                "method",
                "path",
                "headers.Host",
                "headers.X-List[1]",
                "headers.bad name",
                "headers.x-line",
                "headers.x-list",
                "client_ip"
            ]
        );

        let mut test = RouteTest::get("/a?b=1");
        test.query = Some("c=2".into());
        assert_eq!(fields(&test), ["query"]);
        assert_eq!(fields(&RouteTest::get("/a b")), ["path"]);
        assert_eq!(fields(&RouteTest::get("/a#frag")), ["path"]);
        let mut test = RouteTest::get("/");
        test.method = "PROPFIND".into();
        test.client_ip = Some("::ffff:10.0.0.1".into());
        assert_eq!(fields(&test), Vec::<String>::new());
    }

    #[test]
    fn secret_looking_values_are_masked() {
        for name in [
            "Authorization",
            "apikey",
            "X-API-Key",
            "session_id",
            "Cookie",
            "access_token",
        ] {
            assert_eq!(shown_value(name, "s3cret"), "<masked, 6 bytes>", "{name}");
        }
        assert_eq!(shown_value("x-tenant", "blue"), "\"blue\"");
    }

    #[test]
    fn answers_read_back() {
        let result = RouteTestResult {
            revision: Revision(3),
            outcome: Outcome::MethodNotAllowed {
                allow: vec!["GET".into()],
            },
            status: Some(405),
            request: None,
            matched: None,
            near_misses: vec![NearMiss {
                route_id: "r1".into(),
                reason: MissReason::MethodNotAllowed,
                detail: "it accepts GET only".into(),
                expected: Some("GET".into()),
                got: Some("POST".into()),
                shadowed_by: None,
            }],
            truncated: 0,
            unbound: None,
        };
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["outcome"]["kind"], "method_not_allowed");
        assert_eq!(json["near_misses"][0]["reason"], "method_not_allowed");
        let back: RouteTestResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, result);
    }
}
