//! Service: an upstream plus plugins shared by many routes (APISIX's and Kong's
//! service). A route naming a service uses its upstream unless it has its own, and
//! its plugins under the merge rule of `plugin::effective`.

use serde::{Deserialize, Serialize};

use crate::plugin::Plugins;
use crate::upstream::Upstream;
use crate::validate::{check_id, ValidationErrors, Validator};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// Boxed like a route's inline upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Box<Upstream>>,
    #[serde(default, skip_serializing_if = "Plugins::is_empty")]
    pub plugins: Plugins,
}

impl Service {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        if self.name.len() > 256 {
            v.error("name", "must be at most 256 characters");
        }
        match (&self.upstream_id, &self.upstream) {
            (Some(_), Some(_)) => {
                v.error("upstream", "give either upstream_id or upstream, not both")
            }
            (Some(id), None) => crate::registry::check_upstream_ref(&mut v, "upstream_id", id),
            (None, Some(up)) => v.at("upstream", |v| {
                if !up.id.is_empty() {
                    check_id(v, "id", &up.id);
                }
                up.validate_body(v);
            }),
            (None, None) => {}
        }
        v.at("plugins", |v| self.plugins.validate(v));
        v.finish()
    }
}

/// Plugins that run for every route of the instance (APISIX's global rules), below
/// services and routes in the merge rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalRule {
    pub id: String,
    pub plugins: Plugins,
}

impl GlobalRule {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        if self.plugins.is_empty() {
            v.error("plugins", "must name at least one plugin");
        }
        v.at("plugins", |v| self.plugins.validate(v));
        v.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_check_upstream_and_plugins() {
        let fields = |json: &str| -> Vec<String> {
            serde_json::from_str::<Service>(json)
                .unwrap()
                .validate()
                .err()
                .map(|e| e.0.into_iter().map(|e| e.field).collect())
                .unwrap_or_default()
        };
        assert!(fields(r#"{"id":"s","upstream_id":"u","plugins":{"key-auth":{}}}"#).is_empty());
        assert!(fields(r#"{"id":"s"}"#).is_empty());
        assert_eq!(
            fields(r#"{"id":"s","upstream_id":"u","upstream":{"nodes":[{"host":"a","port":1}]}}"#),
            ["upstream"]
        );
        assert_eq!(
            fields(r#"{"id":"s","plugins":{"limit-count":{"count":0,"time_window":1}}}"#),
            ["plugins.limit-count.count"]
        );
        let rule: GlobalRule = serde_json::from_str(r#"{"id":"g","plugins":{}}"#).unwrap();
        assert_eq!(rule.validate().unwrap_err().0[0].field, "plugins");
    }
}
