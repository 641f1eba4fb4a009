//! The config compiler through its public API: bad objects skipped and reported while
//! the rest serves, certificate problems that never quote a key, the certificate table
//! rebuilt only when a certificate changes, which keys a watch update holds, and when
//! the fast path must collect request headers.

use gateway::router::{Match, RequestInfo};
use gateway::runtime::{build, Compiler, ConfigObjects, RuntimeConfig};
use model::snapshot::Revision;
use store::keys::Keyspace;
use store::watch::Update;
use store::{KeyValue, Listing, WatchBatch, WatchEvent};

const PREFIX: &str = "/portico/instances/i/";

fn objects(items: &[(&str, &str)]) -> ConfigObjects {
    let mut objects = ConfigObjects::new(Keyspace::default(), "i");
    for (k, v) in items {
        objects.put(format!("{PREFIX}{k}"), v.as_bytes().to_vec());
    }
    objects
}

/// A self-signed certificate object for `name`.
fn self_signed(id: &str, name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    serde_json::json!({"id": id, "snis": [name], "cert": cert.pem(), "key": key.serialize_pem()})
        .to_string()
}

#[test]
fn the_certificate_table_is_rebuilt_only_when_certificates_change() {
    let mut compiler = Compiler::new(objects(&[]));
    // No certificates at all: the empty table the listener starts with stays.
    assert!(compiler.build().certificates.is_none());

    compiler.objects.put(
        format!("{PREFIX}certificates/c1"),
        self_signed("c1", "a.test").into_bytes(),
    );
    compiler.objects.put(
        format!("{PREFIX}certificates/c2"),
        self_signed("c2", "a.test").into_bytes(),
    );
    let built = compiler.build();
    let table = built.certificates.unwrap();
    assert_eq!(table.certificate_id("a.test"), Some("c1"));
    // The name claimed twice is reported once, under the store key of the loser.
    let reported: Vec<&str> = built.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(reported, [format!("{PREFIX}certificates/c2")]);
    assert!(
        built.problems[0].reason.contains("already served"),
        "{:?}",
        built.problems
    );

    // A route is not a certificate: nothing to rebuild.
    compiler.objects.put(
        format!("{PREFIX}routes/r1"),
        br#"{"id":"r1","paths":["/*"],"upstream":{"nodes":[{"host":"127.0.0.1","port":1}]}}"#
            .to_vec(),
    );
    assert!(compiler.build().certificates.is_none());

    compiler.objects.delete(&format!("{PREFIX}certificates/c1"));
    let table = compiler.build().certificates.unwrap();
    assert_eq!(table.certificate_id("a.test"), Some("c2"));
    compiler.objects.delete(&format!("{PREFIX}certificates/c2"));
    assert!(compiler.build().certificates.unwrap().is_empty());
}

fn routed(config: &RuntimeConfig, path: &str) -> Option<String> {
    let headers = http::HeaderMap::new();
    let req = RequestInfo {
        host: "h",
        path,
        method: "GET",
        headers: &headers,
        query: None,
        client_ip: None,
        now_ms: 0,
        tls: false,
    };
    match config.router.lookup(&req) {
        Match::Found(t) => Some(t.route_id().to_owned()),
        _ => None,
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: format!("{PREFIX}{key}"),
        value: value.as_bytes().to_vec(),
        mod_revision: 1,
        lease: None,
    }
}

