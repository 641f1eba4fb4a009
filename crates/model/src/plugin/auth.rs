//! The configurations of the authentication plugins (`key-auth`, `basic-auth`) and of
//! `consumer-restriction`. Credentials themselves belong to consumers
//! (`crate::consumer`); these say where a route looks for them.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::route::http_token;
use crate::validate::{check_id, Validator};

fn yes() -> bool {
    true
}

/// APISIX's and Kong's `key-auth`: the consumer is the one whose key the request
/// carries in `header` or, failing that, in the query argument `query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyAuth {
    /// The request header holding the key.
    #[serde(default = "KeyAuth::default_name")]
    #[schemars(length(min = 1, max = 128))]
    pub header: String,
    /// The query argument holding the key when the header is absent.
    #[serde(default = "KeyAuth::default_name")]
    #[schemars(length(min = 1, max = 128))]
    pub query: String,
    /// The key is removed before the request goes upstream (header and query argument).
    #[serde(default = "yes")]
    pub hide_credentials: bool,
}

impl KeyAuth {
    fn default_name() -> String {
        "apikey".to_owned()
    }
}

impl Default for KeyAuth {
    fn default() -> Self {
        Self {
            header: Self::default_name(),
            query: Self::default_name(),
            hide_credentials: true,
        }
    }
}

impl PluginConfig for KeyAuth {
    fn validate(&self, v: &mut Validator) {
        if self.header.len() > 128 || !http_token(&self.header) {
            v.error(
                "header",
                "must be a header name (1 to 128 token characters)",
            );
        }
        let query_ok = !self.query.is_empty()
            && self.query.len() <= 128
            && self
                .query
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"&=#%+".contains(&b));
        if !query_ok {
            v.error(
                "query",
                "must be 1 to 128 visible characters other than & = # % +",
            );
        }
    }
}

/// HTTP Basic authentication (RFC 7617) against consumers' `basic-auth` credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The realm named in `WWW-Authenticate` when credentials are missing or wrong.
    #[serde(default = "BasicAuth::default_realm")]
    #[schemars(length(min = 1, max = 128))]
    pub realm: String,
    /// `Authorization` is removed before the request goes upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
}

impl BasicAuth {
    fn default_realm() -> String {
        "portico".to_owned()
    }
}

impl PluginConfig for BasicAuth {
    fn validate(&self, v: &mut Validator) {
        let ok = !self.realm.is_empty()
            && self.realm.len() <= 128
            && self
                .realm
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if !ok {
            v.error(
                "realm",
                "must be 1 to 128 printable ASCII characters without quotes or backslashes",
            );
        }
    }
}

/// What `consumer-restriction` compares with its lists.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RestrictBy {
    /// The consumer's id.
    #[default]
    ConsumerName,
    /// The consumer's group.
    ConsumerGroupId,
}

/// APISIX's `consumer-restriction`: after authentication, only consumers (or groups)
/// on `allowlist` pass, and none on `denylist`. A request with no consumer (no auth
/// plugin ran, or the route lets anonymous requests through) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRestriction {
    #[serde(default, rename = "type")]
    pub by: RestrictBy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlist: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denylist: Vec<String>,
    /// The refusal's status: 401 or 403 (403 when left out).
    #[serde(default = "ConsumerRestriction::default_code")]
    pub rejected_code: u16,
    /// The refusal's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
}

impl ConsumerRestriction {
    pub const DEFAULT_MESSAGE: &'static str = "The consumer is not allowed";

    fn default_code() -> u16 {
        403
    }
}

