//! The closed set of resource kinds an instance's config is made of.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::certificate::Certificate;
use crate::consumer::{Consumer, ConsumerGroup};
use crate::json::JsonError;
use crate::plugin::PluginTemplate;
use crate::route::Route;
use crate::service::{GlobalRule, Service};
use crate::upstream::Upstream;
use crate::validate::ValidationErrors;

/// A kind of resource; its plural name is the URL segment and the store key segment.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Routes,
    Upstreams,
    Certificates,
    Services,
    Consumers,
    ConsumerGroups,
    GlobalRules,
    PluginTemplates,
}

impl ResourceKind {
    /// Every kind after every kind it may name (a route its upstream and service, a
    /// service its upstream, a consumer its group, plugins upstreams): writes of many
    /// objects create and update in this order and delete in the reverse one.
    pub const DEPENDENCY_ORDER: [ResourceKind; 8] = [
        Self::Upstreams,
        Self::Certificates,
        Self::ConsumerGroups,
        Self::Services,
        Self::PluginTemplates,
        Self::GlobalRules,
        Self::Consumers,
        Self::Routes,
    ];

    pub const ALL: [ResourceKind; 8] = [
        Self::Routes,
        Self::Upstreams,
        Self::Certificates,
        Self::Services,
        Self::Consumers,
        Self::ConsumerGroups,
        Self::GlobalRules,
        Self::PluginTemplates,
    ];

    /// The plural segment used in URLs and store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routes => "routes",
            Self::Upstreams => "upstreams",
            Self::Certificates => "certificates",
            Self::Services => "services",
            Self::Consumers => "consumers",
            Self::ConsumerGroups => "consumer_groups",
            Self::GlobalRules => "global_rules",
            Self::PluginTemplates => "plugin_templates",
        }
    }

    /// The singular noun, for messages ("route \"r1\" does not exist").
    pub fn singular(self) -> &'static str {
        match self {
            Self::Routes => "route",
            Self::Upstreams => "upstream",
            Self::Certificates => "certificate",
            Self::Services => "service",
            Self::Consumers => "consumer",
            Self::ConsumerGroups => "consumer group",
            Self::GlobalRules => "global rule",
            Self::PluginTemplates => "plugin template",
        }
    }

    /// Parses a value of this kind from JSON, refusing unknown fields.
    pub fn parse(self, json: &[u8]) -> Result<Resource, JsonError> {
        Ok(match self {
            Self::Routes => Resource::Route(crate::json::parse(json)?),
            Self::Upstreams => Resource::Upstream(crate::json::parse(json)?),
            Self::Certificates => Resource::Certificate(crate::json::parse(json)?),
            Self::Services => Resource::Service(crate::json::parse(json)?),
            Self::Consumers => Resource::Consumer(crate::json::parse(json)?),
            Self::ConsumerGroups => Resource::ConsumerGroup(crate::json::parse(json)?),
            Self::GlobalRules => Resource::GlobalRule(crate::json::parse(json)?),
            Self::PluginTemplates => Resource::PluginTemplate(crate::json::parse(json)?),
        })
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown resource segment in a URL or key.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown resource kind {0:?}: expected routes, upstreams, certificates, services, \
     consumers, consumer_groups, global_rules or plugin_templates"
)]
pub struct UnknownKind(pub String);

impl FromStr for ResourceKind {
    type Err = UnknownKind;

    /// Accepts the plural and, as the seed writes it, the singular.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "routes" | "route" => Ok(Self::Routes),
            "upstreams" | "upstream" => Ok(Self::Upstreams),
            "certificates" | "certificate" | "ssls" | "ssl" => Ok(Self::Certificates),
            "services" | "service" => Ok(Self::Services),
            "consumers" | "consumer" => Ok(Self::Consumers),
            "consumer_groups" | "consumer_group" => Ok(Self::ConsumerGroups),
            "global_rules" | "global_rule" => Ok(Self::GlobalRules),
            "plugin_templates" | "plugin_template" => Ok(Self::PluginTemplates),
            other => Err(UnknownKind(other.to_owned())),
        }
    }
}

