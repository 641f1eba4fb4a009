//! Clusters, instances and gateway nodes as the admin and the agent exchange them.

use serde::{Deserialize, Serialize};

use crate::snapshot::Revision;
use crate::validate::{check_id, ValidationErrors, Validator};

/// A cluster registered by an operator: its name, its agent's address and, when
/// written, the token the admin presents to that agent only; and, when the cluster
/// runs Kubernetes, its Kubernetes face (the second face of the same cluster, which the
/// cross-cluster controller watches).
///
/// `agent_token` is write-only: an API answer carries it once, when the admin generated
/// it at registration, and never otherwise. `Debug` leaves it out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// Base URL of the cluster's agent, e.g. `http://127.0.0.1:9190`.
    pub agent_address: String,
    /// The bearer token this cluster's agent accepts (its `PORTICO_AGENT_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
    /// How the cross-cluster controller reaches the cluster's Kubernetes API; absent
    /// for a cluster it does not watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesFace>,
}

/// A cluster's place in cross-cluster traffic (requirements X1–X4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesRole {
    /// The private cloud: its production Services receive the union.
    Production,
    /// The public cloud: its Services give their ready endpoints.
    Peak,
}

/// A cluster's Kubernetes face: its role, cloud provider and how to reach its API.
///
/// `kubeconfig` is write-only, as `agent_token` is: stored sealed with the admin's data
/// key, never answered by the cluster's views (they say only whether one is set), read
/// back only by a platform admin through `GET /clusters/{cluster}/kubeconfig` (the
/// cross-cluster controller's call). Left out of a change, the stored one is kept.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFace {
    pub role: KubernetesRole,
    /// Free text (`aliyun`, `idc`, …), shown in metrics and status.
    #[serde(default)]
    pub provider: String,
    /// The kubeconfig context to use; its current context when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The kubeconfig (YAML), credentials included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
}

impl std::fmt::Debug for KubernetesFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesFace")
            .field("role", &self.role)
            .field("provider", &self.provider)
            .field("context", &self.context)
            .field(
                "kubeconfig",
                &self.kubeconfig.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How the cross-cluster controller knows a cluster now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesLink {
    /// Its watches and probe answer and its caches are complete.
    Synced,
    /// It was synced and no longer answers: its endpoints are kept for the grace
    /// period, then marked not ready.
    Lost,
    /// Not yet listed completely since the controller started: left as it was.
    Unknown,
}

/// What the cross-cluster controller last reported of a cluster's Kubernetes face
/// (`PUT /clusters/{cluster}/kubernetes/status`), shown in the cluster's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesStatus {
    /// The controller replica reporting (its Lease identity).
    pub reporter: String,
    pub link: KubernetesLink,
    /// Seconds since the last successful contact, while lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_for_seconds: Option<u64>,
    /// When the controller last had the cluster synced (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_ms: Option<i64>,
    /// Services labelled `ex-remote` in the cluster.
    pub services: u64,
    /// Ready endpoints the cluster gives to production Services (peak clusters).
    pub endpoints_contributed: u64,
    /// The same per Service (peak clusters), largest first, at most
    /// [`KubernetesStatus::MAX_CONTRIBUTIONS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contributions: Vec<ServiceContribution>,
    /// When the admin received the report (Unix milliseconds); set by the admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at_ms: Option<i64>,
}

/// The ready endpoints a peak cluster gives to one Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceContribution {
    /// `namespace/name`.
    pub service: String,
    pub endpoints: u64,
}

impl KubernetesStatus {
    /// Services listed in `contributions` at most.
    pub const MAX_CONTRIBUTIONS: usize = 500;

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        if self.contributions.len() > Self::MAX_CONTRIBUTIONS {
            v.error(
                "contributions",
                format!("must list at most {} services", Self::MAX_CONTRIBUTIONS),
            );
        }
        for (i, c) in self.contributions.iter().enumerate() {
            // A namespace (63) and a Service name (63), as Kubernetes bounds them.
            let bounded = !c.service.is_empty() && c.service.len() <= 127;
            if !bounded
                || !c.service.bytes().all(|b| b.is_ascii_graphic())
                || !c.service.contains('/')
            {
                v.error(
                    &format!("contributions[{i}].service"),
                    "must be namespace/name, 3 to 127 printable ASCII characters",
                );
            }
            if c.endpoints > i64::MAX as u64 {
                v.error(&format!("contributions[{i}].endpoints"), "is too large");
            }
        }
        if self.reporter.is_empty()
            || self.reporter.len() > 253
            || !self.reporter.bytes().all(|b| b.is_ascii_graphic())
        {
            v.error("reporter", "must be 1 to 253 printable ASCII characters");
        }
        if self.reported_at_ms.is_some() {
            v.error("reported_at_ms", "is set by the admin");
        }
        if self.last_synced_ms.is_some_and(|ms| ms < 0) {
            v.error("last_synced_ms", "must not be negative");
        }
        if self.lost_for_seconds.is_some() != (self.link == KubernetesLink::Lost) {
            v.error("lost_for_seconds", "is given exactly when the link is lost");
        }
        for (field, value) in [
            ("services", self.services),
            ("endpoints_contributed", self.endpoints_contributed),
            ("lost_for_seconds", self.lost_for_seconds.unwrap_or(0)),
        ] {
            if value > i64::MAX as u64 {
                v.error(field, "is too large");
            }
        }
        v.finish()
    }
}

