//! The config store: where agents write an instance's config and gateways watch it.
//!
//! [`ConfigStore`] is the small, etcd-shaped interface every backend implements: get,
//! list by prefix, a transaction of compares and puts/deletes that yields a revision,
//! a watch from a revision, and leases. Backends: [`etcd::EtcdStore`] (production),
//! [`redis::RedisStore`] (production, for sites that run Redis rather than etcd: every
//! call one Lua script, a stream as the change log; its trade-offs in
//! `docs/decisions.md`) and [`memory::MemoryStore`] (the single-process default and
//! tests). [`watch::PrefixWatcher`]
//! turns a backend's raw watch into a stream that survives restarts and compaction, and
//! [`keys::Keyspace`] is the one place store keys are spelled.

pub mod etcd;
pub mod keys;
pub mod memory;
pub mod redis;
pub mod watch;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A store revision (etcd's `mod_revision` / header revision). Unrelated to the
/// admin's [`model::snapshot::Revision`], which is kept in each instance's `meta` key.
pub type StoreRevision = i64;

/// Lease id; keys put with a lease vanish when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the last change to this key.
    pub mod_revision: StoreRevision,
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix and the store revision they were read at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub revision: StoreRevision,
    pub kvs: Vec<KeyValue>,
}

/// A condition a transaction checks before applying its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent { key: String },
    /// The key exists with exactly this value.
    ValueEquals { key: String, value: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

/// All compares must hold for the operations to apply, atomically, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

/// The most operations (and compares) one transaction may carry: etcd's default
/// `--max-txn-ops`, which a store started the usual way enforces. Every backend refuses
/// more, so a writer that works on one works on all; larger writes are split (see the
/// agent's snapshots).
pub const TXN_MAX_OPS: usize = 128;

/// The most key and value bytes one transaction may carry: well under etcd's default
/// `--max-request-bytes` (1.5 MiB), leaving room for the request's framing.
pub const TXN_MAX_BYTES: usize = 1024 * 1024;

impl Compare {
    /// Bytes of keys and values it sends.
    pub fn bytes(&self) -> usize {
        match self {
            Compare::Absent { key } => key.len(),
            Compare::ValueEquals { key, value } => key.len() + value.len(),
        }
    }
}

impl Op {
    /// Bytes of keys and values it sends.
    pub fn bytes(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
        }
    }
}

impl Txn {
    /// Bytes of keys and values the transaction sends.
    pub fn bytes(&self) -> usize {
        self.compares.iter().map(Compare::bytes).sum::<usize>()
            + self.ops.iter().map(Op::bytes).sum::<usize>()
    }

