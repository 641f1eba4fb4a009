//! Declarative config (like decK or ADC): export an instance's (or a namespace's)
//! config as YAML or JSON, and apply a file that creates, updates and deletes to reach
//! it in one revision (per instance), previewed with `?dry_run=true`.
//!
//! ```text
//! namespace-wide: editor of the namespace → parse the file (every field error at once)
//!   → plan: `namespace` is the path's, each instance listed once and in the namespace,
//!     no duplicate objects (422, all at once)
//!   → every instance's apply as a dry run (references, secrets, rules,
//!     expected_revision): any refusal and nothing is written
//!   → each instance's apply in the file's order (its own lock and transaction);
//!     a failure now (a concurrent change, the database) answers what was written
//! ```
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
use model::snapshot::{Revision, Snapshot};
use model::user::Role;
use model::validate::{FieldError, ValidationErrors};
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::AuditDetail;
use super::{ApiPath, Scope};
use crate::auth::Principal;
use crate::db::RevisionNote;
use crate::error::ApiError;
use crate::history;
use crate::secrets::Keyring;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ExportQuery {
    /// `yaml` (the default) or `json`.
    format: Option<String>,
    /// `sealed`: certificate keys, credentials' secrets and hashes are exported sealed
    /// under the admin's data key (they open only on the same object, field and
    /// namespace); editors only. Absent: the file carries no secret.
    secrets: Option<String>,
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

/// The export's format, and whether it carries secrets sealed (the caller must then
/// be an editor of `namespace`).
fn format_of(
    q: Result<Query<ExportQuery>, QueryRejection>,
    caller: &Principal,
    namespace: &str,
) -> Result<(Format, bool), ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: format!("bad query string: {}", e.body_text()),
        details: Vec::new(),
    })?;
    let format = match q.format.as_deref() {
        None | Some("yaml") => Format::Yaml,
        Some("json") => Format::Json,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "query",
                "format",
                format!("must be yaml or json, not {other:?}"),
            ))
        }
    };
    let sealed = match q.secrets.as_deref() {
        None => false,
        Some("sealed") => {
            caller.require(namespace, Role::Editor)?;
            true
        }
        Some(other) => {
            return Err(ApiError::invalid_field(
                "query",
                "secrets",
                format!("must be sealed (or absent: no secrets), not {other:?}"),
            ))
        }
    };
    Ok((format, sealed))
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
        super::InstancePath,
        ExportQuery,
        super::NamespaceQuery,
    ),
    responses((status = 200, description = "the instance's config, without secrets",
        content((Snapshot = "application/yaml"), (Snapshot = "application/json")))))]
pub(super) async fn export(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    caller: Principal,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (format, sealed) = format_of(q, &caller, &scope.namespace)?;
    scope.instance(&state, &cluster, &instance).await?;
    let seal = sealed.then_some(scope.namespace.as_str());
    render(&exported(&state, &cluster, &instance, seal).await?, format)
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
    caller.require(&id, Role::Viewer)?;
    let (format, sealed) = format_of(q, &caller, &id)?;
    let ns = state.db.require_namespace(&id).await?;
    let mut instances = Vec::new();
    let seal = sealed.then_some(id.as_str());
    for found in state.db.instances_in(&id).await? {
        instances.push(InstanceConfig {
            config: exported(&state, &found.cluster, &found.name, seal).await?,
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

/// The instance's config as a file shows it: without secrets, or with them sealed for
/// `seal` (the namespace they may be applied in again).
async fn exported(
    state: &AppState,
    cluster: &str,
    instance: &str,
    seal: Option<&str>,
) -> Result<Snapshot, ApiError> {
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
        shown.push(match seal {
            Some(namespace) => super::sealed::sealed(state.db.keyring(), namespace, &resource)?,
            None => resource.redacted(),
        });
    }
    Ok(shown)
}

/// Makes the instance's config exactly the file's (YAML, or JSON with a JSON content
/// type): what is missing is created, what differs updated, what the file lacks
/// deleted, as one revision; `?dry_run=true` answers the same without writing.
#[utoipa::path(put, path = "/clusters/{cluster}/instances/{instance}/config", tag = "config",
    params(
        super::InstancePath,
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
    let file = parse_file(&headers, &body?, state.db.keyring(), &scope.namespace)?;
    let (objects, duplicates) = objects_of(&file);
    if !duplicates.is_empty() {
        return Err(ApiError::Invalid {
            what: "config".into(),
            errors: ValidationErrors(duplicates),
        });
    }
    let dry_run = note.dry_run;
    let note = with_default_message(note);
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

/// A namespace's config file, as `GET /namespaces/{id}/config` writes it: the
/// instances it manages, each with its whole config.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamespaceFile {
    /// The namespace's id; when present, it must be the one in the path.
    namespace: Option<String>,
    /// The namespace's name: informative.
    #[allow(dead_code)] // read by nobody: the name may differ from the namespace's now
    name: Option<String>,
    /// The instances the file manages; the namespace's other instances are left alone.
    instances: Vec<ListedInstance>,
}

/// One instance of a namespace file.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListedInstance {
    cluster: String,
    instance: String,
    /// Write only if the instance is still at this revision (else 409
    /// `revision_conflict`, nothing written to any instance). The `revision` inside
    /// `config` is informative, as in an instance's file.
    expected_revision: Option<u64>,
    /// The instance's whole config, in the shape of `PUT …/instances/{i}/config`.
    #[schema(value_type = Snapshot)]
    config: Value,
}

/// What a namespace-wide apply did, or would do: per listed instance, in the file's
/// order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NamespaceConvergence {
    dry_run: bool,
    instances: Vec<InstanceConvergence>,
}

/// One instance's part of a namespace-wide apply.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InstanceConvergence {
    cluster: String,
    instance: String,
    /// Where the revision made stands: `applied` (the agent stored it) or `pending`
    /// (the reconcile loop will deliver it); absent when nothing was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<&'static str>,
    #[serde(flatten)]
    convergence: super::revisions::Convergence,
}

