//! Bearer-token authentication for the admin and agent APIs.
//!
//! Only a token's SHA-256 is held ([`TokenHash`]); a presented token is hashed and the
//! two hashes compared with `subtle`'s constant-time equality, so neither the time an
//! answer takes nor the token's length tells a caller how close a guess was.
//!
//! A server can also prove it holds a token without anyone sending it: it answers a
//! random challenge with HMAC-SHA256 keyed by the token's hash ([`TokenHash::proof`]);
//! the caller, who knows the token, checks the answer ([`TokenHash::verify_proof`]).
//! The admin does this before it sends a cluster's token to a new agent address.

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

    /// The proof of holding the token for `challenge`: HMAC-SHA256, keyed by the hash,
    /// of a fixed label and the challenge; hex.
    pub fn proof(&self, challenge: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut context = ring::hmac::Context::with_key(&key);
        context.update(PROOF_LABEL);
        context.update(challenge);
        hex_encode(context.sign().as_ref())
    }

    /// Whether `proof` (hex) proves holding this token for `challenge`; constant time.
    pub fn verify_proof(&self, challenge: &[u8], proof: &str) -> bool {
        let Some(tag) = hex_decode(proof) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut message = PROOF_LABEL.to_vec();
        message.extend_from_slice(challenge);
        ring::hmac::verify(&key, &message, &tag).is_ok()
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&self.0).into()
    }
}

/// Separates proofs from any other use of the key.
const PROOF_LABEL: &[u8] = b"portico agent token proof\0";

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
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

/// Middleware like [`require_bearer`] for routes that accept any of several tokens (the
/// agent's registry: its own token or the registry token services hold).
pub async fn require_any_bearer(
    State(accepted): State<Arc<[TokenHash]>>,
    request: Request,
    next: Next,
) -> Response {
    // Every hash is compared, so the time taken does not tell which one matched.
    let matched = bearer(request.headers()).is_some_and(|token| {
        let presented = TokenHash::of(token);
        accepted.iter().fold(false, |any, hash| {
            any | bool::from(hash.0.ct_eq(&presented.0))
        })
    });
    if matched {
        next.run(request).await
    } else {
        crate::error::unauthorized()
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

    #[test]
    fn proofs_verify_for_their_token_and_challenge_only() {
        let hash = TokenHash::of("token-a");
        let proof = hash.proof(b"challenge-1");
        assert_eq!(proof.len(), 64);
        assert!(hash.verify_proof(b"challenge-1", &proof));
        assert!(!hash.verify_proof(b"challenge-2", &proof));
        assert!(!TokenHash::of("token-b").verify_proof(b"challenge-1", &proof));
        assert!(!hash.verify_proof(b"challenge-1", "zz"));
        assert!(!hash.verify_proof(b"challenge-1", ""));
    }
}
