//! Handlers for clusters, their instances, the instances' nodes and change logs.
//!
//! A cluster's agent token is write-only: given at registration (or generated then and
//! answered once), replaced by a PUT that carries one, never shown otherwise.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::cluster::{
    Cluster, Instance, InstanceNamespace, KubernetesFace, KubernetesStatus, NodeHeartbeat,
    NodeLoad, SkippedObject,
};

use super::{parse_json, ApiPath, Items, NamespaceQuery, Scope};
use crate::auth::Principal;
use crate::convergence::ConvergenceHistory;
use crate::db;
use crate::db::{ChangeEntry, GoneNode};
use crate::error::ApiError;
use crate::state::{AgentContact, AppState};
use crate::sync;

/// `agent_address` is stored in a VARCHAR(255).
const MAX_ADDRESS: usize = 255;

/// A cluster as listed: its agent's address and how this admin last reached it, and
/// its Kubernetes face (without the kubeconfig) when it has one.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ClusterView {
    name: String,
    agent_address: String,
    agent: AgentContact,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<KubernetesFace>,
    /// What the cross-cluster controller last reported of the Kubernetes face.
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_status: Option<KubernetesStatus>,
    /// Changes whenever the kubeconfig is written (it tells nothing of its content):
    /// the controller fetches a kubeconfig again only when this changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    kubeconfig_version: Option<String>,
}

/// The cluster as listed (its agent token and kubeconfig never are).
fn view(state: &AppState, cluster: Cluster, extras: Option<db::KubernetesExtras>) -> ClusterView {
    let extras = extras
        .filter(|_| cluster.kubernetes.is_some())
        .unwrap_or_default();
    ClusterView {
        agent: state.agent_contact(&cluster.name),
        name: cluster.name,
        agent_address: cluster.agent_address,
        kubernetes_status: extras.status,
        kubeconfig_version: extras.kubeconfig_version,
        kubernetes: cluster.kubernetes.map(without_kubeconfig),
    }
}

/// Records what the cross-cluster controller sees of the cluster's Kubernetes face
/// (`portico xcluster` reports every few seconds while it leads); platform admins
/// only. Not in the audit log: a report changes no configuration.
#[utoipa::path(put, path = "/clusters/{cluster}/kubernetes/status", tag = "clusters",
    params(("cluster" = String, Path, description = "the cluster's name")),
    request_body = KubernetesStatus,
    responses((status = 204, description = "recorded")))]
pub(super) async fn put_kubernetes_status(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require_platform_admin()?;
    let status: KubernetesStatus = parse_json("kubernetes status", &body?)?;
    if let Err(errors) = status.validate() {
        return Err(ApiError::Invalid {
            what: "kubernetes status".into(),
            errors,
        });
    }
    state.db.require_cluster(&name).await?;
    if !state
        .db
        .record_kubernetes_status(&name, &status, db::now_ms())
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "cluster {name:?} has no Kubernetes face"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

fn without_kubeconfig(face: KubernetesFace) -> KubernetesFace {
    KubernetesFace {
        kubeconfig: None,
        ..face
    }
}

/// A Kubernetes face needs a kubeconfig: given now, or stored before (`stored`).
fn require_kubeconfig(cluster: &Cluster, stored: bool) -> Result<(), ApiError> {
    match &cluster.kubernetes {
        Some(face) if face.kubeconfig.is_none() && !stored => Err(ApiError::invalid_field(
            "cluster",
            "kubernetes.kubeconfig",
            "required: the cluster has no kubeconfig stored yet",
        )),
        _ => Ok(()),
    }
}

/// A cluster's kubeconfig, for the cross-cluster controller.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct KubeconfigView {
    kubeconfig: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
}

