//! The data plane: a gateway node serving one instance's config, built on Pingora.
//!
//! [`run`] wires the loops of a node:
//!
//! ```text
//! proxy      Pingora HTTP service; each request reads one RuntimeConfig snapshot (proxy.rs)
//! config     PrefixWatcher(instance) → ConfigObjects → Compiler::build (changed objects
//!            only) → ArcSwap swap → NodeStatus → heartbeat; snapshot file every ≤ 1 s
//! tls        a certificate changed → the build makes a CertTable → ArcSwap, read by
//!            every TLS handshake (tls.rs)
//! heartbeat  nodes/{node_id} = {address, revision, source, upstream health} on a lease
//! status     optional /healthz, /readyz, /status listener (status.rs)
//! ```
//!
//! The store is the gateway's only input (besides its own snapshot file): when it is
//! unreachable the last good config keeps serving and the watch resumes by itself.
//! Startup is a reload from the empty config: until the first listing (or, when the
//! store does not answer within 2 s, the local snapshot) arrives every request gets a
//! 404 and every TLS handshake fails (no certificate yet).

pub mod balancer;
pub mod consumers;
pub mod core;
mod fastpath;
pub mod health;
mod heartbeat;
pub mod kubernetes;
pub mod metrics;
pub mod normalize;
pub mod plugins;
mod proxy;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod settings;
pub mod snapshot;
mod status;
pub mod tester;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use model::cluster::ConfigSource;
use model::snapshot::Revision;
use pingora_core::server::configuration::ServerConf;
use store::keys::Keyspace;
use store::watch::{PrefixWatcher, Update};
use store::ConfigStore;
use tokio::sync::watch;

/// The gateway's hash map: keys such as hosts, paths, ids and credentials come from
/// clients or config, so the hasher is seeded per process; foldhash is several times
/// faster than SipHash on short keys.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use crate::core::rate::MinRate;
use crate::proxy::{InFlight, Proxy};
use crate::runtime::{Compiler, ConfigObjects, RuntimeConfig};
pub use crate::settings::HttpSettings;
use crate::snapshot::SnapshotFile;

/// With a snapshot file, how long the node waits for the store's first listing
/// before it serves the snapshot instead.
const COLD_START_GRACE: Duration = Duration::from_secs(2);

/// The snapshot file is rewritten at most this often.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// The name of the listening service in Pingora's logs.
const SERVICE: &str = "Pingora HTTP Proxy Service";

pub struct GatewayConfig {
    /// Where to serve plaintext traffic: HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    pub listen: SocketAddr,
    /// Where to serve TLS (1.2 and 1.3; ALPN `h2`, `http/1.1`) with the instance's
    /// certificates, picked by SNI; no listener when `None`.
    pub tls_listen: Option<SocketAddr>,
    /// A PEM bundle of CAs; when set, the TLS listener requires every client to present
    /// a certificate signed by one of them (mTLS).
    pub client_ca: Option<PathBuf>,
    /// The instance whose config this node serves.
    pub instance: String,
    /// The namespace the node is bound to (requirement N3): it serves the instance only
    /// while the instance belongs to it. `None`: the node follows its instance's.
    pub namespace: Option<String>,
    /// Unique per node; names the heartbeat key.
    pub node_id: String,
    /// Shown in the heartbeat; usually the listen address.
    pub advertise_address: String,
    /// How often the heartbeat is written; its lease lives max(3 × this, 5 s).
    pub heartbeat_interval: Duration,
    /// Request limits and the trusted-proxy rules for the client's address.
    pub http: HttpSettings,
    /// Where the node keeps its last good config; read at start when the store does not
    /// answer within 2 s.
    pub snapshot_file: Option<PathBuf>,
    /// Where to serve `/healthz`, `/readyz` and `/status` (keep it off the public side).
    pub status_listen: Option<SocketAddr>,
    /// How long shutdown lets requests in flight (WebSockets included) finish before it
    /// stops anyway.
    pub drain_timeout: Duration,
    /// Worker threads of the data plane (listeners and connections); 0: one per core.
    pub threads: usize,
    /// The Kubernetes clusters upstreams in `kubernetes` discovery mode may name (the
    /// cross-cluster controller's file format); re-read on its `reload_every`.
    pub kubernetes_clusters: Option<PathBuf>,
}

