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
use model::cluster::{InstanceBinding, InstanceMeta};
use model::consumer::{Consumer, ConsumerGroup};
use model::plugin::{consumer_layers, effective, route_layers, PluginTemplate};
use model::registry::{Discovery, DiscoveryKind};
use model::resource::ResourceKind;
use model::route::Route;
use model::service::{GlobalRule, Service};
use model::snapshot::Revision;
use model::tester::UpstreamFrom;
use model::upstream::Upstream;
use store::keys::{InstanceKey, Keyspace};
use store::watch::Update;
use store::WatchEvent;

use crate::balancer::UpstreamPool;
use crate::consumers::{ConsumerEntry, Consumers};
use crate::core::phase::{Chain, Entry, Plugin, RouteScope};
use crate::kubernetes::KubernetesView;
use crate::registry::RegistryView;
use crate::router::{CompiledRoute, RouteTarget, Router, RouterIndex};
use crate::tls::CertTable;

use crate::HashMap;

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
    /// on a header or cookie); when not, the fast path collects them only for routes
    /// whose plugins read them (key-auth …), after routing.
    pub reads_headers: bool,
    /// The consumers authentication plugins look credentials up in.
    pub consumers: Arc<Consumers>,
    /// What the build left out and why (reported in the heartbeat).
    pub problems: Vec<Problem>,
    /// Stand-alone upstreams by id (traffic-split picks among them).
    pub upstreams_by_id: Arc<crate::core::phase::UpstreamsById>,
    /// The node's counters, the same object in every config the node builds.
    pub counters: Arc<NodeCounters>,
    /// Why the node serves nothing though the store holds config (requirement N3):
    /// the instance's namespace does not exist, or is not the node's.
    pub unbound: Option<String>,
}

/// What a node's plugins count beyond one config (for the heartbeat and metrics).
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Requests counted in the node's memory because their Redis was down or slow.
    pub redis_fallbacks: std::sync::atomic::AtomicU64,
    /// The request metrics the `prometheus` plugin records.
    pub metrics: crate::metrics::Metrics,
    /// Access-log lines dropped because a sink's queue was full.
    pub log_dropped: std::sync::atomic::AtomicU64,
}

/// Something in the store that is not served as written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The store key of the object.
    pub key: String,
    pub reason: String,
}

