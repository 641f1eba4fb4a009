//! The control plane with every protection on, started as an operator starts it: etcd
//! over TLS requiring client certificates and a user (`--client-cert-auth`, `auth
//! enable`); the agent serving HTTPS with mTLS and reaching etcd with TLS and its user;
//! the admin sealing secrets with its data key, verifying the agent against its CA and
//! presenting a client certificate; a gateway reading etcd like the agent. A cluster
//! registered with its own token and configured through the admin is served, and no
//! log carries the etcd password or the agent token.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use testkit::etcd::{EtcdServer, EtcdTls};
use testkit::process::Process;
use testkit::tls::TestCa as Ca;
use testkit::upstream::NamedUpstream;

const ADMIN_TOKEN: &str = "secured-admin-token-0123456789";
const AGENT_TOKEN: &str = "secured-agent-token-0123456789";
const PASSWORD: &str = "secured-etcd-password-42";

/// Writes `content` to `dir/name` and returns the path as text.
fn file(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

async fn until<T, F, Fut>(what: &str, processes: &[&Process], mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = processes.iter().map(|p| p.log()).collect();
            panic!("timed out waiting for: {what}\n{}", logs.join("\n----\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_deployment_serves_what_the_admin_configures() {
    let bin = env!("CARGO_BIN_EXE_portico");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // etcd: TLS with client certificates, and a user.
    let etcd_ca = Ca::new("etcd");
    let etcd_clients = Ca::new("etcd clients");
    let testkit::tls::Leaf {
        cert: etcd_cert,
        key: etcd_key,
    } = etcd_ca.server(&["127.0.0.1"]);
    let testkit::tls::Leaf {
        cert: store_cert,
        key: store_key,
    } = etcd_clients.client();
    let etcd = EtcdServer::launch_tls(EtcdTls {
        cert: etcd_cert,
        key: etcd_key,
        client_ca: etcd_clients.pem(),
        ca: etcd_ca.pem(),
        helper_cert: store_cert.clone(),
        helper_key: store_key.clone(),
    });
    etcd.enable_auth(PASSWORD);
    let store = etcd.store_url();
    let store_ca = file(d, "etcd-ca.pem", &etcd_ca.pem());
    let store_cert = file(d, "store.pem", &store_cert);
    let store_key = file(d, "store.key", &store_key);
    let password_file = file(d, "etcd-password", &format!("{PASSWORD}\n"));
    let store_flags = [
        "--store",
        store.as_str(),
        "--store-ca",
        store_ca.as_str(),
        "--store-cert",
        store_cert.as_str(),
        "--store-key",
        store_key.as_str(),
        "--store-user",
        "root",
    ];

    // The agent: HTTPS for admins with a certificate of the admins' CA.
    let agents_ca = Ca::new("agents");
    let admins_ca = Ca::new("admins");
    let testkit::tls::Leaf {
        cert: agent_cert,
        key: agent_key,
    } = agents_ca.server(&["127.0.0.1"]);
    let agent_cert = file(d, "agent.pem", &agent_cert);
    let agent_key = file(d, "agent.key", &agent_key);
    let admins_ca_file = file(d, "admins-ca.pem", &admins_ca.pem());
    let agent_listen = format!("127.0.0.1:{}", testkit::free_port());
    let mut args = vec!["agent", "--listen", agent_listen.as_str()];
    args.extend(store_flags);
    args.extend([
        "--store-password-file",
        password_file.as_str(),
        "--tls-cert",
        agent_cert.as_str(),
        "--tls-key",
        agent_key.as_str(),
        "--tls-client-ca",
        admins_ca_file.as_str(),
    ]);
    let agent = Process::start(
        "agent",
        bin,
        &args,
        &[
            ("PORTICO_AGENT_TOKEN", AGENT_TOKEN),
            ("PORTICO_INSTANCES", "instance_a"),
        ],
        d,
    );

    // The admin: data key, the agents' CA, a client certificate.
    let data_key = file(
        d,
        "data-key",
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
    );
    let agents_ca_file = file(d, "agents-ca.pem", &agents_ca.pem());
    let testkit::tls::Leaf {
        cert: admin_cert,
        key: admin_key,
    } = admins_ca.client();
    let admin_cert = file(d, "admin.pem", &admin_cert);
    let admin_key = file(d, "admin.key", &admin_key);
    let admin_listen = format!("127.0.0.1:{}", testkit::free_port());
    let database = format!("sqlite://{}/admin.db", d.display());
    let admin = Process::start(
        "admin",
        bin,
        &[
            "admin",
            "--listen",
            &admin_listen,
            "--database",
            &database,
            "--poll-interval",
            "300ms",
            "--data-key-file",
            &data_key,
            "--agent-ca",
            &agents_ca_file,
            "--agent-client-cert",
            &admin_cert,
            "--agent-client-key",
            &admin_key,
        ],
        &[("PORTICO_ADMIN_TOKEN", ADMIN_TOKEN)],
        d,
    );

    // A gateway node reading etcd like the agent (password from the environment).
    let upstream = NamedUpstream::start("u1").await;
    let gateway_listen = format!("127.0.0.1:{}", testkit::free_port());
    let mut args = vec![
        "gateway",
        "--listen",
        gateway_listen.as_str(),
        "--instance",
        "instance_a",
        "--heartbeat-interval",
        "500ms",
        "--threads",
        "1",
        "--no-snapshot",
    ];
    args.extend(store_flags);
    let gateway = Process::start(
        "gateway",
        bin,
        &args,
        &[("PORTICO_STORE_PASSWORD", PASSWORD)],
        d,
    );
    let processes = [&agent, &admin, &gateway];

    testkit::wait_for_tcp(&admin_listen, Duration::from_secs(15)).await;
    let http = reqwest::Client::new();
    let api = format!("http://{admin_listen}/gateway/apiserver/v1");
    let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        http.request(method, format!("{api}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let answer = call(
        reqwest::Method::POST,
        "/clusters",
        json!({"name": "c1", "agent_address": format!("https://{agent_listen}"), "agent_token": AGENT_TOKEN}),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);

    // Discovered over HTTPS + mTLS, the agent having proven it holds the token; the
    // gateway's heartbeat went through etcd's TLS and authentication.
    until("the instance and its gateway node", &processes, || async {
        let answer = http
            .get(format!("{api}/clusters/c1/instances/instance_a/nodes"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = answer.json().await.ok()?;
        (body["items"].as_array()?.len() == 1).then_some(())
    })
    .await;

    let base = "/clusters/c1/instances/instance_a";
    for (kind, body) in [
        (
            "upstreams",
            json!({"id": "up", "nodes": [{"host": "127.0.0.1", "port": upstream.port()}]}),
        ),
        (
            "routes",
            json!({"id": "r1", "paths": ["/api/*"], "upstream_id": "up"}),
        ),
    ] {
        let answer = call(reqwest::Method::POST, &format!("{base}/{kind}"), body)
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert_eq!(answer.headers()["x-portico-sync"], "applied");
    }
    until("the route served by the gateway", &processes, || async {
        let answer = http
            .get(format!("http://{gateway_listen}/api/x"))
            .send()
            .await
            .ok()?;
        (answer.status() == StatusCode::OK && answer.text().await.ok()? == "u1").then_some(())
    })
    .await;

    for process in processes {
        let log = process.log();
        assert!(!log.contains(PASSWORD), "the etcd password is in a log");
        assert!(!log.contains(AGENT_TOKEN), "the agent token is in a log");
    }
}
