//! The config store: where agents write an instance's config and gateways watch it.
//!
//! [`ConfigStore`] is the small, etcd-shaped interface every backend implements: get,
//! list by prefix, a transaction of compares and puts/deletes that yields a revision,
//! a watch from a revision, and leases. Backends: [`etcd::EtcdStore`] (production) and
//! [`memory::MemoryStore`] (the single-process default and tests). [`watch::PrefixWatcher`]
//! turns a backend's raw watch into a stream that survives restarts and compaction, and
//! [`keys::Keyspace`] is the one place store keys are spelled.

pub mod etcd;
pub mod keys;
pub mod memory;
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
/// `etcd://host:port[,host:port…][/root]` or `memory://[/root]` (a fresh in-process
/// store; share one `Arc` to use it from several components). The root defaults to
/// `/portico`, so several deployments can share one etcd.
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

/// [`open`] with TLS and an etcd user (ignored for `memory://`).
pub async fn open_with(
    url: &str,
    options: &StoreOptions,
) -> Result<(Arc<dyn ConfigStore>, keys::Keyspace), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected etcd://host:port or memory://"))?;
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
        "memory" => Ok((Arc::new(memory::MemoryStore::new()), keyspace)),
        other => Err(invalid(&format!("unknown scheme {other:?}"))),
    }
}
