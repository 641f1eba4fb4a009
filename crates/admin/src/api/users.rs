//! Handlers for signing in and out, the caller, users with their roles, and API
//! tokens. Passwords and tokens are taken, never answered (a new token once, when it
//! is made); the audit log records sign-ins, failed ones included.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::user::User;
use model::user::{Login, TokenSpec, UserSpec};
use serde_json::json;

use super::audit::AuditDetail;
use super::{parse_json, ApiPath, Items};
use crate::auth::{self, Principal, SESSION_TTL_SECS};
use crate::db::TokenInfo;
use crate::db::{self, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// A console session, answered by `POST /login`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Session {
    /// The session's bearer token (shown this once).
    token: String,
    /// Unix seconds.
    expires_at: i64,
    user: User,
}

/// The caller, answered by `GET /me`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Me {
    user: User,
    /// Whether the call came with a console session (else an API token).
    session: bool,
}

/// A token as listed, and with `token` this once when it is made.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NewToken {
    id: String,
    name: String,
    /// Unix seconds.
    created_at: i64,
    expires_at: Option<i64>,
    /// The token itself: answered at creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// `POST /login`: a console session for a user with a password. A wrong name and a
/// wrong password get the same answer, after the same work.
#[utoipa::path(post, path = "/login", tag = "users",
    request_body = model::user::Login,
    responses((status = 200, description = "a console session (12 h)", body = Session)))]
pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let login: Login = parse_json("login", &body?)?;
    let hash = state.db.password_hash(&login.name).await?;
    let tried = AuditDetail {
        actor: Some(login.name.clone()),
        ..AuditDetail::default()
    };
    let password = login.password;
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, hash.as_deref()))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if !ok {
        tracing::info!(user = %login.name, "sign-in refused");
        return Ok(tried.attach(ApiError::Unauthorized.into_response()));
    }
    let token = auth::generate_token();
    let now = db::now();
    let expires_at = now + SESSION_TTL_SECS;
    state
        .db
        .insert_token(
            &login.name,
            &hex::encode(apikit::TokenHash::of(&token).as_bytes()),
            "console session",
            TokenKind::Session,
            Some(expires_at),
            now,
        )
        .await?;
    let user = state.db.require_user(&login.name).await?;
    tracing::info!(user = %login.name, "signed in");
    let answer = Json(Session {
        token,
        expires_at,
        user,
    });
    Ok(tried.attach(answer.into_response()))
}

/// `POST /logout`: ends the calling session (an API token is revoked through its id).
#[utoipa::path(post, path = "/logout", tag = "users",
    responses((status = 204, description = "the session ended")))]
