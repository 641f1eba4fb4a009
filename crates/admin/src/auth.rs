//! The admin token: set up at start; every request is checked against it by
//! `apikit::auth::require_bearer` (see `api::router`).
//!
//! Only the token's SHA-256 is stored (in `settings`) and held in memory. A token given
//! by `PORTICO_ADMIN_TOKEN` replaces the stored hash; without one, the stored hash is
//! kept, and on the very first start a random token is generated and handed back once
//! so the binary can print it.

use apikit::TokenHash;
use rand::RngCore;

use crate::db::Db;

const TOKEN_SETTING: &str = "admin_token_sha256";

/// Returns the hash to check requests against and, on a first start without a given
/// token, the token just generated.
pub(crate) async fn set_up_token(
    db: &Db,
    given: Option<&str>,
) -> anyhow::Result<(TokenHash, Option<String>)> {
    if let Some(token) = given {
        anyhow::ensure!(
            !token.trim().is_empty(),
            "the admin token must not be empty (PORTICO_ADMIN_TOKEN)"
        );
        let hash = TokenHash::of(token);
        db.put_setting(TOKEN_SETTING, &hex::encode(hash.as_bytes()))
            .await?;
        return Ok((hash, None));
    }
    if let Some(stored) = db.setting(TOKEN_SETTING).await? {
        return Ok((parse_hash(&stored)?, None));
    }
    let token = generate_token();
    let hash = TokenHash::of(&token);
    if db
        .insert_setting(TOKEN_SETTING, &hex::encode(hash.as_bytes()))
        .await?
    {
        return Ok((hash, Some(token)));
    }
    // Another admin process on the same database generated one first: use theirs.
    let stored = db
        .setting(TOKEN_SETTING)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the admin token hash vanished while starting"))?;
    Ok((parse_hash(&stored)?, None))
}

fn parse_hash(stored: &str) -> anyhow::Result<TokenHash> {
    let bytes = hex::decode(stored.trim())
        .map_err(|_| anyhow::anyhow!("the stored admin token hash is not hex"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored admin token hash is not 32 bytes"))?;
    Ok(TokenHash::from_bytes(bytes))
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
