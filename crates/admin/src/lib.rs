//! The admin back end: the management plane's REST API and its database.
//!
//! The database is the desired state of every instance of every cluster. A change made
//! through the API is validated, committed in one transaction with the instance's new
//! revision and a change-log row, then pushed to the cluster's agent; a loop polls
//! every agent to discover instances and pushes a full snapshot to any instance whose
//! store is not at the database's revision (see [`sync`] for the spine).
//!
//! Code map: [`api`] (routes and handlers), [`auth`] (admin token; the HTTP plumbing,
//! token check and error body included, is the `apikit` crate's), [`db`] (SQL for
//! SQLite, PostgreSQL and MySQL; migrations in `migrations/`), [`agent_client`] (calls
//! to agents), [`sync`] (write, push, poll, reconcile), [`error`] (the one error →
//! status mapping).

mod agent_client;
mod api;
mod auth;
mod console;
mod convergence;
mod db;
mod error;
mod history;
mod impact;
mod lease;
mod secrets;
mod state;
mod sync;

pub use secrets::DataKey;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// How the admin is started.
#[derive(Clone)]
pub struct AdminConfig {
    /// `sqlite://portico.db` (created if missing), `postgres://…` or `mysql://…`.
    pub database_url: String,
    /// How often agents are polled, which is also the reconcile period.
    pub poll_interval: Duration,
    /// The shared agent token of earlier versions (`PORTICO_AGENT_TOKEN`): sent only to
    /// the agents of clusters registered without a token of their own.
    pub agent_token: Option<String>,
    /// Seals certificate keys and agent tokens in the database (`--data-key-file`,
    /// `PORTICO_DATA_KEY`). Without it the admin refuses to store either.
    pub data_key: Option<DataKey>,
    /// Earlier data keys, still accepted for reading; what they sealed is sealed again
    /// with `data_key` at start (`--data-key-old-file`).
    pub old_data_keys: Vec<DataKey>,
    /// The admin token (`PORTICO_ADMIN_TOKEN`); when `None`, the stored one is kept or,
    /// on the first start, one is generated.
    pub admin_token: Option<String>,
    /// TLS towards agents at `https://` addresses; without it such addresses are
    /// refused.
    pub agent_tls: Option<AgentTls>,
    /// How long clients may take to send a request head and body (the body limit is
    /// the API's own, [`MAX_BODY`]).
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
}

/// How the admin verifies agents served over HTTPS, and the client certificate it
/// presents to those requiring one (mTLS). PEM contents. `Debug` leaves the key out.
#[derive(Clone, Default)]
pub struct AgentTls {
    /// CAs agent certificates must chain to; no other roots are trusted.
    pub ca: Vec<u8>,
    /// Client certificate chain and its key, both or neither.
    pub client_cert: Option<Vec<u8>>,
    pub client_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("client_certificate", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// Largest request body the admin API takes.
pub const MAX_BODY: usize = api::MAX_BODY;

/// Shows whether tokens are set, never their value.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |token: &Option<String>| if token.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("AdminConfig")
            .field("database_url", &self.database_url)
            .field("poll_interval", &self.poll_interval)
            .field("agent_token", &set(&self.agent_token))
            .field("data_key", &self.data_key)
            .field("old_data_keys", &self.old_data_keys)
            .field("agent_tls", &self.agent_tls)
            .field("admin_token", &set(&self.admin_token))
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_timeout", &self.body_timeout)
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        let limits = apikit::Limits::with_max_body(MAX_BODY);
        Self {
            header_read_timeout: limits.header_read_timeout,
            body_timeout: limits.body_timeout,
            database_url: "sqlite://portico.db".to_owned(),
            poll_interval: Duration::from_secs(10),
            agent_token: None,
            admin_token: None,
            data_key: None,
            old_data_keys: Vec::new(),
            agent_tls: None,
        }
    }
}

/// An opened admin: database connected and migrated, token set up.
pub struct Admin {
    state: Arc<state::AppState>,
    poll_interval: Duration,
    limits: apikit::Limits,
}

