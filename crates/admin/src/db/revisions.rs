//! An instance's history: its revisions (author, time, message, the objects each
//! wrote) and its config as it was at any revision.
//!
//! `revision_objects` keeps every object a revision wrote, as stored (secrets sealed,
//! bound to the object's row like the live ones), so the state at revision N is, per
//! object, its row of the highest revision not above N. Nothing here deletes history.

use model::diff::Objects;
use model::resource::ResourceKind;
use model::snapshot::Revision;
use serde::Serialize;
use sqlx::Row;

use super::clusters::revision;
use super::{optional_text, text, Db};
use crate::error::ApiError;

/// Most revisions one listing answers.
pub(crate) const MAX_LISTED: i64 = 500;

/// One revision as the history lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct RevisionEntry {
    pub revision: Revision,
    /// `create`, `update`, `delete` (one object), `rollback`, `apply` (several) or
    /// `resync` (none: the revision moved past one another writer left in the store).
    pub op: String,
    pub author: Option<String>,
    pub message: Option<String>,
    /// Unix seconds.
    pub at: i64,
    pub objects: Vec<RevisionObject>,
}

/// An object a revision wrote.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct RevisionObject {
    pub kind: String,
    pub id: String,
    pub op: String,
}

impl Db {
    /// Revisions newest first: at most `limit` of them below `before` (all when
    /// `None`).
    pub(crate) async fn revisions(
        &self,
        cluster: &str,
        instance: &str,
        before: Option<Revision>,
        limit: i64,
    ) -> Result<Vec<RevisionEntry>, ApiError> {
        let below = before.map_or(i64::MAX, |r| r.0 as i64);
        let sql = self.sql(
            "SELECT revision, op, author, message, changed_at FROM changes \
             WHERE cluster = ? AND instance = ? AND revision < ? ORDER BY revision DESC LIMIT ?",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(below)
            .bind(limit.clamp(1, MAX_LISTED))
            .fetch_all(&self.pool)
            .await?;
        let mut entries = rows
            .iter()
            .map(|row| {
                Ok(RevisionEntry {
                    revision: revision(row.try_get("revision")?),
                    op: text(row, "op")?,
                    author: optional_text(row, "author")?,
                    message: optional_text(row, "message")?,
                    at: row.try_get("changed_at")?,
                    objects: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let (Some(newest), Some(oldest)) = (entries.first(), entries.last()) else {
            return Ok(entries);
        };
        let sql = self.sql(
            "SELECT revision, kind, id, op FROM revision_objects \
             WHERE cluster = ? AND instance = ? AND revision >= ? AND revision <= ? \
             ORDER BY revision, kind, id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(oldest.revision.0 as i64)
            .bind(newest.revision.0 as i64)
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            let at = revision(row.try_get("revision")?);
            if let Some(entry) = entries.iter_mut().find(|e| e.revision == at) {
                entry.objects.push(RevisionObject {
                    kind: text(row, "kind")?,
                    id: text(row, "id")?,
                    op: text(row, "op")?,
                });
            }
        }
        Ok(entries)
    }

    /// When `revision` of the instance was committed (unix milliseconds), if known.
    pub(crate) async fn committed_at_ms(
        &self,
        cluster: &str,
        instance: &str,
        revision: Revision,
    ) -> Result<Option<i64>, ApiError> {
        let sql = self.sql(
            "SELECT changed_at_ms FROM changes WHERE cluster = ? AND instance = ? AND revision = ?",
        );
        let row = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(revision.0 as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<i64>, _>("changed_at_ms")?,
            None => None,
        })
    }

    /// One revision, or 404.
    pub(crate) async fn revision_entry(
        &self,
        cluster: &str,
        instance: &str,
        at: Revision,
    ) -> Result<RevisionEntry, ApiError> {
        self.revisions(cluster, instance, Some(Revision(at.0 + 1)), 1)
            .await?
            .into_iter()
            .find(|e| e.revision == at)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "revision {at} does not exist in instance {instance:?}"
                ))
            })
    }

    /// The instance's objects as they were at revision `at` (secrets opened): each
    /// object's row of the highest revision not above `at`, deletes dropping it.
    pub(crate) async fn objects_at(
        &self,
        cluster: &str,
        instance: &str,
        at: Revision,
    ) -> Result<Objects, ApiError> {
        let sql = self.sql(
            "SELECT kind, id, op, body FROM revision_objects \
             WHERE cluster = ? AND instance = ? AND revision <= ? ORDER BY revision",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(at.0 as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut objects = Objects::new();
        for row in &rows {
            let kind: ResourceKind = text(row, "kind")?
                .parse()
                .map_err(|e: model::resource::UnknownKind| ApiError::Internal(e.into()))?;
            let id = text(row, "id")?;
            match optional_text(row, "body")? {
                None => {
                    objects.remove(&(kind, id));
                }
                Some(_) => {
                    let resource = self.resource_from_row(cluster, instance, kind, row)?;
                    objects.insert((kind, id), resource);
                }
            }
        }
        Ok(objects)
    }

    /// The instance's objects now (secrets opened) and its revision; `None` when the
    /// instance does not exist.
    pub(crate) async fn objects_now(
        &self,
        cluster: &str,
        instance: &str,
    ) -> Result<Option<(Objects, Revision)>, ApiError> {
        Ok(self
            .snapshot(cluster, instance)
            .await?
            .map(|s| (model::diff::objects(s.resources()), s.revision)))
    }
}