/// What the node serves, as the heartbeat and the status endpoint report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub revision: Revision,
    pub source: ConfigSource,
    /// When the node swapped in this revision (unix milliseconds).
    pub applied_at_ms: i64,
}

/// Runs the node until `shutdown` flips to true; then stops accepting, lets requests in
/// flight finish (for up to `drain_timeout`), revokes the heartbeat lease and returns.
pub async fn run(
    config: GatewayConfig,
    store: Arc<dyn ConfigStore>,
    keyspace: Keyspace,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.heartbeat_interval.is_zero(),
        "the heartbeat interval must be above 0"
    );
    // Pingora panics when it cannot bind; find out first and say why.
    std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    if let Some(addr) = config.tls_listen {
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} for TLS"))?;
    }
    let mut kubernetes = match &config.kubernetes_clusters {
        Some(path) => Some(Kubernetes::start(path.clone())?),
        None => None,
    };
    let status_listener = match config.status_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for status"))?,
        ),
        None => None,
    };

    let current = Arc::new(ArcSwap::from_pointee(RuntimeConfig::default()));
    // Read by every TLS handshake, replaced by the config loop when certificates change.
    let cert_table = Arc::new(ArcSwap::from_pointee(tls::CertTable::default()));
    let tls_settings = match config.tls_listen {
        Some(_) => Some(tls::listener_settings(
            tls::CertResolver::new(cert_table.clone()),
            config.client_ca.as_deref(),
        )?),
        None => None,
    };
    let in_flight = Arc::new(InFlight::default());
    // Requests and connections of both engines, sampled once a second for the
    // heartbeat.
    let load = Arc::new(core::load::Load::default());
    let (status_tx, status_rx) = watch::channel(NodeStatus::default());
    // The config loop and the heartbeat outlive the listener: they stop only once the
    // requests in flight are done, so those keep a current config and the node stays
    // visible while it drains.
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (kubernetes_tx, kubernetes_rx) = watch::channel(serde_json::Value::Null);
    let mut compiler = Compiler::new(
        ConfigObjects::new(keyspace.clone(), config.instance.clone())
            .bound_to(config.namespace.clone()),
    );
    if let Some(kubernetes) = &mut kubernetes {
        kubernetes.configure(&mut compiler);
        kubernetes_tx.send_replace(compiler.kubernetes.status());
    }

    let config_loop = tokio::spawn(
        ConfigLoop {
            watcher: PrefixWatcher::new(store.clone(), keyspace.instance_prefix(&config.instance)),
            registry: PrefixWatcher::new(store.clone(), keyspace.registry_prefix()),
            kubernetes,
            kubernetes_status: kubernetes_tx,
            compiler: Some(compiler),
            current: current.clone(),
            cert_table,
            status: status_tx,
            snapshot: config.snapshot_file.clone().map(SnapshotFile::new),
            instance: config.instance.clone(),
            next_save: None,
            loaded: false,
            saving: None,
        }
        .run(stop_rx.clone()),
    );
    let heartbeat = tokio::spawn(heartbeat::run(
        heartbeat::Heartbeat {
            store,
            key: keyspace.node(&config.instance, &config.node_id),
            node_id: config.node_id.clone(),
            address: config.advertise_address.clone(),
            interval: config.heartbeat_interval,
            config: current.clone(),
            load: load.clone(),
            in_flight: in_flight.clone(),
        },
        status_rx.clone(),
        stop_rx.clone(),
    ));
    let sampler = tokio::spawn(core::load::sample_every_second(
        load.clone(),
        stop_rx.clone(),
    ));
    let status_server = status_listener.map(|listener| {
        tokio::spawn(status::serve(
            listener,
            status::StatusState {
                node_id: config.node_id.clone(),
                instance: config.instance.clone(),
                config: current.clone(),
                status: status_rx,
                in_flight: in_flight.clone(),
                draining: draining.clone(),
                kubernetes: kubernetes_rx,
            },
            stop_rx,
        ))
    });

    // Idle upstream connections Pingora keeps (all nodes together). Its default, 128,
    // is below what one HTTP/2 client alone keeps in flight (32 connections x 10
    // streams in the bench): every request over it opened a new upstream connection.
    let server_conf = Arc::new(ServerConf {
        upstream_keepalive_pool_size: 4096,
        ..ServerConf::default()
    });
    let settings = Arc::new(config.http.clone());
    let mut proxy = pingora_proxy::http_proxy(
        &server_conf,
        Proxy {
            config: current.clone(),
            in_flight: in_flight.clone(),
            load: load.clone(),
            settings: settings.clone(),
        },
    );
    let mut options = pingora_core::apps::HttpServerOptions::default();
    // Only plaintext connections look for the HTTP/2 preface; TLS ones use ALPN.
    options.h2c = true;
    // An HTTP/2 connection with no stream open ends after this long.
    options.h2_idle_timeout = Some(config.http.h2_idle_timeout);
    proxy.server_options = Some(options);
    // The core's admission rules and time limits on every byte Pingora reads.
    let pingora = core::guard::Guard::new(proxy, &config.http, load.clone());
    tracing::info!(listen = %config.listen, instance = %config.instance, node = %config.node_id, fast_path = config.http.fast_path, "gateway serving");
    let data_plane = if config.http.fast_path {
        // Plain HTTP/1.1 requests take the fast path, which hands the rest to Pingora.
        let app =
            fastpath::FastPath::new(pingora, current, in_flight.clone(), load.clone(), settings);
        DataPlane::start(app, load, &config, tls_settings, shutdown)?
    } else {
        DataPlane::start(pingora, load, &config, tls_settings, shutdown)?
    };
    // Returns once the accept loops have seen `shutdown`; connections already accepted
    // go on in the data plane's tasks until released below.
    let served = data_plane.accepting.await;

    draining.store(true, std::sync::atomic::Ordering::Release);
    let drain_timeout = config.drain_timeout;
    let drained = tokio::time::timeout(drain_timeout, in_flight.idle()).await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = in_flight.count(),
            "requests still in flight after {drain_timeout:?}; stopping anyway"
        );
    }
    stop_tx.send_replace(true);
    let _ = config_loop.await;
    let _ = heartbeat.await;
    let _ = sampler.await;
    if let Some(server) = status_server {
        let _ = server.await;
    }
    // Connections still open (idle keep-alive ones, or past the drain timeout) end
    // with the data plane's runtime.
    let _ = data_plane.release.send(());
    let _ = tokio::task::spawn_blocking(move || data_plane.thread.join()).await;
    served.map_err(|_| anyhow::anyhow!("the proxy service failed"))?;
    tracing::info!(node = %config.node_id, "gateway stopped");
    Ok(())
}

