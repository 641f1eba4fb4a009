//! The same CRUD + revision flow, and the encryption-at-rest flow
//! (`common::secrets_flow`), on PostgreSQL and on MySQL/MariaDB, each in a uniquely
//! named database created for the test and dropped afterwards. Both servers are part of
//! the development machine: a test fails, with a message saying what to start, when
//! one is not running.

mod common;

use std::time::Duration;

use common::{TestAdmin, TestAgent};
use sqlx::{AnyConnection, Connection, Executor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_revisions_on_postgres() {
    let db = TempDatabase::create(Server::Postgres).await;
    run_flow(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_revisions_on_mysql() {
    let db = TempDatabase::create(Server::MySql).await;
    run_flow(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sealed_and_rotated_on_postgres() {
    let db = TempDatabase::create(Server::Postgres).await;
    common::secrets_flow(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sealed_and_rotated_on_mysql() {
    let db = TempDatabase::create(Server::MySql).await;
    common::secrets_flow(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_share_postgres_and_one_takes_over() {
    let db = TempDatabase::create(Server::Postgres).await;
    failover_flow(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_share_mysql_and_one_takes_over() {
    let db = TempDatabase::create(Server::MySql).await;
    failover_flow(&db.url).await;
}

/// Whether the admin says it reconciles.
async fn reconciles(admin: &TestAdmin) -> bool {
    let status = admin.get("/status").await;
    status.body["reconciler"].as_bool().unwrap()
}

/// Two admins on one database: both serve the API, one reconciles; it dies while
/// changes are written through both, the other takes over within seconds, and the
/// store ends with every change once, in revision order.
async fn failover_flow(url: &str) {
    let interval = Duration::from_millis(200);
    let first = TestAdmin::start(url, interval).await;
    let second = TestAdmin::start(url, interval).await;
    let (a, b) = (reconciles(&first).await, reconciles(&second).await);
    assert!(a ^ b, "exactly one admin reconciles: {a} {b}");
    let (leader, other) = if a { (first, second) } else { (second, first) };
    let mut agent = TestAgent::start(&["instance_a"]).await;
    other.register("c1", &agent, &["instance_a"]).await;
    let base = "/clusters/c1/instances/instance_a";
    for i in 0..10 {
        let via = if i % 2 == 0 { &leader } else { &other };
        let answer = via
            .send(
                "POST",
                &format!("{base}/upstreams"),
                common::upstream(&format!("u{i}"), 8000 + i),
            )
            .await;
        assert_eq!(
            answer.status,
            reqwest::StatusCode::CREATED,
            "{}",
            answer.body
        );
    }
    let died = std::time::Instant::now();
    leader.kill().await;
    for i in 10..20 {
        let answer = other
            .send(
                "POST",
                &format!("{base}/upstreams"),
                common::upstream(&format!("u{i}"), 8000 + i),
            )
            .await;
        assert_eq!(
            answer.status,
            reqwest::StatusCode::CREATED,
            "{}",
            answer.body
        );
    }
    common::wait_until("the other admin takes over", || async {
        reconciles(&other).await.then_some(())
    })
    .await;
    let took = died.elapsed();
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
    // The survivor reconciles: a wiped store gets everything back.
    agent.restart_with_empty_store(&["instance_a"]).await;
    common::wait_until("the store is rebuilt by the new reconciler", || async {
        (agent.meta("instance_a").await == Some(20)).then_some(())
    })
    .await;
    let ids = agent
        .stored_ids("instance_a", model::resource::ResourceKind::Upstreams)
        .await;
    assert_eq!(ids.len(), 20, "{ids:?}");
    let history = other.get(&format!("{base}/revisions?limit=100")).await;
    let revisions: Vec<u64> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, (1..=20).rev().collect::<Vec<_>>());
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_history_on_postgres() {
    let db = TempDatabase::create(Server::Postgres).await;
    convergence_flow(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_history_on_mysql() {
    let db = TempDatabase::create(Server::MySql).await;
    convergence_flow(&db.url).await;
}

/// The nodes' first reports of revisions (`node_revisions`) written and read back on
/// this database: a node's heartbeat, written into the agent's store by the test,
/// jumps from nothing to revision 3, which reaches 1, 2 and 3; a restarted admin
/// finds the reports and adds the next one.
async fn convergence_flow(url: &str) {
    use serde_json::json;
    use store::{ConfigStore, Op, Txn};
    let agent = TestAgent::start(&["instance_a"]).await;
    let beat = |revision: u64| {
        let (store, key) = (agent.store.clone(), agent.keyspace.node("instance_a", "n1"));
        async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let heartbeat = model::cluster::NodeHeartbeat {
                node_id: "n1".into(),
                address: "127.0.0.1:9080".into(),
                applied_revision: model::snapshot::Revision(revision),
                applied_at_ms: now,
                updated_at_ms: now,
                config_source: model::cluster::ConfigSource::Store,
                upstreams: vec![],
                skipped: vec![],
                redis_fallbacks: 0,
                unbound: None,
                load: None,
            };
            store
                .txn(Txn {
                    compares: vec![],
                    ops: vec![Op::Put {
                        key,
                        value: serde_json::to_vec(&heartbeat).unwrap(),
                        lease: None,
                    }],
                })
                .await
                .unwrap();
        }
    };
    let admin = TestAdmin::start(url, Duration::from_millis(100)).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    beat(0).await;
    common::wait_until("n1 online", || async {
        let body = admin
            .get("/clusters/c1/instances/instance_a/nodes")
            .await
            .body;
        (body["items"][0]["node_id"] == "n1").then_some(())
    })
    .await;
    let a = "/clusters/c1/instances/instance_a";
    for (kind, body) in [
        ("upstreams", common::upstream("u", 9)),
        ("routes", common::route("r1", "u")),
        (
            "routes",
            json!({"id": "r2", "paths": ["/r2/*"], "upstream_id": "u"}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{a}/{kind}"), body).await;
        assert_eq!(answer.status.as_u16(), 201, "{}", answer.body);
    }
    beat(3).await;
    let body = all_converged(&admin, 3).await;
    for (item, revision) in body["items"].as_array().unwrap().iter().zip([3, 2, 1]) {
        assert_eq!(item["revision"], revision, "{body}");
        assert_eq!(
            (&item["expected"], &item["reached"]),
            (&json!(1), &json!(1)),
            "{body}"
        );
        assert!(item["took_ms"].as_i64().unwrap() >= 0, "{body}");
    }
    assert_eq!(body["summary"]["count"], 3, "{body}");
    admin.stop().await;

    let admin = TestAdmin::start(url, Duration::from_millis(100)).await;
    let answer = admin
        .send(
            "POST",
            &format!("{a}/routes"),
            json!({"id": "r3", "paths": ["/r3/*"], "upstream_id": "u"}),
        )
        .await;
    assert_eq!(answer.status.as_u16(), 201, "{}", answer.body);
    beat(4).await;
    let body = all_converged(&admin, 4).await;
    assert_eq!(body["items"][0]["revision"], 4, "{body}");
    assert_eq!(body["summary"]["count"], 4, "{body}");
    admin.stop().await;
}

/// The convergence history of the last `last` revisions once all of them converged.
async fn all_converged(admin: &TestAdmin, last: usize) -> serde_json::Value {
    let path = format!("/clusters/c1/instances/instance_a/convergence/history?last={last}");
    common::wait_until("every revision converged", || async {
        let body = admin.get(&path).await.body;
        let items = body["items"].as_array()?;
        (items.len() == last && items.iter().all(|i| i["converged"] == true)).then_some(body)
    })
    .await
}

async fn run_flow(url: &str) {
    let admin = TestAdmin::start(url, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    common::crud_flow(&admin, &agent, "c1").await;
    admin.stop().await;
    // A second start on the same database finds its migrations applied and its data.
    let admin = TestAdmin::start(url, Duration::from_secs(3600)).await;
    let (lists, revision) = admin.desired("c1", "instance_a").await;
    assert_eq!(revision, 6);
    assert_eq!(lists[0][0]["id"], "r1");
    admin.stop().await;
}

#[derive(Clone, Copy)]
enum Server {
    Postgres,
    MySql,
}

impl Server {
    /// Administrative URLs to try, in order (Debian's PostgreSQL has `postgres`; some
    /// set-ups trust `root`).
    fn admin_urls(self) -> &'static [&'static str] {
        match self {
            Server::Postgres => &[
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://root@127.0.0.1:5432/postgres",
            ],
            Server::MySql => &["mysql://root@127.0.0.1:3306/mysql"],
        }
    }

    fn what(self) -> &'static str {
        match self {
            Server::Postgres => "PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres or root)",
            Server::MySql => "MySQL/MariaDB at 127.0.0.1:3306 (user root, no password)",
        }
    }
}

/// A database created for one test; dropped when the test ends, even on failure.
struct TempDatabase {
    server: Server,
    admin_url: String,
    name: String,
    url: String,
}

impl TempDatabase {
    async fn create(server: Server) -> Self {
        sqlx::any::install_default_drivers();
        let mut errors = Vec::new();
        for admin_url in server.admin_urls() {
            match AnyConnection::connect(admin_url).await {
                Ok(mut conn) => {
                    let name = format!(
                        "portico_admin_test_{}_{}",
                        std::process::id(),
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_nanos()
                    );
                    conn.execute(format!("CREATE DATABASE {name}").as_str())
                        .await
                        .unwrap_or_else(|e| {
                            panic!("cannot create a database on {}: {e}", server.what())
                        });
                    conn.close().await.ok();
                    let (base, _) = admin_url.rsplit_once('/').unwrap();
                    return Self {
                        server,
                        admin_url: admin_url.to_string(),
                        url: format!("{base}/{name}"),
                        name,
                    };
                }
                Err(e) => errors.push(format!("{admin_url}: {e}")),
            }
        }
        panic!(
            "{} must be running for this test: {}",
            server.what(),
            errors.join("; ")
        );
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let sql = match self.server {
            Server::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            Server::MySql => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        let admin_url = self.admin_url.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the work.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut conn = AnyConnection::connect(&admin_url).await?;
                    conn.execute(sql.as_str()).await?;
                    conn.close().await
                })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