/// An instance of a namespace file, checked: it exists in the namespace and its
/// config parses without duplicates.
struct Planned {
    cluster: String,
    instance: String,
    expected: Option<Revision>,
    objects: model::diff::Objects,
}

impl Planned {
    /// `instances[3] (c1/a)`, for messages.
    fn name(&self, at: usize) -> String {
        format!("instances[{at}] ({}/{})", self.cluster, self.instance)
    }
}

/// Makes each instance the file lists exactly its `config` (YAML, or JSON with a JSON
/// content type), one `apply` revision per instance that changes; `?dry_run=true`
/// answers the same without writing. Everything is checked for every instance first
/// (the file, that each instance lives in this namespace, each config as a dry run
/// of its apply): a bad file writes nothing. Instances of the namespace the file
/// does not list are left alone.
#[utoipa::path(put, path = "/namespaces/{id}/config", tag = "config",
    params(
        ("id" = String, Path, description = "the namespace's id"),
        ("x-portico-message" = Option<String>, Header, description = "the message of every revision it makes"),
        NamespaceApplyQuery,
    ),
    request_body(content((NamespaceFile = "application/yaml"), (NamespaceFile = "application/json")),
        description = "the instances to manage, each with the whole config it is to have"),
    responses((status = 200, description = "per instance what changed (or would, with dry_run)", body = NamespaceConvergence)))]
pub(super) async fn apply_namespace(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    note: RevisionNote,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&id, Role::Editor)?;
    state.db.require_namespace(&id).await?;
    if note.expected.is_some() {
        return Err(ApiError::invalid_field(
            "query",
            "expected_revision",
            "a namespace has no revision: give expected_revision per instance in the file",
        ));
    }
    let file = parse_namespace_file(&headers, &body?, state.db.keyring(), &id)?;
    let planned = plan(&state, &id, file).await?;
    let note = with_default_message(note);

    // Every instance's dry run, before anything is written: references, secrets,
    // today's rules and expected revisions of all of them.
    let mut previews = Vec::with_capacity(planned.len());
    let mut problems = Vec::new();
    for (at, one) in planned.iter().enumerate() {
        let dry = RevisionNote {
            dry_run: true,
            expected: one.expected,
            ..note.clone()
        };
        match history::apply(
            &state,
            &id,
            &one.cluster,
            &one.instance,
            one.objects.clone(),
            &dry,
        )
        .await
        {
            Ok(done) => previews.push(done),
            Err(e) => problems.push(within(e, at, one)),
        }
    }
    if !problems.is_empty() {
        return Err(one_error(problems));
    }
    if note.dry_run {
        let instances = planned
            .iter()
            .zip(&previews)
            .map(|(one, done)| InstanceConvergence {
                cluster: one.cluster.clone(),
                instance: one.instance.clone(),
                sync: None,
                convergence: super::revisions::Convergence::of(None, true, done),
            })
            .collect();
        return Ok(Json(NamespaceConvergence {
            dry_run: true,
            instances,
        })
        .into_response());
    }

    // The writes, one instance at a time (each under its own lock and transaction).
    // Only what changed since the dry runs (another writer, the database) can stop
    // one now; the answer then names what was written.
    let mut instances = Vec::with_capacity(planned.len());
    for (at, one) in planned.into_iter().enumerate() {
        let real = RevisionNote {
            expected: one.expected,
            ..note.clone()
        };
        let done = match history::apply(
            &state,
            &id,
            &one.cluster,
            &one.instance,
            one.objects.clone(),
            &real,
        )
        .await
        {
            Ok(done) => done,
            Err(e) => return Ok(partly_written(within(e, at, &one), &instances)),
        };
        instances.push(InstanceConvergence {
            sync: done.written.as_ref().map(|w| w.sync.as_str()),
            convergence: super::revisions::Convergence::of(None, false, &done),
            cluster: one.cluster,
            instance: one.instance,
        });
    }
    let answer = NamespaceConvergence {
        dry_run: false,
        instances,
    };
    let detail = AuditDetail {
        after: Some(audit_summary(&answer.instances)),
        ..Default::default()
    };
    Ok(detail.attach(Json(answer).into_response()))
}

