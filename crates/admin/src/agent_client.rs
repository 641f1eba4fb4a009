//! The admin's client for cluster agents (`{agent}/agent/apiserver/v1/instances…`).
//!
//! Calls are short (a few seconds at most) because the admin never waits on an agent to
//! accept a change: what does not arrive now is delivered by the reconcile loop.
//! Redirects are never followed: a call goes to the registered address or nowhere. Errors
//! say whether the agent answered (it refused; retrying the same call will not help) or
//! not (unreachable or failing; retry later).

use std::time::Duration;

use model::cluster::{AgentInstances, TokenChallenge, TokenProof, PROOF_PATH, REVISION_HEADER};
use model::registry::{RegisteredService, Registration, RegistrationAnswer};
use model::snapshot::{Revision, Snapshot};
use reqwest::{Method, StatusCode};

use crate::db::Change;

/// How long one agent call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentCallError {
    /// No usable answer: connection refused, timeout, or a 5xx. Safe to retry later.
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// The address did not prove it holds the cluster's token: nothing secret is sent.
    #[error("the agent address did not prove it holds the cluster's agent token: {0}")]
    Unverified(String),
    /// The agent answered and refused the call.
    #[error("agent refused the call with {status} ({code}): {message}")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
}

impl AgentCallError {
    /// Our token was refused: resending anything will not help until it is fixed.
    pub(crate) fn is_unauthorized(&self) -> bool {
        matches!(self, AgentCallError::Refused { status, .. } if *status == StatusCode::UNAUTHORIZED)
    }
}

/// One cluster's agent: where it is and the token it accepts (the cluster's own; when
/// `None`, the admin's shared token of earlier versions, if any). `Debug` leaves the
/// token out.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub address: &'a str,
    pub token: Option<&'a str>,
}

impl std::fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("address", &self.address)
            .field("token", &self.token.map(|_| "<redacted>"))
            .finish()
    }
}

/// Shared by every call. Tokens are sent as bearer tokens, never logged.
#[derive(Clone)]
pub(crate) struct AgentClient {
    http: reqwest::Client,
    /// The shared token of earlier versions, for clusters without a token of their own.
    shared_token: Option<String>,
    tls_configured: bool,
}