#[test]
fn bad_objects_are_skipped_and_reported_the_rest_serves() {
    let objects = objects(&[
        ("meta", r#"{"revision":7}"#),
        (
            "upstreams/up",
            r#"{"id":"up","nodes":[{"host":"127.0.0.1","port":8080}]}"#,
        ),
        (
            "upstreams/bad",
            r#"{"id":"bad","nodes":[{"host":"127.0.0.1","port":0}]}"#,
        ),
        (
            "upstreams/tls",
            r#"{"id":"tls","scheme":"https","nodes":[{"host":"127.0.0.1","port":443}]}"#,
        ),
        (
            "upstreams/renamed",
            r#"{"id":"other","nodes":[{"host":"127.0.0.1","port":1}]}"#,
        ),
        (
            "routes/good",
            r#"{"id":"good","paths":["/g"],"upstream_id":"up"}"#,
        ),
        ("routes/junk", "{not json"),
        (
            "routes/unknown-field",
            r#"{"id":"unknown-field","paths":["/u"],"upstream_id":"up","colour":"red"}"#,
        ),
        (
            "routes/invalid",
            r#"{"id":"invalid","paths":["no-slash"],"upstream_id":"up"}"#,
        ),
        (
            "routes/dangling",
            r#"{"id":"dangling","paths":["/d"],"upstream_id":"bad"}"#,
        ),
        (
            "routes/to-tls",
            r#"{"id":"to-tls","paths":["/t"],"upstream_id":"tls"}"#,
        ),
        (
            "routes/off",
            r#"{"id":"off","paths":["/o"],"upstream_id":"up","enabled":false}"#,
        ),
        (
            "routes/inline",
            r#"{"id":"inline","paths":["/i"],"upstream":{"nodes":[{"host":"127.0.0.1","port":9}]}}"#,
        ),
        (
            "certificates/broken",
            r#"{"id":"broken","cert":"x","key":"y"}"#,
        ),
    ]);
    let (config, problems) = build(&objects);
    assert_eq!(config.revision, Revision(7));
    assert_eq!(config.router.len(), 3);
    assert_eq!(config.upstreams, 2);
    assert_eq!(config.certificates, 0);
    assert_eq!(routed(&config, "/g").as_deref(), Some("good"));
    assert_eq!(routed(&config, "/i").as_deref(), Some("inline"));
    // TLS upstreams are served (upstream TLS is configured per peer).
    assert_eq!(routed(&config, "/t").as_deref(), Some("to-tls"));
    for path in ["/o", "/d", "/u"] {
        assert_eq!(routed(&config, path), None, "{path}");
    }
    let mut reported: Vec<&str> = problems
        .iter()
        .map(|p| p.key.strip_prefix(PREFIX).unwrap())
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        [
            "certificates/broken",
            "routes/dangling",
            "routes/invalid",
            "routes/junk",
            "routes/unknown-field",
            "upstreams/bad",
            "upstreams/renamed",
        ],
        "{problems:#?}"
    );
    let reason = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == format!("{PREFIX}{key}"))
            .map(|p| p.reason.as_str())
            .unwrap()
    };
    assert!(reason("upstreams/renamed").contains("differs"));
    assert!(reason("routes/dangling").contains("\"bad\""));
    assert!(reason("upstreams/bad").contains("nodes[0].port"));
}

