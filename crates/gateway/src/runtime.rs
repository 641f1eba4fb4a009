//! From the instance's objects in the store to the immutable config requests read.
//!
//! [`ConfigObjects`] mirrors the instance's config keys as the watch delivers them (raw
//! bytes) and remembers which keys changed since the last build. [`Compiler`] is the one
//! place that turns them into a [`RuntimeConfig`] (router, upstream pools): it keeps each
//! object's parsed and compiled form and redoes only the changed ones, so a one-route
//! change to 100k routes re-parses one route, keeps every unchanged upstream pool (and
//! with it its balancer and health state) and rebuilds only the route index. Startup is
//! a build from the first listing, every reload a build after an update: one code path.
//! An object that does not parse or validate, or a route whose upstream is missing or
//! unusable, is left out and reported as a [`Problem`]; the rest is served.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::router::{CompiledRoute, Router};
use crate::tls::CertTable;

/// Keyed by store keys and ids; foldhash is several times faster than SipHash on them.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What requests read; never mutated after it is built.
#[derive(Debug, Default)]
pub struct RuntimeConfig {
    /// Admin revision of the content (the `meta` key); 0 before the first config.
    pub revision: Revision,
    pub router: Router,
    /// Every pool in use, stand-alone and inline, for health reports.
    pub pools: Vec<Arc<UpstreamPool>>,
    /// Number of stand-alone upstreams served (inline ones are counted with routes).
    pub upstreams: usize,
    /// Number of valid certificates.
    pub certificates: usize,
    /// Routing or balancing reads request headers (header/cookie predicates, hashing
    /// on a header or cookie); when not, the fast path does not collect them.
    pub reads_headers: bool,
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
    /// The store key of `meta`.
    meta_key: String,
    meta: Option<Vec<u8>>,
    /// Store key → (kind, id, value); ordered by key so builds are deterministic.
    pub resources: BTreeMap<String, (ResourceKind, String, Vec<u8>)>,
    /// Keys put or deleted since the last build.
    dirty: BTreeSet<String>,
}