/// The cluster's kubeconfig (credentials included), for `portico xcluster`: platform
/// admins only; every read is audited.
#[utoipa::path(get, path = "/clusters/{cluster}/kubeconfig", tag = "clusters",
    params(("cluster" = String, Path, description = "the cluster's name")),
    responses((status = 200, description = "the kubeconfig", body = KubeconfigView)))]
pub(super) async fn get_kubeconfig(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<KubeconfigView>, ApiError> {
    caller.require_platform_admin()?;
    let cluster = state.db.require_cluster(&name).await?;
    let Some(face) = cluster.kubernetes else {
        return Err(ApiError::NotFound(format!(
            "cluster {name:?} has no Kubernetes face"
        )));
    };
    let Some(kubeconfig) = state.db.kubeconfig(&name).await? else {
        return Err(ApiError::NotFound(format!(
            "cluster {name:?} has no kubeconfig"
        )));
    };
    tracing::info!(cluster = %name, user = %caller.user, "kubeconfig read");
    Ok(Json(KubeconfigView {
        kubeconfig,
        context: face.context,
    }))
}

/// Every cluster (agent tokens never shown), with its agent's reachability.
#[utoipa::path(get, path = "/clusters", tag = "clusters",
    responses((status = 200, description = "the clusters", body = Items<ClusterView>)))]
pub(super) async fn list_clusters(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Items<ClusterView>>, ApiError> {
    let clusters = state.db.clusters().await?;
    Ok(Items::of({
        let mut extras = state.db.kubernetes_extras(None).await?;
        clusters
            .into_iter()
            .map(|c| {
                let extras = extras.remove(&c.name);
                view(&state, c, extras)
            })
            .collect()
    }))
}

/// Registers a cluster; its agent is polled at once. A generated agent token is
/// answered in this 201 only.
#[utoipa::path(post, path = "/clusters", tag = "clusters",
    request_body = Cluster,
    responses((status = 201, description = "the cluster", body = Cluster)))]
pub(super) async fn create_cluster(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let mut cluster = parse_cluster(&state, &body?)?;
    require_kubeconfig(&cluster, false)?;
    // Without a token of its own, a cluster gets a generated one, answered this once;
    // unless the shared token of earlier versions is configured, which it then uses.
    let generated = cluster.agent_token.is_none() && !state.agents.has_shared_token();
    if generated {
        cluster.agent_token = Some(crate::auth::generate_token());
    }
    if !state.db.insert_cluster(&cluster, db::now()).await? {
        return Err(ApiError::AlreadyExists(format!(
            "cluster {:?} already exists",
            cluster.name
        )));
    }
    tracing::info!(cluster = %cluster.name, agent = %cluster.agent_address,
        token = if generated { "generated" } else if cluster.agent_token.is_some() { "given" } else { "shared" },
        "cluster registered");
    // Discover its instances now rather than at the next tick; the answer does not wait.
    tokio::spawn(sync::poll_cluster_now(state, cluster.name.clone()));
    if !generated {
        cluster.agent_token = None;
    }
    cluster.kubernetes = cluster.kubernetes.map(without_kubeconfig);
    Ok((StatusCode::CREATED, Json(cluster)).into_response())
}

/// One cluster, with its agent's reachability.
#[utoipa::path(get, path = "/clusters/{cluster}", tag = "clusters",
    params(("cluster" = String, Path, description = "the cluster's name")),
    responses((status = 200, description = "the cluster", body = ClusterView)))]
pub(super) async fn get_cluster(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ClusterView>, ApiError> {
    let cluster = state.db.require_cluster(&name).await?;
    let extras = state
        .db
        .kubernetes_extras(Some(&cluster.name))
        .await?
        .remove(&cluster.name);
    Ok(Json(view(&state, cluster, extras)))
}

/// Changes the agent address; the body is the whole cluster and its name must match.
#[utoipa::path(put, path = "/clusters/{cluster}", tag = "clusters",
    params(("cluster" = String, Path, description = "the cluster's name")),
    request_body = Cluster,
    responses((status = 200, description = "the cluster", body = Cluster)))]
