//! The merge rule: which plugins run for a request, with which configuration, in which
//! order. One function, run by the gateway when it builds a route's chain (and again
//! with the consumer's layers once a request is authenticated) and by the admin when
//! it answers `GET …/routes/{id}/plugins/effective`, so what the API shows is what
//! runs.
//!
//! 1. Layers, lowest precedence first: global rules (by id), the route's service, the
//!    route, then — after authentication — the consumer's group and the consumer. A
//!    plugin configured on several layers runs once, with the configuration of the
//!    highest one; the others are listed as overridden.
//! 2. The instance's plugin template: a plugin it disables does not run anywhere; its
//!    defaults fill the fields a configuration leaves out; its priority replaces the
//!    catalog's.
//! 3. The merged configuration is checked again; any problem is an error of the layer
//!    that gave the plugin (the gateway then does not serve the route).
//! 4. Order: priority, highest first; equal priorities by name.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{find, PluginTemplate, Plugins};
use crate::consumer::{Consumer, ConsumerGroup};
use crate::route::Route;
use crate::service::{GlobalRule, Service};
use crate::validate::{FieldError, Validator};

/// Where a plugin's configuration comes from.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Source {
    GlobalRule(String),
    Service(String),
    Route(String),
    ConsumerGroup(String),
    Consumer(String),
}

impl Source {
    /// The field path of the layer's plugins (`routes[r1].plugins`).
    pub fn path(&self) -> String {
        let (kind, id) = match self {
            Self::GlobalRule(id) => ("global_rules", id),
            Self::Service(id) => ("services", id),
            Self::Route(id) => ("routes", id),
            Self::ConsumerGroup(id) => ("consumer_groups", id),
            Self::Consumer(id) => ("consumers", id),
        };
        format!("{kind}[{id}].plugins")
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, id) = match self {
            Self::GlobalRule(id) => ("global_rule", id),
            Self::Service(id) => ("service", id),
            Self::Route(id) => ("route", id),
            Self::ConsumerGroup(id) => ("consumer_group", id),
            Self::Consumer(id) => ("consumer", id),
        };
        write!(f, "{kind}:{id}")
    }
}

/// One layer of plugins.
#[derive(Debug, Clone)]
pub struct Layer<'a> {
    pub source: Source,
    pub plugins: &'a Plugins,
}

/// The layers of a route: the global rules (in the order given: by id), its service,
/// itself.
pub fn route_layers<'a>(
    globals: impl IntoIterator<Item = &'a GlobalRule>,
    service: Option<&'a Service>,
    route: &'a Route,
) -> Vec<Layer<'a>> {
    let mut layers: Vec<Layer<'a>> = globals
        .into_iter()
        .map(|g| Layer {
            source: Source::GlobalRule(g.id.clone()),
            plugins: &g.plugins,
        })
        .collect();
    layers.extend(service.map(|s| Layer {
        source: Source::Service(s.id.clone()),
        plugins: &s.plugins,
    }));
    layers.push(Layer {
        source: Source::Route(route.id.clone()),
        plugins: &route.plugins,
    });
    layers
}

/// The layers a consumer adds after authentication: its group's, its own.
pub fn consumer_layers<'a>(
    group: Option<&'a ConsumerGroup>,
    consumer: &'a Consumer,
) -> Vec<Layer<'a>> {
    let mut layers: Vec<Layer<'a>> = group
        .map(|g| Layer {
            source: Source::ConsumerGroup(g.id.clone()),
            plugins: &g.plugins,
        })
        .into_iter()
        .collect();
    layers.push(Layer {
        source: Source::Consumer(consumer.id.clone()),
        plugins: &consumer.plugins,
    });
    layers
}

/// A plugin that runs, with its final configuration. Read back (API clients), its
/// name must be one of this build's catalog.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EffectivePlugin {
    pub name: &'static str,
    pub priority: i32,
    pub source: Source,
    pub config: Value,
}

/// Written by hand: a derive would borrow `name` from the input for `'static`.
impl<'de> Deserialize<'de> for EffectivePlugin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Read {
            name: String,
            priority: i32,
            source: Source,
            config: Value,
        }
        let read = Read::deserialize(d)?;
        let info = find(&read.name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown plugin {:?}", read.name)))?;
        Ok(Self {
            name: info.name,
            priority: read.priority,
            source: read.source,
            config: read.config,
        })
    }
}

/// A configured plugin that does not run, and why.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    pub name: String,
    pub source: Source,
    pub reason: String,
}

/// The outcome of the merge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Effective {
    /// In running order.
    pub plugins: Vec<EffectivePlugin>,
    pub skipped: Vec<Skipped>,
    /// Merged configurations that are not valid; non-empty means not servable.
    pub errors: Vec<FieldError>,
}

