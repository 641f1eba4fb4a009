//! Handlers for an instance's resources: routes, upstreams, certificates, services,
//! consumers, consumer groups, global rules and plugin templates.
//!
//! Each write parses and validates the whole body first (every problem at once), then
//! hands the change to [`sync::write`]: one transaction, then the push. Answers never
//! carry a certificate's private key or a credential's secret or hash.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::cluster::REVISION_HEADER;
use model::resource::{Resource, ResourceKind};
use model::validate::FieldError;
use serde_json::{json, Value};

use super::audit::AuditDetail;
use super::{ApiPath, DryRunAnswer, Scope};
use crate::db::{Change, RevisionNote};
use crate::error::ApiError;
use crate::state::AppState;
use crate::sync::{self, SyncStatus, Written};

/// Header saying whether the change reached the store: `applied` or `pending`.
const SYNC_HEADER: &str = "x-portico-sync";

/// MySQL's TEXT holds 65,535 bytes; one resource's JSON must fit on every database.
const MAX_RESOURCE_JSON: usize = 65_535;

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance, kind)): ApiPath<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&kind)?;
    scope.instance(&state, &cluster, &instance).await?;
    let (items, revision) = state.db.resources(&cluster, &instance, kind).await?;
    let items: Vec<Value> = items.iter().map(|r| r.redacted().to_json()).collect();
    Ok(Json(json!({ "items": items, "revision": revision })))
}

pub(super) async fn get_one(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance, kind, id)): ApiPath<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&kind)?;
    scope.instance(&state, &cluster, &instance).await?;
    let resource = state.db.resource(&cluster, &instance, kind, &id).await?;
    Ok(Json(resource.redacted().to_json()))
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    note: RevisionNote,
    ApiPath((cluster, instance, kind)): ApiPath<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    scope.instance(&state, &cluster, &instance).await?;
    let resource = parse_resource(kind, &body?, None)?;
    let shown = resource.redacted().to_json();
    let at = (cluster.as_str(), instance.as_str());
    let change = Change::Create(resource);
    match submit(&state, &scope, &note, at, &change, Some(&shown)).await? {
        Ok(written) => Ok(answer(StatusCode::CREATED, Some(shown), written)),
        Err(dry_run) => Ok(dry_run),
    }
}

/// Replaces the resource, or creates it when absent (201 then).
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    note: RevisionNote,
    ApiPath((cluster, instance, kind, id)): ApiPath<(String, String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    scope.instance(&state, &cluster, &instance).await?;
    let resource = parse_resource(kind, &body?, Some(&id))?;
    let shown = resource.redacted().to_json();
    let at = (cluster.as_str(), instance.as_str());
    let change = Change::Upsert(resource);
    let written = match submit(&state, &scope, &note, at, &change, Some(&shown)).await? {
        Ok(written) => written,
        Err(dry_run) => return Ok(dry_run),
    };
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(answer(status, Some(shown), written))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    note: RevisionNote,
    ApiPath((cluster, instance, kind, id)): ApiPath<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let kind = parse_kind(&kind)?;
    let at = (cluster.as_str(), instance.as_str());
    let change = Change::Delete { kind, id };
    match submit(&state, &scope, &note, at, &change, None).await? {
        Ok(written) => Ok(answer(StatusCode::NO_CONTENT, None, written)),
        Err(dry_run) => Ok(dry_run),
    }
}

/// Writes `change` to the instance at (cluster, instance): `Ok` what was written, or
/// for a dry run `Err` its whole answer.
async fn submit(
    state: &AppState,
    scope: &Scope,
    note: &RevisionNote,
    (cluster, instance): (&str, &str),
    change: &Change,
    shown: Option<&Value>,
) -> Result<Result<Written, Response>, ApiError> {
    let written = sync::write(state, &scope.namespace, cluster, instance, change, note).await?;
    if written.sync != SyncStatus::DryRun {
        return Ok(Ok(written));
    }
    let answer = dry_run_answer(state, cluster, instance, change, shown.cloned(), written).await?;
    Ok(Err(answer))
}