pub(super) async fn update_cluster(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Cluster>, ApiError> {
    caller.require_platform_admin()?;
    state.db.require_cluster(&name).await?;
    let cluster = parse_cluster(&state, &body?)?;
    if cluster.name != name {
        return Err(ApiError::invalid_field(
            "cluster",
            "name",
            format!("must equal the name in the path ({name:?})"),
        ));
    }
    require_kubeconfig(&cluster, state.db.has_kubeconfig(&name).await?)?;
    if !state.db.update_cluster(&cluster).await? {
        return Err(ApiError::NotFound(format!(
            "cluster {name:?} does not exist"
        )));
    }
    tracing::info!(cluster = %name, agent = %cluster.agent_address,
        token_replaced = cluster.agent_token.is_some(), "cluster changed");
    tokio::spawn(sync::poll_cluster_now(state, name));
    Ok(Json(Cluster {
        agent_token: None,
        kubernetes: cluster.kubernetes.map(without_kubeconfig),
        ..cluster
    }))
}

/// Removes a cluster (refused while its instances hold config).
#[utoipa::path(delete, path = "/clusters/{cluster}", tag = "clusters",
    params(("cluster" = String, Path, description = "the cluster's name")),
    responses((status = 204, description = "removed")))]
pub(super) async fn delete_cluster(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_platform_admin()?;
    state.db.delete_cluster(&name).await?;
    state.forget_cluster(&name);
    tracing::info!(cluster = %name, "cluster removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The cluster's instances in the namespaces the caller has a role in.
#[utoipa::path(get, path = "/clusters/{cluster}/instances", tag = "clusters",
    params(("cluster" = String, Path, description = "the cluster's name")),
    responses((status = 200, description = "the instances", body = Items<Instance>)))]
pub(super) async fn list_instances(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(cluster): ApiPath<String>,
) -> Result<Json<Items<Instance>>, ApiError> {
    state.db.require_cluster(&cluster).await?;
    // Everyone sees the instances of the namespaces they have a role in.
    let items: Vec<Instance> = state
        .db
        .instances(&cluster)
        .await?
        .into_iter()
        .filter(|i| caller.role(&i.namespace).is_some())
        .collect();
    Ok(Items::of(items))
}

/// One instance of the namespace.
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}", tag = "instances",
    params(
        super::InstancePath,
        NamespaceQuery,
    ),
    responses((status = 200, description = "the instance", body = Instance)))]
pub(super) async fn get_instance(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(scope.instance(&state, &cluster, &instance).await?))
}

/// Moves the instance and its config to another namespace (pinned there: its agent's
/// report no longer moves it), or with `{"namespace": null}` hands the choice back to
/// the agent. Addressed by cluster and instance alone: the move spans two namespaces.
#[utoipa::path(put, path = "/clusters/{cluster}/instances/{instance}/namespace", tag = "instances",
    params(
        super::InstancePath,
    ),
    request_body = InstanceNamespace,
    responses((status = 200, description = "the instance", body = Instance)))]
pub(super) async fn set_instance_namespace(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Instance>, ApiError> {
    caller.require_platform_admin()?;
    let wanted: InstanceNamespace = parse_json("instance namespace", &body?)?;
    if let Some(namespace) = &wanted.namespace {
        let mut v = model::validate::Validator::new();
        model::validate::check_id(&mut v, "namespace", namespace);
        v.finish().map_err(|errors| ApiError::Invalid {
            what: "instance namespace".into(),
            errors,
        })?;
    }
    state
        .db
        .set_instance_namespace(&cluster, &instance, wanted.namespace.as_deref())
        .await?;
    let moved = state.db.require_instance(&cluster, &instance).await?;
    tracing::info!(cluster, instance, namespace = %moved.namespace,
        source = ?moved.namespace_source, "instance namespace set");
    // Its gateways follow their new namespace (and its plugin templates) at once.
    let (s, c, i) = (state.clone(), cluster.clone(), instance.clone());
    tokio::spawn(async move { sync::rebind_instance(&s, &c, &i).await });
    Ok(Json(moved))
}

/// An instance's gateway nodes: those its agent reports, and those it reported before
/// and no longer does.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NodesView {
    /// Online: their last heartbeats, as the agent last reported them, with the rates
    /// of their load.
    items: Vec<NodeView>,
    /// Gone (kept 7 days): when each was first and last seen, and when it went.
    gone: Vec<GoneNode>,
    /// The cluster's agent: `items` is what it reported at `last_contact_ms`; while
    /// it is not `ok` they may be stale.
    agent: AgentContact,
}

