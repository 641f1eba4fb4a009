//! Clusters (registered by operators) and instances (discovered by polling agents).
//!
//! A cluster's agent token is sealed with the data key before it reaches its row and is
//! read back only for calls to that cluster's agent, never into an API answer.

use model::cluster::{
    Cluster, Instance, InstanceStatus, KubernetesFace, KubernetesStatus, StoreBackend, StoreInfo,
};
use model::namespace::DEFAULT_NAMESPACE;
use model::snapshot::Revision;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::namespaces::namespace_source;
use super::{
    is_unique_violation, kubeconfig_context, optional_text, secret_error, text, token_context, Db,
};
use crate::error::ApiError;

/// One instance as an agent reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InstanceReport {
    pub name: String,
    /// The admin revision the store holds (its `meta`), 0 when never written.
    pub revision: Revision,
    /// The namespace the agent's environment names for it, if any.
    pub namespace: Option<String>,
    /// The store the agent keeps it in, if it says.
    pub store: Option<StoreInfo>,
}

/// A cluster as the admin's calls to its agent need it: its token opened and whether
/// its current address has proven it holds that token.
#[derive(Clone)]
pub(crate) struct AgentRecord {
    pub cluster: Cluster,
    pub token: Option<String>,
    pub verified: bool,
}

/// What a report changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReportOutcome {
    pub discovered: Vec<String>,
    pub back_online: Vec<String>,
    pub went_missing: Vec<String>,
}

/// A query of instances with the columns [`instance_from_row`] reads, completed by
/// its `WHERE` clause.
macro_rules! select_instances {
    ($where:literal) => {
        concat!(
            "SELECT i.cluster AS cluster, i.name AS name, i.agent_address AS agent_address, \
             i.status AS status, i.first_seen AS first_seen, i.last_seen AS last_seen, \
             i.revision AS revision, i.applied_revision AS applied_revision, \
             i.namespace AS namespace, i.namespace_pinned AS namespace_pinned, \
             i.store_backend AS store_backend, i.store_endpoints AS store_endpoints, \
             n.id AS namespace_found FROM instances i \
             LEFT JOIN namespaces n ON n.id = i.namespace WHERE ",
            $where
        )
    };
}

impl Db {
    /// Registers a cluster, its agent token (if any) sealed; false when the name is taken.
    pub(crate) async fn insert_cluster(
        &self,
        cluster: &Cluster,
        now: i64,
    ) -> Result<bool, ApiError> {
        let token = self.seal_token(cluster)?;
        let (kubernetes, kubeconfig) = self.kubernetes_columns(cluster)?;
        // Not verified yet: the first poll proves the agent holds the token.
        let sql = self.sql(
            "INSERT INTO clusters (name, agent_address, agent_token, kubernetes, kubeconfig, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        );
        match sqlx::query(&sql)
            .bind(&cluster.name)
            .bind(&cluster.agent_address)
            .bind(token)
            .bind(kubernetes)
            .bind(kubeconfig)
            .bind(now)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn seal_token(&self, cluster: &Cluster) -> Result<Option<String>, ApiError> {
        cluster
            .agent_token
            .as_deref()
            .map(|token| {
                self.keyring
                    .seal(&token_context(&cluster.name), token)
                    .map_err(|e| secret_error("agent_token", "sealing an agent token", e))
            })
            .transpose()
    }

    /// The `kubernetes` column (the face without its kubeconfig, as JSON) and the
    /// sealed kubeconfig, when given.
    fn kubernetes_columns(
        &self,
        cluster: &Cluster,
    ) -> Result<(Option<String>, Option<String>), ApiError> {
        let Some(face) = &cluster.kubernetes else {
            return Ok((None, None));
        };
        let public = KubernetesFace {
            kubeconfig: None,
            ..face.clone()
        };
        let json = serde_json::to_string(&public)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("kubernetes face: {e}")))?;
        let sealed = face
            .kubeconfig
            .as_deref()
            .map(|kubeconfig| {
                self.keyring
                    .seal(&kubeconfig_context(&cluster.name), kubeconfig)
                    .map_err(|e| secret_error("kubernetes.kubeconfig", "sealing a kubeconfig", e))
            })
            .transpose()?;
        Ok((Some(json), sealed))
    }

