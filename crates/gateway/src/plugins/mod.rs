//! The plugins, each written once against the core's phase interface
//! (`core::phase`) and run by both engines. [`compile`] turns one effective plugin
//! (`model::plugin::effective`) into its runtime form; the runtime keeps that form
//! while the plugin's configuration and place stay the same, so its state (counters)
//! survives other changes.

mod api_breaker;
mod basic_auth;
mod compression;
mod consumer_restriction;
mod cors;
mod fault_injection;
mod header_changes;
mod hmac_auth;
mod ip_restriction;
mod jwt_auth;
mod key_auth;
mod keys;
mod limit_conn;
mod limit_count;
mod limit_req;
mod loggers;
mod prometheus;
mod proxy_mirror;
mod proxy_rewrite;
mod redirect;
pub mod redis;
mod request_id;
mod request_size_limit;
mod response_rewrite;
mod traceparent;
mod traffic_split;

use std::sync::Arc;

use model::plugin::{read_config, PluginConfig};
use model::validate::Validator;

use crate::core::phase::Plugin;

pub use api_breaker::ApiBreaker;
pub use basic_auth::BasicAuth;
pub use compression::Compression;
pub use consumer_restriction::ConsumerRestriction;
pub use cors::Cors;
pub use fault_injection::FaultInjection;
pub use hmac_auth::HmacAuth;
pub use ip_restriction::IpRestriction;
pub use jwt_auth::JwtAuth;
pub use key_auth::KeyAuth;
pub use limit_conn::LimitConn;
pub use limit_count::LimitCount;
pub use limit_req::LimitReq;
pub use loggers::{FileLogger, HttpLogger};
pub use prometheus::Prometheus;
pub use proxy_mirror::ProxyMirror;
pub(crate) use proxy_mirror::{send as send_mirror, MAX_MIRRORED_BODY};
pub use proxy_rewrite::ProxyRewrite;
pub use redirect::Redirect;
pub use request_id::RequestId;
pub use request_size_limit::RequestSizeLimit;
pub use response_rewrite::ResponseRewrite;
pub use traceparent::Traceparent;
pub use traffic_split::TrafficSplit;

/// The 401 of the authentication plugins: the JSON error with `message` and the
/// scheme's `WWW-Authenticate` challenge.
pub(crate) fn unauthorized(
    challenge: http::HeaderValue,
    message: &'static str,
) -> crate::core::refusal::Refusal {
    crate::core::refusal::Refusal::denied_with(
        401,
        "unauthorized",
        message,
        vec![(http::header::WWW_AUTHENTICATE, challenge)],
    )
}

/// Where a plugin runs: state shared beyond the node (Redis keys) is named by it.
#[derive(Debug, Clone, Copy)]
pub struct PluginPlace<'a> {
    pub instance: &'a str,
    /// The layer that configured it (`route:r1`, `service:s1` …).
    pub place: &'a str,
    /// The node's counters (fallbacks …).
    pub counters: &'a Arc<crate::runtime::NodeCounters>,
    /// Whether compiling may open sinks and register links (not in a dry build).
    pub effects: crate::runtime::Effects,
}

#[cfg(test)]
pub(crate) static TEST_COUNTERS: std::sync::LazyLock<Arc<crate::runtime::NodeCounters>> =
    std::sync::LazyLock::new(Default::default);

impl PluginPlace<'static> {
    /// For unit tests.
    #[cfg(test)]
    pub(crate) fn test() -> Self {
        PluginPlace {
            instance: "test",
            place: "route:test",
            counters: &TEST_COUNTERS,
            effects: crate::runtime::Effects::Live,
        }
    }
}