/// The longest kubeconfig accepted.
pub const MAX_KUBECONFIG: usize = 64 * 1024;

impl KubernetesFace {
    fn validate(&self, v: &mut Validator) {
        if self.provider.len() > 63
            || !self
                .provider
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            v.error(
                "provider",
                "must be at most 63 letters, digits, '-', '_' or '.'",
            );
        }
        if let Some(context) = &self.context {
            if context.is_empty() || context.len() > 253 || context.chars().any(char::is_control) {
                v.error(
                    "context",
                    "must be 1 to 253 characters without control characters",
                );
            }
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            // Never quoted back: it holds credentials.
            if kubeconfig.len() > MAX_KUBECONFIG {
                v.error(
                    "kubeconfig",
                    format!("must be at most {MAX_KUBECONFIG} bytes"),
                );
            } else if let Err(why) = check_kubeconfig(kubeconfig, self.context.as_deref()) {
                v.error("kubeconfig", why);
            }
        }
    }
}

/// Checks that `text` is a kubeconfig naming a server for `context` (or its current
/// context); the reason never quotes the text.
fn check_kubeconfig(text: &str, context: Option<&str>) -> Result<(), String> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|_| "is not valid YAML".to_owned())?;
    let named = |list: &str, name: &str| {
        doc.get(list)
            .and_then(serde_yaml_ng::Value::as_sequence)
            .and_then(|items| {
                items
                    .iter()
                    .find(|item| {
                        item.get("name").and_then(serde_yaml_ng::Value::as_str) == Some(name)
                    })
                    .cloned()
            })
    };
    let context_name = match context {
        Some(context) => context.to_owned(),
        None => doc
            .get("current-context")
            .and_then(serde_yaml_ng::Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| "has no current-context (or give context)".to_owned())?
            .to_owned(),
    };
    let entry = named("contexts", &context_name)
        .ok_or_else(|| "has no context of that name under contexts".to_owned())?;
    let cluster = entry
        .get("context")
        .and_then(|c| c.get("cluster"))
        .and_then(serde_yaml_ng::Value::as_str)
        .ok_or_else(|| "its context names no cluster".to_owned())?;
    let server = named("clusters", cluster)
        .and_then(|c| c.get("cluster")?.get("server")?.as_str().map(str::to_owned))
        .ok_or_else(|| "its context's cluster has no server under clusters".to_owned())?;
    if !(server.starts_with("https://") || server.starts_with("http://")) {
        return Err("its cluster's server must be an http:// or https:// URL".into());
    }
    Ok(())
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("agent_address", &self.agent_address)
            .field(
                "agent_token",
                &self.agent_token.as_ref().map(|_| "<redacted>"),
            )
            .field("kubernetes", &self.kubernetes)
            .finish()
    }
}

/// Shortest and longest agent token accepted.
pub const AGENT_TOKEN_LENGTH: std::ops::RangeInclusive<usize> = 16..=256;

impl Cluster {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "name", &self.name);
        let addr = self.agent_address.trim_end_matches('/');
        let valid = ["http://", "https://"].iter().any(|scheme| {
            addr.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', ' ', '?', '#', '@']))
        });
        if !valid {
            v.error(
                "agent_address",
                "must be an http:// or https:// base URL like http://10.0.0.5:9190",
            );
        }
        if let Some(token) = &self.agent_token {
            // Never quoted back: the message says what is wrong, not what was sent.
            if !AGENT_TOKEN_LENGTH.contains(&token.len()) {
                v.error(
                    "agent_token",
                    format!(
                        "must be {} to {} characters long",
                        AGENT_TOKEN_LENGTH.start(),
                        AGENT_TOKEN_LENGTH.end()
                    ),
                );
            } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
                v.error(
                    "agent_token",
                    "must be printable ASCII without spaces (it is sent in an HTTP header)",
                );
            }
        }
        if let Some(kubernetes) = &self.kubernetes {
            v.at("kubernetes", |v| kubernetes.validate(v));
        }
        v.finish()
    }
}

