//! `portico`: the one binary. `portico admin|agent|gateway` run one component each;
//! `portico demo` runs all three in one process on SQLite and the in-process store;
//! `portico ctl` is the command-line client of the admin API (`ctl/`).

mod ctl;
mod demo;
mod echo;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "portico", version, about = "Multi-cluster API gateway")]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "PORTICO_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The management back end: REST API, database, agent polling and reconcile.
    Admin {
        #[arg(long, env = "PORTICO_ADMIN_LISTEN", default_value = "127.0.0.1:9180")]
        listen: SocketAddr,
        /// sqlite://FILE, postgres://… or mysql://…
        #[arg(long, env = "PORTICO_DATABASE", default_value = "sqlite://portico.db")]
        database: String,
        /// How often agents are polled and instances reconciled (e.g. 10s, 500ms).
        #[arg(long, env = "PORTICO_POLL_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
        #[command(flatten)]
        data_keys: DataKeyArgs,
        /// A PEM bundle of the CAs agents' certificates chain to; needed for https://
        /// agent addresses (no other roots are trusted).
        #[arg(long, env = "PORTICO_AGENT_CA")]
        agent_ca: Option<std::path::PathBuf>,
        /// A client certificate (PEM chain) to present to agents that require one.
        #[arg(long, env = "PORTICO_AGENT_CLIENT_CERT", requires_all = ["agent_client_key", "agent_ca"])]
        agent_client_cert: Option<std::path::PathBuf>,
        /// The client certificate's private key (PEM).
        #[arg(long, env = "PORTICO_AGENT_CLIENT_KEY", requires = "agent_client_cert")]
        agent_client_key: Option<std::path::PathBuf>,
        #[command(flatten)]
        timeouts: ApiTimeoutArgs,
    },
    /// The cluster agent: writes the admin's changes into the config store.
    Agent {
        #[arg(long, env = "PORTICO_AGENT_LISTEN", default_value = "127.0.0.1:9190")]
        listen: SocketAddr,
        /// etcd://host:port[,host:port…][/root], redis://[user:password@]host:port[/root]
        /// or memory://
        // The value may hold a password: `--help` does not show it from the environment.
        #[arg(
            long,
            env = "PORTICO_STORE",
            hide_env_values = true,
            default_value = "etcd://127.0.0.1:2379"
        )]
        store: String,
        /// Instances kept in a store of their own rather than --store, as
        /// instance=url pairs, comma-separated:
        /// instance_a=etcd://h:2379,instance_b=redis://h:6379 (the --store-* TLS and
        /// user options apply to these etcd stores too)
        #[arg(long, env = "PORTICO_INSTANCE_STORES", hide_env_values = true)]
        instance_store: Option<String>,
        // Boxed like the gateway's HTTP settings: it keeps `Command` small.
        #[command(flatten)]
        store_access: Box<StoreArgs>,
        /// Instance names this agent manages, comma-separated; `name@namespace` puts
        /// one in a namespace (its id).
        #[arg(long, env = "PORTICO_INSTANCES")]
        instances: String,
        /// The namespace (id) of the instances listed without one; unset: `default`,
        /// unless an operator assigns them in the admin.
        #[arg(long, env = "PORTICO_NAMESPACE")]
        namespace: Option<String>,
        /// Serve HTTPS with this certificate (PEM chain, leaf first).
        #[arg(long, env = "PORTICO_AGENT_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, env = "PORTICO_AGENT_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
        /// A PEM bundle of CAs: only clients (admins) presenting a certificate signed by
        /// one of them are served (mTLS).
        #[arg(long, env = "PORTICO_AGENT_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<std::path::PathBuf>,
        #[command(flatten)]
        timeouts: ApiTimeoutArgs,
    },
    /// A gateway node: serves the traffic of one instance, config from the store.
    Gateway {
        /// Plaintext traffic: HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
        #[arg(long, env = "PORTICO_GATEWAY_LISTEN", default_value = "127.0.0.1:9080")]
        listen: SocketAddr,
        /// TLS traffic (ALPN h2, http/1.1) with the instance's certificates, picked by
        /// SNI; off by default.
        #[arg(long, env = "PORTICO_GATEWAY_TLS_LISTEN")]
        tls_listen: Option<SocketAddr>,
        /// A PEM bundle of CAs: the TLS listener then requires a client certificate
        /// signed by one of them (mTLS).
        #[arg(long, env = "PORTICO_TLS_CLIENT_CA", requires = "tls_listen")]
        tls_client_ca: Option<std::path::PathBuf>,
        #[arg(long, env = "PORTICO_INSTANCE")]
        instance: String,
        /// The namespace (id) this node is bound to: it serves its instance only while
        /// the instance belongs to that namespace and the namespace exists (otherwise
        /// nothing, saying why in its log and heartbeat). Unset: the node follows its
        /// instance's namespace.
        #[arg(long, env = "PORTICO_NAMESPACE", value_parser = namespace_id)]
        namespace: Option<String>,
        /// etcd://host:port[,host:port…][/root], redis://[user:password@]host:port[/root]
        /// or memory://
        #[arg(
            long,
            env = "PORTICO_STORE",
            hide_env_values = true,
            default_value = "etcd://127.0.0.1:2379"
        )]
        store: String,
        #[command(flatten)]
        store_access: Box<StoreArgs>,
        /// Unique node id; default: host name, process id and a random suffix.
        #[arg(long, env = "PORTICO_NODE_ID")]
        node_id: Option<String>,
        /// Address shown in the heartbeat; default: the listen address.
        #[arg(long, env = "PORTICO_ADVERTISE_ADDRESS")]
        advertise_address: Option<String>,
        #[arg(long, env = "PORTICO_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
        /// Worker threads of the data plane (listeners and connections; control work has
        /// a thread of its own); default: one per core.
        #[arg(long, env = "PORTICO_THREADS")]
        threads: Option<usize>,
        // Boxed: inline it would make `Command` large for its other variants.
        #[command(flatten)]
        http: Box<HttpArgs>,
        /// The node's copy of its last good config, served when the store does not
        /// answer at start; default: portico-<instance>.snapshot.json in the working
        /// directory. Holds certificate keys: keep it on a private disk.
        #[arg(long, env = "PORTICO_SNAPSHOT_FILE")]
        snapshot_file: Option<std::path::PathBuf>,
        /// Keep no snapshot file.
        #[arg(long, env = "PORTICO_NO_SNAPSHOT", conflicts_with = "snapshot_file")]
        no_snapshot: bool,
        /// Where to serve /healthz, /readyz and /status; off by default.
        #[arg(long, env = "PORTICO_STATUS_LISTEN")]
        status_listen: Option<SocketAddr>,
        /// On SIGTERM, how long requests in flight (WebSockets included) may go on
        /// before the node stops anyway.
        #[arg(long, env = "PORTICO_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// The Kubernetes clusters upstreams in `kubernetes` discovery mode may name:
        /// the cross-cluster controller's file format (name, kubeconfig, context;
        /// grace and timings), re-read on its reload_every.
        #[arg(long, env = "PORTICO_KUBERNETES_CLUSTERS")]
        kubernetes_clusters: Option<std::path::PathBuf>,
    },
    /// Admin + agent + gateway in one process, SQLite and the in-process store, with a
    /// sample route to a built-in echo upstream.
    Demo(demo::DemoArgs),
    /// The command-line client of the admin API: log in, manage config, history and
    /// rollbacks, export and apply, test routes (docs/cli.md).
    Ctl(ctl::CtlArgs),
    /// The cross-cluster controller: unites labelled Services' endpoints across
    /// Kubernetes clusters into the production clusters' EndpointSlices (docs/xcluster.md).
    Xcluster {
        /// The cluster list (YAML; read again every `reload_every`, 30 s by default):
        /// timings, the Lease, and clusters the admin does not list.
        #[arg(
            long,
            env = "PORTICO_XCLUSTER_CLUSTERS",
            required_unless_present = "admin"
        )]
        clusters: Option<std::path::PathBuf>,
        /// The admin API (e.g. http://127.0.0.1:9180/gateway/apiserver/v1) whose
        /// clusters with a Kubernetes face are watched; a platform admin's token in
        /// PORTICO_ADMIN_TOKEN.
        #[arg(long, env = "PORTICO_ADMIN_URL")]
        admin: Option<String>,
        /// Where to serve /healthz, /status and /metrics.
        #[arg(
            long,
            env = "PORTICO_XCLUSTER_STATUS_LISTEN",
            default_value = "127.0.0.1:9290"
        )]
        status_listen: SocketAddr,
        /// This replica's name in the Lease; default: host name, process id and a
        /// random suffix.
        #[arg(long, env = "PORTICO_XCLUSTER_IDENTITY")]
        identity: Option<String>,
    },
}