/// What a build may do besides computing. A node's builds are [`Effects::Live`]:
/// plugins open their log sinks and register their Redis links, upstream host names
/// are resolved. A [`Effects::Dry`] build (the route tester) does none of that: the
/// same compile functions run, but no file is opened, no thread or task started, no
/// name resolved; its plugins must never serve a request. Neither kind starts health
/// checks or connects anywhere: the node starts checks for [`Built::new_pools`], and
/// Redis links connect on a request's first count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Effects {
    #[default]
    Live,
    Dry,
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
    /// The store key of the binding.
    binding_key: String,
    /// The instance's binding (its namespace, whether that exists, the namespace's
    /// plugin templates), as the store holds it.
    binding: Option<Vec<u8>>,
    /// The binding changed since the last build.
    binding_dirty: bool,
    /// The namespace the node itself is bound to (`portico gateway --namespace`).
    namespace: Option<String>,
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
            binding_key: keyspace.binding(&instance),
            keyspace,
            instance,
            meta: None,
            binding: None,
            binding_dirty: false,
            namespace: None,
            resources: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// Binds the node itself to `namespace`: it serves the instance only while the
    /// instance's binding names that namespace, and it exists.
    pub fn bound_to(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// The instance's binding as the store holds it, if readable.
    fn binding(&self) -> Option<InstanceBinding> {
        serde_json::from_slice(self.binding.as_deref()?).ok()
    }

    /// Why the node must serve nothing (requirement N3), or `None` when it may serve
    /// the instance: the instance's namespace does not exist, or the node is bound to
    /// another namespace (or to one, while the store does not say the instance's).
    pub fn unbound(&self) -> Option<String> {
        let instance = &self.instance;
        match (self.binding(), &self.namespace) {
            (Some(binding), _) if !binding.exists => Some(format!(
                "instance {instance:?} is bound to namespace {:?}, which does not exist",
                binding.namespace
            )),
            (Some(binding), Some(own)) if binding.namespace != *own => Some(format!(
                "this node is bound to namespace {own:?}; instance {instance:?} belongs to \
                 namespace {:?}",
                binding.namespace
            )),
            (None, Some(own)) => Some(format!(
                "this node is bound to namespace {own:?}; the store does not say which \
                 namespace instance {instance:?} belongs to"
            )),
            _ => None,
        }
    }

    /// The namespace whose registered services the instance's upstreams use: its
    /// binding's, else the node's own, else `default`.
    fn registry_namespace(&self) -> String {
        self.binding()
            .map(|b| b.namespace)
            .or_else(|| self.namespace.clone())
            .unwrap_or_else(|| model::registry::DEFAULT_NAMESPACE.to_owned())
    }

    /// Applies a watch update; false when it changed no config key.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Reset(listing) => {
                // Keys that are gone; the rest is compared value by value below, so a
                // relist after a reconnect recompiles only what really changed.
                let mut gone: BTreeSet<String> = self.resources.keys().cloned().collect();
                self.meta = None;
                let binding = self.binding.take();
                for kv in listing.kvs {
                    gone.remove(&kv.key);
                    self.put(kv.key, kv.value);
                }
                for key in gone {
                    self.delete(&key);
                }
                self.binding_dirty |= self.binding != binding;
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
            Some(InstanceKey::Binding) => {
                self.binding_dirty |= self.binding.as_ref() != Some(&value);
                self.binding = Some(value);
            }
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
            Some(InstanceKey::Binding) => {
                self.binding_dirty |= self.binding.take().is_some();
            }
            Some(InstanceKey::Resource { .. }) => {
                if self.resources.remove(key).is_some() {
                    self.dirty.insert(key.to_owned());
                }
            }
            Some(InstanceKey::Node { .. }) | None => return false,
        }
        true
    }

    /// Every config key and its value, meta and binding included (for the snapshot
    /// file).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let meta = self.meta.as_deref().map(|m| (self.meta_key.as_str(), m));
        let binding = self
            .binding
            .as_deref()
            .map(|b| (self.binding_key.as_str(), b));
        meta.into_iter().chain(binding).chain(
            self.resources
                .iter()
                .map(|(k, (_, _, v))| (k.as_str(), v.as_slice())),
        )
    }

    /// Number of config keys held (meta and binding included).
    pub fn len(&self) -> usize {
        self.resources.len()
            + usize::from(self.meta.is_some())
            + usize::from(self.binding.is_some())
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
    /// Its chain (or why it cannot be built), made from the plugin context of
    /// generation `.0`; kept here, not in a map of its own, so a build looks each
    /// route up once.
    chain: Option<(u64, Result<Arc<Chain>, String>)>,
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
    /// Store key → a service and its inline upstream's pool, or why it cannot be
    /// served.
    services: BTreeMap<String, Result<ServiceState, String>>,
    /// The plugin layers other than routes, parsed; in key order (global rules run
    /// in id order).
    global_rules: BTreeMap<String, Result<GlobalRule, String>>,
    templates: BTreeMap<String, Result<PluginTemplate, String>>,
    consumers: BTreeMap<String, Result<Consumer, String>>,
    groups: BTreeMap<String, Result<ConsumerGroup, String>>,
    /// Bumped when a service, global rule or template changes: every chain is then
    /// made again.
    generation: u64,
    /// Plugins by place, name and configuration: a plugin whose configuration and
    /// place did not change is the same object after a build, state included.
    plugins: PluginCache,
    counters: Arc<NodeCounters>,
    /// The consumer table and its problems, made again when a consumer, group or
    /// template changes.
    consumer_table: (Arc<Consumers>, Vec<Problem>),
    /// What the last certificate table left out (made again only when a certificate
    /// changes).
    cert_problems: Vec<Problem>,
    effects: Effects,
    /// The registered service nodes upstreams in registry mode take theirs from.
    pub registry: RegistryView,
    /// The namespace whose registry the last build used; `None` before the first.
    registry_namespace: Option<String>,
    /// The Kubernetes endpoints upstreams in `kubernetes` mode take theirs from.
    pub kubernetes: KubernetesView,
    /// Store key of an object whose pool came from discovery → its discovery: the
    /// object compiles again when that service's nodes change.
    discovery_users: HashMap<String, Discovery>,
    /// `lb://service` → the pool of its registered nodes, for routes and services
    /// naming a service instead of an upstream.
    lb_pools: HashMap<String, Arc<UpstreamPool>>,
    /// The last table's index: the next table reuses it when its routes are the same.
    /// `None` before the first build and after an unbound one.
    router_index: Option<RouterIndex>,
}

