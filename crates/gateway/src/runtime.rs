//! Building the immutable runtime config from the instance's objects in the store.
//!
//! [`build`] is the one function that turns the declarative objects (as the store holds
//! them) into what requests read: the router and the upstream pools. Startup and every
//! reload go through it. An object that does not parse or validate, or a route whose
//! upstream is missing or unusable, is skipped and reported; the rest is served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use model::certificate::Certificate;
use model::cluster::InstanceMeta;
use model::resource::ResourceKind;
use model::route::Route;
use model::snapshot::Revision;
use model::upstream::Upstream;
use store::keys::{InstanceKey, Keyspace};

use crate::balancer::UpstreamPool;
use crate::router::Router;

/// The instance's store content: key → raw value, as the watch delivers it.
pub type Objects = BTreeMap<String, Vec<u8>>;

/// What requests read; never mutated after it is built.
#[derive(Debug, Default)]
pub struct RuntimeConfig {
    /// Admin revision of the content (the `meta` key); 0 before the first config.
    pub revision: Revision,
    pub router: Router,
    pub upstreams: usize,
    pub certificates: usize,
}

/// An object that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// Builds a runtime config from all of an instance's objects.
pub fn build(
    keyspace: &Keyspace,
    instance: &str,
    objects: &Objects,
) -> (RuntimeConfig, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut revision = Revision(0);
    let mut routes: Vec<(&str, Route)> = Vec::new();
    let mut upstreams: HashMap<String, Arc<UpstreamPool>> = HashMap::new();
    let mut certificates = 0;
    let mut problem = |key: &str, reason: String| {
        problems.push(Problem {
            key: key.to_owned(),
            reason,
        })
    };
    for (key, value) in objects {
        match keyspace.parse(instance, key) {
            Some(InstanceKey::Meta) => match serde_json::from_slice::<InstanceMeta>(value) {
                Ok(meta) => revision = meta.revision,
                Err(e) => problem(key, format!("unreadable meta: {e}")),
            },
            Some(InstanceKey::Resource { kind, .. }) => match kind {
                ResourceKind::Routes => match parse::<Route>(value, |r| r.validate()) {
                    Ok(route) => routes.push((key, route)),
                    Err(reason) => problem(key, reason),
                },
                ResourceKind::Upstreams => match parse::<Upstream>(value, |u| u.validate()) {
                    Ok(up) => match UpstreamPool::build(&up) {
                        Ok(pool) => {
                            upstreams.insert(up.id.clone(), Arc::new(pool));
                        }
                        Err(reason) => problem(key, reason),
                    },
                    Err(reason) => problem(key, reason),
                },
                // Certificates are checked now and served once TLS termination lands.
                ResourceKind::Certificates => match parse::<Certificate>(value, |c| c.validate()) {
                    Ok(_) => certificates += 1,
                    Err(reason) => problem(key, reason),
                },
            },
            // Heartbeats and foreign keys are not config.
            Some(InstanceKey::Node { .. }) | None => {}
        }
    }
    let mut table = Vec::new();
    for (key, route) in routes {
        if !route.enabled {
            continue;
        }
        let pool = match (&route.upstream_id, &route.upstream) {
            (Some(id), _) => match upstreams.get(id) {
                Some(pool) => pool.clone(),
                None => {
                    problem(key, format!("upstream {id:?} is missing or unusable"));
                    continue;
                }
            },
            (None, Some(inline)) => match UpstreamPool::build(inline) {
                Ok(pool) => Arc::new(pool),
                Err(reason) => {
                    problem(key, format!("inline upstream: {reason}"));
                    continue;
                }
            },
            (None, None) => {
                problem(key, "no upstream".into());
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

fn parse<T: serde::de::DeserializeOwned>(
    value: &[u8],
    validate: impl FnOnce(&T) -> Result<(), model::validate::ValidationErrors>,
) -> Result<T, String> {
    let parsed: T = serde_json::from_slice(value).map_err(|e| format!("unreadable: {e}"))?;
    validate(&parsed).map_err(|e| format!("invalid: {e}"))?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Match;

    fn objects(items: &[(&str, &str)]) -> Objects {
        items
            .iter()
            .map(|(k, v)| (format!("/portico/instances/i/{k}"), v.as_bytes().to_vec()))
            .collect()
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
                "routes/good",
                r#"{"id":"good","paths":["/g"],"upstream_id":"up"}"#,
            ),
            ("routes/junk", "{not json"),
            (
                "routes/dangling",
                r#"{"id":"dangling","paths":["/d"],"upstream_id":"bad"}"#,
            ),
            (
                "routes/off",
                r#"{"id":"off","paths":["/o"],"upstream_id":"up","enabled":false}"#,
            ),
            (
                "routes/inline",
                r#"{"id":"inline","paths":["/i"],"upstream":{"nodes":[{"host":"127.0.0.1","port":9}]}}"#,
            ),
            ("nodes/n1", "heartbeat, not config"),
        ]);
        let (config, problems) = build(&Keyspace::default(), "i", &objects);
        assert_eq!(config.revision, Revision(7));
        assert_eq!(config.router.len(), 2);
        assert!(matches!(
            config.router.lookup("h", "/g", "GET"),
            Match::Found(_)
        ));
        assert!(matches!(
            config.router.lookup("h", "/i", "GET"),
            Match::Found(_)
        ));
        assert!(matches!(
            config.router.lookup("h", "/o", "GET"),
            Match::NotFound
        ));
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.key.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(keys, ["junk", "bad", "dangling"], "{problems:?}");
    }

    #[test]
    fn empty_objects_build_an_empty_config() {
        let (config, problems) = build(&Keyspace::default(), "i", &Objects::new());
        assert!(config.router.is_empty());
        assert_eq!(config.revision, Revision(0));
        assert!(problems.is_empty());
    }
}
