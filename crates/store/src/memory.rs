//! An in-process config store with etcd's semantics, for the single-process default
//! (`portico demo`) and for tests.
//!
//! One global revision counts applied transactions; every key remembers the revision of
//! its last change; a bounded history of events lets a watch start at a past revision,
//! and asking for one older than the history (or than an explicit [`MemoryStore::compact`])
//! fails with [`StoreError::Compacted`], exactly as etcd does. Leases expire on their own
//! (a background task when a tokio runtime is around, and lazily on every call).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::{
    Compare, ConfigStore, KeyValue, LeaseId, Listing, Op, RawWatch, StoreError, StoreRevision, Txn,
    TxnOutcome, WatchBatch, WatchEvent,
};

/// How many past revisions a watch can start from.
const HISTORY: usize = 10_000;

/// How many batches a live watcher may fall behind before it loses its place.
const LIVE_BUFFER: usize = 4096;

/// How often the background task looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    /// Every applied batch, for live watchers; they filter by prefix themselves.
    events: broadcast::Sender<Arc<WatchBatch>>,
}

struct State {
    revision: StoreRevision,
    /// etcd's compact revision: watches must start at or after it (0 = nothing compacted).
    compacted: StoreRevision,
    kvs: BTreeMap<String, KeyValue>,
    /// One batch per applied revision, oldest first, every revision from `compacted` on.
    history: VecDeque<Arc<WatchBatch>>,
    leases: HashMap<i64, Lease>,
    next_lease: i64,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 1. Outside a tokio runtime leases still expire, but only
    /// when the store is next used.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(LIVE_BUFFER);
        let store = Self {
            inner: Arc::new(Mutex::new(State {
                revision: 1,
                compacted: 0,
                kvs: BTreeMap::new(),
                history: VecDeque::new(),
                leases: HashMap::new(),
                next_lease: 1,
            })),
            events,
        };
        store.spawn_lease_reaper();
        store
    }

    /// Forgets the history before `revision` (capped at the current one), as
    /// `etcdctl compact` does: a watch may start at `revision`, not before.
    pub fn compact(&self, revision: StoreRevision) {
        let mut state = self.lock();
        let revision = revision.min(state.revision);
        state.compacted = state.compacted.max(revision);
        while state.history.front().is_some_and(|b| b.revision < revision) {
            state.history.pop_front();
        }
    }

    /// The state, with leases that are due expired first, so an expired lease is never
    /// observable even between two runs of the reaper.
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.expire_leases(&mut state, Instant::now());
        state
    }

    /// Expires leases in the background so their keys' deletions reach watchers without
    /// anyone calling the store; holds only a weak reference so a dropped store stops it.
    fn spawn_lease_reaper(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let events = self.events.clone();
        handle.spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = MemoryStore {
                    inner,
                    events: events.clone(),
                };
                drop(store.lock());
            }
        });
    }

    fn expire_leases(&self, state: &mut State, now: Instant) {
        if state.leases.values().all(|l| l.deadline > now) {
            return;
        }
        let mut expired: Vec<i64> = state
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for id in expired {
            self.drop_lease(state, id);
        }
    }

    /// Removes a lease and deletes its keys in one revision.
    fn drop_lease(&self, state: &mut State, id: i64) {
        state.leases.remove(&id);
        let ops = state
            .kvs
            .values()
            .filter(|kv| kv.lease == Some(LeaseId(id)))
            .map(|kv| Op::Delete {
                key: kv.key.clone(),
            })
            .collect();
        self.apply(state, ops);
    }

    /// Applies `ops` at a new revision and publishes the batch; a transaction that
    /// changes nothing (no ops, or only deletes of missing keys) keeps the revision, as
    /// in etcd.
    fn apply(&self, state: &mut State, ops: Vec<Op>) -> StoreRevision {
        let revision = state.revision + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        mod_revision: revision,
                        lease,
                    };
                    state.kvs.insert(key, kv.clone());
                    events.push(WatchEvent::Put(kv));
                }
                Op::Delete { key } => {
                    if state.kvs.remove(&key).is_some() {
                        events.push(WatchEvent::Delete {
                            key,
                            mod_revision: revision,
                        });
                    }
                }
            }
        }
        if events.is_empty() {
            return state.revision;
        }
        state.revision = revision;
        let batch = Arc::new(WatchBatch { revision, events });
        state.history.push_back(batch.clone());
        if state.history.len() > HISTORY {
            if let Some(old) = state.history.pop_front() {
                // Every revision has a batch, so the oldest one left is `old + 1`.
                state.compacted = old.revision + 1;
            }
        }
        // No receiver is fine: nobody is watching.
        let _ = self.events.send(batch);
        revision
    }
}

