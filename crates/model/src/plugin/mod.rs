//! Plugins as configured: the catalog of every plugin (default priority, phases, the
//! JSON Schema of its configuration generated from the Rust type that reads it with
//! `schemars`, so the schema cannot drift from what is accepted), the [`Plugins`]
//! object that routes, services, global rules, consumers and consumer groups carry,
//! the instance's [`PluginTemplate`]s, and the one merge rule ([`effective`]) the
//! gateway runs and the admin answers with.
//!
//! Priorities follow APISIX's convention and numbers: higher runs first (`request-id`
//! 12015 before `key-auth` 2500 before `limit-count` 1002), so a request refused by a
//! filter still has its id and a limit keyed by consumer knows the consumer.

mod auth;
mod effective;
mod filters;
mod limits;
mod observability;
mod transform;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use auth::{BasicAuth, ConsumerRestriction, HmacAuth, JwtAuth, KeyAuth, RestrictBy};
pub use effective::{
    consumer_layers, effective, route_layers, Effective, EffectivePlugin, Layer, Skipped, Source,
};
pub use filters::{IpRestriction, Redirect, RequestId};
pub use limits::{
    ApiBreaker, BreakerThreshold, LimitConn, LimitCount, LimitKey, LimitReq, Policy, RedisPolicy,
    RequestSizeLimit, Window,
};
pub use observability::{FileLogger, HttpLogger, Prometheus, Traceparent};
pub use transform::{
    Brotli, Compression, Cors, FaultAbort, FaultDelay, FaultInjection, Gzip, HeaderChanges,
    ProxyMirror, ProxyRewrite, ResponseRewrite, SplitMatch, SplitOn, SplitRule, TrafficSplit,
    WeightedUpstream,
};

use crate::validate::{ValidationErrors, Validator};

/// A plugin's configuration type: closed (unknown fields refused), read with serde,
/// described by its JSON Schema, checked field by field.
pub trait PluginConfig: DeserializeOwned + schemars::JsonSchema {
    /// Records every problem under the plugin's path.
    fn validate(&self, v: &mut Validator);
}

/// Parses a plugin's configuration into its type and validates it; every problem is
/// recorded with its field path under `v`'s current path.
pub fn read_config<T: PluginConfig>(value: &serde_json::Value, v: &mut Validator) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(config) => {
            config.validate(v);
            Some(config)
        }
        Err(e) => {
            let path = e.path().to_string();
            let error = crate::json::classify(&path, e.inner());
            match error.details().first() {
                Some(detail) => v.error(&detail.field, detail.message.clone()),
                None => v.error("", error.to_string()),
            }
            None
        }
    }
}

/// One plugin as the catalog describes it.
#[derive(Debug, Clone, Copy)]
pub struct PluginInfo {
    /// The name a `plugins` object uses.
    pub name: &'static str,
    /// The default order: higher runs first.
    pub priority: i32,
    /// The phases it runs in (`docs/dataplane.md` §8).
    pub phases: &'static [&'static str],
    /// Identifies the consumer (the "any of" rule of `docs/plugins.md`).
    pub authenticates: bool,
    /// One line for lists.
    pub summary: &'static str,
    schema: fn() -> schemars::Schema,
    check: fn(&serde_json::Value, &mut Validator),
}

impl PluginInfo {
    /// The configuration's JSON Schema (draft 2020-12).
    pub fn schema(&self) -> serde_json::Value {
        (self.schema)().to_value()
    }

    /// Checks a configuration of this plugin, recording problems under `v`'s path.
    pub fn check(&self, config: &serde_json::Value, v: &mut Validator) {
        (self.check)(config, v)
    }

    /// The catalog entry as the admin API answers it.
    pub fn describe(&self) -> PluginDescription {
        PluginDescription {
            name: self.name,
            priority: self.priority,
            phases: self.phases,
            authenticates: self.authenticates,
            summary: self.summary,
            schema: self.schema(),
        }
    }
}

/// A catalog entry with its schema, as JSON.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginDescription {
    pub name: &'static str,
    pub priority: i32,
    pub phases: &'static [&'static str],
    pub authenticates: bool,
    pub summary: &'static str,
    pub schema: serde_json::Value,
}

fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

fn check_of<T: PluginConfig>(config: &serde_json::Value, v: &mut Validator) {
    read_config::<T>(config, v);
}