pub(super) async fn logout(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<StatusCode, ApiError> {
    if caller.kind != TokenKind::Session {
        return Err(ApiError::BadRequest {
            message: "only a console session signs out; revoke an API token with DELETE /users/{name}/tokens/{id}".into(),
            details: Vec::new(),
        });
    }
    state
        .db
        .delete_token(&caller.user, &caller.token_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /me`: the caller and its roles.
#[utoipa::path(get, path = "/me", tag = "users",
    responses((status = 200, description = "the caller", body = Me)))]
pub(super) async fn me(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<Json<Me>, ApiError> {
    let user = state.db.require_user(&caller.user).await?;
    Ok(Json(Me {
        user,
        session: caller.kind == TokenKind::Session,
    }))
}

/// Every user (platform admin).
#[utoipa::path(get, path = "/users", tag = "users",
    responses((status = 200, description = "the users", body = Items<User>)))]
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<Json<Items<User>>, ApiError> {
    caller.require_platform_admin()?;
    Ok(Items::of(state.db.users().await?))
}

/// One user (itself, or any for a platform admin).
#[utoipa::path(get, path = "/users/{name}", tag = "users",
    params(("name" = String, Path, description = "the user's name")),
    responses((status = 200, description = "the user", body = User)))]
pub(super) async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<User>, ApiError> {
    caller.require_self_or_platform_admin(&name)?;
    Ok(Json(state.db.require_user(&name).await?))
}

/// Creates a user (platform admin).
#[utoipa::path(post, path = "/users", tag = "users",
    request_body = model::user::UserSpec,
    responses((status = 201, description = "the user", body = User)))]
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let spec = parse_spec(&body?, None)?;
    let user = save(&state, spec, true).await?;
    let after = json!(user);
    Ok(AuditDetail {
        after: Some(after.clone()),
        ..AuditDetail::default()
    }
    .attach((StatusCode::CREATED, Json(after)).into_response()))
}

/// Replaces a user's admin flag and roles (platform admin), or its password (itself
/// too: a body with its own name and unchanged flag and roles).
#[utoipa::path(put, path = "/users/{name}", tag = "users",
    params(("name" = String, Path, description = "the user's name")),
    request_body = model::user::UserSpec,
    responses((status = 200, description = "the user", body = User)))]
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec = parse_spec(&body?, Some(&name))?;
    let before = state.db.require_user(&name).await?;
    if !caller.platform_admin {
        caller.require_self_or_platform_admin(&name)?;
        if spec.platform_admin != before.platform_admin || spec.roles != before.roles {
            return Err(ApiError::Forbidden(
                "only a platform admin changes roles".into(),
            ));
        }
    }
    let user = save(&state, spec, false).await?;
    let after = json!(user);
    Ok(AuditDetail {
        before: Some(json!(before)),
        after: Some(after.clone()),
        ..AuditDetail::default()
    }
    .attach(Json(after).into_response()))
}

/// Removes a user and its tokens (platform admin; never the last one).
#[utoipa::path(delete, path = "/users/{name}", tag = "users",
    params(("name" = String, Path, description = "the user's name")),
    responses((status = 204, description = "removed")))]
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let before = state.db.require_user(&name).await?;
    state.db.delete_user(&name).await?;
    Ok(AuditDetail {
        before: Some(json!(before)),
        ..AuditDetail::default()
    }
    .attach(StatusCode::NO_CONTENT.into_response()))
}

/// A user's API tokens and sessions (never the tokens themselves).
#[utoipa::path(get, path = "/users/{name}/tokens", tag = "users",
    params(("name" = String, Path, description = "the user's name")),
    responses((status = 200, description = "the tokens", body = Items<TokenInfo>)))]
pub(super) async fn list_tokens(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Items<TokenInfo>>, ApiError> {
    caller.require_self_or_platform_admin(&name)?;
    state.db.require_user(&name).await?;
    Ok(Items::of(state.db.tokens(&name).await?))
}

/// Makes an API token; the answer carries it this once.
#[utoipa::path(post, path = "/users/{name}/tokens", tag = "users",
    params(("name" = String, Path, description = "the user's name")),
    request_body = model::user::TokenSpec,
    responses((status = 201, description = "the token, shown this once", body = NewToken)))]
pub(super) async fn create_token(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_self_or_platform_admin(&name)?;
    state.db.require_user(&name).await?;
    let spec: TokenSpec = parse_json("token", &body?)?;
    spec.validate().map_err(|errors| ApiError::Invalid {
        what: "token".into(),
        errors,
    })?;
    let token = auth::generate_token();
    let now = db::now();
    let expires_at = spec
        .expires_in_days
        .map(|days| now + i64::from(days) * 86_400);
    let id = state
        .db
        .insert_token(
            &name,
            &hex::encode(apikit::TokenHash::of(&token).as_bytes()),
            &spec.name,
            TokenKind::Token,
            expires_at,
            now,
        )
        .await?;
    let mut answer = NewToken {
        id,
        name: spec.name,
        created_at: now,
        expires_at,
        token: None,
    };
    let shown = json!(answer);
    answer.token = Some(token);
    Ok(AuditDetail {
        after: Some(shown),
        ..AuditDetail::default()
    }
    .attach((StatusCode::CREATED, Json(answer)).into_response()))
}

/// Revokes a token or session.
#[utoipa::path(delete, path = "/users/{name}/tokens/{id}", tag = "users",
    params(("name" = String, Path, description = "the user's name"), ("id" = String, Path, description = "the token's id")),
    responses((status = 204, description = "revoked")))]
pub(super) async fn delete_token(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_self_or_platform_admin(&name)?;
    state.db.delete_token(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_spec(body: &[u8], path_name: Option<&str>) -> Result<UserSpec, ApiError> {
    let spec: UserSpec = parse_json("user", body)?;
    let mut errors = spec.validate().err().unwrap_or_default();
    if let Some(name) = path_name {
        if spec.name != name {
            errors.0.push(model::validate::FieldError {
                field: "name".into(),
                message: format!("must equal the name in the path ({name:?})"),
            });
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            what: "user".into(),
            errors,
        });
    }
    Ok(spec)
}

async fn save(
    state: &AppState,
    spec: UserSpec,
    create: bool,
) -> Result<model::user::User, ApiError> {
    let hash = match spec.password {
        Some(password) => Some(
            tokio::task::spawn_blocking(move || auth::hash_password(&password))
                .await
                .map_err(|e| ApiError::Internal(e.into()))??,
        ),
        None => None,
    };
    state
        .db
        .save_user(
            &spec.name,
            hash.as_deref(),
            spec.platform_admin,
            &spec.roles,
            create,
            db::now(),
        )
        .await
}
