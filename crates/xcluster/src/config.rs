//! What the controller is told: the clusters to watch (requirement X1: name, how to
//! reach its Kubernetes API, cloud provider, role) and its timings, read from a YAML
//! file that the controller re-reads on a timer, so clusters come and go and
//! credentials change without a restart.
//!
//! ```yaml
//! grace: 60s            # a lost peak cluster's endpoints stay ready this long
//! resync: 600s          # full resync of every cluster's caches
//! clusters:
//!   - name: idc-a
//!     role: production  # private cloud: receives the union
//!     provider: idc
//!     kubeconfig: /etc/portico/idc-a.kubeconfig
//!   - name: peak-1
//!     role: peak        # public cloud: gives its ready endpoints
//!     provider: aliyun
//!     kubeconfig: /etc/portico/peak-1.kubeconfig
//!     context: peak-1   # optional: the kubeconfig's current context otherwise
//! lease:                # optional: where replicas elect the one that writes
//!   cluster: idc-a      # default: the first production cluster by name
//!   namespace: default
//!   name: portico-xcluster
//!   duration: 15s
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use model::registry::is_dns_label;
use serde::Deserialize;

use crate::union::{Role, DEFAULT_GRACE};

/// One cluster to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub role: Role,
    /// Free text (`aliyun`, `idc`, …), shown in metrics and the status.
    pub provider: String,
    /// The kubeconfig file; read again whenever the client is rebuilt.
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
}

/// The controller's timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// How long a lost peak cluster's endpoints stay ready.
    pub grace: Duration,
    /// How often every cached Service is processed again (X1's full resync).
    pub resync: Duration,
    /// How often each cluster's API is probed.
    pub probe_every: Duration,
    /// How long a probe or a write may take before it counts as failed.
    pub request_timeout: Duration,
    /// The longest a watch stays open; a watch that delivered nothing for this long
    /// (plus kube-rs's 5 s margin) is taken as dead and started again.
    pub watch_timeout: Duration,
    /// How often the cluster list is read again (X1: 30 s).
    pub reload_every: Duration,
    /// Workers per cluster processing the Services queued by watch events (X2).
    pub workers: usize,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            resync: Duration::from_secs(600),
            probe_every: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            watch_timeout: Duration::from_secs(60),
            reload_every: Duration::from_secs(30),
            workers: 4,
        }
    }
}

/// Where the replicas' Lease lives (see [`crate::lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The cluster holding it; `None`: the first production cluster by name.
    pub cluster: Option<String>,
    pub namespace: String,
    pub name: String,
    pub duration: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            cluster: None,
            namespace: "default".into(),
            name: "portico-xcluster".into(),
            duration: Duration::from_secs(15),
        }
    }
}

/// The file's contents, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub timings: Timings,
    pub clusters: Vec<ClusterSpec>,
    pub lease: LeaseConfig,
}

impl Config {
    /// Checks that a Lease cluster named is in the list (the whole list: the file's
    /// and the admin's clusters).
    pub fn check_lease(&self) -> Result<(), String> {
        match &self.lease.cluster {
            Some(name) if !self.clusters.iter().any(|c| c.name == *name) => Err(format!(
                "lease.cluster: {name:?} is not in the cluster list"
            )),
            _ => Ok(()),
        }
    }

