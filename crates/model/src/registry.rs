//! The service registry (requirements N4, N6, D3): services register their nodes into
//! one or more namespaces of a cluster, keep them alive with heartbeats, and upstreams
//! in registry mode (`discovery`, or a route's `upstream_id: "lb://orders"`) take
//! their nodes from it.
//!
//! A registration lives in the cluster's config store under one lease:
//! `{root}/registry/{namespace}/{service}/{node_id}` holds a [`RegisteredNode`] per
//! namespace it was registered into. A node whose heartbeats stop vanishes when its
//! lease expires; gateways watch the prefix like config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{check_id, is_valid_host, ValidationErrors, Validator};

/// The heartbeat interval a registration gets when it names none: it must heartbeat
/// at least this often (a third of it is a good interval).
pub const DEFAULT_TTL_SECS: i64 = 30;
/// The shortest TTL a registration may ask for: shorter ones would expire under an
/// ordinary pause of the service or the store.
pub const MIN_TTL_SECS: i64 = 5;
/// The longest: a dead node may serve errors this long at most.
pub const MAX_TTL_SECS: i64 = 3600;
/// The most namespaces one registration may name.
pub const MAX_NAMESPACES: usize = 32;
/// The most metadata pairs one node may carry.
pub const MAX_METADATA: usize = 32;

/// The namespace a registration without `namespaces` goes to (N4).
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a service sends to register one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The address gateways send requests to: an IP address or a DNS name.
    pub host: String,
    /// Kept wide so an out-of-range number is reported with its field path.
    pub port: i64,
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// Free-form labels (`version: v2`, `zone: a`) an upstream can select nodes by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Comma-separated namespaces to register into (`team-a,team-b`); unset or empty
    /// means `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<String>,
    /// Seconds without a heartbeat after which the node is removed (5-3600; 30).
    #[serde(default = "default_ttl")]
    pub ttl_secs: i64,
    /// The node's id within the service; `host:port` when unset. Registering the same
    /// id again replaces the earlier registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

fn default_weight() -> i64 {
    1
}

fn default_ttl() -> i64 {
    DEFAULT_TTL_SECS
}