impl PluginConfig for ConsumerRestriction {
    fn validate(&self, v: &mut Validator) {
        if self.allowlist.is_empty() && self.denylist.is_empty() {
            v.error("", "give allowlist, denylist or both");
        }
        for (list, entries) in [("allowlist", &self.allowlist), ("denylist", &self.denylist)] {
            for (i, id) in entries.iter().enumerate() {
                check_id(v, &format!("{list}[{i}]"), id);
            }
        }
        if !matches!(self.rejected_code, 401 | 403) {
            v.error("rejected_code", "must be 401 or 403");
        }
        if let Some(message) = &self.rejected_msg {
            if message.is_empty() || message.len() > 1024 || message.chars().any(char::is_control) {
                v.error(
                    "rejected_msg",
                    "must be 1 to 1024 characters without control characters",
                );
            }
        }
    }
}

/// `jwt-auth`: the consumer is the one whose key signed the request's JSON Web Token
/// (RFC 7519), found by the token's `kid` header (or its `key` claim, as APISIX
/// writes tokens). The algorithm is the credential's: a token naming another one
/// (`none`, HS256 against an RSA key …) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    /// The header holding `Bearer <token>` (or the bare token).
    #[serde(default = "JwtAuth::default_header")]
    pub header: String,
    /// The query argument holding the token when the header is absent.
    #[serde(default = "JwtAuth::default_name")]
    pub query: String,
    /// The cookie holding the token when the header and the argument are absent.
    #[serde(default = "JwtAuth::default_name")]
    pub cookie: String,
    /// The token is removed before the request goes upstream (the header, or the
    /// query argument).
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// Seconds of clock skew allowed on `exp` and `nbf` (0 to 300).
    #[serde(default)]
    #[schemars(range(max = 300))]
    pub leeway: u64,
    /// Tokens without `exp` are refused (a token that never expires is a key that
    /// cannot be revoked).
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// When given, the token's `aud` must name one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// When given, the token's `iss` must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuer: Vec<String>,
}

impl JwtAuth {
    fn default_header() -> String {
        "authorization".to_owned()
    }

    fn default_name() -> String {
        "jwt".to_owned()
    }
}

impl PluginConfig for JwtAuth {
    fn validate(&self, v: &mut Validator) {
        if self.header.len() > 128 || !http_token(&self.header) {
            v.error(
                "header",
                "must be a header name (1 to 128 token characters)",
            );
        }
        for (field, name) in [("query", &self.query), ("cookie", &self.cookie)] {
            let ok = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"&=#%+;,".contains(&b));
            if !ok {
                v.error(
                    field,
                    "must be 1 to 128 visible characters other than & = # % + ; ,",
                );
            }
        }
        if self.leeway > 300 {
            v.error("leeway", "must be at most 300 seconds");
        }
        for (field, list) in [("audience", &self.audience), ("issuer", &self.issuer)] {
            for (i, value) in list.iter().enumerate() {
                if value.is_empty() || value.len() > 1024 {
                    v.error(&format!("{field}[{i}]"), "must be 1 to 1024 characters");
                }
            }
        }
    }
}

/// `hmac-auth`: requests signed with a consumer's HMAC secret (draft-cavage HTTP
/// Signatures): `Authorization: Signature keyId="…",algorithm="hmac-sha256",
/// headers="(request-target) date …",signature="<base64>"`. The signature must cover
/// `(request-target)` and `date`; a `Date` further than `clock_skew` seconds from the
/// gateway's clock is refused, and so is a signature already used (replay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    /// Seconds (1 to 3600).
    #[serde(default = "HmacAuth::default_skew")]
    pub clock_skew: u64,
    /// More headers every signature must cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_headers: Vec<String>,
    /// `Authorization` is removed before the request goes upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
}

impl HmacAuth {
    fn default_skew() -> u64 {
        300
    }
}

impl PluginConfig for HmacAuth {
    fn validate(&self, v: &mut Validator) {
        if !(1..=3600).contains(&self.clock_skew) {
            v.error("clock_skew", "must be between 1 and 3600 seconds");
        }
        for (i, name) in self.signed_headers.iter().enumerate() {
            if name.len() > 128 || !http_token(name) {
                v.error(&format!("signed_headers[{i}]"), "must be a header name");
            }
        }
    }
}
