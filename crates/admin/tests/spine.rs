//! The admin's half of the config spine on SQLite, against the real agent on an
//! in-process store: discovery, CRUD with revisions, pushes, the agent going down and
//! coming back, a wiped store, a store ahead of the DB, and instances going missing.

mod common;

use std::time::Duration;

use common::{route, upstream, wait_until, TestAdmin, TestAgent};
use model::resource::ResourceKind;
use reqwest::StatusCode;
use serde_json::json;
use store::{ConfigStore, Op, Txn};

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/admin.db", dir.path().display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_revisions_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let admin = TestAdmin::start(&sqlite_url(&dir), Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    common::crud_flow(&admin, &agent, "c1").await;
    admin.stop().await;
    assert!(dir.path().join("admin.db").exists());
}

/// Changes made while the agent is down are accepted, answered `pending`, and delivered
/// by the reconcile loop once the agent is back; instances it stops reporting are
/// marked missing with their config kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_delivers_what_a_down_agent_missed() {
    let dir = tempfile::tempdir().unwrap();
    let admin = TestAdmin::start(&sqlite_url(&dir), Duration::from_millis(200)).await;
    let mut agent = TestAgent::start(&["instance_a", "instance_b"]).await;
    admin
        .register("c1", &agent, &["instance_a", "instance_b"])
        .await;
    let a = "/clusters/c1/instances/instance_a";
    let b = "/clusters/c1/instances/instance_b";
    for (base, port) in [(a, 8080), (b, 8081)] {
        let answer = admin
            .send("POST", &format!("{base}/upstreams"), upstream("up", port))
            .await;
        assert_eq!(answer.header("x-portico-sync"), "applied", "{answer:?}");
    }

    // Agent down: accepted, pending, in the DB, not in the store.
    agent.stop().await;
    let answer = admin
        .send("PUT", &format!("{a}/upstreams/up"), upstream("up", 9999))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.header("x-portico-sync"), "pending");
    assert_eq!(answer.revision(), 2);
    let answer = admin
        .send("POST", &format!("{a}/routes"), route("r1", "up"))
        .await;
    assert_eq!(answer.header("x-portico-sync"), "pending");
    assert_eq!(answer.revision(), 3);
    assert_eq!(
        admin.get(&format!("{a}/upstreams/up")).await.body["nodes"][0]["port"],
        9999
    );
    assert_eq!(agent.meta("instance_a").await, Some(1));
    // Unknown is not missing: while the agent is down, nothing is marked missing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        admin.online_instances("c1").await,
        ["instance_a", "instance_b"]
    );

    // Agent back on the same address and store: the reconcile loop catches it up.
    agent.restart(&["instance_a", "instance_b"]).await;
    wait_until("the store reaches revision 3", || async {
        (agent.meta("instance_a").await == Some(3)).then_some(())
    })
    .await;
    let stored = agent
        .stored("instance_a", ResourceKind::Upstreams, "up")
        .await
        .unwrap();
    assert_eq!(stored["nodes"][0]["port"], 9999);
    assert_eq!(
        agent.stored_ids("instance_a", ResourceKind::Routes).await,
        ["r1"]
    );
    wait_until("the admin records the applied revision", || async {
        (admin.instance("c1", "instance_a").await["applied_revision"] == 3).then_some(())
    })
    .await;

    // The agent stops reporting instance_b: missing, config kept, first_seen kept.
    let before = admin.instance("c1", "instance_b").await;
    agent.restart(&["instance_a"]).await;
    wait_until("instance_b marked missing", || async {
        (admin.instance("c1", "instance_b").await["status"] == "missing").then_some(())
    })
    .await;
    let after = admin.instance("c1", "instance_b").await;
    assert_eq!(after["first_seen"], before["first_seen"]);
    assert_eq!(after["revision"], before["revision"]);
    let (lists, revision) = admin.desired("c1", "instance_b").await;
    assert_eq!(revision, 1);
    assert_eq!(lists[1][0]["id"], "up");
    assert_eq!(admin.online_instances("c1").await, ["instance_a"]);

    // Reported again: back online.
    agent.restart(&["instance_a", "instance_b"]).await;
    wait_until("instance_b online again", || async {
        (admin.instance("c1", "instance_b").await["status"] == "online").then_some(())
    })
    .await;
    admin.stop().await;
}

/// A store that lost everything (a wiped etcd): the next change's push is refused as a
/// revision conflict and the admin sends the full snapshot instead, in the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_store_gets_the_snapshot_on_the_next_change() {
    let dir = tempfile::tempdir().unwrap();
    // A long interval: only the write path may repair the store in this test.
    let admin = TestAdmin::start(&sqlite_url(&dir), Duration::from_secs(3600)).await;
    let mut agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    let a = "/clusters/c1/instances/instance_a";
    admin
        .send("POST", &format!("{a}/upstreams"), upstream("up", 8080))
        .await;
    admin
        .send("POST", &format!("{a}/routes"), route("r1", "up"))
        .await;
    assert_eq!(agent.meta("instance_a").await, Some(2));

    agent.restart_with_empty_store(&["instance_a"]).await;
    assert_eq!(agent.meta("instance_a").await, None);
    let answer = admin
        .send("POST", &format!("{a}/routes"), route("r2", "up"))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.header("x-portico-sync"), "applied");
    assert_eq!(answer.revision(), 3);
    assert_eq!(agent.meta("instance_a").await, Some(3));
    assert_eq!(
        agent.stored_ids("instance_a", ResourceKind::Routes).await,
        ["r1", "r2"]
    );
    assert_eq!(
        agent
            .stored_ids("instance_a", ResourceKind::Upstreams)
            .await,
        ["up"]
    );
    admin.stop().await;
}

