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
//!
//! An agent whose instances live in several stores (`--instance-store`) writes each
//! registration into every one of them, under a lease of each; the registration's
//! lease is then those leases' ids joined by `.`, in the order of
//! `AgentState::registry_stores`, and heartbeats and deregistration act on all.

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
    let stores = state.registry_stores();
    let mut leases = Vec::with_capacity(stores.len());
    for target in &stores {
        match target.store.grant_lease(registration.ttl_secs).await {
            Ok(lease) => leases.push(lease),
            Err(e) => {
                revoke_all(&stores, &leases).await;
                return Err(e.into());
            }
        }
    }
    let lease = join_leases(&leases);
    let registered_at_ms = now_ms();
    for (target, store_lease) in stores.iter().zip(&leases) {
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
                    lease: lease.clone(),
                    ttl_secs: registration.ttl_secs,
                    registered_at_ms,
                };
                Op::Put {
                    key: target.keyspace.registry_node(namespace, &service, &node_id),
                    value: serde_json::to_vec(&node).expect("registry nodes always serialise"),
                    lease: Some(*store_lease),
                }
            })
            .collect();
        let written = target
            .store
            .txn(Txn {
                compares: Vec::new(),
                ops,
            })
            .await;
        if let Err(e) = written {
            // Revoking the leases removes what the stores before this one got.
            revoke_all(&stores, &leases).await;
            return Err(e.into());
        }
    }
    tracing::info!(%service, node = %node_id, namespaces = ?namespaces, %lease,
        stores = stores.len(), ttl_secs = registration.ttl_secs, "service node registered");
    Ok((
        StatusCode::CREATED,
        Json(RegistrationAnswer {
            lease,
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
    let stores = state.registry_stores();
    let ids = parse_lease(&lease, stores.len())?;
    for (target, id) in stores.iter().zip(&ids) {
        match target.store.keep_alive(*id).await {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound) => {
                // Half a registration would serve some gateways only: end it all.
                revoke_all(&stores, &ids).await;
                return Err(expired(&lease));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(HeartbeatAnswer { lease }))
}

/// `DELETE …/registry/leases/{lease}`: removes the registration's nodes now.
pub(crate) async fn deregister(
    State(state): State<AgentState>,
    Path(lease): Path<String>,
) -> Result<StatusCode, AgentError> {
    let stores = state.registry_stores();
    let ids = parse_lease(&lease, stores.len())?;
    let mut found = false;
    for (target, id) in stores.iter().zip(&ids) {
        match target.store.revoke_lease(*id).await {
            Ok(()) => found = true,
            Err(StoreError::LeaseNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !found {
        return Err(expired(&lease));
    }
    tracing::info!(%lease, "service registration removed");
    Ok(StatusCode::NO_CONTENT)
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
    // Every store holds every registration: the first one answers.
    let stores = state.registry_stores();
    let Some(first) = stores.first() else {
        return Ok(Json(ServiceList { items: Vec::new() }));
    };
    let keyspace = &first.keyspace;
    let prefix = match &query.namespace {
        Some(namespace) => keyspace.registry_namespace_prefix(namespace),
        None => keyspace.registry_prefix(),
    };
    let listing = first.store.list(&prefix).await?;
    let mut services: BTreeMap<(String, String), Vec<RegisteredNode>> = BTreeMap::new();
    for kv in listing.kvs {
        let Some((namespace, service, _)) = keyspace.parse_registry(&kv.key) else {
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

/// A registration's lease: one store lease id per store, joined by `.`.
fn join_leases(leases: &[LeaseId]) -> String {
    leases
        .iter()
        .map(|l| l.0.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// The store leases of a registration's lease; `stores` ids are expected.
fn parse_lease(lease: &str, stores: usize) -> Result<Vec<LeaseId>, AgentError> {
    let ids = model::registry::parse_lease(lease).ok_or_else(|| AgentError::BadRequest {
        message: "a lease is what a registration answered".to_owned(),
        details: vec![FieldError {
            field: "lease".to_owned(),
            message: "must be positive integers joined by '.'".to_owned(),
        }],
    })?;
    if ids.len() != stores {
        return Err(expired(lease));
    }
    Ok(ids.into_iter().map(LeaseId).collect())
}

/// Revokes what could be revoked: used when a registration cannot be completed.
async fn revoke_all(stores: &[&crate::InstanceStore], leases: &[LeaseId]) {
    for (target, lease) in stores.iter().zip(leases) {
        let _ = target.store.revoke_lease(*lease).await;
    }
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
