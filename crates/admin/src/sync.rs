//! The config spine on the admin's side: commit a change, push it, and keep every
//! instance's store level with the database.
//!
//! ```text
//! write:     (parsed + validated) → lock instance → DB transaction (revision+1, row,
//!            change log) → push the change to the agent
//!              ├ 2xx                 → applied
//!              ├ refused (409 …)     → push the full snapshot → applied | pending
//!              └ unreachable / 5xx   → pending (the reconcile loop delivers it)
//! verify:    before anything is sent to a cluster's agent address not yet verified (new,
//!            moved, or with a new token), the agent must prove it holds the cluster's
//!            token (a challenge answered with an HMAC; the token is not sent); until
//!            it does, nothing goes there and changes stay pending
//! reconcile: every poll interval, when this admin holds the reconciler lease (one
//!            admin of those sharing a database does, `lease.rs`), per cluster:
//!            GET the agent's instances → record them
//!            (online / missing) → for each instance whose store revision differs from
//!            the DB's, push the full snapshot; whose binding (namespace, whether it
//!            exists, its plugin templates) differs from the DB's, push the binding
//! bind:      a change to a namespace (created, deleted, its plugin templates) or an
//!            instance moved pushes the binding of its instances at once
//! ```
//!
//! The database is the desired state, so nothing here undoes an accepted change: a
//! failed push only leaves the instance behind until the next reconcile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use model::cluster::Cluster;
use model::snapshot::Revision;
use tokio::sync::watch;

use crate::agent_client::{AgentCallError, Target};
use crate::db::{self, AgentRecord, Change, Committed, InstanceReport, RevisionNote};
use crate::error::ApiError;
use crate::state::AppState;

/// Whether a change reached the instance's store before the API answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncStatus {
    Applied,
    Pending,
    /// A dry run: checked, not stored, not sent.
    DryRun,
}

impl SyncStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Applied => "applied",
            SyncStatus::Pending => "pending",
            SyncStatus::DryRun => "dry_run",
        }
    }
}

/// The outcome of an accepted change.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub revision: Revision,
    pub sync: SyncStatus,
    /// For an upsert: the resource did not exist before.
    pub created: bool,
    /// For one change: the object before it, as the API shows it.
    pub before: Option<serde_json::Value>,
}

/// Commits `change` (already parsed and validated) and pushes it to the cluster's agent.
pub(crate) async fn write(
    state: &AppState,
    namespace: &str,
    cluster: &str,
    instance: &str,
    change: &Change,
    note: &RevisionNote,
) -> Result<Written, ApiError> {
    let lock = state.instance_lock(cluster, instance);
    let _in_revision_order = lock.lock().await;
    let committed = state
        .db
        .commit(namespace, cluster, instance, change, note, db::now())
        .await?;
    if note.dry_run {
        return Ok(Written {
            revision: committed.revision,
            sync: SyncStatus::DryRun,
            created: committed.created,
            before: committed.previous.first().cloned().flatten(),
        });
    }
    push_committed(state, cluster, instance, committed).await
}

/// Pushes what a commit wrote, under the instance's lock (held by the caller): one
/// change as such, several as the full snapshot (one revision in one agent write).
pub(crate) async fn push_committed(
    state: &AppState,
    cluster: &str,
    instance: &str,
    committed: Committed,
) -> Result<Written, ApiError> {
    let agent = Target {
        address: &committed.agent_address,
        token: committed.agent_token.as_deref(),
    };
    if !verified(state, cluster, agent, committed.agent_verified).await {
        return Ok(Written {
            revision: committed.revision,
            sync: SyncStatus::Pending,
            created: committed.created,
            before: committed.previous.first().cloned().flatten(),
        });
    }
    let [change] = committed.stored.as_slice() else {
        return Ok(Written {
            revision: committed.revision,
            sync: push_snapshot(state, cluster, instance, agent).await,
            created: committed.created,
            before: None,
        });
    };
    let sync = match state
        .agents
        .push_change(agent, instance, committed.revision, change)
        .await
    {
        Ok(()) => {
            state.note_agent(cluster, Ok(()));
            record_applied(state, cluster, instance, committed.revision).await;
            SyncStatus::Applied
        }
        Err(e @ AgentCallError::Refused { .. }) if !e.is_unauthorized() => {
            // The store is not where this change builds on (a lost push, a wiped
            // store) or disagrees about the resource: the snapshot settles both.
            tracing::info!(cluster, instance, revision = %committed.revision, error = %e,
                "agent refused the change; sending the full snapshot");
            state.note_agent(cluster, Ok(()));
            push_snapshot(state, cluster, instance, agent).await
        }
        Err(e) => {
            state.note_agent(cluster, Err(&e));
            tracing::debug!(cluster, instance, revision = %committed.revision, error = %e,
                "change pending");
            SyncStatus::Pending
        }
    };
    Ok(Written {
        revision: committed.revision,
        sync,
        created: committed.created,
        before: committed.previous.first().cloned().flatten(),
    })
}

