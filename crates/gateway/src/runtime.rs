//! From the instance's objects in the store to the immutable config requests read.
//!
//! [`ConfigObjects`] mirrors the instance's config keys as the watch delivers them (raw
//! bytes, nothing interpreted); [`build`] is the one function that compiles them into a
//! [`RuntimeConfig`]: the router and the upstream pools. Startup is a build from the
//! first listing, every reload a build from the updated objects: one code path. An object
//! that does not parse or validate, or a route whose upstream is missing or unusable, is
//! left out and reported as a [`Problem`]; the rest is served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use model::certificate::Certificate;
use model::cluster::InstanceMeta;
use model::resource::ResourceKind;
use model::route::Route;
use model::snapshot::Revision;
use model::upstream::Upstream;
use store::keys::{InstanceKey, Keyspace};
use store::watch::Update;
use store::WatchEvent;

use crate::balancer::UpstreamPool;
use crate::router::Router;

/// What requests read; never mutated after it is built.
#[derive(Debug, Default)]
pub struct RuntimeConfig {
    /// Admin revision of the content (the `meta` key); 0 before the first config.
    pub revision: Revision,
    pub router: Router,
    /// Number of stand-alone upstreams served (inline ones are counted with routes).
    pub upstreams: usize,
    /// Valid certificates; kept for TLS termination, which comes with a later issue.
    pub certificates: usize,
}

/// Something in the store that is not served as written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The store key of the object.
    pub key: String,
    pub reason: String,
}

/// An instance's config keys and their raw values, as last delivered by the watch.
///
/// Heartbeats (`nodes/`) and keys the keyspace does not know are not config and are
/// never held, so a heartbeat never causes a rebuild.
#[derive(Debug, Clone)]
pub struct ConfigObjects {
    keyspace: Keyspace,
    instance: String,
    meta: Option<Vec<u8>>,
    /// Store key → (kind, id, value); ordered by key so builds are deterministic.
    resources: BTreeMap<String, (ResourceKind, String, Vec<u8>)>,
}

impl ConfigObjects {
    /// No objects yet: builds the empty config that serves 404 to everything.
    pub fn new(keyspace: Keyspace, instance: impl Into<String>) -> Self {
        Self {
            keyspace,
            instance: instance.into(),
            meta: None,
            resources: BTreeMap::new(),
        }
    }

