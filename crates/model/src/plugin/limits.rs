//! The configurations of traffic control: `limit-count` (local or Redis), `limit-req`,
//! `limit-conn`, `api-breaker` and `request-size-limit`.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::route::http_token;
use crate::validate::Validator;

fn yes() -> bool {
    true
}

/// How a window is counted.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// Counts reset at each multiple of `time_window` (cheap; up to twice `count` may
    /// pass around a boundary).
    #[default]
    Fixed,
    /// The previous window's count weighted by how much of it still overlaps the last
    /// `time_window` seconds (Cloudflare's approximation): no burst at boundaries.
    Sliding,
}

/// What requests share a counter.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// The client's address (after the trusted-proxy rules).
    #[default]
    RemoteAddr,
    /// The authenticated consumer; the client's address for anonymous requests.
    Consumer,
    /// The value of the request header `header` (absent: the client's address).
    Header,
    /// The matched route: a limit on a service or global rule counts per route.
    Route,
    /// The matched route's service (its route without a service).
    Service,
    /// One counter wherever the plugin is attached (route, service or global rule).
    Constant,
}

/// Where counts are kept.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// In the node's memory: exact per node, each node counts alone.
    #[default]
    Local,
    /// In Redis, shared by every node (a Lua script checks and counts atomically, so
    /// the count is exact per cluster); the node's memory while Redis is down or slow.
    Redis,
}

/// The Redis of the `redis` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisPolicy {
    /// `redis://host[:port][/db]` (no credentials: they would show in the config).
    pub url: String,
    /// How long a request waits for Redis (1 to 1000 ms; 20 when left out) before it
    /// is counted in the node's memory instead; Redis is then left alone for a second.
    #[serde(default = "RedisPolicy::default_timeout")]
    #[schemars(range(min = 1, max = 1000))]
    pub timeout_ms: u64,
}

impl RedisPolicy {
    fn default_timeout() -> u64 {
        20
    }

    fn validate(&self, v: &mut Validator) {
        let ok = self.url.strip_prefix("redis://").is_some_and(|rest| {
            let host_port = rest.split('/').next().unwrap_or("");
            !host_port.is_empty()
                && !rest.contains('@')
                && !rest.contains('?')
                && rest.bytes().all(|b| b.is_ascii_graphic())
                && rest
                    .split_once('/')
                    .is_none_or(|(_, db)| db.is_empty() || db.parse::<u8>().is_ok())
        });
        if !ok {
            v.error(
                "url",
                "must be redis://host[:port][/db] without credentials or options",
            );
        }
        if !(1..=1000).contains(&self.timeout_ms) {
            v.error("timeout_ms", "must be between 1 and 1000");
        }
    }
}

/// APISIX's `limit-count`: at most `count` requests per `time_window` seconds and
/// key; the rest are refused with `rejected_code` (429) and `Retry-After`. Admitted
/// responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
/// `X-RateLimit-Reset` unless `show_limit_headers` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitCount {
    /// Requests admitted per window and key.
    #[schemars(range(min = 1))]
    pub count: u64,
    /// The window, in seconds (1 to 86400).
    #[schemars(range(min = 1, max = 86400))]
    pub time_window: u64,
    #[serde(default)]
    pub window: Window,
    #[serde(default)]
    pub key_type: LimitKey,
    /// The header counted by with `key_type: header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default)]
    pub policy: Policy,
    /// Required with `policy: redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisPolicy>,
    /// The refusal's status (400-599; 429 when left out).
    #[serde(default = "LimitCount::default_code")]
    pub rejected_code: u16,
    /// The refusal's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
    #[serde(default = "yes")]
    pub show_limit_headers: bool,
}

impl LimitCount {
    pub const DEFAULT_MESSAGE: &'static str = "Too many requests";

    fn default_code() -> u16 {
        429
    }
}

impl PluginConfig for LimitCount {
    fn validate(&self, v: &mut Validator) {
        if self.count == 0 {
            v.error("count", "must be > 0");
        }
        if !(1..=86_400).contains(&self.time_window) {
            v.error("time_window", "must be between 1 and 86400 seconds");
        }
        check_key(v, self.key_type, &self.header);
        match (self.policy, &self.redis) {
            (Policy::Redis, None) => v.error("redis", "is required with policy redis"),
            (Policy::Redis, Some(redis)) => v.at("redis", |v| redis.validate(v)),
            (Policy::Local, Some(_)) => v.error("redis", "is read only with policy redis"),
            (Policy::Local, None) => {}
        }
        check_refusal(v, self.rejected_code, &self.rejected_msg);
    }
}

/// A per-route limit on the request body (Kong's `request-size-limiting`): a body
/// announced larger is refused with 413 before it is read; a chunked one is cut when
/// it outgrows the limit. The node's own limit still applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSizeLimit {
    /// Bytes (1 to 1 GiB).
    #[schemars(range(min = 1, max = 1073741824))]
    pub max_body_bytes: u64,
}

impl PluginConfig for RequestSizeLimit {
    fn validate(&self, v: &mut Validator) {
        if !(1..=1 << 30).contains(&self.max_body_bytes) {
            v.error("max_body_bytes", "must be between 1 and 1073741824");
        }
    }
}