/// An online node: its last heartbeat, and the rates its `load` gives (absent when the
/// node does not report its load).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NodeView {
    #[serde(flatten)]
    heartbeat: NodeHeartbeat,
    /// Requests per second over the node's last minute (`load.requests / 60`).
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_second: Option<f64>,
    /// Share of the last minute's requests answered with a 5xx, 0 to 1 (absent when
    /// the node served none).
    #[serde(skip_serializing_if = "Option::is_none")]
    error_rate: Option<f64>,
}

impl NodeView {
    fn of(heartbeat: NodeHeartbeat) -> Self {
        Self {
            requests_per_second: heartbeat.load.map(|l| l.requests_per_second()),
            error_rate: heartbeat.load.and_then(|l| l.error_rate()),
            heartbeat,
        }
    }
}

/// The instance's gateway nodes as its agent last reported them, and those gone.
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/nodes", tag = "instances",
    params(
        super::InstancePath,
        NamespaceQuery,
    ),
    responses((status = 200, description = "the nodes", body = NodesView)))]
pub(super) async fn list_nodes(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
) -> Result<Json<NodesView>, ApiError> {
    scope.instance(&state, &cluster, &instance).await?;
    Ok(Json(NodesView {
        items: state
            .nodes(&cluster, &instance)
            .into_iter()
            .map(NodeView::of)
            .collect(),
        gone: state.db.gone_nodes(&cluster, &instance).await?,
        agent: state.agent_contact(&cluster),
    }))
}

/// Whether the instance's latest revision reached all its gateway nodes.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NodesConvergence {
    /// The instance's latest revision.
    revision: model::snapshot::Revision,
    /// When it was committed (unix milliseconds), if known.
    committed_at_ms: Option<i64>,
    /// Gateway nodes online (heartbeats its agent last reported).
    nodes: usize,
    /// Of those, the nodes serving the latest revision.
    reached: usize,
    /// All online nodes serve it (and there is at least one).
    converged: bool,
    /// Once converged: from the commit to the last node swapping it in, by the nodes'
    /// own clocks (`applied_at_ms`); `None` before, or when a time is unknown.
    took_ms: Option<i64>,
    /// The nodes not serving it yet: what each serves, and why it serves nothing if
    /// it is unbound.
    behind: Vec<NodeBehind>,
    /// The online nodes' load together.
    load: InstanceLoad,
    /// The nodes that skipped config objects, with each object and why.
    skipped: Vec<NodeSkipped>,
    /// Upstream nodes some gateway node marked down (by active or passive checks),
    /// with which gateway nodes see them down and why.
    upstream_nodes_down: Vec<UpstreamNodeDown>,
    /// The cluster's agent: all of the above is as it reported at `last_contact_ms`;
    /// while it is not `ok` it may be stale.
    agent: AgentContact,
}

/// The load of an instance's online nodes together (of those that report one).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct InstanceLoad {
    /// Online nodes that report their load (older nodes do not).
    nodes_reporting: usize,
    /// Their requests per second over the last minute, added up.
    requests_per_second: f64,
    /// Share of all their last minute's requests answered with a 5xx, 0 to 1 (each
    /// node weighs by its requests); absent when they served none.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_rate: Option<f64>,
    /// Their counts added up: requests and 5xx over the last minute, connections and
    /// requests in flight now.
    #[serde(flatten)]
    total: NodeLoad,
}