/// How the agent and the gateway reach an etcd with TLS or authentication (both take
/// the same flags). The password comes from the environment or a file, never a flag,
/// and is never logged.
#[derive(clap::Args)]
struct StoreArgs {
    /// A PEM bundle of the CAs etcd's certificate chains to: etcd is then reached over
    /// TLS (https) at the --store hosts.
    #[arg(long, env = "PORTICO_STORE_CA")]
    store_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM chain) for an etcd with --client-cert-auth.
    #[arg(long, env = "PORTICO_STORE_CERT", requires_all = ["store_key", "store_ca"])]
    store_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "PORTICO_STORE_KEY", requires = "store_cert")]
    store_key: Option<std::path::PathBuf>,
    /// The etcd user to authenticate as; its password from PORTICO_STORE_PASSWORD or
    /// --store-password-file.
    #[arg(long, env = "PORTICO_STORE_USER")]
    store_user: Option<String>,
    /// A file holding the etcd user's password (trailing newline ignored).
    #[arg(long, env = "PORTICO_STORE_PASSWORD_FILE", requires = "store_user")]
    store_password_file: Option<std::path::PathBuf>,
}

impl StoreArgs {
    fn options(&self) -> anyhow::Result<store::StoreOptions> {
        let tls = self
            .store_ca
            .as_ref()
            .map(|ca| {
                anyhow::Ok(store::StoreTls {
                    ca: read_file(ca, "--store-ca")?,
                    client_cert: self
                        .store_cert
                        .as_ref()
                        .map(|p| read_file(p, "--store-cert"))
                        .transpose()?,
                    client_key: self
                        .store_key
                        .as_ref()
                        .map(|p| read_file(p, "--store-key"))
                        .transpose()?,
                })
            })
            .transpose()?;
        let user = match &self.store_user {
            None => None,
            Some(name) => {
                let password = match (&self.store_password_file, env_secret("PORTICO_STORE_PASSWORD")) {
                    (Some(_), Some(_)) => anyhow::bail!(
                        "give the etcd password once: --store-password-file or PORTICO_STORE_PASSWORD, not both"
                    ),
                    (Some(path), None) => {
                        let text = String::from_utf8(read_file(path, "--store-password-file")?)
                            .context("--store-password-file is not UTF-8")?;
                        text.trim_end_matches(['\r', '\n']).to_owned()
                    }
                    (None, Some(password)) => password,
                    (None, None) => anyhow::bail!(
                        "--store-user needs a password: set PORTICO_STORE_PASSWORD or --store-password-file"
                    ),
                };
                Some(store::StoreUser {
                    name: name.clone(),
                    password,
                })
            }
        };
        Ok(store::StoreOptions { tls, user })
    }
}

