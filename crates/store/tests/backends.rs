//! One conformance suite run against every backend (the in-process store, a real etcd
//! and a real Redis), plus what only one backend can show: `PrefixWatcher` across an
//! etcd restart under concurrent writes, compaction while disconnected, a server that is
//! down when the store is made (etcd and Redis); for Redis, lost connections under
//! concurrent writes (resumed, nothing lost or twice), a restart without persistence
//! that sends the revision counter back (watchers relist), roots sharing one Redis and
//! passwords; the in-process store's bounded history and slow watchers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use store::etcd::EtcdStore;
use store::memory::MemoryStore;
use store::redis::{RedisStore, RedisTarget};
use store::watch::{PrefixWatcher, Update};
use store::{
    Compare, ConfigStore, LeaseId, Op, RawWatch, StoreError, StoreRevision, Txn, WatchBatch,
    WatchEvent,
};
use testkit::etcd::EtcdServer;
use testkit::redis::RedisServer;

/// Generous bound for anything that should happen "soon"; only failures wait this long.
const WAIT: Duration = Duration::from_secs(15);

/// A backend under test, with the means to compact it.
struct Backend {
    store: Arc<dyn ConfigStore>,
    compactor: Compactor,
}

enum Compactor {
    Memory(Arc<MemoryStore>),
    Etcd(EtcdServer),
    /// The server is held so it lives as long as the backend.
    Redis {
        _server: RedisServer,
        store: RedisStore,
    },
}

impl Backend {
    fn memory() -> Self {
        let memory = Arc::new(MemoryStore::new());
        Self {
            store: memory.clone(),
            compactor: Compactor::Memory(memory),
        }
    }

    async fn etcd() -> Self {
        let etcd = EtcdServer::launch();
        Self {
            store: etcd_store(&etcd).await,
            compactor: Compactor::Etcd(etcd),
        }
    }

    fn redis() -> Self {
        let redis = RedisServer::launch();
        let store = redis_store(&redis, "/portico");
        Self {
            store: Arc::new(store.clone()),
            compactor: Compactor::Redis {
                _server: redis,
                store,
            },
        }
    }

    async fn compact(&self, revision: StoreRevision) {
        match &self.compactor {
            Compactor::Memory(memory) => memory.compact(revision),
            Compactor::Etcd(etcd) => etcd.compact(revision),
            Compactor::Redis { store, .. } => store.compact(revision).await.expect("compact"),
        }
    }
}