/// A node that does not serve some config objects as written.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NodeSkipped {
    node_id: String,
    objects: Vec<SkippedObject>,
}

/// An upstream node marked down by at least one gateway node.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct UpstreamNodeDown {
    upstream_id: String,
    address: String,
    /// The gateway nodes that see it down, each with its reason.
    seen_by: Vec<DownSeenBy>,
}

/// One gateway node's view of a down upstream node.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DownSeenBy {
    node_id: String,
    /// `active: …` or `passive: …`, when the node says.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A node that does not serve the latest revision yet.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NodeBehind {
    node_id: String,
    applied_revision: model::snapshot::Revision,
    #[serde(skip_serializing_if = "Option::is_none")]
    unbound: Option<String>,
}

/// `GET …/convergence`: the instance across its online nodes — has the latest revision
/// reached every node ("N of M") and how long did it take; their load together;
/// which nodes skipped config objects and why; which upstream nodes they see down.
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/convergence", tag = "instances",
    params(
        super::InstancePath,
        NamespaceQuery,
    ),
    responses((status = 200, description = "the latest revision across the nodes", body = NodesConvergence)))]
pub(super) async fn convergence(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
) -> Result<Json<NodesConvergence>, ApiError> {
    let found = scope.instance(&state, &cluster, &instance).await?;
    let nodes = state.nodes(&cluster, &instance);
    let committed_at_ms = state
        .db
        .committed_at_ms(&cluster, &instance, found.revision)
        .await?;
    let mut answer = converged(found.revision, committed_at_ms, &nodes);
    answer.agent = state.agent_contact(&cluster);
    Ok(Json(answer))
}

/// How many revisions the convergence history answers by default, and at most.
const HISTORY_DEFAULT: u32 = 20;
const HISTORY_MAX: u32 = 200;

/// The query of `GET …/convergence/history`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    /// How many of the latest revisions (default 20, 1 to 200).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    last: Option<String>,
}

/// `GET …/convergence/history?last=N`: each of the instance's last N revisions —
/// the nodes it had to reach (online at its commit), those it reached, and the time
/// from its commit to the last of them — and the nearest-rank p50, p99 and max of
/// those times over the converged ones (the rule: `crate::convergence`).
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/convergence/history", tag = "instances",
    params(
        super::InstancePath,
        HistoryQuery,
        NamespaceQuery,
    ),
    responses((status = 200, description = "the last revisions' convergence, newest first", body = ConvergenceHistory)))]
pub(super) async fn convergence_history(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<ConvergenceHistory>, ApiError> {
    let last = history_length(super::revisions::query(q)?.last.as_deref())?;
    let found = scope.instance(&state, &cluster, &instance).await?;
    let inputs = state
        .db
        .convergence_inputs(&cluster, &instance, last)
        .await?;
    Ok(Json(crate::convergence::history(found.revision, &inputs)))
}

/// `last` as asked: not a whole number is 400, out of range 422, both naming it.
fn history_length(last: Option<&str>) -> Result<u32, ApiError> {
    let Some(last) = last else {
        return Ok(HISTORY_DEFAULT);
    };
    let range = format!("must be a whole number from 1 to {HISTORY_MAX}");
    let n: i64 = last.trim().parse().map_err(|_| ApiError::BadRequest {
        message: "bad query string: last is not a whole number".into(),
        details: vec![model::validate::FieldError {
            field: "last".into(),
            message: range.clone(),
        }],
    })?;
    match u32::try_from(n) {
        Ok(n) if (1..=HISTORY_MAX).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid_field("query", "last", range)),
    }
}

