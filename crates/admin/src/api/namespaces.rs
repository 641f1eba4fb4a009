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
use model::cluster::Instance;
use model::namespace::{Namespace, NamespaceSpec};
use model::plugin::NamespacePluginTemplate;
use model::user::Role;

use super::{parse_json, ApiPath, Items};
use crate::auth::Principal;
use crate::db;
use crate::error::ApiError;
use crate::state::AppState;

/// A namespace as the API shows it: with how many instances live there and how many
/// of their gateway nodes are online (heartbeats their agents last reported).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NamespaceView {
    #[serde(flatten)]
    namespace: Namespace,
    instances: usize,
    online_nodes: usize,
}

/// An instance of a namespace, with its online gateway nodes.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NamespaceInstance {
    #[serde(flatten)]
    instance: Instance,
    online_nodes: usize,
}

/// Every namespace the caller has a role in (all for a platform admin).
#[utoipa::path(get, path = "/namespaces", tag = "namespaces",
    responses((status = 200, description = "the namespaces", body = Items<NamespaceView>)))]
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<Json<Items<NamespaceView>>, ApiError> {
    // Everyone sees the namespaces they have a role in; a platform admin all.
    let namespaces: Vec<Namespace> = state
        .db
        .namespaces()
        .await?
        .into_iter()
        .filter(|ns| caller.role(&ns.id).is_some())
        .collect();
    let counts = counts(&state).await?;
    let items = namespaces
        .into_iter()
        .map(|ns| {
            let (instances, nodes) = counts.get(&ns.id).copied().unwrap_or_default();
            shown(ns, instances, nodes)
        })
        .collect();
    Ok(Items::of(items))
}

/// One namespace.
#[utoipa::path(get, path = "/namespaces/{id}", tag = "namespaces",
    params(("id" = String, Path, description = "the namespace's id")),
    responses((status = 200, description = "the namespace", body = NamespaceView)))]
pub(super) async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NamespaceView>, ApiError> {
    caller.require(&id, Role::Viewer)?;
    let ns = state.db.require_namespace(&id).await?;
    let (instances, nodes) = counts_of(&state, &id).await?;
    Ok(Json(shown(ns, instances, nodes)))
}

/// Creates a namespace; the answer carries its generated id.
#[utoipa::path(post, path = "/namespaces", tag = "namespaces",
    request_body = NamespaceSpec,
    responses((status = 201, description = "the namespace with its generated id", body = NamespaceView)))]
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let spec = parse_spec(&body?, None)?;
    let ns = state.db.insert_namespace(&spec, db::now()).await?;
    tracing::info!(namespace = %ns.id, name = %ns.name, "namespace created");
    // Instances whose agents named it before it existed are bound now.
    tokio::spawn(crate::sync::rebind_namespace(state.clone(), ns.id.clone()));
    Ok((StatusCode::CREATED, Json(shown(ns, 0, 0))).into_response())
}

/// Changes a namespace's name and description; its id never changes.
#[utoipa::path(put, path = "/namespaces/{id}", tag = "namespaces",
    params(("id" = String, Path, description = "the namespace's id")),
    request_body = NamespaceSpec,
    responses((status = 200, description = "the namespace", body = NamespaceView)))]
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<NamespaceView>, ApiError> {
    caller.require(&id, Role::Admin)?;
    let spec = parse_spec(&body?, Some(&id))?;
    let ns = state.db.update_namespace(&id, &spec, db::now()).await?;
    tracing::info!(namespace = %ns.id, name = %ns.name, "namespace changed");
    let (instances, nodes) = counts_of(&state, &id).await?;
    Ok(Json(shown(ns, instances, nodes)))
}

/// Deletes a namespace (never `default`, nor one holding instances).
#[utoipa::path(delete, path = "/namespaces/{id}", tag = "namespaces",
    params(("id" = String, Path, description = "the namespace's id")),
    responses((status = 204, description = "deleted")))]
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
#[utoipa::path(get, path = "/namespaces/{id}/instances", tag = "namespaces",
    params(("id" = String, Path, description = "the namespace's id")),
    responses((status = 200, description = "the namespace's instances", body = Items<NamespaceInstance>)))]
