//! The service registry through the admin (requirement N4): what is registered into a
//! namespace in every cluster, and registering, heartbeating and deregistering a node
//! through a cluster's agent with the caller's role checked in every namespace the
//! registration touches. The registry itself lives in each cluster's store; the agent
//! keeps it (`agent::registry`), the admin only relays.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use model::registry::{RegisteredNode, Registration, RegistrationAnswer};
use model::user::Role;

use super::{parse_json, ApiPath};
use crate::agent_client::{AgentCallError, Target};
use crate::auth::Principal;
use crate::db::AgentRecord;
use crate::error::ApiError;
use crate::state::AppState;

/// The services registered into a namespace, in every cluster, with their live nodes;
/// clusters whose agent could not be asked are named with why.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NamespaceRegistry {
    items: Vec<ClusterService>,
    /// Clusters whose registry could not be read now: their services are not listed.
    unreachable: Vec<UnreachableCluster>,
}

/// A registered service of one cluster.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ClusterService {
    cluster: String,
    service: String,
    nodes: Vec<RegisteredNode>,
}

/// A cluster whose agent could not be asked, and why.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct UnreachableCluster {
    cluster: String,
    error: String,
}

/// What a heartbeat through the admin answers.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct LeaseAnswer {
    lease: String,
}

/// The services registered into the namespace across clusters (each agent asked at
/// once; one that does not answer within the call timeout is listed as unreachable).
#[utoipa::path(get, path = "/namespaces/{id}/registry", tag = "registry",
    params(("id" = String, Path, description = "the namespace's id")),
    responses((status = 200, description = "the registered services", body = NamespaceRegistry)))]
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NamespaceRegistry>, ApiError> {
    caller.require(&id, Role::Viewer)?;
    state.db.require_namespace(&id).await?;
    let records = state.db.agent_records().await?;
    let asked = records.iter().map(|record| {
        let (state, id) = (&state, &id);
        async move {
            let listed = match target(record) {
                Ok(agent) => state
                    .agents
                    .registry(agent, Some(id))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (record.cluster.name.clone(), listed)
        }
    });
    let mut answer = NamespaceRegistry {
        items: Vec::new(),
        unreachable: Vec::new(),
    };
    for (cluster, listed) in futures::future::join_all(asked).await {
        match listed {
            Ok(services) => answer
                .items
                .extend(services.into_iter().map(|s| ClusterService {
                    cluster: cluster.clone(),
                    service: s.service,
                    nodes: s.nodes,
                })),
            Err(error) => answer
                .unreachable
                .push(UnreachableCluster { cluster, error }),
        }
    }
    Ok(Json(answer))
}

/// Registers a node through the cluster's agent: the caller must be an editor of every
/// namespace it names, and each must exist.
#[utoipa::path(post, path = "/clusters/{cluster}/registry/services/{service}/nodes", tag = "registry",
    params(
        ("cluster" = String, Path, description = "the cluster's name"),
        ("service" = String, Path, description = "the service's name"),
    ),
    request_body = Registration,
    responses(
        (status = 201, description = "registered: heartbeat the lease within ttl_secs", body = RegistrationAnswer),
        (status = 502, description = "the agent refused the call", body = model::validate::ErrorBody),
    ))]
pub(super) async fn register(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((cluster, service)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RegistrationAnswer>), ApiError> {
    let registration: Registration = parse_json("registration", &body?)?;
    registration
        .validate(&service)
        .map_err(|errors| ApiError::Invalid {
            what: "registration".to_owned(),
            errors,
        })?;
    for namespace in registration.namespace_list() {
        caller.require(&namespace, Role::Editor)?;
        if state.db.require_namespace(&namespace).await.is_err() {
            return Err(ApiError::invalid_field(
                "registration",
                "namespaces",
                format!("namespace {namespace:?} does not exist"),
            ));
        }
    }
    let record = record_of(&state, &cluster).await?;
    let answer = state
        .agents
        .register(target(&record)?, &service, &registration)
        .await
        .map_err(relayed)?;
    tracing::info!(%cluster, %service, node = %answer.node_id, lease = %answer.lease,
        user = %caller.user, "service node registered through the admin");
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Keeps a registration alive for another TTL.
#[utoipa::path(put, path = "/clusters/{cluster}/registry/leases/{lease}", tag = "registry",
    params(
        ("cluster" = String, Path, description = "the cluster's name"),
        ("lease" = String, Path, description = "the lease a registration answered"),
    ),
    responses(
        (status = 200, description = "kept alive", body = LeaseAnswer),
        (status = 502, description = "the agent refused the call", body = model::validate::ErrorBody),
    ))]
