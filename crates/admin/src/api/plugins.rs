//! The plugin catalog (`model::plugin`): what a `plugins` object may hold, each
//! plugin's default priority and phases, and the JSON Schema of its config, for API
//! clients and the console's generated forms; and the effective plugins of a route.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use model::plugin::{EffectivePlugin, PluginDescription, Skipped};
use model::snapshot::Revision;
use model::validate::FieldError;

use super::{ApiPath, Items, Scope};
use crate::error::ApiError;
use crate::state::AppState;

/// The plugins that run for a route, as `GET …/plugins/effective` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EffectiveView {
    route: String,
    /// The consumer merged in, if one was named.
    consumer: Option<String>,
    revision: Revision,
    /// False: a merged configuration is invalid and the gateway does not serve the
    /// route.
    servable: bool,
    /// In running order.
    plugins: Vec<EffectivePlugin>,
    skipped: Vec<Skipped>,
    errors: Vec<FieldError>,
}

/// `GET /plugins`: every plugin, highest priority (first to run) first.
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, description = "the plugin catalog", body = Items<PluginDescription>)))]
pub(super) async fn list_plugins() -> Json<Items<PluginDescription>> {
    let mut items: Vec<_> = model::plugin::CATALOG
        .iter()
        .map(|p| p.describe())
        .collect();
    items.sort_by_key(|p| std::cmp::Reverse(p.priority));
    Items::of(items)
}

/// `GET /plugins/{name}`: one plugin, with the JSON Schema of its configuration.
#[utoipa::path(get, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "the plugin's name")),
    responses((status = 200, description = "the plugin", body = PluginDescription)))]
pub(super) async fn get_plugin(
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PluginDescription>, ApiError> {
    let plugin = model::plugin::find(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no plugin named {name:?}")))?;
    Ok(Json(plugin.describe()))
}

/// `GET …/routes/{id}/plugins/effective[?consumer=<id>]`: the plugins that run for the
/// route, in running order, each with its final configuration and the layer it came
/// from; the configured ones that do not run and why; and any merged configuration
/// that is invalid (the gateway then does not serve the route). With `consumer`, the
/// consumer's (and its group's) plugins are merged in as they are after
/// authentication. Computed by `model::plugin::effective`, the function the gateway
/// builds its chains with.
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/routes/{id}/plugins/effective", tag = "plugins",
    params(
        super::InstancePath,
        ("id" = String, Path, description = "the route's id"),
        ("consumer" = Option<String>, Query, description = "merge in this consumer's (and its group's) plugins"),
        super::NamespaceQuery,
    ),
    responses((status = 200, description = "the effective plugins", body = EffectiveView)))]
pub(super) async fn effective_plugins(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance, route_id)): ApiPath<(String, String, String)>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<EffectiveView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest {
        message: format!("invalid query: {e}"),
        details: Vec::new(),
    })?;
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "consumer" | "namespace"))
    {
        return Err(ApiError::BadRequest {
            message: format!(
                "unknown query parameter {unknown:?}: only consumer and namespace are read"
            ),
            details: Vec::new(),
        });
    }
    let found = scope.instance(&state, &cluster, &instance).await?;
    let binding = state.db.binding(&found).await?;
    let snapshot = state
        .db
        .snapshot(&cluster, &instance)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("instance {instance:?} does not exist")))?;
    let route = snapshot
        .routes
        .iter()
        .find(|r| r.id == route_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "route {route_id:?} does not exist in instance {instance:?}"
            ))
        })?;
    let service = route
        .service_id
        .as_ref()
        .and_then(|id| snapshot.services.iter().find(|s| &s.id == id));
    let mut globals: Vec<_> = snapshot.global_rules.iter().collect();
    globals.sort_by(|a, b| a.id.cmp(&b.id));
    let mut layers = model::plugin::route_layers(globals, service, route);
    let consumer = match query.get("consumer") {
        None => None,
        Some(id) => Some(
            snapshot
                .consumers
                .iter()
                .find(|c| &c.id == id)
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "consumer {id:?} does not exist in instance {instance:?}"
                    ))
                })?,
        ),
    };
    if let Some(consumer) = consumer {
        let group = consumer
            .group_id
            .as_ref()
            .and_then(|id| snapshot.consumer_groups.iter().find(|g| &g.id == id));
        layers.extend(model::plugin::consumer_layers(group, consumer));
    }
    // The instance's templates under its namespace's, as its gateways layer them.
    let templates =
        model::plugin::layered_templates(&snapshot.plugin_templates, &binding.plugin_templates);
    let merged = model::plugin::effective(&layers, |name| templates.get(name));
    Ok(Json(EffectiveView {
        route: route.id.clone(),
        consumer: consumer.map(|c| c.id.clone()),
        revision: snapshot.revision,
        servable: merged.errors.is_empty(),
        plugins: merged.plugins,
        skipped: merged.skipped,
        errors: merged.errors,
    }))
}