const fn entry<T: PluginConfig>(
    name: &'static str,
    priority: i32,
    phases: &'static [&'static str],
    authenticates: bool,
    summary: &'static str,
) -> PluginInfo {
    PluginInfo {
        name,
        priority,
        phases,
        authenticates,
        summary,
        schema: schema_of::<T>,
        check: check_of::<T>,
    }
}

pub const REQUEST_ID: PluginInfo = entry::<RequestId>(
    "request-id",
    12015,
    &["access", "upstream_request", "response_head"],
    false,
    "gives every request an id, sent upstream and back to the client",
);

pub const IP_RESTRICTION: PluginInfo = entry::<IpRestriction>(
    "ip-restriction",
    3000,
    &["access"],
    false,
    "refuses clients by address (allow and deny lists of IPs or CIDRs)",
);

pub const BASIC_AUTH: PluginInfo = entry::<BasicAuth>(
    "basic-auth",
    2520,
    &["access", "upstream_request"],
    true,
    "identifies the consumer by HTTP Basic credentials (RFC 7617)",
);

pub const JWT_AUTH: PluginInfo = entry::<JwtAuth>(
    "jwt-auth",
    2510,
    &["access", "upstream_request"],
    true,
    "identifies the consumer by a signed JSON Web Token (HS256/384/512, RS256, ES256, EdDSA)",
);

pub const HMAC_AUTH: PluginInfo = entry::<HmacAuth>(
    "hmac-auth",
    2530,
    &["access", "upstream_request"],
    true,
    "identifies the consumer by an HMAC request signature, refusing skewed dates and replays",
);

pub const KEY_AUTH: PluginInfo = entry::<KeyAuth>(
    "key-auth",
    2500,
    &["access", "upstream_request"],
    true,
    "identifies the consumer by an API key in a header or the query",
);

pub const CONSUMER_RESTRICTION: PluginInfo = entry::<ConsumerRestriction>(
    "consumer-restriction",
    2400,
    &["access"],
    false,
    "lets only some consumers or consumer groups in (allow and deny lists)",
);

pub const LIMIT_COUNT: PluginInfo = entry::<LimitCount>(
    "limit-count",
    1002,
    &["access", "response_head"],
    false,
    "admits at most `count` requests per time window and key (fixed or sliding window)",
);

pub const CORS: PluginInfo = entry::<Cors>(
    "cors",
    4000,
    &["access", "response_head"],
    false,
    "answers CORS preflights and adds the CORS headers for allowed origins",
);

pub const REQUEST_SIZE_LIMIT: PluginInfo = entry::<RequestSizeLimit>(
    "request-size-limit",
    1010,
    &["access"],
    false,
    "refuses request bodies over a per-route size (413)",
);

pub const PROXY_REWRITE: PluginInfo = entry::<ProxyRewrite>(
    "proxy-rewrite",
    1008,
    &["upstream_request"],
    false,
    "rewrites the path (with regex captures), Host and headers sent upstream",
);

pub const FAULT_INJECTION: PluginInfo = entry::<FaultInjection>(
    "fault-injection",
    11000,
    &["access"],
    false,
    "aborts or delays a share of the requests (resilience tests)",
);

pub const LIMIT_CONN: PluginInfo = entry::<LimitConn>(
    "limit-conn",
    1003,
    &["access", "log"],
    false,
    "admits at most `conn` requests of a key in progress at once",
);

pub const LIMIT_REQ: PluginInfo = entry::<LimitReq>(
    "limit-req",
    1001,
    &["access"],
    false,
    "a leaky bucket per key: `rate` requests per second, `burst` above it delayed or let in",
);

pub const API_BREAKER: PluginInfo = entry::<ApiBreaker>(
    "api-breaker",
    1005,
    &["access", "log"],
    false,
    "a circuit breaker: breaks the route after unhealthy responses in a row, probes it half-open",
);

pub const TRACEPARENT: PluginInfo = entry::<Traceparent>(
    "traceparent",
    12010,
    &["upstream_request"],
    false,
    "propagates W3C traceparent, starting a trace when the request has none",
);

pub const GZIP: PluginInfo = entry::<Gzip>(
    "gzip",
    995,
    &["response_body"],
    false,
    "compresses responses with gzip when the client accepts it",
);

pub const BROTLI: PluginInfo = entry::<Brotli>(
    "brotli",
    996,
    &["response_body"],
    false,
    "compresses responses with brotli when the client accepts it",
);

pub const FILE_LOGGER: PluginInfo = entry::<FileLogger>(
    "file-logger",
    399,
    &["access", "log"],
    false,
    "writes an access-log JSON line per request to a file (reopened on SIGUSR1 or rotation)",
);

