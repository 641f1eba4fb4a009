//! Upstream: a named pool of backend nodes with its load-balancing policy, timeouts,
//! retries, health checks, upstream TLS and the `Host` it sends.
//!
//! These are the declarative types (serde, unknown fields refused); the gateway compiles
//! them into `gateway::balancer::UpstreamPool`. `validate` collects every problem with
//! its field path (`checks.active.interval`) so one answer lists them all.

use serde::{Deserialize, Serialize};

use crate::validate::{check_id, is_valid_host, ValidationErrors, Validator};

/// A pool of backend nodes, referenced by routes through `upstream_id` or inlined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Unique within an instance; optional only when the upstream is inlined in a route.
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The nodes, when listed here (local mode); empty with `discovery`.
    #[serde(default)]
    pub nodes: Vec<UpstreamNode>,
    /// Nodes from a registry instead (registry mode, N6): the registered service of
    /// the instance's namespace, optionally only nodes with some metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<crate::registry::Discovery>,
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default, rename = "type")]
    pub lb: LoadBalancing,
    #[serde(default)]
    pub timeout: Timeouts,
    /// What `chash` hashes; only used with `type: chash`.
    #[serde(default)]
    pub hash_on: HashOn,
    /// The header, cookie or query parameter `chash` hashes (`hash_on` header, cookie
    /// or query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<HealthChecks>,
    /// Extra attempts, each on another node, after a connect error (any request) or a
    /// status in `retry_on_statuses` (idempotent requests only); 0-10.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Statuses that make an idempotent request try another node (`[502, 503, 504]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on_statuses: Vec<u16>,
    /// The `Host` header sent to the node.
    #[serde(default)]
    pub pass_host: PassHost,
    /// The `Host` sent when `pass_host` is `rewrite`; required then, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    /// TLS towards the nodes; only with scheme `https` or `grpcs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub keepalive_pool: KeepalivePool,
}

/// One backend node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamNode {
    pub host: String,
    /// Kept wide so an out-of-range number is reported by `validate` with its field
    /// path instead of failing deserialisation with a less precise message.
    pub port: i64,
    #[serde(default = "default_weight")]
    pub weight: i64,
}

fn default_weight() -> i64 {
    1
}

fn default_retries() -> u32 {
    1
}

/// Protocol spoken to the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
    /// gRPC over cleartext HTTP/2 (h2c).
    Grpc,
    /// gRPC over HTTP/2 with TLS.
    Grpcs,
}

impl Scheme {
    /// Whether the connection to the node is TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Grpcs)
    }
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Smooth weighted round robin; equal weights give plain round robin.
    #[default]
    Roundrobin,
    /// Weighted random.
    Random,
    /// Fewest requests in flight relative to the weight.
    LeastConn,
    /// Consistent hashing on `hash_on`/`key`: the same key goes to the same node.
    Chash,
    /// Peak-EWMA of the response latency, two random choices.
    Ewma,
}

/// What `chash` hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HashOn {
    /// The client's address.
    #[default]
    Ip,
    /// The value of the header named by `key`.
    Header,
    /// The value of the cookie named by `key`.
    Cookie,
    /// The value of the query parameter named by `key`.
    Query,
    /// The request path.
    Path,
}

/// The `Host` header sent to the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PassHost {
    /// The client's `Host`, unchanged.
    #[default]
    Pass,
    /// The node's host as configured.
    Node,
    /// `upstream_host`.
    Rewrite,
}

/// TLS towards the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Verify the node's certificate (against the system roots and `sni`).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Server name sent and verified; defaults to the node's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM certificates of the CAs the node's certificate must chain to, instead of the
    /// system roots (an internal CA); only with `verify: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Idle connections kept to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepalivePool {
    /// Seconds an idle connection is kept for reuse.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: f64,
}

fn default_idle_timeout() -> f64 {
    60.0
}

impl Default for KeepalivePool {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// Health checks; a node is down when either kind says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheck>,
}

