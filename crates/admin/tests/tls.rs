//! TLS between the admin and agents, over real connections with rcgen certificates:
//! an HTTPS agent verified against the admin's CA works; one whose certificate does
//! not chain to it is never talked to; an agent requiring client certificates (mTLS)
//! refuses an admin without one and serves one with one.

mod common;

use std::time::Duration;

use admin::{AdminConfig, AgentTls};
use common::{upstream, TestAdmin, TestAgent, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::json;
use testkit::tls::TestCa as Ca;

const TOKEN: &str = "tls-agent-token-0123456789";

fn config(db: &str, tls: Option<AgentTls>) -> AdminConfig {
    AdminConfig {
        database_url: db.to_owned(),
        poll_interval: Duration::from_millis(200),
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        data_key: Some(common::data_key()),
        agent_tls: tls,
        ..AdminConfig::default()
    }
}

fn verifying(ca: &Ca) -> AgentTls {
    AgentTls {
        ca: ca.pem().into_bytes(),
        ..AgentTls::default()
    }
}

/// Registers the agent and says whether its instance shows up within `wait`.
async fn discovered(admin: &TestAdmin, agent: &TestAgent, wait: Duration) -> bool {
    let answer = admin
        .send(
            "POST",
            "/clusters",
            json!({"name": "c1", "agent_address": agent.url(), "agent_token": TOKEN}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if admin.online_instances("c1").await == ["instance_a"] {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn https_agent(ca: &Ca, client_ca: Option<&Ca>) -> TestAgent {
    let leaf = ca.server(&["127.0.0.1"]);
    let client_ca = client_ca.map(|c| c.pem().into_bytes());
    let tls = apikit::tls::server_config(
        leaf.cert.as_bytes(),
        leaf.key.as_bytes(),
        client_ca.as_deref(),
    )
    .unwrap();
    TestAgent::start_with(&["instance_a"], TOKEN, Some(tls)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_over_https_are_verified_against_the_admins_ca() {
    let ca = Ca::new("agents");
    let agent = https_agent(&ca, None).await;
    assert!(agent.url().starts_with("https://"));

    // The right CA: discovered, and changes are applied over HTTPS.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/a.db", dir.path().display());
    let admin = TestAdmin::start_with(config(&db, Some(verifying(&ca)))).await;
    assert!(discovered(&admin, &agent, Duration::from_secs(10)).await);
    let answer = admin
        .send(
            "POST",
            "/clusters/c1/instances/instance_a/upstreams",
            upstream("up", 8080),
        )
        .await;
    assert_eq!(
        answer.header("x-portico-sync"),
        "applied",
        "{}",
        answer.body
    );
    admin.stop().await;

    // Another CA: the agent's certificate is refused, nothing is discovered.
    let db = format!("sqlite://{}/b.db", dir.path().display());
    let admin = TestAdmin::start_with(config(&db, Some(verifying(&Ca::new("other"))))).await;
    assert!(!discovered(&admin, &agent, Duration::from_secs(1)).await);
    admin.stop().await;

    // No CA at all: an https:// address is refused when registered.
    let db = format!("sqlite://{}/c.db", dir.path().display());
    let admin = TestAdmin::start_with(config(&db, None)).await;
    let answer = admin
        .send(
            "POST",
            "/clusters",
            json!({"name": "c1", "agent_address": agent.url(), "agent_token": TOKEN}),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.fields(), ["agent_address"]);
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_requiring_client_certificates_serve_only_admins_with_one() {
    let ca = Ca::new("agents");
    let clients = Ca::new("admins");
    let agent = https_agent(&ca, Some(&clients)).await;
    let dir = tempfile::tempdir().unwrap();

    // Without a client certificate: refused by the agent.
    let db = format!("sqlite://{}/a.db", dir.path().display());
    let admin = TestAdmin::start_with(config(&db, Some(verifying(&ca)))).await;
    assert!(!discovered(&admin, &agent, Duration::from_secs(1)).await);
    admin.stop().await;

    // With a certificate of another CA: refused too.
    let stranger = Ca::new("strangers").client();
    let db = format!("sqlite://{}/b.db", dir.path().display());
    let tls = AgentTls {
        client_cert: Some(stranger.cert.into_bytes()),
        client_key: Some(stranger.key.into_bytes()),
        ..verifying(&ca)
    };
    let admin = TestAdmin::start_with(config(&db, Some(tls))).await;
    assert!(!discovered(&admin, &agent, Duration::from_secs(1)).await);
    admin.stop().await;

    // With one signed by the agent's client CA: served.
    let client = clients.client();
    let db = format!("sqlite://{}/c.db", dir.path().display());
    let tls = AgentTls {
        client_cert: Some(client.cert.into_bytes()),
        client_key: Some(client.key.into_bytes()),
        ..verifying(&ca)
    };
    let admin = TestAdmin::start_with(config(&db, Some(tls))).await;
    assert!(discovered(&admin, &agent, Duration::from_secs(10)).await);
    admin.stop().await;
}