pub const HTTP_LOGGER: PluginInfo = entry::<HttpLogger>(
    "http-logger",
    410,
    &["access", "log"],
    false,
    "sends access-log JSON lines to an HTTP endpoint in batches, dropping and counting on overflow",
);

pub const RESPONSE_REWRITE: PluginInfo = entry::<ResponseRewrite>(
    "response-rewrite",
    899,
    &["response_head", "response_body"],
    false,
    "rewrites the status, headers and body of the response",
);

pub const TRAFFIC_SPLIT: PluginInfo = entry::<TrafficSplit>(
    "traffic-split",
    966,
    &["access"],
    false,
    "sends requests to weighted upstreams, by rules on headers, cookies and query (canaries)",
);

pub const PROXY_MIRROR: PluginInfo = entry::<ProxyMirror>(
    "proxy-mirror",
    998,
    &["request_body", "log"],
    false,
    "sends a copy of a share of the requests to another host, fire-and-forget",
);

pub const PROMETHEUS: PluginInfo = entry::<Prometheus>(
    "prometheus",
    500,
    &["log"],
    false,
    "counts requests and times them (route, service, consumer, status) for the node's /metrics",
);

pub const REDIRECT: PluginInfo = entry::<Redirect>(
    "redirect",
    900,
    &["access"],
    false,
    "answers with a redirect (HTTP to HTTPS, a new URI, or a regex rewrite of the path)",
);

/// Every plugin, by default priority (highest first).
pub const CATALOG: &[PluginInfo] = &[
    REQUEST_ID,
    TRACEPARENT,
    FAULT_INJECTION,
    CORS,
    IP_RESTRICTION,
    HMAC_AUTH,
    BASIC_AUTH,
    JWT_AUTH,
    KEY_AUTH,
    CONSUMER_RESTRICTION,
    REQUEST_SIZE_LIMIT,
    PROXY_REWRITE,
    API_BREAKER,
    LIMIT_CONN,
    LIMIT_COUNT,
    LIMIT_REQ,
    PROXY_MIRROR,
    BROTLI,
    GZIP,
    TRAFFIC_SPLIT,
    REDIRECT,
    RESPONSE_REWRITE,
    PROMETHEUS,
    HTTP_LOGGER,
    FILE_LOGGER,
];

/// The catalog entry of `name`.
pub fn find(name: &str) -> Option<&'static PluginInfo> {
    CATALOG.iter().find(|p| p.name == name)
}

fn known_names() -> String {
    CATALOG
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The upstreams plugin `name` with `config` names (traffic-split's), each with its
/// field path (`plugins.traffic-split.rules[0]…`): references the admin checks and
/// the gateway needs present to serve the route.
pub fn upstream_refs(name: &str, config: &serde_json::Value) -> Vec<(String, String)> {
    if name != TRAFFIC_SPLIT.name {
        return Vec::new();
    }
    let Ok(split) = serde_json::from_value::<TrafficSplit>(config.clone()) else {
        return Vec::new();
    };
    split
        .upstream_refs()
        .into_iter()
        .map(|(field, id)| (format!("plugins.{name}.{field}"), id.to_owned()))
        .collect()
}

/// The plugins of a route, service, global rule, consumer or consumer group: plugin
/// name → its configuration. Every name must be in the catalog and every
/// configuration valid for its type ([`Plugins::validate`]): an unknown name is
/// refused, not ignored, since a security filter must never be silently off. Kept as
/// JSON so layers and template defaults merge field by field (`effective`); the
/// gateway reads each into its type when it builds the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(example = json!({"limit-count": {"count": 100, "time_window": 60}}))]
pub struct Plugins(pub BTreeMap<String, serde_json::Value>);

impl Plugins {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name)
    }

    /// The upstreams the plugins name (traffic-split), each with its field path.
    pub fn upstream_refs(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .flat_map(|(name, config)| upstream_refs(name, config))
            .collect()
    }

    /// Records every problem, each under `<name>.<field>`.
    pub fn validate(&self, v: &mut Validator) {
        for (name, config) in &self.0 {
            match find(name) {
                None => v.error(
                    name,
                    format!("unknown plugin; known plugins: {}", known_names()),
                ),
                Some(info) => v.at(name, |v| info.check(config, v)),
            }
        }
    }
}

/// The instance's template for one plugin (ShenYu's plugin template): whether it runs
/// at all on the instance, its priority there, and defaults for the fields a
/// configuration leaves out. Its id is the plugin's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginTemplate {
    /// The plugin's name (`limit-count`).
    pub id: String,
    /// `false` turns the plugin off for the whole instance, wherever it is configured.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Replaces the catalog's priority on this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Field values used where a configuration of the plugin does not give them.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub defaults: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