    /// The cluster the Lease lives in: the one named, else the first production
    /// cluster by name; `None` when there is no production cluster (nothing to write).
    pub fn lease_cluster(&self) -> Option<&ClusterSpec> {
        match &self.lease.cluster {
            Some(name) => self.clusters.iter().find(|c| c.name == *name),
            None => self
                .clusters
                .iter()
                .filter(|c| c.role == Role::Production)
                .min_by(|a, b| a.name.cmp(&b.name)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    grace: Option<String>,
    #[serde(default)]
    resync: Option<String>,
    #[serde(default)]
    probe_every: Option<String>,
    #[serde(default)]
    request_timeout: Option<String>,
    #[serde(default)]
    watch_timeout: Option<String>,
    #[serde(default)]
    reload_every: Option<String>,
    #[serde(default)]
    workers: Option<usize>,
    /// Absent when the clusters come from the admin only.
    #[serde(default)]
    clusters: Vec<FileCluster>,
    #[serde(default)]
    lease: Option<FileLease>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLease {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    duration: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    name: String,
    role: String,
    #[serde(default)]
    provider: String,
    kubeconfig: PathBuf,
    #[serde(default)]
    context: Option<String>,
}

impl Config {
    /// Reads and checks `path`; relative kubeconfig paths are taken from the file's
    /// folder. The error names the field and why.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut config = Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for cluster in &mut config.clusters {
            if cluster.kubeconfig.is_relative() {
                cluster.kubeconfig = base.join(&cluster.kubeconfig);
            }
        }
        Ok(config)
    }

    /// Parses and checks a cluster list.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let defaults = Timings::default();
        let duration = |field: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => match humantime::parse_duration(&text) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(format!("{field}: must be longer than 0")),
                Err(e) => Err(format!("{field}: {text:?} is not a duration ({e})")),
            },
        };
        let timings = Timings {
            grace: duration("grace", file.grace, defaults.grace)?,
            resync: duration("resync", file.resync, defaults.resync)?,
            probe_every: duration("probe_every", file.probe_every, defaults.probe_every)?,
            request_timeout: duration(
                "request_timeout",
                file.request_timeout,
                defaults.request_timeout,
            )?,
            watch_timeout: duration("watch_timeout", file.watch_timeout, defaults.watch_timeout)?,
            reload_every: duration("reload_every", file.reload_every, defaults.reload_every)?,
            workers: match file.workers {
                None => defaults.workers,
                Some(0) => return Err("workers: must be at least 1".into()),
                Some(n) => n,
            },
        };
        if timings.watch_timeout < Duration::from_secs(1) {
            return Err(
                "watch_timeout: must be at least 1s (the API server counts seconds)".into(),
            );
        }
        let mut names = BTreeSet::new();
        let mut clusters = Vec::new();
        for (i, cluster) in file.clusters.into_iter().enumerate() {
            let at = format!("clusters[{i}]");
            if !is_dns_label(&cluster.name) {
                return Err(format!(
                    "{at}.name: {:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                    cluster.name
                ));
            }
            if !names.insert(cluster.name.clone()) {
                return Err(format!("{at}.name: {:?} is listed twice", cluster.name));
            }
            let role = match cluster.role.as_str() {
                "production" => Role::Production,
                "peak" => Role::Peak,
                other => {
                    return Err(format!(
                        "{at}.role: {other:?} is neither \"production\" nor \"peak\""
                    ));
                }
            };
            if cluster.kubeconfig.as_os_str().is_empty() {
                return Err(format!("{at}.kubeconfig: must name a file"));
            }
            clusters.push(ClusterSpec {
                name: cluster.name,
                role,
                provider: cluster.provider,
                kubeconfig: cluster.kubeconfig,
                context: cluster.context.filter(|c| !c.is_empty()),
            });
        }
        let mut lease = LeaseConfig::default();
        if let Some(file) = file.lease {
            if let Some(cluster) = file.cluster {
                if !is_dns_label(&cluster) {
                    return Err(format!("lease.cluster: {cluster:?} is not a cluster name"));
                }
                lease.cluster = Some(cluster);
            }
            for (field, value, target) in [
                ("lease.namespace", file.namespace, &mut lease.namespace),
                ("lease.name", file.name, &mut lease.name),
            ] {
                if let Some(value) = value {
                    if !is_dns_label(&value) {
                        return Err(format!("{field}: {value:?} is not a valid Kubernetes name"));
                    }
                    *target = value;
                }
            }
            lease.duration = duration("lease.duration", file.duration, lease.duration)?;
            if lease.duration < Duration::from_secs(3) {
                return Err(
                    "lease.duration: must be at least 3s (renewed every third of it)".into(),
                );
            }
        }
        Ok(Self {
            timings,
            clusters,
            lease,
        })
    }
}

/// A cluster name as Kubernetes names objects (it ends up in slice names and labels).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_list_is_read_with_defaults() {
        let config = Config::parse(
            "grace: 30s\nclusters:\n- name: idc-a\n  role: production\n  kubeconfig: a.yaml\n\
             - name: peak-1\n  role: peak\n  provider: aliyun\n  kubeconfig: /k/p.yaml\n  context: p\n",
        )
        .unwrap();
        assert_eq!(config.timings.grace, Duration::from_secs(30));
        assert_eq!(config.timings.resync, Duration::from_secs(600));
        assert_eq!(config.clusters.len(), 2);
        assert_eq!(config.clusters[0].role, Role::Production);
        assert_eq!(config.clusters[1].provider, "aliyun");
        assert_eq!(config.clusters[1].context.as_deref(), Some("p"));
        assert_eq!(config.lease_cluster().unwrap().name, "idc-a");
        assert_eq!(config.lease.duration, Duration::from_secs(15));
    }

    #[test]
    fn bad_lists_are_refused_naming_the_field() {
        let cases = [
            ("clusters:\n- {name: A, role: peak, kubeconfig: k}\n", "clusters[0].name"),
            ("clusters:\n- {name: a, role: edge, kubeconfig: k}\n", "clusters[0].role"),
            (
                "clusters:\n- {name: a, role: peak, kubeconfig: k}\n- {name: a, role: peak, kubeconfig: k}\n",
                "clusters[1].name",
            ),
            ("grace: soon\nclusters: []\n", "grace"),
            ("grace: 0s\nclusters: []\n", "grace"),
            ("workers: 0\nclusters: []\n", "workers"),
            ("clusters: []\nextra: 1\n", "extra"),
            ("clusters:\n- {name: a, role: peak}\n", "kubeconfig"),
            ("clusters: []\nlease: {cluster: No_where}\n", "lease.cluster"),
            ("clusters: []\nlease: {duration: 1s}\n", "lease.duration"),
            ("clusters: []\nlease: {namespace: Kube_System}\n", "lease.namespace"),
        ];
        for (text, field) in cases {
            let error = Config::parse(text).unwrap_err();
            assert!(error.contains(field), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_lease_cluster_must_be_listed() {
        let config = Config::parse("lease: {cluster: elsewhere}\n").unwrap();
        assert!(
            config.clusters.is_empty(),
            "clusters may come from the admin only"
        );
        assert!(config.check_lease().unwrap_err().contains("lease.cluster"));
    }

    #[test]
    fn relative_kubeconfigs_are_taken_from_the_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clusters.yaml");
        std::fs::write(
            &path,
            "clusters:\n- {name: a, role: peak, kubeconfig: a.kubeconfig}\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.clusters[0].kubeconfig,
            dir.path().join("a.kubeconfig")
        );
    }
}
