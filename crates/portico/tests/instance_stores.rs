//! One agent, two instances, two stores (requirement M5): a real `portico agent` keeps
//! `instance_a` in etcd (`--store`) and `instance_b` in a password-protected Redis
//! (`--instance-store`). Config pushed through the agent API lands in each instance's
//! own store and nowhere else; the agent's report and the admin's instance view say
//! which store each instance is in, never the password.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::etcd::EtcdServer;
use testkit::process::Process;
use testkit::redis::RedisServer;

const AGENT_TOKEN: &str = "instance-stores-agent-token";
const ADMIN_TOKEN: &str = "instance-stores-admin-token-0123";
const REDIS_PASSWORD: &str = "redis-pw-7f3a";
const DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_is_kept_in_its_own_store() {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_portico"));
    let etcd = EtcdServer::launch();
    let redis = RedisServer::launch_with_password(REDIS_PASSWORD);
    let etcd_url = format!("{}/c1", etcd.store_url());
    let redis_url = format!("{}/c1", redis.store_url());

    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let own_stores = format!("instance_b={redis_url}");
    let agent = Process::start(
        "agent",
        bin,
        &["agent", "--listen", &listen, "--store", &etcd_url],
        &[
            ("PORTICO_INSTANCES", "instance_a,instance_b"),
            ("PORTICO_INSTANCE_STORES", own_stores.as_str()),
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
        ],
        dir.path(),
    );
    testkit::wait_for_tcp(&listen, DEADLINE).await;
    let agent_api = format!("http://{listen}/agent/apiserver/v1/instances");
    let http = reqwest::Client::new();

    // Two revisions per instance: an upstream, then a route using it.
    for instance in ["instance_a", "instance_b"] {
        let upstream =
            json!({"id": "up", "nodes": [{"host": "127.0.0.1", "port": 9, "weight": 1}]});
        let route = json!({"id": "r1", "paths": [format!("/{instance}/*")], "upstream_id": "up"});
        for (revision, kind, body) in [(1, "upstreams", upstream), (2, "routes", route)] {
            let resp = http
                .post(format!("{agent_api}/{instance}/{kind}"))
                .bearer_auth(AGENT_TOKEN)
                .header(model::cluster::REVISION_HEADER, revision.to_string())
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{}",
                resp.text().await.unwrap()
            );
        }
    }

    // Each store holds its own instance's keys and nothing of the other's.
    let (etcd_store, keyspace) = store::open(&etcd_url).await.unwrap();
    let (redis_store, redis_keyspace) = store::open(&redis_url).await.unwrap();
    assert_eq!(keyspace, redis_keyspace);
    let in_etcd = keys(etcd_store.as_ref(), keyspace.root()).await;
    let in_redis = keys(redis_store.as_ref(), keyspace.root()).await;
    let expected = |instance: &str| {
        vec![
            format!("/c1/instances/{instance}/meta"),
            format!("/c1/instances/{instance}/routes/r1"),
            format!("/c1/instances/{instance}/upstreams/up"),
        ]
    };
    assert_eq!(in_etcd, expected("instance_a"));
    assert_eq!(in_redis, expected("instance_b"));
    // Reads through the agent go to the same stores.
    let (status, routes) = get(&http, &format!("{agent_api}/instance_b/routes")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(routes["items"][0]["paths"], json!(["/instance_b/*"]));

    // The agent's report says where each instance is, without the password.
    let (status, report) = get(&http, &agent_api).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!report.to_string().contains(REDIS_PASSWORD), "{report}");
    let stores: Vec<(String, Value, Value)> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["revision"].clone(),
                i["store"].clone(),
            )
        })
        .collect();
    assert_eq!(
        stores,
        [
            (
                "instance_a".to_owned(),
                json!(2),
                json!({"backend": "etcd", "endpoints": [etcd.endpoint()]})
            ),
            (
                "instance_b".to_owned(),
                json!(2),
                json!({"backend": "redis", "endpoints": [redis.endpoint()]})
            ),
        ]
    );

    // The admin keeps what the agent reports and shows it in its instance view.
    let admin_listen = format!("127.0.0.1:{}", testkit::free_port());
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let _admin = Process::start(
        "admin",
        bin,
        &[
            "admin",
            "--listen",
            &admin_listen,
            "--database",
            &db,
            "--poll-interval",
            "300ms",
        ],
        &[
            ("PORTICO_ADMIN_TOKEN", ADMIN_TOKEN),
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
        ],
        dir.path(),
    );
    testkit::wait_for_tcp(&admin_listen, DEADLINE).await;
    let admin_api = format!("http://{admin_listen}/gateway/apiserver/v1");
    let resp = http
        .post(format!("{admin_api}/clusters"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "c1", "agent_address": format!("http://{listen}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let start = Instant::now();
    let instances = loop {
        let resp = http
            .get(format!("{admin_api}/clusters/c1/instances"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if items.len() == 2 && items.iter().all(|i| i["store"].is_object()) {
            break items;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the admin did not show both instances' stores: {body}; agent log: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let shown: Vec<(&str, &str)> = instances
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap(),
                i["store"]["backend"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, [("instance_a", "etcd"), ("instance_b", "redis")]);
    assert_eq!(
        instances[1]["store"]["endpoints"],
        json!([redis.endpoint()])
    );
    let one = http
        .get(format!("{admin_api}/clusters/c1/instances/instance_b"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(one.contains("\"backend\":\"redis\""), "{one}");
    assert!(!one.contains(REDIS_PASSWORD), "{one}");
    assert!(
        !agent.log().contains(REDIS_PASSWORD),
        "the agent logged the password"
    );
}

/// Every key under `root`, sorted.
async fn keys(store: &dyn store::ConfigStore, root: &str) -> Vec<String> {
    let listing = store.list(&format!("{root}/")).await.unwrap();
    listing.kvs.into_iter().map(|kv| kv.key).collect()
}

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let resp = http.get(url).bearer_auth(AGENT_TOKEN).send().await.unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}