/// What building a pool reads besides the upstream: whether it may resolve names, the
/// registry (in the instance's namespace) for upstreams in registry mode, and the
/// Kubernetes endpoints for those in kubernetes mode.
#[derive(Clone, Copy)]
struct PoolInputs<'a> {
    effects: Effects,
    registry: &'a RegistryView,
    namespace: &'a str,
    kubernetes: &'a KubernetesView,
}

impl PoolInputs<'_> {
    fn build(&self, upstream: &Upstream) -> Result<crate::balancer::BuiltPool, String> {
        let Some(discovery) = &upstream.discovery else {
            return UpstreamPool::build_with(upstream, self.effects).map_err(|e| e.to_string());
        };
        let mut resolved = upstream.clone();
        let mut warnings = Vec::new();
        resolved.nodes = match discovery.kind {
            DiscoveryKind::Registry => self.registry.upstream_nodes(self.namespace, discovery),
            DiscoveryKind::Kubernetes => {
                let (nodes, why) = self.kubernetes.upstream_nodes(discovery);
                // A dry build (the admin's) follows no cluster: nothing to say.
                if self.effects == Effects::Live {
                    warnings = why;
                }
                nodes
            }
        };
        let mut built =
            UpstreamPool::build_with(&resolved, self.effects).map_err(|e| e.to_string())?;
        built.warnings.extend(warnings);
        Ok(built)
    }

    /// The pool of `lb://service`: the service's registered nodes with the defaults
    /// of an upstream.
    fn lb_pool(&self, id: &str, service: &str) -> Result<crate::balancer::BuiltPool, String> {
        let upstream: Upstream = serde_json::from_value(serde_json::json!({
            "id": id,
            "discovery": {"type": "registry", "service": service},
        }))
        .map_err(|e| e.to_string())?;
        self.build(&upstream)
    }
}

/// A service as far as it could be compiled.
#[derive(Debug)]
struct ServiceState {
    service: Service,
    /// The service's own pool when its upstream is inline; `Err` when unusable.
    inline: Option<Result<Arc<UpstreamPool>, String>>,
    warnings: Vec<String>,
}

/// See [`Compiler::plugins`]: (place, name, configuration as JSON) → plugin; and
/// what compiling a plugin may do ([`Effects`]).
#[derive(Debug)]
struct PluginCache {
    plugins: HashMap<(String, &'static str, String), Arc<dyn Plugin>>,
    effects: Effects,
}

impl PluginCache {
    /// The plugins of an effective list, each reused when its place and
    /// configuration are unchanged.
    fn entries(
        &mut self,
        instance: &str,
        counters: &Arc<NodeCounters>,
        merged: &model::plugin::Effective,
    ) -> Result<Vec<Entry>, String> {
        merged
            .plugins
            .iter()
            .map(|p| {
                let key = (p.source.to_string(), p.name, p.config.to_string());
                let plugin = match self.plugins.get(&key) {
                    Some(plugin) => plugin.clone(),
                    None => {
                        let place = crate::plugins::PluginPlace {
                            instance,
                            place: &key.0,
                            counters,
                            effects: self.effects,
                        };
                        let plugin = crate::plugins::compile(p.name, &p.config, &place)
                            .map_err(|e| format!("{}.{}: {e}", p.source.path(), p.name))?;
                        self.plugins.insert(key, plugin.clone());
                        plugin
                    }
                };
                Ok(Entry::new(Arc::new(p.clone()), plugin))
            })
            .collect()
    }

    /// Forgets plugins no chain holds any more (a config still serving requests may
    /// hold one a build longer).
    fn prune(&mut self) {
        self.plugins
            .retain(|_, plugin| Arc::strong_count(plugin) > 1);
    }
}

impl Compiler {
    /// A node's compiler.
    pub fn new(objects: ConfigObjects) -> Self {
        Self::with_effects(objects, Effects::Live)
    }

    /// A compiler whose builds have no effects (see [`Effects::Dry`]).
    pub fn dry(objects: ConfigObjects) -> Self {
        Self::with_effects(objects, Effects::Dry)
    }