pub(super) async fn heartbeat(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((cluster, lease)): ApiPath<(String, String)>,
) -> Result<Json<LeaseAnswer>, ApiError> {
    let record = authorised_lease(&state, &caller, &cluster, &lease).await?;
    state
        .agents
        .registry_lease(target(&record)?, reqwest::Method::PUT, &lease)
        .await
        .map_err(relayed)?;
    Ok(Json(LeaseAnswer { lease }))
}

/// Removes a registration's nodes now.
#[utoipa::path(delete, path = "/clusters/{cluster}/registry/leases/{lease}", tag = "registry",
    params(
        ("cluster" = String, Path, description = "the cluster's name"),
        ("lease" = String, Path, description = "the lease a registration answered"),
    ),
    responses(
        (status = 204, description = "deregistered"),
        (status = 502, description = "the agent refused the call", body = model::validate::ErrorBody),
    ))]
pub(super) async fn deregister(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((cluster, lease)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let record = authorised_lease(&state, &caller, &cluster, &lease).await?;
    state
        .agents
        .registry_lease(target(&record)?, reqwest::Method::DELETE, &lease)
        .await
        .map_err(relayed)?;
    tracing::info!(%cluster, %lease, user = %caller.user, "service registration removed through the admin");
    Ok(StatusCode::NO_CONTENT)
}

/// The cluster's agent record, after checking the caller is an editor of every
/// namespace the lease's nodes are in (404 when no node holds the lease).
async fn authorised_lease(
    state: &AppState,
    caller: &Principal,
    cluster: &str,
    lease: &str,
) -> Result<AgentRecord, ApiError> {
    if model::registry::parse_lease(lease).is_none() {
        return Err(ApiError::invalid_field(
            "lease",
            "lease",
            "must be the positive number a registration answered",
        ));
    }
    let record = record_of(state, cluster).await?;
    let services = state
        .agents
        .registry(target(&record)?, None)
        .await
        .map_err(relayed)?;
    let namespaces: std::collections::BTreeSet<&str> = services
        .iter()
        .filter(|s| s.nodes.iter().any(|n| n.lease == lease))
        .map(|s| s.namespace.as_str())
        .collect();
    if namespaces.is_empty() {
        return Err(ApiError::NotFound(format!(
            "registration {lease} does not exist in cluster {cluster:?} or expired; register again"
        )));
    }
    for namespace in namespaces {
        caller.require(namespace, Role::Editor)?;
    }
    Ok(record)
}

async fn record_of(state: &AppState, cluster: &str) -> Result<AgentRecord, ApiError> {
    state
        .db
        .agent_records()
        .await?
        .into_iter()
        .find(|r| r.cluster.name == cluster)
        .ok_or_else(|| ApiError::NotFound(format!("cluster {cluster:?} does not exist")))
}

/// Where the cluster's agent is; an address that has not proved it holds the
/// cluster's token is sent nothing.
fn target(record: &AgentRecord) -> Result<Target<'_>, ApiError> {
    if !record.verified {
        return Err(ApiError::AgentUnavailable(format!(
            "the agent address of cluster {:?} is not verified yet",
            record.cluster.name
        )));
    }
    Ok(Target {
        address: &record.cluster.agent_address,
        token: record.token.as_deref(),
    })
}

/// An agent's failure as the admin answers it.
fn relayed(e: AgentCallError) -> ApiError {
    match e {
        AgentCallError::Refused {
            status, message, ..
        } if status == reqwest::StatusCode::NOT_FOUND => ApiError::NotFound(message),
        AgentCallError::Refused { .. } => ApiError::AgentRefused(e.to_string()),
        AgentCallError::Unreachable(_) | AgentCallError::Unverified(_) => {
            ApiError::AgentUnavailable(e.to_string())
        }
    }
}