/// The runtime form of plugin `name` with `config` at `place`; `Err` says why it
/// cannot run (the admin validates the same way, so it should not happen).
pub fn compile(
    name: &str,
    config: &serde_json::Value,
    place: &PluginPlace<'_>,
) -> Result<Arc<dyn Plugin>, String> {
    fn typed<T: PluginConfig>(config: &serde_json::Value) -> Result<T, String> {
        let mut v = Validator::new();
        let parsed = read_config::<T>(config, &mut v);
        v.finish().map_err(|e| e.to_string())?;
        parsed.ok_or_else(|| "unreadable".to_owned())
    }
    Ok(match name {
        "ip-restriction" => Arc::new(IpRestriction::compile(&typed(config)?)?),
        "request-id" => Arc::new(RequestId::compile(&typed(config)?)?),
        "redirect" => Arc::new(Redirect::compile(&typed(config)?)?),
        "key-auth" => Arc::new(KeyAuth::compile(&typed(config)?)?),
        "basic-auth" => Arc::new(BasicAuth::compile(&typed(config)?)?),
        "jwt-auth" => Arc::new(JwtAuth::compile(&typed(config)?)?),
        "hmac-auth" => Arc::new(HmacAuth::compile(&typed(config)?)?),
        "consumer-restriction" => Arc::new(ConsumerRestriction::compile(&typed(config)?)?),
        "limit-count" => Arc::new(LimitCount::compile(&typed(config)?, place)?),
        "cors" => Arc::new(Cors::compile(&typed(config)?)?),
        "traceparent" => Arc::new(Traceparent::compile(&typed(config)?)?),
        "gzip" => Arc::new(Compression::gzip(&typed(config)?)?),
        "brotli" => Arc::new(Compression::brotli(&typed(config)?)?),
        "fault-injection" => Arc::new(FaultInjection::compile(&typed(config)?)?),
        "limit-req" => Arc::new(LimitReq::compile(&typed(config)?)?),
        "limit-conn" => Arc::new(LimitConn::compile(&typed(config)?)?),
        "api-breaker" => Arc::new(ApiBreaker::compile(&typed(config)?)?),
        "request-size-limit" => Arc::new(RequestSizeLimit::compile(&typed(config)?)?),
        "proxy-rewrite" => Arc::new(ProxyRewrite::compile(&typed(config)?)?),
        "proxy-mirror" => Arc::new(ProxyMirror::compile(&typed(config)?)?),
        "traffic-split" => Arc::new(TrafficSplit::compile(&typed(config)?)?),
        "response-rewrite" => Arc::new(ResponseRewrite::compile(&typed(config)?)?),
        "file-logger" => Arc::new(FileLogger::compile(&typed(config)?, place)?),
        "http-logger" => Arc::new(HttpLogger::compile(&typed(config)?, place)?),
        "prometheus" => Arc::new(Prometheus::compile(&typed(config)?, place.counters)?),
        other => return Err(format!("plugin {other:?} is not built into this gateway")),
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn every_catalog_plugin_compiles() {
        let samples = [
            ("ip-restriction", r#"{"denylist":["10.0.0.0/8"]}"#),
            ("request-id", "{}"),
            ("redirect", r#"{"http_to_https":true}"#),
            ("key-auth", "{}"),
            ("basic-auth", "{}"),
            ("jwt-auth", "{}"),
            ("hmac-auth", "{}"),
            ("consumer-restriction", r#"{"allowlist":["a"]}"#),
            ("limit-count", r#"{"count":1,"time_window":1}"#),
            ("prometheus", "{}"),
            ("file-logger", r#"{"path":"/dev/null"}"#),
            ("http-logger", r#"{"uri":"http://127.0.0.1:9/logs"}"#),
            ("cors", "{}"),
            ("traceparent", "{}"),
            ("gzip", "{}"),
            ("brotli", "{}"),
            ("fault-injection", r#"{"abort":{"http_status":503}}"#),
            ("limit-req", r#"{"rate":1}"#),
            ("limit-conn", r#"{"conn":1}"#),
            ("api-breaker", "{}"),
            ("request-size-limit", r#"{"max_body_bytes":10}"#),
            ("proxy-rewrite", r#"{"uri":"/x"}"#),
            ("response-rewrite", r#"{"status_code":201}"#),
            ("proxy-mirror", r#"{"host":"http://127.0.0.1:9"}"#),
            (
                "traffic-split",
                r#"{"rules":[{"weighted_upstreams":[{"weight":1}]}]}"#,
            ),
        ];
        for info in model::plugin::CATALOG {
            let (_, config) = samples
                .iter()
                .find(|(n, _)| *n == info.name)
                .unwrap_or_else(|| panic!("no sample for {}", info.name));
            let plugin = super::compile(
                info.name,
                &serde_json::from_str(config).unwrap(),
                &super::PluginPlace::test(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", info.name));
            assert_eq!(plugin.name(), info.name);
        }
        assert!(super::compile(
            "key-auth",
            &serde_json::json!({"header": 1}),
            &super::PluginPlace::test()
        )
        .is_err());
    }
}
