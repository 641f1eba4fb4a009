//! The data plane: a gateway node serving one instance's config, built on Pingora.
//!
//! [`run`] wires the three loops of a node: the Pingora proxy service (the request
//! spine, `proxy.rs`), the config loop (watch the instance's prefix in the store, keep
//! the object map, rebuild the runtime config with `runtime::build` and swap it in) and
//! the heartbeat (node id, address and applied revision under the instance's `nodes/`,
//! on a lease). The gateway's only input is the store: when it is unreachable the last
//! good config keeps serving and the watch resumes by itself.

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
use store::watch::{PrefixWatcher, Update};
use store::{ConfigStore, WatchEvent};
use tokio::sync::watch;

use crate::runtime::{Objects, RuntimeConfig};

pub struct GatewayConfig {
    /// Where to serve traffic.
    pub listen: SocketAddr,
    /// The instance whose config this node serves.
    pub instance: String,
    /// Unique per node; names the heartbeat key.
    pub node_id: String,
    /// Shown in the heartbeat; usually the listen address.
    pub advertise_address: String,
    pub heartbeat_interval: Duration,
}

/// Runs the node until `shutdown` flips to true, then stops accepting, lets requests in
/// flight finish, withdraws the heartbeat and returns.
pub async fn run(
    config: GatewayConfig,
    store: Arc<dyn ConfigStore>,
    keyspace: Keyspace,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Fail with a clear message instead of a panic inside Pingora's listener setup.
    std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;

    let current = Arc::new(ArcSwap::from_pointee(RuntimeConfig::default()));
    let (applied_tx, applied_rx) = watch::channel(Revision(0));

    let config_loop = tokio::spawn(config_loop(
        store.clone(),
        keyspace.clone(),
        config.instance.clone(),
        current.clone(),
        applied_tx,
        shutdown.clone(),
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
        shutdown.clone(),
    ));

    let server_conf = Arc::new(ServerConf::default());
    let mut service = pingora_proxy::http_proxy_service(
        &server_conf,
        proxy::Proxy {
            config: current.clone(),
        },
    );
    service.add_tcp(&config.listen.to_string());
    tracing::info!(listen = %config.listen, instance = %config.instance, node = %config.node_id, "gateway serving");
    pingora_core::services::Service::start_service(&mut service, None, shutdown, 1).await;

    let _ = config_loop.await;
    let _ = heartbeat.await;
    tracing::info!(node = %config.node_id, "gateway stopped");
    Ok(())
}

/// Follows the instance's prefix and swaps in a new runtime config after every update.
async fn config_loop(
    store: Arc<dyn ConfigStore>,
    keyspace: Keyspace,
    instance: String,
    current: Arc<ArcSwap<RuntimeConfig>>,
    applied: watch::Sender<Revision>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watcher = PrefixWatcher::new(store, keyspace.instance_prefix(&instance));
    let mut objects = Objects::new();
    let nodes_prefix = keyspace.nodes_prefix(&instance);
    loop {
        let update = tokio::select! {
            update = watcher.next() => update,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let changed = apply_update(&mut objects, update, &nodes_prefix);
        if !changed {
            continue;
        }
        let (config, problems) = runtime::build(&keyspace, &instance, &objects);
        for p in &problems {
            tracing::warn!(key = %p.key, reason = %p.reason, "skipping object");
        }
        tracing::info!(
            instance = %instance,
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

/// Applies a watch update to the object map; false when only heartbeats changed.
fn apply_update(objects: &mut Objects, update: Update, nodes_prefix: &str) -> bool {
    match update {
        Update::Reset(listing) => {
            *objects = listing
                .kvs
                .into_iter()
                .filter(|kv| !kv.key.starts_with(nodes_prefix))
                .map(|kv| (kv.key, kv.value))
                .collect();
            true
        }
        Update::Changes(batch) => {
            let mut changed = false;
            for event in batch.events {
                if event.key().starts_with(nodes_prefix) {
                    continue;
                }
                changed = true;
                match event {
                    WatchEvent::Put(kv) => {
                        objects.insert(kv.key, kv.value);
                    }
                    WatchEvent::Delete { key, .. } => {
                        objects.remove(&key);
                    }
                }
            }
            changed
        }
    }
}
