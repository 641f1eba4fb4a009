//! Who calls, and what they may do.
//!
//! Every request but `POST /login` carries a bearer token: an API token of a user (the
//! first start's admin token is the first platform admin's) or a console session
//! from `/login`. Tokens are kept by SHA-256 only, passwords by argon2id only. The
//! caller's [`Principal`] (user, platform admin flag, role per namespace) goes into the
//! request; handlers check it: [`Principal::require`] for a role in a namespace (401
//! without a token, 403 with the wrong role or namespace), and
//! [`Principal::require_platform_admin`].
//!
//! The admin token: only its SHA-256 is stored (in `settings` and as the first
//! platform admin's token). A token given by `PORTICO_ADMIN_TOKEN` replaces the stored
//! hash; without one, the stored hash is kept, and on the very first start a random
//! token is generated and handed back once so the binary can print it.

use std::collections::BTreeMap;
use std::sync::Arc;

use apikit::TokenHash;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::user::Role;
use rand::RngCore;

use crate::db::{Db, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

const TOKEN_SETTING: &str = "admin_token_sha256";

/// Makes the admin token the first platform admin's; returns, on a first start
/// without a given token, the token just generated.
pub(crate) async fn set_up_token(db: &Db, given: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(token) = given {
        anyhow::ensure!(
            !token.trim().is_empty(),
            "the admin token must not be empty (PORTICO_ADMIN_TOKEN)"
        );
        let hash = TokenHash::of(token);
        db.put_setting(TOKEN_SETTING, &hex::encode(hash.as_bytes()))
            .await?;
        db.set_bootstrap_token(&hex::encode(hash.as_bytes()), crate::db::now())
            .await?;
        return Ok(None);
    }
    if let Some(stored) = db.setting(TOKEN_SETTING).await? {
        parse_hash(&stored)?;
        return Ok(None);
    }
    let token = generate_token();
    let hash = TokenHash::of(&token);
    if db
        .insert_setting(TOKEN_SETTING, &hex::encode(hash.as_bytes()))
        .await?
    {
        db.set_bootstrap_token(&hex::encode(hash.as_bytes()), crate::db::now())
            .await?;
        return Ok(Some(token));
    }
    // Another admin process on the same database generated one first: theirs stands.
    let stored = db
        .setting(TOKEN_SETTING)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the admin token hash vanished while starting"))?;
    parse_hash(&stored)?;
    Ok(None)
}

fn parse_hash(stored: &str) -> anyhow::Result<TokenHash> {
    let bytes = hex::decode(stored.trim())
        .map_err(|_| anyhow::anyhow!("the stored admin token hash is not hex"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored admin token hash is not 32 bytes"))?;
    Ok(TokenHash::from_bytes(bytes))
}

/// How long a console session lasts.
pub(crate) const SESSION_TTL_SECS: i64 = 12 * 3600;

/// The caller of a request, as its token says.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub user: String,
    pub platform_admin: bool,
    pub roles: BTreeMap<String, Role>,
    pub token_id: String,
    pub kind: TokenKind,
}

impl Principal {
    /// The caller's role in `namespace` (a platform admin is admin everywhere).
    pub(crate) fn role(&self, namespace: &str) -> Option<Role> {
        if self.platform_admin {
            return Some(Role::Admin);
        }
        self.roles.get(namespace).copied()
    }

    /// 403 unless the caller has at least `needed` in `namespace`.
    pub(crate) fn require(&self, namespace: &str, needed: Role) -> Result<(), ApiError> {
        match self.role(namespace) {
            Some(role) if role >= needed => Ok(()),
            Some(role) => Err(ApiError::Forbidden(format!(
                "user {:?} is {} in namespace {namespace:?}; this needs {}",
                self.user,
                role.as_str(),
                needed.as_str()
            ))),
            None => Err(ApiError::Forbidden(format!(
                "user {:?} has no role in namespace {namespace:?}",
                self.user
            ))),
        }
    }

    pub(crate) fn require_platform_admin(&self) -> Result<(), ApiError> {
        if self.platform_admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "user {:?} is not a platform admin",
                self.user
            )))
        }
    }

    /// 403 unless the caller is `user` or a platform admin.
    pub(crate) fn require_self_or_platform_admin(&self, user: &str) -> Result<(), ApiError> {
        if self.user == user {
            Ok(())
        } else {
            self.require_platform_admin()
        }
    }
}

/// The authenticated caller, for handlers (set by [`authenticate`]).
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The path that needs no token: signing in.
pub(crate) const LOGIN_PATH: &str = "/gateway/apiserver/v1/login";

/// Middleware: resolves the bearer token to its [`Principal`], or answers 401.
pub(crate) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == LOGIN_PATH {
        return next.run(req).await;
    }
    let Some(token) = bearer(req.headers()) else {
        return apikit::error::unauthorized();
    };
    let hash = hex::encode(TokenHash::of(token).as_bytes());
    let owner = match state.db.token_owner(&hash, crate::db::now()).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return apikit::error::unauthorized(),
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(Principal {
        user: owner.user.name,
        platform_admin: owner.user.platform_admin,
        roles: owner.user.roles,
        token_id: owner.token_id,
        kind: owner.kind,
    });
    next.run(req).await
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The argon2id hash (PHC string) of a password, with a fresh salt.
pub(crate) fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("password salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("password hash: {e}")))
}

/// Whether `password` matches `hash`; with no hash (unknown user, token-only user) a
/// dummy one is checked, so the answer takes as long either way.
pub(crate) fn verify_password(password: &str, hash: Option<&str>) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY
        .get_or_init(|| hash_password("a password nobody has, for timing").unwrap_or_default());
    let (stored, real) = match hash {
        Some(hash) => (hash, true),
        None => (dummy.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let ok = argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
}

/// 32 random bytes from the thread's CSPRNG, hex-encoded (admin and agent tokens).
pub(crate) fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hashes_round_trip() {
        let a = TokenHash::of("token-a");
        assert_eq!(parse_hash(&hex::encode(a.as_bytes())).unwrap(), a);
        assert!(parse_hash("zz").is_err());
        assert!(parse_hash("abcd").is_err());
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