fn converged(
    revision: model::snapshot::Revision,
    committed_at_ms: Option<i64>,
    nodes: &[NodeHeartbeat],
) -> NodesConvergence {
    let behind: Vec<NodeBehind> = nodes
        .iter()
        .filter(|n| n.applied_revision != revision)
        .map(|n| NodeBehind {
            node_id: n.node_id.clone(),
            applied_revision: n.applied_revision,
            unbound: n.unbound.clone(),
        })
        .collect();
    let converged = !nodes.is_empty() && behind.is_empty();
    let last_applied = nodes.iter().map(|n| n.applied_at_ms).max();
    let took_ms = match (converged, committed_at_ms, last_applied) {
        (true, Some(committed), Some(applied))
            if applied > 0 && nodes.iter().all(|n| n.applied_at_ms > 0) =>
        {
            Some((applied - committed).max(0))
        }
        _ => None,
    };
    NodesConvergence {
        revision,
        committed_at_ms,
        nodes: nodes.len(),
        reached: nodes.len() - behind.len(),
        converged,
        took_ms,
        behind,
        load: instance_load(nodes),
        skipped: nodes
            .iter()
            .filter(|n| !n.skipped.is_empty())
            .map(|n| NodeSkipped {
                node_id: n.node_id.clone(),
                objects: n.skipped.clone(),
            })
            .collect(),
        upstream_nodes_down: upstream_nodes_down(nodes),
        agent: AgentContact::default(),
    }
}

fn instance_load(nodes: &[NodeHeartbeat]) -> InstanceLoad {
    let reporting: Vec<&NodeLoad> = nodes.iter().filter_map(|n| n.load.as_ref()).collect();
    let total = NodeLoad::sum(reporting.iter().copied());
    InstanceLoad {
        nodes_reporting: reporting.len(),
        requests_per_second: total.requests_per_second(),
        error_rate: total.error_rate(),
        total,
    }
}

/// Every upstream node some gateway node reports down, by upstream and address.
fn upstream_nodes_down(nodes: &[NodeHeartbeat]) -> Vec<UpstreamNodeDown> {
    let mut down: Vec<UpstreamNodeDown> = Vec::new();
    for node in nodes {
        for upstream in &node.upstreams {
            for health in upstream.nodes.iter().filter(|h| !h.healthy) {
                let seen = DownSeenBy {
                    node_id: node.node_id.clone(),
                    reason: health.reason.clone(),
                };
                match down
                    .iter_mut()
                    .find(|d| d.upstream_id == upstream.upstream_id && d.address == health.address)
                {
                    Some(d) => d.seen_by.push(seen),
                    None => down.push(UpstreamNodeDown {
                        upstream_id: upstream.upstream_id.clone(),
                        address: health.address.clone(),
                        seen_by: vec![seen],
                    }),
                }
            }
        }
    }
    down.sort_by(|a, b| (&a.upstream_id, &a.address).cmp(&(&b.upstream_id, &b.address)));
    down
}

/// The instance's change log, newest first (certificate keys are never in it).
#[utoipa::path(get, path = "/clusters/{cluster}/instances/{instance}/changes", tag = "history",
    params(
        super::InstancePath,
        NamespaceQuery,
    ),
    responses((status = 200, description = "the change log", body = Items<ChangeEntry>)))]
pub(super) async fn list_changes(
    State(state): State<Arc<AppState>>,
    scope: Scope,
    ApiPath((cluster, instance)): ApiPath<(String, String)>,
) -> Result<Json<Items<ChangeEntry>>, ApiError> {
    scope.instance(&state, &cluster, &instance).await?;
    Ok(Items::of(state.db.changes(&cluster, &instance).await?))
}

