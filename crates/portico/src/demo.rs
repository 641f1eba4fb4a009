//! `portico demo`: admin, agent, gateway and an echo upstream in one process.
//!
//! The in-process store starts empty each run; the admin's SQLite file keeps what the
//! user saved, and the admin's reconcile loop pushes it into the fresh store, exactly
//! as it would repair a wiped etcd. The sample route is created through the admin API
//! on the first run, so the demo walks the same config path production does.
//!
//! Like a production admin, the demo's admin encrypts secrets with a data key: it is
//! created on the first run in `portico-demo.data-key` (mode 0600, beside the SQLite
//! file), and the cluster's agent token is derived from it, so both stay the same from
//! one run to the next.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::watch;

const CLUSTER: &str = "local";
const INSTANCE: &str = "demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:9180")]
    admin_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9190")]
    agent_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9080")]
    gateway_listen: SocketAddr,
    /// The built-in echo upstream the sample route points at.
    #[arg(long, default_value = "127.0.0.1:9081")]
    echo_listen: SocketAddr,
    #[arg(
        long,
        env = "PORTICO_DATABASE",
        default_value = "sqlite://portico-demo.db"
    )]
    database: String,
    /// The admin's data key (certificate keys and the agent token are encrypted with
    /// it in the database); created on the first run, readable by its owner only.
    #[arg(long, default_value = "portico-demo.data-key")]
    data_key_file: std::path::PathBuf,
}

pub async fn run(args: DemoArgs, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let store: Arc<dyn store::ConfigStore> = Arc::new(store::memory::MemoryStore::new());
    let keyspace = store::keys::Keyspace::default();
    let data_key = data_key(&args.data_key_file)?;
    // The cluster's agent token, derived from the data key so it is the same on every
    // run without a file of its own; it never leaves this process.
    let agent_token = data_key.derive("portico demo agent token");

    let echo_listener = crate::bind(args.echo_listen).await?;
    let echo = tokio::spawn(crate::echo::serve(echo_listener, shutdown.clone()));

    let agent_state = agent::AgentState::new(
        store.clone(),
        keyspace.clone(),
        [INSTANCE.to_owned()],
        None,
        &agent_token,
    )?
    .with_store_info(model::cluster::StoreInfo {
        backend: model::cluster::StoreBackend::Memory,
        endpoints: Vec::new(),
    });
    let agent_listener = crate::bind(args.agent_listen).await?;
    let agent = tokio::spawn(agent::run(agent_listener, agent_state, shutdown.clone()));

    let env_token = crate::env_secret("PORTICO_ADMIN_TOKEN");
    let (admin, new_token) = admin::Admin::open(admin::AdminConfig {
        database_url: args.database.clone(),
        poll_interval: Duration::from_secs(2),
        // Also the shared token, for a demo database whose cluster was registered by
        // an earlier version without a token of its own.
        agent_token: Some(agent_token.clone()),
        admin_token: env_token.clone(),
        data_key: Some(data_key),
        ..admin::AdminConfig::default()
    })
    .await?;
    let token = new_token.clone().or(env_token);
    let admin_listener = crate::bind(args.admin_listen).await?;
    let admin = tokio::spawn(admin.run(admin_listener, shutdown.clone()));

    let gateway = tokio::spawn(gateway::run(
        gateway::GatewayConfig {
            listen: args.gateway_listen,
            tls_listen: None,
            client_ca: None,
            instance: INSTANCE.to_owned(),
            namespace: None,
            node_id: format!("demo-{}", std::process::id()),
            advertise_address: args.gateway_listen.to_string(),
            heartbeat_interval: Duration::from_secs(2),
            http: gateway::HttpSettings::default(),
            // The demo's store is in-process: there is nothing to survive.
            snapshot_file: None,
            status_listen: None,
            drain_timeout: std::time::Duration::from_secs(10),
            threads: 1,
            kubernetes_clusters: None,
        },
        store,
        keyspace,
        shutdown.clone(),
    ));

    let api = format!("http://{}/gateway/apiserver/v1", args.admin_listen);
    match &token {
        Some(token) => {
            let agent_url = format!("http://{}", args.agent_listen);
            create_sample(&api, token, &agent_url, &agent_token, args.echo_listen).await?;
        }
        None => tracing::info!(
            "admin token not given: keeping the sample config already saved in {}",
            args.database
        ),
    }
    let sample = format!("http://{}/echo/hello", args.gateway_listen);
    wait_until_served(&sample).await?;

    println!();
    println!("Portico demo is running (Ctrl-C to stop).");
    println!(
        "  Console:     http://{}/   (sign in with the admin token)",
        args.admin_listen
    );
    println!("  Admin API:   {api}");
    match &new_token {
        Some(t) => println!("  Admin token: {t}   (generated now, shown only once)"),
        None => {
            println!("  Admin token: the one printed at the first start, or PORTICO_ADMIN_TOKEN")
        }
    }
    println!("  Try:         curl -i {sample}");
    println!(
        "  Routes:      curl -H \"Authorization: Bearer $PORTICO_ADMIN_TOKEN\" {api}/clusters/{CLUSTER}/instances/{INSTANCE}/routes"
    );

    let (echo, agent, admin, gateway) = tokio::join!(echo, agent, admin, gateway);
    echo??;
    agent??;
    admin??;
    gateway??;
    Ok(())
}

/// The data key in `path`, or a new one written there (mode 0600) on the first run.
fn data_key(path: &std::path::Path) -> anyhow::Result<admin::DataKey> {
    if path.exists() {
        return admin::DataKey::from_file(path);
    }
    let key = admin::DataKey::generate();
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    let mut file = file
        .open(path)
        .with_context(|| format!("cannot create the data key file {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{}\n", key.to_base64()).as_bytes())
        .with_context(|| format!("cannot write the data key file {}", path.display()))?;
    tracing::info!(file = %path.display(), key = key.id(), "data key created");
    Ok(key)
}

/// Registers the local cluster and creates the sample upstream and route, unless they
/// exist already (a second run on the same database).
async fn create_sample(
    api: &str,
    token: &str,
    agent_url: &str,
    agent_token: &str,
    echo: SocketAddr,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let auth = format!("Bearer {token}");
    let send = |req: reqwest::RequestBuilder| {
        let auth = auth.clone();
        async move {
            let resp = req.header("authorization", auth).send().await?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            anyhow::Ok((status, body))
        }
    };
    let (status, body) =
        send(client.post(format!("{api}/clusters")).json(
            &json!({"name": CLUSTER, "agent_address": agent_url, "agent_token": agent_token}),
        ))
        .await?;
    if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
        bail!("registering the demo cluster failed: {status} {body}");
    }
    // The admin polls a newly registered cluster at once; wait for the instance.
    let instance_url = format!("{api}/clusters/{CLUSTER}/instances/{INSTANCE}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = send(client.get(&instance_url)).await?;
        if status.is_success() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the admin did not discover the demo instance in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upstream = json!({"id": "echo", "name": "built-in echo",
        "nodes": [{"host": echo.ip().to_string(), "port": echo.port(), "weight": 1}]});
    let route =
        json!({"id": "echo", "name": "sample route", "paths": ["/echo/*"], "upstream_id": "echo"});
    for (kind, body) in [("upstreams", upstream), ("routes", route)] {
        let (status, text) = send(client.post(format!("{instance_url}/{kind}")).json(&body))
            .await
            .with_context(|| format!("creating the sample {kind}"))?;
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            bail!("creating the sample {kind} failed: {status} {text}");
        }
    }
    Ok(())
}

async fn wait_until_served(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(resp) = client.get(url).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the gateway did not serve the sample route in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
