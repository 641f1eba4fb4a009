//! Gateway nodes over time: each node an agent reports is recorded when it first
//! appears; when its agent stops reporting it (its heartbeat lease ran out: the node
//! stopped or lost its store), it is marked gone with the time, and it comes back if
//! reported again. Rows change only on those transitions, not on every poll; gone
//! nodes are kept for [`GONE_KEPT_MS`].

use std::collections::HashMap;

use model::cluster::NodeHeartbeat;
use sqlx::Row;

use super::{text, Db};
use crate::error::ApiError;

/// How long a gone node stays listed.
const GONE_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// A node no longer reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct GoneNode {
    pub node_id: String,
    pub address: String,
    /// When it first appeared (unix milliseconds).
    pub first_seen_ms: i64,
    /// Its last heartbeat the admin saw (unix milliseconds).
    pub last_seen_ms: i64,
    /// When its agent stopped reporting it.
    pub gone_at_ms: i64,
}

impl Db {
    /// Records one poll's nodes of `instance`: new ones appear, missing ones are marked
    /// gone (their last heartbeat from `previous`, the nodes of the poll before), ones
    /// reported again come back.
    pub(crate) async fn record_nodes(
        &self,
        cluster: &str,
        instance: &str,
        reported: &[NodeHeartbeat],
        previous: &[NodeHeartbeat],
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let sql = self.sql(
            "SELECT node_id, gone_at_ms FROM gateway_nodes WHERE cluster = ? AND instance = ?",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        let mut known: HashMap<String, Option<i64>> = HashMap::new();
        for row in &rows {
            known.insert(text(row, "node_id")?, row.try_get("gone_at_ms")?);
        }
        let mut writes = Vec::new();
        for node in reported.iter().filter(|n| n.node_id.len() <= 128) {
            let seen = node.updated_at_ms.min(now_ms);
            match known.get(&node.node_id) {
                None => writes.push(NodeWrite::Appeared(node, seen)),
                Some(Some(_)) => writes.push(NodeWrite::Back(node, seen)),
                Some(None) => {}
            }
        }
        for (node_id, gone) in &known {
            if gone.is_none() && !reported.iter().any(|n| &n.node_id == node_id) {
                let last = previous
                    .iter()
                    .find(|n| &n.node_id == node_id)
                    .map_or(now_ms, |n| n.updated_at_ms.min(now_ms));
                writes.push(NodeWrite::Gone(node_id, last));
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for write in writes {
            match write {
                NodeWrite::Appeared(node, seen) => {
                    let sql = self.sql(
                        "INSERT INTO gateway_nodes (cluster, instance, node_id, address, \
                         first_seen_ms, last_seen_ms, gone_at_ms) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    );
                    sqlx::query(&sql)
                        .bind(cluster)
                        .bind(instance)
                        .bind(&node.node_id)
                        .bind(truncated(&node.address))
                        .bind(now_ms)
                        .bind(seen)
                        .execute(&mut *tx)
                        .await?;
                }
                NodeWrite::Back(node, seen) => {
                    let sql = self.sql(
                        "UPDATE gateway_nodes SET gone_at_ms = NULL, address = ?, last_seen_ms = ? \
                         WHERE cluster = ? AND instance = ? AND node_id = ?",
                    );
                    sqlx::query(&sql)
                        .bind(truncated(&node.address))
                        .bind(seen)
                        .bind(cluster)
                        .bind(instance)
                        .bind(&node.node_id)
                        .execute(&mut *tx)
                        .await?;
                }
                NodeWrite::Gone(node_id, last) => {
                    let sql = self.sql(
                        "UPDATE gateway_nodes SET gone_at_ms = ?, last_seen_ms = ? \
                         WHERE cluster = ? AND instance = ? AND node_id = ?",
                    );
                    sqlx::query(&sql)
                        .bind(now_ms)
                        .bind(last)
                        .bind(cluster)
                        .bind(instance)
                        .bind(node_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let sql =
            self.sql("DELETE FROM gateway_nodes WHERE gone_at_ms IS NOT NULL AND gone_at_ms < ?");
        let forgotten = sqlx::query(&sql)
            .bind(now_ms - GONE_KEPT_MS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        if forgotten > 0 {
            // Never silently: the only rows that leave are gone nodes past their time.
            tracing::info!(
                forgotten,
                "gateway nodes gone for more than 7 days no longer listed"
            );
        }
        Ok(())
    }

    /// The instance's nodes no longer reported, most recently gone first.
    pub(crate) async fn gone_nodes(
        &self,
        cluster: &str,
        instance: &str,
    ) -> Result<Vec<GoneNode>, ApiError> {
        let sql = self.sql(
            "SELECT node_id, address, first_seen_ms, last_seen_ms, gone_at_ms FROM gateway_nodes \
             WHERE cluster = ? AND instance = ? AND gone_at_ms IS NOT NULL \
             ORDER BY gone_at_ms DESC, node_id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(GoneNode {
                    node_id: text(row, "node_id")?,
                    address: text(row, "address")?,
                    first_seen_ms: row.try_get("first_seen_ms")?,
                    last_seen_ms: row.try_get("last_seen_ms")?,
                    gone_at_ms: row.try_get("gone_at_ms")?,
                })
            })
            .collect()
    }
}

/// What one poll changes of a node's row.
enum NodeWrite<'a> {
    /// First reported, with its heartbeat's time.
    Appeared(&'a NodeHeartbeat, i64),
    /// Reported again after it was gone.
    Back(&'a NodeHeartbeat, i64),
    /// No longer reported; its last heartbeat's time.
    Gone(&'a str, i64),
}

/// An address as the column holds it.
fn truncated(address: &str) -> String {
    address.chars().take(255).collect()
}