/// Runs each listed suite function once per backend, as `memory::name`, `etcd::name`
/// and `redis::name`.
macro_rules! conformance {
    ($($suite:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $suite() {
                    super::$suite(super::Backend::memory()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $suite() {
                    super::$suite(super::Backend::etcd().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $suite() {
                    super::$suite(super::Backend::redis()).await;
                }
            )*
        }
    };
}

conformance!(
    kv_and_transactions,
    watch_replays_then_streams,
    watch_below_compaction_fails,
    leases_revoke_and_refuse,
    lease_expiry_removes_keys,
    watcher_resets_then_follows,
    watcher_relists_after_compaction,
    large_listings_are_one_snapshot,
    transactions_up_to_the_limits_apply_larger_are_refused,
);

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

fn leased(key: &str, lease: LeaseId) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: b"leased".to_vec(),
        lease: Some(lease),
    }
}

fn delete(key: &str) -> Op {
    Op::Delete {
        key: key.to_owned(),
    }
}

async fn write(store: &dyn ConfigStore, ops: Vec<Op>) -> StoreRevision {
    let outcome = store
        .txn(Txn {
            compares: vec![],
            ops,
        })
        .await
        .expect("write");
    assert!(outcome.succeeded);
    outcome.revision
}

/// Writes through an etcd that may still be coming back; a try that timed out may have
/// been applied, so only idempotent-enough writes (plain puts) go through here.
async fn write_retrying(store: &dyn ConfigStore, ops: Vec<Op>) -> StoreRevision {
    let start = Instant::now();
    loop {
        let txn = Txn {
            compares: vec![],
            ops: ops.clone(),
        };
        match store.txn(txn).await {
            Ok(outcome) => {
                assert!(outcome.succeeded);
                return outcome.revision;
            }
            Err(StoreError::Unavailable(e)) => {
                assert!(start.elapsed() < WAIT, "store still unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

fn redis_store(redis: &RedisServer, root: &str) -> RedisStore {
    let target = RedisTarget {
        host: "127.0.0.1".into(),
        port: redis
            .endpoint()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap(),
        username: None,
        password: None,
    };
    RedisStore::connect(&target, root).unwrap()
}

async fn etcd_store(etcd: &EtcdServer) -> Arc<dyn ConfigStore> {
    Arc::new(
        EtcdStore::connect(vec![etcd.endpoint()], &store::StoreOptions::default())
            .await
            .unwrap(),
    )
}

async fn next_batch(watch: &mut RawWatch) -> WatchBatch {
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("no batch in time")
        .expect("watch ended")
        .expect("watch failed")
}

/// Reads a watch until it has seen an event of revision `until` or later; every event,
/// in order. (etcd may send several revisions in one batch when it catches up.)
async fn events_until(watch: &mut RawWatch, until: StoreRevision) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = Vec::new();
    while events.last().is_none_or(|e| e.mod_revision() < until) {
        let batch = next_batch(watch).await;
        assert!(!batch.events.is_empty(), "an empty batch");
        for event in &batch.events {
            let previous = events.last().map_or(0, WatchEvent::mod_revision);
            assert!(event.mod_revision() >= previous, "out of order: {batch:?}");
            assert!(event.mod_revision() <= batch.revision, "{batch:?}");
        }
        events.extend(batch.events);
    }
    events
}

fn watch_failed(result: Result<RawWatch, StoreError>) -> StoreError {
    match result {
        Ok(_) => panic!("the watch was created"),
        Err(e) => e,
    }
}

/// The largest transaction (`TXN_MAX_OPS` operations, `TXN_MAX_BYTES` of keys and
/// values) applies, on an etcd started with its default limits too; one operation or
/// one byte more is refused and changes nothing.
async fn transactions_up_to_the_limits_apply_larger_are_refused(backend: Backend) {
    let s = backend.store.as_ref();
    let key = |i: usize| format!("/limits/{i:03}");
    let value_len = (store::TXN_MAX_BYTES - store::TXN_MAX_OPS * key(0).len()) / store::TXN_MAX_OPS;
    let value = "v".repeat(value_len);
    let full: Vec<Op> = (0..store::TXN_MAX_OPS)
        .map(|i| put(&key(i), &value))
        .collect();
    let full = Txn {
        compares: vec![],
        ops: full,
    };
    assert!(full.bytes() <= store::TXN_MAX_BYTES);
    let outcome = s.txn(full.clone()).await.expect("the largest transaction");
    assert!(outcome.succeeded);
    assert_eq!(
        s.list("/limits/").await.unwrap().kvs.len(),
        store::TXN_MAX_OPS
    );

    let mut too_many = Txn {
        compares: vec![],
        ops: (0..=store::TXN_MAX_OPS).map(|i| delete(&key(i))).collect(),
    };
    let refused = s.txn(too_many.clone()).await.unwrap_err();
    assert!(matches!(refused, StoreError::Rejected(_)), "{refused:?}");
    too_many.ops.truncate(2);
    too_many.ops[0] = put(&key(0), &"w".repeat(store::TXN_MAX_BYTES));
    let refused = s.txn(too_many).await.unwrap_err();
    assert!(matches!(refused, StoreError::Rejected(_)), "{refused:?}");
    // Nothing of either applied.
    let listing = s.list("/limits/").await.unwrap();
    assert_eq!(listing.kvs.len(), store::TXN_MAX_OPS);
    assert!(listing.kvs.iter().all(|kv| kv.value == value.as_bytes()));
}

/// A listing bigger than one gRPC answer may carry (4 MiB) comes back whole, sorted, and
/// as of one revision even while the prefix changes during the listing.
async fn large_listings_are_one_snapshot(backend: Backend) {
    let s = backend.store.clone();
    let value = "v".repeat(4 * 1024);
    // 1 300 keys of 4 KiB: 5.2 MiB; etcd takes at most 128 operations per transaction.
    for chunk in (0..1300).collect::<Vec<_>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|i| put(&format!("/big/{i:05}"), &value))
            .collect();
        write(s.as_ref(), ops).await;
    }
    let writer = tokio::spawn({
        let s = s.clone();
        async move {
            for i in 0..50 {
                write(s.as_ref(), vec![put(&format!("/big/{i:05}"), "changed")]).await;
            }
        }
    });
    let listing = s.list("/big/").await.unwrap();
    writer.await.unwrap();
    assert_eq!(listing.kvs.len(), 1300);
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    // Every value is as of the listing's revision: none newer than it.
    assert!(listing
        .kvs
        .iter()
        .all(|kv| kv.mod_revision <= listing.revision));
    assert!(listing
        .kvs
        .iter()
        .all(|kv| kv.value.len() == value.len() || kv.value == b"changed"));
    // A key that sorts right after the prefix is not part of it.
    write(s.as_ref(), vec![put("/big0", "outside")]).await;
    assert_eq!(s.list("/big/").await.unwrap().kvs.len(), 1300);
}

async fn kv_and_transactions(backend: Backend) {
    let s = backend.store.as_ref();
    let fresh = s.list("/").await.unwrap();
    assert!(fresh.revision >= 1 && fresh.kvs.is_empty(), "{fresh:?}");
    assert_eq!(s.get("/t/a").await.unwrap(), None);

    let r1 = write(
        s,
        vec![put("/t/b", "2"), put("/t/a", "1"), put("/u/c", "3")],
    )
    .await;
    assert!(r1 > fresh.revision);
    let a = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.mod_revision, a.lease),
        (&b"1"[..], r1, None)
    );

    // Sorted by key, only under the prefix, at the revision of the last write.
    let listing = s.list("/t/").await.unwrap();
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);
    assert_eq!(listing.revision, r1);

    // Failing compares change nothing and leave the revision where it was.
    let failing = [
        Compare::Absent { key: "/t/a".into() },
        Compare::ValueEquals {
            key: "/t/a".into(),
            value: b"9".to_vec(),
        },
        Compare::ValueEquals {
            key: "/t/missing".into(),
            value: b"1".to_vec(),
        },
    ];
    for compare in failing {
        let outcome = s
            .txn(Txn {
                compares: vec![compare.clone()],
                ops: vec![put("/t/x", "no"), delete("/t/a")],
            })
            .await
            .unwrap();
        assert!(!outcome.succeeded, "{compare:?} held");
        assert_eq!(outcome.revision, r1, "{compare:?} moved the revision");
    }
    assert_eq!(s.get("/t/x").await.unwrap(), None);
    assert!(s.get("/t/a").await.unwrap().is_some());

    // Passing compares apply every op at one new revision.
    let r2 = s
        .txn(Txn {
            compares: vec![
                Compare::ValueEquals {
                    key: "/t/a".into(),
                    value: b"1".to_vec(),
                },
                Compare::Absent { key: "/t/x".into() },
            ],
            ops: vec![put("/t/a", "10"), put("/t/x", "yes"), delete("/t/b")],
        })
        .await
        .unwrap();
    assert!(r2.succeeded && r2.revision > r1, "{r2:?}");
    for key in ["/t/a", "/t/x"] {
        assert_eq!(s.get(key).await.unwrap().unwrap().mod_revision, r2.revision);
    }
    assert_eq!(s.get("/t/b").await.unwrap(), None);

    // Every applied write moves the revision forward; one that changes nothing does not.
    let mut last = r2.revision;
    for i in 0..3 {
        let r = write(s, vec![put("/t/a", &i.to_string())]).await;
        assert!(r > last);
        last = r;
    }
    assert_eq!(write(s, vec![delete("/t/never")]).await, last);
    assert_eq!(s.list("/t/").await.unwrap().revision, last);
}

