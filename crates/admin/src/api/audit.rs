//! The audit log's two ends: the middleware that records every change (accepted or
//! refused) and every sign-in, and `GET /audit`.
//!
//! The middleware knows who (the [`Principal`]), from where (the connection's address),
//! what (method and path, the namespace) and the outcome (status); a handler adds what
//! only it knows — the object before and after, as the API shows it (no secret), and
//! the revision made — as an [`AuditDetail`] extension on its response.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Principal, LOGIN_PATH};
use crate::db::{AuditEntry, AuditFilter};
use crate::error::ApiError;
use crate::state::AppState;

/// What a handler adds to the audit record of its request.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditDetail {
    /// Who tried, when the request carried no token (a sign-in).
    pub actor: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub revision: Option<u64>,
}

impl AuditDetail {
    /// Attaches the detail to `response`.
    pub(crate) fn attach(self, mut response: Response) -> Response {
        response.extensions_mut().insert(self);
        response
    }
}

/// Middleware: records every request that may change something (but the cross-cluster
/// controller's status reports), sign-ins, and reads of a cluster's kubeconfig.
pub(crate) async fn record(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    let login = path == LOGIN_PATH;
    // Reading a cluster's credentials is recorded as changes are.
    let secret_read = path.ends_with("/kubeconfig");
    // The cross-cluster controller's status reports change no configuration.
    let report = path.ends_with("/kubernetes/status");
    if report
        || (!login
            && !secret_read
            && matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS))
    {
        return next.run(req).await;
    }
    let actor = req.extensions().get::<Principal>().map(|p| p.user.clone());
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let action = if login {
        "login".to_owned()
    } else {
        format!("{} {path}", req.method())
    };
    let namespace = namespace_of(&path, req.uri());
    let response = next.run(req).await;
    let detail = response
        .extensions()
        .get::<AuditDetail>()
        .cloned()
        .unwrap_or_default();
    let entry = AuditEntry {
        at_ms: crate::db::now_ms(),
        actor: actor.or(detail.actor),
        source,
        action,
        namespace,
        object: (!login).then(|| object_of(&path)),
        status: response.status().as_u16(),
        before: detail.before,
        after: detail.after,
        revision: detail.revision,
    };
    if let Err(e) = state.db.record_audit(&entry).await {
        tracing::error!(error = %e, action = %entry.action, "cannot write the audit record");
    }
    response
}

/// The namespace a request works in: a namespace's own path, or an instance path's
/// namespace parameter (read as the request's scope reads it); `None` for
/// platform-wide calls.
fn namespace_of(path: &str, uri: &axum::http::Uri) -> Option<String> {
    let rest = path.strip_prefix("/gateway/apiserver/v1/")?;
    if let Some(ns) = rest.strip_prefix("namespaces/") {
        return ns.split('/').next().map(str::to_owned);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let instance_scoped = segments.len() >= 4
        && segments[0] == "clusters"
        && segments[2] == "instances"
        && segments.get(4) != Some(&"namespace");
    if !instance_scoped {
        return None;
    }
    super::namespace_param(uri).ok()
}

/// The object a path names, without the API prefix.
fn object_of(path: &str) -> String {
    path.strip_prefix("/gateway/apiserver/v1")
        .unwrap_or(path)
        .to_owned()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Only this namespace's records (a namespace admin must name its namespace).
    namespace: Option<String>,
    /// Only this user's.
    actor: Option<String>,
    /// Older than this (unix milliseconds), for paging.
    before_ms: Option<i64>,
    /// At most this many (default 100).
    limit: Option<i64>,
}

/// Audit records newest first. A platform admin reads all (or one namespace's); a
/// namespace admin reads its namespace's, naming it.
#[utoipa::path(get, path = "/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "audit records, newest first", body = super::Items<AuditEntry>)))]
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<super::Items<AuditEntry>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: format!("bad query string: {}", e.body_text()),
        details: Vec::new(),
    })?;
    match &q.namespace {
        Some(ns) => caller.require(ns, model::user::Role::Admin)?,
        None => caller.require_platform_admin()?,
    }
    let items = state
        .db
        .audit(&AuditFilter {
            namespace: q.namespace,
            actor: q.actor,
            before_ms: q.before_ms,
            limit: q.limit.unwrap_or(100),
        })
        .await?;
    Ok(super::Items::of(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_paths() {
        let of = |path: &str| {
            let uri: axum::http::Uri = path.parse().unwrap();
            namespace_of(uri.path(), &uri)
        };
        let base = "/gateway/apiserver/v1";
        assert_eq!(
            of(&format!("{base}/namespaces/ns-1/instances")).as_deref(),
            Some("ns-1")
        );
        assert_eq!(
            of(&format!(
                "{base}/clusters/c/instances/i/routes?namespace=t&x=1"
            ))
            .as_deref(),
            Some("t")
        );
        assert_eq!(
            of(&format!("{base}/clusters/c/instances/i/routes/r")).as_deref(),
            Some("default")
        );
        assert_eq!(of(&format!("{base}/clusters/c")), None);
        assert_eq!(
            of(&format!("{base}/clusters/c/instances/i/namespace")),
            None
        );
    }
}
