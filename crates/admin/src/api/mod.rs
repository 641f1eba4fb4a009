//! The admin's REST API under `/gateway/apiserver/v1` (see `docs/api.md`).
//!
//! Bodies are taken as bytes and parsed here, not by axum's `Json`, so every refusal
//! has our JSON error shape and names what is wrong: where the JSON breaks (line and
//! column), or which field is unknown, missing or of the wrong type (its full path).

mod audit;
mod clusters;
mod config;
mod namespaces;
mod openapi;
mod plugins;
mod registry;
mod resources;
mod revisions;
mod sealed;
mod tester;
mod users;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;

use model::user::Role;

use crate::auth::Principal;
use crate::db::RevisionNote;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted (2 MiB); larger ones get 413 (`apikit::limits`, applied
/// by the server, refuses one announced larger before reading it).
pub(crate) const MAX_BODY: usize = 2 * 1024 * 1024;

/// The admin's router, authentication and audit included: every route, known or not,
/// needs a token (`POST /login` and the web console's static files aside); every
/// change and sign-in is audited.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let instance = "/clusters/{cluster}/instances/{instance}";
    let api = Router::new()
        .route(
            "/clusters",
            get(clusters::list_clusters).post(clusters::create_cluster),
        )
        .route(
            "/clusters/{cluster}",
            get(clusters::get_cluster)
                .put(clusters::update_cluster)
                .delete(clusters::delete_cluster),
        )
        .route(
            "/clusters/{cluster}/kubeconfig",
            get(clusters::get_kubeconfig),
        )
        .route(
            "/clusters/{cluster}/kubernetes/status",
            axum::routing::put(clusters::put_kubernetes_status),
        )
        .route(
            "/clusters/{cluster}/instances",
            get(clusters::list_instances),
        )
        .route("/login", axum::routing::post(users::login))
        .route("/logout", axum::routing::post(users::logout))
        .route("/me", get(users::me))
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{name}",
            get(users::get_one).put(users::put).delete(users::delete),
        )
        .route(
            "/users/{name}/tokens",
            get(users::list_tokens).post(users::create_token),
        )
        .route(
            "/users/{name}/tokens/{id}",
            axum::routing::delete(users::delete_token),
        )
        .route("/audit", get(audit::list))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/status", get(clusters::status))
        .route(
            "/namespaces",
            get(namespaces::list).post(namespaces::create),
        )
        .route(
            "/namespaces/{id}",
            get(namespaces::get_one)
                .put(namespaces::put)
                .delete(namespaces::delete),
        )
        .route("/namespaces/{id}/instances", get(namespaces::instances))
        .route("/namespaces/{id}/registry", get(registry::list))
        .route(
            "/clusters/{cluster}/registry/services/{service}/nodes",
            axum::routing::post(registry::register),
        )
        .route(
            "/clusters/{cluster}/registry/leases/{lease}",
            axum::routing::put(registry::heartbeat).delete(registry::deregister),
        )
        .route(
            "/namespaces/{id}/plugin_templates",
            get(namespaces::list_templates),
        )
        .route(
            "/namespaces/{id}/plugin_templates/{plugin}",
            get(namespaces::get_template)
                .put(namespaces::put_template)
                .delete(namespaces::delete_template),
        )
        .route(
            &format!("{instance}/namespace"),
            axum::routing::put(clusters::set_instance_namespace),
        )
        .route("/plugins", get(plugins::list_plugins))
        .route("/plugins/{name}", get(plugins::get_plugin))
        .route(instance, get(clusters::get_instance))
        .route(&format!("{instance}/nodes"), get(clusters::list_nodes))
        .route(
            &format!("{instance}/convergence"),
            get(clusters::convergence),
        )
        .route(
            &format!("{instance}/convergence/history"),
            get(clusters::convergence_history),
        )
        .route(&format!("{instance}/changes"), get(clusters::list_changes))
        .route(&format!("{instance}/revisions"), get(revisions::list))
        .route(
            &format!("{instance}/revisions/{{revision}}"),
            get(revisions::get_one),
        )
        .route(
            &format!("{instance}/revisions/{{revision}}/rollback"),
            axum::routing::post(revisions::rollback),
        )
        .route(&format!("{instance}/diff"), get(revisions::diff))
        .route(
            &format!("{instance}/route-test"),
            axum::routing::post(tester::route_test),
        )
        .route(
            &format!("{instance}/config"),
            get(config::export).put(config::apply),
        )
        .route(
            "/namespaces/{id}/config",
            get(config::export_namespace).put(config::apply_namespace),
        )
        .route(
            &format!("{instance}/routes/{{id}}/plugins/effective"),
            get(plugins::effective_plugins),
        )
        .route(
            &format!("{instance}/{{kind}}"),
            get(resources::list).post(resources::create),
        )
        .route(
            &format!("{instance}/{{kind}}/{{id}}"),
            get(resources::get_one)
                .put(resources::put)
                .delete(resources::delete),
        );
    Router::new()
        .nest("/gateway/apiserver/v1", api)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
        .layer(TraceLayer::new_for_http())
        // Added after the layers: the console's files need no token.
        .merge(crate::console::router())
        .with_state(state)
}

