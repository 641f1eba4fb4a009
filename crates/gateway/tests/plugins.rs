//! Plugins through a running gateway, on the engine the suite runs on (`cargo xtask
//! test` runs it on the fast path, then on Pingora's path alone): each phase a plugin
//! acts in reaches the wire the same way.

use serde_json::json;
use testkit::upstream::{Answer, ScriptedUpstream};

mod common;
use common::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_goes_upstream_and_back() {
    let app = ScriptedUpstream::start(|r| {
        Answer::new(200, r.header("x-request-id").unwrap_or("none").to_owned())
    })
    .await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/ids",
        json!({"id": "ids", "paths": ["/ids/*"], "upstream_id": "app",
               "plugins": {"request-id": {}}}),
    )
    .await;
    node.put(
        "routes/quiet",
        json!({"id": "quiet", "paths": ["/quiet/*"], "upstream_id": "app",
               "plugins": {"request-id": {"header_name": "X-Trace", "include_in_response": false}}}),
    )
    .await;
    node.until("/ids/warm", 200, "").await;

    // A new id: the upstream and the client see the same one.
    let (status, body, headers) = node.get("GET", "/ids/a").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 36, "{body}");
    assert_eq!(headers["x-request-id"], body.as_str());
    let (_, other, _) = node.get("GET", "/ids/b").await;
    assert_ne!(other, body, "each request gets its own id");

    // The client's id is kept, and only one reaches the upstream.
    let response = node
        .http
        .get(node.at("/ids/c"))
        .header("x-request-id", "from-client")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "from-client");
    assert_eq!(response.text().await.unwrap(), "from-client");
    let last = app.received().pop().unwrap();
    assert_eq!(
        last.headers
            .iter()
            .filter(|(n, _)| n == "x-request-id")
            .count(),
        1
    );

    // Another header, not sent back.
    let (status, _, headers) = node.get("GET", "/quiet/x").await;
    assert_eq!(status, 200);
    assert!(headers.get("x-trace").is_none());
    assert_eq!(
        app.received()
            .pop()
            .unwrap()
            .header("x-trace")
            .map(str::len),
        Some(36)
    );
    node.stop().await;
}

/// An upstream answering with what it received: the target, then every header line.
async fn echo() -> ScriptedUpstream {
    ScriptedUpstream::start(|r| {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(n, v)| format!("{}: {v}", n.to_ascii_lowercase()))
            .collect();
        Answer::new(200, format!("{}\n{}", r.target, headers.join("\n")))
    })
    .await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// Consumers as the admin stores them: hashed credentials.