impl Registration {
    /// Every problem, each with its field; `service` is the path's service name.
    pub fn validate(&self, service: &str) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "service", service);
        if !is_valid_host(&self.host) {
            v.error("host", "must be an IP address or a DNS name");
        }
        if !(1..=65535).contains(&self.port) {
            v.error("port", "must be 1-65535");
        }
        if !(0..=1_000_000).contains(&self.weight) {
            v.error("weight", "must be 0-1000000");
        }
        if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&self.ttl_secs) {
            v.error(
                "ttl_secs",
                format!("must be {MIN_TTL_SECS}-{MAX_TTL_SECS} seconds"),
            );
        }
        check_metadata(&mut v, "metadata", &self.metadata);
        if let Some(list) = &self.namespaces {
            let names = split_namespaces(list);
            if names.len() > MAX_NAMESPACES {
                v.error(
                    "namespaces",
                    format!("may name at most {MAX_NAMESPACES} namespaces"),
                );
            }
            for name in &names {
                let mut inner = Validator::new();
                check_id(&mut inner, "namespaces", name);
                if let Err(errors) = inner.finish() {
                    for e in errors.0 {
                        v.error("namespaces", format!("{name:?} {}", e.message));
                    }
                }
            }
        }
        if let Some(id) = &self.node_id {
            check_node_id(&mut v, "node_id", id);
        }
        v.finish()
    }

    /// The namespaces it registers into: its list without blanks and repeats, in order,
    /// or `default`.
    pub fn namespace_list(&self) -> Vec<String> {
        let names = self
            .namespaces
            .as_deref()
            .map(split_namespaces)
            .unwrap_or_default();
        if names.is_empty() {
            vec![DEFAULT_NAMESPACE.to_owned()]
        } else {
            names
        }
    }

    /// Its node id: the one given, or `host:port`.
    pub fn node_id(&self) -> String {
        match &self.node_id {
            Some(id) => id.clone(),
            None if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// A comma-separated namespace list: trimmed, blanks dropped, first occurrence kept.
fn split_namespaces(list: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Node ids end a store key: no `/`, printable, bounded.
fn check_node_id(v: &mut Validator, field: &str, id: &str) {
    if id.is_empty() || id.len() > 128 {
        v.error(field, "must be 1-128 characters");
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '[' | ']'))
    {
        v.error(
            field,
            "may contain only letters, digits, '-', '_', '.', ':', '[' and ']'",
        );
    }
}

/// Metadata keys and values: bounded, keys like ids.
pub(crate) fn check_metadata(v: &mut Validator, field: &str, metadata: &BTreeMap<String, String>) {
    if metadata.len() > MAX_METADATA {
        v.error(field, format!("may hold at most {MAX_METADATA} pairs"));
    }
    for (key, value) in metadata {
        let mut inner = Validator::new();
        check_id(&mut inner, "key", key);
        if inner.finish().is_err() {
            v.error(
                field,
                format!("key {key:?} must be 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        if value.len() > 256 {
            v.error(&format!("{field}.{key}"), "must be at most 256 characters");
        }
    }
}

/// One registered node as the store holds it (one per namespace it was registered
/// into) and as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisteredNode {
    pub namespace: String,
    pub service: String,
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub weight: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The registration's lease (decimal): heartbeats and deregistration name it.
    pub lease: String,
    pub ttl_secs: i64,
    /// When it was registered (unix milliseconds).
    pub registered_at_ms: i64,
}

impl RegisteredNode {
    /// Whether the node carries every pair of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, want)| self.metadata.get(k) == Some(want))
    }
}

/// The answer to a registration: what to heartbeat and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistrationAnswer {
    /// Send heartbeats to `…/registry/leases/{lease}` before `ttl_secs` pass.
    pub lease: String,
    pub service: String,
    pub node_id: String,
    pub namespaces: Vec<String>,
    pub ttl_secs: i64,
}

/// The nodes of one service in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisteredService {
    pub namespace: String,
    pub service: String,
    pub nodes: Vec<RegisteredNode>,
}

/// Where an upstream's nodes come from when it does not list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    #[serde(rename = "type")]
    pub kind: DiscoveryKind,
    /// `registry`: the registered service whose nodes the upstream uses.
    /// `kubernetes`: the Service as `namespace/name`.
    pub service: String,
    /// `registry` only: only nodes carrying every one of these metadata pairs
    /// (`version: v2` for a canary upstream).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// `kubernetes` only: the Service's port the upstream sends to, by its name or by
    /// its endpoints' port number (the container's, as EndpointSlices list it);
    /// unset when the Service has one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// `kubernetes` only: the clusters whose ready endpoints of the Service are
    /// united, by their names in the gateway's cluster list (`--kubernetes-clusters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
}

/// The registries an upstream can take its nodes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryKind {
    /// Portico's own registry, in the instance's namespace (N4).
    Registry,
    /// A Service's ready endpoints in one or more Kubernetes clusters (X5).
    Kubernetes,
}

/// A Kubernetes Service port: its name (`http`) or a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(i64),
    Name(String),
}

/// In the OpenAPI document: one schema of two types (not a `oneOf` of two schemas,
/// which makes clients and fuzzers walk a level deeper for a scalar).
impl utoipa::PartialSchema for PortRef {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Integer, Type::String]))
            .description(Some("A port number (1-65535) or a port's name"))
            .into()
    }
}

impl utoipa::ToSchema for PortRef {}

/// The most clusters one `kubernetes` discovery may unite.
pub const MAX_CLUSTERS: usize = 32;

impl Discovery {
    pub(crate) fn validate(&self, v: &mut Validator) {
        match self.kind {
            DiscoveryKind::Registry => {
                check_id(v, "service", &self.service);
                check_metadata(v, "metadata", &self.metadata);
                if self.port.is_some() {
                    v.error("port", "is only for type kubernetes");
                }
                if !self.clusters.is_empty() {
                    v.error("clusters", "is only for type kubernetes");
                }
            }
            DiscoveryKind::Kubernetes => self.validate_kubernetes(v),
        }
    }