/// How long a client of the admin or agent API may take to send a request (the
/// slowloris defence of the control plane).
#[derive(clap::Args)]
struct ApiTimeoutArgs {
    /// A request head must arrive in full within this (nginx's client_header_timeout).
    #[arg(long, env = "PORTICO_API_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    header_read_timeout: Duration,
    /// A request body must arrive in full within this of its head.
    #[arg(long, env = "PORTICO_API_BODY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    body_timeout: Duration,
}

/// The admin's data keys: certificate keys and agent tokens are encrypted with them in
/// its database (README, "Rotating the data key").
#[derive(clap::Args)]
struct DataKeyArgs {
    /// A file holding the data key: 32 random bytes in base64 (head -c 32 /dev/urandom
    /// | base64). Or give the base64 itself in PORTICO_DATA_KEY.
    #[arg(long, env = "PORTICO_DATA_KEY_FILE")]
    data_key_file: Option<std::path::PathBuf>,
    /// Files of earlier data keys, still accepted for reading; what they encrypted is
    /// encrypted again with the data key at start. Comma-separated in the environment.
    #[arg(long, env = "PORTICO_DATA_KEY_OLD_FILES", value_delimiter = ',')]
    data_key_old_file: Vec<std::path::PathBuf>,
}

impl DataKeyArgs {
    /// The primary key (from the file or `PORTICO_DATA_KEY`) and the old ones.
    fn load(&self) -> anyhow::Result<(Option<admin::DataKey>, Vec<admin::DataKey>)> {
        let from_env = env_secret("PORTICO_DATA_KEY")
            .map(|text| admin::DataKey::from_base64(&text).context("PORTICO_DATA_KEY"))
            .transpose()?;
        let primary = match (&self.data_key_file, from_env) {
            (Some(_), Some(_)) => anyhow::bail!(
                "give the data key once: --data-key-file (PORTICO_DATA_KEY_FILE) or PORTICO_DATA_KEY, not both"
            ),
            (Some(path), None) => Some(admin::DataKey::from_file(path)?),
            (None, key) => key,
        };
        let old = self
            .data_key_old_file
            .iter()
            .map(|path| admin::DataKey::from_file(path).context("--data-key-old-file"))
            .collect::<anyhow::Result<_>>()?;
        Ok((primary, old))
    }
}

