//! Route: which requests (host, path, method) go to which upstream.

use serde::{Deserialize, Serialize};

use crate::plugin::Plugins;
use crate::upstream::Upstream;
use crate::validate::{check_id, is_valid_host, ValidationErrors, Validator};

/// HTTP methods a route may restrict itself to.
pub const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// A routing rule: which requests it takes (host, path, method and predicates) and
/// where they go.
///
/// Paths: `/exact`, `/prefix/*` (trailing `*`), `/users/{id}` (a named parameter is a
/// whole segment; a template may end in `*` too) and `~regex` (matched against the
/// whole normalised path, as in Kong). Precedence is documented in the gateway's
/// router and in `docs/routing.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Empty means any host. `*.example.com` matches any subdomain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    /// Empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request headers that must (not) match; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Matcher>,
    /// Query arguments that must (not) match; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<Matcher>,
    /// Cookies that must (not) match; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<Matcher>,
    /// Client addresses (IPs or CIDRs) the route accepts; empty means any. The client
    /// address honours the node's trusted-proxy setting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_addrs: Vec<String>,
    /// When the route is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_window: Option<TimeWindow>,
    /// The service whose upstream (unless the route has its own) and plugins the
    /// route takes (`plugin::effective` for the merge rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// Boxed: most routes name an upstream instead, and an inline one is large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Box<Upstream>>,
    /// Plugins that run once the route matched (over its service's and the global
    /// rules', see `plugin::effective`).
    #[serde(default, skip_serializing_if = "Plugins::is_empty")]
    pub plugins: Plugins,
    /// Higher wins among routes that match equally specifically.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

pub(crate) const CIDR_EXPECTED: &str =
    "must be an IP address or a CIDR like 10.0.0.0/8 or 2001:db8::/32";

/// A test on one header, query argument or cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    /// The value to compare with (`equals`) or the pattern (`regex`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Inverts the test.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not: bool,
}

/// How a [`Matcher`] tests its value. A header sent several times matches when any of
/// its values does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MatchOp {
    Equals,
    /// Unanchored, like `grep`: use `^…$` for a whole-value match.
    Regex,
    Present,
    Absent,
}

/// A period in which a route is in force: after and/or before an instant, each an RFC
/// 3339 timestamp with its offset (`2026-12-24T18:00:00+01:00`); both make a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// `(after, before)` in milliseconds since the Unix epoch.
pub type WindowBounds = (Option<i64>, Option<i64>);

impl TimeWindow {
    /// The window's bounds; `Err` names the field and says what is wrong with it.
    pub fn bounds_ms(&self) -> Result<WindowBounds, (&'static str, String)> {
        let parse = |field: &'static str, value: &Option<String>| {
            match value {
            None => Ok(None),
            Some(text) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| Some(t.timestamp_millis()))
                .map_err(|e| {
                    (
                        field,
                        format!("must be an RFC 3339 timestamp with offset, like 2026-12-24T18:00:00+01:00 ({e})"),
                    )
                }),
        }
        };
        Ok((parse("after", &self.after)?, parse("before", &self.before)?))
    }
}

