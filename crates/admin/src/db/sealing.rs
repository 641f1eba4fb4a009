//! The start-up pass over every stored secret (certificate keys, agent tokens,
//! clusters' kubeconfigs, consumers' JWT secrets): each must open with the keys given
//! (else the admin refuses to start, naming the row and the key id it needs), and each
//! not sealed with the primary key is sealed with it: values written in clear by
//! earlier versions, and values sealed with an old key after a rotation.
//!
//! Every rewrite is a compare-and-set on the value read, so two admins starting on one
//! database at once cannot overwrite each other's work with stale content. Nothing but
//! the secret changes. Old versions of objects that history keeps
//! (`revision_objects`) are covered too, so a revision sealed under a retired key stays
//! restorable.

use sqlx::Row;

use super::{
    certificate_context, consumer_secret_context, kubeconfig_context, optional_text, text,
    token_context, Db,
};
use crate::secrets::{Keyring, SecretError};

/// What the pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SealReport {
    /// Secrets (re)sealed with the primary key.
    pub sealed: usize,
    /// Secrets left in clear because no data key is configured.
    pub clear: usize,
}

/// One stored secret: where it is, the value as stored, and how its row is rewritten.
struct Stored {
    /// Names the row in messages and is the sealing context.
    context: String,
    value: String,
    place: Place,
}

/// Which row holds a secret.
enum Place {
    /// A resource's JSON body, live (`revision: None`, in `resources`) or as an old
    /// revision wrote it (in `revision_objects`), at a JSON pointer (`/key`,
    /// `/credentials/0/secret`).
    Body {
        revision: Option<i64>,
        cluster: String,
        instance: String,
        kind: &'static str,
        id: String,
        pointer: String,
    },
    /// A secret column of a cluster's row (`agent_token`, `kubeconfig`).
    Cluster {
        cluster: String,
        column: &'static str,
    },
}

impl Db {
    /// Checks every secret opens and seals what is not sealed with the primary key.
    pub(crate) async fn seal_at_start(&self) -> anyhow::Result<SealReport> {
        let mut report = SealReport::default();
        for stored in self.stored_secrets().await? {
            let sealed = Keyring::is_sealed(&stored.value);
            let plain = if sealed {
                self.keyring
                    .open(&stored.context, &stored.value)
                    .map_err(|e| anyhow::anyhow!("the secret of {}: {e}", stored.context))?
            } else {
                stored.value.clone()
            };
            if self.keyring.is_current(&stored.value) {
                continue;
            }
            let resealed = match self.keyring.seal(&stored.context, &plain) {
                Ok(resealed) => resealed,
                Err(SecretError::NoKey) => {
                    report.clear += 1;
                    continue;
                }
                Err(e) => anyhow::bail!("cannot seal the secret of {}: {e}", stored.context),
            };
            if self.rewrite(&stored, resealed).await? {
                report.sealed += 1;
            }
        }
        Ok(report)
    }

