//! One conformance suite run against every backend (the in-process store and a real
//! etcd), plus the resilience of `PrefixWatcher` across an etcd restart and compaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use store::etcd::EtcdStore;
use store::memory::MemoryStore;
use store::watch::{PrefixWatcher, Update};
use store::{Compare, ConfigStore, Op, StoreError, Txn, WatchEvent};
use testkit::etcd::EtcdServer;

const WAIT: Duration = Duration::from_secs(10);

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

async fn write(store: &dyn ConfigStore, ops: Vec<Op>) -> i64 {
    let outcome = store
        .txn(Txn {
            compares: vec![],
            ops,
        })
        .await
        .unwrap();
    assert!(outcome.succeeded);
    outcome.revision
}

async fn etcd_store(etcd: &EtcdServer) -> Arc<dyn ConfigStore> {
    Arc::new(EtcdStore::connect(vec![etcd.client_url()]).await.unwrap())
}

#[tokio::test]
async fn memory_conforms() {
    conformance(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn etcd_conforms() {
    let etcd = EtcdServer::launch();
    conformance(etcd_store(&etcd).await).await;
}

async fn conformance(store: Arc<dyn ConfigStore>) {
    let s = store.as_ref();
    assert_eq!(s.get("/t/a").await.unwrap(), None);
    let r1 = write(
        s,
        vec![put("/t/a", "1"), put("/t/b", "2"), put("/u/c", "3")],
    )
    .await;
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision),
        (b"1".as_slice(), r1)
    );

    let listing = s.list("/t/").await.unwrap();
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);
    assert!(listing.revision >= r1);

    // Compares: a failed one changes nothing; passing ones apply all ops at one revision.
    let failed = s
        .txn(Txn {
            compares: vec![Compare::Absent { key: "/t/a".into() }],
            ops: vec![put("/t/x", "no")],
        })
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(s.get("/t/x").await.unwrap(), None);
    let wrong_value = s
        .txn(Txn {
            compares: vec![Compare::ValueEquals {
                key: "/t/a".into(),
                value: b"9".to_vec(),
            }],
            ops: vec![put("/t/x", "no")],
        })
        .await
        .unwrap();
    assert!(!wrong_value.succeeded);
    let ok = s
        .txn(Txn {
            compares: vec![
                Compare::ValueEquals {
                    key: "/t/a".into(),
                    value: b"1".to_vec(),
                },
                Compare::Absent { key: "/t/x".into() },
            ],
            ops: vec![put("/t/a", "10"), Op::Delete { key: "/t/b".into() }],
        })
        .await
        .unwrap();
    assert!(ok.succeeded && ok.revision > r1);

    // A watch from r1 replays both transactions, in order, and only under the prefix.
    let mut watch = s.watch("/t/", r1).await.unwrap();
    use futures::StreamExt;
    let mut events = Vec::new();
    while events.len() < 4 {
        let batch = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events.extend(batch.events);
    }
    let revisions: Vec<i64> = events.iter().map(WatchEvent::mod_revision).collect();
    assert_eq!(revisions, [r1, r1, ok.revision, ok.revision]);
    assert!(matches!(&events[2], WatchEvent::Put(kv) if kv.value == b"10"));
    assert!(matches!(&events[3], WatchEvent::Delete { key, .. } if key == "/t/b"));
    // …then streams live changes.
    let r3 = write(s, vec![put("/u/ignored", "x")]).await;
    let r4 = write(s, vec![put("/t/live", "y")]).await;
    assert!(r4 > r3);
    let live = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(live.events[0].key(), "/t/live");
    assert_eq!(live.events[0].mod_revision(), r4);

    // Leases: keys vanish when the lease is revoked, and a revoked lease is gone.
    let lease = s.grant_lease(5).await.unwrap();
    s.keep_alive(lease).await.unwrap();
    write(
        s,
        vec![Op::Put {
            key: "/t/leased".into(),
            value: b"hb".to_vec(),
            lease: Some(lease),
        }],
    )
    .await;
    assert!(s.get("/t/leased").await.unwrap().unwrap().lease == Some(lease));
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get("/t/leased").await.unwrap(), None);
    assert_eq!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound));
}

