//! The route tester against a running node: over a route table of every path kind,
//! wildcard and exact hosts, priorities, predicates and methods, each request's tester
//! answer (route, 404, 405, 400) is what the node does with it over HTTP; and over
//! synthetic tables, the tester's per-route explanation agrees with the lookup.

use gateway::tester::TestTable;
use gateway::HttpSettings;
use model::resource::Resource;
use model::snapshot::Snapshot;
use model::tester::{HeaderValues, MissReason, Outcome, RouteTest};
use serde_json::{json, Value};
use testkit::upstream::{Answer, ScriptedUpstream};

mod common;
use common::Node;

/// The table: every route sends to an upstream of its own that rewrites `Host` to
/// `{id}.route`, which the upstream echoes, so a response names its route.
fn routes() -> Vec<Value> {
    vec![
        json!({"id": "users-exact", "paths": ["/users"], "methods": ["GET"]}),
        json!({"id": "users-prefix", "paths": ["/users/*"]}),
        json!({"id": "user-template", "paths": ["/users/{id}"], "methods": ["GET", "PUT"]}),
        json!({"id": "user-posts", "paths": ["/users/{id}/posts"]}),
        json!({"id": "api-regex", "paths": ["~/api/v[0-9]+/items"]}),
        json!({"id": "api-any", "paths": ["/api/*"]}),
        json!({"id": "api-wild", "paths": ["/api/*"], "hosts": ["*.example.com"], "priority": 10}),
        json!({"id": "api-wild-low", "paths": ["/api/*"], "hosts": ["*.example.com"]}),
        json!({"id": "api-shop", "paths": ["/api/*"], "hosts": ["shop.example.com"]}),
        json!({"id": "api-eu", "paths": ["/api/*"], "hosts": ["*.eu.example.com"]}),
        json!({"id": "tenant-blue", "paths": ["/t/*"],
               "headers": [{"name": "x-tenant", "op": "equals", "value": "blue"}]}),
        json!({"id": "tenant-any", "paths": ["/t/*"], "priority": -1}),
        json!({"id": "beta", "paths": ["/q"], "query": [{"name": "beta", "op": "present"}]}),
        json!({"id": "choc", "paths": ["/c"],
               "cookies": [{"name": "flavor", "op": "equals", "value": "choc"}]}),
        json!({"id": "internal", "paths": ["/internal/*"], "remote_addrs": ["10.0.0.0/8"]}),
        json!({"id": "expired", "paths": ["/promo"],
               "time_window": {"before": "2001-01-01T00:00:00Z"}}),
        json!({"id": "post-only", "paths": ["/submit"], "methods": ["POST"]}),
        json!({"id": "org-root", "paths": ["/*"], "hosts": ["root.example.org"]}),
        json!({"id": "off", "paths": ["/off"], "enabled": false}),
        json!({"id": "ready", "paths": ["/ready"]}),
    ]
}

