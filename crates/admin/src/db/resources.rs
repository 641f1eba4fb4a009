//! An instance's resources, its revision and its change log.
//!
//! [`Db::commit`] is the one write: a transaction that bumps the instance's revision,
//! checks what involves other rows (duplicate ids, a route's upstream, routes using an
//! upstream), writes the resource row and appends the change-log row. A refused change
//! rolls back, revision bump included, so nothing of it is stored.
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
const MAX_STORED_JSON: usize = 65_535;

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

/// One object a revision wrote, as the commit did it.
struct Written {
    op: &'static str,
    created: bool,
    stored: Change,
    /// The object as the change log shows it (no secret, no hash); `None` for deletes.
    logged: Option<String>,
    /// The object as stored (secrets sealed); `None` for deletes.
    body: Option<String>,
    /// The object before, as the API shows it; `None` when it did not exist.
    previous: Option<serde_json::Value>,
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

        let mut written = Vec::with_capacity(changes.len());
        for change in changes {
            let one = self
                .write_one(&mut tx, cluster, instance, change, new_revision, now)
                .await
                .map_err(|e| match batch {
                    Batch::Single => e,
                    _ => named_by_object(e, change),
                })?;
            let sql = self.sql(
                "INSERT INTO revision_objects (cluster, instance, revision, kind, id, op, body) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(cluster)
                .bind(instance)
                .bind(new_revision)
                .bind(change.kind().as_str())
                .bind(change.id())
                .bind(one.op)
                .bind(one.body.as_deref())
                .execute(&mut *tx)
                .await?;
            written.push(one);
        }

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

    /// One change of a revision: the checks that involve other rows (duplicate ids,
    /// references, objects in use, consumers' secrets and identities), then the rows.
    async fn write_one(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        change: &Change,
        new_revision: i64,
        now: i64,
    ) -> Result<Written, ApiError> {
        let kind = change.kind();
        let id = change.id();
        let previous = self
            .stored_resource(tx, cluster, instance, kind, id)
            .await?
            .map(|r| r.redacted().to_json());
        let exists = previous.is_some();
        let (op, created) = match change {
            Change::Create(_) if exists => {
                return Err(ApiError::AlreadyExists(format!(
                    "{} {id:?} already exists in instance {instance:?}",
                    kind.singular()
                )));
            }
            Change::Create(_) => ("create", true),
            Change::Upsert(_) => ("update", !exists),
            Change::Delete { .. } if !exists => {
                return Err(ApiError::NotFound(format!(
                    "{} {id:?} does not exist in instance {instance:?}",
                    kind.singular()
                )));
            }
            Change::Delete { .. } => ("delete", false),
        };
        let (resource, stored) = match change {
            Change::Create(resource) | Change::Upsert(resource) => {
                self.check_references_exist(tx, cluster, instance, resource)
                    .await?;
                match resource {
                    Resource::Consumer(consumer) => {
                        let kept = self
                            .consumer_secrets(tx, cluster, instance, consumer, exists)
                            .await?;
                        let stored = match change {
                            Change::Create(_) => Change::Create(kept.clone()),
                            _ => Change::Upsert(kept.clone()),
                        };
                        (kept, stored)
                    }
                    other => (other.clone(), change.clone()),
                }
            }
            Change::Delete { .. } => {
                self.check_unreferenced(tx, cluster, instance, kind, id)
                    .await?;
                for table in ["resource_refs", "resources"] {
                    self.delete_rows(tx, table, cluster, instance, kind, id)
                        .await?;
                }
                return Ok(Written {
                    op,
                    created,
                    stored: change.clone(),
                    logged: None,
                    body: None,
                    previous,
                });
            }
        };
        let body = self.stored_body(cluster, instance, &resource)?;
        if body.len() > MAX_STORED_JSON {
            return Err(ApiError::PayloadTooLarge(format!(
                "a {} may take at most {MAX_STORED_JSON} bytes of JSON as stored",
                kind.singular()
            )));
        }
        let sql = if exists {
            self.sql(
                "UPDATE resources SET body = ?, revision = ?, updated_at = ? \
                 WHERE cluster = ? AND instance = ? AND kind = ? AND id = ?",
            )
        } else {
            self.sql(
                "INSERT INTO resources (body, revision, updated_at, cluster, instance, kind, id) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
        };
        sqlx::query(&sql)
            .bind(&body)
            .bind(new_revision)
            .bind(now)
            .bind(cluster)
            .bind(instance)
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut **tx)
            .await?;
        self.write_references(tx, cluster, instance, &resource)
            .await?;
        Ok(Written {
            op,
            created,
            stored,
            // The change log keeps what an operator may see: never a private key,
            // a credential's secret or its hash.
            logged: Some(resource.redacted().to_json().to_string()),
            body: Some(body),
            previous,
        })
    }

    /// The resource's JSON as stored: a certificate's key and a consumer's JWT and HMAC
    /// secrets sealed, anything else as is.
    fn stored_body(
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

    async fn exists(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = self.sql(
            "SELECT id FROM resources WHERE cluster = ? AND instance = ? AND kind = ? AND id = ?",
        );
        Ok(sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(kind.as_str())
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .is_some())
    }

    /// Everything `resource` names (a route's upstream and service …) must exist in
    /// the same instance; every missing one is listed.
    async fn check_references_exist(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        resource: &Resource,
    ) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        for (field, kind, id) in resource.references() {
            if !self.exists(tx, cluster, instance, kind, &id).await? {
                errors.push(model::validate::FieldError {
                    field,
                    message: format!(
                        "{} {id:?} does not exist in instance {instance:?}",
                        kind.singular()
                    ),
                });
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        Err(ApiError::Invalid {
            what: resource.kind().singular().to_owned(),
            errors: model::validate::ValidationErrors(errors),
        })
    }

    /// Records what `resource` names, replacing what it named before.
    async fn write_references(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        resource: &Resource,
    ) -> Result<(), sqlx::Error> {
        self.delete_rows(
            tx,
            "resource_refs",
            cluster,
            instance,
            resource.kind(),
            resource.id(),
        )
        .await?;
        let kind = resource.kind().as_str();
        let sql = self.sql(
            "INSERT INTO resource_refs (cluster, instance, kind, id, field, ref_kind, ref_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        for (field, ref_kind, ref_id) in resource.references() {
            sqlx::query(&sql)
                .bind(cluster)
                .bind(instance)
                .bind(kind)
                .bind(resource.id())
                .bind(field)
                .bind(ref_kind.as_str())
                .bind(ref_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Deletes a resource's rows of `table` (`resources` or `resource_refs`).
    async fn delete_rows(
        &self,
        tx: &mut Transaction<'static, Any>,
        table: &str,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<(), sqlx::Error> {
        let sql = self.sql(if table == "resource_refs" {
            "DELETE FROM resource_refs WHERE cluster = ? AND instance = ? AND kind = ? AND id = ?"
        } else {
            "DELETE FROM resources WHERE cluster = ? AND instance = ? AND kind = ? AND id = ?"
        });
        sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A resource others name cannot be deleted; the answer names them.
    async fn check_unreferenced(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<(), ApiError> {
        let sql = self.sql(
            "SELECT kind, id, field FROM resource_refs \
             WHERE cluster = ? AND instance = ? AND ref_kind = ? AND ref_id = ? ORDER BY kind, id",
        );
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .bind(instance)
            .bind(kind.as_str())
            .bind(id)
            .fetch_all(&mut **tx)
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut users: Vec<(String, Vec<String>)> = Vec::new();
        let mut details = Vec::new();
        for row in &rows {
            let (by_kind, by_id, field) =
                (text(row, "kind")?, text(row, "id")?, text(row, "field")?);
            details.push(model::validate::FieldError {
                field: format!("{by_kind}[{by_id}].{field}"),
                message: format!("names {} {id:?}", kind.singular()),
            });
            match users.last_mut() {
                Some((k, ids)) if *k == by_kind => ids.push(by_id),
                _ => users.push((by_kind, vec![by_id])),
            }
        }
        let named: Vec<String> = users
            .iter()
            .map(|(k, ids)| format!("{k} {}", ids.join(", ")))
            .collect();
        Err(ApiError::InUse {
            message: format!(
                "{} {id:?} is used by {}; change or delete them first",
                kind.singular(),
                named.join("; ")
            ),
            details,
        })
    }

    /// A consumer as it will be stored: credentials sent back without their secret
    /// keep the stored one (same id and type), every credential has its secret, and
    /// none identifies another consumer of the instance (a key, a Basic username).
    async fn consumer_secrets(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        consumer: &model::consumer::Consumer,
        exists: bool,
    ) -> Result<Resource, ApiError> {
        let mut consumer = consumer.clone();
        let others = self
            .resources_in(tx, cluster, instance, ResourceKind::Consumers)
            .await?;
        if exists {
            if let Some(Resource::Consumer(stored)) = others.iter().find(|r| r.id() == consumer.id)
            {
                consumer.keep_secrets_from(stored);
            }
        }
        let mut errors = consumer.missing_secrets();
        let mine = consumer.identities();
        for other in &others {
            let Resource::Consumer(other) = other else {
                continue;
            };
            if other.id == consumer.id {
                continue;
            }
            let theirs = other.identities();
            for (field, identity) in &mine {
                if theirs.iter().any(|(_, t)| t == identity) {
                    errors.push(model::validate::FieldError {
                        field: field.clone(),
                        message: format!("is already a credential of consumer {:?}", other.id),
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Invalid {
                what: "consumer".to_owned(),
                errors: model::validate::ValidationErrors(errors),
            });
        }
        Ok(Resource::Consumer(consumer))
    }

    /// The instance's resources of `kind`, read in the transaction.
    async fn resources_in(
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
