//! The configurations of the observability plugins: `prometheus`.

use serde::{Deserialize, Serialize};

use super::PluginConfig;
use crate::validate::Validator;

/// APISIX's `prometheus`: the requests of the routes it covers are counted and timed
/// in the node's metrics (`/metrics` on the status listener): by route, service,
/// consumer and status; request and upstream latency histograms by route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// Label requests with the consumer (false: one series for all consumers, for
    /// instances with very many consumers).
    #[serde(default = "yes")]
    pub consumer_label: bool,
}

fn yes() -> bool {
    true
}

impl PluginConfig for Prometheus {
    fn validate(&self, _v: &mut Validator) {}
}

/// W3C Trace Context (`traceparent`): a request that carries a valid `traceparent`
/// keeps its trace, and the gateway's own span becomes the parent the upstream sees;
/// a request without one (or with an invalid one) starts a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Traceparent {
    /// Traces the gateway starts are marked sampled.
    #[serde(default = "yes")]
    pub sampled: bool,
}

impl PluginConfig for Traceparent {
    fn validate(&self, _v: &mut Validator) {}
}

/// Where access-log lines go for `file-logger`: JSON lines appended to `path`.
/// The file is opened again on SIGUSR1 and when it was renamed or removed (logrotate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileLogger {
    /// An absolute path.
    pub path: String,
}

impl PluginConfig for FileLogger {
    fn validate(&self, v: &mut Validator) {
        if !self.path.starts_with('/') || self.path.len() > 4096 || self.path.contains('\0') {
            v.error("path", "must be an absolute path");
        }
    }
}

/// `http-logger`: access-log lines POSTed as a JSON array to `uri` in batches; the
/// queue is bounded, lines that do not fit are dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpLogger {
    /// `http://` or `https://` URL.
    pub uri: String,
    /// Lines per POST (1 to 10000).
    #[serde(default = "HttpLogger::default_batch")]
    pub batch_max_size: usize,
    /// A batch not full is sent after this many milliseconds (10 to 60000).
    #[serde(default = "HttpLogger::default_wait")]
    pub inactive_timeout_ms: u64,
    /// Lines waiting at most (batch_max_size to 1000000).
    #[serde(default = "HttpLogger::default_queue")]
    pub max_queue: usize,
}

impl HttpLogger {
    fn default_batch() -> usize {
        1000
    }
    fn default_wait() -> u64 {
        1000
    }
    fn default_queue() -> usize {
        100_000
    }
}

impl PluginConfig for HttpLogger {
    fn validate(&self, v: &mut Validator) {
        let scheme_ok = self
            .uri
            .split_once("://")
            .is_some_and(|(s, rest)| matches!(s, "http" | "https") && !rest.is_empty());
        if !scheme_ok || self.uri.len() > 2048 || self.uri.bytes().any(|b| !b.is_ascii_graphic()) {
            v.error("uri", "must be an http:// or https:// URL");
        }
        if !(1..=10_000).contains(&self.batch_max_size) {
            v.error("batch_max_size", "must be between 1 and 10000");
        }
        if !(10..=60_000).contains(&self.inactive_timeout_ms) {
            v.error("inactive_timeout_ms", "must be between 10 and 60000");
        }
        if self.max_queue < self.batch_max_size || self.max_queue > 1_000_000 {
            v.error("max_queue", "must be between batch_max_size and 1000000");
        }
    }
}
