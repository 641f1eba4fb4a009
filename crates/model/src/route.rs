//! Route: which requests (host, path, method) go to which upstream.

use serde::{Deserialize, Serialize};

use crate::upstream::Upstream;
use crate::validate::{check_id, is_valid_host, ValidationErrors, Validator};

/// HTTP methods a route may restrict itself to.
pub const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// A routing rule. Paths ending in `*` match by prefix (as in APISIX); others exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Empty means any host. `*.example.com` matches any subdomain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    /// Empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// Higher wins among routes that match equally specifically.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

/// How one entry of `paths` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPattern<'a> {
    Exact(&'a str),
    /// The literal prefix before the trailing `*`.
    Prefix(&'a str),
}

impl<'a> PathPattern<'a> {
    pub fn parse(path: &'a str) -> Self {
        match path.strip_suffix('*') {
            Some(prefix) => PathPattern::Prefix(prefix),
            None => PathPattern::Exact(path),
        }
    }
}

impl Route {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        if self.name.len() > 256 {
            v.error("name", "must be at most 256 characters");
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if !is_valid_host(bare) {
                v.error(
                    &format!("hosts[{i}]"),
                    "must be a DNS name, an IP address or a wildcard like *.example.com",
                );
            }
        }
        if self.paths.is_empty() {
            v.error("paths", "must list at least one path");
        }
        for (i, path) in self.paths.iter().enumerate() {
            let field = format!("paths[{i}]");
            if !path.starts_with('/') {
                v.error(&field, "must start with '/'");
            } else if path.len() > 4096 {
                v.error(&field, "must be at most 4096 characters");
            } else if path.trim_end_matches('*').contains('*') || path.ends_with("**") {
                v.error(
                    &field,
                    "'*' is allowed only once, as the last character (prefix match)",
                );
            } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                v.error(&field, "must not contain whitespace or control characters");
            }
        }
        for (i, method) in self.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                v.error(
                    &format!("methods[{i}]"),
                    format!("must be one of {}", METHODS.join(", ")),
                );
            }
        }
        match (&self.upstream_id, &self.upstream) {
            (Some(_), Some(_)) => {
                v.error("upstream", "give either upstream_id or upstream, not both")
            }
            (None, None) => v.error(
                "upstream_id",
                "a route needs upstream_id or an inline upstream",
            ),
            (Some(id), None) => check_id(&mut v, "upstream_id", id),
            (None, Some(up)) => {
                v.at("upstream", |v| {
                    if !up.id.is_empty() {
                        check_id(v, "id", &up.id);
                    }
                    up.validate_body(v);
                });
            }
        }
        v.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Vec<String> {
        let r: Route = serde_json::from_str(json).expect("parses");
        match r.validate() {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn minimal_route_is_valid() {
        let r: Route =
            serde_json::from_str(r#"{"id":"r1","paths":["/api/*"],"upstream_id":"up"}"#).unwrap();
        assert!(r.validate().is_ok());
        assert!(r.enabled);
        assert_eq!(r.priority, 0);
        assert_eq!(
            PathPattern::parse(&r.paths[0]),
            PathPattern::Prefix("/api/")
        );
        assert_eq!(PathPattern::parse("/a"), PathPattern::Exact("/a"));
    }

    #[test]
    fn each_rule_is_reported_with_its_field() {
        let cases: &[(&str, &[&str])] = &[
            (r#"{"id":"r","paths":[],"upstream_id":"u"}"#, &["paths"]),
            (
                r#"{"id":"r","paths":["api"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/a*b"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/a**"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/a b"],"upstream_id":"u"}"#,
                &["paths[0]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"methods":["GET","FETCH"],"upstream_id":"u"}"#,
                &["methods[1]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"hosts":["ok.com","bad host"],"upstream_id":"u"}"#,
                &["hosts[1]"],
            ),
            (
                r#"{"id":"r","paths":["/"],"hosts":["*.ok.com"],"upstream_id":"u"}"#,
                &[],
            ),
            (r#"{"id":"r","paths":["/"]}"#, &["upstream_id"]),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","upstream":{"nodes":[{"host":"a","port":1}]}}"#,
                &["upstream"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"bad/id"}"#,
                &["upstream_id"],
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream":{"nodes":[{"host":"a","port":0}]}}"#,
                &["upstream.nodes[0].port"],
            ),
            (r#"{"id":"","paths":["/"],"upstream_id":"u"}"#, &["id"]),
        ];
        for (json, want) in cases {
            assert_eq!(fields(json), *want, "{json}");
        }
    }

    #[test]
    fn all_errors_are_collected_at_once() {
        let got = fields(
            r#"{"id":"","paths":["x","/ok"],"methods":["NOPE"],"upstream":{"nodes":[{"host":"a","port":1},{"host":"b","port":0}]}}"#,
        );
        assert_eq!(
            got,
            ["id", "paths[0]", "methods[0]", "upstream.nodes[1].port"]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Route>(r#"{"id":"r","paths":["/"],"uri":"/"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `uri`"), "{err}");
    }
}
