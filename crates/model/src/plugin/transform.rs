//! The configurations of the request and response transformations: `proxy-rewrite`
//! and `cors`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::route::http_token;
use crate::validate::Validator;

/// Header changes: `set` replaces (or adds) a header, `add` appends a value, `remove`
/// drops every value. Applied in that order: remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderChanges {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Names the engines own: framing and hop-by-hop headers a plugin must not write.
const RESERVED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

impl HeaderChanges {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn validate(&self, v: &mut Validator, host_allowed: bool) {
        let name_ok = |v: &mut Validator, field: String, name: &str| {
            let lower = name.to_ascii_lowercase();
            if name.len() > 128 || !http_token(name) {
                v.error(&field, "must be a header name (1 to 128 token characters)");
            } else if RESERVED.contains(&lower.as_str()) || (!host_allowed && lower == "host") {
                v.error(
                    &field,
                    format!("{name} is set by the gateway, not by a plugin"),
                );
            }
        };
        for (list, map) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in map {
                name_ok(v, format!("{list}.{name}"), name);
                if value.len() > 4096 || value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                    v.error(
                        &format!("{list}.{name}"),
                        "the value must be at most 4096 bytes without control characters",
                    );
                }
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            name_ok(v, format!("remove[{i}]"), name);
        }
    }
}

/// APISIX's `proxy-rewrite`: what is sent upstream instead of what the client sent:
/// the path (`uri`, or `regex_uri` with captures), the `Host`, and headers. The query
/// string is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyRewrite {
    /// The path sent upstream; `$uri` is the request's normalised path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `[regex, template]`: a path matching the regex is sent as the template, `$1`,
    /// `${2}`… from its captures; other paths are sent as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_uri: Option<[String; 2]>,
    /// The `Host` sent upstream (over the upstream's `pass_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "HeaderChanges::is_empty")]
    pub headers: HeaderChanges,
}

impl PluginConfig for ProxyRewrite {
    fn validate(&self, v: &mut Validator) {
        if self.uri.is_some() && self.regex_uri.is_some() {
            v.error("uri", "give uri or regex_uri, not both");
        }
        if self.uri.is_none()
            && self.regex_uri.is_none()
            && self.host.is_none()
            && self.headers.is_empty()
        {
            v.error("", "give uri, regex_uri, host or headers");
        }
        let path_ok = |p: &str| {
            p.starts_with('/')
                && p.len() <= 4096
                && p.bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'?' && b != b'#')
        };
        if let Some(uri) = &self.uri {
            if !path_ok(uri) {
                v.error(
                    "uri",
                    "must be a path starting with / without spaces, ? or #",
                );
            }
        }
        if let Some([pattern, template]) = &self.regex_uri {
            if let Err(e) = regex::Regex::new(pattern) {
                v.error("regex_uri[0]", format!("not a valid regex: {e}"));
            }
            if !path_ok(template) {
                v.error(
                    "regex_uri[1]",
                    "must be a path starting with / without spaces, ? or #",
                );
            }
        }
        if let Some(host) = &self.host {
            let bare = host.rsplit_once(':').map_or(host.as_str(), |(h, port)| {
                if port.parse::<u16>().is_ok() {
                    h
                } else {
                    host
                }
            });
            if !crate::validate::is_valid_host(bare) {
                v.error(
                    "host",
                    "must be a host name or address, with an optional port",
                );
            }
        }
        v.at("headers", |v| self.headers.validate(v, false));
    }
}

/// CORS (the Fetch standard): a preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) from an allowed origin is answered by the gateway;
/// other responses to allowed origins carry `Access-Control-Allow-Origin` and the
/// exposed headers. Requests from other origins are proxied without CORS headers (the
/// browser then withholds the response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed (`https://app.example.com`), or `["*"]` for any.
    #[serde(default = "Cors::any")]
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows.
    #[serde(default = "Cors::default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows (`["*"]`: whatever it asks for).
    #[serde(default = "Cors::any")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Seconds a browser may cache a preflight (0 to 86400).
    #[serde(default = "Cors::default_max_age")]
    pub max_age: u32,
    /// Credentials (cookies) allowed; needs explicit origins.
    #[serde(default)]
    pub allow_credentials: bool,
}

impl Cors {
    fn any() -> Vec<String> {
        vec!["*".to_owned()]
    }

    fn default_methods() -> Vec<String> {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .map(str::to_owned)
            .to_vec()
    }

    fn default_max_age() -> u32 {
        5
    }
}

