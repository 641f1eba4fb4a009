//! The cluster agent: the admin's only entry into a cluster.
//!
//! It serves `/agent/apiserver/v1/instances…`, reports the instances it manages (named
//! by `PORTICO_INSTANCES`) with the revision the store holds, the gateway nodes that
//! heartbeat there and which store that is, and writes the admin's changes into the
//! config store under each instance's prefix, every write in one transaction with the
//! instance's `meta` revision. Instances share one store by default; any of them may
//! have a store of its own (requirement M5, [`AgentState::with_instance_store`]).
//! A write is applied only on top of the revision just before it, so a lost push can
//! never be hidden by a later one: the admin then sends the full snapshot instead.

mod api;
mod error;
mod registry;
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use model::cluster::StoreInfo;
use store::keys::Keyspace;
use store::ConfigStore;

pub use api::app;
pub use error::AgentError;

/// What the agent needs to serve; cheap to clone (shared by all handlers).
#[derive(Clone)]
pub struct AgentState {
    /// The store of every instance without one of its own.
    default_store: Arc<InstanceStore>,
    /// Instances with a store of their own (a subset of `instances`).
    own_stores: Arc<BTreeMap<String, Arc<InstanceStore>>>,
    /// Instance name → the namespace its environment puts it in (`None`: unsaid).
    instances: Arc<BTreeMap<String, Option<String>>>,
    /// Hash of the bearer token the admin must present (checked by `apikit::auth`).
    token: Arc<apikit::TokenHash>,
    /// Hash of the token services present to register (`registry.rs`); `None`: only
    /// the admin's token may.
    registry_token: Option<apikit::TokenHash>,
    /// Body limit and client timeouts of the API.
    limits: apikit::Limits,
    /// Serve HTTPS with this configuration (`apikit::tls::server_config`).
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl AgentState {
    /// `instances` are names, each optionally with the namespace it belongs to
    /// (`orders@team-a`); `namespace` is the namespace of those without one (`None`:
    /// the agent says nothing, and the admin puts them in `default`). Fails when a
    /// name or namespace is not a valid id or the token is empty.
    pub fn new(
        store: Arc<dyn ConfigStore>,
        keyspace: Keyspace,
        instances: impl IntoIterator<Item = String>,
        namespace: Option<&str>,
        token: &str,
    ) -> anyhow::Result<Self> {
        let mut map = BTreeMap::new();
        for entry in instances {
            let (name, own) = match entry.split_once('@') {
                Some((name, ns)) => (name.to_owned(), Some(ns.to_owned())),
                None => (entry, None),
            };
            let namespace = own.or_else(|| namespace.map(str::to_owned));
            let mut v = model::validate::Validator::new();
            model::validate::check_id(&mut v, "instance", &name);
            if let Some(ns) = &namespace {
                model::validate::check_id(&mut v, "namespace", ns);
            }
            if let Err(e) = v.finish() {
                anyhow::bail!("invalid instance entry {name:?}: {e}");
            }
            map.insert(name, namespace);
        }
        let instances = map;
        if instances.is_empty() {
            anyhow::bail!("the agent needs at least one instance name (PORTICO_INSTANCES)");
        }
        if token.trim().is_empty() {
            anyhow::bail!("the agent token must not be empty (PORTICO_AGENT_TOKEN)");
        }
        Ok(Self {
            default_store: Arc::new(InstanceStore {
                store,
                keyspace,
                info: None,
            }),
            own_stores: Arc::new(BTreeMap::new()),
            instances: Arc::new(instances),
            token: Arc::new(apikit::TokenHash::of(token)),
            registry_token: None,
            limits: apikit::Limits::with_max_body(api::MAX_BODY),
            tls: None,
        })
    }

    /// Says which store the default one is, in the instance report (backend and
    /// endpoints: [`store::describe_url`]).
    pub fn with_store_info(mut self, info: StoreInfo) -> Self {
        let default = InstanceStore {
            store: self.default_store.store.clone(),
            keyspace: self.default_store.keyspace.clone(),
            info: Some(info),
        };
        self.default_store = Arc::new(default);
        self
    }

    /// Keeps `instance` (one this agent manages) in a store of its own instead of the
    /// default one: every read and write of its keys goes there, and its report says
    /// `info`.
    pub fn with_instance_store(
        mut self,
        instance: &str,
        store: Arc<dyn ConfigStore>,
        keyspace: Keyspace,
        info: Option<StoreInfo>,
    ) -> anyhow::Result<Self> {
        if !self.instances.contains_key(instance) {
            anyhow::bail!(
                "a store is given for instance {instance:?}, which this agent does not manage"
            );
        }
        let mut own = (*self.own_stores).clone();
        own.insert(
            instance.to_owned(),
            Arc::new(InstanceStore {
                store,
                keyspace,
                info,
            }),
        );
        self.own_stores = Arc::new(own);
        Ok(self)
    }

    /// The store `instance` is kept in.
    pub(crate) fn store_of(&self, instance: &str) -> &InstanceStore {
        self.own_stores.get(instance).unwrap_or(&self.default_store)
    }

    /// Every store the agent's instances are kept in, each once, the default store
    /// first: the registry is written to all of them, so every gateway of the cluster
    /// sees it in the store it watches.
    pub(crate) fn registry_stores(&self) -> Vec<&InstanceStore> {
        let mut stores: Vec<&InstanceStore> = Vec::new();
        if self
            .instances
            .keys()
            .any(|instance| !self.own_stores.contains_key(instance))
        {
            stores.push(&self.default_store);
        }
        for own in self.own_stores.values() {
            if !stores.iter().any(|s| Arc::ptr_eq(&s.store, &own.store)) {
                stores.push(own);
            }
        }
        stores
    }

    /// Serves HTTPS instead of HTTP (see `apikit::tls::server_config`: a certificate
    /// and key, optionally a CA whose client certificates alone are served).
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Lets services register into the registry with this token, which opens nothing
    /// else. Fails when it is empty or equal to the agent's token.
    pub fn with_registry_token(mut self, token: &str) -> anyhow::Result<Self> {
        if token.trim().is_empty() {
            anyhow::bail!("the registry token must not be empty (PORTICO_REGISTRY_TOKEN)");
        }
        let hash = apikit::TokenHash::of(token);
        if hash == *self.token {
            anyhow::bail!("the registry token must differ from the agent token: services hold it");
        }
        self.registry_token = Some(hash);
        Ok(self)
    }

    /// Other client timeouts than the defaults (10 s for a head, 30 s for a body).
    pub fn with_timeouts(
        mut self,
        header_read_timeout: std::time::Duration,
        body_timeout: std::time::Duration,
    ) -> Self {
        self.limits.header_read_timeout = header_read_timeout;
        self.limits.body_timeout = body_timeout;
        self
    }
}

/// One config store and the keyspace an instance's keys are spelled in there.
pub(crate) struct InstanceStore {
    pub store: Arc<dyn ConfigStore>,
    pub keyspace: Keyspace,
    /// What the instance report says about it (`None`: not told).
    pub info: Option<StoreInfo>,
}

/// Parses `--instance-store` / `PORTICO_INSTANCE_STORES`: comma-separated
/// `instance=url` pairs (a URL holds no comma but etcd's list of hosts, so a piece
/// without `=` continues the URL before it: `a=etcd://h1:2379,h2:2379,b=redis://h:6379`).
pub fn parse_instance_stores(list: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match piece.split_once('=') {
            Some((name, url)) if !name.contains("://") => {
                let name = name.trim();
                if pairs.iter().any(|(n, _)| n == name) {
                    anyhow::bail!("instance {name:?} is given two stores");
                }
                pairs.push((name.to_owned(), url.trim().to_owned()));
            }
            _ => match pairs.last_mut() {
                Some((_, url)) => {
                    url.push(',');
                    url.push_str(piece);
                }
                None => anyhow::bail!(
                    "expected instance=store-url pairs, e.g. instance_a=etcd://127.0.0.1:2379"
                ),
            },
        }
    }
    Ok(pairs)
}

/// Parses `PORTICO_INSTANCES`-style lists: comma-separated, blanks ignored.
pub fn parse_instance_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Serves the agent API on `listener` (HTTPS when configured) until `shutdown` flips to
/// true, through `apikit::serve_with` (early 413, header-read and body timeouts).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AgentState,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (limits, tls) = (state.limits, state.tls.clone());
    apikit::serve_with(listener, app(state), limits, tls, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_stores_parse() {
        let pairs = super::parse_instance_stores(
            "a=etcd://h1:2379,h2:2379/root, b=redis://:p%40w@h:6379/x",
        )
        .unwrap();
        assert_eq!(
            pairs,
            [
                ("a".to_owned(), "etcd://h1:2379,h2:2379/root".to_owned()),
                ("b".to_owned(), "redis://:p%40w@h:6379/x".to_owned()),
            ]
        );
        assert!(super::parse_instance_stores("etcd://h:1").is_err());
        assert!(super::parse_instance_stores("a=etcd://h:1,a=etcd://h:2").is_err());
        assert!(super::parse_instance_stores("").unwrap().is_empty());
    }
}