pub(super) async fn instances(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Items<NamespaceInstance>>, ApiError> {
    caller.require(&id, Role::Viewer)?;
    state.db.require_namespace(&id).await?;
    let items = state
        .db
        .instances_in(&id)
        .await?
        .into_iter()
        .map(|instance| NamespaceInstance {
            online_nodes: state.nodes(&instance.cluster, &instance.name).len(),
            instance,
        })
        .collect();
    Ok(Items::of(items))
}

/// The namespace's plugin template overrides (requirement N5).
#[utoipa::path(get, path = "/namespaces/{id}/plugin_templates", tag = "namespaces",
    params(("id" = String, Path, description = "the namespace's id")),
    responses((status = 200, description = "the overrides, by plugin name", body = Items<NamespacePluginTemplate>)))]
pub(super) async fn list_templates(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Items<NamespacePluginTemplate>>, ApiError> {
    caller.require(&id, Role::Viewer)?;
    state.db.require_namespace(&id).await?;
    Ok(Items::of(state.db.namespace_templates(&id).await?))
}

/// One plugin's override in the namespace.
#[utoipa::path(get, path = "/namespaces/{id}/plugin_templates/{plugin}", tag = "namespaces",
    params(
        ("id" = String, Path, description = "the namespace's id"),
        ("plugin" = String, Path, description = "the plugin's name"),
    ),
    responses((status = 200, description = "the override", body = NamespacePluginTemplate)))]
pub(super) async fn get_template(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((id, plugin)): ApiPath<(String, String)>,
) -> Result<Json<NamespacePluginTemplate>, ApiError> {
    caller.require(&id, Role::Viewer)?;
    state.db.require_namespace(&id).await?;
    state
        .db
        .namespace_templates(&id)
        .await?
        .into_iter()
        .find(|t| t.id == plugin)
        .map(Json)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "namespace {id:?} has no plugin template {plugin:?}"
            ))
        })
}

/// Sets one plugin's override for every instance of the namespace (namespace admin);
/// their gateways get it with their binding at once.
#[utoipa::path(put, path = "/namespaces/{id}/plugin_templates/{plugin}", tag = "namespaces",
    params(
        ("id" = String, Path, description = "the namespace's id"),
        ("plugin" = String, Path, description = "the plugin's name"),
    ),
    request_body = NamespacePluginTemplate,
    responses(
        (status = 200, description = "replaced", body = NamespacePluginTemplate),
        (status = 201, description = "created", body = NamespacePluginTemplate),
    ))]
pub(super) async fn put_template(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((id, plugin)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&id, Role::Admin)?;
    let template: NamespacePluginTemplate = parse_json("plugin template", &body?)?;
    let mut errors = template.validate().err().unwrap_or_default();
    if template.id != plugin {
        errors.0.push(model::validate::FieldError {
            field: "id".into(),
            message: format!("must equal the plugin in the path ({plugin:?})"),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            what: "plugin template".into(),
            errors,
        });
    }
    let created = state
        .db
        .put_namespace_template(&id, &template, db::now())
        .await?;
    tracing::info!(namespace = %id, plugin = %plugin, created, "namespace plugin template set");
    tokio::spawn(crate::sync::rebind_namespace(state.clone(), id));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(template)).into_response())
}

/// Removes one plugin's override (namespace admin): its instances' own templates
/// apply again.
#[utoipa::path(delete, path = "/namespaces/{id}/plugin_templates/{plugin}", tag = "namespaces",
    params(
        ("id" = String, Path, description = "the namespace's id"),
        ("plugin" = String, Path, description = "the plugin's name"),
    ),
    responses((status = 204, description = "removed")))]
pub(super) async fn delete_template(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((id, plugin)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(&id, Role::Admin)?;
    state.db.delete_namespace_template(&id, &plugin).await?;
    tracing::info!(namespace = %id, plugin = %plugin, "namespace plugin template removed");
    tokio::spawn(crate::sync::rebind_namespace(state.clone(), id));
    Ok(StatusCode::NO_CONTENT)
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

fn shown(namespace: Namespace, instances: usize, online_nodes: usize) -> NamespaceView {
    NamespaceView {
        namespace,
        instances,
        online_nodes,
    }
}

fn parse_spec(body: &[u8], path_id: Option<&str>) -> Result<NamespaceSpec, ApiError> {
    let spec: NamespaceSpec = parse_json("namespace", body)?;
    spec.validate(path_id).map_err(|errors| ApiError::Invalid {
        what: "namespace".into(),
        errors,
    })?;
    Ok(spec)
}
