//! The data plane: a gateway node serving one instance's config, built on Pingora.
//!
//! [`run`] wires the three loops of a node:
//!
//! ```text
//! proxy      Pingora HTTP/1.1 service; each request reads one RuntimeConfig snapshot (proxy.rs)
//! config     PrefixWatcher(instance) → ConfigObjects → runtime::build → ArcSwap::store
//!            → applied revision → heartbeat
//! heartbeat  nodes/{node_id} = {address, applied revision} on a lease (heartbeat.rs)
//! ```
//!
//! The store is the gateway's only input: when it is unreachable the last good config
//! keeps serving and the watch resumes by itself. Startup is a reload from the empty
//! config: until the first listing arrives every request gets a 404.

pub mod balancer;
mod heartbeat;
mod proxy;
pub mod router;
pub mod runtime;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use model::snapshot::Revision;
use pingora_core::server::configuration::ServerConf;
use store::keys::Keyspace;
use store::watch::PrefixWatcher;
use store::ConfigStore;
use tokio::sync::watch;

use crate::proxy::{InFlight, Proxy};
use crate::runtime::{ConfigObjects, RuntimeConfig};

/// How long shutdown waits for requests in flight before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct GatewayConfig {
    /// Where to serve traffic.
    pub listen: SocketAddr,
    /// The instance whose config this node serves.
    pub instance: String,
    /// Unique per node; names the heartbeat key.
    pub node_id: String,
    /// Shown in the heartbeat; usually the listen address.
    pub advertise_address: String,
    /// How often the heartbeat is written; its lease lives max(3 × this, 5 s).
    pub heartbeat_interval: Duration,
}

/// Runs the node until `shutdown` flips to true; then stops accepting, lets requests in
/// flight finish (for up to 10 s), revokes the heartbeat lease and returns.
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

    let current = Arc::new(ArcSwap::from_pointee(RuntimeConfig::default()));
    let in_flight = Arc::new(InFlight::default());
    let (applied_tx, applied_rx) = watch::channel(Revision(0));
    // The config loop and the heartbeat outlive the listener: they stop only once the
    // requests in flight are done, so those keep a current config and the node stays
    // visible while it drains.
    let (stop_tx, stop_rx) = watch::channel(false);

    let config_loop = tokio::spawn(config_loop(
        PrefixWatcher::new(store.clone(), keyspace.instance_prefix(&config.instance)),
        ConfigObjects::new(keyspace.clone(), config.instance.clone()),
        current.clone(),
        applied_tx,
        stop_rx.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat::run(
        heartbeat::Heartbeat {
            store,
            key: keyspace.node(&config.instance, &config.node_id),
            node_id: config.node_id.clone(),
            address: config.advertise_address.clone(),
            interval: config.heartbeat_interval,
        },
        applied_rx,
        stop_rx,
    ));

    let server_conf = Arc::new(ServerConf::default());
    let mut service = pingora_proxy::http_proxy_service(
        &server_conf,
        Proxy {
            config: current,
            in_flight: in_flight.clone(),
        },
    );
    service.add_tcp(&config.listen.to_string());
    tracing::info!(listen = %config.listen, instance = %config.instance, node = %config.node_id, "gateway serving");
    // Returns once the accept loops have seen `shutdown`; connections already accepted
    // go on in their own tasks. Spawned so a panic in Pingora becomes an error here.
    let served = tokio::spawn(async move {
        pingora_core::services::Service::start_service(&mut service, None, shutdown, 1).await;
    })
    .await;

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, in_flight.idle()).await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = in_flight.count(),
            "requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway"
        );
    }
    stop_tx.send_replace(true);
    let _ = config_loop.await;
    let _ = heartbeat.await;
    served.context("the proxy service failed")?;
    tracing::info!(node = %config.node_id, "gateway stopped");
    Ok(())
}

/// Follows the instance's prefix and swaps in a new runtime config after every change.
async fn config_loop(
    mut watcher: PrefixWatcher,
    mut objects: ConfigObjects,
    current: Arc<ArcSwap<RuntimeConfig>>,
    applied: watch::Sender<Revision>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let update = tokio::select! {
            update = watcher.next() => update,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        if !objects.apply(update) {
            continue;
        }
        // Building resolves host names, which blocks: keep it off the async workers.
        let input = objects.clone();
        let built = tokio::task::spawn_blocking(move || runtime::build(&input)).await;
        let (config, problems) = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::error!(error = %e, "building the config failed; keeping the current one");
                continue;
            }
        };
        for p in &problems {
            tracing::warn!(key = %p.key, reason = %p.reason, "config object not served");
        }
        tracing::info!(
            revision = %config.revision,
            routes = config.router.len(),
            upstreams = config.upstreams,
            problems = problems.len(),
            "config applied"
        );
        let revision = config.revision;
        current.store(Arc::new(config));
        applied.send_replace(revision);
    }
}
