//! The plugin catalog (`model::plugin`): what a route's `plugins` object may hold,
//! each plugin's default priority and phases, and the JSON Schema of its config, for
//! API clients and the console's generated forms.

use axum::Json;
use serde_json::{json, Value};

use super::ApiPath;
use crate::error::ApiError;

/// `GET /plugins`: every plugin, highest priority (first to run) first.
pub(super) async fn list_plugins() -> Json<Value> {
    let mut items: Vec<_> = model::plugin::CATALOG
        .iter()
        .map(|p| p.describe())
        .collect();
    items.sort_by_key(|p| std::cmp::Reverse(p.priority));
    Json(json!({ "items": items }))
}

/// `GET /plugins/{name}`: one plugin.
pub(super) async fn get_plugin(ApiPath(name): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    let plugin = model::plugin::find(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no plugin named {name:?}")))?;
    Ok(Json(json!(plugin.describe())))
}
