//! Handlers for an instance's history (requirement D4): its revisions, one revision
//! with what it changed, the difference between any two revisions (per object and
//! field, secrets never shown), and a rollback that writes a new revision equal to an
//! old one, previewed first with `?dry_run=true`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::snapshot::Revision;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiPath, Scope};
use crate::db::{RevisionNote, MAX_LISTED};
use crate::error::ApiError;
use crate::history;
use crate::state::AppState;

#[derive(Deserialize)]
pub(super) struct ListQuery {
    before: Option<u64>,
    limit: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct DiffQuery {
    from: u64,
    to: Option<u64>,
}

/// A query string that does not parse: 400 naming why.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::BadRequest {
        message: format!("bad query string: {}", e.body_text()),
        details: Vec::new(),
    })
}

/// Revisions newest first, with author, time, message and the objects each wrote;
/// `?before=N` pages back, `?limit=` (at most 500).
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let found = scope.instance(&state, &cluster, &instance).await?;
    let items = state
        .db
        .revisions(
            &cluster,
            &instance,
            q.before.map(Revision),
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(json!({
        "items": items,
        "revision": found.revision,
        "limit_max": MAX_LISTED,
    })))
}

/// One revision and what it changed, per object and field.
pub(super) async fn get_one(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance, at)): ApiPath<(String, String, u64)>,
) -> Result<Json<Value>, ApiError> {
    scope.instance(&state, &cluster, &instance).await?;
    let entry = state
        .db
        .revision_entry(&cluster, &instance, Revision(at))
        .await?;
    let before = state
        .db
        .objects_at(&cluster, &instance, Revision(at.saturating_sub(1)))
        .await?;
    let after = state
        .db
        .objects_at(&cluster, &instance, Revision(at))
        .await?;
    let mut shown = serde_json::to_value(&entry).map_err(|e| ApiError::Internal(e.into()))?;
    shown["changes"] = json!(model::diff::diff(&before, &after));
    Ok(Json(shown))
}

/// The difference from revision `from` to `to` (default: the current one).
pub(super) async fn diff(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let found = scope.instance(&state, &cluster, &instance).await?;
    let to = q.to.unwrap_or(found.revision.0);
    for (field, at) in [("from", q.from), ("to", to)] {
        if at > found.revision.0 {
            return Err(ApiError::invalid_field(
                "query",
                field,
                format!(
                    "instance {instance:?} is at revision {}; {at} is in its future",
                    found.revision
                ),
            ));
        }
    }
    let before = state
        .db
        .objects_at(&cluster, &instance, Revision(q.from))
        .await?;
    let after = state
        .db
        .objects_at(&cluster, &instance, Revision(to))
        .await?;
    Ok(Json(json!({
        "from": q.from,
        "to": to,
        "changes": model::diff::diff(&before, &after),
    })))
}

/// Rolls back to the revision in the path by writing a new revision equal to it;
/// `?dry_run=true` answers the same without writing. The revision message is the
/// `x-portico-message` header, else "rollback to revision N".
pub(super) async fn rollback(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    note: RevisionNote,
    ApiPath((cluster, instance, at)): ApiPath<(String, String, u64)>,
) -> Result<Response, ApiError> {
    scope.instance(&state, &cluster, &instance).await?;
    let dry_run = note.dry_run;
    let done = history::rollback(
        &state,
        &scope.namespace,
        &cluster,
        &instance,
        Revision(at),
        note,
    )
    .await?;
    let body = json!({
        "rolled_back_to": at,
        "dry_run": dry_run,
        "changed": !done.diff.is_empty(),
        "revision": done.revision,
        "changes": done.diff,
        "rerouted": done.rerouted,
    });
    let detail = super::audit::AuditDetail {
        after: Some(body["changes"].clone()),
        revision: done.written.as_ref().map(|w| w.revision.0),
        ..Default::default()
    };
    let mut response = detail.attach(Json(body).into_response());
    if let Some(written) = done.written {
        super::resources::revision_headers(&mut response, &written);
    }
    Ok(response)
}