async fn watch_replays_then_streams(backend: Backend) {
    let s = backend.store.as_ref();
    let r1 = write(
        s,
        vec![put("/w/a", "1"), put("/w/b", "2"), put("/x/c", "3")],
    )
    .await;
    let r2 = write(s, vec![put("/w/a", "10"), delete("/w/b")]).await;
    let r_other = write(s, vec![put("/x/c", "4")]).await;

    // A watch from r1 replays both transactions of the prefix, in order, nothing else.
    let mut watch = s.watch("/w/", r1).await.unwrap();
    let events = events_until(&mut watch, r2).await;
    let seen: Vec<(&str, StoreRevision)> =
        events.iter().map(|e| (e.key(), e.mod_revision())).collect();
    assert_eq!(
        seen,
        [("/w/a", r1), ("/w/b", r1), ("/w/a", r2), ("/w/b", r2)]
    );
    assert!(matches!(&events[2], WatchEvent::Put(kv) if kv.value == b"10"));
    assert!(matches!(&events[3], WatchEvent::Delete { key, .. } if key == "/w/b"));

    // …then streams live changes, still only under the prefix.
    write(s, vec![put("/x/ignored", "x")]).await;
    let r3 = write(s, vec![put("/w/live", "y"), put("/x/also-ignored", "z")]).await;
    let live = next_batch(&mut watch).await;
    assert_eq!(live.events.len(), 1, "{live:?}");
    assert_eq!(
        (live.events[0].key(), live.events[0].mod_revision()),
        ("/w/live", r3)
    );
    let r4 = write(s, vec![delete("/w/live")]).await;
    let gone = next_batch(&mut watch).await;
    assert_eq!(
        gone.events,
        [WatchEvent::Delete {
            key: "/w/live".into(),
            mod_revision: r4
        }]
    );

    // A watch from a later revision starts there; one from the future waits for it.
    assert!(r_other > r2);
    let mut later = s.watch("/w/", r2 + 1).await.unwrap();
    let seen: Vec<(String, StoreRevision)> = events_until(&mut later, r4)
        .await
        .iter()
        .map(|e| (e.key().to_owned(), e.mod_revision()))
        .collect();
    assert_eq!(
        seen,
        [("/w/live".to_owned(), r3), ("/w/live".to_owned(), r4)]
    );
    let mut future = s.watch("/w/", r4 + 1).await.unwrap();
    let r5 = write(s, vec![put("/w/next", "n")]).await;
    let next = events_until(&mut future, r5).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].mod_revision(), r5);
}

async fn watch_below_compaction_fails(backend: Backend) {
    let s = backend.store.as_ref();
    let r1 = write(s, vec![put("/k/a", "1")]).await;
    let r2 = write(s, vec![put("/k/a", "2")]).await;
    let r3 = write(s, vec![put("/k/b", "3")]).await;
    backend.compact(r2).await;

    // The compact revision itself is still watchable, as in etcd…
    let mut watch = s.watch("/k/", r2).await.unwrap();
    let events = events_until(&mut watch, r3).await;
    let revisions: Vec<StoreRevision> = events.iter().map(WatchEvent::mod_revision).collect();
    assert_eq!(revisions, [r2, r3]);
    // …anything before fails when the watch is made, saying where history starts.
    match watch_failed(s.watch("/k/", r1).await) {
        StoreError::Compacted { compact_revision } => assert_eq!(compact_revision, r2),
        other => panic!("expected compacted, got {other}"),
    }
    // Listing is unaffected.
    assert_eq!(s.list("/k/").await.unwrap().kvs.len(), 2);
}

async fn leases_revoke_and_refuse(backend: Backend) {
    let s = backend.store.as_ref();
    let lease = s.grant_lease(30).await.unwrap();
    s.keep_alive(lease).await.unwrap();
    let r = write(s, vec![leased("/l/a", lease), leased("/l/b", lease)]).await;
    assert_eq!(s.get("/l/a").await.unwrap().unwrap().lease, Some(lease));

    let mut watch = s.watch("/l/", r + 1).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    let batch = next_batch(&mut watch).await;
    let mut deleted: Vec<&str> = batch
        .events
        .iter()
        .map(|e| match e {
            WatchEvent::Delete { key, .. } => key.as_str(),
            other => panic!("expected a delete, got {other:?}"),
        })
        .collect();
    deleted.sort_unstable();
    assert_eq!(deleted, ["/l/a", "/l/b"]);
    assert!(s.list("/l/").await.unwrap().kvs.is_empty());

    assert_eq!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound));
    assert_eq!(s.revoke_lease(lease).await, Err(StoreError::LeaseNotFound));
    let refused = s
        .txn(Txn {
            compares: vec![],
            ops: vec![leased("/l/c", lease)],
        })
        .await;
    assert_eq!(refused, Err(StoreError::LeaseNotFound));
    assert_eq!(s.get("/l/c").await.unwrap(), None);
}