/// A store holding a later revision than the DB (a DB restored from a backup): the
/// reconcile loop moves the DB past it, logged as a `resync`, and pushes the DB's config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ahead_of_the_database_is_overwritten_with_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let admin = TestAdmin::start(&sqlite_url(&dir), Duration::from_millis(200)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    let a = "/clusters/c1/instances/instance_a";
    admin
        .send("POST", &format!("{a}/upstreams"), upstream("up", 8080))
        .await;

    // Someone else wrote revision 50 with other content.
    let stray = agent
        .keyspace
        .resource("instance_a", ResourceKind::Upstreams, "stray");
    agent
        .store
        .txn(Txn {
            compares: vec![],
            ops: vec![
                Op::Put {
                    key: agent.keyspace.meta("instance_a"),
                    value: br#"{"revision":50}"#.to_vec(),
                    lease: None,
                },
                Op::Put {
                    key: stray,
                    value: upstream("stray", 1).to_string().into_bytes(),
                    lease: None,
                },
            ],
        })
        .await
        .unwrap();

    wait_until("the DB's config is re-asserted at revision 51", || async {
        (agent.meta("instance_a").await == Some(51)).then_some(())
    })
    .await;
    assert_eq!(
        agent
            .stored_ids("instance_a", ResourceKind::Upstreams)
            .await,
        ["up"]
    );
    let changes = admin.get(&format!("{a}/changes")).await;
    assert_eq!(changes.body["items"][0]["revision"], 51);
    assert_eq!(changes.body["items"][0]["op"], "resync");
    assert_eq!(admin.desired("c1", "instance_a").await.1, 51);
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_are_registered_moved_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let admin = TestAdmin::start(&sqlite_url(&dir), Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    let other = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;

    let dup = admin
        .send(
            "POST",
            "/clusters",
            json!({"name": "c1", "agent_address": other.url()}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.body);
    assert_eq!(dup.body["code"], "already_exists");
    let bad = admin
        .send(
            "POST",
            "/clusters",
            json!({"name": "c 2", "agent_address": "127.0.0.1:9190"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.fields(), ["name", "agent_address"]);
    let mut list = admin.get("/clusters").await;
    // Each carries how the admin last reached its agent (see agents.rs).
    let items = list.body["items"].as_array_mut().unwrap();
    for item in items.iter_mut() {
        assert!(item["agent"].is_object(), "{item}");
        item.as_object_mut().unwrap().remove("agent");
    }
    assert_eq!(
        list.body["items"],
        json!([{"name": "c1", "agent_address": agent.url()}])
    );
    assert_eq!(
        admin.get("/clusters/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin.get("/clusters/nope/instances").await.status,
        StatusCode::NOT_FOUND
    );

    // Move the cluster to another agent: its instances follow and get the config.
    let a = "/clusters/c1/instances/instance_a";
    admin
        .send("POST", &format!("{a}/upstreams"), upstream("up", 8080))
        .await;
    let mismatch = admin
        .send(
            "PUT",
            "/clusters/c1",
            json!({"name": "c2", "agent_address": other.url()}),
        )
        .await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(mismatch.fields(), ["name"]);
    let moved = admin
        .send(
            "PUT",
            "/clusters/c1",
            json!({"name": "c1", "agent_address": other.url()}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    wait_until("the new agent gets the instance's config", || async {
        (other.meta("instance_a").await == Some(1)).then_some(())
    })
    .await;
    assert_eq!(
        admin.instance("c1", "instance_a").await["agent_address"],
        other.url()
    );

    // Removal is refused while an instance holds config.
    let refused = admin.call("DELETE", "/clusters/c1", None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(refused.body["error"]
        .as_str()
        .unwrap()
        .contains("instance_a"));
    let deleted = admin
        .call("DELETE", &format!("{a}/upstreams/up"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let removed = admin.call("DELETE", "/clusters/c1", None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.body);
    assert_eq!(
        admin.get("/clusters/c1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(admin.get(a).await.status, StatusCode::NOT_FOUND);

    // Registered again, the instance continues its revisions (the change log is kept).
    admin.register("c1", &agent, &["instance_a"]).await;
    assert_eq!(admin.instance("c1", "instance_a").await["revision"], 2);
    let answer = admin
        .send("POST", &format!("{a}/upstreams"), upstream("up", 8080))
        .await;
    assert_eq!(answer.revision(), 3);
    admin.stop().await;
}

/// The instance's nodes are what its agent reports from the store's heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_come_from_the_agents_report() {
    let dir = tempfile::tempdir().unwrap();
    let admin = TestAdmin::start(&sqlite_url(&dir), Duration::from_millis(200)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    // Upstream health (M7) travels from the heartbeat to the console unchanged.
    let heartbeat = json!({"node_id": "n1", "address": "127.0.0.1:9080",
        "applied_revision": 0, "updated_at_ms": 1, "config_source": "store",
        "upstreams": [{"upstream_id": "u1", "nodes": [
            {"address": "10.0.0.1:80", "healthy": true},
            {"address": "10.0.0.2:80", "healthy": false,
             "reason": "active: 3 failures in a row, last: status 500"}]}]});
    agent
        .store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: agent.keyspace.node("instance_a", "n1"),
                value: heartbeat.to_string().into_bytes(),
                lease: None,
            }],
        })
        .await
        .unwrap();
    admin.register("c1", &agent, &["instance_a"]).await;
    let nodes = wait_until("the node is reported", || async {
        let answer = admin.get("/clusters/c1/instances/instance_a/nodes").await;
        let items = answer.body["items"].as_array()?.clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(nodes, [heartbeat]);
    admin.stop().await;
}