fn parse_cluster(state: &AppState, body: &[u8]) -> Result<Cluster, ApiError> {
    let cluster: Cluster = parse_json("cluster", body)?;
    let mut errors = cluster.validate().err().unwrap_or_default();
    if cluster.agent_address.starts_with("https://") && !state.agents.tls_configured() {
        errors.0.push(model::validate::FieldError {
            field: "agent_address".into(),
            message: "https:// agents need the admin started with --agent-ca (the CA their certificates chain to)".into(),
        });
    }
    if cluster.agent_address.len() > MAX_ADDRESS {
        errors.0.push(model::validate::FieldError {
            field: "agent_address".into(),
            message: format!("must be at most {MAX_ADDRESS} characters"),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            what: "cluster".into(),
            errors,
        });
    }
    Ok(Cluster {
        agent_address: cluster.agent_address.trim_end_matches('/').to_owned(),
        ..cluster
    })
}

/// This admin process and who reconciles.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AdminStatus {
    /// This process's lease holder name.
    holder: String,
    /// Whether this process holds the reconciler lease (polls agents, reconciles).
    reconciler: bool,
    lease: LeaseView,
}

/// The reconciler lease as the database holds it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LeaseView {
    holder: String,
    /// Unix milliseconds.
    expires_at_ms: i64,
}

/// `GET /status`: this admin process and who reconciles (platform admin): `holder` is
/// this process, `reconciler` whether it is the one, `lease` the lease as stored.
#[utoipa::path(get, path = "/status", tag = "clusters",
    responses((status = 200, description = "this admin and the reconciler lease", body = AdminStatus)))]
pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<Json<AdminStatus>, ApiError> {
    caller.require_platform_admin()?;
    let (holder, expires_at_ms) = state.db.lease(crate::lease::RECONCILER).await?;
    Ok(Json(AdminStatus {
        holder: state.lease.holder.clone(),
        reconciler: state.lease.held(),
        lease: LeaseView {
            holder,
            expires_at_ms,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::snapshot::Revision;

    fn node(id: &str, revision: u64, applied_at_ms: i64) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: id.into(),
            address: "127.0.0.1:9080".into(),
            applied_revision: Revision(revision),
            applied_at_ms,
            updated_at_ms: applied_at_ms,
            config_source: model::cluster::ConfigSource::Store,
            upstreams: Vec::new(),
            skipped: Vec::new(),
            redis_fallbacks: 0,
            unbound: None,
            load: None,
        }
    }

    #[test]
    fn n_of_m_and_how_long() {
        // One node behind: 1 of 2, no time yet.
        let c = converged(
            Revision(5),
            Some(1_000),
            &[node("a", 5, 1_040), node("b", 4, 900)],
        );
        assert_eq!(
            (c.nodes, c.reached, c.converged, c.took_ms),
            (2, 1, false, None)
        );
        assert_eq!(c.behind[0].node_id, "b");
        // Both there: the last one decides.
        let c = converged(
            Revision(5),
            Some(1_000),
            &[node("a", 5, 1_040), node("b", 5, 1_075)],
        );
        assert_eq!((c.reached, c.converged, c.took_ms), (2, true, Some(75)));
        // A node's clock behind the admin's never makes it negative; an unknown time
        // or commit time gives none; no node is not converged.
        let c = converged(Revision(5), Some(1_000), &[node("a", 5, 990)]);
        assert_eq!(c.took_ms, Some(0));
        let c = converged(Revision(5), Some(1_000), &[node("a", 5, 0)]);
        assert_eq!((c.converged, c.took_ms), (true, None));
        let c = converged(Revision(5), None, &[node("a", 5, 1_040)]);
        assert_eq!(c.took_ms, None);
        let c = converged(Revision(5), Some(1_000), &[]);
        assert!(!c.converged);
        // An unbound node is behind and says why.
        let mut lost = node("c", 0, 0);
        lost.unbound = Some("namespace gone".into());
        let c = converged(Revision(5), Some(1_000), &[node("a", 5, 1_040), lost]);
        assert_eq!(c.behind[0].unbound.as_deref(), Some("namespace gone"));
    }

    #[test]
    fn the_history_length_is_checked() {
        assert_eq!(history_length(None).unwrap(), 20);
        assert_eq!(history_length(Some("1")).unwrap(), 1);
        assert_eq!(history_length(Some("200")).unwrap(), 200);
        for (last, status) in [
            ("0", StatusCode::UNPROCESSABLE_ENTITY),
            ("201", StatusCode::UNPROCESSABLE_ENTITY),
            ("-3", StatusCode::UNPROCESSABLE_ENTITY),
            ("99999999999", StatusCode::UNPROCESSABLE_ENTITY),
            ("ten", StatusCode::BAD_REQUEST),
            ("", StatusCode::BAD_REQUEST),
        ] {
            let answer = history_length(Some(last)).unwrap_err().into_response();
            assert_eq!(answer.status(), status, "last={last:?}");
        }
    }

    #[test]
    fn the_instance_view_adds_up_its_nodes() {
        let load = |requests, errors, connections| NodeLoad {
            requests,
            errors,
            connections,
            in_flight: 1,
        };
        let down = |address: &str, reason: &str| model::cluster::NodeHealth {
            address: address.into(),
            healthy: false,
            reason: Some(reason.into()),
        };
        let mut a = node("a", 5, 1);
        a.load = Some(load(60, 3, 2));
        a.skipped = vec![SkippedObject {
            key: "/portico/instances/i/routes/r9".into(),
            reason: "unknown upstream \"u9\"".into(),
        }];
        a.upstreams = vec![model::cluster::UpstreamHealth {
            upstream_id: "u".into(),
            nodes: vec![
                down("10.0.0.2:80", "passive: 2 failures"),
                model::cluster::NodeHealth {
                    address: "10.0.0.1:80".into(),
                    healthy: true,
                    reason: None,
                },
            ],
        }];
        let mut b = node("b", 5, 1);
        b.load = Some(load(180, 1, 1));
        b.upstreams = vec![model::cluster::UpstreamHealth {
            upstream_id: "u".into(),
            nodes: vec![down("10.0.0.2:80", "active: 3 failures")],
        }];
        // An old node without a load report counts as a node, not as zero load.
        let old = node("c", 5, 1);
        let c = converged(Revision(5), None, &[a, b, old]);

        assert_eq!(c.load.nodes_reporting, 2);
        assert_eq!(c.load.requests_per_second, 4.0);
        assert_eq!(c.load.error_rate, Some(4.0 / 240.0));
        assert_eq!((c.load.total.connections, c.load.total.in_flight), (3, 2));
        assert_eq!(c.skipped.len(), 1);
        assert_eq!(c.skipped[0].node_id, "a");
        assert_eq!(c.skipped[0].objects[0].reason, "unknown upstream \"u9\"");
        assert_eq!(c.upstream_nodes_down.len(), 1);
        let d = &c.upstream_nodes_down[0];
        assert_eq!(
            (d.upstream_id.as_str(), d.address.as_str()),
            ("u", "10.0.0.2:80")
        );
        let seen: Vec<(&str, Option<&str>)> = d
            .seen_by
            .iter()
            .map(|s| (s.node_id.as_str(), s.reason.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a", Some("passive: 2 failures")),
                ("b", Some("active: 3 failures"))
            ]
        );
        // The node answer: the load's rates beside the heartbeat, none without a load.
        let view = serde_json::to_value(NodeView::of(node("c", 5, 1))).unwrap();
        assert!(view.get("requests_per_second").is_none(), "{view}");
        let mut d = node("d", 5, 1);
        d.load = Some(load(40, 10, 3));
        let view = serde_json::to_value(NodeView::of(d)).unwrap();
        assert_eq!(view["node_id"], "d");
        assert_eq!(view["requests_per_second"], 40.0 / 60.0);
        assert_eq!(view["error_rate"], 0.25);
        assert_eq!(view["load"]["connections"], 3);
    }
}
