//! The admin API's refusals and authentication: each bad request gets the right status
//! and names the offending field, and neither the DB nor the store changes.

mod common;

use std::time::Duration;

use admin::{Admin, AdminConfig};
use common::{route, upstream, TestAdmin, TestAgent, ADMIN_TOKEN};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a"]).await;
    admin.register("c1", &agent, &["instance_a"]).await;
    let base = "/clusters/c1/instances/instance_a";
    admin
        .send("POST", &format!("{base}/upstreams"), upstream("up", 8080))
        .await;
    admin
        .send("POST", &format!("{base}/routes"), route("r1", "up"))
        .await;
    let before = admin.desired("c1", "instance_a").await;
    assert_eq!(before.1, 2);

    let too_big = format!(
        r#"{{"id":"r9","paths":["/x"],"upstream_id":"up","name":"{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    // (method, path under the instance or absolute, body, status, field or "")
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/routes", "{\"id\": \"r9\", ", 400, ""),
        ("POST", "/routes", "", 400, ""),
        (
            "POST",
            "/routes",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"up","colour":"red"}"#,
            400,
            "colour",
        ),
        (
            "POST",
            "/upstreams",
            r#"{"id":"u9","nodes":[{"host":"127.0.0.1","port":"80"}]}"#,
            400,
            "nodes[0].port",
        ),
        (
            "POST",
            "/upstreams",
            r#"{"id":"u9","nodes":[{"host":"127.0.0.1","port":70000}]}"#,
            422,
            "nodes[0].port",
        ),
        (
            "POST",
            "/routes",
            r#"{"id":"r9","paths":["x"],"methods":["FETCH"],"upstream_id":"up"}"#,
            422,
            "methods[0]",
        ),
        (
            "POST",
            "/routes",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"nope"}"#,
            422,
            "upstream_id",
        ),
        (
            "POST",
            "/routes",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"up","plugins":{"ip-restriction":{"denylist":["10.0.0.300"]}}}"#,
            422,
            "plugins.ip-restriction.denylist[0]",
        ),
        (
            "PUT",
            "/routes/r1",
            r#"{"id":"r1","paths":["/x"],"upstream_id":"nope"}"#,
            422,
            "upstream_id",
        ),
        (
            "POST",
            "/routes",
            r#"{"id":"r1","paths":["/x"],"upstream_id":"up"}"#,
            409,
            "",
        ),
        ("DELETE", "/upstreams/up", "", 409, "routes[r1].upstream_id"),
        ("DELETE", "/routes/nope", "", 404, ""),
        (
            "PUT",
            "/routes/r1",
            r#"{"id":"other","paths":["/x"],"upstream_id":"up"}"#,
            422,
            "id",
        ),
        (
            "POST",
            "/certificates",
            r#"{"id":"c","snis":["example.test"],"cert":"nope","key":"nope"}"#,
            422,
            "cert",
        ),
        (
            "POST",
            "/clusters/nope/instances/instance_a/routes",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"up"}"#,
            404,
            "",
        ),
        (
            "POST",
            "/clusters/c1/instances/nope/routes",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"up"}"#,
            404,
            "",
        ),
        (
            "POST",
            "/widgets",
            r#"{"id":"r9","paths":["/x"],"upstream_id":"up"}"#,
            404,
            "",
        ),
        ("POST", "/routes", &too_big, 413, ""),
        ("PATCH", "/routes/r1", "{}", 405, ""),
    ];
    for (method, path, body, status, field) in cases {
        let path = if path.starts_with("/clusters") {
            path.to_string()
        } else {
            format!("{base}{path}")
        };
        let body = (!body.is_empty()).then_some(*body);
        let answer = admin.call(method, &path, body).await;
        let shown = format!("{method} {path}: {} {}", answer.status, answer.body);
        assert_eq!(answer.status.as_u16(), *status, "{shown}");
        assert!(answer.body["error"].is_string(), "{shown}");
        assert!(answer.body["code"].is_string(), "{shown}");
        if !field.is_empty() {
            assert!(answer.fields().iter().any(|f| f == field), "{shown}");
        }
        assert_eq!(admin.desired("c1", "instance_a").await, before, "{shown}");
    }

    // Messages say where malformed JSON breaks and which routes hold an upstream.
    let answer = admin
        .call("POST", &format!("{base}/routes"), Some("{\"id\": \"r9\", "))
        .await;
    let message = answer.body["error"].as_str().unwrap();
    assert!(message.contains("line 1 column"), "{message}");
    let answer = admin
        .call("DELETE", &format!("{base}/upstreams/up"), None)
        .await;
    assert!(answer.body["error"].as_str().unwrap().contains("r1"));
    // Every rule broken is listed at once.
    let answer = admin
        .call(
            "POST",
            &format!("{base}/upstreams"),
            Some(r#"{"id":"bad id","nodes":[{"host":"","port":0}]}"#),
        )
        .await;
    assert_eq!(answer.fields(), ["id", "nodes[0].host", "nodes[0].port"]);

    // The store saw none of it.
    assert_eq!(agent.meta("instance_a").await, Some(2));
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    for token in [None, Some("wrong"), Some("")] {
        for (method, path) in [
            ("GET", "/clusters"),
            ("POST", "/clusters"),
            ("GET", "/clusters/c1/instances/i/routes"),
            ("GET", "/plugins"),
            ("GET", "/no/such/endpoint"),
        ] {
            let answer = admin.call_as(token, method, path, Some("{}")).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(answer.body["code"], "unauthorized");
        }
    }
    let answer = admin.get("/no/such/endpoint").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["code"], "not_found");
    admin.stop().await;
}