fn holds(state: &State, compare: &Compare) -> bool {
    match compare {
        Compare::Absent { key } => !state.kvs.contains_key(key),
        Compare::ValueEquals { key, value } => {
            state.kvs.get(key).is_some_and(|kv| kv.value == *value)
        }
    }
}

/// The part of `batch` a watch of `prefix` from revision `from` sees, if any.
fn filter(batch: &WatchBatch, prefix: &str, from: StoreRevision) -> Option<WatchBatch> {
    if batch.revision < from {
        return None;
    }
    let events: Vec<WatchEvent> = batch
        .events
        .iter()
        .filter(|e| e.key().starts_with(prefix))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(WatchBatch {
        revision: batch.revision,
        events,
    })
}

/// What a live watch carries from one batch to the next; `None` once it has ended.
type LiveState = Option<(broadcast::Receiver<Arc<WatchBatch>>, String, StoreRevision)>;

async fn next_live(state: LiveState) -> Option<(Result<WatchBatch, StoreError>, LiveState)> {
    let (mut receiver, prefix, from) = state?;
    loop {
        match receiver.recv().await {
            Ok(batch) => {
                if let Some(b) = filter(&batch, &prefix, from) {
                    return Some((Ok(b), Some((receiver, prefix, from))));
                }
            }
            // A watcher that fell behind loses its place, as a slow etcd watcher does:
            // the consumer resumes from its last revision out of the history.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                return Some((
                    Err(StoreError::Unavailable("watcher fell behind".into())),
                    None,
                ))
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().kvs.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.lock();
        let kvs = state
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(Listing {
            revision: state.revision,
            kvs,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        txn.check_size()?;
        let mut state = self.lock();
        // etcd refuses a put with an unknown lease whether or not the compares hold.
        for op in &txn.ops {
            if let Op::Put {
                lease: Some(lease), ..
            } = op
            {
                if !state.leases.contains_key(&lease.0) {
                    return Err(StoreError::LeaseNotFound);
                }
            }
        }
        if !txn.compares.iter().all(|c| holds(&state, c)) {
            return Ok(TxnOutcome {
                succeeded: false,
                revision: state.revision,
            });
        }
        let revision = self.apply(&mut state, txn.ops);
        Ok(TxnOutcome {
            succeeded: true,
            revision,
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: StoreRevision,
    ) -> Result<RawWatch, StoreError> {
        // Subscribe under the lock so no batch falls between the replay and the live feed.
        let (replay, receiver, from) = {
            let state = self.lock();
            // As in etcd, 0 (or less) means "from now on".
            let from = if start_revision > 0 {
                start_revision
            } else {
                state.revision + 1
            };
            if from < state.compacted {
                return Err(StoreError::Compacted {
                    compact_revision: state.compacted,
                });
            }
            let replay: Vec<WatchBatch> = state
                .history
                .iter()
                .filter_map(|b| filter(b, prefix, from))
                .collect();
            (replay, self.events.subscribe(), from)
        };
        let live = futures::stream::unfold(Some((receiver, prefix.to_owned(), from)), next_live);
        Ok(futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        if ttl_secs <= 0 {
            return Err(StoreError::Rejected("lease ttl must be positive".into()));
        }
        let mut state = self.lock();
        let id = state.next_lease;
        state.next_lease += 1;
        let ttl = Duration::from_secs(ttl_secs.unsigned_abs());
        state.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        Ok(LeaseId(id))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // `lock` has already expired the lease if it was due.
        let mut state = self.lock();
        let lease = state
            .leases
            .get_mut(&lease.0)
            .ok_or(StoreError::LeaseNotFound)?;
        lease.deadline = Instant::now() + lease.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.lock();
        if !state.leases.contains_key(&lease.0) {
            return Err(StoreError::LeaseNotFound);
        }
        self.drop_lease(&mut state, lease.0);
        Ok(())
    }
}