/// How one entry of `paths` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern<'a> {
    Exact(&'a str),
    /// The literal prefix before the trailing `*`.
    Prefix(&'a str),
    /// Literal parts and `{name}` segments; `tail` when it ends in `*`.
    Template {
        parts: Vec<TemplatePart<'a>>,
        tail: bool,
    },
    /// The pattern after the leading `~`.
    Regex(&'a str),
}

/// A piece of a path template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    Literal(&'a str),
    /// A named parameter: one whole, non-empty segment.
    Param(&'a str),
}

impl<'a> PathPattern<'a> {
    /// Reads one `paths` entry; `Err` says what is wrong with it.
    pub fn parse(path: &'a str) -> Result<Self, String> {
        if let Some(pattern) = path.strip_prefix('~') {
            if pattern.is_empty() {
                return Err("a regex path needs a pattern after '~'".into());
            }
            return Ok(PathPattern::Regex(pattern));
        }
        if !path.starts_with('/') {
            return Err("must start with '/' (or '~' for a regex)".into());
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain whitespace or control characters".into());
        }
        let (body, tail) = match path.strip_suffix('*') {
            Some(body) => (body, true),
            None => (path, false),
        };
        if body.contains('*') {
            return Err("'*' is allowed only once, as the last character (prefix match)".into());
        }
        if !body.contains('{') && !body.contains('}') {
            return Ok(if tail {
                PathPattern::Prefix(body)
            } else {
                PathPattern::Exact(body)
            });
        }
        let mut parts = Vec::new();
        let mut names = Vec::new();
        let mut literal_start = 0;
        let mut offset = 0;
        for segment in body.split('/') {
            let end = offset + segment.len();
            if segment.starts_with('{') || segment.ends_with('}') {
                let name = segment
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .filter(|n| is_param_name(n))
                    .ok_or_else(|| {
                        format!("{segment:?}: a parameter is a whole segment like {{id}}, its name letters, digits and '_'")
                    })?;
                if names.contains(&name) {
                    return Err(format!("parameter {{{name}}} appears twice"));
                }
                names.push(name);
                parts.push(TemplatePart::Literal(&body[literal_start..offset]));
                parts.push(TemplatePart::Param(name));
                literal_start = end;
            } else if segment.contains('{') || segment.contains('}') {
                return Err(format!(
                    "{segment:?}: '{{' and '}}' only enclose a whole segment parameter"
                ));
            }
            offset = end + 1;
        }
        if literal_start < body.len() {
            parts.push(TemplatePart::Literal(&body[literal_start..]));
        }
        Ok(PathPattern::Template { parts, tail })
    }

    /// The literal text every matching path starts with; the router indexes by it.
    pub fn literal_prefix(&self) -> &'a str {
        match self {
            PathPattern::Exact(p) | PathPattern::Prefix(p) => p,
            PathPattern::Template { parts, .. } => match parts.first() {
                Some(TemplatePart::Literal(l)) => l,
                _ => "",
            },
            PathPattern::Regex(pattern) => regex_literal_prefix(pattern),
        }
    }
}

fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The literal text a regex's every match starts with (it is anchored at the start of
/// the path): the characters before the first special one, minus the last when a
/// quantifier follows it; empty when the pattern has an alternation or flags anywhere,
/// which could make the prefix optional.
pub fn regex_literal_prefix(pattern: &str) -> &str {
    let pattern = pattern.strip_prefix('^').unwrap_or(pattern);
    if pattern.contains('|') {
        return "";
    }
    const SPECIAL: &[u8] = b"\\.+*?()|[]{}^$";
    let bytes = pattern.as_bytes();
    let mut end = bytes
        .iter()
        .position(|b| SPECIAL.contains(b))
        .unwrap_or(bytes.len());
    if matches!(bytes.get(end), Some(b'?' | b'*' | b'{')) {
        // `ab?`: the `b` is optional. Step back over a whole UTF-8 character.
        end = pattern[..end]
            .char_indices()
            .next_back()
            .map_or(0, |(i, _)| i);
    }
    &pattern[..end]
}

impl Route {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        if self.name.len() > 256 {
            v.error("name", "must be at most 256 characters");
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if !is_valid_host(bare) {
                v.error(
                    &format!("hosts[{i}]"),
                    "must be a DNS name, an IP address or a wildcard like *.example.com",
                );
            }
        }
        if self.paths.is_empty() {
            v.error("paths", "must list at least one path");
        }
        for (i, path) in self.paths.iter().enumerate() {
            let field = format!("paths[{i}]");
            if path.len() > 4096 {
                v.error(&field, "must be at most 4096 characters");
                continue;
            }
            match PathPattern::parse(path) {
                Err(why) => v.error(&field, why),
                Ok(PathPattern::Regex(pattern)) => {
                    if let Err(e) = compile_path_regex(pattern) {
                        v.error(&field, format!("is not a valid regex: {e}"));
                    }
                }
                Ok(_) => {}
            }
        }
        for (i, method) in self.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                v.error(
                    &format!("methods[{i}]"),
                    format!("must be one of {}", METHODS.join(", ")),
                );
            }
        }
        for (list, matchers) in [
            ("headers", &self.headers),
            ("query", &self.query),
            ("cookies", &self.cookies),
        ] {
            for (i, m) in matchers.iter().enumerate() {
                v.at(&format!("{list}[{i}]"), |v| {
                    m.validate(v, list == "headers")
                });
            }
        }
        for (i, addr) in self.remote_addrs.iter().enumerate() {
            if parse_cidr(addr).is_none() {
                v.error(&format!("remote_addrs[{i}]"), CIDR_EXPECTED);
            }
        }
        if let Some(window) = &self.time_window {
            v.at("time_window", |v| {
                if window.after.is_none() && window.before.is_none() {
                    v.error("", "give after, before or both");
                }
                match window.bounds_ms() {
                    Err((field, why)) => v.error(field, why),
                    Ok((Some(after), Some(before))) if after >= before => {
                        v.error("before", "must be later than after")
                    }
                    Ok(_) => {}
                }
            });
        }
        v.at("plugins", |v| self.plugins.validate(v));
        if let Some(service) = &self.service_id {
            check_id(&mut v, "service_id", service);
        }
        match (&self.upstream_id, &self.upstream) {
            (Some(_), Some(_)) => {
                v.error("upstream", "give either upstream_id or upstream, not both")
            }
            (None, None) if self.service_id.is_none() => v.error(
                "upstream_id",
                "a route needs upstream_id, an inline upstream or a service_id",
            ),
            (None, None) => {}
            (Some(id), None) => crate::registry::check_upstream_ref(&mut v, "upstream_id", id),
            (None, Some(up)) => {
                v.at("upstream", |v| {
                    if !up.id.is_empty() {
                        check_id(v, "id", &up.id);
                    }
                    up.validate_body(v);
                });
            }
        }
        v.finish()
    }
}