impl PluginConfig for Cors {
    fn validate(&self, v: &mut Validator) {
        if self.allow_origins.is_empty() {
            v.error("allow_origins", "must list at least one origin, or \"*\"");
        }
        for (i, origin) in self.allow_origins.iter().enumerate() {
            let ok = origin == "*"
                || origin.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https")
                        && !rest.is_empty()
                        && !rest.contains('/')
                        && rest.bytes().all(|b| b.is_ascii_graphic())
                });
            if !ok {
                v.error(
                    &format!("allow_origins[{i}]"),
                    "must be \"*\" or an origin like https://app.example.com (scheme, host, optional port)",
                );
            }
        }
        if self.allow_credentials && self.allow_origins.iter().any(|o| o == "*") {
            v.error(
                "allow_credentials",
                "cannot be true with the origin \"*\" (browsers refuse it): list the origins",
            );
        }
        for (i, method) in self.allow_methods.iter().enumerate() {
            if !crate::route::METHODS.contains(&method.as_str()) {
                v.error(
                    &format!("allow_methods[{i}]"),
                    "must be an HTTP method in capitals",
                );
            }
        }
        for (list, names) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for (i, name) in names.iter().enumerate() {
                if name != "*" && (name.len() > 128 || !http_token(name)) {
                    v.error(&format!("{list}[{i}]"), "must be a header name or \"*\"");
                }
            }
        }
        if self.max_age > 86_400 {
            v.error("max_age", "must be at most 86400 seconds");
        }
    }
}

/// Fault injection for resilience tests (APISIX's `fault-injection`): abort requests
/// with a status, or delay them, each for a share of the requests (`percentage`) and
/// only for requests whose headers match `match_headers` (all of them, exact values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: u16,
    #[serde(default)]
    pub body: String,
    /// Share of the requests, 0 to 100 (100 when left out).
    #[serde(default = "FaultInjection::all")]
    pub percentage: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Milliseconds (1 to 60000).
    pub duration_ms: u64,
    #[serde(default = "FaultInjection::all")]
    pub percentage: u8,
}

impl FaultInjection {
    fn all() -> u8 {
        100
    }
}

impl PluginConfig for FaultInjection {
    fn validate(&self, v: &mut Validator) {
        if self.abort.is_none() && self.delay.is_none() {
            v.error("", "give abort, delay or both");
        }
        if let Some(abort) = &self.abort {
            if !(200..=599).contains(&abort.http_status) {
                v.error("abort.http_status", "must be between 200 and 599");
            }
            if abort.body.len() > 65_536 {
                v.error("abort.body", "must be at most 65536 bytes");
            }
            if abort.percentage > 100 {
                v.error("abort.percentage", "must be between 0 and 100");
            }
        }
        if let Some(delay) = &self.delay {
            if !(1..=60_000).contains(&delay.duration_ms) {
                v.error("delay.duration_ms", "must be between 1 and 60000");
            }
            if delay.percentage > 100 {
                v.error("delay.percentage", "must be between 0 and 100");
            }
        }
        for name in self.match_headers.keys() {
            if name.len() > 128 || !http_token(name) {
                v.error(&format!("match_headers.{name}"), "must be a header name");
            }
        }
    }
}

/// Response compression, negotiated with the client's `Accept-Encoding` (`gzip`:
/// level 1 to 9; `brotli`: level 0 to 11). Routes with it are served by Pingora's path,
/// which compresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    #[serde(default = "Compression::default_level")]
    pub comp_level: u32,
}

impl Compression {
    fn default_level() -> u32 {
        5
    }

    /// Checks the level against `max`.
    pub fn check(&self, v: &mut Validator, min: u32, max: u32) {
        if !(min..=max).contains(&self.comp_level) {
            v.error("comp_level", format!("must be between {min} and {max}"));
        }
    }
}

/// `gzip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Gzip(pub Compression);

/// `brotli`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Brotli(pub Compression);

impl PluginConfig for Gzip {
    fn validate(&self, v: &mut Validator) {
        self.0.check(v, 1, 9);
    }
}

impl PluginConfig for Brotli {
    fn validate(&self, v: &mut Validator) {
        self.0.check(v, 0, 11);
    }
}

