//! The plugin catalog: every plugin a route may name, with its default priority, the
//! request phases it runs in and the JSON Schema of its configuration, generated from
//! the Rust type that reads it (`schemars`), so the schema cannot drift from what is
//! accepted. One list for the gateway, which orders a route's plugins by these
//! priorities, and for the admin, which serves it to API clients and the console.
//!
//! Priorities follow APISIX's convention and numbers: higher runs first (`request-id`
//! 12015 before `ip-restriction` 3000), so a request refused by a filter still has
//! its id.

use serde::Serialize;

use crate::route::{IpRestriction, Redirect, RequestId};

/// One plugin as the catalog describes it.
#[derive(Debug, Clone, Copy)]
pub struct PluginInfo {
    /// The name a route's `plugins` object uses.
    pub name: &'static str,
    /// The default order: higher runs first.
    pub priority: i32,
    /// The phases it runs in (`docs/dataplane.md` §8).
    pub phases: &'static [&'static str],
    /// One line for lists.
    pub summary: &'static str,
    schema: fn() -> schemars::Schema,
}

impl PluginInfo {
    /// The configuration's JSON Schema (draft 2020-12).
    pub fn schema(&self) -> serde_json::Value {
        (self.schema)().to_value()
    }

    /// The catalog entry as the admin API answers it.
    pub fn describe(&self) -> PluginDescription {
        PluginDescription {
            name: self.name,
            priority: self.priority,
            phases: self.phases,
            summary: self.summary,
            schema: self.schema(),
        }
    }
}

/// A catalog entry with its schema, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDescription {
    pub name: &'static str,
    pub priority: i32,
    pub phases: &'static [&'static str],
    pub summary: &'static str,
    pub schema: serde_json::Value,
}

pub const IP_RESTRICTION: PluginInfo = PluginInfo {
    name: "ip-restriction",
    priority: 3000,
    phases: &["access"],
    summary: "refuses clients by address (allow and deny lists of IPs or CIDRs)",
    schema: schema_of::<IpRestriction>,
};

pub const REQUEST_ID: PluginInfo = PluginInfo {
    name: "request-id",
    priority: 12015,
    phases: &["access", "upstream_request", "response_head"],
    summary: "gives every request an id, sent upstream and back to the client",
    schema: schema_of::<RequestId>,
};

fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

pub const REDIRECT: PluginInfo = PluginInfo {
    name: "redirect",
    priority: 900,
    phases: &["access"],
    summary: "answers with a redirect (HTTP to HTTPS, a new URI, or a regex rewrite of the path)",
    schema: schema_of::<Redirect>,
};

/// Every plugin, by name.
pub const CATALOG: &[PluginInfo] = &[IP_RESTRICTION, REQUEST_ID, REDIRECT];

/// The catalog entry of `name`.
pub fn find(name: &str) -> Option<&'static PluginInfo> {
    CATALOG.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Plugins;

    #[test]
    fn the_catalog_lists_exactly_the_plugins_a_route_accepts() {
        let every = Plugins {
            ip_restriction: Some(IpRestriction::default()),
            request_id: Some(serde_json::from_str("{}").unwrap()),
            redirect: Some(Redirect {
                http_to_https: true,
                ..Redirect::default()
            }),
        };
        let value = serde_json::to_value(&every).unwrap();
        let mut accepted: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        accepted.sort_unstable();
        let mut listed: Vec<&str> = CATALOG.iter().map(|p| p.name).collect();
        listed.sort_unstable();
        assert_eq!(accepted, listed);
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
        assert!(find("request-id").is_some() && find("nope").is_none());
    }
}
