//! Declarative config (like decK or ADC): export an instance's (or a namespace's)
//! config as YAML or JSON, and apply a file that creates, updates and deletes to reach
//! it in one revision, previewed with `?dry_run=true`.
//!
//! Exports never carry secrets (certificate keys, credential secrets and hashes): an
//! applied object without one keeps the secret its namesake has now; a new object
//! needs it in the file (a consumer's clear key is hashed before anything stores it,
//! as on every write).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::resource::Resource;
use model::snapshot::Snapshot;
use model::user::Role;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiPath, Scope};
use crate::auth::Principal;
use crate::db::RevisionNote;
use crate::error::ApiError;
use crate::history;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ExportQuery {
    /// `yaml` (the default) or `json`.
    format: Option<String>,
}

/// A namespace's config: every instance of it with its config.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NamespaceConfig {
    namespace: String,
    name: String,
    instances: Vec<InstanceConfig>,
}

/// One instance's config in a namespace export.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InstanceConfig {
    cluster: String,
    instance: String,
    config: Snapshot,
}

/// Output format of an export: YAML unless JSON is asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

fn format_of(q: Result<Query<ExportQuery>, QueryRejection>) -> Result<Format, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: format!("bad query string: {}", e.body_text()),
        details: Vec::new(),
    })?;
    match q.format.as_deref() {
        None | Some("yaml") => Ok(Format::Yaml),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(ApiError::invalid_field(
            "query",
            "format",
            format!("must be yaml or json, not {other:?}"),
        )),
    }
}

fn render<T: serde::Serialize>(value: &T, format: Format) -> Result<Response, ApiError> {
    match format {
        Format::Json => Ok(Json(value).into_response()),
        Format::Yaml => {
            let text = serde_yaml_ng::to_string(value).map_err(|e| ApiError::Internal(e.into()))?;
            let mut response = text.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            );
            Ok(response)
        }
    }
}

/// The instance's config as a file: every object as the API shows it, in the shape
/// `PUT …/config` takes (its `revision` is informative).
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/config", tag = "config",
    params(
        ("cluster" = String, Path, description = "the cluster's name"),
        ("instance" = String, Path, description = "the instance's name"),
        ExportQuery,
        super::NamespaceQuery,
    ),
    responses((status = 200, description = "the instance's config, without secrets",
        content((Snapshot = "application/yaml"), (Snapshot = "application/json")))))]
pub(super) async fn export(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let format = format_of(q)?;
    scope.instance(&state, &cluster, &instance).await?;
    render(&exported(&state, &cluster, &instance).await?, format)
}

/// Every instance of the namespace with its config.
#[utoipa::path(get, path = "/namespaces/{id}/config", tag = "config",
    params(("id" = String, Path, description = "the namespace's id"), ExportQuery),
    responses((status = 200, description = "the namespace's instances with their config, without secrets",
        content((NamespaceConfig = "application/yaml"), (NamespaceConfig = "application/json")))))]
pub(super) async fn export_namespace(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let format = format_of(q)?;
    caller.require(&id, Role::Viewer)?;
    let ns = state.db.require_namespace(&id).await?;
    let mut instances = Vec::new();
    for found in state.db.instances_in(&id).await? {
        instances.push(InstanceConfig {
            config: exported(&state, &found.cluster, &found.name).await?,
            cluster: found.cluster,
            instance: found.name,
        });
    }
    let shown = NamespaceConfig {
        namespace: ns.id,
        name: ns.name,
        instances,
    };
    render(&shown, format)
}

async fn exported(state: &AppState, cluster: &str, instance: &str) -> Result<Snapshot, ApiError> {
    let snapshot = state
        .db
        .snapshot(cluster, instance)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("instance {instance:?} does not exist")))?;
    let mut shown = Snapshot {
        revision: snapshot.revision,
        ..Snapshot::default()
    };
    for resource in snapshot.resources() {
        shown.push(resource.redacted());
    }
    Ok(shown)
}

/// Makes the instance's config exactly the file's (YAML, or JSON with a JSON content
/// type): what is missing is created, what differs updated, what the file lacks
/// deleted, as one revision; `?dry_run=true` answers the same without writing.
#[utoipa::path(put, path = "/clusters/{cluster}/instances/{instance}/config", tag = "config",
    params(
        ("cluster" = String, Path, description = "the cluster's name"),
        ("instance" = String, Path, description = "the instance's name"),
        ("x-portico-message" = Option<String>, Header, description = "the revision's message"),
        super::InstanceWriteQuery,
    ),
    request_body(content((Snapshot = "application/yaml"), (Snapshot = "application/json")),
        description = "the whole config the instance is to have"),
    responses((status = 200, description = "what changed (or would, with dry_run)", body = super::revisions::Convergence)))]
pub(super) async fn apply(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    note: RevisionNote,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    scope.instance(&state, &cluster, &instance).await?;
    let file = parse_file(&headers, &body?)?;
    let mut objects = model::diff::Objects::new();
    let mut duplicates = Vec::new();
    for mut resource in file.resources() {
        if let Resource::Consumer(consumer) = &mut resource {
            consumer.hash_secrets();
        }
        let key = (resource.kind(), resource.id().to_owned());
        if objects.contains_key(&key) {
            duplicates.push(model::validate::FieldError {
                field: format!("{}[{}]", key.0.as_str(), key.1),
                message: "appears twice".into(),
            });
        }
        objects.insert(key, resource);
    }
    if !duplicates.is_empty() {
        return Err(ApiError::Invalid {
            what: "config".into(),
            errors: model::validate::ValidationErrors(duplicates),
        });
    }
    let dry_run = note.dry_run;
    let note = RevisionNote {
        message: note
            .message
            .clone()
            .or_else(|| Some("declarative apply".into())),
        ..note
    };
    let done = history::apply(
        &state,
        &scope.namespace,
        &cluster,
        &instance,
        objects,
        &note,
    )
    .await?;
    Ok(super::revisions::Convergence::answer(None, dry_run, done))
}

/// A config file: JSON when the content type says so, YAML otherwise; errors name the
/// field (`routes[0].paths`).
fn parse_file(headers: &HeaderMap, body: &[u8]) -> Result<Snapshot, ApiError> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let mut value: Value = if json_body {
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
            message: format!("malformed JSON: {e}"),
            details: Vec::new(),
        })?
    } else {
        serde_yaml_ng::from_slice(body).map_err(|e| ApiError::BadRequest {
            message: format!("malformed YAML: {e}"),
            details: Vec::new(),
        })?
    };
    // The revision an export carries is informative; a hand-written file has none.
    if let Some(file) = value.as_object_mut() {
        file.entry("revision").or_insert(json!(0));
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::Internal(e.into()))?;
    model::json::parse(&bytes).map_err(|e| ApiError::BadRequest {
        message: e.message("config"),
        details: e.details().to_vec(),
    })
}