    fn with_effects(objects: ConfigObjects, effects: Effects) -> Self {
        let objects_keyspace = objects.keyspace.clone();
        Self {
            objects,
            routes: HashMap::default(),
            upstreams: HashMap::default(),
            certificates: BTreeMap::new(),
            services: BTreeMap::new(),
            global_rules: BTreeMap::new(),
            templates: BTreeMap::new(),
            consumers: BTreeMap::new(),
            groups: BTreeMap::new(),
            generation: 0,
            plugins: PluginCache {
                plugins: HashMap::default(),
                effects,
            },
            counters: Arc::default(),
            consumer_table: Default::default(),
            cert_problems: Vec::new(),
            effects,
            registry: RegistryView::new(objects_keyspace),
            registry_namespace: None,
            kubernetes: KubernetesView::default(),
            discovery_users: HashMap::default(),
            lb_pools: HashMap::default(),
            router_index: None,
        }
    }

    /// Every route object: its store key, its id (the key's) and its compiled form,
    /// or why it has none; as of the last build.
    pub(crate) fn route_states(
        &self,
    ) -> impl Iterator<Item = (&str, &str, Result<&Arc<CompiledRoute>, &str>)> + '_ {
        self.routes.iter().map(|(key, state)| {
            let id = self
                .objects
                .resources
                .get(key)
                .map_or("", |(_, id, _)| id.as_str());
            let compiled = match state {
                Ok(state) => Ok(&state.route),
                Err(reason) => Err(reason.as_str()),
            };
            (key.as_str(), id, compiled)
        })
    }