    /// `Err` when the transaction is larger than [`TXN_MAX_OPS`] or [`TXN_MAX_BYTES`].
    pub fn check_size(&self) -> Result<(), StoreError> {
        if self.ops.len() > TXN_MAX_OPS || self.compares.len() > TXN_MAX_OPS {
            return Err(StoreError::Rejected(format!(
                "a transaction takes at most {TXN_MAX_OPS} operations and compares, this one has {} and {}",
                self.ops.len(),
                self.compares.len()
            )));
        }
        let bytes = self.bytes();
        if bytes > TXN_MAX_BYTES {
            return Err(StoreError::Rejected(format!(
                "a transaction carries at most {TXN_MAX_BYTES} bytes of keys and values, this one {bytes}"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// False when a compare failed; nothing was changed then.
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged when it did not apply).
    pub revision: StoreRevision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete {
        key: String,
        mod_revision: StoreRevision,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn mod_revision(&self) -> StoreRevision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Events of one or more store revisions (transactions), in revision order; etcd may
/// deliver several transactions in one response, the in-process store delivers one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The store revision when the batch was sent (at least its last event's).
    pub revision: StoreRevision,
    pub events: Vec<WatchEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; retrying later is safe.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history the store no longer keeps; relist, then watch again.
    #[error("revision compacted (compact revision {compact_revision})")]
    Compacted { compact_revision: StoreRevision },
    /// The lease expired or never existed.
    #[error("lease not found")]
    LeaseNotFound,
    #[error("invalid store url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The store refused the request; retrying the same request will not help.
    #[error("store refused the request: {0}")]
    Rejected(String),
}

/// A stream of batches from a raw watch; ends or yields an error when the watch breaks.
pub type RawWatch = BoxStream<'static, Result<WatchBatch, StoreError>>;

/// The interface every config-store backend implements.
#[async_trait]
pub trait ConfigStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under `prefix`, sorted by key, with the revision they were read at.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Changes under `prefix` from `start_revision` (inclusive) on. Fails with
    /// [`StoreError::Compacted`] when that revision is no longer kept.
    async fn watch(
        &self,
        prefix: &str,
        start_revision: StoreRevision,
    ) -> Result<RawWatch, StoreError>;

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId, StoreError>;

    /// Refreshes the lease once; [`StoreError::LeaseNotFound`] when it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
}

/// Opens the store named by `url`, with the keyspace root its path gives:
/// `etcd://host:port[,host:port…][/root]`, `redis://[user:password@]host:port[/root]`
/// (the root also prefixes every Redis key the backend uses; user and password
/// percent-encoded) or `memory://[/root]` (a fresh in-process store; share one `Arc` to
/// use it from several components). The root defaults to `/portico`, so several
/// deployments can share one etcd or Redis. Errors never show a password.
pub async fn open(url: &str) -> Result<(Arc<dyn ConfigStore>, keys::Keyspace), StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// How an etcd store is reached beyond its URL: TLS and an etcd user.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub tls: Option<StoreTls>,
    pub user: Option<StoreUser>,
}

/// TLS towards etcd: the CA its certificate chains to, and optionally a client
/// certificate (etcd's `--client-cert-auth`). PEM contents; `Debug` leaves them out.
#[derive(Clone, Default)]
pub struct StoreTls {
    pub ca: Vec<u8>,
    pub client_cert: Option<Vec<u8>>,
    pub client_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTls")
            .field("client_certificate", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// An etcd user and its password; `Debug` leaves the password out.
#[derive(Clone)]
pub struct StoreUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for StoreUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// [`open`] with TLS and an etcd user (ignored for `memory://` and `redis://`).
pub async fn open_with(
    url: &str,
    options: &StoreOptions,
) -> Result<(Arc<dyn ConfigStore>, keys::Keyspace), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected etcd://host:port, redis://host:port or memory://"))?;
    let (hosts, root) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let keyspace = if root.is_empty() || root == "/" {
        keys::Keyspace::default()
    } else {
        keys::Keyspace::new(root).map_err(|reason| invalid(&reason))?
    };
    match scheme {
        "etcd" => {
            let hosts: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            if hosts.is_empty() {
                return Err(invalid("no etcd endpoint given"));
            }
            let store = etcd::EtcdStore::connect(hosts, options).await?;
            Ok((Arc::new(store), keyspace))
        }
        "redis" => {
            let target = redis_target(hosts).map_err(|reason| invalid(&reason))?;
            let store = redis::RedisStore::connect(&target, keyspace.root())
                .map_err(|_| invalid("not a redis address"))?;
            Ok((Arc::new(store), keyspace))
        }
        "memory" => Ok((Arc::new(memory::MemoryStore::new()), keyspace)),
        other => Err(invalid(&format!("unknown scheme {other:?}"))),
    }
}

/// What a store URL says about its backend, for reports: the kind and the endpoints,
/// never credentials nor the root (`None` for a URL [`open`] would refuse).
pub fn describe_url(url: &str) -> Option<model::cluster::StoreInfo> {
    use model::cluster::StoreBackend;
    let (scheme, rest) = url.split_once("://")?;
    let hosts = rest.split('/').next().unwrap_or_default();
    let (backend, endpoints) = match scheme {
        "etcd" => (
            StoreBackend::Etcd,
            hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        "redis" => {
            let target = redis_target(hosts).ok()?;
            (
                StoreBackend::Redis,
                vec![format!("{}:{}", target.host, target.port)],
            )
        }
        "memory" => (StoreBackend::Memory, Vec::new()),
        _ => return None,
    };
    Some(model::cluster::StoreInfo { backend, endpoints })
}

/// `url` with the password of its user info (`scheme://user:password@…`) replaced,
/// so it can go into errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..])
}

/// `[user:password@]host:port` of a `redis://` URL, user and password percent-decoded.
fn redis_target(authority: &str) -> Result<redis::RedisTarget, String> {
    let (userinfo, address) = match authority.rsplit_once('@') {
        Some((userinfo, address)) => (Some(userinfo), address),
        None => (None, authority),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or("expected redis://[user:password@]host:port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no redis host given".to_owned());
    }
    let port: u16 = port.parse().map_err(|_| "the redis port is not a number")?;
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, password) = match info.split_once(':') {
                Some((user, password)) => (user, Some(percent_decode(password)?)),
                None => (info, None),
            };
            let user = percent_decode(user)?;
            ((!user.is_empty()).then_some(user), password)
        }
    };
    Ok(redis::RedisTarget {
        host: host.to_owned(),
        port,
        username,
        password,
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad percent escape in the user info")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user info is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_parse_and_never_show_the_password() {
        let target = redis_target("app:p%40ss%3Aw@127.0.0.1:6380").unwrap();
        assert_eq!(
            (target.username.as_deref(), target.password.as_deref()),
            (Some("app"), Some("p@ss:w"))
        );
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 6380));
        let only_password = redis_target(":secret@h:1").unwrap();
        assert_eq!(only_password.username, None);
        assert_eq!(only_password.password.as_deref(), Some("secret"));
        assert!(redis_target("h").is_err());
        assert_eq!(
            redact_url("redis://app:secret@h:1/root"),
            "redis://app:<redacted>@h:1/root"
        );
        assert_eq!(redact_url("etcd://h:1/root"), "etcd://h:1/root");
        assert_eq!(
            describe_url("redis://app:secret@h:1/root"),
            Some(model::cluster::StoreInfo {
                backend: model::cluster::StoreBackend::Redis,
                endpoints: vec!["h:1".into()]
            })
        );
        assert_eq!(
            describe_url("etcd://a:1,b:2/root").map(|i| i.endpoints),
            Some(vec!["a:1".to_owned(), "b:2".to_owned()])
        );
    }

    #[tokio::test]
    async fn invalid_urls_are_refused_without_their_password() {
        for url in [
            "redis://u:secret@h/root",
            "redis://u:secret@h:x",
            "nope://u:secret@h:1",
        ] {
            let Err(e) = open(url).await else {
                panic!("{url} opened")
            };
            assert!(matches!(e, StoreError::InvalidUrl { .. }), "{e:?}");
            assert!(!format!("{e} {e:?}").contains("secret"), "{e:?}");
        }
    }
}
