//! The configurations of the request filters and rewrites that need no consumer:
//! `ip-restriction`, `request-id` and `redirect`.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::route::{parse_cidr, CIDR_EXPECTED};
use crate::validate::Validator;

fn enabled_default() -> bool {
    true
}

/// APISIX's `redirect`: the gateway answers with a redirect instead of proxying. Give
/// exactly one of `http_to_https`, `uri` and `regex_uri`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// A request over plain HTTP goes to the same host and target over HTTPS (port
    /// 443); requests over TLS are proxied as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http_to_https: bool,
    /// The target: a URL or a path, with `$uri` (the normalised path), `$request_uri`
    /// (path and query), `$args` (the query), `$host` and `$scheme` replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `[regex, template]`: a path matching the regex is redirected to the template,
    /// `$1`, `${2}`… taken from its captures; any other path is proxied as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_uri: Option<[String; 2]>,
    /// 301, 302, 303, 307 or 308; 302 when left out (301 for `http_to_https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret_code: Option<u16>,
    /// The request's query string is appended to the target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append_query_string: bool,
}

impl Redirect {
    /// The statuses a redirect may answer with.
    pub const CODES: [u16; 5] = [301, 302, 303, 307, 308];

    /// The status answered.
    pub fn status(&self) -> u16 {
        self.ret_code
            .unwrap_or(if self.http_to_https { 301 } else { 302 })
    }
}

impl PluginConfig for Redirect {
    fn validate(&self, v: &mut Validator) {
        let given = usize::from(self.http_to_https)
            + usize::from(self.uri.is_some())
            + usize::from(self.regex_uri.is_some());
        if given != 1 {
            v.error("", "give exactly one of http_to_https, uri and regex_uri");
        }
        // What reaches the Location header must be a valid field value.
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b));
        if let Some(uri) = &self.uri {
            if !printable(uri) {
                v.error(
                    "uri",
                    "must be a non-empty URI without spaces or control characters",
                );
            }
        }
        if let Some([pattern, template]) = &self.regex_uri {
            if let Err(e) = regex::Regex::new(pattern) {
                v.error("regex_uri[0]", format!("not a valid regex: {e}"));
            }
            if !printable(template) {
                v.error(
                    "regex_uri[1]",
                    "must be a non-empty URI without spaces or control characters",
                );
            }
        }
        if let Some(code) = self.ret_code {
            if !Self::CODES.contains(&code) {
                v.error("ret_code", "must be 301, 302, 303, 307 or 308");
            }
        }
        if self.http_to_https && self.append_query_string {
            v.error(
                "append_query_string",
                "http_to_https keeps the query already",
            );
        }
    }
}

/// APISIX's `request-id`: the request keeps the id its client sent in `header_name`,
/// or gets a new random one (a UUID v4); the upstream receives it, and the client too
/// unless `include_in_response` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestId {
    /// The header that carries the id, both ways.
    #[serde(default = "RequestId::default_header")]
    #[schemars(length(min = 1, max = 128))]
    pub header_name: String,
    /// Whether the client gets the id in the response too.
    #[serde(default = "enabled_default")]
    pub include_in_response: bool,
}

impl RequestId {
    fn default_header() -> String {
        "X-Request-Id".to_owned()
    }
}

impl PluginConfig for RequestId {
    fn validate(&self, v: &mut Validator) {
        let name = self.header_name.as_bytes();
        let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        if name.is_empty() || name.len() > 128 || !name.iter().all(token) {
            v.error(
                "header_name",
                "must be a header name (1 to 128 token characters)",
            );
        }
    }
}

/// Allow and deny lists of client addresses (IPs or CIDRs). A client on the deny list
/// is refused; with an allow list, so is every client not on it. The client address
/// honours the node's trusted-proxy setting, as `remote_addrs` does. Unlike
/// `remote_addrs` (a predicate: another route may take the request, else 404), a
/// refusal here ends the request with 403.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRestriction {
    /// Only clients in these IPs or CIDRs are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlist: Vec<String>,
    /// Clients in these IPs or CIDRs are refused (403).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denylist: Vec<String>,
    /// The refusal's message ("Your IP address is not allowed" when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl IpRestriction {
    /// APISIX's message for the same refusal.
    pub const DEFAULT_MESSAGE: &'static str = "Your IP address is not allowed";
}

impl PluginConfig for IpRestriction {
    fn validate(&self, v: &mut Validator) {
        if self.allowlist.is_empty() && self.denylist.is_empty() {
            v.error("", "give allowlist, denylist or both");
        }
        for (list, entries) in [("allowlist", &self.allowlist), ("denylist", &self.denylist)] {
            for (i, addr) in entries.iter().enumerate() {
                if parse_cidr(addr).is_none() {
                    v.error(&format!("{list}[{i}]"), CIDR_EXPECTED);
                }
            }
        }
        if let Some(message) = &self.message {
            if message.is_empty() || message.len() > 1024 || message.chars().any(char::is_control) {
                v.error(
                    "message",
                    "must be 1 to 1024 characters without control characters",
                );
            }
        }
    }
}
