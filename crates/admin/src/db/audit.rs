//! The audit log: every change (accepted or refused) and every sign-in, with who,
//! when, from where, what, the outcome and the object before and after (secrets
//! never: what is recorded is what the API shows).

use serde::Serialize;
use sqlx::Row;

use super::{optional_text, text, Db};
use crate::error::ApiError;

/// One audit record.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct AuditEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub actor: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    /// `POST /gateway/apiserver/v1/…` or `login`.
    pub action: String,
    pub namespace: Option<String>,
    pub object: Option<String>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    /// The revision the change produced, when it made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// Which records a listing wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditFilter {
    /// Only this namespace's; `None`: all.
    pub namespace: Option<String>,
    pub actor: Option<String>,
    /// Older than this (unix ms), for paging.
    pub before_ms: Option<i64>,
    pub limit: i64,
}

impl Db {
    pub(crate) async fn record_audit(&self, entry: &AuditEntry) -> Result<(), ApiError> {
        let id = &crate::auth::generate_token()[..16];
        let sql = self.sql(
            "INSERT INTO audit_log (at_ms, id, actor, source, action, namespace, object, status, \
             before_body, after_body, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(entry.at_ms)
            .bind(id)
            .bind(entry.actor.as_deref())
            .bind(entry.source.as_deref())
            .bind(truncate(&entry.action, 255))
            .bind(entry.namespace.as_deref())
            .bind(entry.object.as_deref().map(|o| truncate(o, 255)))
            .bind(i64::from(entry.status))
            .bind(entry.before.as_ref().map(|v| v.to_string()))
            .bind(entry.after.as_ref().map(|v| v.to_string()))
            .bind(entry.revision.map(|r| r as i64))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records newest first.
    pub(crate) async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, ApiError> {
        let sql = self.sql(
            "SELECT at_ms, actor, source, action, namespace, object, status, before_body, \
             after_body, revision FROM audit_log \
             WHERE (? IS NULL OR namespace = ?) AND (? IS NULL OR actor = ?) AND at_ms < ? \
             ORDER BY at_ms DESC, id DESC LIMIT ?",
        );
        let rows = sqlx::query(&sql)
            .bind(filter.namespace.as_deref())
            .bind(filter.namespace.as_deref())
            .bind(filter.actor.as_deref())
            .bind(filter.actor.as_deref())
            .bind(filter.before_ms.unwrap_or(i64::MAX))
            .bind(filter.limit.clamp(1, 1000))
            .fetch_all(&self.pool)
            .await?;
        let json = |row: &sqlx::any::AnyRow, column: &str| -> Result<_, sqlx::Error> {
            Ok(optional_text(row, column)?.and_then(|b| serde_json::from_str(&b).ok()))
        };
        rows.iter()
            .map(|row| {
                let status: i64 = row.try_get("status")?;
                let revision: Option<i64> = row.try_get("revision")?;
                Ok(AuditEntry {
                    at_ms: row.try_get("at_ms")?,
                    actor: optional_text(row, "actor")?,
                    source: optional_text(row, "source")?,
                    action: text(row, "action")?,
                    namespace: optional_text(row, "namespace")?,
                    object: optional_text(row, "object")?,
                    status: status as u16,
                    before: json(row, "before_body")?,
                    after: json(row, "after_body")?,
                    revision: revision.map(|r| r as u64),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ApiError::from)
    }
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
