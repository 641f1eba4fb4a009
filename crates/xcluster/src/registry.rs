//! Where the cluster list comes from (requirement X1): the admin's cluster registry,
//! where a cluster's Kubernetes face (role, provider, context, kubeconfig) is the
//! second face of the cluster whose agent the admin already drives; and/or a file (the
//! timings, the Lease, and clusters the admin does not know).
//!
//! From the admin: `GET /clusters` lists the faces with a version of each kubeconfig,
//! and a kubeconfig is fetched from `GET /clusters/{cluster}/kubeconfig` (platform
//! admins only, audited) only when its version is new. The
//! kubeconfigs are written to a private folder (0700, files 0600), each rewritten only
//! when it changed, so a cluster controller sees a rotated credential as a changed
//! file and reads it again; nothing else about them is kept or logged.
//!
//! Back to the admin: the leading replica reports each admin cluster's link, last
//! sync and endpoints contributed (`PUT /clusters/{cluster}/kubernetes/status`), which
//! the admin shows in the cluster's view.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::Deserialize;

use crate::aggregator::Status;
use crate::config::{ClusterSpec, Config};
use crate::union::{Link, Role};

/// The admin API to read clusters from.
#[derive(Clone)]
pub struct Admin {
    /// Its base URL, e.g. `http://127.0.0.1:9180/gateway/apiserver/v1`.
    pub url: String,
    /// A platform admin's token.
    pub token: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The sources of one controller's cluster list.
pub struct Source {
    file: Option<PathBuf>,
    admin: Option<Admin>,
    kubeconfigs: tempfile::TempDir,
    http: reqwest::Client,
    /// The clusters the last read took from the admin.
    from_admin: Mutex<BTreeSet<String>>,
    /// Cluster → the version of the kubeconfig written for it.
    fetched: Mutex<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
struct AdminCluster {
    name: String,
    #[serde(default)]
    kubernetes: Option<AdminFace>,
    #[serde(default)]
    kubeconfig_version: Option<String>,
}

#[derive(Deserialize)]
struct AdminFace {
    role: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
struct Kubeconfig {
    kubeconfig: String,
}

impl Source {
    /// A source reading `file` (timings, Lease, static clusters) and/or `admin`.
    pub fn new(file: Option<PathBuf>, admin: Option<Admin>) -> Result<Self, String> {
        if file.is_none() && admin.is_none() {
            return Err(
                "give a cluster list file, the admin to read clusters from, or both".into(),
            );
        }
        let kubeconfigs = tempfile::Builder::new()
            .prefix("portico-xcluster-")
            .tempdir()
            .map_err(|e| format!("cannot make a private folder for kubeconfigs: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            file,
            admin,
            kubeconfigs,
            http,
            from_admin: Mutex::new(BTreeSet::new()),
            fetched: Mutex::new(BTreeMap::new()),
        })
    }

    /// Reads the list now: the file's, then the admin's clusters with a Kubernetes
    /// face. An error says which source failed and why (never a credential).
    pub async fn load(&self) -> Result<Config, String> {
        let mut config = match &self.file {
            Some(path) => Config::load(path)?,
            None => Config::parse("{}")?,
        };
        let Some(admin) = &self.admin else {
            config.check_lease()?;
            return Ok(config);
        };
        let mut names: BTreeSet<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        let mut from_admin = BTreeSet::new();
        let clusters: Items<AdminCluster> = self.get(admin, "/clusters").await?;
        for cluster in clusters.items {
            let Some(face) = cluster.kubernetes else {
                continue;
            };
            if !names.insert(cluster.name.clone()) {
                return Err(format!(
                    "cluster {:?} is both in the file and in the admin's registry",
                    cluster.name
                ));
            }
            let role = match face.role.as_str() {
                "production" => Role::Production,
                "peak" => Role::Peak,
                other => {
                    return Err(format!(
                        "the admin's cluster {:?} has role {other:?}",
                        cluster.name
                    ))
                }
            };
            let path = self
                .kubeconfigs
                .path()
                .join(format!("{}.kubeconfig", cluster.name));
            let known = lock(&self.fetched).get(&cluster.name).cloned();
            if known.is_none() || known != cluster.kubeconfig_version {
                let answer: Kubeconfig = self
                    .get(admin, &format!("/clusters/{}/kubeconfig", cluster.name))
                    .await?;
                write_if_changed(&path, &answer.kubeconfig)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                lock(&self.fetched).insert(
                    cluster.name.clone(),
                    cluster.kubeconfig_version.clone().unwrap_or_default(),
                );
            }
            from_admin.insert(cluster.name.clone());
            config.clusters.push(ClusterSpec {
                name: cluster.name,
                role,
                provider: face.provider,
                kubeconfig: path,
                context: face.context,
            });
        }
        config.check_lease()?;
        lock(&self.fetched).retain(|name, _| from_admin.contains(name));
        *lock(&self.from_admin) = from_admin;
        Ok(config)
    }

    /// Reports to the admin what `status` says of each cluster taken from it, as
    /// `reporter`; failures are logged and the next report tries again.
    pub async fn report(&self, status: &Status, reporter: &str) {
        let Some(admin) = &self.admin else {
            return;
        };
        let names = lock(&self.from_admin).clone();
        for name in names {
            let Some(cluster) = status.clusters.get(&name) else {
                continue;
            };
            let (link, lost_for) = match cluster.link {
                Link::Synced => ("synced", None),
                Link::Unknown => ("unknown", None),
                Link::Lost { since } => ("lost", Some(since.elapsed().as_secs())),
            };
            let body = serde_json::json!({
                "reporter": reporter,
                "link": link,
                "lost_for_seconds": lost_for,
                "last_synced_ms": cluster
                    .last_synced
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64),
                "services": cluster.services,
                "endpoints_contributed": cluster.contributed,
                "contributions": contributions(cluster),
            });
            let url = format!(
                "{}/clusters/{name}/kubernetes/status",
                admin.url.trim_end_matches('/')
            );
            let answer = self
                .http
                .put(&url)
                .bearer_auth(&admin.token)
                .json(&without_nulls(body))
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(cluster = %name, status = %response.status(), "the admin refused the status report");
                }
                Err(error) => {
                    tracing::debug!(cluster = %name, error = %error.without_url(), "status report not delivered");
                }
            }
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        admin: &Admin,
        path: &str,
    ) -> Result<T, String> {
        let url = format!("{}{path}", admin.url.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .bearer_auth(&admin.token)
            .send()
            .await
            .map_err(|e| format!("admin {url}: {}", e.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("admin {url}: answered {status}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("admin {url}: unexpected answer: {}", e.without_url()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The object without its `null` fields (the admin's type has them optional).
fn without_nulls(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    value
}

/// Writes `text` to `path` (mode 0600) unless it already holds exactly that; atomic.
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(partial, path)
}

/// A cluster's endpoints per Service for the admin, largest first, bounded as the admin
/// accepts them.
fn contributions(cluster: &crate::aggregator::ClusterStatus) -> Vec<serde_json::Value> {
    let mut by_size: Vec<_> = cluster.contributed_by_service.iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    by_size
        .into_iter()
        .take(model::cluster::KubernetesStatus::MAX_CONTRIBUTIONS)
        .map(|(service, endpoints)| serde_json::json!({"service": service.to_string(), "endpoints": endpoints}))
        .collect()
}
