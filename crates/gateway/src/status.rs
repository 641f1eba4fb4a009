//! The node's own HTTP endpoints, on a listener of their own (not the traffic port):
//! `/healthz` (the process is up), `/readyz` (config loaded and not draining: put the
//! node in a load balancer's rotation), `/status` (what it serves, as JSON),
//! `/metrics` (Prometheus text format, `metrics.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use model::cluster::ConfigSource;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::proxy::InFlight;
use crate::runtime::RuntimeConfig;
use crate::NodeStatus;

#[derive(Clone)]
pub(crate) struct StatusState {
    pub node_id: String,
    pub instance: String,
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    pub status: watch::Receiver<NodeStatus>,
    pub in_flight: Arc<InFlight>,
    pub draining: Arc<AtomicBool>,
    /// The Kubernetes clusters' links (`null` without a cluster list).
    pub kubernetes: watch::Receiver<Value>,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: StatusState,
    mut stop: watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the status listener failed");
    }
}

async fn ready(State(state): State<StatusState>) -> (StatusCode, &'static str) {
    if state.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match state.status.borrow().source {
        ConfigSource::None => (StatusCode::SERVICE_UNAVAILABLE, "no config loaded yet\n"),
        ConfigSource::Store | ConfigSource::LocalSnapshot => (StatusCode::OK, "ready\n"),
    }
}

async fn status(State(state): State<StatusState>) -> Json<Value> {
    let node = *state.status.borrow();
    let config = state.config.load();
    Json(json!({
        "node_id": state.node_id,
        "instance": state.instance,
        "applied_revision": node.revision,
        "config_source": node.source,
        "routes": config.router.len(),
        "upstreams": config.upstreams,
        "certificates": config.certificates,
        "in_flight": state.in_flight.count(),
        "draining": state.draining.load(Ordering::Acquire),
        "kubernetes": state.kubernetes.borrow().clone(),
    }))
}

async fn metrics(State(state): State<StatusState>) -> impl axum::response::IntoResponse {
    let config = state.config.load();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        config.counters.metrics.render(&config),
    )
}