fn parse_kind(kind: &str) -> Result<ResourceKind, ApiError> {
    kind.parse()
        .map_err(|e: model::resource::UnknownKind| ApiError::NotFound(e.to_string()))
}

/// Parses a body of `kind` and checks every rule at once; for a PUT, the body's id must
/// be the one in the path.
fn parse_resource(
    kind: ResourceKind,
    body: &[u8],
    path_id: Option<&str>,
) -> Result<Resource, ApiError> {
    let what = kind.singular();
    let resource = kind.parse(body).map_err(|e| ApiError::BadRequest {
        message: e.message(what),
        details: e.details().to_vec(),
    })?;
    let mut errors = resource.validate().err().unwrap_or_default();
    if let Some(id) = path_id {
        if resource.id() != id {
            errors.0.push(FieldError {
                field: "id".into(),
                message: format!("must equal the id in the path ({id:?})"),
            });
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            what: what.to_owned(),
            errors,
        });
    }
    if resource.to_json().to_string().len() > MAX_RESOURCE_JSON {
        return Err(ApiError::PayloadTooLarge(format!(
            "a {what} may take at most {MAX_RESOURCE_JSON} bytes of JSON"
        )));
    }
    let mut resource = resource;
    if let Resource::Consumer(consumer) = &mut resource {
        // From here on only hashes exist: the clear keys and passwords reach no row,
        // store, log or answer.
        consumer.hash_secrets();
    }
    Ok(resource)
}

/// A dry run's answer (200, nothing stored): the revision it would have made, what it
/// would change, per field, and for a route the requests it would reroute.
async fn dry_run_answer(
    state: &AppState,
    cluster: &str,
    instance: &str,
    change: &Change,
    body: Option<Value>,
    written: Written,
) -> Result<Response, ApiError> {
    let mut rerouted = Vec::new();
    if change.kind() == ResourceKind::Routes {
        if let Some((now, _)) = state.db.objects_now(cluster, instance).await? {
            let mut wanted = now.clone();
            let key = (change.kind(), change.id().to_owned());
            match change {
                Change::Create(r) | Change::Upsert(r) => {
                    wanted.insert(key, r.clone());
                }
                Change::Delete { .. } => {
                    wanted.remove(&key);
                }
            }
            let diff = model::diff::diff(&now, &wanted);
            rerouted = crate::impact::rerouted(&now, &wanted, &diff).await;
        }
    }
    let mut fields = Vec::new();
    model::diff::fields_of(
        "",
        written.before.as_ref().unwrap_or(&Value::Null),
        body.as_ref().unwrap_or(&Value::Null),
        &mut fields,
    );
    let op = match (&written.before, &body) {
        (None, _) => "create",
        (Some(_), None) => "delete",
        (Some(_), Some(_)) => "update",
    };
    if op != "update" {
        fields.clear();
    }
    let mut response = Json(DryRunAnswer {
        dry_run: true,
        revision: written.revision,
        op,
        before: written.before,
        after: body,
        fields,
        rerouted,
    })
    .into_response();
    response.headers_mut().insert(
        HeaderName::from_static(SYNC_HEADER),
        HeaderValue::from_static(written.sync.as_str()),
    );
    Ok(response)
}

/// A write's answer: the resource as stored (keys removed) and where the change stands;
/// the audit record gets the object before and after.
fn answer(status: StatusCode, body: Option<Value>, written: Written) -> Response {
    let detail = AuditDetail {
        actor: None,
        before: written.before.clone(),
        after: body.clone(),
        revision: Some(written.revision.0),
    };
    let mut response = match body {
        Some(body) => (status, Json(body)).into_response(),
        None => status.into_response(),
    };
    response.extensions_mut().insert(detail);
    revision_headers(&mut response, &written);
    response
}

/// The revision a write made and whether it reached the store, as headers.
pub(super) fn revision_headers(response: &mut Response, written: &Written) {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static(REVISION_HEADER),
        HeaderValue::from(written.revision.0),
    );
    headers.insert(
        HeaderName::from_static(SYNC_HEADER),
        HeaderValue::from_static(written.sync.as_str()),
    );
}