/// (method, host, target, headers, expected answer: a route id, 404, 405 or 400).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const CASES: &[Case] = &[
    ("GET", "h.test", "/users", &[], "users-exact"),
    ("POST", "h.test", "/users", &[], "405"),
    ("GET", "h.test", "/a/../users", &[], "users-exact"),
    ("GET", "h.test", "/users/42", &[], "users-prefix"),
    ("DELETE", "h.test", "/users/42/posts", &[], "users-prefix"),
    ("GET", "h.test", "/api/v2/items", &[], "api-regex"),
    ("GET", "h.test", "/api/vx/items", &[], "api-any"),
    ("GET", "shop.example.com", "/api/x", &[], "api-shop"),
    ("GET", "Shop.Example.COM:8080", "/api/x", &[], "api-shop"),
    ("GET", "a.example.com", "/api/x", &[], "api-wild"),
    ("GET", "x.eu.example.com", "/api/x", &[], "api-eu"),
    ("GET", "example.com", "/api/x", &[], "api-any"),
    (
        "GET",
        "h.test",
        "/t/1",
        &[("x-tenant", "blue")],
        "tenant-blue",
    ),
    (
        "GET",
        "h.test",
        "/t/1",
        &[("x-tenant", "red")],
        "tenant-any",
    ),
    ("GET", "h.test", "/q?beta=1", &[], "beta"),
    ("GET", "h.test", "/q", &[], "404"),
    (
        "GET",
        "h.test",
        "/c",
        &[("cookie", "a=1; flavor=choc")],
        "choc",
    ),
    (
        "GET",
        "h.test",
        "/c",
        &[("cookie", "flavor=vanilla")],
        "404",
    ),
    (
        "GET",
        "h.test",
        "/internal/x",
        &[("x-forwarded-for", "10.1.2.3")],
        "internal",
    ),
    ("GET", "h.test", "/internal/x", &[], "404"),
    ("GET", "h.test", "/promo", &[], "404"),
    ("GET", "h.test", "/submit", &[], "405"),
    ("POST", "h.test", "/submit", &[], "post-only"),
    ("GET", "h.test", "/off", &[], "404"),
    ("GET", "root.example.org", "/anything", &[], "org-root"),
    ("GET", "h.test", "/anything", &[], "404"),
    ("GET", "h.test", "/bad%zz", &[], "400"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tester_answers_what_a_running_node_does() {
    let app = ScriptedUpstream::start(|r| {
        Answer::new(200, r.header("host").unwrap_or("none").to_owned())
    })
    .await;
    // Loopback is a trusted proxy: X-Forwarded-For names the client, on both sides.
    let settings = HttpSettings {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..HttpSettings::default()
    };
    let mut node = Node::start_with(settings.clone()).await;
    let mut snapshot = Snapshot::default();
    for mut route in routes() {
        let id = route["id"].as_str().unwrap().to_owned();
        let upstream = json!({"id": format!("u-{id}"), "pass_host": "rewrite",
                              "upstream_host": format!("{id}.route"),
                              "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]});
        route["upstream_id"] = json!(format!("u-{id}"));
        node.put(&format!("upstreams/u-{id}"), upstream.clone())
            .await;
        node.put(&format!("routes/{id}"), route.clone()).await;
        snapshot.push(Resource::Upstream(
            serde_json::from_value(upstream).unwrap(),
        ));
        snapshot.push(Resource::Route(serde_json::from_value(route).unwrap()));
    }
    node.until("/ready", 200, "ready.route").await;
    let table = TestTable::from_snapshot(&snapshot);

    for &(method, host, target, headers, want) in CASES {
        let mut test = RouteTest::get(target);
        test.method = method.to_owned();
        test.host = Some(host.to_owned());
        test.client_ip = Some("127.0.0.1".to_owned());
        for (name, value) in headers {
            test.headers
                .insert((*name).to_owned(), HeaderValues::One((*value).to_owned()));
        }
        let answer = table.test(&settings, &test).unwrap();
        let tester = match &answer.outcome {
            Outcome::Matched => answer.matched.as_ref().unwrap().route_id.clone(),
            Outcome::NotFound => "404".to_owned(),
            Outcome::MethodNotAllowed { .. } => "405".to_owned(),
            Outcome::BadRequest { .. } => "400".to_owned(),
            Outcome::Refused { code, .. } => code.clone(),
        };

        let mut request = node
            .http
            .request(method.parse().unwrap(), node.at(target))
            .header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        let node_says = match status {
            200 => body
                .strip_suffix(".route")
                .unwrap_or_else(|| panic!("{body}"))
                .to_owned(),
            other => other.to_string(),
        };

        let case = format!("{method} {host}{target} {headers:?}");
        assert_eq!(tester, want, "tester, {case}: {answer:#?}");
        assert_eq!(node_says, want, "node, {case}");
        assert_eq!(answer.status, (status != 200).then_some(status), "{case}");
        if let Outcome::MethodNotAllowed { allow: listed } = &answer.outcome {
            assert_eq!(allow, Some(listed.join(", ")), "{case}");
        }
        // Every route of the table is accounted for: the match and the near misses.
        if answer.request.is_some() {
            let matched = usize::from(answer.matched.is_some());
            assert_eq!(answer.near_misses.len() + matched, routes().len(), "{case}");
        }
    }
    node.stop().await;
}

#[test]
fn explanations_agree_with_the_lookup_on_synthetic_tables() {
    let n = 400;
    let mut snapshot = Snapshot::default();
    snapshot.push(Resource::Upstream(
        serde_json::from_value(json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]}))
            .unwrap(),
    ));
    for i in 0..n {
        snapshot.push(Resource::Route(
            serde_json::from_value(testkit::routes::route(i, "u")).unwrap(),
        ));
    }
    let table = TestTable::from_snapshot(&snapshot);
    let settings = HttpSettings::default();
    for i in 0..n {
        let (host, path) = testkit::routes::request(i);
        for (method, host) in [("GET", host.as_str()), ("DELETE", "nowhere.test")] {
            let mut test = RouteTest::get(&path);
            test.method = method.to_owned();
            test.host = Some(host.to_owned());
            // Debug builds assert inside that no route's own check contradicts the
            // lookup; here the answer must account for every route once.
            let answer = table.test(&settings, &test).unwrap();
            let matched = answer.matched.as_ref().map(|m| m.route_id.clone());
            assert_eq!(
                answer.near_misses.len() + answer.truncated + usize::from(matched.is_some()),
                n
            );
            for miss in &answer.near_misses {
                if miss.reason == MissReason::Shadowed {
                    assert_eq!(miss.shadowed_by, matched, "{method} {host}{path}");
                }
            }
            if method == "GET" {
                assert_eq!(
                    matched.as_deref(),
                    Some(format!("r{i}").as_str()),
                    "{host}{path}"
                );
            }
        }
    }
}
