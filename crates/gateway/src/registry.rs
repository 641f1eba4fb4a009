//! The registered service nodes a gateway node follows (requirements N4, N6, D3).
//!
//! The config loop watches the store's registry prefix (every namespace: the node's
//! namespace can change with its instance's binding) and applies each update here;
//! the compiler asks for the nodes of a service in the instance's namespace when it
//! builds an upstream in registry mode (`discovery`, or `upstream_id: "lb://orders"`),
//! and rebuilds only the pools whose service changed. When the store is unreachable the
//! watcher delivers nothing and the last known nodes stay; the node's snapshot file
//! keeps them too, so a cold start without the store serves them.

use std::collections::{BTreeMap, BTreeSet};

use model::registry::{Discovery, RegisteredNode};
use model::upstream::UpstreamNode;
use store::keys::Keyspace;
use store::watch::Update;
use store::WatchEvent;

/// The registry as last delivered by the watch, and what changed since the last build.
#[derive(Debug, Clone)]
pub struct RegistryView {
    keyspace: Keyspace,
    /// Store key → node; ordered by key, so a service's nodes are one range.
    nodes: BTreeMap<String, RegisteredNode>,
    /// (namespace, service) whose nodes changed since [`RegistryView::take_changed`].
    changed: BTreeSet<(String, String)>,
}

impl RegistryView {
    pub fn new(keyspace: Keyspace) -> Self {
        Self {
            keyspace,
            nodes: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }

    /// Applies a watch update of the registry prefix; false when no node changed.
    pub fn apply(&mut self, update: Update) -> bool {
        let before = self.changed.len();
        match update {
            Update::Reset(listing) => {
                let mut gone: BTreeSet<String> = self.nodes.keys().cloned().collect();
                for kv in listing.kvs {
                    gone.remove(&kv.key);
                    self.put(kv.key, &kv.value);
                }
                for key in gone {
                    self.delete(&key);
                }
            }
            Update::Changes(batch) => {
                for event in batch.events {
                    match event {
                        WatchEvent::Put(kv) => self.put(kv.key, &kv.value),
                        WatchEvent::Delete { key, .. } => self.delete(&key),
                    }
                }
            }
        }
        self.changed.len() > before
    }

    fn put(&mut self, key: String, value: &[u8]) {
        let Some((namespace, service, _)) = self.keyspace.parse_registry(&key) else {
            return;
        };
        let changed = (namespace.to_owned(), service.to_owned());
        let node = match serde_json::from_slice::<RegisteredNode>(value) {
            Ok(node) if node.namespace == changed.0 && node.service == changed.1 => node,
            Ok(_) => {
                tracing::warn!(%key, "registry entry names another service than its key; ignored");
                self.delete(&key);
                return;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "unreadable registry entry; ignored");
                self.delete(&key);
                return;
            }
        };
        // A registration renewed with the same content changes no pool.
        if self.nodes.get(&key) == Some(&node) {
            return;
        }
        self.nodes.insert(key, node);
        self.changed.insert(changed);
    }

    fn delete(&mut self, key: &str) {
        if let Some(node) = self.nodes.remove(key) {
            self.changed.insert((node.namespace, node.service));
        }
    }

    /// The services whose nodes changed since the last call.
    pub(crate) fn take_changed(&mut self) -> BTreeSet<(String, String)> {
        std::mem::take(&mut self.changed)
    }

    /// The registered nodes of `service` in `namespace`, in node-id order.
    pub fn nodes<'a>(
        &'a self,
        namespace: &str,
        service: &str,
    ) -> impl Iterator<Item = &'a RegisteredNode> + 'a {
        let prefix = self.keyspace.registry_node(namespace, service, "");
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .map(|(_, node)| node)
    }

    /// The nodes an upstream in registry mode gets in `namespace`: its service's nodes
    /// that carry every metadata pair it selects.
    pub fn upstream_nodes(&self, namespace: &str, discovery: &Discovery) -> Vec<UpstreamNode> {
        self.nodes(namespace, &discovery.service)
            .filter(|node| node.matches(&discovery.metadata))
            .map(|node| UpstreamNode {
                host: node.host.clone(),
                port: i64::from(node.port),
                weight: node.weight,
            })
            .collect()
    }

    /// Every node held as its store key and value (for the snapshot file).
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        self.nodes
            .iter()
            .map(|(key, node)| {
                let value = serde_json::to_vec(node).expect("registry nodes always serialise");
                (key.clone(), value)
            })
            .collect()
    }

    /// Number of registered nodes held (all namespaces).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::{KeyValue, Listing, WatchBatch};

    fn node(ns: &str, svc: &str, id: &str, version: &str) -> (String, Vec<u8>) {
        let node = RegisteredNode {
            namespace: ns.into(),
            service: svc.into(),
            node_id: id.into(),
            host: "10.0.0.1".into(),
            port: id.len() as u16,
            weight: 1,
            metadata: [("version".to_owned(), version.to_owned())].into(),
            lease: "7".into(),
            ttl_secs: 30,
            registered_at_ms: 1,
        };
        (
            Keyspace::default().registry_node(ns, svc, id),
            serde_json::to_vec(&node).unwrap(),
        )
    }

    fn kv((key, value): (String, Vec<u8>)) -> KeyValue {
        KeyValue {
            key,
            value,
            mod_revision: 1,
            lease: None,
        }
    }

    #[test]
    fn follows_resets_and_changes_per_service() {
        let mut view = RegistryView::new(Keyspace::default());
        let listing = Listing {
            revision: 3,
            kvs: vec![
                kv(node("a", "orders", "n1", "v1")),
                kv(node("a", "orders", "n2", "v2")),
                kv(node("a", "orders-x", "n3", "v1")),
                kv(node("b", "orders", "n4", "v1")),
            ],
        };
        assert!(view.apply(Update::Reset(listing.clone())));
        assert_eq!(view.take_changed().len(), 3);
        // The same listing again (a relist after a reconnect) changes nothing.
        assert!(!view.apply(Update::Reset(listing)));
        let ids: Vec<_> = view
            .nodes("a", "orders")
            .map(|n| n.node_id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["n1", "n2"],
            "orders-x and namespace b are not orders of a"
        );
        let v2 = Discovery {
            metadata: [("version".to_owned(), "v2".to_owned())].into(),
            ..Discovery::of_service("orders")
        };
        assert_eq!(view.upstream_nodes("a", &v2).len(), 1);

        let (gone, _) = node("a", "orders", "n1", "v1");
        assert!(view.apply(Update::Changes(WatchBatch {
            revision: 4,
            events: vec![WatchEvent::Delete {
                key: gone,
                mod_revision: 4
            }],
        })));
        assert_eq!(
            view.take_changed(),
            [("a".to_owned(), "orders".to_owned())].into()
        );
        assert_eq!(view.nodes("a", "orders").count(), 1);
    }

    #[test]
    fn entries_that_lie_about_their_place_are_ignored() {
        let mut view = RegistryView::new(Keyspace::default());
        let (_, value) = node("a", "orders", "n1", "v1");
        let key = Keyspace::default().registry_node("b", "payments", "n1");
        assert!(!view.apply(Update::Reset(Listing {
            revision: 1,
            kvs: vec![
                kv((key, value)),
                kv((
                    Keyspace::default().registry_node("a", "s", "n"),
                    b"not json".to_vec()
                ))
            ],
        })));
        assert!(view.is_empty());
    }
}
