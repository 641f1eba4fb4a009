//! The admin token: set up at start, checked on every request.
//!
//! Only the token's SHA-256 is stored (in `settings`) and held in memory. A token given
//! by `PORTICO_ADMIN_TOKEN` replaces the stored hash; without one, the stored hash is
//! kept, and on the very first start a random token is generated and handed back once
//! so the binary can print it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::error::ApiError;
use crate::state::AppState;

const TOKEN_SETTING: &str = "admin_token_sha256";

/// Returns the hash to check requests against and, on a first start without a given
/// token, the token just generated.
pub(crate) async fn set_up_token(
    db: &Db,
    given: Option<&str>,
) -> anyhow::Result<([u8; 32], Option<String>)> {
    if let Some(token) = given {
        anyhow::ensure!(
            !token.trim().is_empty(),
            "the admin token must not be empty (PORTICO_ADMIN_TOKEN)"
        );
        let hash = digest(token);
        db.put_setting(TOKEN_SETTING, &hex::encode(hash)).await?;
        return Ok((hash, None));
    }
    if let Some(stored) = db.setting(TOKEN_SETTING).await? {
        return Ok((parse_hash(&stored)?, None));
    }
    let token = generate_token();
    let hash = digest(&token);
    if db.insert_setting(TOKEN_SETTING, &hex::encode(hash)).await? {
        return Ok((hash, Some(token)));
    }
    // Another admin process on the same database generated one first: use theirs.
    let stored = db
        .setting(TOKEN_SETTING)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the admin token hash vanished while starting"))?;
    Ok((parse_hash(&stored)?, None))
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <admin token>`.
pub(crate) async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match presented {
        Some(token) if hashes_equal(&digest(token), &state.token_hash) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares without an early exit, so timing does not tell how much of a guess matched.
fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hash(stored: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(stored.trim())
        .map_err(|_| anyhow::anyhow!("the stored admin token hash is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored admin token hash is not 32 bytes"))
}

/// 32 random bytes from the thread's CSPRNG, hex-encoded.
fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn hashes_compare_and_round_trip() {
        let a = digest("token-a");
        assert!(hashes_equal(&a, &digest("token-a")));
        assert!(!hashes_equal(&a, &digest("token-b")));
        assert_eq!(parse_hash(&hex::encode(a)).unwrap(), a);
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
