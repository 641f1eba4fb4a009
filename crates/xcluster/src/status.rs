//! The controller's own HTTP endpoints, on its status port: `/healthz` (the process is
//! up), `/status` (JSON: every cluster's link, last sync, endpoints contributed; every
//! production Service's union; writes; whether this replica leads) and `/metrics` (the
//! same in the Prometheus text format, with the reconcile latency histogram).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::aggregator::Status;
use crate::union::{Link, Role};

type Shared = Arc<Mutex<Status>>;

/// Serves the endpoints on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/status", get(status_page))
        .route("/metrics", get(metrics_page))
        .with_state(status);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
}

fn snapshot(status: &Shared) -> Status {
    status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

async fn status_page(
    axum::extract::State(status): axum::extract::State<Shared>,
) -> axum::Json<Value> {
    axum::Json(to_json(&snapshot(&status)))
}

async fn metrics_page(
    axum::extract::State(status): axum::extract::State<Shared>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&snapshot(&status)),
    )
}

fn link_name(link: Link) -> &'static str {
    match link {
        Link::Unknown => "unknown",
        Link::Synced => "synced",
        Link::Lost { .. } => "lost",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Production => "production",
        Role::Peak => "peak",
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The status as JSON.
pub fn to_json(status: &Status) -> Value {
    let clusters: Vec<Value> = status
        .clusters
        .iter()
        .map(|(name, cluster)| {
            json!({
                "name": name,
                "role": role_name(cluster.role),
                "provider": cluster.provider,
                "link": link_name(cluster.link),
                "lost_for_seconds": match cluster.link {
                    Link::Lost { since } => Some(since.elapsed().as_secs_f64()),
                    _ => None,
                },
                "last_synced": cluster.last_synced.map(unix_seconds),
                "services": cluster.services,
                "endpoints_contributed": cluster.contributed,
            })
        })
        .collect();
    let services: Vec<Value> = status
        .union_sizes
        .iter()
        .map(|((cluster, key), size)| {
            json!({
                "cluster": cluster,
                "namespace": key.namespace,
                "name": key.name,
                "union_endpoints": size,
            })
        })
        .collect();
    json!({
        "leader": status.leader,
        "clusters": clusters,
        "services": services,
        "plans": status.plans,
        "writes": {"applied": status.applied, "deleted": status.deleted, "failed": status.failed},
        "last_reconcile_seconds": status.last_reconcile.map(|d| d.as_secs_f64()),
        "problems": status.problems,
    })
}

type Labels = Vec<(String, String)>;

/// The status in the Prometheus text format.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("portico_xcluster");
    let synced: Family<Labels, Gauge> = Family::default();
    let last_sync: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let contributed: Family<Labels, Gauge> = Family::default();
    let services: Family<Labels, Gauge> = Family::default();
    for (name, cluster) in &status.clusters {
        let labels = vec![
            ("cluster".to_owned(), name.clone()),
            ("role".to_owned(), role_name(cluster.role).to_owned()),
            ("provider".to_owned(), cluster.provider.clone()),
        ];
        synced
            .get_or_create(&labels)
            .set(i64::from(cluster.link == Link::Synced));
        if let Some(at) = cluster.last_synced {
            last_sync.get_or_create(&labels).set(unix_seconds(at));
        }
        contributed
            .get_or_create(&labels)
            .set(i64::try_from(cluster.contributed).unwrap_or(i64::MAX));
        services
            .get_or_create(&labels)
            .set(i64::try_from(cluster.services).unwrap_or(i64::MAX));
    }
    registry.register(
        "cluster_synced",
        "1 while the cluster's watches and probe answer and its caches are complete",
        synced,
    );
    registry.register(
        "cluster_last_sync_timestamp_seconds",
        "When the cluster was last synced (Unix time)",
        last_sync,
    );
    registry.register(
        "endpoints_contributed",
        "Ready endpoints a peak cluster gives to production Services",
        contributed,
    );
    registry.register(
        "cluster_services",
        "Services labelled ex-remote in the cluster",
        services,
    );
    let union: Family<Labels, Gauge> = Family::default();
    for ((cluster, key), size) in &status.union_sizes {
        union
            .get_or_create(&vec![
                ("cluster".to_owned(), cluster.clone()),
                ("namespace".to_owned(), key.namespace.clone()),
                ("service".to_owned(), key.name.clone()),
            ])
            .set(i64::try_from(*size).unwrap_or(i64::MAX));
    }
    registry.register(
        "union_endpoints",
        "Ready addresses of a production Service's union (its own and its peers')",
        union,
    );
    let writes: Family<Labels, Counter> = Family::default();
    for (result, count) in [
        ("applied", status.applied),
        ("deleted", status.deleted),
        ("failed", status.failed),
    ] {
        writes
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc_by(count);
    }
    registry.register("slice_writes", "EndpointSlice writes by result", writes);
    registry.register("plans", "Union plans made", ConstCounter::new(status.plans));
    registry.register(
        "reconcile_duration_seconds",
        "From the first change a plan acted on to its writes being done",
        status.reconcile.clone(),
    );
    registry.register(
        "leader",
        "1 when this replica holds the Lease and writes",
        ConstGauge::new(i64::from(status.leader)),
    );
    registry.register(
        "problems",
        "Services whose labels contradict their cluster's role",
        ConstGauge::new(i64::try_from(status.problems.len()).unwrap_or(i64::MAX)),
    );
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
