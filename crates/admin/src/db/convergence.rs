//! When each gateway node first reported each revision (`node_revisions`), and what the
//! convergence history is computed from: the revisions with their commit times, the
//! nodes' lifetimes (`gateway_nodes`) and those first reports.
//!
//! Rows are written only when a node's applied revision moved since the poll before,
//! so an idle instance costs no query. A revision a node jumped over gets no row: it
//! is reached by the node's first report at or above it, which the reader works out
//! (`crate::convergence`). Only the last [`KEPT_REVISIONS`] revisions of an instance
//! keep their rows.

use model::cluster::NodeHeartbeat;
use model::snapshot::Revision;
use sqlx::Row;

use super::clusters::revision;
use super::{text, Db};
use crate::error::ApiError;

/// How many revisions of an instance (counted back from the highest a node reported)
/// keep their nodes' reports; older rows are deleted when new ones are written.
pub(crate) const KEPT_REVISIONS: u64 = 1000;

/// A revision of the instance and when it was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RevisionCommit {
    pub revision: Revision,
    /// Unix milliseconds; `None` for revisions committed before the admin kept them.
    pub committed_at_ms: Option<i64>,
}

/// A gateway node's life as the admin saw it (admin clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeSpan {
    pub node_id: String,
    /// When the admin first saw it.
    pub first_seen_ms: i64,
    /// When its agent stopped reporting it; `None` while it is online.
    pub gone_at_ms: Option<i64>,
}

/// A node's first report of a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeReport {
    pub node_id: String,
    pub revision: Revision,
    /// When the node swapped that revision in, by its clock (0: it did not say).
    pub applied_at_ms: i64,
    /// When the admin first saw it reported, by the admin's clock.
    pub reported_at_ms: i64,
}

/// What the convergence of an instance's last revisions is computed from.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConvergenceInputs {
    /// The last revisions, newest first.
    pub revisions: Vec<RevisionCommit>,
    pub nodes: Vec<NodeSpan>,
    /// Every kept report at or above the oldest of `revisions`, in the order the admin
    /// saw them.
    pub reports: Vec<NodeReport>,
}

impl Db {
    /// Records that each of `moved` (nodes whose applied revision changed since the
    /// poll before, or that this admin sees for the first time) now reports its
    /// revision, unless that report is recorded already; then forgets reports older
    /// than the last [`KEPT_REVISIONS`] revisions.
    pub(crate) async fn record_node_revisions(
        &self,
        cluster: &str,
        instance: &str,
        moved: &[&NodeHeartbeat],
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let Some(highest) = moved.iter().map(|n| n.applied_revision.0).max() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        // A write first (SQLite takes its write lock up front): the pruning.
        let sql = self
            .sql("DELETE FROM node_revisions WHERE cluster = ? AND instance = ? AND revision <= ?");
        sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(highest.saturating_sub(KEPT_REVISIONS) as i64)
            .execute(&mut *tx)
            .await?;
        for node in moved {
            let sql = self.sql(
                "SELECT revision FROM node_revisions \
                 WHERE cluster = ? AND instance = ? AND node_id = ? AND revision = ?",
            );
            let known = sqlx::query(&sql)
                .bind(cluster)
                .bind(instance)
                .bind(&node.node_id)
                .bind(node.applied_revision.0 as i64)
                .fetch_optional(&mut *tx)
                .await?;
            if known.is_some() {
                continue;
            }
            let sql = self.sql(
                "INSERT INTO node_revisions (cluster, instance, node_id, revision, \
                 applied_at_ms, reported_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(cluster)
                .bind(instance)
                .bind(&node.node_id)
                .bind(node.applied_revision.0 as i64)
                .bind(node.applied_at_ms.max(0))
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The instance's last `last` revisions with their commit times, its nodes'
    /// lifetimes, and the reports the convergence of those revisions depends on.
    pub(crate) async fn convergence_inputs(
        &self,
        cluster: &str,
        instance: &str,
        last: u32,
    ) -> Result<ConvergenceInputs, ApiError> {
        let sql = self.sql(
            "SELECT revision, changed_at_ms FROM changes WHERE cluster = ? AND instance = ? \
             ORDER BY revision DESC LIMIT ?",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(i64::from(last))
            .fetch_all(&self.pool)
            .await?;
        let revisions = rows
            .iter()
            .map(|row| {
                Ok(RevisionCommit {
                    revision: revision(row.try_get("revision")?),
                    committed_at_ms: row.try_get("changed_at_ms")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let Some(oldest) = revisions.last().map(|r| r.revision) else {
            return Ok(ConvergenceInputs::default());
        };
        let sql = self.sql(
            "SELECT node_id, first_seen_ms, gone_at_ms FROM gateway_nodes \
             WHERE cluster = ? AND instance = ? ORDER BY node_id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        let nodes = rows
            .iter()
            .map(|row| {
                Ok(NodeSpan {
                    node_id: text(row, "node_id")?,
                    first_seen_ms: row.try_get("first_seen_ms")?,
                    gone_at_ms: row.try_get("gone_at_ms")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let sql = self.sql(
            "SELECT node_id, revision, applied_at_ms, reported_at_ms FROM node_revisions \
             WHERE cluster = ? AND instance = ? AND revision >= ? \
             ORDER BY reported_at_ms, revision, node_id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(oldest.0 as i64)
            .fetch_all(&self.pool)
            .await?;
        let reports = rows
            .iter()
            .map(|row| {
                Ok(NodeReport {
                    node_id: text(row, "node_id")?,
                    revision: revision(row.try_get("revision")?),
                    applied_at_ms: row.try_get("applied_at_ms")?,
                    reported_at_ms: row.try_get("reported_at_ms")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(ConvergenceInputs {
            revisions,
            nodes,
            reports,
        })
    }
}