/// Polls every cluster's agent and reconciles, every `interval` (the first at once),
/// until `shutdown` flips to true (or its sender is gone).
pub(crate) async fn run_loop(
    state: Arc<AppState>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = async {
                ticker.tick().await;
                // Another admin on the same database may be the one reconciling.
                if state.lease.held() {
                    poll_all(&state).await;
                }
            } => {}
        }
    }
}

/// One pass over every cluster, concurrently, so a dead agent delays no other.
pub(crate) async fn poll_all(state: &AppState) {
    let clusters = match state.db.agent_records().await {
        Ok(clusters) => clusters,
        Err(e) => {
            tracing::warn!(error = ?e, "cannot read the clusters to poll");
            return;
        }
    };
    futures::future::join_all(clusters.iter().map(|record| poll_cluster(state, record))).await;
}

/// Polls one cluster by name now (after it is registered or moved).
pub(crate) async fn poll_cluster_now(state: Arc<AppState>, name: String) {
    match state.db.agent_record(&name).await {
        Ok(Some(record)) => poll_cluster(&state, &record).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(cluster = %name, error = ?e, "cannot read the cluster to poll"),
    }
}

/// Makes sure the agent address has proven it holds the cluster's token before anything
/// (the token itself included) is sent there: `already` when the database says so,
/// else the agent is asked for a proof now and, when it gives one, the address is
/// recorded as verified.
async fn verified(state: &AppState, cluster: &str, agent: Target<'_>, already: bool) -> bool {
    if already {
        return true;
    }
    match state.agents.verify(agent).await {
        Ok(()) => {
            if let Err(e) = state.db.mark_verified(cluster, agent.address).await {
                tracing::warn!(cluster, error = %e, "cannot record the verified agent address");
            }
            tracing::info!(
                cluster,
                agent = agent.address,
                "agent address verified: it holds the cluster's token"
            );
            true
        }
        Err(e) => {
            state.note_agent(cluster, Err(&e));
            false
        }
    }
}