    async fn stored_secrets(&self) -> anyhow::Result<Vec<Stored>> {
        let mut found = Vec::new();
        // Live rows, then every version history keeps (so old revisions stay
        // restorable after a rotation retires the key they were sealed with).
        for (table, sql) in [
            (
                false,
                "SELECT cluster, instance, kind, id, body, 0 AS revision FROM resources \
                 WHERE kind IN ('certificates', 'consumers') ORDER BY cluster, instance, kind, id",
            ),
            (
                true,
                "SELECT cluster, instance, kind, id, body, revision FROM revision_objects \
                 WHERE kind IN ('certificates', 'consumers') AND body IS NOT NULL \
                 ORDER BY cluster, instance, kind, id, revision",
            ),
        ] {
            let sql = self.sql(sql);
            for row in sqlx::query(&sql).fetch_all(&self.pool).await? {
                let (cluster, instance, id) = (
                    text(&row, "cluster")?,
                    text(&row, "instance")?,
                    text(&row, "id")?,
                );
                let revision: i64 = row.try_get("revision")?;
                let body: serde_json::Value = serde_json::from_str(&text(&row, "body")?)
                    .map_err(|e| anyhow::anyhow!("{cluster}/{instance}/{id} is not JSON: {e}"))?;
                let place = |kind: &'static str, pointer: String| Place::Body {
                    revision: table.then_some(revision),
                    cluster: cluster.clone(),
                    instance: instance.clone(),
                    kind,
                    id: id.clone(),
                    pointer,
                };
                if text(&row, "kind")? == "certificates" {
                    if let Some(key) = body["key"].as_str().filter(|k| !k.is_empty()) {
                        found.push(Stored {
                            context: certificate_context(&cluster, &instance, &id),
                            value: key.to_owned(),
                            place: place("certificates", "/key".into()),
                        });
                    }
                    continue;
                }
                let credentials = body["credentials"].as_array().cloned().unwrap_or_default();
                for (index, credential) in credentials.iter().enumerate() {
                    let (Some(secret), Some(credential_id)) =
                        (credential["secret"].as_str(), credential["id"].as_str())
                    else {
                        continue;
                    };
                    found.push(Stored {
                        context: consumer_secret_context(&cluster, &instance, &id, credential_id),
                        value: secret.to_owned(),
                        place: place("consumers", format!("/credentials/{index}/secret")),
                    });
                }
            }
        }
        let sql = self.sql(
            "SELECT name, agent_token, kubeconfig FROM clusters \
             WHERE agent_token IS NOT NULL OR kubeconfig IS NOT NULL ORDER BY name",
        );
        for row in sqlx::query(&sql).fetch_all(&self.pool).await? {
            let cluster = text(&row, "name")?;
            for (column, context) in [
                ("agent_token", token_context(&cluster)),
                ("kubeconfig", kubeconfig_context(&cluster)),
            ] {
                let Some(value) = optional_text(&row, column)? else {
                    continue;
                };
                found.push(Stored {
                    context,
                    value,
                    place: Place::Cluster {
                        cluster: cluster.clone(),
                        column,
                    },
                });
            }
        }
        Ok(found)
    }

    /// Replaces the secret if the row still holds what was read; false when it changed.
    async fn rewrite(&self, stored: &Stored, resealed: String) -> anyhow::Result<bool> {
        let done = match &stored.place {
            Place::Body {
                revision,
                cluster,
                instance,
                kind,
                id,
                pointer,
            } => {
                // A body may hold several secrets: each rewrite reads the row afresh
                // and changes it only if this secret is still what was read.
                let (select, update) = match revision {
                    None => (
                        "SELECT body FROM resources WHERE cluster = ? AND instance = ? \
                         AND kind = ? AND id = ? AND 0 = ?",
                        "UPDATE resources SET body = ? WHERE cluster = ? AND instance = ? \
                         AND kind = ? AND id = ? AND 0 = ? AND body = ?",
                    ),
                    Some(_) => (
                        "SELECT body FROM revision_objects WHERE cluster = ? AND instance = ? \
                         AND kind = ? AND id = ? AND revision = ?",
                        "UPDATE revision_objects SET body = ? WHERE cluster = ? AND instance = ? \
                         AND kind = ? AND id = ? AND revision = ? AND body = ?",
                    ),
                };
                let at = revision.unwrap_or(0);
                let sql = self.sql(select);
                let Some(row) = sqlx::query(&sql)
                    .bind(cluster)
                    .bind(instance)
                    .bind(*kind)
                    .bind(id)
                    .bind(at)
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(false);
                };
                let raw = text(&row, "body")?;
                let mut body: serde_json::Value = serde_json::from_str(&raw)?;
                let Some(slot) = body.pointer_mut(pointer) else {
                    return Ok(false);
                };
                if slot.as_str() != Some(stored.value.as_str()) {
                    return Ok(false);
                }
                *slot = serde_json::Value::String(resealed);
                let sql = self.sql(update);
                sqlx::query(&sql)
                    .bind(body.to_string())
                    .bind(cluster)
                    .bind(instance)
                    .bind(*kind)
                    .bind(id)
                    .bind(at)
                    .bind(&raw)
                    .execute(&self.pool)
                    .await?
            }
            Place::Cluster { cluster, column } => {
                // `column` is one of two constants, never input.
                let sql = self.sql(format!(
                    "UPDATE clusters SET {column} = ? WHERE name = ? AND {column} = ?"
                ));
                sqlx::query(&sql)
                    .bind(resealed)
                    .bind(cluster)
                    .bind(&stored.value)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }
}