/// One resource of any kind.
// Values are short-lived (one request body, one snapshot entry): boxing the larger
// variants would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Resource {
    Route(Route),
    Upstream(Upstream),
    Certificate(Certificate),
    Service(Service),
    Consumer(Consumer),
    ConsumerGroup(ConsumerGroup),
    GlobalRule(GlobalRule),
    PluginTemplate(PluginTemplate),
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Route(_) => ResourceKind::Routes,
            Self::Upstream(_) => ResourceKind::Upstreams,
            Self::Certificate(_) => ResourceKind::Certificates,
            Self::Service(_) => ResourceKind::Services,
            Self::Consumer(_) => ResourceKind::Consumers,
            Self::ConsumerGroup(_) => ResourceKind::ConsumerGroups,
            Self::GlobalRule(_) => ResourceKind::GlobalRules,
            Self::PluginTemplate(_) => ResourceKind::PluginTemplates,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Route(r) => &r.id,
            Self::Upstream(u) => &u.id,
            Self::Certificate(c) => &c.id,
            Self::Service(s) => &s.id,
            Self::Consumer(c) => &c.id,
            Self::ConsumerGroup(g) => &g.id,
            Self::GlobalRule(g) => &g.id,
            Self::PluginTemplate(t) => &t.id,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        match self {
            Self::Route(r) => r.validate(),
            Self::Upstream(u) => u.validate(),
            Self::Certificate(c) => c.validate(),
            Self::Service(s) => s.validate(),
            Self::Consumer(c) => c.validate(),
            Self::ConsumerGroup(g) => g.validate(),
            Self::GlobalRule(g) => g.validate(),
            Self::PluginTemplate(t) => t.validate(),
        }
    }

    /// The form an API may show: certificate keys and credentials' secrets removed.
    pub fn redacted(&self) -> Self {
        match self {
            Self::Certificate(c) => Self::Certificate(c.redacted()),
            Self::Consumer(c) => Self::Consumer(c.redacted()),
            other => other.clone(),
        }
    }

    /// The other resources this one names, each with the field that names it: they
    /// must exist when it is written, and cannot be deleted while it names them.
    pub fn references(&self) -> Vec<(String, ResourceKind, String)> {
        let mut refs = Vec::new();
        let mut push = |field: &str, kind, id: &Option<String>| {
            // `lb://service` names a registered service, not a resource.
            if let Some(id) = id
                .as_ref()
                .filter(|id| crate::registry::lb_service(id).is_none())
            {
                refs.push((field.to_owned(), kind, id.clone()));
            }
        };
        let plugins = match self {
            Self::Route(r) => {
                push("upstream_id", ResourceKind::Upstreams, &r.upstream_id);
                push("service_id", ResourceKind::Services, &r.service_id);
                Some(&r.plugins)
            }
            Self::Service(s) => {
                push("upstream_id", ResourceKind::Upstreams, &s.upstream_id);
                Some(&s.plugins)
            }
            Self::Consumer(c) => {
                push("group_id", ResourceKind::ConsumerGroups, &c.group_id);
                Some(&c.plugins)
            }
            Self::ConsumerGroup(g) => Some(&g.plugins),
            Self::GlobalRule(g) => Some(&g.plugins),
            _ => None,
        };
        if let Some(plugins) = plugins {
            for (field, id) in plugins.upstream_refs() {
                refs.push((field, ResourceKind::Upstreams, id));
            }
        }
        refs
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("model types always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_and_plural_segments_parse() {
        for (s, k) in [
            ("route", ResourceKind::Routes),
            ("routes", ResourceKind::Routes),
            ("upstream", ResourceKind::Upstreams),
            ("certificates", ResourceKind::Certificates),
        ] {
            assert_eq!(s.parse::<ResourceKind>().unwrap(), k);
        }
        assert!("widgets".parse::<ResourceKind>().is_err());
    }

    #[test]
    fn parse_uses_the_kind_not_a_guess() {
        let r = ResourceKind::Routes
            .parse(br#"{"id":"r","paths":["/"],"upstream_id":"u"}"#)
            .unwrap();
        assert_eq!(r.kind(), ResourceKind::Routes);
        assert_eq!(r.id(), "r");
        assert!(ResourceKind::Upstreams
            .parse(br#"{"id":"r","paths":["/"],"upstream_id":"u"}"#)
            .is_err());
    }
}