fn check_key(v: &mut Validator, key_type: LimitKey, header: &Option<String>) {
    match (key_type, header) {
        (LimitKey::Header, None) => v.error("header", "is required with key_type header"),
        (LimitKey::Header, Some(name)) if name.len() > 128 || !http_token(name) => v.error(
            "header",
            "must be a header name (1 to 128 token characters)",
        ),
        (LimitKey::Header, Some(_)) => {}
        (_, Some(_)) => v.error("header", "is read only with key_type header"),
        (_, None) => {}
    }
}

fn check_refusal(v: &mut Validator, code: u16, message: &Option<String>) {
    if !(400..=599).contains(&code) {
        v.error("rejected_code", "must be between 400 and 599");
    }
    if let Some(message) = message {
        if message.is_empty() || message.len() > 1024 || message.chars().any(char::is_control) {
            v.error(
                "rejected_msg",
                "must be 1 to 1024 characters without control characters",
            );
        }
    }
}

/// nginx's `limit_req` (APISIX's `limit-req`): a leaky bucket per key draining `rate`
/// requests per second. Up to `burst` requests above the rate are let in — delayed
/// until the bucket drained enough (`nodelay` false) or at once (`nodelay` true); the
/// rest are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitReq {
    /// Requests per second (more than 0, at most 1e6).
    pub rate: f64,
    /// Requests above the rate let in (0 to 1e6).
    #[serde(default)]
    pub burst: f64,
    #[serde(default)]
    pub key_type: LimitKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default)]
    pub nodelay: bool,
    #[serde(default = "LimitCount::default_code")]
    pub rejected_code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
}

impl PluginConfig for LimitReq {
    fn validate(&self, v: &mut Validator) {
        if !(self.rate > 0.0 && self.rate <= 1e6) {
            v.error("rate", "must be > 0 and at most 1000000");
        }
        if !(0.0..=1e6).contains(&self.burst) {
            v.error("burst", "must be between 0 and 1000000");
        }
        check_key(v, self.key_type, &self.header);
        check_refusal(v, self.rejected_code, &self.rejected_msg);
    }
}

/// APISIX's `limit-conn`: at most `conn` requests of a key in progress at once; more
/// are refused. A request counts from its access phase until it ends, however it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConn {
    /// Requests in progress per key (1 to 1e6).
    #[schemars(range(min = 1, max = 1000000))]
    pub conn: u32,
    #[serde(default)]
    pub key_type: LimitKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default = "LimitCount::default_code")]
    pub rejected_code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
}

impl PluginConfig for LimitConn {
    fn validate(&self, v: &mut Validator) {
        if !(1..=1_000_000).contains(&self.conn) {
            v.error("conn", "must be between 1 and 1000000");
        }
        check_key(v, self.key_type, &self.header);
        check_refusal(v, self.rejected_code, &self.rejected_msg);
    }
}

/// Statuses and how many in a row make a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerThreshold {
    pub http_statuses: Vec<u16>,
    /// In a row (1 to 1000).
    #[schemars(range(min = 1, max = 1000))]
    pub count: u32,
}

/// APISIX's `api-breaker`, a circuit breaker per route: after `unhealthy.count`
/// responses in a row with an unhealthy status the route is broken — answered with
/// `break_response_code` — for 2 s, then for twice as long at each new break, up to
/// `max_breaker_sec`. After a break one probe request at a time goes through
/// (half-open): `healthy.count` healthy responses in a row close the breaker, an
/// unhealthy one breaks it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiBreaker {
    #[serde(default = "ApiBreaker::default_code")]
    pub break_response_code: u16,
    #[serde(default = "ApiBreaker::default_unhealthy")]
    pub unhealthy: BreakerThreshold,
    #[serde(default = "ApiBreaker::default_healthy")]
    pub healthy: BreakerThreshold,
    /// Longest break, in seconds (3 to 86400).
    #[serde(default = "ApiBreaker::default_max")]
    pub max_breaker_sec: u64,
}

impl ApiBreaker {
    fn default_code() -> u16 {
        503
    }
    fn default_unhealthy() -> BreakerThreshold {
        BreakerThreshold {
            http_statuses: vec![500, 502, 503, 504],
            count: 3,
        }
    }
    fn default_healthy() -> BreakerThreshold {
        BreakerThreshold {
            http_statuses: vec![200],
            count: 3,
        }
    }
    fn default_max() -> u64 {
        300
    }
}

impl PluginConfig for ApiBreaker {
    fn validate(&self, v: &mut Validator) {
        if !(200..=599).contains(&self.break_response_code) {
            v.error("break_response_code", "must be between 200 and 599");
        }
        for (field, threshold) in [("unhealthy", &self.unhealthy), ("healthy", &self.healthy)] {
            v.at(field, |v| {
                if threshold.http_statuses.is_empty() {
                    v.error("http_statuses", "must list at least one status");
                }
                for (i, status) in threshold.http_statuses.iter().enumerate() {
                    if !(100..=599).contains(status) {
                        v.error(
                            &format!("http_statuses[{i}]"),
                            "must be between 100 and 599",
                        );
                    }
                }
                if !(1..=1000).contains(&threshold.count) {
                    v.error("count", "must be between 1 and 1000");
                }
            });
        }
        if self
            .unhealthy
            .http_statuses
            .iter()
            .any(|s| self.healthy.http_statuses.contains(s))
        {
            v.error(
                "healthy.http_statuses",
                "must not share a status with unhealthy",
            );
        }
        if !(3..=86_400).contains(&self.max_breaker_sec) {
            v.error("max_breaker_sec", "must be between 3 and 86400");
        }
    }
}