/// Follows the instance's prefix and swaps in a new runtime config after every change;
/// keeps the snapshot file and serves it when the store is unreachable at start.
struct ConfigLoop {
    watcher: PrefixWatcher,
    /// Follows the registered service nodes (every namespace; the compiler picks the
    /// instance's).
    registry: PrefixWatcher,
    /// Follows the Kubernetes clusters upstreams in `kubernetes` mode name; `None`
    /// without a cluster list.
    kubernetes: Option<Kubernetes>,
    /// The clusters' links, for `/status`.
    kubernetes_status: watch::Sender<serde_json::Value>,
    /// Moved to a blocking thread for each build and back; `None` only meanwhile.
    compiler: Option<Compiler>,
    current: Arc<ArcSwap<RuntimeConfig>>,
    /// Read by every TLS handshake; replaced after a rebuild.
    cert_table: Arc<ArcSwap<tls::CertTable>>,
    status: watch::Sender<NodeStatus>,
    snapshot: Option<SnapshotFile>,
    instance: String,
    /// When the snapshot file is due to be rewritten; `None` when it is up to date.
    next_save: Option<tokio::time::Instant>,
    /// Whether config (from the store or the snapshot file) has been applied yet.
    loaded: bool,
    /// The snapshot file's write in progress (on a blocking thread), if any.
    saving: Option<tokio::task::JoinHandle<()>>,
}