/// Asks the agent for its instances, records them, then reconciles each one.
async fn poll_cluster(state: &AppState, record: &AgentRecord) {
    let cluster = &record.cluster;
    let agent = Target {
        address: &cluster.agent_address,
        token: record.token.as_deref(),
    };
    if !verified(state, &cluster.name, agent, record.verified).await {
        return;
    }
    let report = match state.agents.instances(agent).await {
        Ok(report) => {
            state.note_agent(&cluster.name, Ok(()));
            report
        }
        Err(e) => {
            // Unknown is not missing: instances keep their status until the agent answers.
            state.note_agent(&cluster.name, Err(&e));
            return;
        }
    };
    let mut reported = Vec::new();
    for instance in &report.instances {
        let mut v = model::validate::Validator::new();
        model::validate::check_id(&mut v, "name", &instance.name);
        if let Some(namespace) = &instance.namespace {
            model::validate::check_id(&mut v, "namespace", namespace);
        }
        if let Err(e) = v.finish() {
            tracing::warn!(cluster = %cluster.name, instance = %instance.name, error = %e,
                "ignoring an instance with an invalid name or namespace");
            continue;
        }
        reported.push(InstanceReport {
            name: instance.name.clone(),
            revision: instance.revision.unwrap_or_default(),
            namespace: instance.namespace.clone(),
            store: instance.store.clone(),
        });
    }
    let outcome = match state
        .db
        .record_report(&cluster.name, &cluster.agent_address, &reported, db::now())
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(cluster = %cluster.name, error = %e, "cannot record the agent's instances");
            return;
        }
    };
    for name in &outcome.discovered {
        tracing::info!(cluster = %cluster.name, instance = %name, "instance discovered");
    }
    for name in &outcome.back_online {
        tracing::info!(cluster = %cluster.name, instance = %name, "instance reported again");
    }
    for name in &outcome.went_missing {
        tracing::warn!(cluster = %cluster.name, instance = %name,
            "instance no longer reported by its agent; marked missing, config kept");
    }
    // Each instance's nodes now and at the poll before (an instance no longer
    // reported has none now).
    let seen: Vec<(&str, &[model::cluster::NodeHeartbeat], Option<Vec<_>>)> = report
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i.nodes.as_slice()))
        .chain(
            outcome
                .went_missing
                .iter()
                .map(|name| (name.as_str(), &[][..])),
        )
        .map(|(name, now)| (name, now, state.known_nodes(&cluster.name, name)))
        .collect();
    state.set_nodes(&cluster.name, &report);
    let now_ms = db::now_ms();
    for (instance, nodes, previous) in &seen {
        // The database changes only when a node appears or goes: the same nodes as at
        // the last poll need no query (the first poll of this admin always checks).
        let same = previous
            .as_deref()
            .is_some_and(|previous| node_ids(previous) == node_ids(nodes));
        if !same {
            if let Err(e) = state
                .db
                .record_nodes(
                    &cluster.name,
                    instance,
                    nodes,
                    previous.as_deref().unwrap_or_default(),
                    now_ms,
                )
                .await
            {
                tracing::warn!(cluster = %cluster.name, instance, error = %e,
                    "cannot record the instance's nodes");
            }
        }
        // Likewise a node's revision is written only when it moved since the last poll.
        let moved = moved_nodes(nodes, previous.as_deref());
        if moved.is_empty() {
            continue;
        }
        if let Err(e) = state
            .db
            .record_node_revisions(&cluster.name, instance, &moved, now_ms)
            .await
        {
            tracing::warn!(cluster = %cluster.name, instance, error = %e,
                "cannot record the revisions the instance's nodes report");
        }
    }
    for instance in &reported {
        reconcile(state, cluster, agent, instance).await;
    }
    rebind_reported(state, &cluster.name, agent, &report.instances).await;
}

/// Sends each reported instance the binding the DB wants where its store holds
/// another: the cluster's instances read in one query, each namespace's binding once.
async fn rebind_reported(
    state: &AppState,
    cluster: &str,
    agent: Target<'_>,
    reported: &[model::cluster::AgentInstance],
) {
    let known = match state.db.instances(cluster).await {
        Ok(known) => known,
        Err(e) => {
            tracing::warn!(cluster, error = %e, "cannot read the cluster's instances");
            return;
        }
    };
    let mut bindings: HashMap<String, model::cluster::InstanceBinding> = HashMap::new();
    for instance in reported {
        let Some(found) = known.iter().find(|k| k.name == instance.name) else {
            continue;
        };
        let wanted = match bindings.get(&found.namespace) {
            Some(wanted) => wanted.clone(),
            None => match state.db.binding(found).await {
                Ok(wanted) => {
                    bindings.insert(found.namespace.clone(), wanted.clone());
                    wanted
                }
                Err(e) => {
                    tracing::warn!(cluster, instance = %found.name, error = %e,
                        "cannot read the instance's binding");
                    continue;
                }
            },
        };
        push_binding(
            state,
            cluster,
            agent,
            &instance.name,
            instance.binding.as_ref(),
            &wanted,
        )
        .await;
    }
}

