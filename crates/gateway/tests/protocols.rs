//! A gateway node against the in-process store, with real clients on loopback, for the
//! protocols beyond plain HTTP/1.1: TLS termination (certificate per SNI, hot swap,
//! protocol versions, mTLS), HTTP/2 over TLS (ALPN) and cleartext (h2c), WebSocket
//! upgrades that survive config changes, gRPC end to end (trailers intact), and TLS
//! towards upstreams. Certificates are generated per run by a test CA; none is on disk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use model::certificate::Certificate;
use model::upstream::{Scheme, UpstreamTls};
use pingora_core::upstreams::peer::HttpPeer;
use serde_json::{json, Value};
use testkit::tls::{Leaf, TestCa};
use testkit::upstream::NamedUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::Node;

/// How long a test waits for the gateway to apply a change.
const CONVERGE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// A test CA and the certificates it signs
// ---------------------------------------------------------------------------------------

/// testkit's CA, with certificates whose subject common name tells them apart.
struct Ca(TestCa);

impl Ca {
    fn new(name: &str) -> Self {
        Self(TestCa::new(name))
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A server certificate for `names` (DNS names, wildcards or IP addresses) whose
    /// subject common name is `cn`, so a test can tell two certificates apart.
    fn server(&self, cn: &str, names: &[&str]) -> Leaf {
        self.0
            .leaf(cn, names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, cn: &str) -> Leaf {
        self.0
            .leaf(cn, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The store object of a certificate served for `snis`.
    fn certificate(&self, id: &str, cn: &str, snis: &[&str]) -> Value {
        let leaf = self.server(cn, snis);
        serde_json::to_value(Certificate {
            id: id.into(),
            snis: snis.iter().map(|s| (*s).to_owned()).collect(),
            cert: leaf.cert,
            key: leaf.key,
        })
        .unwrap()
    }

    fn reqwest_root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem().as_bytes()).unwrap()
    }
}

/// The subject common name of a response's TLS peer (the gateway's certificate).
fn peer_cn(response: &reqwest::Response) -> String {
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls_info(true) on the client");
    let der = info.peer_certificate().expect("a peer certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    cn
}

fn node_json(id: &str, addr: SocketAddr) -> Value {
    json!({"id": id, "nodes": [{"host": addr.ip().to_string(), "port": addr.port(), "weight": 1}]})
}

/// Polls `check` until it is true; panics with `what` after [`CONVERGE`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < CONVERGE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client trusting `ca` that resolves each of `names` to the node's TLS listener.
fn tls_client(ca: &Ca, names: &[&str]) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.reqwest_root())
        .tls_info(true)
        .timeout(Duration::from_secs(5));
    for name in names {
        builder = builder.resolve(name, "127.0.0.1:0".parse().unwrap());
    }
    builder
}

/// A node with an upstream answering `backend` on every path, and two certificates:
/// `a.test` (common name `cn_a`) and `*.wild.test`.
async fn tls_node(ca: &Ca, cn_a: &str) -> (Node, NamedUpstream) {
    let backend = NamedUpstream::start("backend").await;
    let mut node = Node::start_tls(None).await;
    node.route("r", "/*", node_json("r", backend.addr)).await;
    node.put("certificates/a", ca.certificate("a", cn_a, &["a.test"]))
        .await;
    node.put(
        "certificates/wild",
        ca.certificate("wild", "wild", &["*.wild.test"]),
    )
    .await;
    let client = tls_client(ca, &["a.test"]).build().unwrap();
    let url = node.tls_url("a.test", "/");
    until("the TLS listener serves a.test", || async {
        matches!(client.get(&url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    (node, backend)
}

// ---------------------------------------------------------------------------------------
// TLS termination
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn certificate_is_picked_by_sni() {
    let ca = Ca::new("test ca");
    let (node, _backend) = tls_node(&ca, "a v1").await;
    let names = ["a.test", "x.wild.test", "a.b.wild.test", "unknown.test"];
    let client = tls_client(&ca, &names).build().unwrap();

    let response = client
        .get(node.tls_url("a.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(peer_cn(&response), "a v1");
    assert_eq!(response.text().await.unwrap(), "backend");

    let response = client
        .get(node.tls_url("x.wild.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cn(&response), "wild");
    assert_eq!(response.text().await.unwrap(), "backend");

    // A wildcard covers one label: no certificate, so no handshake; likewise for an
    // unknown name and for a client that sends no SNI (connecting by IP address).
    for url in [
        node.tls_url("a.b.wild.test", "/"),
        node.tls_url("unknown.test", "/"),
        node.tls_url("127.0.0.1", "/"),
    ] {
        let err = client.get(&url).send().await.unwrap_err();
        assert!(err.is_connect(), "{url}: {err:?}");
    }
    node.stop().await;
}

#[tokio::test]
async fn tls_versions_are_1_2_and_1_3() {
    let ca = Ca::new("test ca");
    let (node, _backend) = tls_node(&ca, "a").await;
    for (min, max) in [
        (
            reqwest::tls::Version::TLS_1_2,
            reqwest::tls::Version::TLS_1_2,
        ),
        (
            reqwest::tls::Version::TLS_1_3,
            reqwest::tls::Version::TLS_1_3,
        ),
    ] {
        let client = tls_client(&ca, &["a.test"])
            .min_tls_version(min)
            .max_tls_version(max)
            .build()
            .unwrap();
        let response = client
            .get(node.tls_url("a.test", "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{max:?}");
    }

    // rustls cannot speak TLS 1.1; OpenSSL can, when its security level allows it.
    assert!(
        std::path::Path::new("/usr/bin/openssl").exists(),
        "/usr/bin/openssl is missing: install Debian's openssl (`cargo xtask test` does)"
    );
    let s_client = |version: &'static str| {
        let addr = node.tls_addr().to_string();
        tokio::process::Command::new("/usr/bin/openssl")
            .args(["s_client", "-connect", &addr, "-servername", "a.test"])
            .args([version, "-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
    };
    let old = s_client("-tls1_1").await.unwrap();
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(!old.status.success(), "TLS 1.1 handshake succeeded");
    // The server refused the handshake with an alert (rustls answers a client that
    // offers nothing above TLS 1.1 with handshake_failure); the client did offer it,
    // or OpenSSL would have stopped at "no protocols available" before sending.
    assert!(stderr.contains("SSL alert number"), "{stderr}");
    assert!(!stderr.contains("no protocols available"), "{stderr}");
    let ok = s_client("-tls1_2").await.unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("TLSv1.2"), "{stdout}");
    node.stop().await;
}

#[tokio::test]
async fn certificate_swaps_without_restart_and_open_connections_keep_working() {
    let ca = Ca::new("test ca");
    let (mut node, _backend) = tls_node(&ca, "a v1").await;
    // HTTP/1.1 and one idle connection, so the second request reuses the first one's.
    let kept = tls_client(&ca, &["a.test"])
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = node.tls_url("a.test", "/");
    let response = kept.get(&url).send().await.unwrap();
    assert_eq!(peer_cn(&response), "a v1");
    assert_eq!(response.text().await.unwrap(), "backend");

    node.put("certificates/a", ca.certificate("a", "a v2", &["a.test"]))
        .await;
    until("a new handshake gets the new certificate", || async {
        let fresh = tls_client(&ca, &["a.test"]).build().unwrap();
        matches!(fresh.get(&url).send().await, Ok(r) if peer_cn(&r) == "a v2")
    })
    .await;

    // The connection opened before the swap still serves, with the certificate it
    // negotiated: it is the same connection, untouched by the swap.
    let response = kept.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(peer_cn(&response), "a v1");
    assert_eq!(response.text().await.unwrap(), "backend");
    node.stop().await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let stranger_ca = Ca::new("stranger ca");
    let backend = NamedUpstream::start("backend").await;
    let mut node = Node::start_tls(Some(&client_ca.pem())).await;
    node.route("r", "/*", node_json("r", backend.addr)).await;
    node.put(
        "certificates/a",
        server_ca.certificate("a", "a", &["a.test"]),
    )
    .await;
    let url = node.tls_url("a.test", "/");
    let identity = |leaf: Leaf| {
        reqwest::Identity::from_pem(format!("{}{}", leaf.cert, leaf.key).as_bytes()).unwrap()
    };

    let with_cert = tls_client(&server_ca, &["a.test"])
        .identity(identity(client_ca.client("client one")))
        .build()
        .unwrap();
    until("the mTLS listener serves a.test", || async {
        matches!(with_cert.get(&url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let response = with_cert.get(&url).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "backend");

    let without = tls_client(&server_ca, &["a.test"]).build().unwrap();
    let err = without.get(&url).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    let stranger = tls_client(&server_ca, &["a.test"])
        .identity(identity(stranger_ca.client("stranger")))
        .build()
        .unwrap();
    let err = stranger.get(&url).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    node.stop().await;
}

// ---------------------------------------------------------------------------------------
// HTTP/2
// ---------------------------------------------------------------------------------------

/// The `redirect` plugin answers the same way on every protocol and engine: plain
/// HTTP/1.1 and h2c get the redirect to HTTPS, TLS (HTTP/1.1 and h2) is proxied; a
/// regex redirect answers on all of them, query appended.
#[tokio::test]
async fn redirects_answer_on_every_protocol() {
    let ca = Ca::new("test ca");
    let (mut node, backend) = tls_node(&ca, "a").await;
    node.put(
        "routes/secure",
        json!({"id": "secure", "paths": ["/secure/*"], "upstream_id": "r",
               "plugins": {"redirect": {"http_to_https": true}}}),
    )
    .await;
    node.put(
        "routes/moved",
        json!({"id": "moved", "paths": ["/old/*"], "upstream_id": "r",
               "plugins": {"redirect": {"regex_uri": ["^/old/(.*)", "/new/$1"],
                                        "ret_code": 308, "append_query_string": true}}}),
    )
    .await;
    let no_follow = |b: reqwest::ClientBuilder| {
        b.redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let plain = [
        no_follow(reqwest::Client::builder().http1_only()),
        no_follow(reqwest::Client::builder().http2_prior_knowledge()),
    ];
    let tls = [
        no_follow(tls_client(&ca, &["a.test"]).http1_only()),
        no_follow(tls_client(&ca, &["a.test"])),
    ];
    until("the redirect routes are served", || async {
        matches!(plain[0].get(node.at("/old/warm")).send().await, Ok(r) if r.status() == 308)
    })
    .await;
    for client in &plain {
        let response = client.get(node.at("/secure/x?q=1")).send().await.unwrap();
        assert_eq!(response.status(), 301, "{:?}", response.version());
        assert_eq!(
            response.headers()["location"],
            "https://127.0.0.1/secure/x?q=1"
        );
        assert_eq!(response.text().await.unwrap(), "");
    }
    for client in &tls {
        let response = client
            .get(node.tls_url("a.test", "/secure/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.version());
        assert_eq!(response.text().await.unwrap(), "backend");
    }
    for (client, url) in plain.iter().map(|c| (c, node.at("/old/a/b?z=1"))).chain(
        tls.iter()
            .map(|c| (c, node.tls_url("a.test", "/old/a/b?z=1"))),
    ) {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 308, "{url} {:?}", response.version());
        assert_eq!(response.headers()["location"], "/new/a/b?z=1");
    }
    drop(backend);
    node.stop().await;
}

#[tokio::test]
async fn http2_over_tls_by_alpn_and_h2c_by_prior_knowledge() {
    let ca = Ca::new("test ca");
    let (node, _backend) = tls_node(&ca, "a").await;

    // ALPN offers h2 first; a client that only speaks HTTP/1.1 still gets it.
    let h2 = tls_client(&ca, &["a.test"]).build().unwrap();
    let response = h2.get(node.tls_url("a.test", "/x")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.headers()["x-path"], "/x");
    assert_eq!(response.text().await.unwrap(), "backend");
    let h1 = tls_client(&ca, &["a.test"]).http1_only().build().unwrap();
    let response = h1.get(node.tls_url("a.test", "/x")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.text().await.unwrap(), "backend");

    // The plaintext listener takes both HTTP/1.1 and HTTP/2 with prior knowledge.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2c.get(node.at("/y?q=1")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.headers()["x-path"], "/y?q=1");
    assert_eq!(response.text().await.unwrap(), "backend");
    let response = reqwest::get(node.at("/y")).await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.text().await.unwrap(), "backend");
    node.stop().await;
}

#[tokio::test]
async fn h2load_through_h2c() {
    const H2LOAD: &str = "/usr/bin/h2load";
    assert!(
        std::path::Path::new(H2LOAD).exists(),
        "{H2LOAD} is missing: install Debian's nghttp2-client (`cargo xtask test` does)"
    );
    let backend = NamedUpstream::start("backend").await;
    let mut node = Node::start_tls(None).await;
    node.route("r", "/*", node_json("r", backend.addr)).await;
    let url = node.at("/load");
    until("the route serves", || async {
        matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200)
    })
    .await;
    let output = tokio::process::Command::new(H2LOAD)
        .args(["-n", "200", "-c", "2", "-m", "10", &url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("Application protocol: h2c"), "{stdout}");
    assert!(
        stdout.contains("200 done, 200 succeeded, 0 failed, 0 errored"),
        "{stdout}"
    );
    assert!(stdout.contains("status codes: 200 2xx"), "{stdout}");
    node.stop().await;
}

// ---------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------

/// A WebSocket server that greets each client with `welcome`, then echoes every text and
/// binary message.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                if ws.send(Message::text("welcome")).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message within 5 s")
        .expect("the socket is open")
        .expect("a valid message")
}

#[tokio::test]
async fn websocket_upgrades_and_survives_a_config_change() {
    let echo = websocket_echo().await;
    let other = NamedUpstream::start("other").await;
    let mut node = Node::start_tls(None).await;
    node.route("ws", "/ws/*", node_json("ws", echo)).await;
    let url = format!("ws://{}/ws/chat", node.listen);
    let start = Instant::now();
    let mut ws = loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((socket, response)) => {
                assert_eq!(response.status(), 101);
                break socket;
            }
            Err(e) => assert!(
                start.elapsed() < CONVERGE,
                "the WebSocket route does not serve: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(next_message(&mut ws).await, Message::text("welcome"));
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );

    // A new, unrelated route: the config is rebuilt and swapped under the open socket.
    node.route("other", "/other", node_json("other", other.addr))
        .await;
    let other_url = node.at("/other");
    until("the new route serves", || async {
        matches!(reqwest::get(&other_url).await, Ok(r) if r.status() == 200)
    })
    .await;
    ws.send(Message::text("still there?")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still there?"));
    ws.close(None).await.unwrap();
    node.stop().await;
}

// ---------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------

/// A gRPC server (h2c) with the standard health service; `portico.Test` is SERVING.
async fn grpc_health_server() -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("portico.Test", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        // Keeps the reporter (and so the statuses) alive as long as the server.
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr)
            .await
            .unwrap();
    });
    testkit::wait_for_tcp(&addr.to_string(), CONVERGE).await;
    addr
}

#[tokio::test]
async fn grpc_through_h2c_keeps_statuses_and_trailers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let grpc = grpc_health_server().await;
    let mut node = Node::start_tls(None).await;
    let mut upstream = node_json("g", grpc);
    upstream["scheme"] = json!("grpc");
    node.route("g", "/grpc.health.v1.Health/*", upstream).await;

    let channel = tonic::transport::Channel::from_shared(node.at(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let request = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let start = Instant::now();
    // A status in the body needs the grpc-status trailer: tonic fails the call without it.
    let answer = loop {
        match client.check(request("portico.Test")).await {
            Ok(answer) => break answer.into_inner(),
            Err(e) => assert!(
                start.elapsed() < CONVERGE,
                "the gRPC route does not serve: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer.status, ServingStatus::Serving as i32);

    // An unknown service: the upstream answers trailers-only with NOT_FOUND.
    let status = client.check(request("no.Such")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // Many calls in flight share the upstream connection and all succeed.
    let calls = (0..20).map(|_| {
        let mut client = client.clone();
        async move { client.check(request("portico.Test")).await }
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(
            answer.unwrap().into_inner().status,
            ServingStatus::Serving as i32
        );
    }
    node.stop().await;
}

// ---------------------------------------------------------------------------------------
// TLS towards upstreams
// ---------------------------------------------------------------------------------------

/// An HTTPS server (HTTP/1.1) answering every request with `body`, with `leaf`.
async fn https_upstream(leaf: &Leaf, body: &'static str) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                // One request per connection: read the head, answer, close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_is_reached_and_verified() {
    let ca = Ca::new("upstream ca");
    let secure = https_upstream(&ca.server("upstream", &["upstream.test"]), "secure").await;
    let mut node = Node::start_tls(None).await;
    let mut unverified = node_json("s", secure);
    unverified["scheme"] = json!("https");
    unverified["tls"] = json!({"verify": false});
    node.route("s", "/s", unverified).await;
    // Verification against the system roots, which do not know the test CA.
    let mut verified = node_json("v", secure);
    verified["scheme"] = json!("https");
    verified["tls"] = json!({"verify": true, "sni": "upstream.test"});
    node.route("v", "/v", verified).await;
    // Verification against the upstream's own CA (`tls.ca`).
    let mut private_ca = node_json("c", secure);
    private_ca["scheme"] = json!("https");
    private_ca["tls"] = json!({"verify": true, "sni": "upstream.test", "ca": ca.pem()});
    node.route("c", "/c", private_ca).await;
    // Another CA's bundle: refused like the system roots.
    let other = Ca::new("other ca");
    let mut wrong_ca = node_json("w", secure);
    wrong_ca["scheme"] = json!("https");
    wrong_ca["tls"] = json!({"verify": true, "sni": "upstream.test", "ca": other.pem()});
    node.route("w", "/w", wrong_ca).await;

    let url = node.at("/s");
    until("the https upstream answers", || async {
        match reqwest::get(&url).await {
            Ok(r) if r.status() == 200 => r.text().await.unwrap() == "secure",
            _ => false,
        }
    })
    .await;
    let response = reqwest::get(node.at("/v")).await.unwrap();
    assert_eq!(
        response.status(),
        502,
        "an unverifiable upstream is a bad gateway"
    );
    let url = node.at("/c");
    until("the upstream verified by its CA answers", || async {
        match reqwest::get(&url).await {
            Ok(r) if r.status() == 200 => r.text().await.unwrap() == "secure",
            _ => false,
        }
    })
    .await;
    let url = node.at("/w");
    until("a CA that did not sign the node gets 502", || async {
        matches!(reqwest::get(&url).await, Ok(r) if r.status() == 502)
    })
    .await;
    node.stop().await;
}

/// Below the proxy: a peer set up by `configure_peer` (+ `set_peer_ca`) handshakes
/// with Pingora's connector exactly when the certificate verifies.
#[tokio::test]
async fn upstream_verification_uses_the_peer_ca_and_sni() {
    let ca = Ca::new("upstream ca");
    let other_ca = Ca::new("other ca");
    let addr = https_upstream(&ca.server("upstream", &["upstream.test"]), "secure").await;
    let connector = pingora_core::connectors::http::Connector::new(None);
    let peer = |sni: Option<&str>, verify: bool, ca: Option<&Ca>| {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        let tls = UpstreamTls {
            verify,
            sni: sni.map(str::to_owned),
            ca: None,
        };
        gateway::tls::configure_peer(&mut peer, Scheme::Https, Some(&tls), "127.0.0.1");
        if let Some(ca) = ca {
            let ca = gateway::tls::PeerCa::from_pem(&ca.pem()).unwrap();
            gateway::tls::set_peer_ca(&mut peer, &ca);
        }
        peer
    };
    let cases = [
        (peer(Some("upstream.test"), true, Some(&ca)), true),
        // another CA, the system roots, a name the certificate does not hold
        (peer(Some("upstream.test"), true, Some(&other_ca)), false),
        (peer(Some("upstream.test"), true, None), false),
        (peer(Some("wrong.test"), true, Some(&ca)), false),
        // the node's host (an IP address) is not in the certificate either
        (peer(None, true, Some(&ca)), false),
        (peer(Some("wrong.test"), false, None), true),
    ];
    for (i, (peer, want)) in cases.iter().enumerate() {
        let connected = connector.get_http_session(peer).await;
        assert_eq!(connected.is_ok(), *want, "case {i}: {:?}", connected.err());
    }
}