/// Probes sent to every node by each gateway node, whether or not traffic flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheck {
    #[serde(rename = "type", default)]
    pub kind: CheckKind,
    /// Path of the HTTP probe.
    #[serde(default = "default_http_path")]
    pub http_path: String,
    /// `Host` of the HTTP probe; defaults to the node's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Seconds between two probes of a node.
    #[serde(default = "default_interval")]
    pub interval: f64,
    /// Seconds a probe may take.
    #[serde(default = "default_probe_timeout")]
    pub timeout: f64,
    #[serde(default)]
    pub healthy: ActiveHealthy,
    #[serde(default)]
    pub unhealthy: ActiveUnhealthy,
}

/// How a node is probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `GET http_path`; healthy when the status is in `healthy.statuses`.
    #[default]
    Http,
    /// Healthy when a TCP connection opens.
    Tcp,
}

fn default_http_path() -> String {
    "/".to_owned()
}

fn default_interval() -> f64 {
    5.0
}

fn default_probe_timeout() -> f64 {
    1.0
}

/// When a down node comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthy {
    #[serde(default = "default_healthy_statuses")]
    pub statuses: Vec<u16>,
    /// Consecutive good probes that make a node healthy; 1-254.
    #[serde(default = "default_successes")]
    pub successes: u32,
}

fn default_healthy_statuses() -> Vec<u16> {
    vec![200, 302]
}

fn default_successes() -> u32 {
    2
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        Self {
            statuses: default_healthy_statuses(),
            successes: default_successes(),
        }
    }
}

/// When a node goes down: a failure is a connect error, a timeout, or a status not in
/// `healthy.statuses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveUnhealthy {
    /// Consecutive failed probes that make a node unhealthy; 1-254.
    #[serde(default = "default_failures")]
    pub failures: u32,
}

fn default_failures() -> u32 {
    3
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        Self {
            failures: default_failures(),
        }
    }
}

/// Health judged from real traffic: a node failing too often is ejected for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheck {
    #[serde(default)]
    pub unhealthy: PassiveUnhealthy,
    /// Seconds an ejected node gets no traffic.
    #[serde(default = "default_eject_for")]
    pub eject_for: f64,
}

fn default_eject_for() -> f64 {
    10.0
}

impl Default for PassiveCheck {
    fn default() -> Self {
        Self {
            unhealthy: PassiveUnhealthy::default(),
            eject_for: default_eject_for(),
        }
    }
}

/// What ejects a node: `failures` consecutive responses with a status in
/// `http_statuses`, connect errors or timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveUnhealthy {
    #[serde(default = "default_passive_statuses")]
    pub http_statuses: Vec<u16>,
    /// 1-254.
    #[serde(default = "default_failures")]
    pub failures: u32,
}

fn default_passive_statuses() -> Vec<u16> {
    vec![500, 502, 503, 504]
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        Self {
            http_statuses: default_passive_statuses(),
            failures: default_failures(),
        }
    }
}

/// Timeouts in seconds (fractions allowed), as in APISIX's `timeout` object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect")]
    pub connect: f64,
    #[serde(default = "default_rw")]
    pub send: f64,
    #[serde(default = "default_rw")]
    pub read: f64,
}

fn default_connect() -> f64 {
    6.0
}

fn default_rw() -> f64 {
    60.0
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            send: default_rw(),
            read: default_rw(),
        }
    }
}

