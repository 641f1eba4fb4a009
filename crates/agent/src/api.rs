//! The agent's HTTP API: `/agent/apiserver/v1/instances…` (see `ARCHITECTURE.md`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use model::cluster::{
    AgentInstance, AgentInstances, InstanceBinding, TokenChallenge, TokenProof, PROOF_PATH,
    REVISION_HEADER,
};
use model::resource::{Resource, ResourceKind};
use model::snapshot::{Revision, Snapshot};
use model::validate::{FieldError, ValidationErrors};
use serde_json::json;

use crate::error::{bad_json, AgentError};
use crate::writer::Change;
use crate::AgentState;

/// Largest request body accepted; a snapshot of a big instance fits comfortably.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// The agent's router, authentication included.
pub fn app(state: AgentState) -> Router {
    let base = "/agent/apiserver/v1/instances";
    Router::new()
        .route(base, get(list_instances))
        .route(&format!("{base}/{{instance}}/snapshot"), put(put_snapshot))
        .route(&format!("{base}/{{instance}}/binding"), put(put_binding))
        .route(
            &format!("{base}/{{instance}}/{{kind}}"),
            get(list_resources).post(create_resource),
        )
        .route(
            &format!("{base}/{{instance}}/{{kind}}/{{id}}"),
            get(get_resource)
                .put(upsert_resource)
                .delete(delete_resource),
        )
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            apikit::auth::require_bearer,
        ))
        .merge(registry_routes(&state))
        // Outside the token check: it proves the agent holds the token to a caller who
        // has not sent it yet.
        .route(PROOF_PATH, post(prove))
        .with_state(state)
}

/// The registry's routes: the agent's token or the registry token.
fn registry_routes(state: &AgentState) -> Router<AgentState> {
    let base = "/agent/apiserver/v1/registry";
    let accepted: Arc<[apikit::TokenHash]> = std::iter::once((*state.token).clone())
        .chain(state.registry_token.clone())
        .collect();
    Router::new()
        .route(&format!("{base}/services"), get(crate::registry::list))
        .route(
            &format!("{base}/services/{{service}}/nodes"),
            post(crate::registry::register),
        )
        .route(
            &format!("{base}/leases/{{lease}}"),
            put(crate::registry::heartbeat).delete(crate::registry::deregister),
        )
        .route_layer(middleware::from_fn_with_state(
            accepted,
            apikit::auth::require_any_bearer,
        ))
}