/// First start: a token is generated and returned once. Later starts keep it; a token
/// given by the environment replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_generated_once_and_can_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/fresh/admin.db", dir.path().display());
    std::fs::create_dir(dir.path().join("fresh")).unwrap();
    let config = AdminConfig {
        database_url: db,
        poll_interval: Duration::from_secs(3600),
        agent_token: None,
        admin_token: None,
        ..AdminConfig::default()
    };
    let (admin, generated) = Admin::open(config.clone()).await.unwrap();
    let generated = generated.expect("a token on the first start");
    let served = TestAdmin::serve(admin).await;
    let ok = served
        .call_as(Some(&generated), "GET", "/clusters", None)
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    served.stop().await;

    // The database (and its WAL, if any) keeps only the hash.
    for file in std::fs::read_dir(dir.path().join("fresh")).unwrap() {
        // SQLite removes its -wal and -shm files when the last connection closes; one
        // gone between the listing and the read holds nothing.
        let raw = match std::fs::read(file.unwrap().path()) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot read the database file: {e}"),
        };
        assert!(!contains(&raw, generated.as_bytes()));
    }

    let (admin, again) = Admin::open(config.clone()).await.unwrap();
    assert_eq!(again, None);
    let served = TestAdmin::serve(admin).await;
    let ok = served
        .call_as(Some(&generated), "GET", "/clusters", None)
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    served.stop().await;

    let (admin, given) = Admin::open(AdminConfig {
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        ..config.clone()
    })
    .await
    .unwrap();
    assert_eq!(given, None);
    let served = TestAdmin::serve(admin).await;
    let old = served
        .call_as(Some(&generated), "GET", "/clusters", None)
        .await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    assert_eq!(served.get("/clusters").await.status, StatusCode::OK);
    served.stop().await;
}

/// Clients that announce too much or send too slowly are cut: a 13 MB Content-Length
/// gets 413 before any of it is read, half a head is closed after the header-read
/// timeout, a trickling body gets 408 at the body deadline; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_clients_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _) = Admin::open(AdminConfig {
        database_url: format!("sqlite://{}/admin.db", dir.path().display()),
        poll_interval: Duration::from_secs(3600),
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        header_read_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(700),
        ..AdminConfig::default()
    })
    .await
    .unwrap();
    let admin = TestAdmin::serve(admin).await;
    let addr = admin
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let head = |length: u64| {
        format!(
            "POST {}/clusters HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
            common::API
        )
    };

    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(head(13_000_000).as_bytes()).await.unwrap();
    let (answer, took) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // 413 (not the 408 of the body deadline) means it came before any body was
    // awaited; the bound only keeps a loaded machine from failing the test.
    assert!(took < Duration::from_secs(2), "413 after {took:?}");

    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /gateway/apiserver/v1/clusters HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut stream).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    let body = r#"{"name":"slow","agent_address":"http://127.0.0.1:1"}"#;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(head(body.len() as u64).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    let (answer, took) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took < Duration::from_secs(3), "408 after {took:?}");

    let clusters = admin.get("/clusters").await;
    assert_eq!(clusters.body["items"], serde_json::json!([]));
    admin.stop().await;
}

/// Reads until the server closes the connection (at most 5 s): the text and the time.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The plugin catalog: every plugin a route accepts, in the order they run, each with
/// the JSON Schema of its config; an unknown name is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_catalog_is_served_with_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let answer = admin.get("/plugins").await;
    assert_eq!(answer.status, StatusCode::OK);
    let items = answer.body["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|p| p["name"].as_str().unwrap()).collect();
    let every: Vec<&str> = model::plugin::CATALOG.iter().map(|p| p.name).collect();
    assert_eq!(names, every);
    assert_eq!(names[0], "request-id");
    let priorities: Vec<i64> = items
        .iter()
        .map(|p| p["priority"].as_i64().unwrap())
        .collect();
    assert!(priorities.windows(2).all(|w| w[0] > w[1]), "{priorities:?}");
    let ip = items
        .iter()
        .find(|p| p["name"] == "ip-restriction")
        .unwrap();
    assert_eq!(ip["phases"], serde_json::json!(["access"]));
    assert_eq!(ip["schema"]["type"], "object");
    assert!(ip["schema"]["properties"]["denylist"].is_object());
    let one = admin.get("/plugins/request-id").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(
        one.body["schema"]["properties"]["header_name"]["default"],
        "X-Request-Id"
    );
    let missing = admin.get("/plugins/no-such-plugin").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["code"], "not_found");
    admin.stop().await;
}