impl PluginTemplate {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        let Some(info) = find(&self.id) else {
            v.error(
                "id",
                format!("must name a plugin; known plugins: {}", known_names()),
            );
            return v.finish();
        };
        if let Some(priority) = self.priority {
            if !(-100_000..=100_000).contains(&priority) {
                v.error("priority", "must be between -100000 and 100000");
            }
        }
        // Defaults are a partial configuration: every field they give must be one the
        // plugin reads, with a value of its type. Parsing stops at the first wrong
        // value and reports fields still missing only at the end, so "missing field"
        // means every given one was read.
        let mut inner = Validator::new();
        info.check(
            &serde_json::Value::Object(self.defaults.clone()),
            &mut inner,
        );
        if let Err(errors) = inner.finish() {
            for e in errors.0 {
                if !e.message.starts_with("missing field") {
                    let field = if e.field.is_empty() {
                        "defaults".to_owned()
                    } else {
                        format!("defaults.{}", e.field)
                    };
                    v.error(&field, e.message);
                }
            }
        }
        v.finish()
    }
}

/// A namespace's override of one plugin's template (requirement N5, ShenYu's plugin
/// template per namespace): what it states wins over the instance's template for
/// every instance of the namespace — `enabled`, `priority`, and each field of
/// `defaults`; what it leaves out stays the instance's. Its id is the plugin's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespacePluginTemplate {
    /// The plugin's name (`limit-count`).
    pub id: String,
    /// `false` turns the plugin off in every instance of the namespace; `true` turns
    /// it on where an instance's template turned it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Replaces the priority on every instance of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Field values used where a configuration of the plugin does not give them; over
    /// the instance template's, field by field.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub defaults: serde_json::Map<String, serde_json::Value>,
}

impl NamespacePluginTemplate {
    /// The rules of an instance template: a known plugin, a priority in range, and
    /// defaults the plugin reads with values of its types.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        self.over(None).validate()
    }

    /// The template an instance uses: its own (`instance`; the catalog's when it has
    /// none) with what this override states on top.
    pub fn over(&self, instance: Option<&PluginTemplate>) -> PluginTemplate {
        let mut merged = instance.cloned().unwrap_or_else(|| PluginTemplate {
            id: self.id.clone(),
            enabled: true,
            priority: None,
            defaults: serde_json::Map::new(),
        });
        if let Some(enabled) = self.enabled {
            merged.enabled = enabled;
        }
        if self.priority.is_some() {
            merged.priority = self.priority;
        }
        for (field, value) in &self.defaults {
            merged.defaults.insert(field.clone(), value.clone());
        }
        merged
    }
}

