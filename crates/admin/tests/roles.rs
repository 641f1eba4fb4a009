//! Users, roles and the audit log through the admin API: every endpoint checks the
//! caller's role (endpoint × role → status: 401 without a token, 403 with the wrong
//! role or namespace), sign-in with expiring sessions and sign-out, API tokens per
//! user, and an audit record of every change and sign-in without secrets.

mod common;

use std::time::Duration;

use common::{route, upstream, TestAdmin, TestAgent};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Callers, in the order the table's columns give statuses.
const CALLERS: [&str; 6] = [
    "platform", "admin-t", "editor-t", "viewer-t", "editor-d", "none",
];

struct World {
    admin: TestAdmin,
    _agent: TestAgent,
    team: String,
    tokens: Vec<Option<String>>,
}

async fn world(dir: &tempfile::TempDir) -> World {
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let created = admin
        .send("POST", "/namespaces", json!({"name": "team"}))
        .await;
    let team = created.body["id"].as_str().unwrap().to_owned();
    let a_team = format!("inst_team@{team}");
    let agent = TestAgent::start(&["inst_default", &a_team]).await;
    admin
        .register("c1", &agent, &["inst_default", &a_team])
        .await;
    for (instance, ns) in [("inst_default", "default"), ("inst_team", team.as_str())] {
        let answer = admin
            .send(
                "POST",
                &format!("/clusters/c1/instances/{instance}/upstreams?namespace={ns}"),
                upstream("up", 8080),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let mut tokens = vec![Some(common::ADMIN_TOKEN.to_owned())];
    for (name, roles) in [
        ("admin-t", json!({&team: "admin"})),
        ("editor-t", json!({&team: "editor"})),
        ("viewer-t", json!({&team: "viewer"})),
        ("editor-d", json!({"default": "editor"})),
    ] {
        let user = admin
            .send("POST", "/users", json!({"name": name, "roles": roles}))
            .await;
        assert_eq!(user.status, StatusCode::CREATED, "{}", user.body);
        let token = admin
            .send(
                "POST",
                &format!("/users/{name}/tokens"),
                json!({"name": "tests"}),
            )
            .await;
        assert_eq!(token.status, StatusCode::CREATED, "{}", token.body);
        tokens.push(Some(token.body["token"].as_str().unwrap().to_owned()));
    }
    tokens.push(None);
    World {
        admin,
        _agent: agent,
        team,
        tokens,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_checks_the_callers_role() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(&dir).await;
    let team = w.team.as_str();
    let inst_team = "/clusters/c1/instances/inst_team";
    let (team_owned, team_both) = (w.team.clone(), w.team.clone());
    let inst_default = "/clusters/c1/instances/inst_default";
    const OK: u16 = 200;
    // (method, path, body for caller i, statuses per caller)
    type Body = Box<dyn Fn(usize) -> Option<String>>;
    let none: fn() -> Body = || Box::new(|_| None);
    let route_body = |i: usize| Some(route(&format!("r{i}"), "up").to_string());
    let rows: Vec<(&str, String, Body, [u16; 6])> = vec![
        ("GET", "/plugins".into(), none(), [OK, OK, OK, OK, OK, 401]),
        ("GET", "/me".into(), none(), [OK, OK, OK, OK, OK, 401]),
        (
            "GET",
            format!("/namespaces/{team}"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "GET",
            format!("/namespaces/{team}/instances"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "PUT",
            format!("/namespaces/{team}"),
            Box::new(|_| Some(json!({"name": "team"}).to_string())),
            [OK, OK, 403, 403, 403, 401],
        ),
        (
            "POST",
            "/namespaces".into(),
            Box::new(|i| Some(json!({"name": format!("n{i}")}).to_string())),
            [201, 403, 403, 403, 403, 401],
        ),
        (
            "GET",
            format!("/namespaces/{team}/registry"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "POST",
            "/clusters/c1/registry/services/orders/nodes".into(),
            Box::new(move |i| {
                Some(
                    json!({"host": "10.0.0.1", "port": 8000 + i, "namespaces": team_owned})
                        .to_string(),
                )
            }),
            [201, 201, 201, 403, 403, 401],
        ),
        (
            "POST",
            "/clusters/c1/registry/services/orders/nodes".into(),
            Box::new(move |i| {
                Some(
                    json!({"host": "10.0.0.2", "port": 8000 + i,
                            "namespaces": format!("{team_both},default")})
                    .to_string(),
                )
            }),
            [201, 403, 403, 403, 403, 401],
        ),
        (
            "GET",
            format!("/namespaces/{team}/plugin_templates"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "PUT",
            format!("/namespaces/{team}/plugin_templates/request-id"),
            Box::new(|_| Some(json!({"id": "request-id", "enabled": false}).to_string())),
            [201, OK, 403, 403, 403, 401],
        ),
        (
            "GET",
            "/openapi.json".into(),
            none(),
            [OK, OK, OK, OK, OK, 401],
        ),
        (
            "GET",
            format!("/namespaces/{team}/config?format=json"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "PUT",
            format!("/namespaces/{team}/config?dry_run=true"),
            Box::new(|_| Some(json!({"instances": []}).to_string())),
            [OK, OK, OK, 403, 403, 401],
        ),
        (
            "GET",
            format!("{inst_team}?namespace={team}"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "GET",
            format!("{inst_team}/routes?namespace={team}"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "GET",
            format!("{inst_team}/revisions?namespace={team}"),
            none(),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "POST",
            format!("{inst_team}/routes?namespace={team}"),
            Box::new(route_body),
            [201, 201, 201, 403, 403, 401],
        ),
        (
            "POST",
            format!("{inst_team}/revisions/1/rollback?namespace={team}&dry_run=true"),
            none(),
            [OK, OK, OK, 403, 403, 401],
        ),
        (
            "POST",
            format!("{inst_team}/route-test?namespace={team}"),
            Box::new(|_| Some(json!({"path": "/api/x"}).to_string())),
            [OK, OK, OK, OK, 403, 401],
        ),
        (
            "GET",
            format!("{inst_default}/routes"),
            none(),
            [OK, 403, 403, 403, OK, 401],
        ),
        (
            "POST",
            format!("{inst_default}/routes"),
            Box::new(route_body),
            [201, 403, 403, 403, 201, 401],
        ),
        (
            "PUT",
            format!("{inst_team}/namespace"),
            Box::new(move |_| Some(json!({"namespace": null}).to_string())),
            [OK, 403, 403, 403, 403, 401],
        ),
        (
            // c1 has no Kubernetes face: only a platform admin gets as far as learning so.
            "PUT",
            "/clusters/c1/kubernetes/status".into(),
            Box::new(|_| {
                Some(
                    json!({"reporter": "xc", "link": "synced", "services": 0, "endpoints_contributed": 0})
                        .to_string(),
                )
            }),
            [404, 403, 403, 403, 403, 401],
        ),
        (
            // c1 has no Kubernetes face: only a platform admin gets as far as learning so.
            "GET",
            "/clusters/c1/kubeconfig".into(),
            none(),
            [404, 403, 403, 403, 403, 401],
        ),
        (
            "POST",
            "/clusters".into(),
            Box::new(|i| {
                Some(
                    json!({"name": format!("x{i}"), "agent_address": "http://127.0.0.1:1"})
                        .to_string(),
                )
            }),
            [201, 403, 403, 403, 403, 401],
        ),
        (
            "GET",
            "/users".into(),
            none(),
            [OK, 403, 403, 403, 403, 401],
        ),
        (
            "GET",
            "/users/editor-t".into(),
            none(),
            [OK, 403, OK, 403, 403, 401],
        ),
        (
            "POST",
            "/users".into(),
            Box::new(|i| Some(json!({"name": format!("u{i}")}).to_string())),
            [201, 403, 403, 403, 403, 401],
        ),
        (
            "GET",
            format!("/audit?namespace={team}"),
            none(),
            [OK, OK, 403, 403, 403, 401],
        ),
        (
            "GET",
            "/audit".into(),
            none(),
            [OK, 403, 403, 403, 403, 401],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, want) in &rows {
        for (i, caller) in CALLERS.iter().enumerate() {
            let answer = w
                .admin
                .call_as(w.tokens[i].as_deref(), method, path, body(i).as_deref())
                .await;
            if answer.status.as_u16() != want[i] {
                failures.push(format!(
                    "{method} {path} as {caller}: {} (want {}) {}",
                    answer.status, want[i], answer.body
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The cluster's instance list shows each caller its namespaces' instances only.
    let seen = |i: usize| {
        let admin = &w.admin;
        let token = w.tokens[i].clone();
        async move {
            let list = admin
                .call_as(token.as_deref(), "GET", "/clusters/c1/instances", None)
                .await;
            let mut names: Vec<String> = list.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(seen(0).await, ["inst_default", "inst_team"]);
    assert_eq!(seen(3).await, ["inst_team"]);
    assert_eq!(seen(4).await, ["inst_default"]);
    w.admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sessions_tokens_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(&dir).await;
    let admin = &w.admin;
    let alice = admin
        .send(
            "POST",
            "/users",
            json!({"name": "alice", "password": "correct horse battery", "roles": {"default": "editor"}}),
        )
        .await;
    assert_eq!(alice.status, StatusCode::CREATED, "{}", alice.body);
    assert_eq!(alice.body["has_password"], true);
    assert!(!alice.body.to_string().contains("correct horse"));
    let short = admin
        .send(
            "POST",
            "/users",
            json!({"name": "bob", "password": "short"}),
        )
        .await;
    assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(short.fields(), ["password"]);

    // Wrong password and unknown user: the same 401; a right one: a session.
    for body in [
        json!({"name": "alice", "password": "wrong password here"}),
        json!({"name": "nobody", "password": "correct horse battery"}),
    ] {
        let refused = admin
            .call_as(None, "POST", "/login", Some(&body.to_string()))
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    }
    let login = admin
        .call_as(
            None,
            "POST",
            "/login",
            Some(&json!({"name": "alice", "password": "correct horse battery"}).to_string()),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let session = login.body["token"].as_str().unwrap().to_owned();
    assert!(login.body["expires_at"].as_i64().unwrap() > 0);
    let me = admin.call_as(Some(&session), "GET", "/me", None).await;
    assert_eq!(me.body["user"]["name"], "alice");
    assert_eq!(me.body["user"]["roles"]["default"], "editor");
    // A change made in the session is authored by alice.
    let made = admin
        .call_as(
            Some(&session),
            "POST",
            "/clusters/c1/instances/inst_default/consumers",
            Some(
                &json!({"id": "k", "credentials": [{"type": "key-auth", "id": "k1", "key": "a-very-secret-api-key"}]})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let history = admin
        .get("/clusters/c1/instances/inst_default/revisions")
        .await;
    assert_eq!(history.body["items"][0]["author"], "alice");
    let out = admin.call_as(Some(&session), "POST", "/logout", None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let after = admin.call_as(Some(&session), "GET", "/me", None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);

    // API tokens: listed without the token, revoked by id.
    let listed = admin.get("/users/editor-t/tokens").await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("token").is_none());
    let id = items[0]["id"].as_str().unwrap();
    let token = w.tokens[2].as_deref();
    assert_eq!(
        admin.call_as(token, "GET", "/me", None).await.status,
        StatusCode::OK
    );
    let revoked = admin
        .call("DELETE", &format!("/users/editor-t/tokens/{id}"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        admin.call_as(token, "GET", "/me", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The last platform admin stays one.
    let demote = admin
        .send(
            "PUT",
            "/users/admin",
            json!({"name": "admin", "platform_admin": false}),
        )
        .await;
    assert_eq!(demote.status, StatusCode::CONFLICT, "{}", demote.body);

    // The audit log: sign-ins (failed ones too), changes with who, where, what,
    // outcome, before/after; never a secret.
    let audit = admin.get("/audit?limit=1000").await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let text = audit.body.to_string();
    for secret in ["correct horse", "a-very-secret-api-key", "wrong password"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let items = audit.body["items"].as_array().unwrap();
    let logins: Vec<(&str, u64)> = items
        .iter()
        .filter(|e| e["action"] == "login")
        .map(|e| (e["actor"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(logins, [("alice", 200), ("nobody", 401), ("alice", 401)]);
    let created: &Value = items
        .iter()
        .find(|e| {
            e["action"]
                .as_str()
                .unwrap()
                .ends_with("/inst_default/consumers")
        })
        .unwrap();
    assert_eq!(created["actor"], "alice");
    assert_eq!(created["source"], "127.0.0.1");
    assert_eq!(created["status"], 201);
    assert_eq!(created["namespace"], "default");
    assert_eq!(created["revision"], 2);
    assert_eq!(created["after"]["id"], "k");
    assert!(created.get("before").is_none());
    // A namespace admin reads its namespace's records only.
    let theirs = admin
        .call_as(
            w.tokens[1].as_deref(),
            "GET",
            &format!("/audit?namespace={}", w.team),
            None,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.body);
    assert!(theirs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["namespace"] == w.team.as_str()));
    w.admin.stop().await;
}