/// The gateway's request limits and trusted proxies.
#[derive(clap::Args)]
struct HttpArgs {
    /// Longest request target (path + query) in bytes; longer is refused with 414.
    #[arg(long, env = "PORTICO_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    max_uri_bytes: usize,
    /// Largest request head in bytes; larger is refused with 431.
    #[arg(long, env = "PORTICO_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    max_header_bytes: usize,
    /// Largest request body in bytes; larger is refused with 413.
    #[arg(long, env = "PORTICO_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: u64,
    /// Longest time a client may take to send a request head, from its first byte (from
    /// the connection for the first one); the connection is then closed. nginx's
    /// client_header_timeout. E.g. 60s, 500ms.
    #[arg(
        long,
        env = "PORTICO_HEADER_READ_TIMEOUT",
        default_value = "60s",
        value_parser = positive_duration
    )]
    header_read_timeout: Duration,
    /// Comma-separated CIDRs of proxies whose real-IP header is believed.
    #[arg(long, env = "PORTICO_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// The header trusted proxies put the client address in.
    #[arg(
        long,
        env = "PORTICO_REAL_IP_HEADER",
        default_value = "x-forwarded-for"
    )]
    real_ip_header: String,
    /// Escaped slashes and backslashes in paths (%2F, %5C, \\): decode (to `/`, then
    /// normalise), reject (400) or keep (as sent; for backends that give %2F a meaning).
    #[arg(long, env = "PORTICO_ESCAPED_SLASHES", default_value = "decode")]
    escaped_slashes: gateway::normalize::EscapedSlashes,
    /// `;params` in path segments: keep, or strip before routing and forwarding (for
    /// Java servlet backends, which ignore them: `/public/..;/admin` is `/admin`).
    #[arg(long, env = "PORTICO_PATH_SEMICOLONS", default_value = "keep")]
    path_semicolons: gateway::normalize::Semicolons,
    /// A request body may make the gateway wait on its client this long, plus one
    /// second per --min-body-rate bytes received, and never this long in one wait
    /// (Apache mod_reqtimeout's body=20,MinRate=500).
    #[arg(long, env = "PORTICO_BODY_TIMEOUT", default_value = "20s", value_parser = positive_duration)]
    body_timeout: Duration,
    /// Bytes per second a request body must keep up (see --body-timeout).
    #[arg(long, env = "PORTICO_MIN_BODY_RATE", default_value_t = 500)]
    min_body_rate: u64,
    /// Writes to a client may wait this long, plus one second per --min-send-rate bytes
    /// taken, and never this long in one write (nginx's send_timeout).
    #[arg(long, env = "PORTICO_SEND_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    send_timeout: Duration,
    /// Bytes per second a client must take a response at (see --send-timeout).
    #[arg(long, env = "PORTICO_MIN_SEND_RATE", default_value_t = 500)]
    min_send_rate: u64,
    /// An HTTP/2 connection with no stream open is closed after this long.
    #[arg(long, env = "PORTICO_H2_IDLE_TIMEOUT", default_value = "75s", value_parser = positive_duration)]
    h2_idle_timeout: Duration,
    /// Send every request through Pingora's proxy instead of serving plain HTTP/1.1
    /// requests on the gateway's fast path (for comparison, or to rule it out).
    #[arg(long, env = "PORTICO_NO_FAST_PATH")]
    no_fast_path: bool,
}