impl Matcher {
    fn validate(&self, v: &mut Validator, is_header: bool) {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 256
            && if is_header {
                http_token(&self.name)
            } else {
                !self
                    .name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ';' || c == '=')
            };
        if !name_ok {
            v.error(
                "name",
                "must be a non-empty name without spaces, control characters, ';' or '='",
            );
        }
        match (self.op, &self.value) {
            (MatchOp::Equals, None) | (MatchOp::Regex, None) => {
                v.error("value", "is required for equals and regex")
            }
            (MatchOp::Present | MatchOp::Absent, Some(_)) => {
                v.error("value", "must be left out for present and absent")
            }
            (MatchOp::Regex, Some(pattern)) => {
                if let Err(e) = compile_regex(pattern) {
                    v.error("value", format!("is not a valid regex: {e}"));
                }
            }
            _ => {}
        }
    }
}

/// An HTTP header name: a token (RFC 9110 §5.6.2).
pub(crate) fn http_token(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Compiles a regex with the size limits every regex of a route gets (the gateway
/// uses this too, so what validates is what runs).
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
}

/// Compiles a regex path's pattern (the text after `~`) as the router runs it: it must
/// match the whole normalised path.
pub fn compile_path_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    compile_regex(&format!("^(?:{pattern})$"))
}