/// The query of a namespace-wide apply.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct NamespaceApplyQuery {
    /// Check everything for every instance, answer what would change, store nothing.
    #[allow(dead_code)] // read by `RevisionNote`
    dry_run: Option<bool>,
}

/// The checks of a namespace file that need no write: its `namespace`, each listed
/// instance in this namespace and listed once, each config without duplicates; every
/// problem at once (422).
async fn plan(
    state: &AppState,
    namespace: &str,
    file: (NamespaceFile, Vec<Snapshot>),
) -> Result<Vec<Planned>, ApiError> {
    let (file, configs) = file;
    let mut errors = Vec::new();
    if let Some(named) = file.namespace.as_deref().filter(|n| *n != namespace) {
        errors.push(FieldError {
            field: "namespace".into(),
            message: format!("the file is of namespace {named:?}, not {namespace:?} (the path's)"),
        });
    }
    let mut planned: Vec<Planned> = Vec::with_capacity(configs.len());
    for (at, (listed, config)) in file.instances.into_iter().zip(configs).enumerate() {
        let field = format!("instances[{at}].instance");
        if let Some(first) = planned
            .iter()
            .position(|p| p.cluster == listed.cluster && p.instance == listed.instance)
        {
            errors.push(FieldError {
                field: field.clone(),
                message: format!("listed twice (also instances[{first}])"),
            });
        }
        // An instance of another namespace is answered as one that does not exist:
        // work in one namespace never learns about another's.
        let found = state.db.instance(&listed.cluster, &listed.instance).await?;
        if found.is_none_or(|i| i.namespace != namespace) {
            errors.push(FieldError {
                field,
                message: format!(
                    "no instance {:?} in cluster {:?} of namespace {namespace:?}",
                    listed.instance, listed.cluster
                ),
            });
        }
        let (objects, duplicates) = objects_of(&config);
        errors.extend(duplicates.into_iter().map(|d| FieldError {
            field: format!("instances[{at}].config.{}", d.field),
            message: d.message,
        }));
        planned.push(Planned {
            cluster: listed.cluster,
            instance: listed.instance,
            expected: listed.expected_revision.map(Revision),
            objects,
        });
    }
    if errors.is_empty() {
        Ok(planned)
    } else {
        Err(ApiError::Invalid {
            what: "namespace config".into(),
            errors: ValidationErrors(errors),
        })
    }
}

/// An instance's refusal as the namespace-wide apply answers it: the fields under
/// `instances[at].config` (or `instances[at].expected_revision`), the message naming
/// the instance.
fn within(e: ApiError, at: usize, one: &Planned) -> ApiError {
    let name = one.name(at);
    let fields = |details: Vec<FieldError>| -> Vec<FieldError> {
        details
            .into_iter()
            .map(|d| FieldError {
                field: format!("instances[{at}].config.{}", d.field),
                message: d.message,
            })
            .collect()
    };
    match e {
        ApiError::Invalid { what, errors } => ApiError::Invalid {
            what: format!("{what} of {name}"),
            errors: ValidationErrors(fields(errors.0)),
        },
        ApiError::BadRequest { message, details } => ApiError::BadRequest {
            message: format!("{name}: {message}"),
            details: fields(details),
        },
        ApiError::InUse { message, details } => ApiError::InUse {
            message: format!("{name}: {message}"),
            details: fields(details),
        },
        ApiError::NotFound(message) => ApiError::NotFound(format!("{name}: {message}")),
        ApiError::AlreadyExists(message) => ApiError::AlreadyExists(format!("{name}: {message}")),
        ApiError::RevisionConflict {
            instance,
            current,
            expected,
            ..
        } => ApiError::RevisionConflict {
            instance,
            current,
            expected,
            field: format!("instances[{at}].expected_revision"),
        },
        other => other,
    }
}