async fn lease_expiry_removes_keys(backend: Backend) {
    let s = backend.store.as_ref();
    // etcd raises a 1 s TTL to its minimum (2 s with default timings).
    let kept = s.grant_lease(1).await.unwrap();
    let lapsing = s.grant_lease(1).await.unwrap();
    let r = write(
        s,
        vec![leased("/e/kept", kept), leased("/e/lapsing", lapsing)],
    )
    .await;
    let mut watch = s.watch("/e/", r + 1).await.unwrap();

    // Refresh one lease for longer than either TTL; the other one lapses meanwhile.
    let start = Instant::now();
    let mut expiry = None;
    while start.elapsed() < Duration::from_secs(4) {
        s.keep_alive(kept).await.unwrap();
        if let Ok(batch) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
            let batch = batch.expect("watch ended").expect("watch failed");
            assert!(expiry.is_none(), "a second expiry: {batch:?}");
            expiry = Some(batch);
        }
    }
    let expiry = expiry.expect("the unrefreshed lease never expired");
    assert!(
        matches!(&expiry.events[..], [WatchEvent::Delete { key, .. }] if key == "/e/lapsing"),
        "{expiry:?}"
    );
    assert_eq!(s.keep_alive(lapsing).await, Err(StoreError::LeaseNotFound));
    assert!(s.get("/e/kept").await.unwrap().is_some());

    // Without refreshes the other one goes too.
    let batch = next_batch(&mut watch).await;
    assert!(
        matches!(&batch.events[..], [WatchEvent::Delete { key, .. }] if key == "/e/kept"),
        "{batch:?}"
    );
    assert!(s.list("/e/").await.unwrap().kvs.is_empty());
}

async fn watcher_resets_then_follows(backend: Backend) {
    let store = backend.store.clone();
    write(store.as_ref(), vec![put("/p/a", "1"), put("/q/z", "0")]).await;
    let mut watcher = PrefixWatcher::new(store.clone(), "/p/");
    let mut mirror = Mirror::default();
    let first = tokio::time::timeout(WAIT, watcher.next()).await.unwrap();
    assert!(
        matches!(&first, Update::Reset(l) if l.kvs.len() == 1),
        "{first:?}"
    );
    mirror.apply(first);
    assert!(!watcher.is_disconnected());

    let r1 = write(store.as_ref(), vec![put("/p/b", "2"), put("/q/z", "1")]).await;
    write(store.as_ref(), vec![put("/q/z", "2")]).await;
    let r2 = write(store.as_ref(), vec![delete("/p/a")]).await;
    while mirror.last() != Some(r2) {
        let update = tokio::time::timeout(WAIT, watcher.next()).await.unwrap();
        assert!(matches!(update, Update::Changes(_)), "{update:?}");
        mirror.apply(update);
    }
    assert_eq!(mirror.delivered, [r1, r2]);
    assert_eq!(mirror.resets, 1);
    assert_mirrors(store.as_ref(), &mirror, "/p/").await;
}

async fn watcher_relists_after_compaction(backend: Backend) {
    compaction_relists(&backend).await;
}

/// The watcher has delivered a listing at revision R and not yet opened its stream (as
/// after a disconnect); history is compacted past R; it must come back with a full
/// listing that reflects every change, not an error and not a partial replay.
async fn compaction_relists(backend: &Backend) {
    let store = backend.store.clone();
    write(store.as_ref(), vec![put("/c/a", "1")]).await;
    let mut watcher = PrefixWatcher::new(store.clone(), "/c/");
    let mut mirror = Mirror::default();
    mirror.apply(watcher.next().await);
    for i in 0..5 {
        write(store.as_ref(), vec![put(&format!("/c/{i}"), "x")]).await;
    }
    let last = write(store.as_ref(), vec![delete("/c/a")]).await;
    backend.compact(last).await;
    let update = tokio::time::timeout(WAIT, watcher.next()).await.unwrap();
    assert!(
        matches!(&update, Update::Reset(l) if l.revision >= last),
        "{update:?}"
    );
    mirror.apply(update);
    assert_eq!(mirror.resets, 2);
    assert_mirrors(store.as_ref(), &mirror, "/c/").await;
    // And it keeps following changes after the relist.
    let rev = write(store.as_ref(), vec![put("/c/new", "y")]).await;
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    assert_eq!(mirror.last(), Some(rev));
    assert_mirrors(store.as_ref(), &mirror, "/c/").await;
}

/// Applies updates to a map, as a gateway does, checking that no revision arrives twice
/// or out of order, and recording every delivered revision.
#[derive(Default)]
struct Mirror {
    map: BTreeMap<String, Vec<u8>>,
    delivered: Vec<StoreRevision>,
    resets: usize,
    /// Revision of the last listing or event; the next batch must start after it.
    position: StoreRevision,
}

impl Mirror {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Reset(listing) => {
                self.resets += 1;
                self.position = listing.revision;
                self.map = listing
                    .kvs
                    .into_iter()
                    .map(|kv| (kv.key, kv.value))
                    .collect();
            }
            Update::Changes(batch) => {
                let first = batch.events.first().expect("an empty batch").mod_revision();
                assert!(
                    first > self.position,
                    "revision {first} delivered again (position {})",
                    self.position
                );
                for event in batch.events {
                    let rev = event.mod_revision();
                    assert!(rev >= self.position, "revision {rev} out of order");
                    if rev > self.position {
                        self.delivered.push(rev);
                        self.position = rev;
                    }
                    match event {
                        WatchEvent::Put(kv) => {
                            self.map.insert(kv.key, kv.value);
                        }
                        WatchEvent::Delete { key, .. } => {
                            self.map.remove(&key);
                        }
                    }
                }
            }
        }
    }

    fn last(&self) -> Option<StoreRevision> {
        self.delivered.last().copied()
    }
}