/// A listing: `{"items": [...]}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Items<T> {
    pub items: Vec<T>,
}

impl<T> Items<T> {
    pub(crate) fn of(items: Vec<T>) -> axum::Json<Self> {
        axum::Json(Self { items })
    }
}

/// The path of everything under an instance: its cluster and its name.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read through `ApiPath` tuples; declared for the API's description
pub(crate) struct InstancePath {
    /// The cluster's name.
    pub cluster: String,
    /// The instance's name.
    pub instance: String,
}

/// The query of a read under an instance: the namespace it lives in.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct NamespaceQuery {
    /// The namespace's id (`default` when absent); an instance of another namespace is
    /// not found.
    #[allow(dead_code)] // read by `Scope`, declared here for the API's description
    pub namespace: Option<String>,
}

/// The query of a write under an instance: its namespace, and whether to only check
/// and answer what it would change.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InstanceWriteQuery {
    /// The namespace's id (`default` when absent).
    #[allow(dead_code)] // read by `Scope`
    pub namespace: Option<String>,
    /// Check everything, answer what would change, store nothing.
    #[allow(dead_code)] // read by `RevisionNote`
    pub dry_run: Option<bool>,
    /// Write only if the instance is still at this revision (the one the caller
    /// previewed or read); otherwise 409 `revision_conflict`, nothing written.
    #[allow(dead_code)] // read by `RevisionNote`
    pub expected_revision: Option<u64>,
}

/// A dry run's answer (nothing stored): the revision the write would make, the
/// object before and after, the fields that would change, and for routes the
/// requests whose route would change.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DryRunAnswer {
    /// Always `true`.
    pub dry_run: bool,
    pub revision: model::snapshot::Revision,
    /// `create`, `update` or `delete`.
    pub op: &'static str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// For an update: the fields that differ.
    pub fields: Vec<model::diff::FieldChange>,
    pub rerouted: Vec<crate::impact::Rerouted>,
}

/// `Path` whose rejection is an [`ApiError`] (JSON) rather than axum's plain text.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

/// The namespace a request works in: the `namespace` query parameter (a namespace
/// id), `default` when absent. Everything under an instance is reached through it: an
/// instance of another namespace is not found (requirement N2). Extracting it checks
/// the caller's role there: a viewer reads, an editor writes (403 otherwise).
pub(crate) struct Scope {
    pub namespace: String,
}

#[derive(serde::Deserialize)]
struct ScopeQuery {
    namespace: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        let needed = match parts.method {
            axum::http::Method::GET | axum::http::Method::HEAD => Role::Viewer,
            _ => Role::Editor,
        };
        Scope::of(parts, needed)
    }
}