#[test]
fn certificate_problems_never_quote_the_value() {
    let secret = "-----BEGIN PRIVATE KEY-----secret";
    let cases = [
        format!("{secret:?}"),
        format!(r#"{{"id":"c","snis":"{secret}","cert":"x","key":"{secret}"}}"#),
        format!(r#"{{"id":"c","snis":["a.io"],"cert":"x","key":{{"k":"{secret}"}}}}"#),
    ];
    for value in cases {
        let objects = objects(&[("certificates/c", &value)]);
        let (_, problems) = build(&objects);
        assert_eq!(problems.len(), 1, "{value}");
        assert!(!problems[0].reason.contains("secret"), "{problems:?}");
    }
}

#[test]
fn unreadable_meta_is_reported_and_counts_as_revision_0() {
    let (config, problems) = build(&objects(&[("meta", "seven")]));
    assert_eq!(config.revision, Revision(0));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, format!("{PREFIX}meta"));
}

#[test]
fn empty_objects_build_an_empty_config() {
    let objects = ConfigObjects::new(Keyspace::default(), "i");
    assert!(objects.is_empty());
    let (config, problems) = build(&objects);
    assert!(config.router.is_empty());
    assert_eq!(config.revision, Revision(0));
    assert!(problems.is_empty());
}

#[test]
fn updates_hold_config_keys_only() {
    let mut objects = ConfigObjects::new(Keyspace::default(), "i");
    let reset = Update::Reset(Listing {
        revision: 3,
        kvs: vec![
            kv("meta", r#"{"revision":1}"#),
            kv("routes/r", "{}"),
            kv("nodes/n1", "{}"),
            kv("widgets/w", "{}"),
        ],
    });
    assert!(objects.apply(reset));
    assert_eq!(objects.len(), 2);

    let heartbeat_only = Update::Changes(WatchBatch {
        revision: 4,
        events: vec![WatchEvent::Put(kv("nodes/n2", "{}"))],
    });
    assert!(!objects.apply(heartbeat_only));

    let changes = Update::Changes(WatchBatch {
        revision: 5,
        events: vec![
            WatchEvent::Delete {
                key: format!("{PREFIX}routes/r"),
                mod_revision: 5,
            },
            WatchEvent::Put(kv("upstreams/u", "{}")),
            WatchEvent::Delete {
                key: format!("{PREFIX}nodes/n1"),
                mod_revision: 5,
            },
        ],
    });
    assert!(objects.apply(changes));
    assert_eq!(objects.len(), 2);
    assert!(objects
        .resources
        .contains_key(&format!("{PREFIX}upstreams/u")));

    // A reset replaces everything, even with nothing.
    assert!(objects.apply(Update::Reset(Listing::default())));
    assert!(objects.is_empty());
}

#[test]
fn headers_are_read_only_when_a_route_or_upstream_asks_for_them() {
    let up = r#"{"id":"up","nodes":[{"host":"127.0.0.1","port":8080}]}"#;
    let reads = |items: &[(&str, &str)]| build(&objects(items)).0.reads_headers;
    let plain = r#"{"id":"r","paths":["/r"],"upstream_id":"up","query":[{"name":"q","op":"present"}],"remote_addrs":["10.0.0.0/8"]}"#;
    assert!(!reads(&[("upstreams/up", up), ("routes/r", plain)]));
    let header =
        r#"{"id":"h","paths":["/h"],"upstream_id":"up","headers":[{"name":"x-a","op":"present"}]}"#;
    assert!(reads(&[("upstreams/up", up), ("routes/h", header)]));
    let cookie =
        r#"{"id":"c","paths":["/c"],"upstream_id":"up","cookies":[{"name":"a","op":"present"}]}"#;
    assert!(reads(&[("upstreams/up", up), ("routes/c", cookie)]));
    let by_ip =
        r#"{"id":"up","type":"chash","hash_on":"ip","nodes":[{"host":"127.0.0.1","port":8080}]}"#;
    let by_cookie = r#"{"id":"up","type":"chash","hash_on":"cookie","key":"sid","nodes":[{"host":"127.0.0.1","port":8080}]}"#;
    assert!(!reads(&[("upstreams/up", by_ip), ("routes/r", plain)]));
    assert!(reads(&[("upstreams/up", by_cookie), ("routes/r", plain)]));
    // An upstream no route uses is never picked from.
    assert!(!reads(&[
        ("upstreams/up", up),
        ("upstreams/other", &by_cookie.replace("\"up\"", "\"other\"")),
        ("routes/r", plain)
    ]));
    // Inline upstreams count too.
    let inline = r#"{"id":"i","paths":["/i"],"upstream":{"type":"chash","hash_on":"header","key":"x-user","nodes":[{"host":"127.0.0.1","port":1}]}}"#;
    assert!(reads(&[("routes/i", inline)]));
}

/// An upstream moving to other nodes gives every route a new target over the same route
/// index; a route changing makes a new index; an unusable upstream takes its routes out.
#[test]
fn an_upstream_change_reuses_the_route_index() {
    let up = |port: u16| {
        format!(r#"{{"id": "up", "nodes": [{{"host": "127.0.0.1", "port": {port}}}]}}"#)
    };
    let mut items = vec![("upstreams/up".to_owned(), up(1))];
    for i in 0..50 {
        items.push((
            format!("routes/r{i}"),
            format!(r#"{{"id": "r{i}", "paths": ["/r{i}/*"], "upstream_id": "up"}}"#),
        ));
    }
    let items: Vec<(&str, &str)> = items
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut compiler = Compiler::new(objects(&items));
    let first = compiler.build().config;
    assert_eq!(first.router.len(), 50);
    let node_of = |config: &RuntimeConfig| {
        let pool = &config.router.routes()[0].upstream;
        format!("{:?}", pool.nodes())
    };

    compiler
        .objects
        .put(format!("{PREFIX}upstreams/up"), up(2).into_bytes());
    let moved = compiler.build().config;
    assert!(moved.router.shares_index_with(&first.router));
    assert_eq!(routed(&moved, "/r7/x").as_deref(), Some("r7"));
    assert_ne!(node_of(&first), node_of(&moved));
    assert!(moved
        .router
        .routes()
        .iter()
        .all(|t| std::sync::Arc::ptr_eq(&t.upstream, &moved.router.routes()[0].upstream)));

    compiler.objects.put(
        format!("{PREFIX}routes/r7"),
        br#"{"id": "r7", "paths": ["/seven/*"], "upstream_id": "up"}"#.to_vec(),
    );
    let changed = compiler.build().config;
    assert!(!changed.router.shares_index_with(&moved.router));
    assert_eq!(routed(&changed, "/seven/x").as_deref(), Some("r7"));
    assert_eq!(routed(&changed, "/r7/x"), None);

    compiler
        .objects
        .put(format!("{PREFIX}upstreams/up"), br#"{"id": "up"}"#.to_vec());
    let broken = compiler.build();
    assert!(broken.config.router.is_empty(), "{:?}", broken.problems);
    assert_eq!(broken.problems.len(), 51, "{:?}", broken.problems);
}