/// Whether the admin's last poll of the agent still reported the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Online,
    /// Once reported, no longer reported by its agent; kept with its config.
    Missing,
}

/// A gateway instance under management: one name within one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub cluster: String,
    pub name: String,
    pub agent_address: String,
    pub status: InstanceStatus,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
    /// The admin's (desired) revision of this instance's config.
    pub revision: Revision,
    /// The revision the agent last reported the store to hold, if known.
    #[serde(default)]
    pub applied_revision: Option<Revision>,
    /// The namespace the instance and everything under it belong to.
    pub namespace: String,
    /// Who put it there: an operator (the agent's report no longer moves it) or the
    /// agent's environment (`default` when it names none).
    pub namespace_source: NamespaceSource,
    /// False when `namespace` names no namespace (the agent reported one that was never
    /// created): the instance is unbound, and its gateways load nothing.
    pub namespace_exists: bool,
    /// The config store its agent last said it keeps the instance in, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreInfo>,
}

/// Who decided an instance's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceSource {
    Agent,
    Operator,
}

/// Body of `PUT …/clusters/{cluster}/instances/{instance}/namespace`: moves the
/// instance (and its config) to a namespace; `null` hands the choice back to its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceNamespace {
    pub namespace: Option<String>,
}

/// A gateway node's heartbeat, kept in the store under the instance's `nodes/` with a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeHeartbeat {
    pub node_id: String,
    /// Address the node serves traffic on.
    pub address: String,
    /// Admin revision of the config the node is serving; 0 before the first load.
    pub applied_revision: Revision,
    /// When the node swapped that revision in (unix milliseconds; 0: unknown).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub applied_at_ms: i64,
    /// Unix milliseconds of this heartbeat.
    pub updated_at_ms: i64,
    /// Where the served config came from.
    #[serde(default)]
    pub config_source: ConfigSource,
    /// Health of the nodes of upstreams with health checks, and of any node currently
    /// considered down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamHealth>,
    /// Config objects the node does not serve as written, and why (an invalid plugin
    /// configuration, a missing upstream …); at most [`NodeHeartbeat::MAX_SKIPPED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedObject>,
    /// Requests a plugin counted in the node's memory because its Redis was down or
    /// slow, since the node started (`limit-count`'s `redis` policy).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redis_fallbacks: u64,
    /// Why the node serves nothing though the store holds config: its instance is
    /// bound to a namespace that does not exist, or to another namespace than the
    /// node's own (`--namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbound: Option<String>,
    /// The node's load: requests and errors over the last minute, connections and
    /// requests open now. `None` from a node too old to report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
}

/// A gateway node's load as its heartbeat reports it (M7): counts, so that every
/// reader derives the same rates from them ([`NodeLoad::requests_per_second`],
/// [`NodeLoad::error_rate`]).
///
/// The window is the last [`NodeLoad::WINDOW_SECS`] seconds: the node samples its
/// request counters once a second and reports the difference between its latest
/// sample and the one 60 samples before (a node up for less than a minute: since it
/// started). A request is counted once, when it ends (its response sent, or the
/// client gone), whichever engine or protocol served it; an error is a request
/// answered with a 5xx status (the gateway's own 500/502/503/504, or an upstream's 5xx
/// passed on). 4xx answers (404, 401, 403, 429 …) are the clients' errors and are not
/// counted as errors, as on Kong's and APISIX's dashboards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeLoad {
    /// Requests that ended in the window.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub errors: u64,
    /// Client connections open now (TCP, after the TLS handshake; HTTP/1 or HTTP/2).
    pub connections: u64,
    /// Requests being proxied now (their upstream exchange under way).
    pub in_flight: u64,
}

impl NodeLoad {
    /// The window's length, in seconds.
    pub const WINDOW_SECS: u64 = 60;

    /// Requests per second over the window: `requests / 60`.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / Self::WINDOW_SECS as f64
    }

    /// The share of the window's requests answered with a 5xx (0 to 1); `None` when
    /// the window holds no request.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// The load of several nodes together: their requests, errors, connections and
    /// requests in flight added up (so its rates are the nodes' rates together).
    pub fn sum<'a>(loads: impl IntoIterator<Item = &'a NodeLoad>) -> NodeLoad {
        loads
            .into_iter()
            .fold(NodeLoad::default(), |total, l| NodeLoad {
                requests: total.requests.saturating_add(l.requests),
                errors: total.errors.saturating_add(l.errors),
                connections: total.connections.saturating_add(l.connections),
                in_flight: total.in_flight.saturating_add(l.in_flight),
            })
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

impl NodeHeartbeat {
    /// Skipped objects listed in one heartbeat; the log has them all.
    pub const MAX_SKIPPED: usize = 100;
}

/// A config object a node skipped: its store key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedObject {
    pub key: String,
    pub reason: String,
}

