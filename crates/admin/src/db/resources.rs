//! An instance's resources, its revision and its change log.
//!
//! [`Db::commit_many`] is the one write: a transaction that bumps the instance's
//! revision, reads the rows its changes touch once (`working`), checks each change
//! against them (duplicate ids, a route's upstream, routes using an upstream …),
//! writes the rows in a few statements and appends the change-log row. A refused
//! change rolls back, revision bump included, so nothing of it is stored.
//!
//! A certificate's private key is sealed with the data key before it reaches a row
//! (`secrets`) and opened when read back; a key written in clear by an earlier version
//! is read as it is until the start-up pass (`sealing`) seals it.

use model::resource::{Resource, ResourceKind};
use model::snapshot::{Revision, Snapshot};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::clusters::revision;
use super::{
    certificate_context, consumer_secret_context, optional_text, secret_error, text, token_context,
    Db,
};
use crate::error::ApiError;
use crate::secrets::Keyring;

/// MySQL's TEXT holds 65,535 bytes; a stored resource (a sealed key is longer than the
/// key) must fit on every database.
pub(super) const MAX_STORED_JSON: usize = 65_535;

/// One change to one resource, as the API accepted it (parsed and validated).
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Create(Resource),
    /// Replace, or create when absent (PUT).
    Upsert(Resource),
    Delete {
        kind: ResourceKind,
        id: String,
    },
}

impl Change {
    pub(crate) fn kind(&self) -> ResourceKind {
        match self {
            Change::Create(r) | Change::Upsert(r) => r.kind(),
            Change::Delete { kind, .. } => *kind,
        }
    }

    pub(crate) fn id(&self) -> &str {
        match self {
            Change::Create(r) | Change::Upsert(r) => r.id(),
            Change::Delete { id, .. } => id,
        }
    }
}

/// Who made a revision and why: its author and the operator's message.
#[derive(Debug, Clone, Default)]
pub(crate) struct RevisionNote {
    pub author: String,
    pub message: Option<String>,
    /// Check everything, store nothing (`?dry_run=true`).
    pub dry_run: bool,
    /// The revision the writer saw (`?expected_revision=N`): the write builds on it or
    /// is refused (409 `revision_conflict`), checked inside the write's transaction.
    pub expected: Option<Revision>,
}

/// What a revision of several objects is (a single change is named by its own op).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batch {
    /// One change through the resource endpoints.
    Single,
    /// A rollback to an earlier revision.
    Rollback,
    /// A declarative apply of a whole config.
    Apply,
}

impl Batch {
    fn op(self) -> Option<&'static str> {
        match self {
            Batch::Single => None,
            Batch::Rollback => Some("rollback"),
            Batch::Apply => Some("apply"),
        }
    }
}

/// What a committed change produced.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    /// The instance's new revision (for a dry run: the one it would have been).
    pub revision: Revision,
    /// Where the cluster's agent listens, read in the same transaction.
    pub agent_address: String,
    /// The cluster's own agent token, opened; `None` for a cluster registered without
    /// one (the admin's shared token then applies).
    pub agent_token: Option<String>,
    /// Whether that address has proven it holds the token.
    pub agent_verified: bool,
    /// For an upsert of one resource: whether it did not exist before.
    pub created: bool,
    /// The changes as stored, what the agent is sent: a consumer's credentials sent
    /// back without their secrets carry the stored hashes again.
    pub stored: Vec<Change>,
    /// Each object before the change, as the API shows it (`None`: it did not exist).
    pub previous: Vec<Option<serde_json::Value>>,
}

/// One row of the change log as the API shows it (certificate keys never stored there).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ChangeEntry {
    pub revision: Revision,
    pub op: String,
    pub kind: Option<String>,
    pub id: Option<String>,
    pub body: Option<serde_json::Value>,
    pub at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A refusal of one object of a revision of several, its fields named by the object