impl ConfigLoop {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if self.snapshot.is_some() {
            let first = tokio::select! {
                update = self.watcher.next() => Some(update),
                _ = tokio::time::sleep(COLD_START_GRACE) => None,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let applied = match first {
                Some(update) => self.apply(update, ConfigSource::Store).await,
                None => self.cold_start().await,
            };
            if !applied {
                return;
            }
        }
        enum Event {
            Update(Update),
            Registry(Update),
            Kubernetes(Option<xcluster::discovery::Sent>),
            Expiry,
            ReloadClusters,
            Save,
            Stop,
        }
        loop {
            let next_save = self.next_save;
            let next_expiry = self
                .compiler
                .as_ref()
                .and_then(|c| c.kubernetes.next_expiry())
                .map(tokio::time::Instant::from_std);
            let next_reload = self.kubernetes.as_ref().map(|k| k.next_reload);
            let event = tokio::select! {
                update = self.watcher.next() => Event::Update(update),
                update = self.registry.next() => Event::Registry(update),
                update = kubernetes_update(&mut self.kubernetes) => Event::Kubernetes(update),
                _ = sleep_until(next_expiry), if next_expiry.is_some() => Event::Expiry,
                _ = sleep_until(next_reload), if next_reload.is_some() => Event::ReloadClusters,
                _ = sleep_until(next_save), if next_save.is_some() => Event::Save,
                _ = stop.wait_for(|stop| *stop) => Event::Stop,
            };
            let go_on = match event {
                Event::Update(update) => self.apply(update, ConfigSource::Store).await,
                Event::Registry(update) => self.apply_registry(update).await,
                Event::Kubernetes(update) => self.apply_kubernetes(update).await,
                Event::Expiry => {
                    let expired = self
                        .compiler
                        .as_mut()
                        .is_some_and(|c| c.kubernetes.expire());
                    self.kubernetes_changed(expired).await
                }
                Event::ReloadClusters => self.reload_clusters().await,
                Event::Save => self.save().await,
                Event::Stop => {
                    if self.next_save.is_some() {
                        self.saved().await;
                        self.save().await;
                    }
                    self.saved().await;
                    false
                }
            };
            if !go_on {
                return;
            }
        }
    }