/// Where a gateway node's config came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// Nothing loaded yet: every request gets 404.
    #[default]
    None,
    /// The config store, followed live.
    Store,
    /// The node's local snapshot file: the store was unreachable at start.
    LocalSnapshot,
}

/// The health of one upstream's nodes as one gateway node sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpstreamHealth {
    pub upstream_id: String,
    pub nodes: Vec<NodeHealth>,
}

/// One upstream node's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeHealth {
    pub address: String,
    pub healthy: bool,
    /// Why it is down (`active: 3 failures`, `passive: ejected …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an agent reports for one of its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentInstance {
    pub name: String,
    /// The namespace the agent's environment puts the instance in (`None`: it says
    /// nothing, which means `default` unless an operator chose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The admin revision the store holds for this instance (its `meta`), if any.
    pub revision: Option<Revision>,
    pub nodes: Vec<NodeHeartbeat>,
    /// The binding the store holds for this instance, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<InstanceBinding>,
    /// The config store the agent keeps this instance in (M5: instances of one agent may
    /// each have their own); absent from agents that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreInfo>,
}

/// Which config store holds an instance: the backend and its endpoints (`host:port`),
/// never credentials nor the keyspace root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreInfo {
    pub backend: StoreBackend,
    /// `host:port` of each server the agent talks to (none for `memory`).
    pub endpoints: Vec<String>,
}

/// The config store backends (requirement D6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Etcd,
    Redis,
    /// The in-process store of `portico demo`.
    Memory,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Etcd => "etcd",
            StoreBackend::Redis => "redis",
            StoreBackend::Memory => "memory",
        }
    }

    /// The backend named `name` (as [`StoreBackend::as_str`] spells it).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Etcd, Self::Redis, Self::Memory]
            .into_iter()
            .find(|b| b.as_str() == name)
    }
}

/// What an instance is bound to (requirement N3), as the admin tells its agent and
/// the agent writes it beside the instance's config
/// (`{root}/instances/{instance}/binding`): its namespace, whether that namespace
/// exists (a gateway serving an instance bound to a namespace that does not loads
/// nothing), and the namespace's plugin template overrides (N5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceBinding {
    pub namespace: String,
    pub exists: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugin_templates: Vec<crate::plugin::NamespacePluginTemplate>,
}

impl InstanceBinding {
    /// Every namespace id valid and every override valid, each named by its path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "namespace", &self.namespace);
        for (i, template) in self.plugin_templates.iter().enumerate() {
            if let Err(errors) = template.validate() {
                for e in errors.0 {
                    v.error(&format!("plugin_templates[{i}].{}", e.field), e.message);
                }
            }
        }
        v.finish()
    }
}

/// Body of `GET {agent}/agent/apiserver/v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentInstances {
    pub instances: Vec<AgentInstance>,
}

/// Header an admin push carries: the admin revision this change produces. The agent
/// applies the change only if the store holds exactly the revision before it.
pub const REVISION_HEADER: &str = "x-portico-revision";

/// Where an agent proves it holds its token without anyone sending it: `POST` a
/// [`TokenChallenge`], answered with a [`TokenProof`]. No token is needed to call it.
pub const PROOF_PATH: &str = "/agent/apiserver/v1/proof";

/// Body of a proof request: 32 random bytes, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenChallenge {
    pub challenge: String,
}

/// Answer to a [`TokenChallenge`]: HMAC-SHA256 of the challenge keyed by the SHA-256 of
/// the agent's token, hex (see `apikit::auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenProof {
    pub proof: String,
}

