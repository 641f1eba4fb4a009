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
use model::user::{Login, TokenSpec, UserSpec};
use serde_json::{json, Value};

use super::audit::AuditDetail;
use super::{parse_json, ApiPath};
use crate::auth::{self, Principal, SESSION_TTL_SECS};
use crate::db::{self, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /login`: a console session for a user with a password. A wrong name and a
/// wrong password get the same answer, after the same work.
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
    let answer = Json(json!({ "token": token, "expires_at": expires_at, "user": user }));
    Ok(tried.attach(answer.into_response()))
}

/// `POST /logout`: ends the calling session (an API token is revoked through its id).
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
pub(super) async fn me(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<Json<Value>, ApiError> {
    let user = state.db.require_user(&caller.user).await?;
    Ok(Json(
        json!({ "user": user, "session": caller.kind == TokenKind::Session }),
    ))
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Principal,
) -> Result<Json<Value>, ApiError> {
    caller.require_platform_admin()?;
    Ok(Json(json!({ "items": state.db.users().await? })))
}

pub(super) async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_self_or_platform_admin(&name)?;
    Ok(Json(json!(state.db.require_user(&name).await?)))
}

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

pub(super) async fn list_tokens(
    State(state): State<Arc<AppState>>,
    caller: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_self_or_platform_admin(&name)?;
    state.db.require_user(&name).await?;
    Ok(Json(json!({ "items": state.db.tokens(&name).await? })))
}

/// Makes an API token; the answer carries it this once.
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
    let shown = json!({ "id": id, "name": spec.name, "created_at": now, "expires_at": expires_at });
    let mut answer = shown.clone();
    answer["token"] = json!(token);
    Ok(AuditDetail {
        after: Some(shown),
        ..AuditDetail::default()
    }
    .attach((StatusCode::CREATED, Json(answer)).into_response()))
}

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
