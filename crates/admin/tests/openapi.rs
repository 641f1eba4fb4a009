//! The admin's OpenAPI document against the admin itself: every documented operation
//! is served (not the "no such endpoint" fallback) and refuses a call without a token;
//! and `schemathesis` (installed from PyPI by `cargo xtask test`) fuzzes every
//! operation: no server error, every answer's status, content type and body as the
//! document says, and no operation that takes a call without credentials.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{certificate, route, upstream, wait_until, TestAdmin, TestAgent, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The admin with one cluster, two instances and a few objects of every kind, so reads
/// answer real data.
async fn admin_with_config(dir: &std::path::Path) -> (TestAdmin, TestAgent) {
    let db = format!("sqlite://{}/admin.db", dir.display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a", "instance_b"]).await;
    // A gateway node's heartbeat with everything it may carry (load, a skipped object,
    // an upstream node down), so the nodes and convergence answers hold data the
    // document must describe; in the store before the admin's one poll.
    let heartbeat = json!({"node_id": "n1", "address": "127.0.0.1:9080",
        "applied_revision": 0, "applied_at_ms": 1, "updated_at_ms": 1,
        "config_source": "store",
        "upstreams": [{"upstream_id": "up", "nodes": [
            {"address": "127.0.0.1:8080", "healthy": false, "reason": "passive: 2 failures"}]}],
        "skipped": [{"key": "/portico/instances/instance_a/routes/r9", "reason": "unknown upstream"}],
        "load": {"requests": 40, "errors": 10, "connections": 3, "in_flight": 1}});
    store::ConfigStore::txn(
        agent.store.as_ref(),
        store::Txn {
            compares: vec![],
            ops: vec![store::Op::Put {
                key: agent.keyspace.node("instance_a", "n1"),
                value: heartbeat.to_string().into_bytes(),
                lease: None,
            }],
        },
    )
    .await
    .unwrap();
    admin
        .register("c1", &agent, &["instance_a", "instance_b"])
        .await;
    let base = "/clusters/c1/instances/instance_a";
    wait_until("the node is listed", || async {
        let nodes = admin.get(&format!("{base}/nodes")).await.body;
        (nodes["items"][0]["error_rate"] == 0.25).then_some(())
    })
    .await;
    for (kind, body) in [
        ("upstreams", upstream("up", 8080)),
        ("certificates", certificate("cert")),
        ("services", json!({"id": "svc", "upstream_id": "up"})),
        ("routes", route("r1", "up")),
        (
            "consumers",
            json!({"id": "alice", "credentials": [{"type": "key-auth", "id": "k", "key": "alice-key-0123456789"}]}),
        ),
        (
            "global_rules",
            json!({"id": "g", "plugins": {"request-id": {}}}),
        ),
        (
            "plugin_templates",
            json!({"id": "limit-count", "priority": 1000}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{base}/{kind}"), body).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{kind}: {}",
            answer.body
        );
    }
    (admin, agent)
}

async fn document(admin: &TestAdmin) -> Value {
    let answer = admin.get("/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

/// A path of the document with its parameters filled in with things that exist.
fn concrete(path: &str) -> String {
    path.replace("{cluster}", "c1")
        .replace("{instance}", "instance_a")
        .replace("{revision}", "1")
        .replace("{name}", "admin")
        .replace("{id}", "r1")
}

/// The instance view names the store its agent keeps it in, and the document says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_show_their_store_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _agent) = admin_with_config(dir.path()).await;
    let answer = admin.get("/clusters/c1/instances/instance_a").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body["store"],
        json!({"backend": "memory", "endpoints": []})
    );
    let doc = document(&admin).await;
    let schemas = &doc["components"]["schemas"];
    let store = &schemas["Instance"]["properties"]["store"];
    assert!(store.to_string().contains("StoreInfo"), "{store}");
    assert_eq!(
        schemas["StoreBackend"]["enum"],
        json!(["etcd", "redis", "memory"]),
        "{}",
        schemas["StoreBackend"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _agent) = admin_with_config(dir.path()).await;
    let doc = document(&admin).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc["servers"][0]["url"], "/gateway/apiserver/v1");

    let paths = doc["paths"].as_object().unwrap();
    // Every kind has its own operations, with its own schema.
    for kind in model::resource::ResourceKind::ALL {
        let list = &paths[&format!("/clusters/{{cluster}}/instances/{{instance}}/{kind}")];
        assert!(
            list["get"].is_object() && list["post"].is_object(),
            "{kind}"
        );
        let one = &paths[&format!("/clusters/{{cluster}}/instances/{{instance}}/{kind}/{{id}}")];
        for method in ["get", "put", "delete"] {
            assert!(one[method].is_object(), "{kind} {method}");
        }
    }
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let responses = operation["responses"].as_object().unwrap();
            for status in ["400", "401", "403", "404", "422"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
            let url = concrete(path);
            let method_up = method.to_uppercase();
            // The login is the one call without a token.
            let public = path == "/login";
            assert_eq!(
                operation.get("security").map(|s| s == &json!([])),
                public.then_some(true),
                "{method} {path}: security"
            );
            if !public {
                let refused = admin.call_as(None, &method_up, &url, None).await;
                assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            }
            // Served: with a token, no call reaches the fallback. Nothing here may
            // change state: writes are dry runs or bad JSON, deletes name nothing
            // that exists.
            let probe = match method.as_str() {
                "get" => url.clone(),
                "delete" => path
                    .replace("{cluster}", "nowhere")
                    .replace("{instance}", "none")
                    .replace("{name}", "nobody")
                    .replace("{id}", "nothing"),
                _ => format!("{url}?dry_run=true"),
            };
            let answer = admin
                .http
                .request(method_up.parse().unwrap(), format!("{}{probe}", admin.url))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body("{")
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let text = answer.text().await.unwrap();
            assert!(
                !text.contains("no such endpoint"),
                "{method} {path} is documented but not served"
            );
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    assert!(operations > 70, "{operations} operations documented");
    admin.stop().await;
}

/// The `schemathesis` command: `PORTICO_SCHEMATHESIS` (set by `cargo xtask test`, which
/// installs it from PyPI), else `st` on the PATH.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTICO_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("st"))
            .find(|candidate| candidate.is_file())
    });
    found.expect(
        "schemathesis is not installed: run `cargo xtask test`, which installs it, or \
         `pip install schemathesis` and put `st` on the PATH",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let st = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let (admin, _agent) = admin_with_config(dir.path()).await;
    let doc = document(&admin).await;
    let spec = dir.path().join("openapi.json");
    std::fs::write(&spec, doc.to_string()).unwrap();
    // Instance paths name the instance that exists (random names would only meet
    // 404s); everything else is generated.
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[parameters]\n\"path.cluster\" = \"c1\"\n\"path.instance\" = \"instance_a\"\n",
    )
    .unwrap();
    let admin_url = admin.url.clone();
    let work = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(st)
            // Its cache (`.schemathesis/`) goes with the test's directory, not the tree.
            .current_dir(&work)
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(&spec)
            .args(["--url", &admin_url])
            .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,ignored_auth",
            ])
            .args(["--max-examples", "15", "--workers", "2", "--no-color"])
            .args(["--request-timeout", "20"])
            // Everything stays on loopback; no telemetry, no upload.
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    admin.stop().await;
}