#[tokio::test]
async fn memory_lease_expires_on_its_own() {
    let s = MemoryStore::new();
    let lease = s.grant_lease(1).await.unwrap();
    write(
        &s,
        vec![Op::Put {
            key: "/n/1".into(),
            value: b"hb".to_vec(),
            lease: Some(lease),
        }],
    )
    .await;
    tokio::time::timeout(WAIT, async {
        while s.get("/n/1").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("leased key never expired");
}

#[tokio::test]
async fn memory_watch_below_history_is_compacted() {
    let s = MemoryStore::new();
    let r = write(&s, vec![put("/a", "1")]).await;
    write(&s, vec![put("/a", "2")]).await;
    s.compact(r);
    match s.watch("/", r).await {
        Err(StoreError::Compacted { compact_revision }) => assert_eq!(compact_revision, r),
        other => panic!("expected compacted, got {:?}", other.map(|_| ())),
    }
}

/// Applies updates to a map, as a gateway does, recording every delivered revision.
#[derive(Default)]
struct Mirror {
    map: BTreeMap<String, Vec<u8>>,
    delivered: Vec<i64>,
    resets: usize,
}

impl Mirror {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Reset(listing) => {
                self.resets += 1;
                self.map = listing
                    .kvs
                    .into_iter()
                    .map(|kv| (kv.key, kv.value))
                    .collect();
            }
            Update::Changes(batch) => {
                for event in batch.events {
                    let rev = event.mod_revision();
                    assert!(
                        self.delivered.last().is_none_or(|last| *last <= rev),
                        "revision {rev} delivered out of order"
                    );
                    if self.delivered.last() != Some(&rev) {
                        self.delivered.push(rev);
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

#[tokio::test]
async fn watcher_survives_an_etcd_restart_without_loss_or_duplicates() {
    let mut etcd = EtcdServer::launch();
    let store = etcd_store(&etcd).await;
    let mut watcher = PrefixWatcher::new(store.clone(), "/w/");
    let mut mirror = Mirror::default();
    mirror.apply(watcher.next().await);
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(write(store.as_ref(), vec![put(&format!("/w/{i}"), "before")]).await);
    }
    while mirror.delivered.last() != revisions.last() {
        mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    }

    etcd.stop();
    // While etcd is down the watcher waits; it does not invent updates.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watcher.next())
            .await
            .is_err()
    );
    etcd.start();

    for i in 0..5 {
        let ops = vec![
            put(&format!("/w/{i}"), "after"),
            Op::Delete {
                key: format!("/w/{}", (i + 1) % 5),
            },
        ];
        revisions.push(write(store.as_ref(), ops).await);
    }
    while mirror.delivered.last() != revisions.last() {
        let update = tokio::time::timeout(WAIT, watcher.next())
            .await
            .expect("watcher resumed after the restart");
        mirror.apply(update);
    }
    assert_eq!(mirror.delivered, revisions, "events lost or duplicated");
    assert_eq!(mirror.resets, 1, "a restart must resume, not relist");
    assert_mirrors(store.as_ref(), &mirror, "/w/").await;
}

#[tokio::test]
async fn watcher_relists_after_compaction() {
    let etcd = EtcdServer::launch();
    let store = etcd_store(&etcd).await;
    compaction_relists(store, |rev| etcd.compact(rev)).await;
}

#[tokio::test]
async fn memory_watcher_relists_after_compaction() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn ConfigStore> = memory.clone();
    compaction_relists(store, |rev| memory.compact(rev)).await;
}

/// The watcher has delivered a listing at revision R and not yet opened its stream (as
/// after a disconnect); history is compacted past R; it must come back with a full
/// listing that reflects every change, not an error and not a partial replay.
async fn compaction_relists(store: Arc<dyn ConfigStore>, compact: impl Fn(i64)) {
    write(store.as_ref(), vec![put("/c/a", "1")]).await;
    let mut watcher = PrefixWatcher::new(store.clone(), "/c/");
    let mut mirror = Mirror::default();
    mirror.apply(watcher.next().await);
    for i in 0..5 {
        write(store.as_ref(), vec![put(&format!("/c/{i}"), "x")]).await;
    }
    let last = write(store.as_ref(), vec![Op::Delete { key: "/c/a".into() }]).await;
    compact(last);
    let update = tokio::time::timeout(WAIT, watcher.next()).await.unwrap();
    assert!(matches!(update, Update::Reset(_)), "{update:?}");
    mirror.apply(update);
    assert_eq!(mirror.resets, 2);
    assert_mirrors(store.as_ref(), &mirror, "/c/").await;
    // And it keeps following changes after the relist.
    let rev = write(store.as_ref(), vec![put("/c/new", "y")]).await;
    mirror.apply(tokio::time::timeout(WAIT, watcher.next()).await.unwrap());
    assert_eq!(mirror.delivered.last(), Some(&rev));
    assert_mirrors(store.as_ref(), &mirror, "/c/").await;
}