impl ConfigObjects {
    /// No objects yet: builds the empty config that serves 404 to everything.
    pub fn new(keyspace: Keyspace, instance: impl Into<String>) -> Self {
        let instance = instance.into();
        Self {
            meta_key: keyspace.meta(&instance),
            keyspace,
            instance,
            meta: None,
            resources: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// Applies a watch update; false when it changed no config key.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Reset(listing) => {
                // Keys that are gone; the rest is compared value by value below, so a
                // relist after a reconnect recompiles only what really changed.
                let mut gone: BTreeSet<String> = self.resources.keys().cloned().collect();
                self.meta = None;
                for kv in listing.kvs {
                    gone.remove(&kv.key);
                    self.put(kv.key, kv.value);
                }
                for key in gone {
                    self.delete(&key);
                }
                // Even an identical listing is a rebuild: the first one must build.
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
                if self
                    .resources
                    .get(&key)
                    .is_some_and(|(_, _, old)| *old == value)
                {
                    return true;
                }
                let id = id.to_owned();
                self.dirty.insert(key.clone());
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
                if self.resources.remove(key).is_some() {
                    self.dirty.insert(key.to_owned());
                }
            }
            Some(InstanceKey::Node { .. }) | None => return false,
        }
        true
    }

    /// Every config key and its value, meta included (for the snapshot file).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let meta = self.meta.as_deref().map(|m| (self.meta_key.as_str(), m));
        meta.into_iter().chain(
            self.resources
                .iter()
                .map(|(k, (_, _, v))| (k.as_str(), v.as_slice())),
        )
    }

    /// Number of config keys held (meta included).
    pub fn len(&self) -> usize {
        self.resources.len() + usize::from(self.meta.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A route as far as it could be compiled.
#[derive(Debug)]
struct RouteState {
    route: Arc<CompiledRoute>,
    /// The route's own pool when its upstream is inline; `Err` when unusable.
    inline: Option<Result<Arc<UpstreamPool>, String>>,
    warnings: Vec<String>,
}

/// A stand-alone upstream's pool and what building it found.
#[derive(Debug)]
struct PoolState {
    pool: Arc<UpstreamPool>,
    warnings: Vec<String>,
}

/// The result of a build.
#[derive(Debug)]
pub struct Built {
    pub config: RuntimeConfig,
    pub problems: Vec<Problem>,
    /// Pools created by this build (not reused from the previous one): their active
    /// health checks need starting.
    pub new_pools: Vec<Arc<UpstreamPool>>,
    /// The TLS listener's new table when a certificate object changed; `None` when
    /// the current one stays.
    pub certificates: Option<CertTable>,
}

/// Keeps every object's compiled form between builds; see the module doc.
#[derive(Debug)]
pub struct Compiler {
    pub objects: ConfigObjects,
    /// Store key → compiled route, or why it cannot be served.
    routes: HashMap<String, Result<RouteState, String>>,
    /// Store key → pool, or why it cannot be served.
    upstreams: HashMap<String, Result<PoolState, String>>,
    /// Store key → the parsed certificate, or why it cannot be served; in key order,
    /// which decides who keeps a server name two certificates claim.
    certificates: BTreeMap<String, Result<Certificate, String>>,
}

impl Compiler {
    pub fn new(objects: ConfigObjects) -> Self {
        Self {
            objects,
            routes: HashMap::default(),
            upstreams: HashMap::default(),
            certificates: BTreeMap::new(),
        }
    }

    /// Recompiles what changed since the last build and assembles a new config.
    /// Resolves upstream host names, so it may block: call it off the async workers.
    pub fn build(&mut self) -> Built {
        let mut new_pools = Vec::new();
        let mut certificates_changed = false;
        for key in std::mem::take(&mut self.objects.dirty) {
            self.routes.remove(&key);
            self.upstreams.remove(&key);
            certificates_changed |= self.certificates.remove(&key).is_some();
            let Some((kind, id, value)) = self.objects.resources.get(&key) else {
                continue;
            };
            match kind {
                ResourceKind::Routes => {
                    let state = compile_route(value, id);
                    if let Ok(RouteState {
                        inline: Some(Ok(pool)),
                        ..
                    }) = &state
                    {
                        new_pools.push(pool.clone());
                    }
                    self.routes.insert(key, state);
                }
                ResourceKind::Upstreams => {
                    let state = compile_upstream(value, id);
                    if let Ok(state) = &state {
                        new_pools.push(state.pool.clone());
                    }
                    self.upstreams.insert(key, state);
                }
                ResourceKind::Certificates => {
                    let state = parse::<Certificate>(
                        value,
                        id,
                        |c| &c.id,
                        Certificate::validate,
                        unreadable_secret,
                    );
                    certificates_changed = true;
                    self.certificates.insert(key, state);
                }
            }
        }
        let mut built = self.assemble(new_pools);
        if certificates_changed {
            let valid: Vec<(String, Certificate)> = self
                .certificates
                .iter()
                .filter_map(|(key, state)| Some((key.clone(), state.as_ref().ok()?.clone())))
                .collect();
            // Loading keys takes about a millisecond each: done here, off the workers.
            let (table, problems) = CertTable::from_objects(&valid);
            built.problems.extend(
                problems
                    .into_iter()
                    .map(|(key, reason)| Problem { key, reason }),
            );
            built.problems.sort_by(|a, b| a.key.cmp(&b.key));
            built.certificates = Some(table);
        }
        built
    }

    fn assemble(&self, new_pools: Vec<Arc<UpstreamPool>>) -> Built {
        let mut problems = Vec::new();
        let mut report = |key: &str, reason: String| {
            problems.push(Problem {
                key: key.to_owned(),
                reason,
            })
        };
        let objects = &self.objects;
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

        let mut by_id: HashMap<&str, &Arc<UpstreamPool>> = HashMap::default();
        let mut pools = Vec::new();
        for (key, state) in &self.upstreams {
            match state {
                Ok(state) => {
                    for warning in &state.warnings {
                        report(key, warning.clone());
                    }
                    by_id.insert(&state.pool.id, &state.pool);
                    pools.push(state.pool.clone());
                }
                Err(reason) => report(key, reason.clone()),
            }
        }
        let upstreams = pools.len();

        let mut table = Vec::with_capacity(self.routes.len());
        let mut reads_headers = false;
        for (key, state) in &self.routes {
            let state = match state {
                Ok(state) => state,
                Err(reason) => {
                    report(key, reason.clone());
                    continue;
                }
            };
            for warning in &state.warnings {
                report(key, warning.clone());
            }
            let route = &state.route.route;
            if !route.enabled {
                // Disabled routes are valid config that is not served.
                continue;
            }
            let pool = match (&route.upstream_id, &state.inline) {
                (Some(id), _) => match by_id.get(id.as_str()) {
                    Some(pool) => (*pool).clone(),
                    None => {
                        report(key, format!("upstream {id:?} is missing or unusable"));
                        continue;
                    }
                },
                (None, Some(Ok(pool))) => {
                    pools.push(pool.clone());
                    pool.clone()
                }
                (None, Some(Err(reason))) => {
                    report(key, format!("upstream: {reason}"));
                    continue;
                }
                // Validation refuses this; kept total rather than trusting it.
                (None, None) => {
                    report(key, "no upstream".to_owned());
                    continue;
                }
            };
            reads_headers |= pool.reads_headers();
            table.push((state.route.clone(), pool));
        }
        let mut certificates = 0;
        for (key, state) in &self.certificates {
            match state {
                Ok(_) => certificates += 1,
                Err(reason) => report(key, reason.clone()),
            }
        }
        problems.sort_by(|a, b| a.key.cmp(&b.key));

        let router = Router::build(table);
        reads_headers |= router.reads_headers();
        Built {
            config: RuntimeConfig {
                revision,
                router,
                pools,
                upstreams,
                certificates,
                reads_headers,
            },
            problems,
            new_pools,
            certificates: None,
        }
    }
}

fn compile_route(value: &[u8], id: &str) -> Result<RouteState, String> {
    let route = parse::<Route>(value, id, |r| &r.id, Route::validate, unreadable)?;
    let mut warnings = Vec::new();
    let inline = route.upstream.as_ref().map(|inline| {
        UpstreamPool::build(inline)
            .map(|built| {
                warnings.extend(built.warnings.into_iter().map(|w| format!("upstream.{w}")));
                Arc::new(built.pool)
            })
            .map_err(|e| e.to_string())
    });
    Ok(RouteState {
        route: Arc::new(CompiledRoute::compile(route)?),
        inline,
        warnings,
    })
}

fn compile_upstream(value: &[u8], id: &str) -> Result<PoolState, String> {
    let upstream = parse::<Upstream>(value, id, |u| &u.id, Upstream::validate, unreadable)?;
    let built = UpstreamPool::build(&upstream).map_err(|e| e.to_string())?;
    Ok(PoolState {
        pool: Arc::new(built.pool),
        warnings: built.warnings,
    })
}

/// The health report of the heartbeat: every pool with health checks, in full, and
/// any other pool that has a node down (possible only through checks, so in practice
/// the first rule). Inline upstreams are reported under the route's upstream id.
pub fn upstream_health(config: &RuntimeConfig) -> Vec<model::cluster::UpstreamHealth> {
    config
        .pools
        .iter()
        .filter_map(|pool| {
            let nodes = pool.health_report();
            let show = pool.has_health_checks() || nodes.iter().any(|n| !n.healthy);
            show.then(|| model::cluster::UpstreamHealth {
                upstream_id: pool.id.clone(),
                nodes: nodes.into_iter().map(Into::into).collect(),
            })
        })
        .collect()
}

/// Compiles everything in `objects` at once (tests and one-shot tools).
pub fn build(objects: &ConfigObjects) -> (RuntimeConfig, Vec<Problem>) {
    let mut objects = objects.clone();
    objects.dirty = objects.resources.keys().cloned().collect();
    let built = Compiler::new(objects).build();
    (built.config, built.problems)
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