/// The content of an instance's `meta` key in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceMeta {
    pub revision: Revision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_rules() {
        let ok = Cluster {
            name: "c1".into(),
            agent_address: "http://127.0.0.1:9190".into(),
            agent_token: Some("a-token-of-twenty-chars".into()),
            kubernetes: None,
        };
        assert!(ok.validate().is_ok());
        assert!(!format!("{ok:?}").contains("twenty"));
        let bad = Cluster {
            name: "c 1".into(),
            agent_address: "127.0.0.1:9190".into(),
            agent_token: Some("short".into()),
            kubernetes: None,
        };
        let errors = bad.validate().unwrap_err().0;
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "agent_address", "agent_token"]);
        assert!(!errors[2].message.contains("short"));
        let spaced = Cluster {
            agent_token: Some("a token with spaces in it".into()),
            ..ok
        };
        assert_eq!(spaced.validate().unwrap_err().0[0].field, "agent_token");
    }

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://10.0.0.1:6443\nusers:\n- name: u\n  user:\n    token: secret-token-value\ncontexts:\n- name: ctx\n  context: {cluster: k, user: u}\ncurrent-context: ctx\n";

    fn with_kubernetes(face: KubernetesFace) -> Cluster {
        Cluster {
            name: "c1".into(),
            agent_address: "http://127.0.0.1:9190".into(),
            agent_token: None,
            kubernetes: Some(face),
        }
    }

    #[test]
    fn a_kubernetes_face_is_checked_and_its_kubeconfig_never_shown() {
        let face = KubernetesFace {
            role: KubernetesRole::Peak,
            provider: "aliyun".into(),
            context: None,
            kubeconfig: Some(KUBECONFIG.into()),
        };
        let ok = with_kubernetes(face.clone());
        assert!(ok.validate().is_ok(), "{:?}", ok.validate());
        assert!(!format!("{ok:?}").contains("secret-token-value"));
        let parsed: Cluster = serde_json::from_value(serde_json::json!({
            "name": "c1", "agent_address": "http://a:1",
            "kubernetes": {"role": "production"},
        }))
        .unwrap();
        assert_eq!(parsed.kubernetes.unwrap().role, KubernetesRole::Production);

        let cases = [
            (
                KubernetesFace {
                    provider: "a b".into(),
                    ..face.clone()
                },
                "kubernetes.provider",
            ),
            (
                KubernetesFace {
                    context: Some("other".into()),
                    ..face.clone()
                },
                "kubernetes.kubeconfig",
            ),
            (
                KubernetesFace {
                    context: Some(String::new()),
                    ..face.clone()
                },
                "kubernetes.context",
            ),
            (
                KubernetesFace {
                    kubeconfig: Some("{not yaml".into()),
                    ..face.clone()
                },
                "kubernetes.kubeconfig",
            ),
            (
                KubernetesFace {
                    kubeconfig: Some(KUBECONFIG.replace("https://10.0.0.1:6443", "10.0.0.1")),
                    ..face.clone()
                },
                "kubernetes.kubeconfig",
            ),
            (
                KubernetesFace {
                    kubeconfig: Some(KUBECONFIG.replace("current-context: ctx", "")),
                    ..face.clone()
                },
                "kubernetes.kubeconfig",
            ),
        ];
        for (face, field) in cases {
            let errors = with_kubernetes(face.clone()).validate().unwrap_err().0;
            assert_eq!(errors[0].field, field, "{face:?}");
            assert!(!errors[0].message.contains("secret-token-value"));
        }
        let with_context = KubernetesFace {
            context: Some("ctx".into()),
            kubeconfig: Some(KUBECONFIG.replace("current-context: ctx", "")),
            ..face
        };
        assert!(with_kubernetes(with_context).validate().is_ok());
    }

    #[test]
    fn load_rates_come_from_the_counts() {
        let load = NodeLoad {
            requests: 40,
            errors: 10,
            connections: 3,
            in_flight: 1,
        };
        assert_eq!(load.requests_per_second(), 40.0 / 60.0);
        assert_eq!(load.error_rate(), Some(0.25));
        assert_eq!(NodeLoad::default().error_rate(), None);
        let other = NodeLoad {
            requests: 80,
            errors: 0,
            connections: 2,
            in_flight: 0,
        };
        // Together: 120 requests of which 10 errors, whatever each node's own rate.
        let total = NodeLoad::sum([&load, &other]);
        assert_eq!(
            total,
            NodeLoad {
                requests: 120,
                errors: 10,
                connections: 5,
                in_flight: 1
            }
        );
        assert_eq!(total.requests_per_second(), 2.0);
        assert_eq!(total.error_rate(), Some(10.0 / 120.0));
        // An old node's heartbeat has no load; a new one's reads back the same.
        let beat: NodeHeartbeat = serde_json::from_str(
            r#"{"node_id": "n", "address": "a", "applied_revision": 1, "updated_at_ms": 2}"#,
        )
        .unwrap();
        assert_eq!(beat.load, None);
        let beat = NodeHeartbeat {
            load: Some(load),
            ..beat
        };
        let back: NodeHeartbeat =
            serde_json::from_str(&serde_json::to_string(&beat).unwrap()).unwrap();
        assert_eq!(back, beat);
    }
}