/// The dry runs' refusals as one answer: every rule broken in any instance at once
/// (422); anything else (a conflict, a database failure) as the first of those.
fn one_error(problems: Vec<ApiError>) -> ApiError {
    if problems
        .iter()
        .all(|p| matches!(p, ApiError::Invalid { .. }))
    {
        let errors = problems
            .into_iter()
            .flat_map(|p| match p {
                ApiError::Invalid { errors, .. } => errors.0,
                _ => Vec::new(),
            })
            .collect();
        return ApiError::Invalid {
            what: "namespace config".into(),
            errors: ValidationErrors(errors),
        };
    }
    problems
        .into_iter()
        .find(|p| !matches!(p, ApiError::Invalid { .. }))
        .expect("one problem is not a rule broken")
}

/// The answer when a write failed after others were stored: the failure's status and
/// code, the instances written listed in `details` (and in the audit record).
fn partly_written(cause: ApiError, written: &[InstanceConvergence]) -> Response {
    let stored: Vec<&InstanceConvergence> =
        written.iter().filter(|w| w.convergence.changed).collect();
    let detail = AuditDetail {
        after: Some(audit_summary(written)),
        ..Default::default()
    };
    if stored.is_empty() {
        return detail.attach(cause.into_response());
    }
    let listed = stored
        .iter()
        .map(|w| FieldError {
            field: format!("{}/{}", w.cluster, w.instance),
            message: format!("written as revision {}", w.convergence.revision),
        })
        .collect();
    detail.attach(
        ApiError::PartlyWritten {
            cause: Box::new(cause),
            written: listed,
        }
        .into_response(),
    )
}

/// The audit record of a namespace-wide apply: per instance the revision made (if
/// any) and the changes.
fn audit_summary(instances: &[InstanceConvergence]) -> Value {
    Value::Array(
        instances
            .iter()
            .map(|i| {
                json!({
                    "cluster": i.cluster,
                    "instance": i.instance,
                    "revision": i.convergence.changed.then_some(i.convergence.revision),
                    "changes": i.convergence.changes,
                })
            })
            .collect(),
    )
}

/// The revision message of an apply: the caller's, else "declarative apply".
fn with_default_message(note: RevisionNote) -> RevisionNote {
    RevisionNote {
        message: note
            .message
            .clone()
            .or_else(|| Some("declarative apply".into())),
        ..note
    }
}

/// The objects of a config file by kind and id (consumers' clear keys hashed), and
/// those that appear twice.
fn objects_of(file: &Snapshot) -> (model::diff::Objects, Vec<FieldError>) {
    let mut objects = model::diff::Objects::new();
    let mut duplicates = Vec::new();
    for mut resource in file.resources() {
        if let Resource::Consumer(consumer) = &mut resource {
            consumer.hash_secrets();
        }
        let key = (resource.kind(), resource.id().to_owned());
        if objects.contains_key(&key) {
            duplicates.push(FieldError {
                field: format!("{}[{}]", key.0.as_str(), key.1),
                message: "appears twice".into(),
            });
        }
        objects.insert(key, resource);
    }
    (objects, duplicates)
}