impl HttpArgs {
    fn settings(self) -> anyhow::Result<gateway::HttpSettings> {
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                model::route::parse_cidr(s.trim())
                    .with_context(|| format!("--trusted-proxies: {s:?} is not an IP or CIDR"))
            })
            .collect::<anyhow::Result<_>>()?;
        let real_ip_header = http::HeaderName::from_bytes(self.real_ip_header.as_bytes())
            .with_context(|| {
                format!(
                    "--real-ip-header: {:?} is not a header name",
                    self.real_ip_header
                )
            })?;
        Ok(gateway::HttpSettings {
            max_uri_bytes: self.max_uri_bytes,
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            header_read_timeout: self.header_read_timeout,
            trusted_proxies,
            real_ip_header,
            path: gateway::normalize::PathPolicy {
                escaped_slashes: self.escaped_slashes,
                semicolons: self.path_semicolons,
            },
            body_rate: gateway::MinRate {
                grace: self.body_timeout,
                bytes_per_sec: self.min_body_rate,
            },
            send_rate: gateway::MinRate {
                grace: self.send_timeout,
                bytes_per_sec: self.min_send_rate,
            },
            h2_idle_timeout: self.h2_idle_timeout,
            fast_path: !self.no_fast_path,
        })
    }
}

/// A duration such as `60s` or `500ms` that is more than zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Ctl(args) = cli.command {
        // A client: no log, exit codes of its own.
        return ctl::run(args, Cli::command);
    }
    match serve(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // As `main` returning the error would print it.
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a component (or the demo) until it stops.
fn serve(cli: Cli) -> anyhow::Result<()> {
    init_logging(cli.log_format);
    // A gateway's data plane has a runtime of its own (`--threads`); its control work
    // (store, heartbeat, status) needs one thread.
    let mut builder = if matches!(cli.command, Command::Gateway { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    match command {
        Command::Admin {
            listen,
            database,
            poll_interval,
            data_keys,
            agent_ca,
            agent_client_cert,
            agent_client_key,
            timeouts,
        } => {
            let (data_key, old_data_keys) = data_keys.load()?;
            let agent_tls = agent_ca
                .map(|ca| {
                    anyhow::Ok(admin::AgentTls {
                        ca: read_file(&ca, "--agent-ca")?,
                        client_cert: agent_client_cert
                            .map(|p| read_file(&p, "--agent-client-cert"))
                            .transpose()?,
                        client_key: agent_client_key
                            .map(|p| read_file(&p, "--agent-client-key"))
                            .transpose()?,
                    })
                })
                .transpose()?;
            let config = admin::AdminConfig {
                database_url: database,
                poll_interval,
                // The shared token of earlier versions, for clusters registered without
                // a token of their own.
                agent_token: env_secret("PORTICO_AGENT_TOKEN"),
                admin_token: env_secret("PORTICO_ADMIN_TOKEN"),
                data_key,
                old_data_keys,
                agent_tls,
                header_read_timeout: timeouts.header_read_timeout,
                body_timeout: timeouts.body_timeout,
            };
            let (admin, new_token) = admin::Admin::open(config).await?;
            if let Some(token) = new_token {
                print_new_admin_token(&token);
            }
            let listener = bind(listen).await?;
            tracing::info!(%listen, console = %format!("http://{listen}/"), "admin listening (the web console at /)");
            admin.run(listener, shutdown).await
        }
        Command::Agent {
            listen,
            store,
            instance_store,
            store_access,
            instances,
            namespace,
            tls_cert,
            tls_key,
            tls_client_ca,
            timeouts,
        } => {
            let token = env_secret("PORTICO_AGENT_TOKEN").context(
                "PORTICO_AGENT_TOKEN must be set: the cluster's agent token, which the admin presents",
            )?;
            let options = store_access.options()?;
            let store_info = store::describe_url(&store);
            let (store, keyspace) = store::open_with(&store, &options).await?;
            let names = agent::parse_instance_list(&instances);
            let mut state =
                agent::AgentState::new(store, keyspace, names, namespace.as_deref(), &token)?
                    .with_timeouts(timeouts.header_read_timeout, timeouts.body_timeout);
            // Services register with it (the registry routes only); unset: only the
            // admin's token registers.
            if let Some(registry_token) = env_secret("PORTICO_REGISTRY_TOKEN") {
                state = state.with_registry_token(&registry_token)?;
            }
            if let Some(info) = store_info {
                state = state.with_store_info(info);
            }
            let own_stores = instance_store.as_deref().unwrap_or_default();
            for (instance, url) in agent::parse_instance_stores(own_stores)? {
                let info = store::describe_url(&url);
                let (store, keyspace) = store::open_with(&url, &options)
                    .await
                    .with_context(|| format!("the store of instance {instance:?}"))?;
                if let Some(info) = &info {
                    tracing::info!(instance, backend = info.backend.as_str(), endpoints = ?info.endpoints,
                        "instance kept in a store of its own");
                }
                state = state.with_instance_store(&instance, store, keyspace, info)?;
            }
            if let (Some(cert), Some(key)) = (&tls_cert, &tls_key) {
                let client_ca = tls_client_ca
                    .map(|p| read_file(&p, "--tls-client-ca"))
                    .transpose()?;
                state = state.with_tls(apikit::tls::server_config(
                    &read_file(cert, "--tls-cert")?,
                    &read_file(key, "--tls-key")?,
                    client_ca.as_deref(),
                )?);
            }
            let listener = bind(listen).await?;
            tracing::info!(%listen, instances = %instances, https = tls_cert.is_some(), "agent listening");
            agent::run(listener, state, shutdown).await
        }
        Command::Gateway {
            listen,
            tls_listen,
            tls_client_ca,
            instance,
            namespace,
            store,
            store_access,
            node_id,
            advertise_address,
            heartbeat_interval,
            threads,
            http,
            snapshot_file,
            no_snapshot,
            status_listen,
            drain_timeout,
            kubernetes_clusters,
        } => {
            let (store, keyspace) = store::open_with(&store, &store_access.options()?).await?;
            let snapshot_file = match (no_snapshot, snapshot_file) {
                (true, _) => None,
                (false, Some(path)) => Some(path),
                (false, None) => Some(format!("portico-{instance}.snapshot.json").into()),
            };
            let config = gateway::GatewayConfig {
                listen,
                tls_listen,
                client_ca: tls_client_ca,
                node_id: node_id.unwrap_or_else(|| default_node_id(&instance)),
                instance,
                namespace,
                advertise_address: advertise_address.unwrap_or_else(|| listen.to_string()),
                heartbeat_interval,
                http: http.settings()?,
                snapshot_file,
                status_listen,
                drain_timeout,
                threads: threads.unwrap_or(0),
                kubernetes_clusters,
            };
            gateway::run(config, store, keyspace, shutdown).await
        }
        Command::Demo(args) => demo::run(args, shutdown).await,
        Command::Ctl(_) => unreachable!("ctl runs without the server runtime"),
        Command::Xcluster {
            clusters,
            admin,
            status_listen,
            identity,
        } => {
            let admin = match admin {
                Some(url) => Some(xcluster::registry::Admin {
                    url,
                    token: env_secret("PORTICO_ADMIN_TOKEN").context(
                        "PORTICO_ADMIN_TOKEN must be set with --admin: a platform admin's token",
                    )?,
                }),
                None => None,
            };
            let status = std::sync::Arc::new(std::sync::Mutex::new(
                xcluster::aggregator::Status::default(),
            ));
            let listener = bind(status_listen).await?;
            tracing::info!(%status_listen, "xcluster status listening");
            let server = tokio::spawn(xcluster::status::serve(
                listener,
                status.clone(),
                shutdown.clone(),
            ));
            let options = xcluster::controller::Options {
                clusters,
                admin,
                identity: identity.unwrap_or_else(|| default_node_id("xcluster")),
            };
            let result = xcluster::controller::run(options, status, shutdown).await;
            server.abort();
            result.map_err(anyhow::Error::msg)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTICO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A file named by `flag`, read whole.
fn read_file(path: &std::path::Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// A secret from the environment; blank counts as unset.
fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Printed once, to the terminal only (stdout, not the log), at the first start.
fn print_new_admin_token(token: &str) {
    println!("Generated admin token (shown only this once; store it safely):");
    println!("  {token}");
    println!("Clients send it as: Authorization: Bearer <token>");
}

/// A namespace id as the admin generates and accepts them.
fn namespace_id(value: &str) -> Result<String, String> {
    let mut v = model::validate::Validator::new();
    model::validate::check_id(&mut v, "namespace", value);
    v.finish().map_err(|e| e.to_string())?;
    Ok(value.to_owned())
}

fn default_node_id(instance: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    format!(
        "{host}-{instance}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Flips to true on Ctrl-C or SIGTERM; every component stops when it does.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_more_than_zero() {
        assert_eq!(positive_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(positive_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(
            positive_duration("0s"),
            Err("must be more than zero".to_owned())
        );
        assert!(positive_duration("soon").is_err());
    }
}