/// The ids of `nodes`, sorted.
fn node_ids(nodes: &[model::cluster::NodeHeartbeat]) -> Vec<&str> {
    let mut ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// The nodes whose applied revision is not the one they reported at the poll before
/// (all of them when `previous` is unknown: this admin's first poll), so the first
/// report of each revision is recorded once. Revision 0 (nothing applied yet) is no
/// report; ids too long for the table are left out, as `record_nodes` does.
fn moved_nodes<'a>(
    nodes: &'a [model::cluster::NodeHeartbeat],
    previous: Option<&[model::cluster::NodeHeartbeat]>,
) -> Vec<&'a model::cluster::NodeHeartbeat> {
    nodes
        .iter()
        .filter(|n| n.applied_revision.0 > 0 && n.node_id.len() <= 128)
        .filter(|n| {
            previous.is_none_or(|previous| {
                !previous
                    .iter()
                    .any(|p| p.node_id == n.node_id && p.applied_revision == n.applied_revision)
            })
        })
        .collect()
}

/// Pushes the instance's binding when its store holds another (`held`, as its agent
/// reported it; `None`: none, or not known).
async fn rebind(
    state: &AppState,
    cluster: &str,
    agent: Target<'_>,
    instance: &str,
    held: Option<&model::cluster::InstanceBinding>,
) {
    let wanted = match state.db.instance(cluster, instance).await {
        Ok(Some(found)) => state.db.binding(&found).await,
        Ok(None) => return,
        Err(e) => Err(e.into()),
    };
    match wanted {
        Ok(wanted) => push_binding(state, cluster, agent, instance, held, &wanted).await,
        Err(e) => {
            tracing::warn!(cluster, instance, error = %e, "cannot read the instance's binding");
        }
    }
}

/// Sends `wanted` unless the store holds it already (`held`).
async fn push_binding(
    state: &AppState,
    cluster: &str,
    agent: Target<'_>,
    instance: &str,
    held: Option<&model::cluster::InstanceBinding>,
    wanted: &model::cluster::InstanceBinding,
) {
    if held == Some(wanted) {
        return;
    }
    match state.agents.push_binding(agent, instance, wanted).await {
        Ok(()) => tracing::info!(cluster, instance, namespace = %wanted.namespace,
            exists = wanted.exists, templates = wanted.plugin_templates.len(), "binding sent"),
        Err(e) => {
            state.note_agent(cluster, Err(&e));
            tracing::debug!(cluster, instance, error = %e, "binding pending");
        }
    }
}

/// Pushes the binding of every instance of `namespace` (after the namespace or its
/// plugin templates changed); an agent that cannot be reached gets it when next
/// polled.
pub(crate) async fn rebind_namespace(state: Arc<AppState>, namespace: String) {
    let instances = match state.db.instances_in(&namespace).await {
        Ok(instances) => instances,
        Err(e) => {
            tracing::warn!(namespace, error = %e, "cannot read the namespace's instances");
            return;
        }
    };
    for instance in instances {
        rebind_instance(&state, &instance.cluster, &instance.name).await;
    }
}

/// Pushes one instance's binding now (after it moved namespace).
pub(crate) async fn rebind_instance(state: &AppState, cluster: &str, instance: &str) {
    let record = match state.db.agent_record(cluster).await {
        Ok(Some(record)) => record,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(cluster, error = ?e, "cannot read the cluster");
            return;
        }
    };
    let agent = Target {
        address: &record.cluster.agent_address,
        token: record.token.as_deref(),
    };
    if verified(state, cluster, agent, record.verified).await {
        rebind(state, cluster, agent, instance, None).await;
    }
}

