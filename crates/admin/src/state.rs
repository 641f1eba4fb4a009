//! What every handler and the reconcile loop share: the database, the agent client, and
//! the little in-memory state that only this process needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use model::cluster::{AgentInstances, NodeHeartbeat};

use crate::agent_client::{AgentCallError, AgentClient};
use crate::db::Db;
use crate::lease::Lease;

/// Names one instance: (cluster, instance).
type InstanceKey = (String, String);

pub(crate) struct AppState {
    pub db: Db,
    /// Whether this process reconciles (several admins may share the database).
    pub lease: Lease,
    pub agents: AgentClient,
    /// One lock per (cluster, instance). A write commits and pushes under it, and the
    /// reconcile loop pushes snapshots under it, so pushes leave in revision order and
    /// a snapshot never overtakes a change.
    instance_locks: Mutex<HashMap<InstanceKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Last known health of each cluster's agent, so a state change is logged once
    /// rather than at every poll.
    agent_health: Mutex<HashMap<String, AgentContact>>,
    /// Gateway nodes of each (cluster, instance) from the agent's last answer: observed
    /// state, refreshed every poll, so it is kept in memory rather than in the DB.
    nodes: RwLock<HashMap<InstanceKey, Vec<NodeHeartbeat>>>,
    /// The route tester's compiled config of each instance, at the revision it was
    /// built from (rebuilt when the instance moves on).
    test_tables: Mutex<HashMap<InstanceKey, Arc<gateway::tester::TestTable>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AgentHealth {
    /// It answered the last call.
    Ok,
    /// No usable answer (refused connection, timeout, 5xx).
    Unreachable,
    /// It refused the admin's token.
    Unauthorized,
    /// Its address has not proved it holds the cluster's token: nothing is sent there.
    Unverified,
}

/// What this admin knows of a cluster's agent since it started (`GET /clusters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AgentContact {
    /// How the last call went; `None` before the first.
    pub state: Option<AgentHealth>,
    /// When it last answered (unix milliseconds).
    pub last_contact_ms: Option<i64>,
    /// Since when `state` holds (unix milliseconds).
    pub since_ms: Option<i64>,
    /// Why the last call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AppState {
    pub(crate) fn new(db: Db, agents: AgentClient) -> Self {
        Self {
            db,
            lease: Lease::new(),
            agents,
            instance_locks: Mutex::default(),
            agent_health: Mutex::default(),
            nodes: RwLock::default(),
            test_tables: Mutex::default(),
        }
    }

    /// The lock that orders writes and pushes of one instance.
    pub(crate) fn instance_lock(
        &self,
        cluster: &str,
        instance: &str,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.instance_locks.lock().expect("lock map poisoned");
        locks
            .entry((cluster.to_owned(), instance.to_owned()))
            .or_default()
            .clone()
    }

    /// Records how a call to the cluster's agent went; logs only when that changes.
    /// Refusals of one request (a conflict, a validation error) say nothing about the
    /// agent's health and are ignored here.
    pub(crate) fn note_agent(&self, cluster: &str, outcome: Result<(), &AgentCallError>) {
        let health = match outcome {
            Ok(()) => AgentHealth::Ok,
            Err(e) if e.is_unauthorized() => AgentHealth::Unauthorized,
            Err(AgentCallError::Unreachable(_)) => AgentHealth::Unreachable,
            Err(AgentCallError::Unverified(_)) => AgentHealth::Unverified,
            Err(AgentCallError::Refused { .. }) => AgentHealth::Ok,
        };
        let now = crate::db::now_ms();
        let previous = {
            let mut contacts = self.agent_health.lock().expect("health map poisoned");
            let contact = contacts.entry(cluster.to_owned()).or_default();
            let previous = contact.state;
            if previous != Some(health) {
                contact.since_ms = Some(now);
            }
            contact.state = Some(health);
            // An agent that answered, even with a refusal, was in contact.
            if !matches!(health, AgentHealth::Unreachable | AgentHealth::Unverified) {
                contact.last_contact_ms = Some(now);
            }
            contact.error = outcome.err().map(ToString::to_string);
            previous
        };
        if previous == Some(health) {
            return;
        }
        match (health, outcome) {
            (AgentHealth::Ok, _) if previous.is_some() => {
                tracing::info!(cluster, "agent reachable again");
            }
            (AgentHealth::Ok, _) => {}
            (AgentHealth::Unreachable, Err(e)) => {
                tracing::warn!(cluster, error = %e, "agent unreachable; changes stay pending until it is back");
            }
            (AgentHealth::Unauthorized, _) => {
                tracing::warn!(
                    cluster,
                    "agent refused the admin's token; the agent's PORTICO_AGENT_TOKEN must be the cluster's agent token"
                );
            }
            (AgentHealth::Unverified, Err(e)) => {
                tracing::warn!(cluster, error = %e,
                    "agent address not verified; nothing is sent there until it proves it holds the cluster's token");
            }
            (AgentHealth::Unreachable | AgentHealth::Unverified, Ok(())) => {}
        }
    }

    /// Replaces the cluster's nodes with what its agent just reported.
    pub(crate) fn set_nodes(&self, cluster: &str, report: &AgentInstances) {
        let mut nodes = self.nodes.write().expect("node map poisoned");
        nodes.retain(|(c, _), _| c != cluster);
        for instance in &report.instances {
            let mut list = instance.nodes.clone();
            list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            nodes.insert((cluster.to_owned(), instance.name.clone()), list);
        }
    }

    pub(crate) fn nodes(&self, cluster: &str, instance: &str) -> Vec<NodeHeartbeat> {
        self.known_nodes(cluster, instance).unwrap_or_default()
    }

    /// The instance's nodes at the last poll; `None` before this admin polled it.
    pub(crate) fn known_nodes(&self, cluster: &str, instance: &str) -> Option<Vec<NodeHeartbeat>> {
        self.nodes
            .read()
            .expect("node map poisoned")
            .get(&(cluster.to_owned(), instance.to_owned()))
            .cloned()
    }

    /// The route tester's table of the instance, if one was built at `revision` under
    /// `binding`.
    pub(crate) fn test_table(
        &self,
        cluster: &str,
        instance: &str,
        revision: model::snapshot::Revision,
        binding: &model::cluster::InstanceBinding,
    ) -> Option<Arc<gateway::tester::TestTable>> {
        self.test_tables
            .lock()
            .expect("test tables poisoned")
            .get(&(cluster.to_owned(), instance.to_owned()))
            .filter(|t| t.built_from(revision, Some(binding)))
            .cloned()
    }

    pub(crate) fn keep_test_table(
        &self,
        cluster: &str,
        instance: &str,
        table: Arc<gateway::tester::TestTable>,
    ) {
        self.test_tables
            .lock()
            .expect("test tables poisoned")
            .insert((cluster.to_owned(), instance.to_owned()), table);
    }

    /// What this admin knows of the cluster's agent.
    pub(crate) fn agent_contact(&self, cluster: &str) -> AgentContact {
        self.agent_health
            .lock()
            .expect("health map poisoned")
            .get(cluster)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets what is known of a deleted cluster.
    pub(crate) fn forget_cluster(&self, cluster: &str) {
        self.nodes
            .write()
            .expect("node map poisoned")
            .retain(|(c, _), _| c != cluster);
        self.agent_health
            .lock()
            .expect("health map poisoned")
            .remove(cluster);
        self.test_tables
            .lock()
            .expect("test tables poisoned")
            .retain(|(c, _), _| c != cluster);
    }
}
