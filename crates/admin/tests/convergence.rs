//! Convergence seen from the admin with real gateway nodes on an agent's store: each
//! revision's history (the nodes it had to reach, reached, how long it took, p50/p99),
//! and one node cut off from the store's changes showing "1 of 2" until it heals.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{route, upstream, wait_until, TestAdmin, TestAgent, TestGateway};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use store::{
    ConfigStore, KeyValue, LeaseId, Listing, RawWatch, StoreError, StoreRevision, Txn, TxnOutcome,
};
use tokio::sync::watch;

const INSTANCE: &str = "/clusters/c1/instances/instance_a";

/// Waits until the admin lists exactly `ids` as the instance's online nodes.
async fn online(admin: &TestAdmin, ids: &[&str]) {
    wait_until(&format!("nodes {ids:?} online"), || async {
        let body = admin.get(&format!("{INSTANCE}/nodes")).await.body;
        let mut seen: Vec<&str> = body["items"]
            .as_array()?
            .iter()
            .filter_map(|n| n["node_id"].as_str())
            .collect();
        seen.sort_unstable();
        (seen == ids).then_some(())
    })
    .await;
}

/// Creates a route of its own (one revision each); answers the revision it made.
async fn change(admin: &TestAdmin, id: &str) -> u64 {
    let answer = admin
        .send(
            "POST",
            &format!("{INSTANCE}/routes"),
            json!({"id": id, "paths": [format!("/{id}/*")], "upstream_id": "u"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    admin.instance("c1", "instance_a").await["revision"]
        .as_u64()
        .unwrap()
}

/// Waits until the history's newest `last` revisions all converged; answers it.
async fn history_converged(admin: &TestAdmin, last: usize) -> Value {
    wait_until("the history shows every revision converged", || async {
        let body = admin
            .get(&format!("{INSTANCE}/convergence/history?last={last}"))
            .await
            .body;
        let items = body["items"].as_array()?;
        (items.len() == last && items.iter().all(|i| i["converged"] == true)).then_some(body)
    })
    .await
}

/// Several revisions reach two nodes: the history answers each one reached by 2 of 2
/// with its time, and their p50/p99/max; a node that appears after some revisions is
/// expected only for those committed once it was online; `last` is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_revision_records_when_it_reached_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_millis(100)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    let answer = admin
        .send(
            "POST",
            &format!("{INSTANCE}/upstreams"),
            upstream("u", testkit::free_port()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);

    let store: Arc<dyn ConfigStore> = agent.store.clone();
    let a = TestGateway::start("gw-a", store.clone(), agent.keyspace.clone()).await;
    let b = TestGateway::start("gw-b", store.clone(), agent.keyspace.clone()).await;
    online(&admin, &["gw-a", "gw-b"]).await;

    // Three revisions, each committed while both nodes are online.
    let mut revisions = Vec::new();
    for id in ["r1", "r2", "r3"] {
        revisions.push(change(&admin, id).await);
    }
    revisions.reverse(); // newest first, as the history lists them
    let history = history_converged(&admin, 3).await;
    let listed: Vec<u64> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, revisions, "{history}");
    assert_eq!(history["revision"], revisions[0], "{history}");
    let mut times = Vec::new();
    for item in history["items"].as_array().unwrap() {
        assert_eq!(
            (&item["expected"], &item["reached"]),
            (&json!(2), &json!(2)),
            "{item}"
        );
        assert_eq!(item["behind"], json!([]), "{item}");
        let took = item["took_ms"]
            .as_i64()
            .expect("a converged revision's time");
        assert!(took >= 0, "{item}");
        assert!(
            item["committed_at_ms"].as_i64().unwrap() > 0,
            "a commit time: {item}"
        );
        times.push(took);
    }
    // Nearest rank over three times: p50 the second smallest, p99 the largest.
    times.sort_unstable();
    let summary = &history["summary"];
    assert_eq!(summary["count"], 3, "{history}");
    assert_eq!(summary["p50_ms"], times[1], "{history}");
    assert_eq!(summary["p99_ms"], times[2], "{history}");
    assert_eq!(summary["max_ms"], times[2], "{history}");

    // A third node appears: the revisions before it do not wait for it, the next does.
    let c = TestGateway::start("gw-c", store.clone(), agent.keyspace.clone()).await;
    online(&admin, &["gw-a", "gw-b", "gw-c"]).await;
    let fourth = change(&admin, "r4").await;
    let history = history_converged(&admin, 4).await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items[0]["revision"], fourth, "{history}");
    assert_eq!(
        (&items[0]["expected"], &items[0]["reached"]),
        (&json!(3), &json!(3)),
        "{history}"
    );
    for item in &items[1..] {
        assert_eq!(
            (&item["expected"], &item["reached"]),
            (&json!(2), &json!(2)),
            "{item}"
        );
    }
    assert_eq!(history["summary"]["count"], 4, "{history}");
    // The default length lists them all (fewer than 20), newest first.
    let all = admin
        .get(&format!("{INSTANCE}/convergence/history"))
        .await
        .body;
    assert_eq!(all["items"][0]["revision"], fourth, "{all}");
    assert!(all["items"].as_array().unwrap().len() >= 4, "{all}");

    // `last` out of range, or not a number, is refused naming it.
    for (last, status) in [
        ("0", StatusCode::UNPROCESSABLE_ENTITY),
        ("201", StatusCode::UNPROCESSABLE_ENTITY),
        ("many", StatusCode::BAD_REQUEST),
    ] {
        let answer = admin
            .get(&format!("{INSTANCE}/convergence/history?last={last}"))
            .await;
        assert_eq!(answer.status, status, "last={last}: {}", answer.body);
        assert_eq!(
            answer.body["details"][0]["field"], "last",
            "{}",
            answer.body
        );
    }

    for node in [a, b, c] {
        node.stop().await;
    }
    admin.stop().await;
}

/// A store whose changes a node can stop receiving: while `cut`, `list` and `watch`
/// fail as unreachable and open watches end, as when etcd is partitioned from the
/// node. Leases and transactions still go through, so the node keeps writing its
/// heartbeat: were they cut too, its lease would run out and the admin would see the
/// node gone rather than lagging — the case to show is a node that is online and
/// behind.
struct WatchCut {
    inner: Arc<dyn ConfigStore>,
    cut: watch::Sender<bool>,
}

impl WatchCut {
    fn check(&self) -> Result<(), StoreError> {
        if *self.cut.borrow() {
            return Err(StoreError::Unavailable("cut off by the test".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ConfigStore for WatchCut {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.check()?;
        self.inner.list(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, start: StoreRevision) -> Result<RawWatch, StoreError> {
        self.check()?;
        let stream = self.inner.watch(prefix, start).await?;
        let mut cut = self.cut.subscribe();
        let ended = async move {
            let _ = cut.wait_for(|cut| *cut).await;
        };
        Ok(stream.take_until(Box::pin(ended)).boxed())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl_secs).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
}

/// Two nodes, one cut off from the store's changes: a change made through the admin
/// reaches one of two (the lagging node named with the revision it serves); once the
/// node hears the store again, two of two, converged, with the time it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_shows_one_of_two_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_millis(100)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    for (kind, body) in [
        ("upstreams", upstream("u", testkit::free_port())),
        ("routes", route("r0", "u")),
    ] {
        let answer = admin
            .send("POST", &format!("{INSTANCE}/{kind}"), body)
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let before = admin.instance("c1", "instance_a").await["revision"]
        .as_u64()
        .unwrap();

    let store: Arc<dyn ConfigStore> = agent.store.clone();
    let (cut, _) = watch::channel(false);
    let cut_off: Arc<dyn ConfigStore> = Arc::new(WatchCut {
        inner: store.clone(),
        cut: cut.clone(),
    });
    let a = TestGateway::start("gw-a", store.clone(), agent.keyspace.clone()).await;
    let b = TestGateway::start("gw-b", cut_off, agent.keyspace.clone()).await;
    let convergence = || async { admin.get(&format!("{INSTANCE}/convergence")).await.body };
    wait_until("both nodes serve the instance's config", || async {
        let c = convergence().await;
        (c["revision"] == before && c["nodes"] == 2 && c["converged"] == true).then_some(())
    })
    .await;

    // gw-b stops hearing the store; a change goes through the admin.
    cut.send_replace(true);
    let after = change(&admin, "r1").await;
    assert!(after > before);
    let lagging = wait_until("the change on 1 of 2 nodes", || async {
        let c = convergence().await;
        (c["revision"] == after && c["reached"] == 1).then_some(c)
    })
    .await;
    assert_eq!(lagging["nodes"], 2, "{lagging}");
    assert_eq!(lagging["converged"], false, "{lagging}");
    assert_eq!(lagging["took_ms"], Value::Null, "{lagging}");
    assert_eq!(
        lagging["behind"],
        json!([{"node_id": "gw-b", "applied_revision": before}]),
        "{lagging}"
    );
    // Still online and still behind a while later: the heartbeat goes on, the
    // change does not arrive (several polls and heartbeats).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let still = convergence().await;
    assert_eq!(
        (&still["nodes"], &still["reached"]),
        (&json!(2), &json!(1)),
        "{still}"
    );
    assert_eq!(still["behind"][0]["node_id"], "gw-b", "{still}");
    // The history says the same of that revision: gw-b expected, not there.
    let history = admin
        .get(&format!("{INSTANCE}/convergence/history?last=1"))
        .await
        .body;
    let item = &history["items"][0];
    assert_eq!(item["revision"], after, "{history}");
    assert_eq!(
        (&item["expected"], &item["reached"]),
        (&json!(2), &json!(1)),
        "{history}"
    );
    assert_eq!(item["behind"], json!(["gw-b"]), "{history}");

    // The partition heals: gw-b's watch resumes where it stopped.
    cut.send_replace(false);
    let healed = wait_until("the change on 2 of 2 nodes", || async {
        let c = convergence().await;
        (c["revision"] == after && c["converged"] == true).then_some(c)
    })
    .await;
    assert_eq!(
        (&healed["nodes"], &healed["reached"]),
        (&json!(2), &json!(2)),
        "{healed}"
    );
    assert_eq!(healed["behind"], json!([]), "{healed}");
    assert!(healed["took_ms"].as_i64().unwrap() >= 0, "{healed}");
    let history = history_converged(&admin, 1).await;
    assert_eq!(history["items"][0]["reached"], 2, "{history}");

    a.stop().await;
    b.stop().await;
    admin.stop().await;
}