/// Level-triggered: whatever happened before, if the store's revision is not the DB's,
/// send the whole snapshot.
async fn reconcile(
    state: &AppState,
    cluster: &Cluster,
    agent: Target<'_>,
    report: &InstanceReport,
) {
    let lock = state.instance_lock(&cluster.name, &report.name);
    let _in_revision_order = lock.lock().await;
    let desired = match state.db.instance(&cluster.name, &report.name).await {
        Ok(Some(instance)) => instance.revision,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(cluster = %cluster.name, instance = %report.name, error = %e,
                "cannot read the instance to reconcile");
            return;
        }
    };
    if report.revision == desired {
        return;
    }
    // The report was taken before the lock: pushes applied since then moved the store
    // on, and a full snapshot for them would be work for nothing (and a full rebuild on
    // every node). Ask again, now that no push can run, and act on that answer.
    let store_revision = match state.agents.instances(agent).await {
        Ok(fresh) => match fresh.instances.iter().find(|i| i.name == report.name) {
            Some(fresh) => fresh.revision.unwrap_or_default(),
            None => return,
        },
        Err(e) => {
            state.note_agent(&cluster.name, Err(&e));
            return;
        }
    };
    let report = &InstanceReport {
        revision: store_revision,
        ..report.clone()
    };
    if report.revision == desired {
        return;
    }
    if report.revision > desired {
        // The store is ahead of the DB (a restored database, another admin): the DB is
        // the desired state, so its config is re-asserted at a revision past the store's.
        tracing::warn!(cluster = %cluster.name, instance = %report.name,
            store = %report.revision, database = %desired,
            "the store holds a later revision than the database; re-asserting the database's config");
        if let Err(e) = state
            .db
            .resync_past(&cluster.name, &report.name, report.revision, db::now())
            .await
        {
            tracing::warn!(cluster = %cluster.name, instance = %report.name, error = %e,
                "cannot move the revision past the store's");
            return;
        }
    }
    tracing::info!(cluster = %cluster.name, instance = %report.name,
        store = %report.revision, "store behind the database; sending the full snapshot");
    push_snapshot(state, &cluster.name, &report.name, agent).await;
}

/// Sends the instance's snapshot at the DB's current revision. The caller holds the
/// instance lock, so that revision is the latest one.
async fn push_snapshot(
    state: &AppState,
    cluster: &str,
    instance: &str,
    agent: Target<'_>,
) -> SyncStatus {
    let snapshot = match state.db.snapshot(cluster, instance).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return SyncStatus::Pending,
        Err(e) => {
            tracing::warn!(cluster, instance, error = %e, "cannot read the snapshot to push");
            return SyncStatus::Pending;
        }
    };
    match state.agents.push_snapshot(agent, instance, &snapshot).await {
        Ok(()) => {
            state.note_agent(cluster, Ok(()));
            record_applied(state, cluster, instance, snapshot.revision).await;
            SyncStatus::Applied
        }
        Err(e) => {
            state.note_agent(cluster, Err(&e));
            if let AgentCallError::Refused { .. } = e {
                tracing::warn!(cluster, instance, revision = %snapshot.revision, error = %e,
                    "agent refused the snapshot");
            }
            SyncStatus::Pending
        }
    }
}

async fn record_applied(state: &AppState, cluster: &str, instance: &str, revision: Revision) {
    if let Err(e) = state
        .db
        .set_applied_revision(cluster, instance, revision)
        .await
    {
        tracing::warn!(cluster, instance, error = %e, "cannot record the applied revision");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::cluster::{ConfigSource, NodeHeartbeat};

    fn node(id: &str, revision: u64) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: id.into(),
            address: "127.0.0.1:9080".into(),
            applied_revision: Revision(revision),
            applied_at_ms: 1,
            updated_at_ms: 1,
            config_source: ConfigSource::Store,
            upstreams: Vec::new(),
            skipped: Vec::new(),
            redis_fallbacks: 0,
            unbound: None,
            load: None,
        }
    }

    fn ids(moved: &[&NodeHeartbeat]) -> Vec<String> {
        moved.iter().map(|n| n.node_id.clone()).collect()
    }

    #[test]
    fn only_nodes_whose_revision_moved_are_written() {
        let before = [node("a", 3), node("b", 3), node("c", 2)];
        // a unchanged, b moved on, c went, d is new, e has applied nothing yet.
        let now = [node("a", 3), node("b", 4), node("d", 4), node("e", 0)];
        assert_eq!(ids(&moved_nodes(&now, Some(&before))), ["b", "d"]);
        // Nothing moved: nothing to write.
        assert!(moved_nodes(&before, Some(&before)).is_empty());
        // The first poll of this admin checks every node that applied something.
        assert_eq!(ids(&moved_nodes(&now, None)), ["a", "b", "d"]);
    }
}
