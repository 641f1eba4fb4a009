//! An in-process config store with etcd's semantics, for the single-process default
//! (`portico demo`) and for tests.
//!
//! One global revision counts applied transactions; every key remembers the revision of
//! its last change; a bounded history of events lets a watch start at a past revision,
//! and asking for one older than the history (or than an explicit [`MemoryStore::compact`])
//! fails with [`StoreError::Compacted`], exactly as etcd does. Leases expire on their own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{
    Compare, ConfigStore, KeyValue, LeaseId, Listing, Op, RawWatch, StoreError, StoreRevision, Txn,
    TxnOutcome, WatchBatch, WatchEvent,
};

/// How many past revisions a watch can start from.
const HISTORY: usize = 10_000;

#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    /// Every applied batch, for live watchers; they filter by prefix themselves.
    events: broadcast::Sender<Arc<WatchBatch>>,
}

struct State {
    revision: StoreRevision,
    /// Oldest revision still in `history` (everything before was compacted).
    compacted: StoreRevision,
    kvs: BTreeMap<String, KeyValue>,
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
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
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

    /// Forgets history up to and including `revision`, as `etcdctl compact` does.
    pub fn compact(&self, revision: StoreRevision) {
        let mut state = self.lock();
        state.compacted = state.compacted.max(revision);
        while state
            .history
            .front()
            .is_some_and(|b| b.revision <= revision)
        {
            state.history.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires leases in the background; holds only a weak reference so a dropped
    /// store stops its reaper.
    fn spawn_lease_reaper(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let events = self.events.clone();
        handle.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = MemoryStore {
                    inner,
                    events: events.clone(),
                };
                store.expire_leases(Instant::now());
            }
        });
    }

    fn expire_leases(&self, now: Instant) {
        let mut state = self.lock();
        let expired: Vec<i64> = state
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(&mut state, id);
        }
    }

    /// Removes a lease and deletes its keys in one revision.
    fn drop_lease(&self, state: &mut State, id: i64) {
        state.leases.remove(&id);
        let keys: Vec<String> = state
            .kvs
            .values()
            .filter(|kv| kv.lease == Some(LeaseId(id)))
            .map(|kv| kv.key.clone())
            .collect();
        if !keys.is_empty() {
            let ops = keys.into_iter().map(|key| Op::Delete { key }).collect();
            self.apply(state, ops);
        }
    }

    /// Applies `ops` at a new revision and publishes the batch.
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
                state.compacted = old.revision;
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
        let mut state = self.lock();
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
        let (replay, receiver) = {
            let state = self.lock();
            if start_revision <= state.compacted {
                return Err(StoreError::Compacted {
                    compact_revision: state.compacted,
                });
            }
            let replay: Vec<WatchBatch> = state
                .history
                .iter()
                .filter_map(|b| filter(b, prefix, start_revision))
                .collect();
            (replay, self.events.subscribe())
        };
        let prefix = prefix.to_owned();
        let live = futures::stream::unfold(
            (receiver, prefix, start_revision),
            |(mut receiver, prefix, from)| async move {
                loop {
                    match receiver.recv().await {
                        Ok(batch) => {
                            if let Some(b) = filter(&batch, &prefix, from) {
                                return Some((Ok(b), (receiver, prefix, from)));
                            }
                        }
                        // A watcher that fell behind loses its place, like a slow etcd
                        // watcher: the consumer resumes from its last revision.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((
                                Err(StoreError::Unavailable("watcher fell behind".into())),
                                (receiver, prefix, from),
                            ))
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        use futures::StreamExt;
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
        let mut state = self.lock();
        let now = Instant::now();
        match state.leases.get_mut(&lease.0) {
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                Ok(())
            }
            Some(_) => {
                self.drop_lease(&mut state, lease.0);
                Err(StoreError::LeaseNotFound)
            }
            None => Err(StoreError::LeaseNotFound),
        }
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