    /// The store did not answer in time: serve the snapshot file, if there is one.
    async fn cold_start(&mut self) -> bool {
        let Some(file) = self.snapshot.clone() else {
            return true;
        };
        let instance = self.instance.clone();
        let loaded = tokio::task::spawn_blocking(move || file.load(&instance)).await;
        match loaded {
            Ok(Ok(Some(loaded))) => {
                tracing::warn!(
                    revision = loaded.revision,
                    saved_at_ms = loaded.saved_at_ms,
                    keys = loaded.kvs.len(),
                    "the store did not answer at start; serving the local snapshot until it does"
                );
                // The file holds the registered nodes too: registry-mode upstreams
                // start with the nodes last known.
                if let Some(compiler) = self.compiler.as_mut() {
                    compiler.registry.apply(Update::Reset(store::Listing {
                        revision: 0,
                        kvs: loaded.kvs.clone(),
                    }));
                }
                let reset = Update::Reset(store::Listing {
                    revision: 0,
                    kvs: loaded.kvs,
                });
                self.apply(reset, ConfigSource::LocalSnapshot).await
            }
            Ok(Ok(None)) => {
                tracing::warn!("the store did not answer at start and there is no local snapshot yet; waiting for the store");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the store did not answer at start and the local snapshot is unusable; waiting for the store");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the local snapshot failed");
                true
            }
        }
    }

    /// Applies an update and, when it changed config, builds and swaps in the new one.
    /// False when the loop cannot go on.
    async fn apply(&mut self, update: Update, source: ConfigSource) -> bool {
        let Some(compiler) = self.compiler.as_mut() else {
            return false;
        };
        if !compiler.objects.apply(update) {
            return true;
        }
        self.loaded = true;
        self.rebuild(source).await
    }

    /// Applies a registry update and, when registered nodes changed, builds again (only
    /// the pools of the services that changed are made anew). The config's source
    /// stays what it was.
    async fn apply_registry(&mut self, update: Update) -> bool {
        let Some(compiler) = self.compiler.as_mut() else {
            return false;
        };
        // Before the instance's config first arrives its build waits for it: an empty
        // config must not be swapped in (or saved over the snapshot file) for this.
        if !compiler.registry.apply(update) || !self.loaded {
            return true;
        }
        let source = self.status.borrow().source;
        self.rebuild(source).await
    }

    /// Applies a Kubernetes source's update and those queued behind it; builds again
    /// when an upstream's nodes may have changed.
    async fn apply_kubernetes(&mut self, first: Option<xcluster::discovery::Sent>) -> bool {
        let (Some(compiler), Some(kubernetes)) = (self.compiler.as_mut(), self.kubernetes.as_mut())
        else {
            return self.compiler.is_some();
        };
        let mut changed = false;
        let mut next = first;
        while let Some(sent) = next {
            if let Some(update) = kubernetes.sources.accept(sent) {
                changed |= compiler.kubernetes.apply(update);
            }
            next = kubernetes.updates.try_recv().ok();
        }
        self.kubernetes_changed(changed).await
    }

    /// Publishes the clusters' links and, when nodes may have changed, builds again
    /// (only the pools of the upstreams whose Service changed are made anew).
    async fn kubernetes_changed(&mut self, changed: bool) -> bool {
        let Some(compiler) = self.compiler.as_ref() else {
            return false;
        };
        self.kubernetes_status
            .send_replace(compiler.kubernetes.status());
        // As for the registry: before the instance's config first arrives its build
        // waits for it.
        if !changed || !self.loaded {
            return true;
        }
        let source = self.status.borrow().source;
        self.rebuild(source).await
    }

    /// Reads the cluster list again; a list that cannot be read leaves the last one.
    async fn reload_clusters(&mut self) -> bool {
        let (Some(compiler), Some(kubernetes)) = (self.compiler.as_mut(), self.kubernetes.as_mut())
        else {
            return self.compiler.is_some();
        };
        let path = kubernetes.path.clone();
        let loaded = tokio::task::spawn_blocking(move || xcluster::config::Config::load(&path))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        kubernetes.next_reload =
            tokio::time::Instant::now() + kubernetes.config.timings.reload_every;
        match loaded {
            Ok(config) if config == kubernetes.config => true,
            Ok(config) => {
                tracing::info!(
                    clusters = config.clusters.len(),
                    "kubernetes cluster list changed"
                );
                kubernetes.config = config;
                kubernetes.configure(compiler);
                kubernetes.sources.want(compiler.kubernetes_wanted());
                self.kubernetes_changed(true).await
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the kubernetes cluster list; keeping the last one");
                true
            }
        }
    }

    /// Builds from what the compiler holds and swaps the result in. False when the
    /// loop cannot go on.
    async fn rebuild(&mut self, source: ConfigSource) -> bool {
        let Some(mut compiler) = self.compiler.take() else {
            return false;
        };
        let started = std::time::Instant::now();
        // Building resolves host names, which blocks: keep it off the async workers.
        let built = tokio::task::spawn_blocking(move || {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compiler.build()));
            (compiler, built)
        })
        .await;
        let built = match built {
            Ok((compiler, built)) => {
                self.compiler = Some(compiler);
                match built {
                    Ok(built) => built,
                    Err(_) => {
                        tracing::error!("building the config panicked; keeping the current one");
                        return true;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the config build was lost; the node keeps its current config and stops following the store");
                return false;
            }
        };
        let runtime::Built {
            config,
            problems,
            new_pools,
            certificates,
        } = built;
        if let (Some(kubernetes), Some(compiler)) = (self.kubernetes.as_mut(), &self.compiler) {
            kubernetes.sources.want(compiler.kubernetes_wanted());
        }
        // Each task ends by itself once its pool is no longer in any config.
        for pool in new_pools {
            health::spawn_active_checks(pool);
        }
        if let Some(reason) = &config.unbound {
            tracing::error!(instance = %self.instance, %reason, "serving nothing");
        }
        for p in &problems {
            tracing::warn!(key = %p.key, reason = %p.reason, "config object not served");
        }
        tracing::info!(
            revision = %config.revision,
            source = ?source,
            routes = config.router.len(),
            upstreams = config.upstreams,
            problems = problems.len(),
            build_ms = started.elapsed().as_secs_f64() * 1e3,
            "config applied"
        );
        if let Some(table) = certificates {
            // The next TLS handshake uses it; established connections keep theirs.
            tracing::info!(server_names = table.len(), "certificates applied");
            self.cert_table.store(Arc::new(table));
        }
        let revision = config.revision;
        let old = self.current.swap(Arc::new(config));
        // Freeing a large table takes milliseconds: not on an async worker.
        tokio::task::spawn_blocking(move || drop(old));
        // The time a revision was first served: a rebuild at the same revision (a
        // binding change) does not move it.
        let previous = *self.status.borrow();
        let applied_at_ms = if previous.revision == revision && previous.applied_at_ms != 0 {
            previous.applied_at_ms
        } else {
            now_ms()
        };
        self.status.send_replace(NodeStatus {
            revision,
            source,
            applied_at_ms,
        });
        if source == ConfigSource::Store && self.snapshot.is_some() && self.next_save.is_none() {
            self.next_save = Some(tokio::time::Instant::now() + SNAPSHOT_INTERVAL);
        }
        true
    }

    /// Starts writing the snapshot file on a blocking thread; false when the loop cannot
    /// go on.
    async fn save(&mut self) -> bool {
        self.next_save = None;
        let (Some(compiler), Some(file)) = (self.compiler.as_ref(), self.snapshot.clone()) else {
            return self.compiler.is_some();
        };
        if self.saving.as_ref().is_some_and(|s| !s.is_finished()) {
            // The last write is still on the disk: write again later, never two at once.
            self.next_save = Some(tokio::time::Instant::now() + SNAPSHOT_INTERVAL);
            return true;
        }
        // Copying the keys costs a fraction of serialising and syncing them; the write
        // runs beside the loop, so no update waits for the disk.
        let mut keys: Vec<(String, Vec<u8>)> = compiler
            .objects
            .entries()
            .map(|(key, value)| (key.to_owned(), value.to_vec()))
            .collect();
        keys.extend(compiler.registry.entries());
        let revision = self.status.borrow().revision.0;
        let instance = self.instance.clone();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            let keys = keys
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_slice()));
            if let Err(e) = file.save(&instance, revision, keys) {
                tracing::warn!(error = %e, "could not write the local snapshot");
            }
        }));
        true
    }

    /// Waits for the snapshot write in progress, if any.
    async fn saved(&mut self) {
        if let Some(saving) = self.saving.take() {
            if let Err(e) = saving.await {
                tracing::error!(error = %e, "writing the local snapshot failed");
            }
        }
    }
}