impl Upstream {
    /// Checks a stand-alone upstream (its id is required).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        self.validate_body(&mut v);
        v.finish()
    }

    /// Checks everything but the id; used for inline upstreams too.
    pub(crate) fn validate_body(&self, v: &mut Validator) {
        if self.name.len() > 256 {
            v.error("name", "must be at most 256 characters");
        }
        match &self.discovery {
            None if self.nodes.is_empty() => {
                v.error("nodes", "must list at least one node (or give discovery)")
            }
            None => {}
            Some(discovery) => {
                if !self.nodes.is_empty() {
                    v.error("nodes", "give either nodes or discovery, not both");
                }
                v.at("discovery", |v| discovery.validate(v));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            v.at(&format!("nodes[{i}]"), |v| {
                if !is_valid_host(&node.host) {
                    v.error("host", "must be an IP address or a DNS name");
                }
                if !(1..=65535).contains(&node.port) {
                    v.error("port", "must be 1-65535");
                }
                if !(0..=1_000_000).contains(&node.weight) {
                    v.error("weight", "must be 0-1000000");
                }
            });
        }
        if !self.nodes.is_empty() && self.nodes.iter().all(|n| n.weight == 0) {
            v.error("nodes", "at least one node must have a weight above 0");
        }
        v.at("timeout", |v| {
            check_seconds(v, "connect", self.timeout.connect, 3600.0);
            check_seconds(v, "send", self.timeout.send, 3600.0);
            check_seconds(v, "read", self.timeout.read, 3600.0);
        });
        self.validate_hashing(v);
        if let Some(checks) = &self.checks {
            v.at("checks", |v| checks.validate(v));
        }
        if self.retries > 10 {
            v.error("retries", "must be 0-10");
        }
        check_statuses(v, "retry_on_statuses", &self.retry_on_statuses);
        match (&self.upstream_host, self.pass_host) {
            (None, PassHost::Rewrite) => {
                v.error("upstream_host", "is required when pass_host is rewrite");
            }
            (Some(_), PassHost::Pass | PassHost::Node) => {
                v.error("upstream_host", "is only used when pass_host is rewrite");
            }
            (Some(host), PassHost::Rewrite) if !is_valid_host(host) => {
                v.error("upstream_host", "must be an IP address or a DNS name");
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if !self.scheme.is_tls() {
                v.error("tls", "is only used when scheme is https or grpcs");
            }
            if let Some(sni) = &tls.sni {
                if !is_valid_host(sni) || sni.parse::<std::net::IpAddr>().is_ok() {
                    v.error("tls.sni", "must be a DNS name");
                }
            }
            if let Some(ca) = &tls.ca {
                if !tls.verify {
                    v.error("tls.ca", "is only used when verify is true");
                } else if let Err(problems) = crate::certificate::pem_certificates(ca) {
                    for problem in problems {
                        v.error("tls.ca", problem);
                    }
                }
            }
        }
        v.at("keepalive_pool", |v| {
            check_seconds(v, "idle_timeout", self.keepalive_pool.idle_timeout, 3600.0);
        });
    }

    /// `hash_on` and `key` only mean something with `chash`, and `key` only for the
    /// sources that need a name.
    fn validate_hashing(&self, v: &mut Validator) {
        if self.lb != LoadBalancing::Chash {
            if self.hash_on != HashOn::Ip {
                v.error("hash_on", "is only used when type is chash");
            }
            if self.key.is_some() {
                v.error("key", "is only used when type is chash");
            }
            return;
        }
        match (self.hash_on, &self.key) {
            (HashOn::Header | HashOn::Cookie | HashOn::Query, None) => {
                v.error("key", "is required when hash_on is header, cookie or query");
            }
            (HashOn::Ip | HashOn::Path, Some(_)) => {
                v.error("key", "is not used when hash_on is ip or path");
            }
            (HashOn::Header | HashOn::Cookie, Some(key)) if !is_token(key) => {
                v.error(
                    "key",
                    "must be a header or cookie name: 1-256 letters, digits or !#$%&'*+-.^_`|~",
                );
            }
            (HashOn::Query, Some(key)) if !is_query_name(key) => {
                v.error(
                    "key",
                    "must be a query parameter name: 1-256 characters without spaces, control characters, '&', '=' or '#'",
                );
            }
            _ => {}
        }
    }
}

impl HealthChecks {
    fn validate(&self, v: &mut Validator) {
        if self.active.is_none() && self.passive.is_none() {
            v.error("", "must set active, passive or both");
        }
        if let Some(active) = &self.active {
            v.at("active", |v| active.validate(v));
        }
        if let Some(passive) = &self.passive {
            v.at("passive", |v| passive.validate(v));
        }
    }
}

impl ActiveCheck {
    fn validate(&self, v: &mut Validator) {
        // The probe's request line is written by hand: nothing may break out of it.
        if !self.http_path.starts_with('/')
            || self.http_path.len() > 2048
            || self
                .http_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            v.error(
                "http_path",
                "must start with '/' and hold at most 2048 characters without spaces or control characters",
            );
        }
        if let Some(host) = &self.host {
            if !is_valid_host(host) {
                v.error("host", "must be an IP address or a DNS name");
            }
        }
        check_seconds(v, "interval", self.interval, 3600.0);
        check_seconds(v, "timeout", self.timeout, 60.0);
        v.at("healthy", |v| {
            if self.healthy.statuses.is_empty() {
                v.error("statuses", "must list at least one status");
            }
            check_statuses(v, "statuses", &self.healthy.statuses);
            check_count(v, "successes", self.healthy.successes);
        });
        v.at("unhealthy", |v| {
            check_count(v, "failures", self.unhealthy.failures);
        });
    }
}

