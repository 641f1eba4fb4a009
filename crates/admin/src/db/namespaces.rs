//! Namespaces and which instances live in them.
//!
//! A namespace's id is generated here when it is created and never changes; `default`
//! is created by the migrations and cannot be deleted. A namespace holding instances
//! cannot be deleted either: the refusal names them.

use model::cluster::NamespaceSource;
use model::namespace::{Namespace, NamespaceSpec, DEFAULT_NAMESPACE};
use model::plugin::NamespacePluginTemplate;
use rand::RngCore;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, text, Db};
use crate::error::ApiError;

/// How many holders a refused delete names.
const NAMED_HOLDERS: usize = 10;

impl Db {
    pub(crate) async fn namespaces(&self) -> Result<Vec<Namespace>, sqlx::Error> {
        let sql = self.sql(
            "SELECT id, name, description, created_at, updated_at FROM namespaces \
             ORDER BY created_at, id",
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(namespace_from_row).collect()
    }

    pub(crate) async fn namespace(&self, id: &str) -> Result<Option<Namespace>, sqlx::Error> {
        let sql = self.sql(
            "SELECT id, name, description, created_at, updated_at FROM namespaces WHERE id = ?",
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(namespace_from_row).transpose()
    }

    /// The namespace, or 404.
    pub(crate) async fn require_namespace(&self, id: &str) -> Result<Namespace, ApiError> {
        self.namespace(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("namespace {id:?} does not exist")))
    }

    /// Creates a namespace under a freshly generated id.
    pub(crate) async fn insert_namespace(
        &self,
        spec: &NamespaceSpec,
        now: i64,
    ) -> Result<Namespace, ApiError> {
        let namespace = Namespace {
            id: generate_id(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            created_at: now,
            updated_at: now,
        };
        let sql = self.sql(
            "INSERT INTO namespaces (id, name, description, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(&namespace.id)
            .bind(&namespace.name)
            .bind(&namespace.description)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| name_taken(e, &spec.name))?;
        Ok(namespace)
    }

    /// Renames or re-describes a namespace; its id stays.
    pub(crate) async fn update_namespace(
        &self,
        id: &str,
        spec: &NamespaceSpec,
        now: i64,
    ) -> Result<Namespace, ApiError> {
        let sql = self
            .sql("UPDATE namespaces SET name = ?, description = ?, updated_at = ? WHERE id = ?");
        let done = sqlx::query(&sql)
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| name_taken(e, &spec.name))?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "namespace {id:?} does not exist"
            )));
        }
        self.require_namespace(id).await
    }

    /// Deletes a namespace that holds nothing; `default` never.
    pub(crate) async fn delete_namespace(&self, id: &str) -> Result<(), ApiError> {
        if id == DEFAULT_NAMESPACE {
            return Err(ApiError::InUse {
                message: "the default namespace cannot be deleted".into(),
                details: Vec::new(),
            });
        }
        let mut tx = self.pool.begin().await?;
        // Lock the row first: an instance moved in meanwhile waits for us, or we for it.
        let sql = self.sql("UPDATE namespaces SET updated_at = updated_at WHERE id = ?");
        let done = sqlx::query(&sql).bind(id).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "namespace {id:?} does not exist"
            )));
        }
        let sql = self
            .sql("SELECT cluster, name FROM instances WHERE namespace = ? ORDER BY cluster, name");
        let rows = sqlx::query(&sql).bind(id).fetch_all(&mut *tx).await?;
        if !rows.is_empty() {
            let mut holders = rows
                .iter()
                .take(NAMED_HOLDERS)
                .map(|r| Ok(format!("{}/{}", text(r, "cluster")?, text(r, "name")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            if rows.len() > NAMED_HOLDERS {
                holders.push(format!("and {} more", rows.len() - NAMED_HOLDERS));
            }
            return Err(ApiError::InUse {
                message: format!(
                    "namespace {id:?} still holds instances {}; move or remove them first",
                    holders.join(", ")
                ),
                details: Vec::new(),
            });
        }
        let sql = self.sql(
            "SELECT plugin FROM namespace_plugin_templates WHERE namespace = ? ORDER BY plugin",
        );
        let rows = sqlx::query(&sql).bind(id).fetch_all(&mut *tx).await?;
        if !rows.is_empty() {
            let plugins = rows
                .iter()
                .map(|r| text(r, "plugin"))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            return Err(ApiError::InUse {
                message: format!(
                    "namespace {id:?} still holds plugin templates {}; delete them first",
                    plugins.join(", ")
                ),
                details: Vec::new(),
            });
        }
        let sql = self.sql("DELETE FROM namespaces WHERE id = ?");
        sqlx::query(&sql).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The namespace's plugin template overrides, by plugin name.
    pub(crate) async fn namespace_templates(
        &self,
        namespace: &str,
    ) -> Result<Vec<NamespacePluginTemplate>, ApiError> {
        let sql = self
            .sql("SELECT body FROM namespace_plugin_templates WHERE namespace = ? ORDER BY plugin");
        let rows = sqlx::query(&sql)
            .bind(namespace)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let body = text(row, "body")?;
                serde_json::from_str(&body).map_err(|e| ApiError::Internal(e.into()))
            })
            .collect()
    }

    /// Creates or replaces one override of an existing namespace; true when created.
    pub(crate) async fn put_namespace_template(
        &self,
        namespace: &str,
        template: &NamespacePluginTemplate,
        now: i64,
    ) -> Result<bool, ApiError> {
        let body = serde_json::to_string(template).map_err(|e| ApiError::Internal(e.into()))?;
        let mut tx = self.pool.begin().await?;
        // Lock the namespace: a delete of it waits for us, or we for it.
        let sql = self.sql("UPDATE namespaces SET updated_at = updated_at WHERE id = ?");
        let done = sqlx::query(&sql).bind(namespace).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "namespace {namespace:?} does not exist"
            )));
        }
        let sql = self.sql(
            "SELECT plugin FROM namespace_plugin_templates WHERE namespace = ? AND plugin = ?",
        );
        let exists = sqlx::query(&sql)
            .bind(namespace)
            .bind(&template.id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        let sql = if exists {
            self.sql(
                "UPDATE namespace_plugin_templates SET body = ?, updated_at = ? \
                 WHERE namespace = ? AND plugin = ?",
            )
        } else {
            self.sql(
                "INSERT INTO namespace_plugin_templates (body, updated_at, namespace, plugin) \
                 VALUES (?, ?, ?, ?)",
            )
        };
        sqlx::query(&sql)
            .bind(&body)
            .bind(now)
            .bind(namespace)
            .bind(&template.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(!exists)
    }

    /// Removes one override; 404 when there is none.
    pub(crate) async fn delete_namespace_template(
        &self,
        namespace: &str,
        plugin: &str,
    ) -> Result<(), ApiError> {
        let sql =
            self.sql("DELETE FROM namespace_plugin_templates WHERE namespace = ? AND plugin = ?");
        let done = sqlx::query(&sql)
            .bind(namespace)
            .bind(plugin)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "namespace {namespace:?} has no plugin template {plugin:?}"
            )));
        }
        Ok(())
    }

    /// What the instance is bound to, as its agent and gateways are to hold it.
    pub(crate) async fn binding(
        &self,
        instance: &model::cluster::Instance,
    ) -> Result<model::cluster::InstanceBinding, ApiError> {
        Ok(model::cluster::InstanceBinding {
            namespace: instance.namespace.clone(),
            exists: instance.namespace_exists,
            plugin_templates: if instance.namespace_exists {
                self.namespace_templates(&instance.namespace).await?
            } else {
                Vec::new()
            },
        })
    }

    /// Every instance as (namespace, cluster, instance), for per-namespace counts.
    pub(crate) async fn instance_namespaces(
        &self,
    ) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        let sql = self.sql("SELECT namespace, cluster, name FROM instances");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((text(r, "namespace")?, text(r, "cluster")?, text(r, "name")?)))
            .collect()
    }

    /// Moves an instance (and its config) to `namespace`, pinned there by an operator;
    /// `None` hands the choice back to its agent's report (`default` when it says
    /// nothing). The namespace must exist.
    pub(crate) async fn set_instance_namespace(
        &self,
        cluster: &str,
        instance: &str,
        namespace: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let done = match namespace {
            Some(ns) => {
                // Lock the namespace row, as a delete does, so neither misses the other.
                let sql = self.sql("UPDATE namespaces SET updated_at = updated_at WHERE id = ?");
                let found = sqlx::query(&sql).bind(ns).execute(&mut *tx).await?;
                if found.rows_affected() == 0 {
                    return Err(ApiError::invalid_field(
                        "instance namespace",
                        "namespace",
                        format!("namespace {ns:?} does not exist"),
                    ));
                }
                let sql = self.sql(
                    "UPDATE instances SET namespace = ?, namespace_pinned = 1 \
                     WHERE cluster = ? AND name = ?",
                );
                sqlx::query(&sql)
                    .bind(ns)
                    .bind(cluster)
                    .bind(instance)
                    .execute(&mut *tx)
                    .await?
            }
            None => {
                let sql = self.sql(
                    "UPDATE instances SET namespace = COALESCE(reported_namespace, ?), \
                     namespace_pinned = 0 WHERE cluster = ? AND name = ?",
                );
                sqlx::query(&sql)
                    .bind(DEFAULT_NAMESPACE)
                    .bind(cluster)
                    .bind(instance)
                    .execute(&mut *tx)
                    .await?
            }
        };
        if done.rows_affected() == 0 {
            drop(tx);
            self.require_instance(cluster, instance).await?;
            return Err(ApiError::NotFound(format!(
                "instance {instance:?} does not exist in cluster {cluster:?}"
            )));
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Who decided an instance's namespace, from its `namespace_pinned` column.
pub(super) fn namespace_source(pinned: i64) -> NamespaceSource {
    if pinned != 0 {
        NamespaceSource::Operator
    } else {
        NamespaceSource::Agent
    }
}

fn namespace_from_row(row: &AnyRow) -> Result<Namespace, sqlx::Error> {
    Ok(Namespace {
        id: text(row, "id")?,
        name: text(row, "name")?,
        description: text(row, "description")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn name_taken(e: sqlx::Error, name: &str) -> ApiError {
    if is_unique_violation(&e) {
        ApiError::AlreadyExists(format!("a namespace named {name:?} already exists"))
    } else {
        e.into()
    }
}

/// `ns-` and 16 hex digits from the thread's CSPRNG.
fn generate_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    format!("ns-{}", hex::encode(bytes))
}
