//! Bearer-token authentication for the admin and agent APIs.
//!
//! Only a token's SHA-256 is held ([`TokenHash`]); a presented token is hashed and the
//! two hashes compared with `subtle`'s constant-time equality, so neither the time an
//! answer takes nor the token's length tells a caller how close a guess was.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 of a bearer token; what a server checks requests against.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// A hash stored earlier (see [`TokenHash::as_bytes`]).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&self.0).into()
    }
}

/// Never shows the hash: it would let a reader test guesses offline.
impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive),
/// or `None` when the header is missing, not UTF-8, of another scheme or empty.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware (`axum::middleware::from_fn_with_state`): 401 with the JSON error body
/// unless the request carries the token whose hash is the state.
pub async fn require_bearer(
    State(expected): State<Arc<TokenHash>>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(request.headers()) {
        Some(token) if expected.matches(token) => next.run(request).await,
        _ => crate::error::unauthorized(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::AUTHORIZATION, value.parse().unwrap());
        map
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn hashes_match_only_their_token() {
        let hash = TokenHash::of("token-a");
        assert!(hash.matches("token-a"));
        assert!(!hash.matches("token-b"));
        assert!(!hash.matches("token-a "));
        assert!(!hash.matches(""));
        assert_eq!(TokenHash::from_bytes(*hash.as_bytes()), hash);
        assert_eq!(format!("{hash:?}"), "TokenHash(<redacted>)");
    }
}