async fn put_consumers(node: &mut Node) {
    node.put(
        "consumers/alice",
        json!({"id": "alice", "group_id": "gold", "credentials": [
            {"type": "key-auth", "id": "k", "key_hash": model::consumer::hash_key("alice-key-000")},
            {"type": "basic-auth", "id": "b", "username": "alice",
             "password_hash": model::consumer::hash_password("alice-pw")}
        ]}),
    )
    .await;
    node.put("consumer_groups/gold", json!({"id": "gold"}))
        .await;
    node.put(
        "consumers/bob",
        json!({"id": "bob", "credentials": [
            {"type": "key-auth", "id": "k", "key_hash": model::consumer::hash_key("bob-key-00000")}
        ]}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_basic_auth_identify_consumers_any_of_them() {
    let app = echo().await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    put_consumers(&mut node).await;
    node.put(
        "routes/key",
        json!({"id": "key", "paths": ["/key/*"], "upstream_id": "app",
               "plugins": {"key-auth": {}}}),
    )
    .await;
    node.put(
        "routes/basic",
        json!({"id": "basic", "paths": ["/basic/*"], "upstream_id": "app",
               "plugins": {"basic-auth": {"realm": "shop"}}}),
    )
    .await;
    node.put(
        "routes/gold",
        json!({"id": "gold", "paths": ["/gold/*"], "upstream_id": "app",
               "plugins": {"key-auth": {"hide_credentials": false}, "basic-auth": {},
                           "consumer-restriction": {"type": "consumer_group_id", "allowlist": ["gold"]}}}),
    )
    .await;
    node.until("/key/warm", 401, "").await;

    // key-auth: missing, wrong, right (header, then query); the key stays here.
    let (status, body, headers) = node.get("GET", "/key/a").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Missing API key"), "{body}");
    assert_eq!(headers["www-authenticate"], "Key realm=\"portico\"");
    let (status, body, _) = node
        .send(
            node.http
                .get(node.at("/key/a"))
                .header("apikey", "nope-nope"),
        )
        .await;
    assert_eq!(status, 401);
    assert!(
        body.contains("Invalid API key") && body.contains("unauthorized"),
        "{body}"
    );
    let (status, body, _) = node
        .send(
            node.http
                .get(node.at("/key/a"))
                .header("apikey", "alice-key-000"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("alice-key-000"),
        "the key reached the upstream: {body}"
    );
    let (status, body, _) = node.get("GET", "/key/q?x=1&apikey=bob-key-00000&y=2").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("/key/q?x=1&y=2\n"), "{body}");
    // The header's name in any case, among others the plugin does not read (the fast
    // path collects only the headers a chain names): found, and still hidden.
    let answer = common::raw_exchange(
        &node.url,
        b"GET /key/raw HTTP/1.1\r\nHost: h\r\nX-Other: 1\r\nAPIKey: alice-key-000\r\nUser-Agent: raw\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("x-other: 1") && !answer.to_ascii_lowercase().contains("apikey"),
        "{answer}"
    );

    // basic-auth: challenge, wrong password, right one; Authorization stays here.
    let (status, _, headers) = node.get("GET", "/basic/a").await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"shop\"");
    let wrong = node
        .http
        .get(node.at("/basic/a"))
        .header("authorization", basic("alice", "x"));
    assert_eq!(node.send(wrong).await.0, 401);
    for _ in 0..2 {
        let right = node
            .http
            .get(node.at("/basic/a"))
            .header("authorization", basic("alice", "alice-pw"));
        let (status, body, _) = node.send(right).await;
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("authorization"), "{body}");
    }

    // Both on one route: any of them lets in; the group restriction then decides.
    let (status, body, _) = node
        .send(
            node.http
                .get(node.at("/gold/a"))
                .header("apikey", "bob-key-00000"),
        )
        .await;
    assert_eq!(status, 403, "bob is not in the gold group: {body}");
    let (status, body, _) = node
        .send(
            node.http
                .get(node.at("/gold/a"))
                .header("apikey", "wrong-key-000")
                .header("authorization", basic("alice", "alice-pw")),
        )
        .await;
    assert_eq!(
        status, 200,
        "a wrong key beside a right Basic credential: {body}"
    );
    let (status, body, _) = node
        .send(
            node.http
                .get(node.at("/gold/a"))
                .header("apikey", "alice-key-000"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("apikey: alice-key-000"),
        "hide_credentials false: {body}"
    );
    let (status, body, _) = node.get("GET", "/gold/a").await;
    assert_eq!(status, 401, "{body}");
    node.stop().await;
}

async fn call(node: &Node, tenant: &str) -> (u16, String, reqwest::header::HeaderMap) {
    node.send(
        node.http
            .get(node.at("/limited/a"))
            .header("x-tenant", tenant),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_count_counts_per_key_and_keeps_counting_across_other_changes() {
    let app = echo().await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    // A day-long window: the test never crosses its boundary in practice.
    let limited = json!({"id": "limited", "paths": ["/limited/*"], "upstream_id": "app",
        "plugins": {"limit-count": {"count": 3, "time_window": 86400, "key_type": "header",
                                    "header": "x-tenant"}}});
    node.put("routes/limited", limited.clone()).await;
    node.until("/limited/warm", 200, "").await;

    for want in ["2", "1", "0"] {
        let (status, _, headers) = call(&node, "t1").await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-ratelimit-limit"], "3");
        assert_eq!(headers["x-ratelimit-remaining"], want);
    }
    let (status, body, headers) = call(&node, "t1").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86400).contains(&retry));
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    // Another tenant counts alone.
    assert_eq!(call(&node, "t2").await.0, 200);

    // Another route changes: the counts stay.
    node.put(
        "routes/other",
        json!({"id": "other", "paths": ["/other"], "upstream_id": "app"}),
    )
    .await;
    node.until("/other", 200, "").await;
    assert_eq!(call(&node, "t1").await.0, 429);
    // The limit itself changes: a new counter.
    let mut raised = limited.clone();
    raised["plugins"]["limit-count"]["count"] = json!(5);
    node.put("routes/limited", raised).await;
    let mut fresh = false;
    for _ in 0..100 {
        if call(&node, "t1").await.0 == 200 {
            fresh = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(fresh, "the changed limit counts afresh");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_global_rules_and_templates_shape_the_chain() {
    let app = echo().await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    put_consumers(&mut node).await;
    node.put(
        "services/shop",
        json!({"id": "shop", "upstream_id": "app", "plugins": {"key-auth": {}}}),
    )
    .await;
    // The route has no upstream of its own: the service's serves it.
    node.put(
        "routes/cart",
        json!({"id": "cart", "paths": ["/cart"], "service_id": "shop"}),
    )
    .await;
    node.put(
        "global_rules/ids",
        json!({"id": "ids", "plugins": {"request-id": {"header_name": "x-trace"}}}),
    )
    .await;
    node.until("/cart", 401, "").await;
    // The global rule is a later write than the route: it may come in a later
    // config than the one that made /cart answer, but it must come (a chain built
    // before it is rebuilt with it).
    let mut traced = None;
    for _ in 0..100 {
        let (status, body, headers) = node
            .send(
                node.http
                    .get(node.at("/cart"))
                    .header("apikey", "alice-key-000"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if let Some(id) = headers.get("x-trace") {
            traced = Some(id.len());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(traced, Some(36), "the global rule's request-id runs");
    // Only the global rule changes: the unchanged route's chain takes the new one.
    node.put(
        "global_rules/ids",
        json!({"id": "ids", "plugins": {"request-id": {"header_name": "x-trace-2"}}}),
    )
    .await;
    let mut renamed = false;
    for _ in 0..100 {
        let (_, _, headers) = node
            .send(
                node.http
                    .get(node.at("/cart"))
                    .header("apikey", "alice-key-000"),
            )
            .await;
        if headers.contains_key("x-trace-2") && !headers.contains_key("x-trace") {
            renamed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(renamed, "a changed global rule reaches the unchanged route");

    // The template turns key-auth off for the instance.
    node.put(
        "plugin_templates/key-auth",
        json!({"id": "key-auth", "enabled": false}),
    )
    .await;
    node.until("/cart", 200, "").await;
    // A consumer whose group is missing is not served: its key stops working.
    node.delete("plugin_templates/key-auth").await;
    node.until("/cart", 401, "").await;
    node.delete("consumer_groups/gold").await;
    let mut refused = false;
    for _ in 0..100 {
        let (status, _, _) = node
            .send(
                node.http
                    .get(node.at("/cart"))
                    .header("apikey", "alice-key-000"),
            )
            .await;
        if status == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_plugin_config_skips_its_route_and_is_reported() {
    let app = echo().await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/fine",
        json!({"id": "fine", "paths": ["/fine"], "upstream_id": "app"}),
    )
    .await;
    // Written past the admin (which refuses it): the gateway must not serve the route
    // without its limit.
    node.put(
        "routes/broken",
        json!({"id": "broken", "paths": ["/broken"], "upstream_id": "app",
               "plugins": {"limit-count": {"count": 0, "time_window": 60}}}),
    )
    .await;
    node.until("/fine", 200, "").await;
    assert_eq!(node.get("GET", "/broken").await.0, 404);
    let mut reported = None;
    for _ in 0..200 {
        if let Some(beat) = node.heartbeat().await {
            if let Some(skipped) = beat
                .skipped
                .iter()
                .find(|s| s.key.ends_with("routes/broken"))
            {
                reported = Some(skipped.reason.clone());
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let reason = reported.expect("the heartbeat names the skipped route");
    assert!(reason.contains("plugins.limit-count.count"), "{reason}");
    node.stop().await;
}

/// An HS256 token for `kid` with `claims`.
fn hs256(kid: &str, secret: &str, claims: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signed = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "typ": "JWT", "kid": kid})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = ring::hmac::sign(&key, signed.as_bytes());
    format!("{signed}.{}", b64(signature.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_takes_signed_tokens_only() {
    const SECRET: &str = "carol-signs-with-32-bytes-or-more";
    let app = echo().await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "consumers/carol",
        json!({"id": "carol", "credentials": [
            {"type": "jwt-auth", "id": "j", "key": "carol-kid", "algorithm": "HS256", "secret": SECRET}
        ]}),
    )
    .await;
    node.put(
        "routes/jwt",
        json!({"id": "jwt", "paths": ["/jwt/*"], "upstream_id": "app",
               "plugins": {"jwt-auth": {"audience": ["shop"]}}}),
    )
    .await;
    node.until("/jwt/warm", 401, "").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bearer = |token: String| format!("Bearer {token}");
    let good = hs256(
        "carol-kid",
        SECRET,
        json!({"exp": now + 600, "aud": "shop"}),
    );
    let (status, body, _) = node
        .send(
            node.http
                .get(node.at("/jwt/a"))
                .header("authorization", bearer(good.clone())),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains(&good),
        "the token reached the upstream: {body}"
    );
    // In the query: taken, and removed before the request goes upstream.
    let (status, body, _) = node.get("GET", &format!("/jwt/q?jwt={good}&k=v")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("/jwt/q?k=v\n"), "{body}");
    for (token, why) in [
        (
            hs256(
                "carol-kid",
                SECRET,
                json!({"exp": now - 600, "aud": "shop"}),
            ),
            "JWT expired",
        ),
        (
            hs256(
                "carol-kid",
                SECRET,
                json!({"exp": now + 600, "aud": "blog"}),
            ),
            "JWT audience not accepted",
        ),
        (
            hs256(
                "carol-kid",
                "not-carols-secret-but-as-long-as-it",
                json!({"exp": now + 600, "aud": "shop"}),
            ),
            "JWT signature invalid",
        ),
        (
            hs256("dave-kid", SECRET, json!({"exp": now + 600, "aud": "shop"})),
            "JWT key unknown",
        ),
    ] {
        let (status, body, headers) = node
            .send(
                node.http
                    .get(node.at("/jwt/a"))
                    .header("authorization", bearer(token)),
            )
            .await;
        assert_eq!(status, 401, "{why}: {body}");
        assert!(body.contains(why), "{why}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"portico\"");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_by_route_consumer_and_status_on_the_status_port() {
    let app = echo().await;
    let status: std::net::SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let mut node = Node::start_with_options(common::Options {
        status_listen: Some(status),
        ..common::Options::default()
    })
    .await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    put_consumers(&mut node).await;
    node.put(
        "routes/counted",
        json!({"id": "counted", "paths": ["/counted"], "upstream_id": "app",
               "plugins": {"key-auth": {}, "prometheus": {}}}),
    )
    .await;
    node.until("/counted", 401, "").await;
    for _ in 0..2 {
        let (status, _, _) = node
            .send(
                node.http
                    .get(node.at("/counted"))
                    .header("apikey", "alice-key-000"),
            )
            .await;
        assert_eq!(status, 200);
    }
    let metrics = || async {
        reqwest::get(format!("http://{status}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let text = metrics().await;
    assert!(
        text.contains(
            r#"portico_http_requests_total{route="counted",service="",consumer="alice",code="200"} 2"#
        ),
        "{text}"
    );
    // The 401s of `until` and this one, without a consumer.
    assert!(
        text.contains(
            r#"portico_http_requests_total{route="counted",service="",consumer="",code="401"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"portico_http_request_duration_seconds_count{route="counted"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portico_upstream_duration_seconds_count{route="counted"} 2"#),
        "{text}"
    );
    assert!(text.contains("portico_config_revision "), "{text}");
    assert!(text.contains("portico_redis_fallbacks_total 0"), "{text}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_proxy_rewrite_and_request_size_limit() {
    let app = echo().await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}],
               "pass_host": "node"}),
    )
    .await;
    node.put(
        "routes/web",
        json!({"id": "web", "paths": ["/web/*"], "upstream_id": "app",
               "plugins": {"cors": {"allow_origins": ["https://app.example.com"],
                                    "allow_methods": ["GET", "POST"],
                                    "expose_headers": ["x-total"], "max_age": 600,
                                    "allow_credentials": true}}}),
    )
    .await;
    node.put(
        "routes/rewrite",
        json!({"id": "rewrite", "paths": ["/api/*"], "upstream_id": "app",
               "plugins": {"proxy-rewrite": {
                   "regex_uri": ["^/api/(\\w+)/(.*)", "/${1}-svc/$2"],
                   "host": "internal.example:8443",
                   "headers": {"set": {"x-env": "prod"}, "add": {"x-tag": "a"},
                               "remove": ["x-secret"]}}}}),
    )
    .await;
    node.put(
        "routes/small",
        json!({"id": "small", "paths": ["/small"], "upstream_id": "app",
               "plugins": {"request-size-limit": {"max_body_bytes": 8}}}),
    )
    .await;
    node.until("/small", 200, "").await;

    // CORS: the preflight is answered here, the upstream never sees it.
    let before = app.received().len();
    let (status, body, headers) = node
        .send(
            node.http
                .request(reqwest::Method::OPTIONS, node.at("/web/a"))
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "x-one, content-type"),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        headers["access-control-allow-headers"],
        "x-one, content-type"
    );
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(app.received().len(), before);
    let (status, _, headers) = node
        .send(
            node.http
                .get(node.at("/web/a"))
                .header("origin", "https://app.example.com"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-expose-headers"], "x-total");
    assert_eq!(headers["vary"], "Origin");
    let (status, _, headers) = node
        .send(
            node.http
                .get(node.at("/web/a"))
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(headers.get("access-control-allow-origin").is_none());

    // proxy-rewrite: path by regex, Host over pass_host, headers; the query stays.
    let (status, body, _) = node
        .send(
            node.http
                .get(node.at("/api/users/7?full=1"))
                .header("x-secret", "s")
                .header("x-tag", "client"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("/users-svc/7?full=1\n"), "{body}");
    let got = app.received().pop().unwrap();
    assert_eq!(got.header("host"), Some("internal.example:8443"));
    assert_eq!(got.header("x-env"), Some("prod"));
    assert!(got.header("x-secret").is_none());
    let tags: Vec<&str> = got
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-tag"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["client", "a"]);

    // request-size-limit: an announced body over 8 bytes is refused before it is read.
    let (status, _, _) = node
        .send(node.http.post(node.at("/small")).body("12345678"))
        .await;
    assert_eq!(status, 200);
    let before = app.received().len();
    let (status, body, _) = node
        .send(node.http.post(node.at("/small")).body("123456789"))
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
    // Streamed (chunked) over the limit: refused, never delivered whole.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(node.listen).await.unwrap();
        conn.write_all(
            b"POST /small HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = vec![0; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    assert!(
        app.received()[before..].iter().all(|r| r.body.len() <= 8),
        "a body over the limit reached the upstream"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_limit_conn_api_breaker_and_fault_injection() {
    // /slow answers after 300 ms, /fail with 502, anything else 200.
    let app = ScriptedUpstream::start(|r| {
        if r.target.contains("/slow") {
            Answer {
                delay: std::time::Duration::from_millis(300),
                ..Answer::new(200, "slow")
            }
        } else if r.target.contains("/fail") {
            Answer::new(502, "down")
        } else {
            Answer::new(200, "ok")
        }
    })
    .await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}],
               "retries": 0}),
    )
    .await;
    let routes = [
        (
            "req",
            json!({"limit-req": {"rate": 1, "key_type": "constant"}}),
        ),
        (
            "conn",
            json!({"limit-conn": {"conn": 2, "key_type": "constant"}}),
        ),
        (
            "breaker",
            json!({"api-breaker": {"unhealthy": {"http_statuses": [502], "count": 2}}}),
        ),
        (
            "fault",
            json!({"fault-injection": {
            "abort": {"http_status": 418, "body": "injected"},
            "delay": {"duration_ms": 200},
            "match_headers": {"x-chaos": "on"}}}),
        ),
    ];
    for (id, plugins) in routes {
        node.put(
            &format!("routes/{id}"),
            json!({"id": id, "paths": [format!("/{id}/*")], "upstream_id": "app", "plugins": plugins}),
        )
        .await;
    }
    node.until("/fault/warm", 200, "ok").await;

    // limit-req: 1/s without burst: the second request at once is refused.
    let (first, _, _) = node.get("GET", "/req/a").await;
    let (second, body, _) = node.get("GET", "/req/a").await;
    assert_eq!((first, second), (200, 429), "{body}");

    // limit-conn: 4 at once against 2 slots; slots come back when requests end.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (node.http.clone(), node.at("/conn/slow"));
            tokio::spawn(async move {
                http.get(url)
                    .header("host", "api.example.com:8080")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(node.get("GET", "/conn/slow").await.0, 200);

    // api-breaker: two 502s in a row break the route (503, the upstream spared).
    assert_eq!(node.get("GET", "/breaker/fail").await.0, 502);
    assert_eq!(node.get("GET", "/breaker/fail").await.0, 502);
    let before = app.received().len();
    let (status, body, _) = node.get("GET", "/breaker/ok").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("circuit_open"), "{body}");
    assert_eq!(app.received().len(), before);

    // fault-injection: only requests with the header, delayed then aborted.
    assert_eq!(node.get("GET", "/fault/a").await.0, 200);
    let started = std::time::Instant::now();
    let (status, body, _) = node
        .send(node.http.get(node.at("/fault/a")).header("x-chaos", "on"))
        .await;
    assert_eq!((status, body.as_str()), (418, "injected"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_and_compression() {
    let big = "compressible ".repeat(400);
    let answer = big.clone();
    let app = ScriptedUpstream::start(move |r| {
        if r.target.starts_with("/zip") {
            Answer::new(200, answer.clone()).with_header("content-type", "text/plain")
        } else {
            Answer::new(200, r.header("traceparent").unwrap_or("none").to_owned())
        }
    })
    .await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/trace",
        json!({"id": "trace", "paths": ["/trace"], "upstream_id": "app",
               "plugins": {"traceparent": {}}}),
    )
    .await;
    node.put(
        "routes/zip",
        json!({"id": "zip", "paths": ["/zip"], "upstream_id": "app",
               "plugins": {"gzip": {"comp_level": 6}, "brotli": {}}}),
    )
    .await;
    node.until("/trace", 200, "").await;

    // Started here: a sampled trace with fresh ids.
    let (_, started, _) = node.get("GET", "/trace").await;
    let parts: Vec<&str> = started.split('-').collect();
    assert_eq!(parts.len(), 4, "{started}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "01")
    );
    // Continued: the trace id and flags stay, the parent is the gateway's span.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let (_, continued, _) = node
        .send(
            node.http
                .get(node.at("/trace"))
                .header("traceparent", incoming),
        )
        .await;
    assert!(
        continued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{continued}"
    );
    assert!(
        continued.ends_with("-00") && !continued.contains("00f067aa0ba902b7"),
        "{continued}"
    );
    // Invalid: a new trace.
    let (_, replaced, _) = node
        .send(
            node.http
                .get(node.at("/trace"))
                .header("traceparent", "00-zz-1-01"),
        )
        .await;
    assert!(
        !replaced.contains("zz") && replaced.len() == 55,
        "{replaced}"
    );

    // Compression, negotiated: gzip, brotli, or none.
    for (accept, encoding) in [
        ("gzip", Some("gzip")),
        ("br", Some("br")),
        ("identity", None),
    ] {
        let response = node
            .http
            .get(node.at("/zip"))
            .header("host", "api.example.com:8080")
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let got = response
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), encoding, "{accept}");
        let body = response.bytes().await.unwrap();
        if encoding.is_some() {
            assert!(body.len() < big.len() / 4, "{accept}: {} bytes", body.len());
        } else {
            assert_eq!(body, big.as_bytes());
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_reach_files_and_http_endpoints() {
    let app = echo().await;
    let collector = ScriptedUpstream::start(|_| Answer::new(200, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    put_consumers(&mut node).await;
    node.put(
        "routes/logged",
        json!({"id": "logged", "paths": ["/logged/*"], "upstream_id": "app",
               "plugins": {"key-auth": {}, "request-id": {},
                           "file-logger": {"path": path.to_str().unwrap()},
                           "http-logger": {"uri": format!("http://127.0.0.1:{}/logs", collector.port()),
                                           "batch_max_size": 2, "inactive_timeout_ms": 100}}}),
    )
    .await;
    node.until("/logged/warm", 401, "").await;
    let (status, _, _) = node
        .send(
            node.http
                .get(node.at("/logged/a?x=1"))
                .header("apikey", "alice-key-000"),
        )
        .await;
    assert_eq!(status, 200);
    let lines = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let mut logged = Vec::new();
    for _ in 0..100 {
        logged = lines();
        if logged.iter().any(|l| l["status"] == 200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ok = logged
        .iter()
        .find(|l| l["status"] == 200)
        .expect("the 200 is logged");
    assert_eq!(ok["route"], "logged");
    assert_eq!(ok["consumer"], "alice");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/logged/a?x=1");
    assert_eq!(ok["request_id"].as_str().map(str::len), Some(36));
    assert!(ok["upstream_ms"].as_f64().is_some());
    let refused = logged
        .iter()
        .find(|l| l["status"] == 401)
        .expect("refusals are logged");
    assert_eq!(refused["consumer"], serde_json::Value::Null);
    assert!(!std::fs::read_to_string(&path)
        .unwrap()
        .contains("alice-key-000"));

    // logrotate: renamed away, a new file is started; SIGUSR1: opened again.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let mut fresh = false;
    for _ in 0..100 {
        node.get("GET", "/logged/rotated").await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if lines().iter().any(|l| l["path"] == "/logged/rotated") {
            fresh = true;
            break;
        }
    }
    assert!(fresh, "a renamed log is followed by a new file");
    let kept = std::fs::read_to_string(&rotated).unwrap();
    assert!(kept.contains("/logged/a?x=1"));
    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    node.get("GET", "/logged/after-signal").await;
    let mut after = false;
    for _ in 0..100 {
        if lines().iter().any(|l| l["path"] == "/logged/after-signal") {
            after = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(after, "the log goes on after SIGUSR1");

    // The HTTP endpoint got JSON arrays of at most two lines.
    let mut batches = Vec::new();
    for _ in 0..100 {
        batches = collector.received();
        let total: usize = batches
            .iter()
            .map(|b| {
                serde_json::from_slice::<Vec<serde_json::Value>>(&b.body)
                    .unwrap()
                    .len()
            })
            .sum();
        if total >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!batches.is_empty());
    for batch in &batches {
        assert_eq!(batch.method, "POST");
        let lines: Vec<serde_json::Value> = serde_json::from_slice(&batch.body).unwrap();
        assert!((1..=2).contains(&lines.len()));
        assert!(lines.iter().all(|l| l["route"] == "logged"));
    }
    node.stop().await;
}

/// A draft-cavage HMAC-SHA256 `Authorization` over `(request-target)` and `date`.
fn hmac_signature(key_id: &str, secret: &str, method: &str, target: &str, date: &str) -> String {
    use base64::Engine as _;
    let signing = format!("(request-target): {method} {target}\ndate: {date}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, signing.as_bytes()).as_ref());
    format!(
        r#"Signature keyId="{key_id}",algorithm="hmac-sha256",headers="(request-target) date",signature="{signature}""#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_auth_refuses_skew_tampering_and_replays() {
    const SECRET: &str = "erin-shares-a-secret-of-32-bytes!";
    let app = echo().await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "consumers/erin",
        json!({"id": "erin", "credentials": [
            {"type": "hmac-auth", "id": "h", "key_id": "erin-key", "secret": SECRET}
        ]}),
    )
    .await;
    node.put(
        "routes/signed",
        json!({"id": "signed", "paths": ["/signed/*"], "upstream_id": "app",
               "plugins": {"hmac-auth": {"clock_skew": 60}}}),
    )
    .await;
    node.until("/signed/warm", 401, "").await;
    let call = |authorization: String, date: String, path: &'static str| {
        let node = &node;
        async move {
            node.send(
                node.http
                    .get(node.at(path))
                    .header("authorization", authorization)
                    .header("date", date),
            )
            .await
        }
    };
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let signed = hmac_signature("erin-key", SECRET, "get", "/signed/a?x=1", &now);
    let (status, body, _) = call(signed.clone(), now.clone(), "/signed/a?x=1").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("authorization"), "{body}");
    // The same signed request again: a replay.
    let (status, body, _) = call(signed, now.clone(), "/signed/a?x=1").await;
    assert_eq!(status, 401);
    assert!(body.contains("already used"), "{body}");
    // Signed for another target, a stale date, an unknown key, date not covered.
    let other = hmac_signature("erin-key", SECRET, "get", "/signed/b", &now);
    let (status, body, _) = call(other, now.clone(), "/signed/a?x=1").await;
    assert_eq!(status, 401);
    assert!(body.contains("signature invalid"), "{body}");
    let stale =
        httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(600));
    let (status, body, _) = call(
        hmac_signature("erin-key", SECRET, "get", "/signed/c", &stale),
        stale,
        "/signed/c",
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("clock skew"), "{body}");
    let (status, body, _) = call(
        hmac_signature("mallory", SECRET, "get", "/signed/d", &now),
        now.clone(),
        "/signed/d",
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("key unknown"), "{body}");
    let uncovered = r#"Signature keyId="erin-key",algorithm="hmac-sha256",headers="(request-target)",signature="AAAA""#;
    let (status, body, _) = call(uncovered.to_owned(), now, "/signed/e").await;
    assert_eq!(status, 401);
    assert!(body.contains("cover"), "{body}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rewrite_changes_status_headers_and_body() {
    let app = ScriptedUpstream::start(|_| {
        Answer::new(200, "original body").with_header("x-up", "secret-ish")
    })
    .await;
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/head-only",
        json!({"id": "head-only", "paths": ["/head-only"], "upstream_id": "app",
               "plugins": {"response-rewrite": {"status_code": 203,
                   "headers": {"set": {"x-rw": "1"}, "remove": ["x-up"]}}}}),
    )
    .await;
    node.put(
        "routes/body",
        json!({"id": "body", "paths": ["/body"], "upstream_id": "app",
               "plugins": {"response-rewrite": {"body": "replaced"}}}),
    )
    .await;
    node.until("/body", 200, "replaced").await;
    let (status, body, headers) = node.get("GET", "/head-only").await;
    assert_eq!((status, body.as_str()), (203, "original body"));
    assert_eq!(headers["x-rw"], "1");
    assert!(headers.get("x-up").is_none());
    let (status, body, headers) = node.get("GET", "/body").await;
    assert_eq!((status, body.as_str()), (200, "replaced"));
    assert_eq!(headers["content-length"], "8");
    assert_eq!(headers["x-up"], "secret-ish");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_sends_canaries_and_weights() {
    let stable = ScriptedUpstream::start(|_| Answer::new(200, "stable")).await;
    let canary = ScriptedUpstream::start(|_| Answer::new(200, "canary")).await;
    let mut node = Node::start().await;
    for (id, port) in [("stable", stable.port()), ("canary", canary.port())] {
        node.put(
            &format!("upstreams/{id}"),
            json!({"id": id, "nodes": [{"host": "127.0.0.1", "port": port, "weight": 1}]}),
        )
        .await;
    }
    node.put(
        "routes/split",
        json!({"id": "split", "paths": ["/split"], "upstream_id": "stable",
        "plugins": {"traffic-split": {"rules": [
            {"match": [{"type": "header", "name": "x-canary", "value": "1"}],
             "weighted_upstreams": [{"upstream_id": "canary", "weight": 1}]},
            {"match": [{"type": "cookie", "name": "beta", "value": "yes"}],
             "weighted_upstreams": [{"upstream_id": "canary", "weight": 1}, {"weight": 1}]}
        ]}}}),
    )
    .await;
    node.until("/split", 200, "stable").await;
    // No rule holds: the route's own upstream.
    for _ in 0..5 {
        assert_eq!(node.get("GET", "/split").await.1, "stable");
    }
    let (_, body, _) = node
        .send(node.http.get(node.at("/split")).header("x-canary", "1"))
        .await;
    assert_eq!(body, "canary");
    // 50/50 between the canary and the route's upstream.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (_, body, _) = node
            .send(
                node.http
                    .get(node.at("/split"))
                    .header("cookie", "a=b; beta=yes"),
            )
            .await;
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // An upstream it names is missing: the route is not served.
    node.delete("upstreams/canary").await;
    let mut gone = false;
    for _ in 0..100 {
        if node.get("GET", "/split").await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mirror_copies_requests_without_touching_the_client_s() {
    let app = ScriptedUpstream::start(|_| Answer::new(200, "main")).await;
    let mirror = ScriptedUpstream::start(|_| Answer {
        delay: std::time::Duration::from_millis(500),
        ..Answer::new(500, "mirror")
    })
    .await;
    let dead = testkit::free_port();
    let mut node = Node::start().await;
    node.put(
        "upstreams/app",
        json!({"id": "app", "nodes": [{"host": "127.0.0.1", "port": app.port(), "weight": 1}]}),
    )
    .await;
    node.put(
        "routes/mirrored",
        json!({"id": "mirrored", "paths": ["/mirrored"], "upstream_id": "app",
               "plugins": {"proxy-mirror": {"host": format!("http://127.0.0.1:{}", mirror.port())}}}),
    )
    .await;
    node.put(
        "routes/dead",
        json!({"id": "dead", "paths": ["/dead"], "upstream_id": "app",
               "plugins": {"proxy-mirror": {"host": format!("http://127.0.0.1:{dead}")}}}),
    )
    .await;
    node.put(
        "routes/never",
        json!({"id": "never", "paths": ["/never"], "upstream_id": "app",
               "plugins": {"proxy-mirror": {"host": format!("http://127.0.0.1:{}", mirror.port()),
                                            "sample_ratio": 0.0}}}),
    )
    .await;
    node.until("/never", 200, "main").await;

    // The mirror is slow and fails: the client neither waits nor sees it.
    let started = std::time::Instant::now();
    let (status, body, _) = node
        .send(
            node.http
                .post(node.at("/mirrored?q=1"))
                .header("x-copy", "yes")
                .body("payload"),
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "main"));
    assert!(started.elapsed() < std::time::Duration::from_millis(450));
    let mut copy = None;
    for _ in 0..100 {
        if let Some(got) = mirror.received().pop() {
            copy = Some(got);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let copy = copy.expect("the copy reached the mirror");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.target, "/mirrored?q=1");
    assert_eq!(copy.body, b"payload");
    assert_eq!(copy.header("x-copy"), Some("yes"));
    // A mirror that is down changes nothing for the client; ratio 0 sends nothing.
    assert_eq!(node.get("GET", "/dead").await.0, 200);
    let before = mirror.received().len();
    for _ in 0..5 {
        assert_eq!(node.get("GET", "/never").await.0, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(mirror.received().len(), before);
    node.stop().await;
}