/// The namespace a request names: its `namespace` query parameter (a namespace id),
/// `default` when absent. The one reading of the parameter (the scope of a request,
/// its audit record).
pub(crate) fn namespace_param(uri: &axum::http::Uri) -> Result<String, ApiError> {
    let query = axum::extract::Query::<ScopeQuery>::try_from_uri(uri).map_err(|e| {
        ApiError::BadRequest {
            message: format!("bad query string: {}", e.body_text()),
            details: Vec::new(),
        }
    })?;
    let namespace = query
        .0
        .namespace
        .unwrap_or_else(|| model::namespace::DEFAULT_NAMESPACE.to_owned());
    let mut v = model::validate::Validator::new();
    model::validate::check_id(&mut v, "namespace", &namespace);
    v.finish().map_err(|errors| ApiError::Invalid {
        what: "query".into(),
        errors,
    })?;
    Ok(namespace)
}

/// A [`Scope`] for a POST that only reads (the route tester): a viewer may call it.
pub(crate) struct ReadScope(pub Scope);

impl<S: Send + Sync> FromRequestParts<S> for ReadScope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        Scope::of(parts, Role::Viewer).map(ReadScope)
    }
}

impl Scope {
    fn of(parts: &axum::http::request::Parts, needed: Role) -> Result<Self, ApiError> {
        let namespace = namespace_param(&parts.uri)?;
        // Reading needs a viewer, anything else an editor, of this namespace.
        let caller = parts
            .extensions
            .get::<Principal>()
            .ok_or(ApiError::Unauthorized)?;
        caller.require(&namespace, needed)?;
        Ok(Self { namespace })
    }

    /// The instance, when it lives in this scope's namespace; 404 otherwise (also
    /// when the namespace does not exist).
    pub(crate) async fn instance(
        &self,
        state: &AppState,
        cluster: &str,
        instance: &str,
    ) -> Result<model::cluster::Instance, ApiError> {
        state
            .db
            .require_instance_in(&self.namespace, cluster, instance)
            .await
    }
}

/// Header carrying the message of the revision a write makes (UTF-8, at most
/// [`MAX_MESSAGE`] characters).
pub(crate) const MESSAGE_HEADER: &str = "x-portico-message";

/// Longest revision message accepted.
pub(crate) const MAX_MESSAGE: usize = 1024;

/// Who writes (the caller's user name), the message they gave, whether it is a dry
/// run (`?dry_run=true`: checked, answered, not stored) and the revision it must build
/// on (`?expected_revision=N`).
impl<S: Send + Sync> FromRequestParts<S> for RevisionNote {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        let message = match parts.headers.get(MESSAGE_HEADER) {
            None => None,
            Some(value) => Some(revision_message(value.as_bytes())?),
        };
        let query = axum::extract::Query::<WriteQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::BadRequest {
                message: format!("bad query string: {}", e.body_text()),
                details: Vec::new(),
            })?
            .0;
        let author = parts
            .extensions
            .get::<Principal>()
            .map(|p| p.user.clone())
            .ok_or(ApiError::Unauthorized)?;
        Ok(RevisionNote {
            author,
            message,
            dry_run: query.dry_run,
            expected: query.expected_revision.map(model::snapshot::Revision),
        })
    }
}

/// What a write's query says about the revision it makes (see [`InstanceWriteQuery`]).
#[derive(serde::Deserialize)]
struct WriteQuery {
    #[serde(default)]
    dry_run: bool,
    expected_revision: Option<u64>,
}

/// A revision message as given: UTF-8, no control characters, not too long.
pub(crate) fn revision_message(bytes: &[u8]) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::BadRequest {
        message: format!("the {MESSAGE_HEADER} header {why}"),
        details: vec![model::validate::FieldError {
            field: MESSAGE_HEADER.to_owned(),
            message: why.to_owned(),
        }],
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("must be UTF-8"))?;
    if text.chars().count() > MAX_MESSAGE {
        return Err(invalid(&format!(
            "must be at most {MAX_MESSAGE} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(text.trim().to_owned())
}

/// Parses a JSON body into `T`; `what` names it in messages ("route", "cluster").
pub(crate) fn parse_json<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, ApiError> {
    model::json::parse(body).map_err(|e| ApiError::BadRequest {
        message: e.message(what),
        details: e.details().to_vec(),
    })
}