impl PassiveCheck {
    fn validate(&self, v: &mut Validator) {
        v.at("unhealthy", |v| {
            check_statuses(v, "http_statuses", &self.unhealthy.http_statuses);
            check_count(v, "failures", self.unhealthy.failures);
        });
        check_seconds(v, "eject_for", self.eject_for, 3600.0);
    }
}

/// A duration in seconds: above 0 and at most `max`.
fn check_seconds(v: &mut Validator, field: &str, value: f64, max: f64) {
    if !(value.is_finite() && value > 0.0 && value <= max) {
        v.error(
            field,
            format!("must be a number of seconds above 0 and at most {max}"),
        );
    }
}

/// HTTP statuses, each reported at its index (`retry_on_statuses[1]`).
fn check_statuses(v: &mut Validator, field: &str, statuses: &[u16]) {
    for (i, status) in statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            v.error(&format!("{field}[{i}]"), "must be an HTTP status, 100-599");
        }
    }
}

/// A consecutive-probe counter as nginx/APISIX bound it.
fn check_count(v: &mut Validator, field: &str, count: u32) {
    if !(1..=254).contains(&count) {
        v.error(field, "must be 1-254");
    }
}

/// An HTTP token (RFC 9110 `tchar`s): what header and cookie names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_query_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '&' | '=' | '#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Vec<String> {
        let up: Upstream = serde_json::from_str(json).expect("parses");
        match up.validate() {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    /// `{"id":"u","nodes":[…], <extra>}`: one valid node plus the fields under test.
    fn with(extra: &str) -> String {
        format!(r#"{{"id":"u","nodes":[{{"host":"a","port":1}}],{extra}}}"#)
    }

    #[test]
    fn minimal_upstream_is_valid_and_defaults_apply() {
        let up: Upstream =
            serde_json::from_str(r#"{"id":"up","nodes":[{"host":"127.0.0.1","port":8080}]}"#)
                .unwrap();
        assert!(up.validate().is_ok());
        assert_eq!(up.nodes[0].weight, 1);
        assert_eq!(up.scheme, Scheme::Http);
        assert_eq!(up.lb, LoadBalancing::Roundrobin);
        assert_eq!(up.timeout, Timeouts::default());
        assert_eq!(up.hash_on, HashOn::Ip);
        assert_eq!(up.key, None);
        assert_eq!(up.checks, None);
        assert_eq!(up.retries, 1);
        assert!(up.retry_on_statuses.is_empty());
        assert_eq!(up.pass_host, PassHost::Pass);
        assert_eq!(up.upstream_host, None);
        assert_eq!(up.tls, None);
        assert_eq!(up.keepalive_pool.idle_timeout, 60.0);
    }

    #[test]
    fn check_defaults_apply() {
        let up: Upstream = serde_json::from_str(&with(
            r#""scheme":"https","tls":{},"checks":{"active":{},"passive":{}}"#,
        ))
        .unwrap();
        assert!(up.validate().is_ok());
        assert_eq!(
            up.tls,
            Some(UpstreamTls {
                verify: true,
                sni: None,
                ca: None
            })
        );
        let checks = up.checks.unwrap();
        assert_eq!(
            checks.active,
            Some(ActiveCheck {
                kind: CheckKind::Http,
                http_path: "/".into(),
                host: None,
                interval: 5.0,
                timeout: 1.0,
                healthy: ActiveHealthy {
                    statuses: vec![200, 302],
                    successes: 2
                },
                unhealthy: ActiveUnhealthy { failures: 3 },
            })
        );
        assert_eq!(
            checks.passive,
            Some(PassiveCheck {
                unhealthy: PassiveUnhealthy {
                    http_statuses: vec![500, 502, 503, 504],
                    failures: 3
                },
                eject_for: 10.0,
            })
        );
    }

    #[test]
    fn every_enum_value_parses_and_round_trips() {
        let full = with(
            r#""scheme":"grpcs","type":"chash","hash_on":"cookie","key":"session_id",
            "checks":{"active":{"type":"tcp","interval":0.5,"timeout":0.2},
                      "passive":{"unhealthy":{"http_statuses":[502],"failures":1},"eject_for":1}},
            "retries":3,"retry_on_statuses":[502,503],"pass_host":"rewrite",
            "upstream_host":"api.internal","tls":{"verify":false,"sni":"api.example.com"},
            "keepalive_pool":{"idle_timeout":30}"#,
        );
        let up: Upstream = serde_json::from_str(&full).unwrap();
        assert_eq!(up.validate(), Ok(()));
        let again: Upstream = serde_json::from_str(&serde_json::to_string(&up).unwrap()).unwrap();
        assert_eq!(again, up);

        for (value, lb) in [
            ("roundrobin", LoadBalancing::Roundrobin),
            ("random", LoadBalancing::Random),
            ("least_conn", LoadBalancing::LeastConn),
            ("chash", LoadBalancing::Chash),
            ("ewma", LoadBalancing::Ewma),
        ] {
            let up: Upstream =
                serde_json::from_str(&with(&format!(r#""type":"{value}""#))).unwrap();
            assert_eq!(up.lb, lb);
        }
        for (value, scheme, tls) in [
            ("http", Scheme::Http, false),
            ("https", Scheme::Https, true),
            ("grpc", Scheme::Grpc, false),
            ("grpcs", Scheme::Grpcs, true),
        ] {
            let up: Upstream =
                serde_json::from_str(&with(&format!(r#""scheme":"{value}""#))).unwrap();
            assert_eq!((up.scheme, up.scheme.is_tls()), (scheme, tls));
        }
    }

    #[test]
    fn each_rule_is_reported_with_its_field() {
        let cases: &[(&str, &[&str])] = &[
            (r#"{"id":"","nodes":[{"host":"a","port":1}]}"#, &["id"]),
            (r#"{"id":"u","nodes":[]}"#, &["nodes"]),
            (
                r#"{"id":"u","nodes":[{"host":"a b","port":1}]}"#,
                &["nodes[0].host"],
            ),
            (
                r#"{"id":"u","nodes":[{"host":"a","port":0}]}"#,
                &["nodes[0].port"],
            ),
            (
                r#"{"id":"u","nodes":[{"host":"a","port":70000}]}"#,
                &["nodes[0].port"],
            ),
            (
                r#"{"id":"u","nodes":[{"host":"a","port":1,"weight":-1}]}"#,
                &["nodes[0].weight"],
            ),
            (
                r#"{"id":"u","nodes":[{"host":"a","port":1,"weight":0}]}"#,
                &["nodes"],
            ),
            (
                r#"{"id":"u","nodes":[{"host":"a","port":1}],"timeout":{"connect":0}}"#,
                &["timeout.connect"],
            ),
        ];
        for (json, want) in cases {
            assert_eq!(fields(json), *want, "{json}");
        }
    }

    /// One case per rule of the extended fields: `(extra fields, fields reported)`;
    /// an empty list means the combination is valid.
    #[test]
    fn each_extended_rule_is_reported_with_its_field() {
        let cases: &[(&str, &[&str])] = &[
            // chash keys
            (r#""type":"chash""#, &[]),
            (r#""type":"chash","hash_on":"path""#, &[]),
            (r#""type":"chash","hash_on":"header","key":"x-user""#, &[]),
            (r#""type":"chash","hash_on":"query","key":"user[id]""#, &[]),
            (r#""type":"chash","hash_on":"header""#, &["key"]),
            (r#""type":"chash","hash_on":"cookie""#, &["key"]),
            (r#""type":"chash","hash_on":"query""#, &["key"]),
            (r#""type":"chash","hash_on":"header","key":"""#, &["key"]),
            (
                r#""type":"chash","hash_on":"header","key":"x user""#,
                &["key"],
            ),
            (r#""type":"chash","hash_on":"cookie","key":"a;b""#, &["key"]),
            (r#""type":"chash","hash_on":"query","key":"a&b""#, &["key"]),
            (
                r#""type":"chash","hash_on":"query","key":"a\u0001""#,
                &["key"],
            ),
            (r#""type":"chash","hash_on":"ip","key":"x""#, &["key"]),
            (r#""type":"chash","hash_on":"path","key":"x""#, &["key"]),
            (r#""key":"x""#, &["key"]),
            (
                r#""type":"random","hash_on":"header","key":"x""#,
                &["hash_on", "key"],
            ),
            // retries
            (r#""retries":0"#, &[]),
            (r#""retries":10"#, &[]),
            (r#""retries":11"#, &["retries"]),
            (
                r#""retry_on_statuses":[502,99,600]"#,
                &["retry_on_statuses[1]", "retry_on_statuses[2]"],
            ),
            // pass_host
            (r#""pass_host":"node""#, &[]),
            (r#""pass_host":"rewrite","upstream_host":"b.example""#, &[]),
            (r#""pass_host":"rewrite""#, &["upstream_host"]),
            (
                r#""pass_host":"rewrite","upstream_host":"a b""#,
                &["upstream_host"],
            ),
            (r#""upstream_host":"b.example""#, &["upstream_host"]),
            (
                r#""pass_host":"node","upstream_host":"b.example""#,
                &["upstream_host"],
            ),
            // tls
            (r#""scheme":"https","tls":{"verify":false}"#, &[]),
            (r#""scheme":"grpcs","tls":{"sni":"a.example"}"#, &[]),
            (r#""tls":{}"#, &["tls"]),
            (r#""scheme":"grpc","tls":{}"#, &["tls"]),
            (r#""scheme":"https","tls":{"ca":"not pem"}"#, &["tls.ca"]),
            (
                r#""scheme":"https","tls":{"ca":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}"#,
                &["tls.ca"],
            ),
            (
                r#""scheme":"https","tls":{"verify":false,"ca":"not pem"}"#,
                &["tls.ca"],
            ),
            (r#""scheme":"https","tls":{"sni":"a b"}"#, &["tls.sni"]),
            (r#""scheme":"https","tls":{"sni":"10.0.0.1"}"#, &["tls.sni"]),
            // keepalive
            (
                r#""keepalive_pool":{"idle_timeout":0}"#,
                &["keepalive_pool.idle_timeout"],
            ),
            (
                r#""keepalive_pool":{"idle_timeout":3601}"#,
                &["keepalive_pool.idle_timeout"],
            ),
            // checks
            (r#""checks":{}"#, &["checks"]),
            (
                r#""checks":{"active":{"http_path":"health"}}"#,
                &["checks.active.http_path"],
            ),
            (
                r#""checks":{"active":{"http_path":"/a b"}}"#,
                &["checks.active.http_path"],
            ),
            (
                r#""checks":{"active":{"http_path":"/a\r\nX: y"}}"#,
                &["checks.active.http_path"],
            ),
            (
                r#""checks":{"active":{"host":"a/b"}}"#,
                &["checks.active.host"],
            ),
            (
                r#""checks":{"active":{"interval":0}}"#,
                &["checks.active.interval"],
            ),
            (
                r#""checks":{"active":{"interval":3601}}"#,
                &["checks.active.interval"],
            ),
            (
                r#""checks":{"active":{"timeout":0}}"#,
                &["checks.active.timeout"],
            ),
            (
                r#""checks":{"active":{"timeout":61}}"#,
                &["checks.active.timeout"],
            ),
            (
                r#""checks":{"active":{"healthy":{"statuses":[]}}}"#,
                &["checks.active.healthy.statuses"],
            ),
            (
                r#""checks":{"active":{"healthy":{"statuses":[200,700]}}}"#,
                &["checks.active.healthy.statuses[1]"],
            ),
            (
                r#""checks":{"active":{"healthy":{"successes":0}}}"#,
                &["checks.active.healthy.successes"],
            ),
            (
                r#""checks":{"active":{"healthy":{"successes":255}}}"#,
                &["checks.active.healthy.successes"],
            ),
            (
                r#""checks":{"active":{"unhealthy":{"failures":0}}}"#,
                &["checks.active.unhealthy.failures"],
            ),
            (
                r#""checks":{"passive":{"unhealthy":{"http_statuses":[42]}}}"#,
                &["checks.passive.unhealthy.http_statuses[0]"],
            ),
            (
                r#""checks":{"passive":{"unhealthy":{"failures":255}}}"#,
                &["checks.passive.unhealthy.failures"],
            ),
            (
                r#""checks":{"passive":{"eject_for":0}}"#,
                &["checks.passive.eject_for"],
            ),
            (
                r#""checks":{"passive":{"eject_for":3601}}"#,
                &["checks.passive.eject_for"],
            ),
        ];
        for (extra, want) in cases {
            let json = with(extra);
            assert_eq!(fields(&json), *want, "{json}");
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let up: Upstream = serde_json::from_str(&with(
            r#""pass_host":"rewrite","type":"chash","hash_on":"header","retries":11,"checks":{"active":{"interval":0}}"#,
        ))
        .unwrap();
        let errors: Vec<String> = up
            .validate()
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "key: is required when hash_on is header, cookie or query",
                "checks.active.interval: must be a number of seconds above 0 and at most 3600",
                "retries: must be 0-10",
                "upstream_host: is required when pass_host is rewrite",
            ]
        );
    }

    #[test]
    fn all_errors_are_collected_at_once() {
        let got = fields(
            r#"{"id":"bad id","nodes":[{"host":"ok","port":1},{"host":"","port":99999,"weight":-5}],"timeout":{"read":-1}}"#,
        );
        assert_eq!(
            got,
            [
                "id",
                "nodes[1].host",
                "nodes[1].port",
                "nodes[1].weight",
                "timeout.read"
            ]
        );
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_refused() {
        let refused = [
            r#"{"id":"u","nodes":[],"colour":1}"#,
            r#"{"id":"u","nodes":[],"scheme":"ftp"}"#,
            r#"{"id":"u","nodes":[],"type":"magic"}"#,
            r#"{"id":"u","nodes":[],"type":"leastconn"}"#,
            r#"{"id":"u","nodes":[],"hash_on":"body"}"#,
            r#"{"id":"u","nodes":[],"pass_host":"keep"}"#,
            r#"{"id":"u","nodes":[],"tls":{"verify":true,"cert":"x"}}"#,
            r#"{"id":"u","nodes":[],"checks":{"active":{"type":"udp"}}}"#,
            r#"{"id":"u","nodes":[],"checks":{"active":{"healthy":{"status":[200]}}}}"#,
            r#"{"id":"u","nodes":[],"checks":{"passive":{"eject":1}}}"#,
            r#"{"id":"u","nodes":[],"keepalive_pool":{"size":1}}"#,
        ];
        for json in refused {
            assert!(serde_json::from_str::<Upstream>(json).is_err(), "{json}");
        }
    }
}
