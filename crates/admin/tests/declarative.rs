//! Declarative config through the admin API: an instance's config exported as YAML and
//! applied to an empty instance reproduces it exactly; an applied file creates,
//! updates and deletes to reach itself in one revision, previewed by a dry run; bad
//! files are refused naming the field, and change nothing.

mod common;

use std::time::Duration;

use common::{route, upstream, TestAdmin, TestAgent};
use reqwest::StatusCode;
use serde_json::{json, Value};

const A: &str = "/clusters/c1/instances/instance_a";
const B: &str = "/clusters/c1/instances/instance_b";

async fn apply(admin: &TestAdmin, base: &str, body: &str, query: &str) -> (StatusCode, Value) {
    let response = admin
        .http
        .put(format!("{}{base}/config{query}", admin.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .header("content-type", "application/yaml")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn export(admin: &TestAdmin, base: &str) -> String {
    let response = admin
        .http
        .get(format!("{}{base}/config", admin.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    response.text().await.unwrap()
}

/// The config without its revision, for comparing two instances.
fn objects(yaml: &str) -> Value {
    let mut value: Value = serde_yaml_ng::from_str(yaml).unwrap();
    value.as_object_mut().unwrap().remove("revision");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_apply_round_trip_and_declarative_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let agent = TestAgent::start(&["instance_a", "instance_b"]).await;
    admin
        .register("c1", &agent, &["instance_a", "instance_b"])
        .await;
    for (kind, body) in [
        ("upstreams", upstream("up", 8080)),
        ("upstreams", upstream("up2", 8081)),
        (
            "services",
            json!({"id": "svc", "upstream_id": "up2", "plugins": {"request-id": {}}}),
        ),
        ("routes", route("r1", "up")),
        (
            "routes",
            json!({"id": "r2", "paths": ["/svc/*"], "service_id": "svc"}),
        ),
        ("consumer_groups", json!({"id": "gold", "plugins": {}})),
        (
            "global_rules",
            json!({"id": "g", "plugins": {"request-id": {}}}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{A}/{kind}"), body).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{kind}: {}",
            answer.body
        );
    }
    let yaml = export(&admin, A).await;
    assert!(yaml.contains("routes:") && yaml.contains("r2"), "{yaml}");

    // Applied to an empty instance: the same config, in one revision.
    let (status, preview) = apply(&admin, B, &yaml, "?dry_run=true").await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["changes"].as_array().unwrap().len(), 7);
    assert_eq!(admin.instance("c1", "instance_b").await["revision"], 0);
    let (status, done) = apply(&admin, B, &yaml, "").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["revision"], 1);
    assert_eq!(objects(&export(&admin, B).await), objects(&yaml));
    let history = admin.get(&format!("{B}/revisions")).await;
    assert_eq!(history.body["items"][0]["op"], "apply");
    assert_eq!(
        history.body["items"][0]["objects"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(agent.meta("instance_b").await, Some(1));
    // Applying it again changes nothing.
    let (_, again) = apply(&admin, B, &yaml, "").await;
    assert_eq!(again["changed"], false);
    assert_eq!(admin.instance("c1", "instance_b").await["revision"], 1);

    // A file that drops r2, the service and up2 and changes r1: deletes in the right
    // order (the route before the service before the upstream), one revision.
    let mut file: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    file["routes"] = json!([{"id": "r1", "paths": ["/v2/*"], "upstream_id": "up"}]);
    file.as_object_mut().unwrap().remove("services");
    file["upstreams"] = json!([upstream("up", 8080)]);
    let text = serde_yaml_ng::to_string(&file).unwrap();
    let (status, done) = apply(&admin, B, &text, "").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let ops: Vec<(String, String)> = done["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().into(),
                c["op"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert_eq!(
        admin.get(&format!("{B}/routes/r2")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin.get(&format!("{B}/routes/r1")).await.body["paths"],
        json!(["/v2/*"])
    );

    // Bad files: malformed YAML, an unknown field, a broken rule, a missing reference,
    // a duplicate: refused, nothing changes.
    let revision = admin.instance("c1", "instance_b").await["revision"].clone();
    for (body, status, field) in [
        ("routes: [", StatusCode::BAD_REQUEST, None),
        ("routes:\n  - id: r1\n    pathz: [/]\n", StatusCode::BAD_REQUEST, Some("routes[0].pathz")),
        (
            "upstreams:\n  - id: up\n    nodes: [{host: 127.0.0.1, port: 0}]\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("upstreams[up].nodes[0].port"),
        ),
        (
            "routes:\n  - id: r9\n    paths: [/]\n    upstream_id: nope\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("routes[r9].upstream_id"),
        ),
        (
            "upstreams:\n  - {id: up, nodes: [{host: a.test, port: 1}]}\n  - {id: up, nodes: [{host: a.test, port: 2}]}\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("upstreams[up]"),
        ),
    ] {
        let (got, answer) = apply(&admin, B, body, "").await;
        assert_eq!(got, status, "{body}: {answer}");
        if let Some(field) = field {
            let fields: Vec<&str> = answer["details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["field"].as_str().unwrap())
                .collect();
            assert!(fields.contains(&field), "{body}: {answer}");
        }
    }
    assert_eq!(
        admin.instance("c1", "instance_b").await["revision"],
        revision
    );

    // A namespace's export holds its instances.
    let ns = admin.get("/namespaces/default/config?format=json").await;
    assert_eq!(ns.status, StatusCode::OK, "{}", ns.body);
    assert_eq!(ns.body["instances"].as_array().unwrap().len(), 2);
    admin.stop().await;
}

/// `PUT /namespaces/{id}/config` with `token`, a YAML body.
async fn apply_namespace(
    admin: &TestAdmin,
    token: &str,
    namespace: &str,
    file: &Value,
    query: &str,
) -> (StatusCode, Value) {
    let response = admin
        .http
        .put(format!(
            "{}/namespaces/{namespace}/config{query}",
            admin.url
        ))
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .header("x-portico-message", "team sync")
        .body(serde_yaml_ng::to_string(file).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// An instance's config as a namespace export holds it, without its revision.
fn config_of(export: &Value, instance: &str) -> Value {
    let mut config = export["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == instance)
        .unwrap_or_else(|| panic!("{instance} not in {export}"))["config"]
        .clone();
    config.as_object_mut().unwrap().remove("revision");
    config
}

fn fields(answer: &Value) -> Vec<String> {
    answer["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| d["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_wide_apply_and_expected_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let created = admin
        .send("POST", "/namespaces", json!({"name": "team"}))
        .await;
    let team = created.body["id"].as_str().unwrap().to_owned();
    let (team_a, team_b) = (format!("team_a@{team}"), format!("team_b@{team}"));
    let names = ["instance_a", "instance_b", team_a.as_str(), team_b.as_str()];
    let agent = TestAgent::start(&names).await;
    admin.register("c1", &agent, &names).await;
    for (base, kind, body) in [
        (A, "upstreams", upstream("up", 8080)),
        (A, "routes", route("r1", "up")),
        (
            A,
            "global_rules",
            json!({"id": "g", "plugins": {"request-id": {}}}),
        ),
        (B, "upstreams", upstream("other", 9090)),
        (
            B,
            "routes",
            json!({"id": "rb", "paths": ["/b/*"], "upstream_id": "other"}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{base}/{kind}"), body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let team_path = |name: &str| format!("/clusters/c1/instances/{name}?namespace={team}");
    let revision_of = |name: &'static str| {
        let admin = &admin;
        let path = team_path(name);
        async move { admin.get(&path).await.body["revision"].as_u64().unwrap() }
    };

    // The default namespace's export, made the team's: its instances renamed to the
    // team's (empty) ones.
    let default = admin
        .get("/namespaces/default/config?format=json")
        .await
        .body;
    let mut file = default.clone();
    file["namespace"] = json!(team);
    for entry in file["instances"].as_array_mut().unwrap() {
        let renamed = entry["instance"]
            .as_str()
            .unwrap()
            .replace("instance_", "team_");
        entry["instance"] = json!(renamed);
    }

    // A viewer of the namespace may not apply.
    let viewer = admin
        .send(
            "POST",
            "/users",
            json!({"name": "viewer", "roles": {&team: "viewer"}}),
        )
        .await;
    assert_eq!(viewer.status, StatusCode::CREATED, "{}", viewer.body);
    let token = admin
        .send("POST", "/users/viewer/tokens", json!({"name": "t"}))
        .await;
    let viewer_token = token.body["token"].as_str().unwrap().to_owned();
    let (status, refused) = apply_namespace(&admin, &viewer_token, &team, &file, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");

    // A dry run answers per instance and writes nothing.
    let (status, preview) =
        apply_namespace(&admin, common::ADMIN_TOKEN, &team, &file, "?dry_run=true").await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["dry_run"], true);
    let listed = preview["instances"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{preview}");
    assert_eq!(listed[0]["instance"], "team_a");
    assert_eq!(listed[0]["changes"].as_array().unwrap().len(), 3);
    assert_eq!(listed[0]["from_revision"], 0);
    assert_eq!(listed[0]["revision"], 1);
    assert_eq!(listed[1]["changes"].as_array().unwrap().len(), 2);
    assert_eq!(
        (revision_of("team_a").await, revision_of("team_b").await),
        (0, 0)
    );

    // Applied: every instance reproduced, one `apply` revision each, with the message.
    let (status, done) = apply_namespace(&admin, common::ADMIN_TOKEN, &team, &file, "").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["dry_run"], false);
    for one in done["instances"].as_array().unwrap() {
        assert_eq!(
            (one["changed"].clone(), one["revision"].clone()),
            (json!(true), json!(1))
        );
        assert_eq!(one["sync"], "applied", "{one}");
    }
    let applied = admin
        .get(&format!("/namespaces/{team}/config?format=json"))
        .await
        .body;
    for (from, to) in [("instance_a", "team_a"), ("instance_b", "team_b")] {
        assert_eq!(config_of(&applied, to), config_of(&default, from), "{to}");
    }
    let history = admin
        .get(&format!(
            "/clusters/c1/instances/team_b/revisions?namespace={team}"
        ))
        .await;
    assert_eq!(history.body["items"][0]["op"], "apply");
    assert_eq!(history.body["items"][0]["message"], "team sync");
    assert_eq!(agent.meta("team_a").await, Some(1));
    // The audit record names the namespace and what each instance got.
    let audit = admin.get(&format!("/audit?namespace={team}")).await;
    let record = &audit.body["items"][0];
    assert_eq!(
        record["action"],
        format!("PUT /gateway/apiserver/v1/namespaces/{team}/config")
    );
    assert_eq!(record["status"], 200);
    assert_eq!(record["after"][1]["instance"], "team_b");
    assert_eq!(record["after"][1]["revision"], 1);
    // Applied again: nothing changes, no revision.
    let (_, again) = apply_namespace(&admin, common::ADMIN_TOKEN, &team, &file, "").await;
    assert_eq!(again["instances"][0]["changed"], false, "{again}");
    assert_eq!(revision_of("team_a").await, 1);

    // Bad files change nothing in any instance, and name the field: team_a's change is
    // fine, team_b's config breaks a rule / does not parse / names what is missing; an
    // instance of another namespace, one listed twice, the wrong namespace.
    let changed_a = {
        let mut f = file.clone();
        f["instances"][0]["config"]["routes"][0]["paths"] = json!(["/changed/*"]);
        f
    };
    let with_b = |config: Value| {
        let mut f = changed_a.clone();
        f["instances"][1]["config"] = config;
        f
    };
    let with_entry = |entry: Value| {
        let mut f = changed_a.clone();
        f["instances"].as_array_mut().unwrap().push(entry);
        f
    };
    let cases = [
        (
            with_b(
                json!({"routes": [{"id": "rb", "paths": ["b"], "upstream_id": "other"}],
                "upstreams": [upstream("other", 9090)]}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instances[1].config.routes[rb].paths[0]",
        ),
        (
            with_b(json!({"routes": [{"id": "rb", "pathz": ["/b"]}]})),
            StatusCode::BAD_REQUEST,
            "instances[1].config.routes[0].pathz",
        ),
        (
            with_b(json!({"routes": [{"id": "rb", "paths": ["/b"], "upstream_id": "nope"}]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instances[1].config.routes[rb].upstream_id",
        ),
        (
            with_entry(json!({"cluster": "c1", "instance": "instance_a", "config": {}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instances[2].instance",
        ),
        (
            with_entry(json!({"cluster": "c1", "instance": "nowhere", "config": {}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instances[2].instance",
        ),
        (
            with_entry(json!({"cluster": "c1", "instance": "team_a", "config": {}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instances[2].instance",
        ),
        (
            {
                let mut f = changed_a.clone();
                f["namespace"] = json!("default");
                f
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "namespace",
        ),
    ];
    for (bad, status, field) in cases {
        let (got, answer) = apply_namespace(&admin, common::ADMIN_TOKEN, &team, &bad, "").await;
        assert_eq!(got, status, "{field}: {answer}");
        assert!(
            fields(&answer).contains(&field.to_owned()),
            "{field}: {answer}"
        );
    }
    assert_eq!(
        (revision_of("team_a").await, revision_of("team_b").await),
        (1, 1)
    );
    // The other namespace's instance was not touched either.
    assert_eq!(admin.instance("c1", "instance_a").await["revision"], 3);

    // expected_revision per instance: a stale one refuses the whole file (409, the
    // instance and where it is named), even the instance listed before it.
    let mut guarded = changed_a.clone();
    guarded["instances"][1]["config"]["routes"][0]["paths"] = json!(["/b2/*"]);
    guarded["instances"][0]["expected_revision"] = json!(1);
    guarded["instances"][1]["expected_revision"] = json!(0);
    let (status, conflict) =
        apply_namespace(&admin, common::ADMIN_TOKEN, &team, &guarded, "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["code"], "revision_conflict");
    assert_eq!(fields(&conflict), ["instances[1].expected_revision"]);
    assert_eq!(
        (revision_of("team_a").await, revision_of("team_b").await),
        (1, 1)
    );
    guarded["instances"][1]["expected_revision"] = json!(1);
    let (status, done) = apply_namespace(&admin, common::ADMIN_TOKEN, &team, &guarded, "").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        (revision_of("team_a").await, revision_of("team_b").await),
        (2, 2)
    );
    // A query expected_revision means nothing for a namespace.
    let (status, _) = apply_namespace(
        &admin,
        common::ADMIN_TOKEN,
        &team,
        &guarded,
        "?expected_revision=2",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // One instance's apply, rollback and single writes take ?expected_revision too.
    let yaml = export(&admin, A).await;
    let (status, stale) = apply(&admin, B, &yaml, "?expected_revision=1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{stale}");
    assert_eq!(stale["code"], "revision_conflict");
    assert_eq!(fields(&stale), ["expected_revision"]);
    assert_eq!(admin.instance("c1", "instance_b").await["revision"], 2);
    let (status, done) = apply(&admin, B, &yaml, "?expected_revision=2").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        (done["from_revision"].clone(), done["revision"].clone()),
        (json!(2), json!(3))
    );
    // Nothing to change with a stale expectation is a conflict too.
    let (status, _) = apply(&admin, B, &yaml, "?expected_revision=2").await;
    assert_eq!(status, StatusCode::CONFLICT);

    let rollback = admin
        .call(
            "POST",
            &format!("{B}/revisions/2/rollback?expected_revision=2"),
            None,
        )
        .await;
    assert_eq!(rollback.status, StatusCode::CONFLICT, "{}", rollback.body);
    assert_eq!(rollback.header("x-portico-revision"), "3");
    assert_eq!(admin.instance("c1", "instance_b").await["revision"], 3);
    let rollback = admin
        .call(
            "POST",
            &format!("{B}/revisions/2/rollback?expected_revision=3"),
            None,
        )
        .await;
    assert_eq!(rollback.status, StatusCode::OK, "{}", rollback.body);
    assert_eq!(rollback.body["revision"], 4);

    let stale = admin
        .send(
            "POST",
            &format!("{B}/upstreams?expected_revision=3"),
            upstream("late", 1),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert_eq!(admin.instance("c1", "instance_b").await["revision"], 4);
    let fresh = admin
        .send(
            "PUT",
            &format!("{B}/upstreams/late?expected_revision=4"),
            upstream("late", 1),
        )
        .await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{}", fresh.body);
    let stale = admin
        .call(
            "DELETE",
            &format!("{B}/upstreams/late?expected_revision=4"),
            None,
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert_eq!(
        admin.get(&format!("{B}/upstreams/late")).await.status,
        StatusCode::OK
    );
    admin.stop().await;
}

/// What the agent's store holds for an object (secrets included: gateways need them).
async fn stored(agent: &TestAgent, instance: &str, kind: &str, id: &str) -> Value {
    let key = format!("{}{kind}/{id}", agent.keyspace.instance_prefix(instance));
    let kv = store::ConfigStore::get(agent.store.as_ref(), &key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is not in the store"));
    serde_json::from_slice(&kv.value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_exports_carry_secrets_to_an_empty_instance() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/admin.db", dir.path().display());
    let admin = TestAdmin::start(&db, Duration::from_secs(3600)).await;
    let team = admin
        .send("POST", "/namespaces", json!({"name": "team"}))
        .await;
    let team = team.body["id"].as_str().unwrap().to_owned();
    let agent =
        TestAgent::start(&["instance_a", "instance_b", &format!("instance_t@{team}")]).await;
    admin
        .register("c1", &agent, &["instance_a", "instance_b", "instance_t"])
        .await;
    let hmac_secret = "an-hmac-secret-of-enough-length-0123456789";
    for (kind, body) in [
        ("certificates", common::certificate("cert")),
        (
            "consumers",
            json!({"id": "alice", "credentials": [
                {"type": "key-auth", "id": "k", "key": "alice-key-0123456789"},
                {"type": "basic-auth", "id": "b", "username": "alice", "password": "a-long-password-1"},
                {"type": "jwt-auth", "id": "j", "key": "alice-jwt", "algorithm": "HS256",
                 "secret": "a-jwt-secret-of-at-least-32-bytes!!"},
                {"type": "hmac-auth", "id": "h", "key_id": "alice-hmac", "secret": hmac_secret},
            ]}),
        ),
    ] {
        let answer = admin.send("POST", &format!("{A}/{kind}"), body).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{kind}: {}",
            answer.body
        );
    }
    let sealed_export = |base: &'static str, who: Option<String>| {
        let admin = &admin;
        async move {
            let response = admin
                .http
                .get(format!("{}{base}/config?secrets=sealed", admin.url))
                .bearer_auth(who.unwrap_or_else(|| common::ADMIN_TOKEN.to_owned()))
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let (status, yaml) = sealed_export(A, None).await;
    assert_eq!(status, StatusCode::OK, "{yaml}");
    // No secret shows: each is sealed in its place.
    for secret in [
        common::KEY.lines().nth(1).unwrap(),
        hmac_secret,
        "a-jwt-secret",
    ] {
        assert!(!yaml.contains(secret), "{secret} in {yaml}");
    }
    assert!(yaml.matches("enc:v1:").count() >= 5, "{yaml}");

    // Applied to an empty instance of the namespace: the same objects, secrets included.
    let (status, done) = apply(&admin, B, &yaml, "").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        objects(&export(&admin, B).await),
        objects(&export(&admin, A).await)
    );
    for (kind, id) in [("certificates", "cert"), ("consumers", "alice")] {
        assert_eq!(
            stored(&agent, "instance_b", kind, id).await,
            stored(&agent, "instance_a", kind, id).await,
            "{kind} {id}"
        );
    }
    assert_eq!(
        stored(&agent, "instance_b", "certificates", "cert").await["key"],
        common::KEY
    );

    // Not in another namespace, not on another object: refused by field, nothing written.
    let team_base = "/clusters/c1/instances/instance_t";
    let (status, refused) = apply(&admin, team_base, &yaml, &format!("?namespace={team}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let fields: Vec<&str> = refused["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"certificates[cert].key"), "{fields:?}");
    assert!(
        fields.contains(&"consumers[alice].credentials[3].secret"),
        "{fields:?}"
    );
    let t = admin.get(&format!("{team_base}?namespace={team}")).await;
    assert_eq!(t.body["revision"], 0, "{}", t.body);
    let moved = yaml.replace("id: cert", "id: cert2");
    let (status, refused) = apply(&admin, B, &moved, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"][0]["field"], "certificates[cert2].key");

    // Sealed exports are for editors; a viewer gets 403, and a bad value is named.
    let user = admin
        .send(
            "POST",
            "/users",
            json!({"name": "viewer", "roles": {"default": "viewer"}}),
        )
        .await;
    assert_eq!(user.status, StatusCode::CREATED, "{}", user.body);
    let token = admin
        .send("POST", "/users/viewer/tokens", json!({"name": "t"}))
        .await;
    let token = token.body["token"].as_str().unwrap().to_owned();
    let (status, _) = sealed_export(A, Some(token.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let plain = admin
        .http
        .get(format!("{}{A}/config", admin.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    let odd = admin.get(&format!("{A}/config?secrets=clear")).await;
    assert_eq!(odd.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(odd.fields(), ["secrets"]);
    admin.stop().await;
}
