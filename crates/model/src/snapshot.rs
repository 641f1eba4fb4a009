//! A whole instance's config at one admin revision, and the checks across resources.

use serde::{Deserialize, Serialize};

use crate::certificate::Certificate;
use crate::consumer::{Consumer, ConsumerGroup};
use crate::plugin::PluginTemplate;
use crate::resource::Resource;
use crate::route::Route;
use crate::service::{GlobalRule, Service};
use crate::upstream::Upstream;
use crate::validate::{FieldError, ValidationErrors};

/// Admin revision of an instance's config: bumped by every accepted change.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Everything an instance serves, as the admin's DB has it at `revision`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub revision: Revision,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Consumer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumer_groups: Vec<ConsumerGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_rules: Vec<GlobalRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugin_templates: Vec<PluginTemplate>,
}

impl Snapshot {
    pub fn resources(&self) -> impl Iterator<Item = Resource> + '_ {
        self.routes
            .iter()
            .cloned()
            .map(Resource::Route)
            .chain(self.upstreams.iter().cloned().map(Resource::Upstream))
            .chain(self.certificates.iter().cloned().map(Resource::Certificate))
            .chain(self.services.iter().cloned().map(Resource::Service))
            .chain(self.consumers.iter().cloned().map(Resource::Consumer))
            .chain(
                self.consumer_groups
                    .iter()
                    .cloned()
                    .map(Resource::ConsumerGroup),
            )
            .chain(self.global_rules.iter().cloned().map(Resource::GlobalRule))
            .chain(
                self.plugin_templates
                    .iter()
                    .cloned()
                    .map(Resource::PluginTemplate),
            )
    }

    pub fn push(&mut self, resource: Resource) {
        match resource {
            Resource::Route(r) => self.routes.push(r),
            Resource::Upstream(u) => self.upstreams.push(u),
            Resource::Certificate(c) => self.certificates.push(c),
            Resource::Service(x) => self.services.push(x),
            Resource::Consumer(x) => self.consumers.push(x),
            Resource::ConsumerGroup(x) => self.consumer_groups.push(x),
            Resource::GlobalRule(x) => self.global_rules.push(x),
            Resource::PluginTemplate(x) => self.plugin_templates.push(x),
        }
    }

    /// Problems that involve more than one resource: references to resources that do
    /// not exist (a route's upstream or service, …), and duplicate ids.
    pub fn check_references(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        let present: std::collections::HashSet<(crate::resource::ResourceKind, String)> = self
            .resources()
            .map(|r| (r.kind(), r.id().to_owned()))
            .collect();
        for resource in self.resources() {
            for (field, kind, id) in resource.references() {
                if !present.contains(&(kind, id.to_owned())) {
                    errors.push(FieldError {
                        field: format!("{}[{}].{field}", resource.kind(), resource.id()),
                        message: format!("{} {id:?} does not exist", kind.singular()),
                    });
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in self.resources() {
            if !seen.insert((r.kind(), r.id().to_owned())) {
                errors.push(FieldError {
                    field: format!("{}[{}].id", r.kind(), r.id()),
                    message: "is used twice".into(),
                });
            }
        }
        ValidationErrors(errors).into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangling_upstream_and_duplicates_are_found() {
        let snap: Snapshot = serde_json::from_str(
            r#"{"revision":3,
                "routes":[{"id":"r","paths":["/"],"upstream_id":"nope"},
                          {"id":"r","paths":["/"],"upstream_id":"u"}],
                "upstreams":[{"id":"u","nodes":[{"host":"a","port":1}]}]}"#,
        )
        .unwrap();
        let errs = snap.check_references().unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["routes[r].upstream_id", "routes[r].id"]);
        assert_eq!(snap.revision, Revision(3));
    }
}