/// (`routes[r1].upstream_id`) as the request had no body of that object alone.
fn named_by_object(e: ApiError, change: &Change) -> ApiError {
    match e {
        ApiError::Invalid { what, errors } => ApiError::Invalid {
            what,
            errors: model::validate::ValidationErrors(
                errors
                    .0
                    .into_iter()
                    .map(|f| model::validate::FieldError {
                        field: format!("{}[{}].{}", change.kind().as_str(), change.id(), f.field),
                        message: f.message,
                    })
                    .collect(),
            ),
        },
        other => other,
    }
}

impl Db {
    /// Applies one change in one transaction and returns the revision it produced (a
    /// dry run: would produce, nothing kept). The instance must be in `namespace` (checked under the same lock as the
    /// write, so a concurrent move cannot slip between).
    pub(crate) async fn commit(
        &self,
        namespace: &str,
        cluster: &str,
        instance: &str,
        change: &Change,
        note: &RevisionNote,
        now: i64,
    ) -> Result<Committed, ApiError> {
        self.commit_many(
            namespace,
            cluster,
            instance,
            std::slice::from_ref(change),
            Batch::Single,
            note,
            note.dry_run,
            now,
        )
        .await
    }

    /// Applies `changes` in order as one revision, all or nothing: every check of a
    /// single change holds for each, against the state the ones before it left. With
    /// `dry_run`, everything is checked and nothing is kept (the transaction rolls
    /// back). An object may appear once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_many(
        &self,
        namespace: &str,
        cluster: &str,
        instance: &str,
        changes: &[Change],
        batch: Batch,
        note: &RevisionNote,
        dry_run: bool,
        now: i64,
    ) -> Result<Committed, ApiError> {
        let mut seen = std::collections::BTreeSet::new();
        for change in changes {
            if !seen.insert((change.kind(), change.id())) {
                return Err(ApiError::BadRequest {
                    message: format!(
                        "{} {:?} appears twice in one revision",
                        change.kind().singular(),
                        change.id()
                    ),
                    details: Vec::new(),
                });
            }
        }
        let mut tx = self.pool.begin().await?;
        // The bump comes first: it is the write that locks the instance row (and SQLite's
        // database), so every later check in this transaction sees a settled state.
        let sql = self.sql(
            "UPDATE instances SET revision = revision + 1 \
             WHERE cluster = ? AND name = ? AND namespace = ?",
        );
        let done = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(namespace)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            drop(tx);
            return Err(self
                .require_instance_in(namespace, cluster, instance)
                .await
                .err()
                .unwrap_or_else(|| {
                    ApiError::NotFound(format!("instance {instance:?} does not exist"))
                }));
        }
        let sql = self.sql(
            "SELECT i.revision AS revision, c.agent_address AS agent_address, c.agent_token AS agent_token, \
             c.verified_address AS verified_address \
             FROM instances i JOIN clusters c ON c.name = i.cluster \
             WHERE i.cluster = ? AND i.name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .fetch_one(&mut *tx)
            .await?;
        let new_revision: i64 = row.try_get("revision")?;
        // Checked after the bump, which holds the instance row: no other write can
        // come between this check and this revision.
        let current = revision(new_revision - 1);
        if let Some(expected) = note.expected.filter(|e| *e != current) {
            tx.rollback().await?;
            return Err(ApiError::RevisionConflict {
                instance: instance.to_owned(),
                current,
                expected,
                field: "expected_revision".to_owned(),
            });
        }
        let agent_address = text(&row, "agent_address")?;
        let agent_token = self.open_token(cluster, optional_text(&row, "agent_token")?)?;
        let agent_verified =
            optional_text(&row, "verified_address")?.as_deref() == Some(agent_address.as_str());

        let mut working = self
            .working_set(&mut tx, cluster, instance, changes)
            .await?;
        let mut written = Vec::with_capacity(changes.len());
        for change in changes {
            let one = self
                .check_change(&mut working, cluster, instance, change)
                .map_err(|e| match batch {
                    Batch::Single => e,
                    _ => named_by_object(e, change),
                })?;
            written.push(one);
        }
        self.write_working(
            &mut tx,
            cluster,
            instance,
            &working,
            &written,
            new_revision,
            now,
        )
        .await?;

        // The change log: one row per revision, naming its object when it has one.
        let (kind, id, op, logged) = match (batch.op(), written.as_slice(), changes) {
            (None, [one], [change]) => (
                Some(change.kind().as_str()),
                Some(change.id()),
                one.op,
                one.logged.clone(),
            ),
            (op, _, _) => (None, None, op.unwrap_or("batch"), None),
        };
        let sql = self.sql(
            "INSERT INTO changes (cluster, instance, revision, kind, resource_id, op, body, changed_at, author, message, changed_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(new_revision)
            .bind(kind)
            .bind(id)
            .bind(op)
            .bind(logged)
            .bind(now)
            .bind(&note.author)
            .bind(note.message.as_deref())
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(Committed {
            revision: revision(new_revision),
            agent_address,
            agent_token,
            agent_verified,
            created: written.first().is_some_and(|w| w.created),
            previous: written.iter().map(|w| w.previous.clone()).collect(),
            stored: written.into_iter().map(|w| w.stored).collect(),
        })
    }

    /// The resource's JSON as stored: a certificate's key and a consumer's JWT and HMAC
    /// secrets sealed, anything else as is.
    pub(super) fn stored_body(
        &self,
        cluster: &str,
        instance: &str,
        resource: &Resource,
    ) -> Result<String, ApiError> {
        if let Resource::Consumer(consumer) = resource {
            let mut stored = consumer.clone();
            for (i, credential) in stored.credentials.iter_mut().enumerate() {
                let id = credential.id().to_owned();
                let Some(secret) = credential.sealable_secret() else {
                    continue;
                };
                if Keyring::is_sealed(secret) {
                    continue;
                }
                let context = consumer_secret_context(cluster, instance, &consumer.id, &id);
                *secret = self.keyring.seal(&context, secret).map_err(|e| {
                    secret_error(
                        &format!("credentials[{i}].secret"),
                        "sealing a consumer's secret",
                        e,
                    )
                })?;
            }
            return Ok(Resource::Consumer(stored).to_json().to_string());
        }
        let Resource::Certificate(certificate) = resource else {
            return Ok(resource.to_json().to_string());
        };
        if certificate.key.is_empty() {
            return Ok(resource.to_json().to_string());
        }
        let context = certificate_context(cluster, instance, &certificate.id);
        let sealed = self
            .keyring
            .seal(&context, &certificate.key)
            .map_err(|e| secret_error("key", "sealing a certificate key", e))?;
        let mut stored = certificate.clone();
        stored.key = sealed;
        Ok(Resource::Certificate(stored).to_json().to_string())
    }

    /// A stored resource row, a certificate's key opened.
    pub(super) fn resource_from_row(
        &self,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
        row: &AnyRow,
    ) -> Result<Resource, ApiError> {
        let body = text(row, "body")?;
        let resource = kind.parse(body.as_bytes()).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "a stored {} does not parse: {e}",
                kind.singular()
            ))
        })?;
        if let Resource::Consumer(mut consumer) = resource {
            for credential in &mut consumer.credentials {
                let id = credential.id().to_owned();
                let Some(secret) = credential.sealable_secret() else {
                    continue;
                };
                if Keyring::is_sealed(secret) {
                    let context = consumer_secret_context(cluster, instance, &consumer.id, &id);
                    *secret = self.keyring.open(&context, secret).map_err(|e| {
                        ApiError::Internal(anyhow::anyhow!("the secret of {context}: {e}"))
                    })?;
                }
            }
            return Ok(Resource::Consumer(consumer));
        }
        let Resource::Certificate(mut certificate) = resource else {
            return Ok(resource);
        };
        if Keyring::is_sealed(&certificate.key) {
            let context = certificate_context(cluster, instance, &certificate.id);
            certificate.key = self.keyring.open(&context, &certificate.key).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("the key of certificate {context}: {e}"))
            })?;
        }
        Ok(Resource::Certificate(certificate))
    }

    /// Opens a cluster's stored agent token.
    pub(crate) fn open_token(
        &self,
        cluster: &str,
        stored: Option<String>,
    ) -> Result<Option<String>, ApiError> {
        stored
            .map(|stored| {
                self.keyring
                    .open(&token_context(cluster), &stored)
                    .map_err(|e| {
                        secret_error(
                            "agent_token",
                            &format!("the agent token of cluster {cluster:?}"),
                            e,
                        )
                    })
            })
            .transpose()
    }

    /// The instance's resources of `kind`, read in the transaction.
    pub(super) async fn resources_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
    ) -> Result<Vec<Resource>, ApiError> {
        let sql = self.sql(
            "SELECT body FROM resources WHERE cluster = ? AND instance = ? AND kind = ? ORDER BY id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(kind.as_str())
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|row| self.resource_from_row(cluster, instance, kind, row))
            .collect()
    }

    /// The instance's resources of `kind` (sorted by id) and its revision; 404 when the
    /// cluster or instance is unknown.
    pub(crate) async fn resources(
        &self,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
    ) -> Result<(Vec<Resource>, Revision), ApiError> {
        let found = self.require_instance(cluster, instance).await?;
        let sql = self.sql(
            "SELECT body FROM resources WHERE cluster = ? AND instance = ? AND kind = ? ORDER BY id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(kind.as_str())
            .fetch_all(&self.pool)
            .await?;
        let items = rows
            .iter()
            .map(|row| self.resource_from_row(cluster, instance, kind, row))
            .collect::<Result<_, _>>()?;
        Ok((items, found.revision))
    }

    pub(crate) async fn resource(
        &self,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Resource, ApiError> {
        self.require_instance(cluster, instance).await?;
        let mut conn = self.pool.acquire().await?;
        self.stored_resource(&mut conn, cluster, instance, kind, id)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "{} {id:?} does not exist in instance {instance:?}",
                    kind.singular()
                ))
            })
    }

    /// One resource as stored, secrets opened; `None` when absent.
    async fn stored_resource(
        &self,
        conn: &mut sqlx::AnyConnection,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Option<Resource>, ApiError> {
        let sql = self.sql(
            "SELECT body FROM resources WHERE cluster = ? AND instance = ? AND kind = ? AND id = ?",
        );
        let row = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(kind.as_str())
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|row| self.resource_from_row(cluster, instance, kind, &row))
            .transpose()
    }

    /// Everything the instance serves at its current revision, read in one transaction.
    pub(crate) async fn snapshot(
        &self,
        cluster: &str,
        instance: &str,
    ) -> Result<Option<Snapshot>, ApiError> {
        let mut tx = self.pool.begin().await?;
        let sql = self.sql("SELECT revision FROM instances WHERE cluster = ? AND name = ?");
        let Some(row) = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let mut snapshot = Snapshot {
            revision: revision(row.try_get("revision")?),
            ..Snapshot::default()
        };
        let sql = self.sql(
            "SELECT kind, body FROM resources WHERE cluster = ? AND instance = ? ORDER BY kind, id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let kind: ResourceKind = text(row, "kind")?
                .parse()
                .map_err(|e: model::resource::UnknownKind| ApiError::Internal(e.into()))?;
            snapshot.push(self.resource_from_row(cluster, instance, kind, row)?);
        }
        tx.commit().await?;
        Ok(Some(snapshot))
    }

    /// The instance's latest changes, newest first.
    pub(crate) async fn changes(
        &self,
        cluster: &str,
        instance: &str,
    ) -> Result<Vec<ChangeEntry>, ApiError> {
        self.require_instance(cluster, instance).await?;
        let sql = self.sql(
            "SELECT revision, op, kind, resource_id, body, changed_at, author, message FROM changes \
             WHERE cluster = ? AND instance = ? ORDER BY revision DESC LIMIT 1000",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let body = optional_text(row, "body")?
                    .map(|b| serde_json::from_str(&b))
                    .transpose()
                    .map_err(|e| ApiError::Internal(e.into()))?;
                Ok(ChangeEntry {
                    revision: revision(row.try_get("revision")?),
                    op: text(row, "op")?,
                    kind: optional_text(row, "kind")?,
                    id: optional_text(row, "resource_id")?,
                    body,
                    at: row.try_get("changed_at")?,
                    author: optional_text(row, "author")?,
                    message: optional_text(row, "message")?,
                })
            })
            .collect()
    }
}