impl Admin {
    /// Connects, runs migrations, sets up the admin token. Returns the newly generated
    /// token (only on the very first start without `PORTICO_ADMIN_TOKEN`) so the binary
    /// can print it once.
    pub async fn open(config: AdminConfig) -> anyhow::Result<(Admin, Option<String>)> {
        anyhow::ensure!(
            !config.poll_interval.is_zero(),
            "the poll interval must be above zero"
        );
        anyhow::ensure!(
            !config.header_read_timeout.is_zero() && !config.body_timeout.is_zero(),
            "the header-read and body timeouts must be above zero"
        );
        anyhow::ensure!(
            config.old_data_keys.is_empty() || config.data_key.is_some(),
            "old data keys (--data-key-old-file) need a primary data key (--data-key-file or PORTICO_DATA_KEY) to re-encrypt with"
        );
        let keyring = secrets::Keyring::new(config.data_key.clone(), config.old_data_keys.clone());
        let db = db::Db::open(&config.database_url, keyring).await?;
        let sealed = db
            .seal_at_start()
            .await
            .context("cannot read the secrets stored in the database")?;
        if sealed.sealed > 0 {
            tracing::info!(
                count = sealed.sealed,
                key = config.data_key.as_ref().map(|k| k.id().to_owned()),
                "secrets (re-)encrypted with the primary data key"
            );
        }
        if sealed.clear > 0 {
            tracing::warn!(
                count = sealed.clear,
                "secrets stored in clear by an earlier version; set a data key (--data-key-file or PORTICO_DATA_KEY) to encrypt them"
            );
        }
        let new_token = auth::set_up_token(&db, config.admin_token.as_deref())
            .await
            .context("cannot set up the admin token")?;
        if config.data_key.is_none() {
            tracing::warn!(
                "no data key (--data-key-file or PORTICO_DATA_KEY): certificates with keys and agent tokens will be refused"
            );
        }
        let agents = agent_client::AgentClient::new(config.agent_token, config.agent_tls.as_ref())?;
        let admin = Admin {
            state: Arc::new(state::AppState::new(db, agents)),
            poll_interval: config.poll_interval,
            limits: apikit::Limits {
                max_body: MAX_BODY,
                header_read_timeout: config.header_read_timeout,
                body_timeout: config.body_timeout,
            },
        };
        Ok((admin, new_token))
    }

    /// The REST API (`/gateway/apiserver/v1/…`), admin token required on every route.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Serves HTTP on `listener` (through `apikit::serve`: early 413, header-read and
    /// body timeouts) and, while this process holds the reconciler lease, the
    /// poll/reconcile loop, until `shutdown` flips to true (or its sender is dropped).
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // Take the reconciler lease now if it is free, so the first tick reconciles.
        self.state.lease.renew(&self.state.db).await;
        // Both loops end with this future, even when it is dropped unfinished: a
        // process that stops serving neither reconciles nor holds the lease.
        let mut lease = Owned(Some({
            let (state, shutdown) = (self.state.clone(), shutdown.clone());
            tokio::spawn(async move { state.lease.keep(&state.db, shutdown).await })
        }));
        let mut reconcile = Owned(Some(tokio::spawn(sync::run_loop(
            self.state.clone(),
            self.poll_interval,
            shutdown.clone(),
        ))));
        let served = apikit::serve(listener, self.router(), self.limits, shutdown).await;
        if served.is_err() {
            // Serving failed without a shutdown: the loops would never see one.
            drop(reconcile);
            drop(lease);
        } else {
            // They see the same signal and end between two steps; the lease is handed
            // over before the database closes.
            reconcile.join().await;
            lease.join().await;
        }
        self.state.db.close().await;
        served.context("the admin HTTP server failed")
    }
}

/// A task that ends with its owner: aborted when dropped before it was joined.
struct Owned(Option<tokio::task::JoinHandle<()>>);

impl Owned {
    async fn join(&mut self) {
        if let Some(task) = self.0.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
