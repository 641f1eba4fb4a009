//! Handlers for namespaces (requirements N1–N3): list with the gateway nodes online in
//! each, create (the id is generated), rename, delete (refused for `default` and while
//! instances live there), and the instances of one namespace.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::namespace::{Namespace, NamespaceSpec};
use model::user::Role;
use serde_json::{json, Value};

use super::{parse_json, ApiPath};
use crate::auth::Principal;
use crate::db;
use crate::error::ApiError;
use crate::state::AppState;

/// Every namespace with how many instances live there and how many of their gateway
/// nodes are online (heartbeats their agents last reported).
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<Json<Value>, ApiError> {
    // Everyone sees the namespaces they have a role in; a platform admin all.
    let namespaces: Vec<Namespace> = state
        .db
        .namespaces()
        .await?
        .into_iter()
        .filter(|ns| caller.role(&ns.id).is_some())
        .collect();
    let counts = counts(&state).await?;
    let items: Vec<Value> = namespaces
        .into_iter()
        .map(|ns| {
            let (instances, nodes) = counts.get(&ns.id).copied().unwrap_or_default();
            shown(ns, instances, nodes)
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&id, Role::Viewer)?;
    let ns = state.db.require_namespace(&id).await?;
    let (instances, nodes) = counts_of(&state, &id).await?;
    Ok(Json(shown(ns, instances, nodes)))
}

/// Creates a namespace; the answer carries its generated id.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let spec = parse_spec(&body?, None)?;
    let ns = state.db.insert_namespace(&spec, db::now()).await?;
    tracing::info!(namespace = %ns.id, name = %ns.name, "namespace created");
    Ok((StatusCode::CREATED, Json(shown(ns, 0, 0))).into_response())
}

/// Changes a namespace's name and description; its id never changes.
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&id, Role::Admin)?;
    let spec = parse_spec(&body?, Some(&id))?;
    let ns = state.db.update_namespace(&id, &spec, db::now()).await?;
    tracing::info!(namespace = %ns.id, name = %ns.name, "namespace changed");
    let (instances, nodes) = counts_of(&state, &id).await?;
    Ok(Json(shown(ns, instances, nodes)))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_platform_admin()?;
    state.db.delete_namespace(&id).await?;
    tracing::info!(namespace = %id, "namespace deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The instances living in the namespace, across clusters, with their online nodes.
pub(super) async fn instances(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&id, Role::Viewer)?;
    state.db.require_namespace(&id).await?;
    let mut items = Vec::new();
    for cluster in state.db.clusters().await? {
        for instance in state.db.instances(&cluster.name).await? {
            if instance.namespace == id {
                let nodes = state.nodes(&instance.cluster, &instance.name).len();
                let mut value =
                    serde_json::to_value(&instance).map_err(|e| ApiError::Internal(e.into()))?;
                value["online_nodes"] = json!(nodes);
                items.push(value);
            }
        }
    }
    Ok(Json(json!({ "items": items })))
}

/// Per namespace: its instances and their online gateway nodes.
async fn counts(state: &AppState) -> Result<HashMap<String, (usize, usize)>, ApiError> {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for (namespace, cluster, instance) in state.db.instance_namespaces().await? {
        let entry = counts.entry(namespace).or_default();
        entry.0 += 1;
        entry.1 += state.nodes(&cluster, &instance).len();
    }
    Ok(counts)
}

async fn counts_of(state: &AppState, id: &str) -> Result<(usize, usize), ApiError> {
    Ok(counts(state).await?.get(id).copied().unwrap_or_default())
}

fn shown(ns: Namespace, instances: usize, online_nodes: usize) -> Value {
    json!({
        "id": ns.id,
        "name": ns.name,
        "description": ns.description,
        "created_at": ns.created_at,
        "updated_at": ns.updated_at,
        "instances": instances,
        "online_nodes": online_nodes,
    })
}

fn parse_spec(body: &[u8], path_id: Option<&str>) -> Result<NamespaceSpec, ApiError> {
    let spec: NamespaceSpec = parse_json("namespace", body)?;
    spec.validate(path_id).map_err(|errors| ApiError::Invalid {
        what: "namespace".into(),
        errors,
    })?;
    Ok(spec)
}