/// The node's Kubernetes clusters: their list (a file) and a source per cluster some
/// upstream names.
struct Kubernetes {
    path: PathBuf,
    config: xcluster::config::Config,
    sources: xcluster::discovery::Sources,
    updates: tokio::sync::mpsc::UnboundedReceiver<xcluster::discovery::Sent>,
    next_reload: tokio::time::Instant,
}

impl Kubernetes {
    /// Reads the list; a list that cannot be read stops the node from starting.
    fn start(path: PathBuf) -> anyhow::Result<Self> {
        let config = xcluster::config::Config::load(&path)
            .map_err(|e| anyhow::anyhow!("--kubernetes-clusters: {e}"))?;
        let (mut sources, updates) = xcluster::discovery::Sources::new(config.timings.clone());
        sources.set_clusters(config.clusters.clone(), config.timings.clone());
        Ok(Self {
            next_reload: tokio::time::Instant::now() + config.timings.reload_every,
            path,
            config,
            sources,
            updates,
        })
    }

    /// Hands the list to the sources and its names and grace to the compiler.
    fn configure(&mut self, compiler: &mut Compiler) {
        self.sources
            .set_clusters(self.config.clusters.clone(), self.config.timings.clone());
        compiler.kubernetes.set_clusters(
            self.config
                .clusters
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            self.config.timings.grace,
        );
    }
}