/// An IP address or a CIDR block; a bare address is a /32 or /128. An IPv4-mapped
/// IPv6 block (`::ffff:10.0.0.0/104`) is its IPv4 block (`10.0.0.0/8`): the gateway
/// compares canonical client addresses, so a mapped block could never match.
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    let net = text
        .parse::<ipnet::IpNet>()
        .ok()
        .map(|net| net.trunc())
        .or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        })?;
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .ok()
                .map(ipnet::IpNet::V4),
            None => Some(net),
        },
        _ => Some(net),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_blocks_are_their_ipv4_blocks() {
        for (text, want) in [
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:192.0.2.7", "192.0.2.7/32"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("2001:db8::/32", "2001:db8::/32"),
        ] {
            assert_eq!(parse_cidr(text).unwrap().to_string(), want, "{text}");
        }
    }

    fn fields(json: &str) -> Vec<String> {
        let r: Route = serde_json::from_str(json).expect("parses");
        match r.validate() {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn minimal_route_is_valid() {
        let r: Route =
            serde_json::from_str(r#"{"id":"r1","paths":["/api/*"],"upstream_id":"up"}"#).unwrap();
        assert!(r.validate().is_ok());
        assert!(r.enabled);
        assert_eq!(r.priority, 0);
        assert_eq!(
            PathPattern::parse(&r.paths[0]),
            Ok(PathPattern::Prefix("/api/"))
        );
    }

    #[test]
    fn ip_restriction_is_checked_field_by_field() {
        let with = |plugin: &str| {
            fields(&format!(
                r#"{{"id":"r","paths":["/"],"upstream_id":"u","plugins":{{"ip-restriction":{plugin}}}}}"#
            ))
        };
        assert!(with(r#"{"denylist":["10.0.0.0/8","::1"]}"#).is_empty());
        assert!(
            with(r#"{"allowlist":["192.0.2.1"],"denylist":["192.0.2.0/24"],"message":"no"}"#)
                .is_empty()
        );
        assert_eq!(with("{}"), ["plugins.ip-restriction"]);
        let request_id = |plugin: &str| {
            fields(&format!(
                r#"{{"id":"r","paths":["/"],"upstream_id":"u","plugins":{{"request-id":{plugin}}}}}"#
            ))
        };
        assert!(request_id("{}").is_empty());
        let redirect = |plugin: &str| {
            fields(&format!(
                r#"{{"id":"r","paths":["/"],"upstream_id":"u","plugins":{{"redirect":{plugin}}}}}"#
            ))
        };
        for ok in [
            r#"{"http_to_https":true}"#,
            r#"{"uri":"https://new.example.com$request_uri","ret_code":308}"#,
            r#"{"regex_uri":["^/old/(.*)","/new/$1"],"append_query_string":true}"#,
        ] {
            assert!(redirect(ok).is_empty(), "{ok}");
        }
        let refused: [(&str, &[&str]); 6] = [
            ("{}", &["plugins.redirect"]),
            (
                r#"{"http_to_https":true,"uri":"/x"}"#,
                &["plugins.redirect"],
            ),
            (
                r#"{"uri":"/a\r\nSet-Cookie: x"}"#,
                &["plugins.redirect.uri"],
            ),
            (
                r#"{"regex_uri":["(", "/x"]}"#,
                &["plugins.redirect.regex_uri[0]"],
            ),
            (
                r#"{"uri":"/x","ret_code":200}"#,
                &["plugins.redirect.ret_code"],
            ),
            (
                r#"{"http_to_https":true,"append_query_string":true}"#,
                &["plugins.redirect.append_query_string"],
            ),
        ];
        for (config, want) in refused {
            assert_eq!(redirect(config), want, "{config}");
        }
        assert_eq!(
            request_id(r#"{"header_name":"x id"}"#),
            ["plugins.request-id.header_name"]
        );
        assert_eq!(
            with(r#"{"allowlist":["10.0.0.0/8","nope"],"denylist":["1.2.3.4/33"]}"#),
            [
                "plugins.ip-restriction.allowlist[1]",
                "plugins.ip-restriction.denylist[0]"
            ]
        );
        assert_eq!(
            with(r#"{"denylist":["::1"],"message":""}"#),
            ["plugins.ip-restriction.message"]
        );
        // An unknown plugin is refused, never served without its filter.
        assert_eq!(
            fields(
                r#"{"id":"r","paths":["/"],"upstream_id":"u","plugins":{"ip-restrictions":{}}}"#
            ),
            ["plugins.ip-restrictions"]
        );
        // A service may give the upstream.
        assert!(fields(r#"{"id":"r","paths":["/"],"service_id":"s"}"#).is_empty());
        assert_eq!(fields(r#"{"id":"r","paths":["/"]}"#), ["upstream_id"]);
        // No plugins: nothing written back.
        let plain: Route =
            serde_json::from_str(r#"{"id":"r","paths":["/"],"upstream_id":"u"}"#).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("plugins"));
    }

    #[test]
    fn path_patterns_parse() {
        use TemplatePart::{Literal, Param};
        let cases: &[(&str, Result<PathPattern, &str>)] = &[
            ("/a", Ok(PathPattern::Exact("/a"))),
            ("/", Ok(PathPattern::Exact("/"))),
            ("/a/*", Ok(PathPattern::Prefix("/a/"))),
            ("/*", Ok(PathPattern::Prefix("/"))),
            ("~^/v[0-9]+/", Ok(PathPattern::Regex("^/v[0-9]+/"))),
            (
                "/users/{id}",
                Ok(PathPattern::Template {
                    parts: vec![Literal("/users/"), Param("id")],
                    tail: false,
                }),
            ),
            (
                "/u/{id}/posts/{post_id}/*",
                Ok(PathPattern::Template {
                    parts: vec![
                        Literal("/u/"),
                        Param("id"),
                        Literal("/posts/"),
                        Param("post_id"),
                        Literal("/"),
                    ],
                    tail: true,
                }),
            ),
            (
                "/{a}",
                Ok(PathPattern::Template {
                    parts: vec![Literal("/"), Param("a")],
                    tail: false,
                }),
            ),
            ("/u/{id}x", Err("whole segment")),
            ("/u/x{id}", Err("whole segment")),
            ("/u/{}", Err("whole segment")),
            ("/u/{a-b}", Err("whole segment")),
            ("/u/{a}/{a}", Err("twice")),
            ("/a*b", Err("'*' is allowed only once")),
            ("/a**", Err("'*' is allowed only once")),
            ("a", Err("must start with '/'")),
            ("~", Err("needs a pattern")),
        ];
        for (path, want) in cases {
            match (PathPattern::parse(path), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{path}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{path}: {got}"),
                (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn literal_prefixes_index_patterns_safely() {
        let cases = [
            ("/users/{id}", "/users/"),
            ("/{a}/x", "/"),
            ("~/api/v[0-9]+", "/api/v"),
            ("~^/api/v1/.*", "/api/v1/"),
            ("~/files?", "/file"),
            ("~/ab*c", "/a"),
            ("~/a{2}", "/"),
            ("~/a|/b", ""),
            ("~(?i)/api", ""),
            ("~/é?", "/"),
            ("~\\/x", ""),
            ("/exact", "/exact"),
            ("/p/*", "/p/"),
        ];
        for (path, want) in cases {
            let pattern = PathPattern::parse(path).unwrap();
            assert_eq!(pattern.literal_prefix(), want, "{path}");
        }
    }

    #[test]
    fn each_rule_is_reported_with_its_field() {
        let cases: &[(&str, &[&str])] = &[
            (r#"{"id":"r","paths":[],"upstream_id":"u"}"#, &["paths"]),
            (
                r#"{"id":"r","paths":["api"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/a*b"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/a**"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/a b"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"methods":["GET","FETCH"],"upstream_id":"u"}"#,
                &["methods[1]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"hosts":["ok.com","bad host"],"upstream_id":"u"}"#,
                &["hosts[1]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"hosts":["*.ok.com"],"upstream_id":"u"}"#,
                &[],
            ),
            (r#"{"id":"r","paths":["/"]}"#, &["upstream_id"]),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","upstream":{"nodes":[{"host":"a","port":1}]}}"#,
                &["upstream"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"bad/id"}"#,
                &["upstream_id"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream":{"nodes":[{"host":"a","port":0}]}}"#,
                &["upstream.nodes[0].port"],
            ),
            (r#"{"id":"","paths":["/"],"upstream_id":"u"}"#, &["id"]),
            (
                r#"{"id":"r","paths":["~/a(","/u/{x}y"],"upstream_id":"u"}"#,
                &["paths[0]", "paths[1]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","headers":[{"name":"x a","op":"present"}]}"#,
                &["headers[0].name"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","query":[{"name":"q","op":"equals"}]}"#,
                &["query[0].value"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","cookies":[{"name":"c","op":"absent","value":"v"}]}"#,
                &["cookies[0].value"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","headers":[{"name":"x","op":"regex","value":"(("}]}"#,
                &["headers[0].value"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","headers":[{"name":"x","op":"regex","value":"^a+$","not":true}],"query":[{"name":"a b","op":"present"}]}"#,
                &["query[0].name"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","remote_addrs":["10.0.0.0/8","::1","192.168.1.7","10.0.0.0/33","nope"]}"#,
                &["remote_addrs[3]", "remote_addrs[4]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","time_window":{}}"#,
                &["time_window"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","time_window":{"after":"tomorrow"}}"#,
                &["time_window.after"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","time_window":{"after":"2026-01-02T00:00:00Z","before":"2026-01-01T23:00:00+02:00"}}"#,
                &["time_window.before"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","time_window":{"after":"2026-01-02T00:00:00Z","before":"2026-01-01T23:00:00-02:00:00"}}"#,
                &["time_window.before"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","time_window":{"after":"2026-01-02T00:00:00+01:00","before":"2026-01-02T00:00:00Z"}}"#,
                &[],
            ),
        ];
        for (json, want) in cases {
            assert_eq!(fields(json), *want, "{json}");
        }
    }

    #[test]
    fn all_errors_are_collected_at_once() {
        let got = fields(
            r#"{"id":"","paths":["x","/ok"],"methods":["NOPE"],"upstream":{"nodes":[{"host":"a","port":1},{"host":"b","port":0}]}}"#,
        );
        assert_eq!(
            got,
            ["id", "paths[0]", "methods[0]", "upstream.nodes[1].port"]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Route>(r#"{"id":"r","paths":["/"],"uri":"/"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `uri`"), "{err}");
    }
}