    /// Applies a watch update; false when it changed no config key.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Reset(listing) => {
                self.meta = None;
                self.resources.clear();
                for kv in listing.kvs {
                    self.put(kv.key, kv.value);
                }
                // Even an empty listing replaces what was held: rebuild.
                true
            }
            Update::Changes(batch) => {
                let mut changed = false;
                for event in batch.events {
                    changed |= match event {
                        WatchEvent::Put(kv) => self.put(kv.key, kv.value),
                        WatchEvent::Delete { key, .. } => self.delete(&key),
                    };
                }
                changed
            }
        }
    }

    /// Sets one key; false when the key is not config.
    pub fn put(&mut self, key: String, value: Vec<u8>) -> bool {
        match self.keyspace.parse(&self.instance, &key) {
            Some(InstanceKey::Meta) => self.meta = Some(value),
            Some(InstanceKey::Resource { kind, id }) => {
                let id = id.to_owned();
                self.resources.insert(key, (kind, id, value));
            }
            Some(InstanceKey::Node { .. }) | None => return false,
        }
        true
    }

    /// Removes one key; false when the key is not config.
    pub fn delete(&mut self, key: &str) -> bool {
        match self.keyspace.parse(&self.instance, key) {
            Some(InstanceKey::Meta) => self.meta = None,
            Some(InstanceKey::Resource { .. }) => {
                self.resources.remove(key);
            }
            Some(InstanceKey::Node { .. }) | None => return false,
        }
        true
    }

    /// Number of config keys held (meta included).
    pub fn len(&self) -> usize {
        self.resources.len() + usize::from(self.meta.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compiles all of an instance's objects into a runtime config, reporting what it
/// left out. Resolves upstream host names, so it may block: call it off the async
/// workers.
pub fn build(objects: &ConfigObjects) -> (RuntimeConfig, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut report = |key: &str, reason: String| {
        problems.push(Problem {
            key: key.to_owned(),
            reason,
        })
    };

    let revision = match &objects.meta {
        None => Revision(0),
        Some(raw) => match serde_json::from_slice::<InstanceMeta>(raw) {
            Ok(meta) => meta.revision,
            Err(e) => {
                report(
                    &objects.keyspace.meta(&objects.instance),
                    format!("unreadable meta: {e}"),
                );
                Revision(0)
            }
        },
    };

    // Routes are only collected here and resolved below, once every upstream is known.
    let mut upstreams: HashMap<&str, Arc<UpstreamPool>> = HashMap::new();
    let mut routes = Vec::new();
    let mut certificates = 0;
    for (key, (kind, id, value)) in &objects.resources {
        match kind {
            ResourceKind::Upstreams => {
                let upstream =
                    match parse::<Upstream>(value, id, |u| &u.id, Upstream::validate, unreadable) {
                        Ok(upstream) => upstream,
                        Err(reason) => {
                            report(key, reason);
                            continue;
                        }
                    };
                match UpstreamPool::build(&upstream) {
                    Ok(built) => {
                        for warning in built.warnings {
                            report(key, warning);
                        }
                        upstreams.insert(id, Arc::new(built.pool));
                    }
                    Err(e) => report(key, e.to_string()),
                }
            }
            ResourceKind::Routes => {
                match parse::<Route>(value, id, |r| &r.id, Route::validate, unreadable) {
                    // Disabled routes are valid config that is not served.
                    Ok(route) if !route.enabled => {}
                    Ok(route) => routes.push((key, route)),
                    Err(reason) => report(key, reason),
                }
            }
            // Checked now so problems surface early; served once TLS termination lands.
            ResourceKind::Certificates => {
                match parse::<Certificate>(
                    value,
                    id,
                    |c| &c.id,
                    Certificate::validate,
                    unreadable_secret,
                ) {
                    Ok(_) => certificates += 1,
                    Err(reason) => report(key, reason),
                }
            }
        }
    }

    let mut table = Vec::with_capacity(routes.len());
    for (key, route) in routes {
        let pool = match (&route.upstream_id, &route.upstream) {
            (Some(id), _) => match upstreams.get(id.as_str()) {
                Some(pool) => pool.clone(),
                None => {
                    report(key, format!("upstream {id:?} is missing or unusable"));
                    continue;
                }
            },
            // An inline upstream is a pool of its own.
            (None, Some(inline)) => match UpstreamPool::build(inline) {
                Ok(built) => {
                    for warning in built.warnings {
                        report(key, format!("upstream.{warning}"));
                    }
                    Arc::new(built.pool)
                }
                Err(e) => {
                    report(key, format!("upstream: {e}"));
                    continue;
                }
            },
            // Validation refuses this; kept total rather than trusting it.
            (None, None) => {
                report(key, "no upstream".to_owned());
                continue;
            }
        };
        table.push((route, pool));
    }

    let config = RuntimeConfig {
        revision,
        router: Router::build(table),
        upstreams: upstreams.len(),
        certificates,
    };
    (config, problems)
}

/// Parses and validates one object; its `id` must be the one its key names, since
/// routes find upstreams by id and two keys must never claim the same one.
fn parse<T: serde::de::DeserializeOwned>(
    value: &[u8],
    key_id: &str,
    id_of: impl FnOnce(&T) -> &String,
    validate: impl FnOnce(&T) -> Result<(), model::validate::ValidationErrors>,
    unreadable: fn(&serde_json::Error) -> String,
) -> Result<T, String> {
    let parsed: T = serde_json::from_slice(value).map_err(|e| unreadable(&e))?;
    validate(&parsed).map_err(|e| format!("invalid: {e}"))?;
    let id = id_of(&parsed);
    if id != key_id {
        return Err(format!("its id {id:?} differs from the key's {key_id:?}"));
    }
    Ok(parsed)
}

fn unreadable(e: &serde_json::Error) -> String {
    format!("unreadable: {e}")
}

/// For objects holding secrets: serde quotes the offending value in "invalid type" and
/// "invalid value" messages (a private key, maybe), so those say only where it failed.
fn unreadable_secret(e: &serde_json::Error) -> String {
    let message = e.to_string();
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        format!(
            "unreadable: a value has the wrong type or form at line {}, column {}",
            e.line(),
            e.column()
        )
    } else {
        unreadable(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Match;
    use store::{KeyValue, Listing, WatchBatch};

    const PREFIX: &str = "/portico/instances/i/";

    fn objects(items: &[(&str, &str)]) -> ConfigObjects {
        let mut objects = ConfigObjects::new(Keyspace::default(), "i");
        for (k, v) in items {
            objects.put(format!("{PREFIX}{k}"), v.as_bytes().to_vec());
        }
        objects
    }

    fn routed(config: &RuntimeConfig, path: &str) -> Option<String> {
        match config.router.lookup("h", path, "GET") {
            Match::Found(t) => Some(t.route_id.clone()),
            _ => None,
        }
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: format!("{PREFIX}{key}"),
            value: value.as_bytes().to_vec(),
            mod_revision: 1,
            lease: None,
        }
    }

    #[test]
    fn bad_objects_are_skipped_and_reported_the_rest_serves() {
        let objects = objects(&[
            ("meta", r#"{"revision":7}"#),
            (
                "upstreams/up",
                r#"{"id":"up","nodes":[{"host":"127.0.0.1","port":8080}]}"#,
            ),
            (
                "upstreams/bad",
                r#"{"id":"bad","nodes":[{"host":"127.0.0.1","port":0}]}"#,
            ),
            (
                "upstreams/tls",
                r#"{"id":"tls","scheme":"https","nodes":[{"host":"127.0.0.1","port":443}]}"#,
            ),
            (
                "upstreams/renamed",
                r#"{"id":"other","nodes":[{"host":"127.0.0.1","port":1}]}"#,
            ),
            (
                "routes/good",
                r#"{"id":"good","paths":["/g"],"upstream_id":"up"}"#,
            ),
            ("routes/junk", "{not json"),
            (
                "routes/unknown-field",
                r#"{"id":"unknown-field","paths":["/u"],"upstream_id":"up","colour":"red"}"#,
            ),
            (
                "routes/invalid",
                r#"{"id":"invalid","paths":["no-slash"],"upstream_id":"up"}"#,
            ),
            (
                "routes/dangling",
                r#"{"id":"dangling","paths":["/d"],"upstream_id":"bad"}"#,
            ),
            (
                "routes/to-tls",
                r#"{"id":"to-tls","paths":["/t"],"upstream_id":"tls"}"#,
            ),
            (
                "routes/off",
                r#"{"id":"off","paths":["/o"],"upstream_id":"up","enabled":false}"#,
            ),
            (
                "routes/inline",
                r#"{"id":"inline","paths":["/i"],"upstream":{"nodes":[{"host":"127.0.0.1","port":9}]}}"#,
            ),
            (
                "certificates/broken",
                r#"{"id":"broken","cert":"x","key":"y"}"#,
            ),
        ]);
        let (config, problems) = build(&objects);
        assert_eq!(config.revision, Revision(7));
        assert_eq!(config.router.len(), 2);
        assert_eq!(config.upstreams, 1);
        assert_eq!(config.certificates, 0);
        assert_eq!(routed(&config, "/g").as_deref(), Some("good"));
        assert_eq!(routed(&config, "/i").as_deref(), Some("inline"));
        for path in ["/o", "/d", "/t", "/u"] {
            assert_eq!(routed(&config, path), None, "{path}");
        }
        let mut reported: Vec<&str> = problems
            .iter()
            .map(|p| p.key.strip_prefix(PREFIX).unwrap())
            .collect();
        reported.sort();
        assert_eq!(
            reported,
            [
                "certificates/broken",
                "routes/dangling",
                "routes/invalid",
                "routes/junk",
                "routes/to-tls",
                "routes/unknown-field",
                "upstreams/bad",
                "upstreams/renamed",
                "upstreams/tls",
            ],
            "{problems:#?}"
        );
        let reason = |key: &str| {
            problems
                .iter()
                .find(|p| p.key == format!("{PREFIX}{key}"))
                .map(|p| p.reason.as_str())
                .unwrap()
        };
        assert!(reason("upstreams/tls").contains("TLS"));
        assert!(reason("upstreams/renamed").contains("differs"));
        assert!(reason("routes/dangling").contains("\"bad\""));
        assert!(reason("upstreams/bad").contains("nodes[0].port"));
    }

    #[test]
    fn certificate_problems_never_quote_the_value() {
        let secret = "-----BEGIN PRIVATE KEY-----secret";
        let cases = [
            format!("{secret:?}"),
            format!(r#"{{"id":"c","snis":"{secret}","cert":"x","key":"{secret}"}}"#),
            format!(r#"{{"id":"c","snis":["a.io"],"cert":"x","key":{{"k":"{secret}"}}}}"#),
        ];
        for value in cases {
            let objects = objects(&[("certificates/c", &value)]);
            let (_, problems) = build(&objects);
            assert_eq!(problems.len(), 1, "{value}");
            assert!(!problems[0].reason.contains("secret"), "{problems:?}");
        }
    }

    #[test]
    fn unreadable_meta_is_reported_and_counts_as_revision_0() {
        let (config, problems) = build(&objects(&[("meta", "seven")]));
        assert_eq!(config.revision, Revision(0));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, format!("{PREFIX}meta"));
    }

    #[test]
    fn empty_objects_build_an_empty_config() {
        let objects = ConfigObjects::new(Keyspace::default(), "i");
        assert!(objects.is_empty());
        let (config, problems) = build(&objects);
        assert!(config.router.is_empty());
        assert_eq!(config.revision, Revision(0));
        assert!(problems.is_empty());
    }

    #[test]
    fn updates_hold_config_keys_only() {
        let mut objects = ConfigObjects::new(Keyspace::default(), "i");
        let reset = Update::Reset(Listing {
            revision: 3,
            kvs: vec![
                kv("meta", r#"{"revision":1}"#),
                kv("routes/r", "{}"),
                kv("nodes/n1", "{}"),
                kv("widgets/w", "{}"),
            ],
        });
        assert!(objects.apply(reset));
        assert_eq!(objects.len(), 2);

        let heartbeat_only = Update::Changes(WatchBatch {
            revision: 4,
            events: vec![WatchEvent::Put(kv("nodes/n2", "{}"))],
        });
        assert!(!objects.apply(heartbeat_only));

        let changes = Update::Changes(WatchBatch {
            revision: 5,
            events: vec![
                WatchEvent::Delete {
                    key: format!("{PREFIX}routes/r"),
                    mod_revision: 5,
                },
                WatchEvent::Put(kv("upstreams/u", "{}")),
                WatchEvent::Delete {
                    key: format!("{PREFIX}nodes/n1"),
                    mod_revision: 5,
                },
            ],
        });
        assert!(objects.apply(changes));
        assert_eq!(objects.len(), 2);
        assert!(objects
            .resources
            .contains_key(&format!("{PREFIX}upstreams/u")));

        // A reset replaces everything, even with nothing.
        assert!(objects.apply(Update::Reset(Listing::default())));
        assert!(objects.is_empty());
    }
}
