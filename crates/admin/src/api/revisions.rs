//! Handlers for an instance's history (requirement D4): its revisions, one revision
//! with what it changed, the difference between any two revisions (per object and
//! field, secrets never shown), and a rollback that writes a new revision equal to an
//! old one, previewed first with `?dry_run=true`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::diff::ObjectDiff;
use model::snapshot::Revision;
use serde::Deserialize;

use super::{ApiPath, InstanceWriteQuery, NamespaceQuery, Scope};
use crate::db::{RevisionEntry, RevisionNote, MAX_LISTED};
use crate::error::ApiError;
use crate::history;
use crate::impact::Rerouted;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only revisions below this one (paging back).
    before: Option<u64>,
    /// At most this many (default 100, at most 500).
    limit: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DiffQuery {
    /// The revision to compare from (0: the empty config).
    from: u64,
    /// The revision to compare to (default: the current one).
    to: Option<u64>,
}

/// A page of the history.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RevisionPage {
    items: Vec<RevisionEntry>,
    /// The instance's current revision.
    revision: Revision,
    /// The largest `limit` taken.
    limit_max: i64,
}

/// One revision and what it changed.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RevisionDetail {
    #[serde(flatten)]
    entry: RevisionEntry,
    changes: Vec<ObjectDiff>,
}

/// The difference between two revisions.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DiffView {
    from: u64,
    to: u64,
    changes: Vec<ObjectDiff>,
}

/// What a rollback or a declarative apply did, or would do (`dry_run`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Convergence {
    /// The revision a rollback went back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u64>,
    pub dry_run: bool,
    /// False: the config already was the target; no revision was made.
    pub changed: bool,
    /// The revision made (or that would be made).
    pub revision: Revision,
    /// The instance's revision this was computed from: pass it as `expected_revision`
    /// to write exactly what a dry run showed.
    pub from_revision: Revision,
    pub changes: Vec<ObjectDiff>,
    /// For a dry run: the requests whose route would change.
    pub rerouted: Vec<Rerouted>,
}

impl Convergence {
    /// The body telling what `done` did (`rolled_back_to`: a rollback's target).
    pub(super) fn of(
        rolled_back_to: Option<u64>,
        dry_run: bool,
        done: &history::Converged,
    ) -> Self {
        Convergence {
            rolled_back_to,
            dry_run,
            changed: !done.diff.is_empty(),
            revision: done.revision,
            from_revision: done.from,
            changes: done.diff.clone(),
            rerouted: done.rerouted.clone(),
        }
    }

    /// The answer to a rollback (`Some(at)`) or apply, with the audit record's detail
    /// and the revision headers of what was written.
    pub(super) fn answer(
        rolled_back_to: Option<u64>,
        dry_run: bool,
        done: history::Converged,
    ) -> Response {
        let detail = super::audit::AuditDetail {
            after: Some(serde_json::json!(done.diff)),
            revision: done.written.as_ref().map(|w| w.revision.0),
            ..Default::default()
        };
        let body = Convergence::of(rolled_back_to, dry_run, &done);
        let mut response = detail.attach(Json(body).into_response());
        if let Some(written) = done.written {
            super::resources::revision_headers(&mut response, &written);
        }
        response
    }
}

/// A query string that does not parse: 400 naming why.
pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::BadRequest {
        message: format!("bad query string: {}", e.body_text()),
        details: Vec::new(),
    })
}

/// Revisions newest first, with author, time, message and the objects each wrote;
/// `?before=N` pages back, `?limit=` (at most 500).
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/revisions", tag = "history",
    params(
        super::InstancePath,
        ListQuery,
        NamespaceQuery,
    ),
    responses((status = 200, description = "revisions, newest first", body = RevisionPage)))]
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RevisionPage>, ApiError> {
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
    Ok(Json(RevisionPage {
        items,
        revision: found.revision,
        limit_max: MAX_LISTED,
    }))
}

/// One revision and what it changed, per object and field.
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/revisions/{revision}", tag = "history",
    params(
        super::InstancePath,
        ("revision" = u64, Path, description = "the revision"),
        NamespaceQuery,
    ),
    responses((status = 200, description = "the revision", body = RevisionDetail)))]
pub(super) async fn get_one(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance, at)): ApiPath<(String, String, u64)>,
) -> Result<Json<RevisionDetail>, ApiError> {
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
    Ok(Json(RevisionDetail {
        entry,
        changes: model::diff::diff(&before, &after),
    }))
}

/// The difference from revision `from` to `to` (default: the current one).
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/diff", tag = "history",
    params(
        super::InstancePath,
        DiffQuery,
        NamespaceQuery,
    ),
    responses((status = 200, description = "per object and field", body = DiffView)))]
pub(super) async fn diff(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<DiffView>, ApiError> {
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
    Ok(Json(DiffView {
        from: q.from,
        to,
        changes: model::diff::diff(&before, &after),
    }))
}

/// Rolls back to the revision in the path by writing a new revision equal to it;
/// `?dry_run=true` answers the same without writing. The revision message is the
/// `x-portico-message` header, else "rollback to revision N".
#[utoipa::path(post, path = "/clusters/{cluster}/instances/{instance}/revisions/{revision}/rollback", tag = "history",
    params(
        super::InstancePath,
        ("revision" = u64, Path, description = "the revision to go back to (0: empty)"),
        ("x-portico-message" = Option<String>, Header, description = "the new revision's message"),
        InstanceWriteQuery,
    ),
    responses((status = 200, description = "what changed (or would, with dry_run)", body = Convergence)))]
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
    Ok(Convergence::answer(Some(at), dry_run, done))
}