    /// Recompiles what changed since the last build and assembles a new config.
    /// Resolves upstream host names, so it may block: call it off the async workers.
    pub fn build(&mut self) -> Built {
        if let Some(reason) = self.objects.unbound() {
            return self.build_unbound(reason);
        }
        let mut new_pools = Vec::new();
        let mut certificates_changed = false;
        // The namespace's plugin templates come with the binding.
        let binding_changed = std::mem::take(&mut self.objects.binding_dirty);
        let mut context_changed = binding_changed;
        let mut consumers_changed = binding_changed;
        // No table yet: nothing built since the compiler was made or emptied.
        let first = self.router_index.is_none();
        let namespace = self.discovery_changes();
        let inputs = PoolInputs {
            effects: self.effects,
            registry: &self.registry,
            namespace: &namespace,
            kubernetes: &self.kubernetes,
        };
        for key in std::mem::take(&mut self.objects.dirty) {
            self.discovery_users.remove(&key);
            self.routes.remove(&key);
            self.upstreams.remove(&key);
            certificates_changed |= self.certificates.remove(&key).is_some();
            context_changed |= self.services.remove(&key).is_some();
            context_changed |= self.global_rules.remove(&key).is_some();
            let template = self.templates.remove(&key).is_some();
            context_changed |= template;
            consumers_changed |= template;
            consumers_changed |= self.consumers.remove(&key).is_some();
            consumers_changed |= self.groups.remove(&key).is_some();
            let Some((kind, id, value)) = self.objects.resources.get(&key) else {
                continue;
            };
            match kind {
                ResourceKind::Services => {
                    let state = compile_service(value, id, &inputs);
                    if let Some(service) = state
                        .as_ref()
                        .ok()
                        .and_then(|s| discovery_of(s.service.upstream.as_deref()))
                    {
                        self.discovery_users.insert(key.clone(), service);
                    }
                    if let Ok(ServiceState {
                        inline: Some(Ok(pool)),
                        ..
                    }) = &state
                    {
                        new_pools.push(pool.clone());
                    }
                    self.services.insert(key, state);
                    context_changed = true;
                }
                ResourceKind::GlobalRules => {
                    let state = parse(
                        value,
                        id,
                        |g: &GlobalRule| &g.id,
                        GlobalRule::validate,
                        unreadable,
                    );
                    self.global_rules.insert(key, state);
                    context_changed = true;
                }
                ResourceKind::PluginTemplates => {
                    let state = parse(
                        value,
                        id,
                        |t: &PluginTemplate| &t.id,
                        PluginTemplate::validate,
                        unreadable,
                    );
                    self.templates.insert(key, state);
                    context_changed = true;
                    consumers_changed = true;
                }
                ResourceKind::Consumers => {
                    let state = parse(
                        value,
                        id,
                        |c: &Consumer| &c.id,
                        Consumer::validate,
                        unreadable_secret,
                    );
                    self.consumers.insert(key, state);
                    consumers_changed = true;
                }
                ResourceKind::ConsumerGroups => {
                    let state = parse(
                        value,
                        id,
                        |g: &ConsumerGroup| &g.id,
                        ConsumerGroup::validate,
                        unreadable,
                    );
                    self.groups.insert(key, state);
                    consumers_changed = true;
                }
                ResourceKind::Routes => {
                    let state = compile_route(value, id, &inputs);
                    if let Some(service) = state
                        .as_ref()
                        .ok()
                        .and_then(|s| discovery_of(s.route.route.upstream.as_deref()))
                    {
                        self.discovery_users.insert(key.clone(), service);
                    }
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
                    let state = compile_upstream(value, id, &inputs);
                    if let Ok((state, discovery)) = &state {
                        new_pools.push(state.pool.clone());
                        if let Some(service) = discovery {
                            self.discovery_users.insert(key.clone(), service.clone());
                        }
                    }
                    let state = state.map(|(state, _)| state);
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
        if context_changed {
            self.generation += 1;
        }
        if consumers_changed || first {
            self.consumer_table = self.build_consumers();
        }
        self.build_chains();
        self.build_lb_pools(&namespace, &mut new_pools);
        let mut built = self.assemble(new_pools);
        self.router_index = Some(built.config.router.index());
        self.plugins.prune();
        if certificates_changed {
            let valid: Vec<(String, Certificate)> = self
                .certificates
                .iter()
                .filter_map(|(key, state)| Some((key.clone(), state.as_ref().ok()?.clone())))
                .collect();
            // Loading keys takes about a millisecond each: done here, off the workers.
            let (table, problems) = CertTable::from_objects(&valid);
            self.cert_problems = problems
                .into_iter()
                .map(|(key, reason)| Problem { key, reason })
                .collect();
            built.certificates = Some(table);
        }
        built.problems.extend(self.cert_problems.iter().cloned());
        built.problems.sort_by(|a, b| a.key.cmp(&b.key));
        built.config.problems = built.problems.clone();
        built
    }

    /// The empty config of a node that must serve nothing (requirement N3): no route,
    /// no certificate, revision 0, and why. Everything compiled is forgotten and every
    /// object marked to compile again, so the build after the binding is right again
    /// starts from scratch (its pools' health checks included).
    fn build_unbound(&mut self, reason: String) -> Built {
        self.routes.clear();
        self.upstreams.clear();
        self.certificates.clear();
        self.services.clear();
        self.global_rules.clear();
        self.templates.clear();
        self.consumers.clear();
        self.groups.clear();
        self.consumer_table = Default::default();
        self.cert_problems.clear();
        self.discovery_users.clear();
        self.lb_pools.clear();
        self.router_index = None;
        self.registry_namespace = None;
        self.generation += 1;
        self.objects.dirty = self.objects.resources.keys().cloned().collect();
        self.objects.binding_dirty = true;
        let mut built = self.assemble(Vec::new());
        self.plugins.prune();
        built.config.revision = Revision(0);
        built.problems.insert(
            0,
            Problem {
                key: self.objects.binding_key.clone(),
                reason: format!("serving nothing: {reason}"),
            },
        );
        built.config.problems = built.problems.clone();
        built.config.unbound = Some(reason);
        built.certificates = Some(CertTable::from_objects(&[]).0);
        built
    }

    /// The namespace whose registry this build uses; marks the objects and `lb://`
    /// pools whose discovered nodes changed since the last build (all registry users
    /// when the namespace changed) to be built again.
    fn discovery_changes(&mut self) -> String {
        let namespace = self.objects.registry_namespace();
        let changed = self.registry.take_changed();
        let all = self.registry_namespace.as_deref() != Some(namespace.as_str());
        let touched =
            |service: &str| all || changed.contains(&(namespace.clone(), service.to_owned()));
        let (services, clusters) = self.kubernetes.take_changed();
        for (key, discovery) in &self.discovery_users {
            let dirty = match crate::kubernetes::want_of(discovery) {
                None => touched(&discovery.service),
                Some(want) => want.clusters.iter().any(|cluster| {
                    clusters.contains(cluster)
                        || services.contains(&(cluster.clone(), want.service.clone()))
                }),
            };
            if dirty {
                self.objects.dirty.insert(key.clone());
            }
        }
        self.lb_pools.retain(|id, _| {
            model::registry::lb_service(id).is_some_and(|service| !touched(service))
        });
        self.registry_namespace = Some(namespace.clone());
        namespace
    }

    /// The Services each Kubernetes cluster must be watched for: those the upstreams
    /// in `kubernetes` mode name, as of the last build.
    pub fn kubernetes_wanted(&self) -> BTreeMap<String, BTreeSet<xcluster::union::ServiceKey>> {
        crate::kubernetes::wanted(self.discovery_users.values())
    }

    /// Keeps a pool for every `lb://service` a served route or service names, and
    /// only those; new ones join `new_pools`.
    fn build_lb_pools(&mut self, namespace: &str, new_pools: &mut Vec<Arc<UpstreamPool>>) {
        let routes = self
            .routes
            .values()
            .filter_map(|r| r.as_ref().ok()?.route.route.upstream_id.as_ref());
        let services = self
            .services
            .values()
            .filter_map(|s| s.as_ref().ok()?.service.upstream_id.as_ref());
        let wanted: BTreeSet<&String> = routes
            .chain(services)
            .filter(|id| model::registry::lb_service(id).is_some())
            .collect();
        self.lb_pools.retain(|id, _| wanted.contains(id));
        let inputs = PoolInputs {
            effects: self.effects,
            registry: &self.registry,
            namespace,
            kubernetes: &self.kubernetes,
        };
        for id in wanted {
            if self.lb_pools.contains_key(id.as_str()) {
                continue;
            }
            let service = model::registry::lb_service(id).unwrap_or_default();
            match inputs.lb_pool(id, service) {
                Ok(built) => {
                    for warning in built.warnings {
                        tracing::warn!(upstream = %id, %warning, "registered node left out");
                    }
                    let pool = Arc::new(built.pool);
                    new_pools.push(pool.clone());
                    self.lb_pools.insert(id.clone(), pool);
                }
                Err(e) => tracing::error!(upstream = %id, error = %e, "cannot build the pool"),
            }
        }
    }

    /// The templates the instance's plugins run under, by plugin name: its valid
    /// templates with its namespace's overrides on top (`model::plugin::layered_templates`).
    fn template_map(
        templates: &BTreeMap<String, Result<PluginTemplate, String>>,
        objects: &ConfigObjects,
    ) -> BTreeMap<String, PluginTemplate> {
        let namespace = objects
            .binding()
            .map(|b| b.plugin_templates)
            .unwrap_or_default();
        model::plugin::layered_templates(
            templates.values().filter_map(|t| t.as_ref().ok()),
            &namespace,
        )
    }

    /// Makes the chain of every route whose chain is missing or older than the
    /// plugin context (services, global rules, templates).
    fn build_chains(&mut self) {
        let Self {
            objects,
            counters,
            routes,
            services,
            global_rules,
            templates,
            generation,
            plugins,
            ..
        } = self;
        let layered = Self::template_map(templates, objects);
        let templates: HashMap<&str, &PluginTemplate> =
            layered.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let globals: Vec<&GlobalRule> = global_rules
            .values()
            .filter_map(|g| g.as_ref().ok())
            .collect();
        let services: HashMap<&str, &Service> = services
            .values()
            .filter_map(|s| s.as_ref().ok())
            .map(|s| (s.service.id.as_str(), &s.service))
            .collect();
        for state in routes.values_mut() {
            let Ok(state) = state else {
                continue;
            };
            if state.chain.as_ref().is_some_and(|(g, _)| g == generation) {
                continue;
            }
            let route = &state.route.route;
            let chain = route_chain(
                route,
                &services,
                &globals,
                &templates,
                plugins,
                &objects.instance,
                counters,
            );
            state.chain = Some((*generation, chain));
        }
    }

    /// The consumer table and what keeps consumers or credentials out of it.
    fn build_consumers(&mut self) -> (Arc<Consumers>, Vec<Problem>) {
        let layered = Self::template_map(&self.templates, &self.objects);
        let templates: HashMap<&str, &PluginTemplate> =
            layered.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let groups: HashMap<&str, &ConsumerGroup> = self
            .groups
            .values()
            .filter_map(|g| g.as_ref().ok())
            .map(|g| (g.id.as_str(), g))
            .collect();
        let mut problems = Vec::new();
        let mut report = |key: &str, reason: String| {
            problems.push(Problem {
                key: key.to_owned(),
                reason,
            })
        };
        for (key, state) in &self.groups {
            if let Err(reason) = state {
                report(key, reason.clone());
            }
        }
        let mut builder = Consumers::builder();
        for (key, state) in &self.consumers {
            let consumer = match state {
                Ok(consumer) => consumer,
                Err(reason) => {
                    report(key, reason.clone());
                    continue;
                }
            };
            let group = match &consumer.group_id {
                None => None,
                Some(id) => match groups.get(id.as_str()) {
                    Some(group) => Some(*group),
                    None => {
                        // Its group's plugins (limits) would be missing: not served.
                        report(key, format!("consumer group {id:?} is missing or unusable"));
                        continue;
                    }
                },
            };
            let layers = consumer_layers(group, consumer);
            let merged = effective(&layers, |name| templates.get(name).copied());
            if !merged.errors.is_empty() {
                report(key, format!("invalid: {}", join_errors(&merged.errors)));
                continue;
            }
            let entries =
                match self
                    .plugins
                    .entries(&self.objects.instance, &self.counters, &merged)
                {
                    Ok(entries) => entries,
                    Err(reason) => {
                        report(key, reason);
                        continue;
                    }
                };
            let entry = Arc::new(ConsumerEntry {
                id: consumer.id.as_str().into(),
                group: consumer.group_id.clone(),
                subscriptions: consumer.subscriptions.clone(),
                plugins: entries,
            });
            for reason in builder.add(consumer, entry) {
                report(key, reason);
            }
        }
        (Arc::new(builder.build()), problems)
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
        // `lb://service` is looked up like an upstream id.
        for (id, pool) in &self.lb_pools {
            by_id.insert(id, pool);
            pools.push(pool.clone());
        }

        let mut services: HashMap<&str, &ServiceState> = HashMap::default();
        for (key, state) in &self.services {
            match state {
                Ok(state) => {
                    for warning in &state.warnings {
                        report(key, warning.clone());
                    }
                    if let Some(Ok(pool)) = &state.inline {
                        pools.push(pool.clone());
                    }
                    services.insert(&state.service.id, state);
                }
                Err(reason) => report(key, reason.clone()),
            }
        }
        for (key, state) in self
            .global_rules
            .iter()
            .map(|(k, s)| (k, s.as_ref().map(|_| ())))
            .chain(
                self.templates
                    .iter()
                    .map(|(k, s)| (k, s.as_ref().map(|_| ()))),
            )
        {
            if let Err(reason) = state {
                report(key, reason.clone());
            }
        }
        for problem in &self.consumer_table.1 {
            report(&problem.key, problem.reason.clone());
        }

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
            let chain = match &state.chain {
                Some((_, Ok(chain))) => chain.clone(),
                Some((_, Err(reason))) => {
                    report(key, reason.clone());
                    continue;
                }
                None => {
                    report(key, "plugins not built".to_owned());
                    continue;
                }
            };
            if let Some(missing) = chain
                .upstream_refs()
                .iter()
                .find(|id| !by_id.contains_key(id.as_str()))
            {
                report(
                    key,
                    format!("traffic-split: upstream {missing:?} is missing or unusable"),
                );
                continue;
            }
            let service = match &route.service_id {
                None => None,
                Some(id) => match services.get(id.as_str()) {
                    Some(service) => Some(*service),
                    None => {
                        report(key, format!("service {id:?} is missing or unusable"));
                        continue;
                    }
                },
            };
            let (upstream_id, inline, place) = match (upstream_from(route), service) {
                (UpstreamFrom::Service, Some(service)) => (
                    service.service.upstream_id.as_ref(),
                    service.inline.as_ref(),
                    "service upstream",
                ),
                _ => (
                    route.upstream_id.as_ref(),
                    state.inline.as_ref(),
                    "upstream",
                ),
            };
            let pool = match (upstream_id, inline) {
                (Some(id), _) => match by_id.get(id.as_str()) {
                    Some(pool) => (*pool).clone(),
                    None => {
                        report(key, format!("upstream {id:?} is missing or unusable"));
                        continue;
                    }
                },
                (None, Some(Ok(pool))) => {
                    if place == "upstream" {
                        pools.push(pool.clone());
                    }
                    pool.clone()
                }
                (None, Some(Err(reason))) => {
                    report(key, format!("{place}: {reason}"));
                    continue;
                }
                (None, None) => {
                    report(
                        key,
                        "no upstream (neither the route nor its service has one)".to_owned(),
                    );
                    continue;
                }
            };
            // The chain's needs are met per route (the fast path collects headers
            // after routing for such routes); this is what routing and balancing need.
            reads_headers |= pool.reads_headers();
            table.push(RouteTarget {
                route: state.route.clone(),
                upstream: pool,
                plugins: chain,
            });
        }
        let mut certificates = 0;
        for (key, state) in &self.certificates {
            match state {
                Ok(_) => certificates += 1,
                Err(reason) => report(key, reason.clone()),
            }
        }
        problems.sort_by(|a, b| a.key.cmp(&b.key));

        let router = Router::build_over(self.router_index.as_ref(), table);
        reads_headers |= router.reads_headers();
        Built {
            config: RuntimeConfig {
                revision,
                router,
                pools,
                upstreams,
                certificates,
                reads_headers,
                consumers: self.consumer_table.0.clone(),
                problems: Vec::new(),
                counters: self.counters.clone(),
                unbound: None,
                upstreams_by_id: Arc::new(
                    by_id
                        .iter()
                        .map(|(id, pool)| ((*id).to_owned(), (*pool).clone()))
                        .collect(),
                ),
            },
            problems,
            new_pools,
            certificates: None,
        }
    }
}

fn compile_route(value: &[u8], id: &str, inputs: &PoolInputs) -> Result<RouteState, String> {
    let route = parse::<Route>(value, id, |r| &r.id, Route::validate, unreadable)?;
    let mut warnings = Vec::new();
    let inline = route.upstream.as_ref().map(|inline| {
        inputs.build(inline).map(|built| {
            warnings.extend(built.warnings.into_iter().map(|w| format!("upstream.{w}")));
            Arc::new(built.pool)
        })
    });
    Ok(RouteState {
        route: Arc::new(CompiledRoute::compile(route)?),
        inline,
        warnings,
        chain: None,
    })
}

/// Whose upstream a route's requests go to: its own (named or inline), else its
/// service's.
pub(crate) fn upstream_from(route: &Route) -> UpstreamFrom {
    match (&route.upstream_id, &route.upstream, &route.service_id) {
        (None, None, Some(_)) => UpstreamFrom::Service,
        _ => UpstreamFrom::Route,
    }
}

/// The chain of `route`: its plugins over its service's over the global rules', under
/// the templates (`model::plugin::effective`).
fn route_chain(
    route: &Route,
    services: &HashMap<&str, &Service>,
    globals: &[&GlobalRule],
    templates: &HashMap<&str, &PluginTemplate>,
    plugins: &mut PluginCache,
    instance: &str,
    counters: &Arc<NodeCounters>,
) -> Result<Arc<Chain>, String> {
    let service = match &route.service_id {
        None => None,
        Some(id) => Some(
            services
                .get(id.as_str())
                .ok_or_else(|| format!("service {id:?} is missing or unusable"))?,
        ),
    };
    let layers = route_layers(globals.iter().copied(), service.copied(), route);
    let merged = effective(&layers, |name| templates.get(name).copied());
    if !merged.errors.is_empty() {
        return Err(format!("invalid: {}", join_errors(&merged.errors)));
    }
    let entries = plugins.entries(instance, counters, &merged)?;
    let refs = merged
        .plugins
        .iter()
        .flat_map(|p| model::plugin::upstream_refs(p.name, &p.config))
        .map(|(_, id)| id)
        .collect();
    let chain = Chain::new(
        entries,
        RouteScope {
            route_id: route.id.clone(),
            service_id: route.service_id.clone(),
        },
    );
    Ok(Arc::new(chain.with_upstream_refs(refs)))
}

fn join_errors(errors: &[model::validate::FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn compile_service(value: &[u8], id: &str, inputs: &PoolInputs) -> Result<ServiceState, String> {
    let service = parse::<Service>(value, id, |s| &s.id, Service::validate, unreadable)?;
    let mut warnings = Vec::new();
    let inline = service.upstream.as_ref().map(|inline| {
        inputs.build(inline).map(|built| {
            warnings.extend(built.warnings.into_iter().map(|w| format!("upstream.{w}")));
            Arc::new(built.pool)
        })
    });
    Ok(ServiceState {
        service,
        inline,
        warnings,
    })
}

/// A stand-alone upstream's pool, and the registered service its nodes come from.
fn compile_upstream(
    value: &[u8],
    id: &str,
    inputs: &PoolInputs,
) -> Result<(PoolState, Option<Discovery>), String> {
    let upstream = parse::<Upstream>(value, id, |u| &u.id, Upstream::validate, unreadable)?;
    let built = inputs.build(&upstream)?;
    let state = PoolState {
        pool: Arc::new(built.pool),
        warnings: built.warnings,
    };
    Ok((state, discovery_of(Some(&upstream))))
}

/// Where an (inline) upstream takes its nodes from.
fn discovery_of(upstream: Option<&Upstream>) -> Option<Discovery> {
    upstream?.discovery.clone()
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
