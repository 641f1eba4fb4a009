//! The one place store keys are spelled (see `ARCHITECTURE.md`, "Key layout").
//!
//! `{root}/instances/{instance}/{kind}/{id}` holds a resource's JSON,
//! `{root}/instances/{instance}/meta` the admin revision the content corresponds to,
//! `{root}/instances/{instance}/binding` the namespace the instance is bound to, and
//! `{root}/instances/{instance}/nodes/{node_id}` a gateway node's heartbeat (leased), and
//! `{root}/registry/{namespace}/{service}/{node_id}` a registered service node (leased,
//! `model::registry`).

use model::resource::ResourceKind;

/// Root of Portico's keys in a store; `/portico` unless several deployments share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    root: String,
}

impl Default for Keyspace {
    fn default() -> Self {
        Self {
            root: "/portico".to_owned(),
        }
    }
}

/// What a key under an instance's prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceKey<'a> {
    Meta,
    Binding,
    Resource { kind: ResourceKind, id: &'a str },
    Node { node_id: &'a str },
}

impl Keyspace {
    /// `root` must start with `/` and not end with one, e.g. `/portico-staging`.
    pub fn new(root: &str) -> Result<Self, String> {
        if !root.starts_with('/') || root.ends_with('/') || root.contains("//") {
            return Err("the root must look like /name (no trailing slash)".to_owned());
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// Everything of one instance; ends with `/` so `a` never matches `ab`.
    pub fn instance_prefix(&self, instance: &str) -> String {
        format!("{}/instances/{instance}/", self.root)
    }

    pub fn meta(&self, instance: &str) -> String {
        format!("{}meta", self.instance_prefix(instance))
    }

    pub fn binding(&self, instance: &str) -> String {
        format!("{}binding", self.instance_prefix(instance))
    }

    pub fn kind_prefix(&self, instance: &str, kind: ResourceKind) -> String {
        format!("{}{}/", self.instance_prefix(instance), kind.as_str())
    }

    pub fn resource(&self, instance: &str, kind: ResourceKind, id: &str) -> String {
        format!("{}{id}", self.kind_prefix(instance, kind))
    }

    pub fn nodes_prefix(&self, instance: &str) -> String {
        format!("{}nodes/", self.instance_prefix(instance))
    }

    pub fn node(&self, instance: &str, node_id: &str) -> String {
        format!("{}{node_id}", self.nodes_prefix(instance))
    }

    /// Every registered service node of every namespace.
    pub fn registry_prefix(&self) -> String {
        format!("{}/registry/", self.root)
    }

    /// The registered nodes of one namespace.
    pub fn registry_namespace_prefix(&self, namespace: &str) -> String {
        format!("{}{namespace}/", self.registry_prefix())
    }

    /// One registered node of a service in a namespace.
    pub fn registry_node(&self, namespace: &str, service: &str, node_id: &str) -> String {
        format!(
            "{}{service}/{node_id}",
            self.registry_namespace_prefix(namespace)
        )
    }

    /// The namespace, service and node id of a key under [`Self::registry_prefix`];
    /// `None` for anything else.
    pub fn parse_registry<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str, &'k str)> {
        let rest = key
            .strip_prefix(self.root.as_str())?
            .strip_prefix("/registry/")?;
        let mut parts = rest.split('/');
        let (namespace, service, node) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || namespace.is_empty() || service.is_empty() || node.is_empty() {
            return None;
        }
        Some((namespace, service, node))
    }

    /// Classifies a key found under `instance_prefix(instance)`; `None` for foreign keys.
    pub fn parse<'k>(&self, instance: &str, key: &'k str) -> Option<InstanceKey<'k>> {
        let prefix = self.instance_prefix(instance);
        let rest = key.strip_prefix(prefix.as_str())?;
        match rest {
            "meta" => return Some(InstanceKey::Meta),
            "binding" => return Some(InstanceKey::Binding),
            _ => {}
        }
        let (segment, id) = rest.split_once('/')?;
        if id.is_empty() || id.contains('/') {
            return None;
        }
        if segment == "nodes" {
            return Some(InstanceKey::Node { node_id: id });
        }
        let kind = ResourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == segment)?;
        Some(InstanceKey::Resource { kind, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let ks = Keyspace::default();
        assert_eq!(
            ks.resource("instance_a", ResourceKind::Routes, "r1"),
            "/portico/instances/instance_a/routes/r1"
        );
        assert_eq!(ks.meta("i"), "/portico/instances/i/meta");
        assert_eq!(ks.node("i", "n1"), "/portico/instances/i/nodes/n1");
        let key = ks.resource("i", ResourceKind::Upstreams, "u");
        assert_eq!(
            ks.parse("i", &key),
            Some(InstanceKey::Resource {
                kind: ResourceKind::Upstreams,
                id: "u"
            })
        );
        assert_eq!(ks.parse("i", &ks.meta("i")), Some(InstanceKey::Meta));
        assert_eq!(ks.binding("i"), "/portico/instances/i/binding");
        assert_eq!(ks.parse("i", &ks.binding("i")), Some(InstanceKey::Binding));
        assert_eq!(ks.parse("i", "/portico/instances/ii/meta"), None);
        assert_eq!(ks.parse("i", "/portico/instances/i/widgets/x"), None);
        let custom = Keyspace::new("/staging").unwrap();
        assert_eq!(custom.meta("i"), "/staging/instances/i/meta");
        assert!(Keyspace::new("staging/").is_err());
        let node = ks.registry_node("team-a", "orders", "10.0.0.1:80");
        assert_eq!(node, "/portico/registry/team-a/orders/10.0.0.1:80");
        assert!(node.starts_with(&ks.registry_namespace_prefix("team-a")));
        assert!(node.starts_with(&ks.registry_prefix()));
        assert_eq!(
            ks.parse_registry(&node),
            Some(("team-a", "orders", "10.0.0.1:80"))
        );
        assert_eq!(ks.parse_registry("/portico/registry/a/b"), None);
        assert_eq!(ks.parse_registry("/portico/registry/a/b/c/d"), None);
        assert_eq!(ks.parse_registry("/other/registry/a/b/c"), None);
    }
}