/// The next update of a Kubernetes source; never without a cluster list.
async fn kubernetes_update(
    kubernetes: &mut Option<Kubernetes>,
) -> Option<xcluster::discovery::Sent> {
    match kubernetes {
        Some(kubernetes) => kubernetes.updates.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Now, in milliseconds since the Unix epoch (0 before 1970, saturating far after).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The listeners and their connections, on a runtime of their own: the config loop,
/// the store client, the heartbeat and the status server run on the caller's runtime,
/// so none of their work ever waits in line with a request.
struct DataPlane {
    /// Resolves when the accept loops have seen `shutdown` (an error: they panicked).
    accepting: tokio::sync::oneshot::Receiver<()>,
    /// Ends the runtime, and with it every connection still open.
    release: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl DataPlane {
    /// Serves `app` on the node's listeners until `shutdown`, on `config.threads`
    /// worker threads (one: a current-thread runtime, the way nginx runs one event
    /// loop per worker process). Every connection the listeners accept is counted in
    /// `load` while `app` serves it, whichever engine that is.
    fn start<A>(
        app: A,
        load: Arc<core::load::Load>,
        config: &GatewayConfig,
        tls_settings: Option<pingora_core::listeners::tls::TlsSettings>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self>
    where
        A: pingora_core::apps::ServerApp + Send + Sync + 'static,
    {
        let app = core::load::Counted::new(app, load);
        let mut service = pingora_core::services::listening::Service::new(SERVICE.into(), app);
        service.add_tcp(&config.listen.to_string());
        if let (Some(addr), Some(settings)) = (config.tls_listen, tls_settings) {
            service.add_tls_with_settings(&addr.to_string(), None, settings);
            tracing::info!(tls_listen = %addr, mtls = config.client_ca.is_some(), "gateway serving TLS");
        }
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        let runtime = builder
            .enable_all()
            .thread_name("portico-proxy")
            .build()
            .context("cannot start the data plane's runtime")?;
        let (accepting_tx, accepting) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("portico-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    pingora_core::services::Service::start_service(&mut service, None, shutdown, 1)
                        .await;
                    let _ = accepting_tx.send(());
                    let _ = released.await;
                });
            })
            .context("cannot start the data plane's thread")?;
        Ok(Self {
            accepting,
            release,
            thread,
        })
    }
}