impl AgentClient {
    pub(crate) fn new(
        shared_token: Option<String>,
        tls: Option<&crate::AgentTls>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().tls_built_in_root_certs(false);
        if let Some(tls) = tls {
            let identity = match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(key)) => Some((cert.as_slice(), key.as_slice())),
                (None, None) => None,
                _ => anyhow::bail!(
                    "a client certificate for agents needs both its certificate and its key"
                ),
            };
            builder = builder.use_preconfigured_tls(apikit::tls::client_config(&tls.ca, identity)?);
        }
        let tls_configured = tls.is_some();
        let http = builder
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            // A redirect would carry the agent token and the snapshot (certificate keys
            // included) to an address nobody registered: never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            shared_token,
            tls_configured,
        })
    }

    /// Whether `https://` agents can be verified (the admin was given their CA).
    pub(crate) fn tls_configured(&self) -> bool {
        self.tls_configured
    }

    /// Whether the shared token of earlier versions is configured.
    pub(crate) fn has_shared_token(&self) -> bool {
        self.shared_token.is_some()
    }

    /// Asks the agent to prove it holds the target's token, without sending the token:
    /// a random challenge answered with an HMAC keyed by the token's hash (see
    /// `apikit::auth`). Nothing else is sent before this succeeds for a new address.
    pub(crate) async fn verify(&self, agent: Target<'_>) -> Result<(), AgentCallError> {
        let Some(token) = agent.token.or(self.shared_token.as_deref()) else {
            return Err(AgentCallError::Unverified(
                "the cluster has no agent token".to_owned(),
            ));
        };
        let challenge = crate::auth::generate_token();
        let url = format!("{}{PROOF_PATH}", agent.address.trim_end_matches('/'));
        let response = self
            .http
            .post(url)
            .json(&TokenChallenge {
                challenge: challenge.clone(),
            })
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(AgentCallError::Unverified(format!(
                "the proof request was answered {status} (an agent older than this admin does not offer it)"
            )));
        }
        let proof: TokenProof = response.json().await.map_err(|_| {
            AgentCallError::Unverified("the answer to the proof request is not a proof".to_owned())
        })?;
        if apikit::TokenHash::of(token).verify_proof(challenge.as_bytes(), &proof.proof) {
            Ok(())
        } else {
            Err(AgentCallError::Unverified(
                "the proof does not match the cluster's token".to_owned(),
            ))
        }
    }

    /// `GET /instances`: the agent's instances, their store revisions and nodes.
    pub(crate) async fn instances(
        &self,
        agent: Target<'_>,
    ) -> Result<AgentInstances, AgentCallError> {
        let response = self
            .request(Method::GET, agent, "", None)
            .send()
            .await
            .map_err(unreachable)?;
        let response = check(response).await?;
        response
            .json()
            .await
            .map_err(|e| AgentCallError::Unreachable(format!("unreadable instance list: {e}")))
    }

    /// `GET /registry/services[?namespace=]`: the services registered in the agent's
    /// cluster (into `namespace`, or into any), with their live nodes.
    pub(crate) async fn registry(
        &self,
        agent: Target<'_>,
        namespace: Option<&str>,
    ) -> Result<Vec<RegisteredService>, AgentCallError> {
        #[derive(serde::Deserialize)]
        struct Listing {
            items: Vec<RegisteredService>,
        }
        let mut request = self.request_to(Method::GET, agent, "registry/services", None);
        if let Some(namespace) = namespace {
            request = request.query(&[("namespace", namespace)]);
        }
        let response = request.send().await.map_err(unreachable)?;
        let response = check(response).await?;
        let listing: Listing = response.json().await.map_err(|e| {
            AgentCallError::Unreachable(format!("unreadable registry listing: {e}"))
        })?;
        Ok(listing.items)
    }

    /// `POST /registry/services/{service}/nodes`: registers a node (checked already).
    pub(crate) async fn register(
        &self,
        agent: Target<'_>,
        service: &str,
        registration: &Registration,
    ) -> Result<RegistrationAnswer, AgentCallError> {
        let body = serde_json::to_value(registration).expect("registrations always serialise");
        let response = self
            .request_to(
                Method::POST,
                agent,
                &format!("registry/services/{service}/nodes"),
                Some(&body),
            )
            .send()
            .await
            .map_err(unreachable)?;
        let response = check(response).await?;
        response.json().await.map_err(|e| {
            AgentCallError::Unreachable(format!("unreadable registration answer: {e}"))
        })
    }

    /// `PUT` (heartbeat) or `DELETE` (deregister) `/registry/leases/{lease}`.
    pub(crate) async fn registry_lease(
        &self,
        agent: Target<'_>,
        method: Method,
        lease: &str,
    ) -> Result<(), AgentCallError> {
        let response = self
            .request_to(method, agent, &format!("registry/leases/{lease}"), None)
            .send()
            .await
            .map_err(unreachable)?;
        check(response).await.map(drop)
    }

    /// Sends one change that produces `revision`.
    pub(crate) async fn push_change(
        &self,
        agent: Target<'_>,
        instance: &str,
        revision: Revision,
        change: &Change,
    ) -> Result<(), AgentCallError> {
        let kind = change.kind();
        let (method, path, body) = match change {
            Change::Create(resource) => (
                Method::POST,
                format!("/{instance}/{kind}"),
                Some(resource.to_json()),
            ),
            Change::Upsert(resource) => (
                Method::PUT,
                format!("/{instance}/{kind}/{}", resource.id()),
                Some(resource.to_json()),
            ),
            Change::Delete { id, .. } => (Method::DELETE, format!("/{instance}/{kind}/{id}"), None),
        };
        let response = self
            .request(method, agent, &path, body.as_ref())
            .header(REVISION_HEADER, revision.to_string())
            .send()
            .await
            .map_err(unreachable)?;
        check(response).await.map(drop)
    }

    /// Tells the agent what the instance is bound to (its namespace, whether it
    /// exists, the namespace's plugin templates).
    pub(crate) async fn push_binding(
        &self,
        agent: Target<'_>,
        instance: &str,
        binding: &model::cluster::InstanceBinding,
    ) -> Result<(), AgentCallError> {
        let body = serde_json::to_value(binding).expect("bindings always serialise");
        let response = self
            .request(
                Method::PUT,
                agent,
                &format!("/{instance}/binding"),
                Some(&body),
            )
            .send()
            .await
            .map_err(unreachable)?;
        check(response).await.map(drop)
    }

    /// Replaces the instance's whole content with `snapshot`.
    pub(crate) async fn push_snapshot(
        &self,
        agent: Target<'_>,
        instance: &str,
        snapshot: &Snapshot,
    ) -> Result<(), AgentCallError> {
        let body = serde_json::to_value(snapshot).expect("snapshots always serialise");
        let response = self
            .request(
                Method::PUT,
                agent,
                &format!("/{instance}/snapshot"),
                Some(&body),
            )
            .send()
            .await
            .map_err(unreachable)?;
        check(response).await.map(drop)
    }

    /// A call under the agent's `…/instances`.
    fn request(
        &self,
        method: Method,
        agent: Target<'_>,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> reqwest::RequestBuilder {
        self.request_to(method, agent, &format!("instances{path}"), body)
    }

    /// A call to `{agent}/agent/apiserver/v1/{path}` with the cluster's token.
    fn request_to(
        &self,
        method: Method,
        agent: Target<'_>,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> reqwest::RequestBuilder {
        let url = format!(
            "{}/agent/apiserver/v1/{path}",
            agent.address.trim_end_matches('/')
        );
        let mut request = self.http.request(method, url);
        if let Some(token) = agent.token.or(self.shared_token.as_deref()) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
    }
}

/// A transport failure with its causes ("error sending request: … connection refused");
/// reqwest errors never carry request headers, so the token cannot leak through here.
fn unreachable(e: reqwest::Error) -> AgentCallError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    AgentCallError::Unreachable(message)
}

/// Turns an error status into [`AgentCallError`], reading the agent's JSON error body.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, AgentCallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status.is_redirection() {
        // Not an agent answering: whatever is at that address is not trusted with a
        // retry elsewhere. Treated as unreachable, so no snapshot follows.
        return Err(AgentCallError::Unreachable(format!(
            "the agent address answered a redirect ({status}); redirects are never followed"
        )));
    }
    let body: model::validate::ErrorBody = response.json().await.unwrap_or_default();
    let message = body.error;
    if status.is_server_error() {
        return Err(AgentCallError::Unreachable(format!(
            "agent answered {status}: {message}"
        )));
    }
    Err(AgentCallError::Refused {
        status,
        code: body.code,
        message,
    })
}