/// APISIX's `response-rewrite`: the status, headers and body the client gets instead of
/// the upstream's. With `body`, the route's responses are served by Pingora's path,
/// which rewrites bodies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "HeaderChanges::is_empty")]
    pub headers: HeaderChanges,
    /// Replaces the body (at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl PluginConfig for ResponseRewrite {
    fn validate(&self, v: &mut Validator) {
        if self.status_code.is_none() && self.headers.is_empty() && self.body.is_none() {
            v.error("", "give status_code, headers or body");
        }
        if let Some(code) = self.status_code {
            if !(200..=599).contains(&code) {
                v.error("status_code", "must be between 200 and 599");
            }
        }
        if self.body.as_ref().is_some_and(|b| b.len() > 1 << 20) {
            v.error("body", "must be at most 1 MiB");
        }
        v.at("headers", |v| self.headers.validate(v, true));
    }
}

/// What a traffic-split rule tests: a header, cookie or query argument equal to
/// `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitMatch {
    #[serde(rename = "type")]
    pub kind: SplitOn,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SplitOn {
    Header,
    Cookie,
    Query,
}

/// An upstream of the instance (`upstream_id`) or, without it, the route's own, with
/// its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedUpstream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitRule {
    /// Every test must hold; none: the rule takes every request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<SplitMatch>,
    pub weighted_upstreams: Vec<WeightedUpstream>,
}

/// APISIX's `traffic-split`: the first rule whose tests hold picks among its weighted
/// upstreams (canaries by header, cookie or query; blue-green; percentages); a request
/// no rule takes goes to the route's upstream. Routes with it are served by Pingora's
/// path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplit {
    pub rules: Vec<SplitRule>,
}

impl TrafficSplit {
    /// Every upstream named, with its field path under the plugin.
    pub fn upstream_refs(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, weighted) in rule.weighted_upstreams.iter().enumerate() {
                if let Some(id) = &weighted.upstream_id {
                    refs.push((
                        format!("rules[{i}].weighted_upstreams[{j}].upstream_id"),
                        id.as_str(),
                    ));
                }
            }
        }
        refs
    }
}

impl PluginConfig for TrafficSplit {
    fn validate(&self, v: &mut Validator) {
        if self.rules.is_empty() {
            v.error("rules", "must hold at least one rule");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            v.at(&format!("rules[{i}]"), |v| {
                for (j, m) in rule.matches.iter().enumerate() {
                    let ok = !m.name.is_empty()
                        && m.name.len() <= 256
                        && (m.kind != SplitOn::Header || http_token(&m.name));
                    if !ok {
                        v.error(
                            &format!("match[{j}].name"),
                            "must be a header, cookie or argument name",
                        );
                    }
                    if m.value.len() > 1024 {
                        v.error(
                            &format!("match[{j}].value"),
                            "must be at most 1024 characters",
                        );
                    }
                }
                if rule.weighted_upstreams.is_empty() {
                    v.error("weighted_upstreams", "must list at least one upstream");
                }
                if rule
                    .weighted_upstreams
                    .iter()
                    .map(|w| u64::from(w.weight))
                    .sum::<u64>()
                    == 0
                {
                    v.error("weighted_upstreams", "the weights must not all be 0");
                }
                for (j, weighted) in rule.weighted_upstreams.iter().enumerate() {
                    if weighted.weight > 10_000 {
                        v.error(
                            &format!("weighted_upstreams[{j}].weight"),
                            "must be at most 10000",
                        );
                    }
                    if let Some(id) = &weighted.upstream_id {
                        crate::validate::check_id(
                            v,
                            &format!("weighted_upstreams[{j}].upstream_id"),
                            id,
                        );
                    }
                }
            });
        }
    }
}

/// APISIX's `proxy-mirror`: a copy of a share of the requests (`sample_ratio`) is sent
/// to `host`, fire-and-forget: the client's request never waits for it or fails with
/// it. Bodies up to 1 MiB are copied (larger ones are not mirrored). Routes with it
/// are served by Pingora's path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyMirror {
    /// `http://host[:port]`, no path.
    pub host: String,
    /// 0 to 1 (1 when left out).
    #[serde(default = "ProxyMirror::all")]
    pub sample_ratio: f64,
}

impl ProxyMirror {
    fn all() -> f64 {
        1.0
    }
}

impl PluginConfig for ProxyMirror {
    fn validate(&self, v: &mut Validator) {
        let ok = self.host.strip_prefix("http://").is_some_and(|rest| {
            !rest.is_empty()
                && !rest.contains('/')
                && !rest.contains('@')
                && rest.bytes().all(|b| b.is_ascii_graphic())
        });
        if !ok {
            v.error(
                "host",
                "must be http://host[:port] without a path or credentials",
            );
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            v.error("sample_ratio", "must be between 0 and 1");
        }
    }
}
