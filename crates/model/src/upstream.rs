//! Upstream: a named pool of backend nodes with a load-balancing policy and timeouts.

use serde::{Deserialize, Serialize};

use crate::validate::{check_id, is_valid_host, ValidationErrors, Validator};

/// A pool of backend nodes, referenced by routes through `upstream_id` or inlined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Unique within an instance; optional only when the upstream is inlined in a route.
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub nodes: Vec<UpstreamNode>,
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default, rename = "type")]
    pub lb: LoadBalancing,
    #[serde(default)]
    pub timeout: Timeouts,
}

/// One backend node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Protocol spoken to the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

/// Load-balancing policy; the closed set grows with the data-plane issue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancing {
    /// Weighted round robin; equal weights give plain round robin.
    #[default]
    Roundrobin,
}

/// Timeouts in seconds (fractions allowed), as in APISIX's `timeout` object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
        if self.nodes.is_empty() {
            v.error("nodes", "must list at least one node");
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
            for (name, value) in [
                ("connect", self.timeout.connect),
                ("send", self.timeout.send),
                ("read", self.timeout.read),
            ] {
                if !(value.is_finite() && value > 0.0 && value <= 3600.0) {
                    v.error(name, "must be a number of seconds above 0 and at most 3600");
                }
            }
        });
    }
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
        assert!(serde_json::from_str::<Upstream>(r#"{"id":"u","nodes":[],"colour":1}"#).is_err());
        assert!(
            serde_json::from_str::<Upstream>(r#"{"id":"u","nodes":[],"scheme":"ftp"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<Upstream>(r#"{"id":"u","nodes":[],"type":"magic"}"#).is_err()
        );
    }
}