    fn validate_kubernetes(&self, v: &mut Validator) {
        match self.service.split_once('/') {
            Some((namespace, name)) if is_dns_label(namespace) && is_dns_label(name) => {}
            _ => v.error(
                "service",
                "must be namespace/name, each 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
            ),
        }
        if !self.metadata.is_empty() {
            v.error("metadata", "is only for type registry");
        }
        match &self.port {
            None => {}
            Some(PortRef::Number(n)) if (1..=65535).contains(n) => {}
            Some(PortRef::Number(_)) => v.error("port", "must be 1-65535"),
            // A port's name is an IANA service name, as Kubernetes checks it.
            Some(PortRef::Name(name))
                if name.len() <= 15
                    && is_dns_label(name)
                    && name.chars().any(|c| c.is_ascii_lowercase())
                    && !name.contains("--") => {}
            Some(PortRef::Name(_)) => v.error(
                "port",
                "must be a port number or name (1-15 lowercase letters, digits or '-', with a letter, no '--')",
            ),
        }
        if self.clusters.is_empty() {
            v.error("clusters", "must name at least one cluster");
        } else if self.clusters.len() > MAX_CLUSTERS {
            v.error(
                "clusters",
                format!("may name at most {MAX_CLUSTERS} clusters"),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, cluster) in self.clusters.iter().enumerate() {
            if !is_dns_label(cluster) {
                v.error(
                    &format!("clusters[{i}]"),
                    "must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                );
            } else if !seen.insert(cluster) {
                v.error(
                    &format!("clusters[{i}]"),
                    format!("{cluster:?} is listed twice"),
                );
            }
        }
    }

    /// The discovery `lb://service` stands for.
    pub fn of_service(service: &str) -> Self {
        Self {
            kind: DiscoveryKind::Registry,
            service: service.to_owned(),
            metadata: BTreeMap::new(),
            port: None,
            clusters: Vec::new(),
        }
    }
}

/// A DNS label as Kubernetes names namespaces, Services and (in Portico) clusters.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The store lease ids a registration's lease stands for (one per store its agent
/// writes the registry to, joined by `.`); `None` when it is not such a lease.
pub fn parse_lease(lease: &str) -> Option<Vec<i64>> {
    if lease.is_empty() || lease.len() > 200 {
        return None;
    }
    lease
        .split('.')
        .map(|part| part.parse::<i64>().ok().filter(|id| *id > 0))
        .collect()
}

/// The prefix of an `upstream_id` that names a registered service instead of an
/// upstream (`lb://orders`, as in Spring Cloud Gateway).
pub const LB_PREFIX: &str = "lb://";

/// The service an `upstream_id` of the form `lb://service` names.
pub fn lb_service(upstream_id: &str) -> Option<&str> {
    upstream_id.strip_prefix(LB_PREFIX)
}

/// Checks an `upstream_id`: an upstream's id, or `lb://` and a service name.
pub(crate) fn check_upstream_ref(v: &mut Validator, field: &str, upstream_id: &str) {
    match lb_service(upstream_id) {
        Some(service) => {
            let mut inner = Validator::new();
            check_id(&mut inner, "service", service);
            if let Err(errors) = inner.finish() {
                for e in errors.0 {
                    v.error(field, format!("the service of {LB_PREFIX}… {}", e.message));
                }
            }
        }
        None => check_id(v, field, upstream_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Vec<String> {
        let r: Registration = serde_json::from_str(json).unwrap();
        match r.validate("orders") {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn registrations_are_checked_field_by_field() {
        assert!(fields(r#"{"host":"10.0.0.1","port":8080}"#).is_empty());
        assert_eq!(
            fields(
                r#"{"host":"bad host","port":0,"weight":-1,"ttl_secs":1,
                    "namespaces":"a,b c","node_id":"x/y","metadata":{"v":"1","bad key":"2"}}"#
            ),
            [
                "host",
                "port",
                "weight",
                "ttl_secs",
                "metadata",
                "namespaces",
                "node_id"
            ]
        );
    }

    #[test]
    fn namespaces_default_and_deduplicate() {
        let r: Registration =
            serde_json::from_str(r#"{"host":"h","port":1,"namespaces":" a, ,b,a"}"#).unwrap();
        assert_eq!(r.namespace_list(), ["a", "b"]);
        let r: Registration =
            serde_json::from_str(r#"{"host":"h","port":1,"namespaces":" , "}"#).unwrap();
        assert_eq!(r.namespace_list(), ["default"]);
        assert_eq!(r.node_id(), "h:1");
        let r: Registration = serde_json::from_str(r#"{"host":"::1","port":1}"#).unwrap();
        assert_eq!(r.node_id(), "[::1]:1");
    }

    #[test]
    fn leases_are_positive_ids_joined_by_dots() {
        assert_eq!(parse_lease("7"), Some(vec![7]));
        assert_eq!(parse_lease("7.9"), Some(vec![7, 9]));
        for bad in ["", "0", "-1", "7.", ".7", "a", "7..9", "1e3"] {
            assert_eq!(parse_lease(bad), None, "{bad}");
        }
    }

    #[test]
    fn lb_references_name_a_valid_service() {
        let check = |id: &str| {
            let mut v = Validator::new();
            check_upstream_ref(&mut v, "upstream_id", id);
            v.finish().is_ok()
        };
        assert!(check("lb://orders"));
        assert!(check("plain-upstream"));
        assert!(!check("lb://"));
        assert!(!check("lb://a/b"));
        assert!(!check("http://x"));
    }

    fn discovery_fields(json: &str) -> Vec<String> {
        let d: Discovery = serde_json::from_str(json).unwrap();
        let mut v = Validator::new();
        d.validate(&mut v);
        match v.finish() {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn kubernetes_discovery_names_a_service_its_port_and_clusters() {
        assert!(discovery_fields(
            r#"{"type":"kubernetes","service":"shop/web","port":"http","clusters":["idc-a","peak-1"]}"#
        )
        .is_empty());
        assert!(discovery_fields(
            r#"{"type":"kubernetes","service":"shop/web","port":8080,"clusters":["idc-a"]}"#
        )
        .is_empty());
        assert!(
            discovery_fields(r#"{"type":"kubernetes","service":"shop/web","clusters":["a"]}"#)
                .is_empty()
        );
        assert_eq!(
            discovery_fields(
                r#"{"type":"kubernetes","service":"web","port":0,"clusters":[],"metadata":{"v":"1"}}"#
            ),
            ["service", "metadata", "port", "clusters"]
        );
        assert_eq!(
            discovery_fields(
                r#"{"type":"kubernetes","service":"Shop/web","port":"http--x","clusters":["a","a","B"]}"#
            ),
            ["service", "port", "clusters[1]", "clusters[2]"]
        );
        assert_eq!(
            discovery_fields(
                r#"{"type":"registry","service":"orders","port":80,"clusters":["a"]}"#
            ),
            ["port", "clusters"]
        );
        let d: Discovery = serde_json::from_str(
            r#"{"type":"kubernetes","service":"shop/web","port":"8080","clusters":["a"]}"#,
        )
        .unwrap();
        assert_eq!(d.port, Some(PortRef::Name("8080".into())));
        assert_eq!(
            discovery_fields(
                r#"{"type":"kubernetes","service":"shop/web","port":"8080","clusters":["a"]}"#
            ),
            ["port"],
            "a number in a string is no port name"
        );
    }

    #[test]
    fn selectors_need_every_pair() {
        let node = RegisteredNode {
            namespace: "default".into(),
            service: "s".into(),
            node_id: "n".into(),
            host: "h".into(),
            port: 1,
            weight: 1,
            metadata: [("version".into(), "v2".into()), ("zone".into(), "a".into())].into(),
            lease: "1".into(),
            ttl_secs: 30,
            registered_at_ms: 0,
        };
        assert!(node.matches(&BTreeMap::new()));
        assert!(node.matches(&[("version".into(), "v2".into())].into()));
        assert!(!node.matches(&[("version".into(), "v1".into())].into()));
        assert!(!node.matches(&[("region".into(), "x".into())].into()));
    }
}
