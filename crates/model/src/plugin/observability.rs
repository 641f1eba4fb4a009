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