/// A namespace file and each listed instance's config; shape errors (400) name the
/// field (`instances[1].config.routes[0].pathz`), all at once.
fn parse_namespace_file(
    headers: &HeaderMap,
    body: &[u8],
    keyring: &Keyring,
    namespace: &str,
) -> Result<(NamespaceFile, Vec<Snapshot>), ApiError> {
    let value = file_value(headers, body)?;
    let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::Internal(e.into()))?;
    let file: NamespaceFile = model::json::parse(&bytes).map_err(|e| ApiError::BadRequest {
        message: e.message("namespace config"),
        details: e.details().to_vec(),
    })?;
    let mut configs = Vec::with_capacity(file.instances.len());
    let mut details = Vec::new();
    let mut unopened = Vec::new();
    for (at, listed) in file.instances.iter().enumerate() {
        let mut config = listed.config.clone();
        let prefix = format!("instances[{at}].config.");
        unopened.extend(super::sealed::open_all(
            keyring,
            namespace,
            &mut config,
            &prefix,
        ));
        match snapshot_of(config) {
            Ok(config) => configs.push(config),
            Err(e) => {
                let prefix = format!("instances[{at}].config");
                if e.details().is_empty() {
                    details.push(FieldError {
                        field: prefix.clone(),
                        message: e.to_string(),
                    });
                }
                details.extend(e.details().iter().map(|d| FieldError {
                    field: format!("{prefix}.{}", d.field),
                    message: d.message.clone(),
                }));
            }
        }
    }
    if !details.is_empty() {
        return Err(ApiError::BadRequest {
            message: "invalid namespace config: an instance's config does not parse".into(),
            details,
        });
    }
    if !unopened.is_empty() {
        return Err(ApiError::Invalid {
            what: "namespace config".into(),
            errors: ValidationErrors(unopened),
        });
    }
    Ok((file, configs))
}

/// A config file: JSON when the content type says so, YAML otherwise; errors name the
/// field (`routes[0].paths`).
fn parse_file(
    headers: &HeaderMap,
    body: &[u8],
    keyring: &Keyring,
    namespace: &str,
) -> Result<Snapshot, ApiError> {
    let mut value = file_value(headers, body)?;
    let unopened = super::sealed::open_all(keyring, namespace, &mut value, "");
    if !unopened.is_empty() {
        return Err(ApiError::Invalid {
            what: "config".into(),
            errors: ValidationErrors(unopened),
        });
    }
    snapshot_of(value).map_err(|e| ApiError::BadRequest {
        message: e.message("config"),
        details: e.details().to_vec(),
    })
}

/// A file's body as a value: JSON when the content type says so, YAML otherwise.
fn file_value(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if json_body {
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
            message: format!("malformed JSON: {e}"),
            details: Vec::new(),
        })
    } else {
        serde_yaml_ng::from_slice(body).map_err(|e| ApiError::BadRequest {
            message: format!("malformed YAML: {e}"),
            details: Vec::new(),
        })
    }
}

/// One instance's config from its value; errors name the field.
fn snapshot_of(mut value: Value) -> Result<Snapshot, model::json::JsonError> {
    // The revision an export carries is informative; a hand-written file has none.
    if let Some(file) = value.as_object_mut() {
        file.entry("revision").or_insert(json!(0));
    }
    let bytes = serde_json::to_vec(&value).expect("a JSON value serialises");
    model::json::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converged(
        cluster: &str,
        instance: &str,
        changed: bool,
        revision: u64,
    ) -> InstanceConvergence {
        InstanceConvergence {
            cluster: cluster.into(),
            instance: instance.into(),
            sync: changed.then_some("applied"),
            convergence: super::super::revisions::Convergence {
                rolled_back_to: None,
                dry_run: false,
                changed,
                revision: Revision(revision),
                from_revision: Revision(revision - u64::from(changed)),
                changes: Vec::new(),
                rerouted: Vec::new(),
            },
        }
    }

    #[tokio::test]
    async fn a_failure_midway_names_what_was_written() {
        let cause = ApiError::RevisionConflict {
            instance: "c".into(),
            current: Revision(9),
            expected: Revision(8),
            field: "instances[2].expected_revision".into(),
        };
        let written = [
            converged("c1", "a", true, 5),
            converged("c1", "b", false, 3),
        ];
        let response = partly_written(cause, &written);
        assert_eq!(response.status(), 409);
        assert_eq!(response.headers()["x-portico-revision"], "9");
        let audit = response.extensions().get::<AuditDetail>().cloned().unwrap();
        assert_eq!(audit.after.unwrap()[0]["revision"], 5);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "revision_conflict");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .ends_with("written before it stopped: c1/a"),
            "{body}"
        );
        assert_eq!(
            body["details"],
            json!([
                {"field": "c1/a", "message": "written as revision 5"},
                {"field": "instances[2].expected_revision", "message": "the instance is at revision 9"}
            ])
        );

        // Nothing written yet: the failure as it is.
        let response = partly_written(ApiError::NotFound("gone".into()), &written[1..]);
        assert_eq!(response.status(), 404);
    }
}
