//! The cluster's service registry (requirement N4): services register nodes through
//! the agent, which keeps them in the config store under one lease per registration,
//! so gateways watch them like config and a node whose heartbeats stop disappears
//! when its lease expires (`model::registry` has the types and key layout).
//!
//! ```text
//! POST   /agent/apiserver/v1/registry/services/{service}/nodes  register → 201 {lease, ttl_secs…}
//! PUT    /agent/apiserver/v1/registry/leases/{lease}            heartbeat → 200 | 404 expired
//! DELETE /agent/apiserver/v1/registry/leases/{lease}            deregister → 204 | 404
//! GET    /agent/apiserver/v1/registry/services[?namespace=&service=]  what is registered
//! ```
//!
//! These routes accept the agent's token or its registry token (`--registry-token`),
//! which services hold: it can register nodes and nothing else.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use model::registry::{RegisteredNode, RegisteredService, Registration, RegistrationAnswer};
use model::validate::{check_id, FieldError, Validator};
use serde::{Deserialize, Serialize};
use store::{LeaseId, Op, StoreError, Txn};

use crate::error::{bad_json, AgentError};
use crate::AgentState;

/// `POST …/registry/services/{service}/nodes`: registers one node into its namespaces,
/// all under one new lease.
pub(crate) async fn register(
    State(state): State<AgentState>,
    Path(service): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RegistrationAnswer>), AgentError> {
    let registration: Registration =
        model::json::parse(&body?).map_err(|e| bad_json("registration", &e))?;
    registration
        .validate(&service)
        .map_err(|errors| AgentError::Invalid {
            what: "registration".to_owned(),
            errors,
        })?;
    let namespaces = registration.namespace_list();
    let node_id = registration.node_id();
    let store = &state.store;
    let lease = store.grant_lease(registration.ttl_secs).await?;
    let registered_at_ms = now_ms();
    let ops = namespaces
        .iter()
        .map(|namespace| {
            let node = RegisteredNode {
                namespace: namespace.clone(),
                service: service.clone(),
                node_id: node_id.clone(),
                host: registration.host.clone(),
                // Validation keeps the port in 1..=65535.
                port: u16::try_from(registration.port).unwrap_or_default(),
                weight: registration.weight,
                metadata: registration.metadata.clone(),
                lease: lease.0.to_string(),
                ttl_secs: registration.ttl_secs,
                registered_at_ms,
            };
            Op::Put {
                key: state.keyspace.registry_node(namespace, &service, &node_id),
                value: serde_json::to_vec(&node).expect("registry nodes always serialise"),
                lease: Some(lease),
            }
        })
        .collect();
    let written = store
        .txn(Txn {
            compares: Vec::new(),
            ops,
        })
        .await;
    if let Err(e) = written {
        // Nothing was written; the lease would only expire unused.
        let _ = store.revoke_lease(lease).await;
        return Err(e.into());
    }
    tracing::info!(%service, node = %node_id, namespaces = ?namespaces, lease = lease.0,
        ttl_secs = registration.ttl_secs, "service node registered");
    Ok((
        StatusCode::CREATED,
        Json(RegistrationAnswer {
            lease: lease.0.to_string(),
            service,
            node_id,
            namespaces,
            ttl_secs: registration.ttl_secs,
        }),
    ))
}

/// What a heartbeat answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HeartbeatAnswer {
    pub lease: String,
}

/// `PUT …/registry/leases/{lease}`: keeps a registration alive for another TTL.
pub(crate) async fn heartbeat(
    State(state): State<AgentState>,
    Path(lease): Path<String>,
) -> Result<Json<HeartbeatAnswer>, AgentError> {
    let id = parse_lease(&lease)?;
    match state.store.keep_alive(id).await {
        Ok(()) => Ok(Json(HeartbeatAnswer { lease })),
        Err(StoreError::LeaseNotFound) => Err(expired(&lease)),
        Err(e) => Err(e.into()),
    }
}

/// `DELETE …/registry/leases/{lease}`: removes the registration's nodes now.
pub(crate) async fn deregister(
    State(state): State<AgentState>,
    Path(lease): Path<String>,
) -> Result<StatusCode, AgentError> {
    let id = parse_lease(&lease)?;
    match state.store.revoke_lease(id).await {
        Ok(()) => {
            tracing::info!(lease = id.0, "service registration removed");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::LeaseNotFound) => Err(expired(&lease)),
        Err(e) => Err(e.into()),
    }
}

/// Which registrations a listing shows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub namespace: Option<String>,
    pub service: Option<String>,
}

/// What a listing answers: services with their nodes, by namespace and name.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ServiceList {
    pub items: Vec<RegisteredService>,
}

/// `GET …/registry/services`: the registered services (of one namespace, or one
/// service) with their live nodes.
pub(crate) async fn list(
    State(state): State<AgentState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ServiceList>, AgentError> {
    let Query(query) = query.map_err(|e| AgentError::BadRequest {
        message: e.body_text(),
        details: Vec::new(),
    })?;
    let mut v = Validator::new();
    if let Some(namespace) = &query.namespace {
        check_id(&mut v, "namespace", namespace);
    }
    if let Some(service) = &query.service {
        check_id(&mut v, "service", service);
    }
    v.finish().map_err(|errors| AgentError::Invalid {
        what: "query".to_owned(),
        errors,
    })?;
    let prefix = match &query.namespace {
        Some(namespace) => state.keyspace.registry_namespace_prefix(namespace),
        None => state.keyspace.registry_prefix(),
    };
    let listing = state.store.list(&prefix).await?;
    let mut services: BTreeMap<(String, String), Vec<RegisteredNode>> = BTreeMap::new();
    for kv in listing.kvs {
        let Some((namespace, service, _)) = state.keyspace.parse_registry(&kv.key) else {
            continue;
        };
        if query.service.as_deref().is_some_and(|s| s != service) {
            continue;
        }
        let Ok(node) = serde_json::from_slice::<RegisteredNode>(&kv.value) else {
            tracing::warn!(key = %kv.key, "unreadable registry entry left out");
            continue;
        };
        services
            .entry((namespace.to_owned(), service.to_owned()))
            .or_default()
            .push(node);
    }
    Ok(Json(ServiceList {
        items: services
            .into_iter()
            .map(|((namespace, service), nodes)| RegisteredService {
                namespace,
                service,
                nodes,
            })
            .collect(),
    }))
}

fn parse_lease(lease: &str) -> Result<LeaseId, AgentError> {
    lease
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(LeaseId)
        .ok_or_else(|| AgentError::BadRequest {
            message: "a lease is the positive number a registration answered".to_owned(),
            details: vec![FieldError {
                field: "lease".to_owned(),
                message: "must be a positive integer".to_owned(),
            }],
        })
}

fn expired(lease: &str) -> AgentError {
    AgentError::NotFound(format!(
        "registration {lease} does not exist or expired; register again"
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