/// The templates an instance's plugins run under: the instance's own, each with its
/// namespace's override on top (requirement N5), by plugin name. The one merge rule
/// of the two layers: the gateway builds its chains with it, the admin answers the
/// effective plugins and route tests with it.
pub fn layered_templates<'a>(
    instance: impl IntoIterator<Item = &'a PluginTemplate>,
    namespace: &[NamespacePluginTemplate],
) -> BTreeMap<String, PluginTemplate> {
    let mut templates: BTreeMap<String, PluginTemplate> = instance
        .into_iter()
        .map(|t| (t.id.clone(), t.clone()))
        .collect();
    for over in namespace {
        let merged = over.over(templates.get(&over.id));
        templates.insert(over.id.clone(), merged);
    }
    templates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_template_wins_where_it_speaks() {
        let instance = PluginTemplate {
            id: "limit-count".into(),
            enabled: false,
            priority: Some(5),
            defaults: serde_json::from_str(r#"{"count": 10, "time_window": 60}"#).unwrap(),
        };
        let over: NamespacePluginTemplate =
            serde_json::from_str(r#"{"id": "limit-count", "defaults": {"count": 99}}"#).unwrap();
        let merged = layered_templates([&instance], std::slice::from_ref(&over));
        let t = &merged["limit-count"];
        // Unsaid: the instance's; said: the namespace's, field by field.
        assert!(!t.enabled);
        assert_eq!(t.priority, Some(5));
        assert_eq!(t.defaults["count"], 99);
        assert_eq!(t.defaults["time_window"], 60);
        let on: NamespacePluginTemplate =
            serde_json::from_str(r#"{"id": "limit-count", "enabled": true, "priority": -3}"#)
                .unwrap();
        let merged = layered_templates([&instance], &[on]);
        assert!(merged["limit-count"].enabled);
        assert_eq!(merged["limit-count"].priority, Some(-3));
        // A plugin the instance has no template for gets the catalog's, overridden.
        let merged = layered_templates([], &[over]);
        assert!(merged["limit-count"].enabled);
        assert_eq!(merged["limit-count"].defaults["count"], 99);
        // Checked as an instance template is.
        let bad: NamespacePluginTemplate =
            serde_json::from_str(r#"{"id": "limit-count", "defaults": {"count": "many"}}"#)
                .unwrap();
        let errors = bad.validate().unwrap_err();
        assert_eq!(errors.0[0].field, "defaults.count", "{errors:?}");
        let unknown: NamespacePluginTemplate =
            serde_json::from_str(r#"{"id": "no-such-plugin"}"#).unwrap();
        assert_eq!(unknown.validate().unwrap_err().0[0].field, "id");
    }

    fn fields(plugins: &str) -> Vec<String> {
        let plugins: Plugins = serde_json::from_str(plugins).unwrap();
        let mut v = Validator::new();
        v.at("plugins", |v| plugins.validate(v));
        match v.finish() {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn every_plugin_is_checked_field_by_field() {
        assert!(fields(r#"{"ip-restriction":{"denylist":["10.0.0.0/8","::1"]}}"#).is_empty());
        assert_eq!(
            fields(r#"{"ip-restriction":{}}"#),
            ["plugins.ip-restriction"]
        );
        assert_eq!(
            fields(r#"{"ip-restrictions":{}}"#),
            ["plugins.ip-restrictions"]
        );
        // Wrong types and unknown fields are named by their path.
        assert_eq!(
            fields(r#"{"limit-count":{"count":"ten","time_window":1}}"#),
            ["plugins.limit-count.count"]
        );
        assert_eq!(
            fields(r#"{"limit-count":{"count":0,"time_window":1}}"#),
            ["plugins.limit-count.count"]
        );
        assert_eq!(
            fields(r#"{"key-auth":{"header":"x key"}}"#),
            ["plugins.key-auth.header"]
        );
        assert_eq!(
            fields(r#"{"key-auth":{"nope":1}}"#),
            ["plugins.key-auth.nope"]
        );
        assert!(fields(
            r#"{"key-auth":{},"basic-auth":{},"limit-count":{"count":5,"time_window":60}}"#
        )
        .is_empty());
    }

    #[test]
    fn catalog_is_ordered_and_named_uniquely() {
        let mut names: Vec<&str> = CATALOG.iter().map(|p| p.name).collect();
        assert!(CATALOG.windows(2).all(|w| w[0].priority > w[1].priority));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
    }

    #[test]
    fn schemas_name_the_fields_the_types_read() {
        let schema = IP_RESTRICTION.schema();
        let properties = schema["properties"].as_object().unwrap();
        let mut names: Vec<&str> = properties.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["allowlist", "denylist", "message"]);
        assert_eq!(schema["additionalProperties"], false);
        let schema = REQUEST_ID.schema();
        assert_eq!(
            schema["properties"]["header_name"]["default"],
            "X-Request-Id"
        );
        assert_eq!(schema["properties"]["header_name"]["maxLength"], 128);
        assert_eq!(schema["properties"]["include_in_response"]["default"], true);
        let schema = LIMIT_COUNT.schema();
        assert_eq!(schema["properties"]["count"]["minimum"], 1);
        assert!(find("request-id").is_some() && find("nope").is_none());
    }

    #[test]
    fn templates_take_partial_defaults_of_known_fields() {
        let template = |json: &str| {
            serde_json::from_str::<PluginTemplate>(json)
                .unwrap()
                .validate()
                .err()
                .map(|e| e.0.into_iter().map(|e| e.field).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert!(template(r#"{"id":"limit-count","defaults":{"time_window":60}}"#).is_empty());
        assert!(template(r#"{"id":"key-auth","enabled":false,"priority":10}"#).is_empty());
        assert_eq!(
            template(r#"{"id":"limit-count","defaults":{"time_window":"x"}}"#),
            ["defaults.time_window"]
        );
        assert_eq!(
            template(r#"{"id":"limit-count","defaults":{"nope":1}}"#),
            ["defaults.nope"]
        );
        assert_eq!(template(r#"{"id":"nope"}"#), ["id"]);
        assert_eq!(
            template(r#"{"id":"key-auth","priority":1000000}"#),
            ["priority"]
        );
    }
}