    /// The cluster's kubeconfig, opened; `None` when it has none.
    pub(crate) async fn kubeconfig(&self, name: &str) -> Result<Option<String>, ApiError> {
        let sql = self.sql("SELECT kubeconfig FROM clusters WHERE name = ?");
        let Some(row) = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        optional_text(&row, "kubeconfig")?
            .map(|stored| {
                self.keyring
                    .open(&kubeconfig_context(name), &stored)
                    .map_err(|e| {
                        secret_error(
                            "kubeconfig",
                            &format!("opening the kubeconfig of cluster {name:?}"),
                            e,
                        )
                    })
            })
            .transpose()
    }

    /// Replaces what the cross-cluster controller reported of the cluster's
    /// Kubernetes face; false when the cluster has no face (or does not exist).
    pub(crate) async fn record_kubernetes_status(
        &self,
        cluster: &str,
        status: &KubernetesStatus,
        now_ms: i64,
    ) -> Result<bool, ApiError> {
        let body = serde_json::to_string(status)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("kubernetes status: {e}")))?;
        let mut tx = self.pool.begin().await?;
        // Lock the cluster's row: a concurrent removal of the face or the cluster
        // either happens before (nothing is recorded) or after (it removes the row).
        let sql = self.sql(
            "UPDATE clusters SET kubernetes = kubernetes WHERE name = ? AND kubernetes IS NOT NULL",
        );
        let found = sqlx::query(&sql).bind(cluster).execute(&mut *tx).await?;
        if found.rows_affected() == 0 {
            return Ok(false);
        }
        let sql = self.sql("DELETE FROM kubernetes_status WHERE cluster = ?");
        sqlx::query(&sql).bind(cluster).execute(&mut *tx).await?;
        let sql = self
            .sql("INSERT INTO kubernetes_status (cluster, body, reported_at_ms) VALUES (?, ?, ?)");
        sqlx::query(&sql)
            .bind(cluster)
            .bind(body)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// What the views add to a cluster's Kubernetes face, by cluster (of one cluster
    /// when `only` names it): the controller's last report, and the version of the
    /// stored kubeconfig.
    pub(crate) async fn kubernetes_extras(
        &self,
        only: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, KubernetesExtras>, ApiError> {
        let mut all: std::collections::BTreeMap<String, KubernetesExtras> =
            std::collections::BTreeMap::new();
        let (statuses, versions) = match only {
            Some(_) => (
                "SELECT cluster, body, reported_at_ms FROM kubernetes_status WHERE cluster = ?",
                "SELECT name, kubeconfig FROM clusters WHERE kubeconfig IS NOT NULL AND name = ?",
            ),
            None => (
                "SELECT cluster, body, reported_at_ms FROM kubernetes_status",
                "SELECT name, kubeconfig FROM clusters WHERE kubeconfig IS NOT NULL",
            ),
        };
        let query = |sql: &'static str| {
            let sql = self.sql(sql);
            async move {
                let mut query = sqlx::query(&sql);
                if let Some(name) = only {
                    query = query.bind(name);
                }
                query.fetch_all(&self.pool).await
            }
        };
        for row in query(versions).await? {
            let sealed = text(&row, "kubeconfig")?;
            all.entry(text(&row, "name")?)
                .or_default()
                .kubeconfig_version = Some(kubeconfig_version(&sealed));
        }
        for row in query(statuses).await? {
            let cluster = text(&row, "cluster")?;
            let mut status: KubernetesStatus =
                serde_json::from_str(&text(&row, "body")?).map_err(|e| {
                    ApiError::Internal(anyhow::anyhow!("kubernetes status of {cluster:?}: {e}"))
                })?;
            status.reported_at_ms = Some(row.try_get("reported_at_ms")?);
            all.entry(cluster).or_default().status = Some(status);
        }
        Ok(all)
    }

    /// Whether the cluster has a kubeconfig stored (without opening it).
    pub(crate) async fn has_kubeconfig(&self, name: &str) -> Result<bool, ApiError> {
        let sql = self.sql("SELECT name FROM clusters WHERE name = ? AND kubeconfig IS NOT NULL");
        Ok(sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Every cluster as its agent calls need it, for polling.
    pub(crate) async fn agent_records(&self) -> Result<Vec<AgentRecord>, ApiError> {
        let sql = self.sql(
            "SELECT name, agent_address, agent_token, verified_address, kubernetes FROM clusters ORDER BY name",
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(|row| self.agent_record_from(row)).collect()
    }

    /// One cluster as its agent calls need it.
    pub(crate) async fn agent_record(&self, name: &str) -> Result<Option<AgentRecord>, ApiError> {
        let sql = self.sql(
            "SELECT name, agent_address, agent_token, verified_address, kubernetes FROM clusters WHERE name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|row| self.agent_record_from(row))
            .transpose()
    }

    fn agent_record_from(&self, row: &AnyRow) -> Result<AgentRecord, ApiError> {
        let cluster = cluster_from_row(row)?;
        let token = self.open_token(&cluster.name, optional_text(row, "agent_token")?)?;
        let verified =
            optional_text(row, "verified_address")?.as_deref() == Some(&cluster.agent_address);
        Ok(AgentRecord {
            cluster,
            token,
            verified,
        })
    }

    /// Records that `address` proved it holds the cluster's token, unless the cluster
    /// moved meanwhile.
    pub(crate) async fn mark_verified(&self, name: &str, address: &str) -> Result<(), sqlx::Error> {
        let sql = self
            .sql("UPDATE clusters SET verified_address = ? WHERE name = ? AND agent_address = ?");
        sqlx::query(&sql)
            .bind(address)
            .bind(name)
            .bind(address)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn clusters(&self) -> Result<Vec<Cluster>, sqlx::Error> {
        let sql = self.sql("SELECT name, agent_address, kubernetes FROM clusters ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(cluster_from_row).collect()
    }

    pub(crate) async fn cluster(&self, name: &str) -> Result<Option<Cluster>, sqlx::Error> {
        let sql = self.sql("SELECT name, agent_address, kubernetes FROM clusters WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cluster_from_row).transpose()
    }

    /// The cluster, or 404.
    pub(crate) async fn require_cluster(&self, name: &str) -> Result<Cluster, ApiError> {
        self.cluster(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("cluster {name:?} does not exist")))
    }

    /// Points the cluster (and its instances) at a new agent address and, when the
    /// cluster carries one, a new agent token; false when absent. A new address or token
    /// is unverified until the agent there proves it holds the token.
    pub(crate) async fn update_cluster(&self, cluster: &Cluster) -> Result<bool, ApiError> {
        let name = cluster.name.as_str();
        let agent_address = cluster.agent_address.as_str();
        let token = self.seal_token(cluster)?;
        let mut tx = self.pool.begin().await?;
        let done = match token {
            Some(token) => {
                let sql = self.sql(
                    "UPDATE clusters SET agent_address = ?, agent_token = ?, verified_address = NULL \
                     WHERE name = ?",
                );
                sqlx::query(&sql)
                    .bind(agent_address)
                    .bind(token)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
            }
            None => {
                let sql = self.sql(
                    "UPDATE clusters SET verified_address = CASE WHEN agent_address = ? \
                     THEN verified_address ELSE NULL END, agent_address = ? WHERE name = ?",
                );
                sqlx::query(&sql)
                    .bind(agent_address)
                    .bind(agent_address)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
            }
        };
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // The Kubernetes face as given: none removes it (and its kubeconfig); one
        // without a kubeconfig keeps the stored kubeconfig.
        let (kubernetes, kubeconfig) = self.kubernetes_columns(cluster)?;
        match kubeconfig {
            Some(kubeconfig) => {
                let sql =
                    self.sql("UPDATE clusters SET kubernetes = ?, kubeconfig = ? WHERE name = ?");
                sqlx::query(&sql)
                    .bind(kubernetes)
                    .bind(kubeconfig)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            None if kubernetes.is_none() => {
                let sql = self
                    .sql("UPDATE clusters SET kubernetes = NULL, kubeconfig = NULL WHERE name = ?");
                sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
                let sql = self.sql("DELETE FROM kubernetes_status WHERE cluster = ?");
                sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
            }
            None => {
                let sql = self.sql("UPDATE clusters SET kubernetes = ? WHERE name = ?");
                sqlx::query(&sql)
                    .bind(kubernetes)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let sql = self.sql("UPDATE instances SET agent_address = ? WHERE cluster = ?");
        sqlx::query(&sql)
            .bind(agent_address)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a cluster and its instances, refused while any instance holds resources.
    /// The change log stays, so a re-registered instance continues its revisions.
    pub(crate) async fn delete_cluster(&self, name: &str) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        // Lock the cluster row first, in the same order as `record_report`, so a poll
        // running meanwhile cannot deadlock with us.
        let sql = self.sql("UPDATE clusters SET agent_address = agent_address WHERE name = ?");
        let done = sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "cluster {name:?} does not exist"
            )));
        }
        let sql = self.sql(
            "DELETE FROM instances WHERE cluster = ? AND NOT EXISTS \
             (SELECT 1 FROM resources r WHERE r.cluster = instances.cluster AND r.instance = instances.name)",
        );
        sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        let sql =
            self.sql("SELECT DISTINCT instance FROM resources WHERE cluster = ? ORDER BY instance");
        let rows = sqlx::query(&sql).bind(name).fetch_all(&mut *tx).await?;
        if !rows.is_empty() {
            let holding = rows
                .iter()
                .map(|r| text(r, "instance"))
                .collect::<Result<Vec<_>, _>>()?;
            return Err(ApiError::InUse {
                message: format!(
                    "cluster {name:?} still has config in instances {}; delete it first",
                    holding.join(", ")
                ),
                details: Vec::new(),
            });
        }
        let sql = self.sql("DELETE FROM gateway_nodes WHERE cluster = ?");
        sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        let sql = self.sql("DELETE FROM kubernetes_status WHERE cluster = ?");
        sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        let sql = self.sql("DELETE FROM clusters WHERE name = ?");
        let done = sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "cluster {name:?} does not exist"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// The instances of a namespace, across clusters.
    pub(crate) async fn instances_in(&self, namespace: &str) -> Result<Vec<Instance>, sqlx::Error> {
        let sql = self.sql(select_instances!(
            "i.namespace = ? ORDER BY i.cluster, i.name"
        ));
        let rows = sqlx::query(&sql)
            .bind(namespace)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    pub(crate) async fn instances(&self, cluster: &str) -> Result<Vec<Instance>, sqlx::Error> {
        let sql = self.sql(select_instances!("i.cluster = ? ORDER BY i.name"));
        let rows = sqlx::query(&sql)
            .bind(cluster)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    pub(crate) async fn instance(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<Instance>, sqlx::Error> {
        let sql = self.sql(select_instances!("i.cluster = ? AND i.name = ?"));
        let row = sqlx::query(&sql)
            .bind(cluster)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// The instance, or 404 naming whichever of cluster and instance is unknown.
    pub(crate) async fn require_instance(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Instance, ApiError> {
        if let Some(instance) = self.instance(cluster, name).await? {
            return Ok(instance);
        }
        self.require_cluster(cluster).await?;
        Err(ApiError::NotFound(format!(
            "instance {name:?} does not exist in cluster {cluster:?}"
        )))
    }

    /// The instance when it lives in `namespace`; else 404 naming what is missing: the
    /// namespace, the cluster, the instance, or the instance in this namespace.
    pub(crate) async fn require_instance_in(
        &self,
        namespace: &str,
        cluster: &str,
        name: &str,
    ) -> Result<Instance, ApiError> {
        let found = self.instance(cluster, name).await?;
        match found {
            Some(instance) if instance.namespace == namespace => Ok(instance),
            _ => {
                self.require_namespace(namespace).await?;
                self.require_cluster(cluster).await?;
                Err(ApiError::NotFound(format!(
                    "instance {name:?} does not exist in cluster {cluster:?} of namespace {namespace:?}"
                )))
            }
        }
    }

    /// Records an agent's answer: reported instances become (or stay) online with the
    /// revision their store holds; instances of the cluster it no longer reports become
    /// missing, keeping their config.
    pub(crate) async fn record_report(
        &self,
        cluster: &str,
        agent_address: &str,
        reported: &[InstanceReport],
        now: i64,
    ) -> Result<ReportOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut outcome = ReportOutcome::default();
        // Write first (see the module doc of `db`): touching the cluster row also locks
        // it before any instance row, the order every cluster-wide transaction uses.
        let sql = self.sql("UPDATE clusters SET agent_address = agent_address WHERE name = ?");
        let done = sqlx::query(&sql).bind(cluster).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            // Deleted while we polled: nothing to record.
            return Ok(outcome);
        }
        let sql = self.sql("SELECT name, status FROM instances WHERE cluster = ?");
        let known: Vec<(String, String)> = sqlx::query(&sql)
            .bind(cluster)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((text(r, "name")?, text(r, "status")?)))
            .collect::<Result<_, sqlx::Error>>()?;

        for report in reported {
            let previous = known.iter().find(|(n, _)| n == &report.name);
            let applied = report.revision.0 as i64;
            if let Some((_, status)) = previous {
                // The agent's namespace applies unless an operator pinned another.
                let sql = self.sql(
                    "UPDATE instances SET status = 'online', last_seen = ?, agent_address = ?, applied_revision = ?, \
                     reported_namespace = ?, namespace = CASE WHEN namespace_pinned = 0 THEN ? ELSE namespace END, \
                     store_backend = ?, store_endpoints = ? \
                     WHERE cluster = ? AND name = ?",
                );
                let (backend, endpoints) = store_columns(report.store.as_ref());
                sqlx::query(&sql)
                    .bind(now)
                    .bind(agent_address)
                    .bind(applied)
                    .bind(report.namespace.as_deref())
                    .bind(report.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))
                    .bind(backend)
                    .bind(endpoints)
                    .bind(cluster)
                    .bind(&report.name)
                    .execute(&mut *tx)
                    .await?;
                if status != "online" {
                    outcome.back_online.push(report.name.clone());
                }
            } else {
                let sql = self.sql(
                    "SELECT COALESCE(MAX(revision), 0) AS revision FROM changes WHERE cluster = ? AND instance = ?",
                );
                let revision: i64 = sqlx::query(&sql)
                    .bind(cluster)
                    .bind(&report.name)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("revision")?;
                let sql = self.sql(
                    "INSERT INTO instances (cluster, name, agent_address, status, first_seen, last_seen, revision, applied_revision, \
                     namespace, namespace_pinned, reported_namespace, store_backend, store_endpoints) \
                     VALUES (?, ?, ?, 'online', ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                );
                let (backend, endpoints) = store_columns(report.store.as_ref());
                sqlx::query(&sql)
                    .bind(cluster)
                    .bind(&report.name)
                    .bind(agent_address)
                    .bind(now)
                    .bind(now)
                    .bind(revision)
                    .bind(applied)
                    .bind(report.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))
                    .bind(report.namespace.as_deref())
                    .bind(backend)
                    .bind(endpoints)
                    .execute(&mut *tx)
                    .await?;
                outcome.discovered.push(report.name.clone());
            }
        }
        for (name, status) in &known {
            if status == "online" && !reported.iter().any(|r| &r.name == name) {
                let sql = self
                    .sql("UPDATE instances SET status = 'missing' WHERE cluster = ? AND name = ?");
                sqlx::query(&sql)
                    .bind(cluster)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                outcome.went_missing.push(name.clone());
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Notes that the instance's store now holds `revision` (a push succeeded).
    pub(crate) async fn set_applied_revision(
        &self,
        cluster: &str,
        name: &str,
        revision: Revision,
    ) -> Result<(), sqlx::Error> {
        let sql =
            self.sql("UPDATE instances SET applied_revision = ? WHERE cluster = ? AND name = ?");
        sqlx::query(&sql)
            .bind(revision.0 as i64)
            .bind(cluster)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Moves the instance's revision past one its store already holds (a restored DB or
    /// another admin wrote there), logged as a `resync` change, so the DB's config can be
    /// pushed on top. Returns the new revision, or `None` when the instance is gone.
    pub(crate) async fn resync_past(
        &self,
        cluster: &str,
        name: &str,
        held: Revision,
        now: i64,
    ) -> Result<Option<Revision>, sqlx::Error> {
        let target = held.0 as i64 + 1;
        let mut tx = self.pool.begin().await?;
        let sql = self.sql(
            "UPDATE instances SET revision = ? WHERE cluster = ? AND name = ? AND revision < ?",
        );
        let done = sqlx::query(&sql)
            .bind(target)
            .bind(cluster)
            .bind(name)
            .bind(target)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let sql = self.sql(
            "INSERT INTO changes (cluster, instance, revision, kind, resource_id, op, body, changed_at, changed_at_ms) \
             VALUES (?, ?, ?, NULL, NULL, 'resync', NULL, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(cluster)
            .bind(name)
            .bind(target)
            .bind(now)
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Revision(target as u64)))
    }
}

/// What the views show beside a cluster's Kubernetes face.
#[derive(Debug, Default)]
pub(crate) struct KubernetesExtras {
    pub status: Option<KubernetesStatus>,
    pub kubeconfig_version: Option<String>,
}

/// A version of a stored kubeconfig that changes whenever it is written: a digest of
/// its sealed form (random nonce each time), which tells nothing of the kubeconfig.
fn kubeconfig_version(sealed: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, sealed.as_bytes());
    hex::encode(&digest.as_ref()[..8])
}

/// The cluster as the API shows it: never its token nor its kubeconfig.
fn cluster_from_row(row: &AnyRow) -> Result<Cluster, sqlx::Error> {
    let kubernetes = optional_text(row, "kubernetes")?
        .map(|json| serde_json::from_str::<KubernetesFace>(&json))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Cluster {
        name: text(row, "name")?,
        agent_address: text(row, "agent_address")?,
        agent_token: None,
        kubernetes,
    })
}

fn instance_from_row(row: &AnyRow) -> Result<Instance, sqlx::Error> {
    let status = match text(row, "status")?.as_str() {
        "online" => InstanceStatus::Online,
        _ => InstanceStatus::Missing,
    };
    let applied: Option<i64> = row.try_get("applied_revision")?;
    Ok(Instance {
        cluster: text(row, "cluster")?,
        name: text(row, "name")?,
        agent_address: text(row, "agent_address")?,
        status,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
        revision: revision(row.try_get("revision")?),
        applied_revision: applied.map(revision),
        namespace: text(row, "namespace")?,
        namespace_source: namespace_source(row.try_get("namespace_pinned")?),
        namespace_exists: optional_text(row, "namespace_found")?.is_some(),
        store: store_from_columns(
            optional_text(row, "store_backend")?,
            optional_text(row, "store_endpoints")?,
        ),
    })
}

/// The `store_backend` and `store_endpoints` columns of a reported store.
fn store_columns(store: Option<&StoreInfo>) -> (Option<&'static str>, Option<String>) {
    match store {
        Some(info) => (Some(info.backend.as_str()), Some(info.endpoints.join(","))),
        None => (None, None),
    }
}

/// The store the columns describe; none for a backend this admin does not know.
fn store_from_columns(backend: Option<String>, endpoints: Option<String>) -> Option<StoreInfo> {
    let backend = StoreBackend::parse(&backend?)?;
    let endpoints = endpoints
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    Some(StoreInfo { backend, endpoints })
}

/// Revisions are stored as BIGINT and never negative.
pub(super) fn revision(stored: i64) -> Revision {
    Revision(stored.max(0) as u64)
}