/// Merges `layers` (lowest precedence first) under `templates`; see the module doc.
pub fn effective<'t>(
    layers: &[Layer<'_>],
    templates: impl Fn(&str) -> Option<&'t PluginTemplate>,
) -> Effective {
    let mut out = Effective::default();
    // name → (layer index, config); later layers replace earlier ones.
    let mut chosen: std::collections::BTreeMap<&str, (usize, &Value)> = Default::default();
    for (i, layer) in layers.iter().enumerate() {
        for (name, config) in &layer.plugins.0 {
            if let Some((before, _)) = chosen.insert(name, (i, config)) {
                out.skipped.push(Skipped {
                    name: name.clone(),
                    source: layers[before].source.clone(),
                    reason: format!("overridden by {}", layer.source),
                });
            }
        }
    }
    for (name, (i, config)) in chosen {
        let source = &layers[i].source;
        let Some(info) = find(name) else {
            out.errors.push(FieldError {
                field: format!("{}.{name}", source.path()),
                message: "unknown plugin".to_owned(),
            });
            continue;
        };
        let template = templates(name);
        if template.is_some_and(|t| !t.enabled) {
            out.skipped.push(Skipped {
                name: name.to_owned(),
                source: source.clone(),
                reason: "disabled by the instance's plugin template".to_owned(),
            });
            continue;
        }
        let config = match (template, config) {
            (Some(t), Value::Object(given)) if !t.defaults.is_empty() => {
                let mut merged = t.defaults.clone();
                merged.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
                Value::Object(merged)
            }
            _ => config.clone(),
        };
        let mut v = Validator::new();
        v.at(&format!("{}.{name}", source.path()), |v| {
            info.check(&config, v)
        });
        if let Err(errors) = v.finish() {
            out.errors.extend(errors.0);
            continue;
        }
        out.plugins.push(EffectivePlugin {
            name: info.name,
            priority: template.and_then(|t| t.priority).unwrap_or(info.priority),
            source: source.clone(),
            config,
        });
    }
    out.plugins
        .sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(b.name)));
    out.skipped.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugins(json: &str) -> Plugins {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn route_over_service_over_global_then_template_order() {
        let global = plugins(r#"{"request-id":{},"limit-count":{"count":100,"time_window":60}}"#);
        let service = plugins(
            r#"{"key-auth":{"header":"x-key"},"limit-count":{"count":10,"time_window":60}}"#,
        );
        let route = plugins(r#"{"key-auth":{}}"#);
        let sources = [
            Source::GlobalRule("g".into()),
            Source::Service("s".into()),
            Source::Route("r".into()),
        ];
        let layers = [
            Layer {
                source: sources[0].clone(),
                plugins: &global,
            },
            Layer {
                source: sources[1].clone(),
                plugins: &service,
            },
            Layer {
                source: sources[2].clone(),
                plugins: &route,
            },
        ];
        let merged = effective(&layers, |_| None);
        assert!(merged.errors.is_empty(), "{:?}", merged.errors);
        let order: Vec<(&str, String)> = merged
            .plugins
            .iter()
            .map(|p| (p.name, p.source.to_string()))
            .collect();
        assert_eq!(
            order,
            [
                ("request-id", "global_rule:g".to_owned()),
                ("key-auth", "route:r".to_owned()),
                ("limit-count", "service:s".to_owned()),
            ]
        );
        // The route's key-auth is whole: fields are not mixed across layers.
        assert_eq!(merged.plugins[1].config, serde_json::json!({}));
        let skipped: Vec<(&str, String)> = merged
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.clone()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("key-auth", "overridden by route:r".to_owned()),
                ("limit-count", "overridden by service:s".to_owned()),
            ]
        );

        // The template: key-auth off, request-id last, limit-count's defaults.
        let templates: Vec<PluginTemplate> = [
            r#"{"id":"key-auth","enabled":false}"#,
            r#"{"id":"request-id","priority":-1}"#,
            r#"{"id":"limit-count","defaults":{"rejected_code":503,"count":1}}"#,
        ]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
        let merged = effective(&layers, |name| templates.iter().find(|t| t.id == name));
        let order: Vec<(&str, i32)> = merged
            .plugins
            .iter()
            .map(|p| (p.name, p.priority))
            .collect();
        assert_eq!(order, [("limit-count", 1002), ("request-id", -1)]);
        // Defaults fill what the config leaves out, never what it gives.
        assert_eq!(merged.plugins[0].config["rejected_code"], 503);
        assert_eq!(merged.plugins[0].config["count"], 10);
        assert!(merged
            .skipped
            .iter()
            .any(|s| s.name == "key-auth" && s.reason.contains("disabled")));
    }

    #[test]
    fn an_invalid_merge_is_an_error_of_its_layer() {
        let route = plugins(r#"{"limit-count":{"count":5,"time_window":60}}"#);
        let source = Source::Route("r".into());
        let template: PluginTemplate =
            serde_json::from_str(r#"{"id":"limit-count","defaults":{"key_type":"header"}}"#)
                .unwrap();
        let merged = effective(
            &[Layer {
                source,
                plugins: &route,
            }],
            |_| Some(&template),
        );
        assert!(merged.plugins.is_empty());
        let fields: Vec<&str> = merged.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["routes[r].plugins.limit-count.header"]);
    }
}