async fn assert_mirrors(store: &dyn ConfigStore, mirror: &Mirror, prefix: &str) {
    let listing = store.list(prefix).await.unwrap();
    let want: BTreeMap<String, Vec<u8>> = listing
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    assert_eq!(mirror.map, want);
}

/// Polls `check` until it holds; fails after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watcher_survives_a_restart_under_concurrent_writes() {
    let mut etcd = EtcdServer::launch();
    let store = etcd_store(&etcd).await;
    write(store.as_ref(), vec![put("/r/seed", "0")]).await;

    let mirror = Arc::new(Mutex::new(Mirror::default()));
    let consumer = tokio::spawn({
        let mut watcher = PrefixWatcher::new(store.clone(), "/r/");
        let mirror = mirror.clone();
        async move {
            loop {
                let update = watcher.next().await;
                mirror.lock().unwrap().apply(update);
            }
        }
    });
    eventually("the first listing", || mirror.lock().unwrap().resets == 1).await;
    let listed_at = mirror.lock().unwrap().position;

    // A writer that keeps going through the outage, retrying what etcd did not take.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let store = store.clone();
        let written = written.clone();
        async move {
            for i in 0..60 {
                let mut ops = vec![put(&format!("/r/{}", i % 7), &i.to_string())];
                if i % 3 == 0 {
                    ops.push(delete(&format!("/r/{}", (i + 3) % 7)));
                }
                write_retrying(store.as_ref(), ops).await;
                written.store(i + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    eventually("writes before the restart", || {
        written.load(Ordering::SeqCst) >= 20
    })
    .await;
    tokio::task::block_in_place(|| etcd.stop());
    let during = written.load(Ordering::SeqCst);
    // Keep etcd down long enough for the watcher and the writer to notice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| etcd.start());
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finished after the restart")
        .unwrap();
    assert!(during < 60, "the writer finished before the restart");

    let end = store.list("/r/").await.unwrap();
    eventually("the watcher caught up", || {
        mirror.lock().unwrap().last() == Some(end.revision)
    })
    .await;
    consumer.abort();

    // Nothing lost, nothing twice: exactly the revisions that touched the prefix after
    // the first listing, as etcd's own history tells them.
    let mut history = store.watch("/r/", listed_at + 1).await.unwrap();
    let mut truth: Vec<StoreRevision> = events_until(&mut history, end.revision)
        .await
        .iter()
        .map(WatchEvent::mod_revision)
        .collect();
    truth.dedup();
    let mirror = std::mem::take(&mut *mirror.lock().unwrap());
    assert_eq!(mirror.delivered, truth, "events lost or duplicated");
    assert_eq!(mirror.resets, 1, "a restart must resume, not relist");
    assert_mirrors(store.as_ref(), &mirror, "/r/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watcher_relists_when_compacted_while_disconnected() {
    let mut etcd = EtcdServer::launch();
    let store = etcd_store(&etcd).await;
    write(store.as_ref(), vec![put("/d/a", "1")]).await;
    let mut watcher = PrefixWatcher::new(store.clone(), "/d/");
    let mut mirror = Mirror::default();
    mirror.apply(watcher.next().await);
    let r = write(store.as_ref(), vec![put("/d/b", "2")]).await;
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    assert_eq!(mirror.last(), Some(r));

    // The watcher sees its stream break and starts retrying…
    tokio::task::block_in_place(|| etcd.stop());
    let idle = tokio::time::timeout(Duration::from_secs(1), watcher.next()).await;
    assert!(idle.is_err(), "an update while etcd is down: {idle:?}");
    assert!(watcher.is_disconnected());
    // …and while it is not reading, etcd comes back, moves on and compacts.
    tokio::task::block_in_place(|| etcd.start());
    write_retrying(store.as_ref(), vec![put("/d/c", "3")]).await;
    write(store.as_ref(), vec![delete("/d/a")]).await;
    let last = write(store.as_ref(), vec![put("/d/b", "22")]).await;
    etcd.compact(last);

    let update = tokio::time::timeout(WAIT, watcher.next()).await.unwrap();
    assert!(
        matches!(&update, Update::Reset(l) if l.revision >= last),
        "{update:?}"
    );
    mirror.apply(update);
    assert!(!watcher.is_disconnected());
    assert_mirrors(store.as_ref(), &mirror, "/d/").await;
    let next = write(store.as_ref(), vec![put("/d/d", "4")]).await;
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    assert_eq!(mirror.last(), Some(next));
    assert_mirrors(store.as_ref(), &mirror, "/d/").await;
}

/// A watcher started while the store's server is down waits for it: `start` brings
/// it up, a write follows, and the watcher's first listing and changes hold it.
async fn watch_until_the_server_is_up(
    store: &Arc<dyn ConfigStore>,
    start: impl FnOnce(),
) -> (PrefixWatcher, Mirror, StoreRevision) {
    let watching = tokio::spawn({
        let store = store.clone();
        async move {
            let mut watcher = PrefixWatcher::new(store, "/o/");
            let first = watcher.next().await;
            (watcher, first)
        }
    });
    tokio::task::block_in_place(start);
    let r = write_retrying(store.as_ref(), vec![put("/o/k", "v")]).await;
    let (mut watcher, first) = tokio::time::timeout(WAIT, watching)
        .await
        .expect("the watcher listed once the server was up")
        .unwrap();
    let mut mirror = Mirror::default();
    mirror.apply(first);
    while !mirror.map.contains_key("/o/k") {
        mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    }
    assert!(mirror.position >= r);
    (watcher, mirror, r)
}

/// Every kind of call fails with `Unavailable` within a few seconds while the server is
/// down.
async fn assert_all_unavailable(store: &dyn ConfigStore) {
    let bound = Duration::from_secs(6);
    let calls = async {
        let txn = Txn {
            compares: vec![],
            ops: vec![put("/o/x", "1")],
        };
        futures::join!(
            store.get("/o/x"),
            store.list("/o/"),
            store.txn(txn),
            store.watch("/o/", 1),
            store.grant_lease(5),
            store.keep_alive(LeaseId(1)),
        )
    };
    let (get, list, txn, watch, grant, keep) = tokio::time::timeout(bound, calls)
        .await
        .expect("a call blocked while the server is down");
    let unavailable = |e: &StoreError| matches!(e, StoreError::Unavailable(_));
    assert!(get.as_ref().is_err_and(unavailable), "get: {get:?}");
    assert!(list.as_ref().is_err_and(unavailable), "list: {list:?}");
    assert!(txn.as_ref().is_err_and(unavailable), "txn: {txn:?}");
    assert!(unavailable(&watch_failed(watch)), "watch");
    assert!(grant.as_ref().is_err_and(unavailable), "grant: {grant:?}");
    assert!(
        keep.as_ref().is_err_and(unavailable),
        "keep alive: {keep:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_made_while_etcd_is_down_works_once_it_is_up() {
    let mut etcd = EtcdServer::launch();
    etcd.stop();
    let store: Arc<dyn ConfigStore> = Arc::new(
        tokio::time::timeout(
            Duration::from_secs(3),
            EtcdStore::connect(vec![etcd.endpoint()], &store::StoreOptions::default()),
        )
        .await
        .expect("connect must not wait for etcd")
        .expect("connect must not fail while etcd is down"),
    );
    assert_all_unavailable(store.as_ref()).await;

    // A watcher started now waits for etcd rather than failing.
    let (mut watcher, mut mirror, _) = watch_until_the_server_is_up(&store, || etcd.start()).await;

    // The same store fails fast again during a second outage and recovers after it.
    tokio::task::block_in_place(|| etcd.stop());
    assert_all_unavailable(store.as_ref()).await;
    tokio::task::block_in_place(|| etcd.start());
    let r2 = write_retrying(store.as_ref(), vec![put("/o/k", "w")]).await;
    assert_eq!(store.get("/o/k").await.unwrap().unwrap().mod_revision, r2);
    while mirror.last() != Some(r2) {
        mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    }
    assert_mirrors(store.as_ref(), &mirror, "/o/").await;
}

#[tokio::test]
async fn memory_slow_watcher_resumes_from_history() {
    let store: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
    let mut watcher = PrefixWatcher::new(store.clone(), "/s/");
    let mut mirror = Mirror::default();
    mirror.apply(watcher.next().await);
    let first = write(store.as_ref(), vec![put("/s/0", "0")]).await;
    mirror.apply(watcher.next().await);
    assert_eq!(mirror.last(), Some(first));

    // More batches than a live watcher may fall behind by, while it is not reading.
    let mut revisions = vec![first];
    for i in 0..5_000 {
        let key = format!("/s/{}", i % 13);
        revisions.push(write(store.as_ref(), vec![put(&key, &i.to_string())]).await);
    }
    while mirror.last() != revisions.last().copied() {
        mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    }
    assert_eq!(mirror.delivered, revisions);
    assert_eq!(mirror.resets, 1, "history covers the gap; no relist");
    assert_mirrors(store.as_ref(), &mirror, "/s/").await;
}

#[tokio::test]
async fn memory_history_is_bounded() {
    let store = MemoryStore::new();
    let mut last = 0;
    for i in 0..10_050 {
        last = write(&store, vec![put("/h/k", &i.to_string())]).await;
    }
    // The last 10 000 revisions are kept, the ones before are compacted.
    let oldest = last - 9_999;
    let mut watch = store.watch("/h/", oldest).await.unwrap();
    assert_eq!(next_batch(&mut watch).await.revision, oldest);
    match watch_failed(store.watch("/h/", oldest - 1).await) {
        StoreError::Compacted { compact_revision } => assert_eq!(compact_revision, oldest),
        other => panic!("expected compacted, got {other}"),
    }
}

/// Without a tokio runtime there is no background reaper; expiry is checked on use.
#[test]
fn memory_lease_expires_without_a_runtime() {
    let store = MemoryStore::new();
    futures::executor::block_on(async {
        let lease = store.grant_lease(1).await.unwrap();
        write(&store, vec![leased("/n/1", lease)]).await;
        // The TTL itself is what is tested, so time has to pass.
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(store.get("/n/1").await.unwrap(), None);
        assert_eq!(
            store.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound)
        );
    });
}

/// A watcher whose connections are cut again and again (the server and its data stay)
/// while a writer keeps going resumes from its last revision each time: nothing lost,
/// nothing twice, no relist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_watcher_survives_lost_connections_under_concurrent_writes() {
    let redis = RedisServer::launch();
    let store: Arc<dyn ConfigStore> = Arc::new(redis_store(&redis, "/portico"));
    write(store.as_ref(), vec![put("/r/seed", "0")]).await;

    let mirror = Arc::new(Mutex::new(Mirror::default()));
    let consumer = tokio::spawn({
        let mut watcher = PrefixWatcher::new(store.clone(), "/r/");
        let mirror = mirror.clone();
        async move {
            loop {
                let update = watcher.next().await;
                mirror.lock().unwrap().apply(update);
            }
        }
    });
    eventually("the first listing", || mirror.lock().unwrap().resets == 1).await;
    let listed_at = mirror.lock().unwrap().position;

    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let store = store.clone();
        let written = written.clone();
        async move {
            for i in 0..80 {
                let mut ops = vec![put(&format!("/r/{}", i % 7), &i.to_string())];
                if i % 3 == 0 {
                    ops.push(delete(&format!("/r/{}", (i + 3) % 7)));
                }
                write_retrying(store.as_ref(), ops).await;
                written.store(i + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    for round in 1..=3 {
        eventually("writes between cuts", || {
            written.load(Ordering::SeqCst) >= round * 20
        })
        .await;
        redis.kill_clients();
    }
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finished")
        .unwrap();

    let end = store.list("/r/").await.unwrap();
    eventually("the watcher caught up", || {
        mirror.lock().unwrap().last() == Some(end.revision)
    })
    .await;
    consumer.abort();

    let mut history = store.watch("/r/", listed_at + 1).await.unwrap();
    let mut truth: Vec<StoreRevision> = events_until(&mut history, end.revision)
        .await
        .iter()
        .map(WatchEvent::mod_revision)
        .collect();
    truth.dedup();
    let mirror = std::mem::take(&mut *mirror.lock().unwrap());
    assert_eq!(truth.len(), 80, "one revision per write");
    assert_eq!(mirror.delivered, truth, "events lost or duplicated");
    assert_eq!(
        mirror.resets, 1,
        "a lost connection must resume, not relist"
    );
    assert_mirrors(store.as_ref(), &mirror, "/r/").await;
}

/// Redis restarted without persistence comes back empty, its counter at 1. Another
/// process writes more revisions than the watcher had delivered before the watcher
/// reconnects: the watcher must relist (old keys gone, new ones there), not wait for
/// revisions after its old position and skip the new ones before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_watcher_relists_when_a_restart_sends_the_revision_back() {
    let mut redis = RedisServer::launch();
    let store: Arc<dyn ConfigStore> = Arc::new(redis_store(&redis, "/portico"));
    for i in 0..30 {
        write(store.as_ref(), vec![put(&format!("/b/{}", i % 5), "old")]).await;
    }
    let mut watcher = PrefixWatcher::new(store.clone(), "/b/");
    let mut mirror = Mirror::default();
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    let last = write(store.as_ref(), vec![put("/b/x", "old")]).await;
    while mirror.position < last {
        mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    }
    let delivered = mirror.position;

    tokio::task::block_in_place(|| {
        redis.stop();
        redis.start();
    });
    // A handle that never saw the old data, as an agent restarted with Redis would be,
    // writes past the watcher's position; every revision it gets is a new one.
    let other: Arc<dyn ConfigStore> = Arc::new(redis_store(&redis, "/portico"));
    let mut revision = 0;
    let mut i = 0;
    while revision <= delivered + 5 {
        revision = write(other.as_ref(), vec![put("/b/new", &i.to_string())]).await;
        i += 1;
    }
    assert!(i > 30, "the counter started again from 1");

    let update = tokio::time::timeout(WAIT, watcher.next()).await.unwrap();
    assert!(matches!(update, Update::Reset(_)), "{update:?}");
    mirror.apply(update);
    assert_eq!(mirror.map.keys().collect::<Vec<_>>(), ["/b/new"]);
    assert_mirrors(other.as_ref(), &mirror, "/b/").await;
    // It follows new changes after the relist.
    let next = write(other.as_ref(), vec![put("/b/after", "1")]).await;
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    assert_eq!(mirror.last(), Some(next));
    assert_mirrors(other.as_ref(), &mirror, "/b/").await;
}

/// The handle that wrote before the restart hands out only revisions above its old
/// ones after it, and a watch from an old revision is refused as compacted even when
/// the new counter has passed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_handle_never_hands_out_an_old_revision_again() {
    let mut redis = RedisServer::launch();
    let store = redis_store(&redis, "/portico");
    let mut before = 0;
    for i in 0..10 {
        before = write(&store, vec![put("/h/k", &i.to_string())]).await;
    }
    tokio::task::block_in_place(|| {
        redis.stop();
        redis.start();
    });
    let other = redis_store(&redis, "/portico");
    let mut passed = 0;
    while passed <= before + 3 {
        passed = write(&other, vec![put("/h/other", "x")]).await;
    }
    let after = write_retrying(&store, vec![put("/h/k", "new")]).await;
    assert!(after > before, "{after} after {before}");
    match watch_failed(store.watch("/h/", before + 1).await) {
        StoreError::Compacted { .. } => {}
        other => panic!("expected compacted, got {other}"),
    }
    let listing = store.list("/h/").await.unwrap();
    assert!(listing.revision >= after);
    let mut watch = store.watch("/h/", listing.revision + 1).await.unwrap();
    let next = write(&store, vec![delete("/h/other")]).await;
    assert_eq!(events_until(&mut watch, next).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_watcher_relists_when_compacted_while_disconnected() {
    let redis = RedisServer::launch();
    let redis_store = redis_store(&redis, "/portico");
    let store: Arc<dyn ConfigStore> = Arc::new(redis_store.clone());
    write(store.as_ref(), vec![put("/d/a", "1")]).await;
    let mut watcher = PrefixWatcher::new(store.clone(), "/d/");
    let mut mirror = Mirror::default();
    mirror.apply(watcher.next().await);
    let r = write(store.as_ref(), vec![put("/d/b", "2")]).await;
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    assert_eq!(mirror.last(), Some(r));

    // Its connection is cut; while it is not reading, the store moves on and compacts.
    redis.kill_clients();
    write_retrying(store.as_ref(), vec![put("/d/c", "3")]).await;
    write(store.as_ref(), vec![delete("/d/a")]).await;
    let last = write(store.as_ref(), vec![put("/d/b", "22")]).await;
    redis_store.compact(last).await.unwrap();

    let update = tokio::time::timeout(WAIT, watcher.next()).await.unwrap();
    assert!(
        matches!(&update, Update::Reset(l) if l.revision >= last),
        "{update:?}"
    );
    mirror.apply(update);
    assert_mirrors(store.as_ref(), &mirror, "/d/").await;
    let next = write(store.as_ref(), vec![put("/d/d", "4")]).await;
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    assert_eq!(mirror.last(), Some(next));
    assert_mirrors(store.as_ref(), &mirror, "/d/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_made_while_redis_is_down_works_once_it_is_up() {
    let mut redis = RedisServer::launch();
    redis.stop();
    let (store, keyspace) = tokio::time::timeout(
        Duration::from_secs(3),
        store::open(&format!("{}/deployment", redis.store_url())),
    )
    .await
    .expect("open must not wait for redis")
    .expect("open must not fail while redis is down");
    assert_eq!(keyspace.root(), "/deployment");
    assert_all_unavailable(store.as_ref()).await;

    let (mut watcher, mut mirror, r) = watch_until_the_server_is_up(&store, || redis.start()).await;

    // A second outage: calls fail fast, and Redis comes back empty (no persistence);
    // the same store works again, its revisions still going forward, and the watcher
    // relists to the new content.
    tokio::task::block_in_place(|| redis.stop());
    assert_all_unavailable(store.as_ref()).await;
    tokio::task::block_in_place(|| redis.start());
    let r2 = write_retrying(store.as_ref(), vec![put("/o/k", "w")]).await;
    assert!(r2 > r, "{r2} after {r}");
    assert_eq!(store.get("/o/k").await.unwrap().unwrap().mod_revision, r2);
    while mirror.map.get("/o/k").map(Vec::as_slice) != Some(b"w") {
        mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    }
    assert_mirrors(store.as_ref(), &mirror, "/o/").await;
}

/// Two deployments (roots) share one Redis without seeing each other's keys, revisions
/// or changes, and every Redis key the backend uses carries its root.
#[tokio::test]
async fn redis_roots_share_one_server_apart() {
    let redis = RedisServer::launch();
    let (a, _) = store::open(&format!("{}/a", redis.store_url()))
        .await
        .unwrap();
    let (b, _) = store::open(&format!("{}/b", redis.store_url()))
        .await
        .unwrap();
    let mut watch_b = b.watch("/", 0).await.unwrap();
    let ra = write(a.as_ref(), vec![put("/k/1", "a"), put("/k/2", "a")]).await;
    for _ in 0..3 {
        write(a.as_ref(), vec![put("/k/1", "again")]).await;
    }
    let rb = write(b.as_ref(), vec![put("/k/1", "b")]).await;
    assert!(rb < ra + 3, "b counts its own revisions");
    assert_eq!(a.list("/").await.unwrap().kvs.len(), 2);
    let listing_b = b.list("/").await.unwrap();
    assert_eq!(listing_b.kvs.len(), 1);
    assert_eq!(listing_b.kvs[0].value, b"b");
    let batch = next_batch(&mut watch_b).await;
    assert_eq!(batch.events.len(), 1, "{batch:?}");
    let keys = redis.keys();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("{/a}:") || k.starts_with("{/b}:")),
        "{keys:?}"
    );
    assert!(keys.contains(&"{/a}:log".to_owned()), "{keys:?}");
}

/// A password protected Redis: the right password works, a wrong one is refused (not
/// "unavailable", retrying will not help) and never shows in the error.
#[tokio::test]
async fn redis_password_is_used_and_never_shown() {
    let redis = RedisServer::launch_with_password("s3cret-pw");
    let (store, _) = store::open(&redis.store_url()).await.unwrap();
    write(store.as_ref(), vec![put("/p/k", "v")]).await;
    assert!(store.get("/p/k").await.unwrap().is_some());

    let wrong = redis.store_url().replace("s3cret-pw", "wrong-pw");
    let (refused, _) = store::open(&wrong).await.unwrap();
    let e = refused.get("/p/k").await.unwrap_err();
    assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("wrong-pw"), "{e:?}");
}

/// The log keeps the last `HISTORY` revisions, like the in-process store; a watch from
/// before them is refused, naming the oldest one kept.
#[tokio::test]
async fn redis_history_is_bounded() {
    let redis = RedisServer::launch();
    let store = redis_store(&redis, "/portico");
    let history = store::redis::HISTORY as StoreRevision;
    let mut last = 0;
    for i in 0..history + 50 {
        last = write(&store, vec![put("/h/k", &i.to_string())]).await;
    }
    let oldest = last - (history - 1);
    let mut watch = store.watch("/h/", oldest).await.unwrap();
    assert_eq!(next_batch(&mut watch).await.revision, oldest);
    match watch_failed(store.watch("/h/", oldest - 1).await) {
        StoreError::Compacted { compact_revision } => assert_eq!(compact_revision, oldest),
        other => panic!("expected compacted, got {other}"),
    }
    assert_eq!(redis.command("XLEN {/portico}:log"), format!(":{history}"));
}