/// Answers a challenge with the proof of holding the token (see `apikit::auth`).
async fn prove(
    State(state): State<AgentState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenProof>, AgentError> {
    let request: TokenChallenge =
        model::json::parse(&body?).map_err(|e| bad_json("challenge", &e))?;
    let challenge = request.challenge.as_bytes();
    if challenge.len() != 64 || !challenge.iter().all(u8::is_ascii_hexdigit) {
        return Err(AgentError::BadRequest {
            message: "the challenge must be 32 bytes in hex".to_owned(),
            details: vec![FieldError {
                field: "challenge".into(),
                message: "must be 64 hex digits".into(),
            }],
        });
    }
    Ok(Json(TokenProof {
        proof: state.token.proof(challenge),
    }))
}

/// `PUT …/instances/{instance}/binding`: what the admin says the instance is bound to.
async fn put_binding(
    State(state): State<AgentState>,
    Path(instance): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, AgentError> {
    state.check_instance(&instance)?;
    let binding: InstanceBinding =
        model::json::parse(&body?).map_err(|e| bad_json("binding", &e))?;
    binding.validate().map_err(|errors| AgentError::Invalid {
        what: "binding".to_owned(),
        errors,
    })?;
    state.set_binding(&instance, &binding).await?;
    tracing::info!(instance, namespace = %binding.namespace, exists = binding.exists,
        templates = binding.plugin_templates.len(), "binding written");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_instances(
    State(state): State<AgentState>,
) -> Result<Json<AgentInstances>, AgentError> {
    let mut instances = Vec::new();
    for (name, namespace) in state.instance_names() {
        let revision = state.meta_revision(name).await?;
        instances.push(AgentInstance {
            name: name.clone(),
            namespace: namespace.clone(),
            revision: (revision.0 > 0).then_some(revision),
            nodes: state.nodes(name).await?,
            binding: state.binding(name).await?,
            store: state.store_of(name).info.clone(),
        });
    }
    Ok(Json(AgentInstances { instances }))
}

fn parse_kind(kind: &str) -> Result<ResourceKind, AgentError> {
    kind.parse()
        .map_err(|e: model::resource::UnknownKind| AgentError::NotFound(e.to_string()))
}

fn revision_header(headers: &HeaderMap) -> Result<Revision, AgentError> {
    let bad = |message: &str| AgentError::BadRequest {
        message: message.to_owned(),
        details: vec![FieldError {
            field: REVISION_HEADER.to_owned(),
            message: message.to_owned(),
        }],
    };
    let value = headers
        .get(REVISION_HEADER)
        .ok_or_else(|| bad("the x-portico-revision header is required on writes"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .map(Revision)
        .ok_or_else(|| bad("the x-portico-revision header must be a positive integer"))
}

/// Parses and validates a resource body of `kind`.
fn parse_resource(kind: ResourceKind, body: &[u8]) -> Result<Resource, AgentError> {
    let resource = kind
        .parse(body)
        .map_err(|e| bad_json(kind.singular(), &e))?;
    resource.validate().map_err(|errors| AgentError::Invalid {
        what: kind.singular().to_owned(),
        errors,
    })?;
    Ok(resource)
}

async fn list_resources(
    State(state): State<AgentState>,
    Path((instance, kind)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, AgentError> {
    state.check_instance(&instance)?;
    let kind = parse_kind(&kind)?;
    let items: Vec<_> = state
        .list_resources(&instance, kind)
        .await?
        .iter()
        .map(|r| r.redacted().to_json())
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn get_resource(
    State(state): State<AgentState>,
    Path((instance, kind, id)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, AgentError> {
    state.check_instance(&instance)?;
    let kind = parse_kind(&kind)?;
    match state.get_resource(&instance, kind, &id).await? {
        Some(r) => Ok(Json(r.redacted().to_json())),
        None => Err(AgentError::NotFound(format!(
            "{} {id:?} does not exist",
            kind.singular()
        ))),
    }
}

async fn create_resource(
    State(state): State<AgentState>,
    Path((instance, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AgentError> {
    write_resource(&state, &instance, &kind, None, &headers, &body?).await
}

async fn upsert_resource(
    State(state): State<AgentState>,
    Path((instance, kind, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AgentError> {
    write_resource(&state, &instance, &kind, Some(&id), &headers, &body?).await
}

/// POST (no `path_id`: create, 201) or PUT (`path_id`: create or replace, 200); the body's
/// id must equal the path's.
async fn write_resource(
    state: &AgentState,
    instance: &str,
    kind: &str,
    path_id: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, AgentError> {
    state.check_instance(instance)?;
    let kind = parse_kind(kind)?;
    let revision = revision_header(headers)?;
    let resource = parse_resource(kind, body)?;
    if let Some(id) = path_id.filter(|id| *id != resource.id()) {
        return Err(AgentError::Invalid {
            what: kind.singular().to_owned(),
            errors: ValidationErrors(vec![FieldError {
                field: "id".into(),
                message: format!("must equal the id in the path ({id:?})"),
            }]),
        });
    }
    let shown = resource.redacted().to_json();
    let (status, change) = match path_id {
        None => (StatusCode::CREATED, Change::Create(resource)),
        Some(_) => (StatusCode::OK, Change::Upsert(resource)),
    };
    state.apply(instance, revision, change).await?;
    Ok((status, Json(shown)).into_response())
}

async fn delete_resource(
    State(state): State<AgentState>,
    Path((instance, kind, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, AgentError> {
    state.check_instance(&instance)?;
    let kind = parse_kind(&kind)?;
    let revision = revision_header(&headers)?;
    state
        .apply(&instance, revision, Change::Delete { kind, id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_snapshot(
    State(state): State<AgentState>,
    Path(instance): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, AgentError> {
    let body = body?;
    state.check_instance(&instance)?;
    let snapshot: Snapshot = model::json::parse(&body).map_err(|e| bad_json("snapshot", &e))?;
    let mut errors = Vec::new();
    for resource in snapshot.resources() {
        if let Err(e) = resource.validate() {
            let prefix = format!("{}[{}]", resource.kind(), resource.id());
            errors.extend(e.0.into_iter().map(|fe| FieldError {
                field: format!("{prefix}.{}", fe.field),
                message: fe.message,
            }));
        }
    }
    if let Err(e) = snapshot.check_references() {
        errors.extend(e.0);
    }
    if !errors.is_empty() {
        return Err(AgentError::Invalid {
            what: "snapshot".into(),
            errors: ValidationErrors(errors),
        });
    }
    state.apply_snapshot(&instance, &snapshot).await?;
    Ok(Json(json!({ "revision": snapshot.revision })))
}
