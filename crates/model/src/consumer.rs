//! Consumers: who calls the APIs. A consumer has credentials of several kinds, may
//! belong to a group, may carry plugins (run after authentication, see
//! `plugin::effective`) and may be restricted to the routes and services it
//! subscribed to.
//!
//! Credentials are stored hashed where the scheme allows: a `key-auth` key as its
//! SHA-256 (keys are long random strings, so a fast hash lets the gateway find the
//! consumer in one lookup), a `basic-auth` password with PBKDF2-HMAC-SHA256 and a salt
//! (passwords are guessable, so the hash is slow; the gateway remembers a verified
//! pair, see `docs/decisions.md`). The admin hashes what it receives before storing
//! it ([`Consumer::hash_secrets`]), so the clear value reaches no database, store,
//! snapshot file or log; answers never show a credential's secret or hash
//! ([`Consumer::redacted`]).

use std::num::NonZeroU32;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::plugin::Plugins;
use crate::validate::{check_id, FieldError, ValidationErrors, Validator};

/// Iterations of PBKDF2 for a password: a guess costs an attacker who stole the store
/// about a millisecond, and the gateway verifies a pair once, then remembers it.
pub const PASSWORD_ITERATIONS: u32 = 10_000;

const KEY_HASH_PREFIX: &str = "sha256:";
const PASSWORD_HASH_PREFIX: &str = "pbkdf2-sha256$";

/// The stored form of an API key.
pub fn hash_key(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    format!("{KEY_HASH_PREFIX}{}", hex::encode(digest.as_ref()))
}

/// The stored form of a password: `pbkdf2-sha256$<iterations>$<salt>$<hash>`
/// (base64 without padding).
pub fn hash_password(password: &str) -> String {
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .expect("the system's random source works");
    let mut hash = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PASSWORD_ITERATIONS).expect("non-zero"),
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "{PASSWORD_HASH_PREFIX}{PASSWORD_ITERATIONS}${}${}",
        b64.encode(salt),
        b64.encode(hash)
    )
}

/// Whether `password` is the one `stored` was made from (in constant time).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let Some((iterations, salt, hash)) = split_password_hash(stored) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn split_password_hash(stored: &str) -> Option<(NonZeroU32, Vec<u8>, Vec<u8>)> {
    let rest = stored.strip_prefix(PASSWORD_HASH_PREFIX)?;
    let mut parts = rest.split('$');
    let iterations: u32 = parts.next()?.parse().ok()?;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let salt = b64.decode(parts.next()?).ok()?;
    let hash = b64.decode(parts.next()?).ok()?;
    if parts.next().is_some()
        || !(1_000..=10_000_000).contains(&iterations)
        || salt.len() < 8
        || hash.len() != 32
    {
        return None;
    }
    Some((NonZeroU32::new(iterations)?, salt, hash))
}

/// The key bytes `ring` verifies `algorithm` with, from a PEM SubjectPublicKeyInfo
/// (`-----BEGIN PUBLIC KEY-----`): the RSA public key (PKCS#1), the uncompressed P-256
/// point or the Ed25519 key. `Err` says what is wrong.
pub fn jwt_public_key(algorithm: JwtAlgorithm, pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject as _;
    use x509_parser::prelude::FromDer as _;
    let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "must be a PEM public key (-----BEGIN PUBLIC KEY-----)".to_owned())?;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref())
        .map_err(|_| "is not a SubjectPublicKeyInfo".to_owned())?;
    let oid = spki.algorithm.algorithm.to_id_string();
    let expected = match algorithm {
        JwtAlgorithm::RS256 => "1.2.840.113549.1.1.1",
        JwtAlgorithm::ES256 => "1.2.840.10045.2.1",
        JwtAlgorithm::EdDSA => "1.3.101.112",
        _ => return Err("HS* algorithms take a secret, not a public key".to_owned()),
    };
    if oid != expected {
        return Err(format!(
            "is not a key for {} (its algorithm is {oid})",
            algorithm.as_str()
        ));
    }
    if algorithm == JwtAlgorithm::ES256 {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        if curve.as_deref() != Some("1.2.840.10045.3.1.7") {
            return Err("is not a P-256 key (ES256 needs P-256)".to_owned());
        }
    }
    Ok(spki.subject_public_key.data.to_vec())
}

fn key_hash_ok(hash: &str) -> bool {
    hash.strip_prefix(KEY_HASH_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// One credential of a consumer. `id` names it within the consumer, so a client can
/// send the consumer back without its secrets and keep them (see
/// [`Consumer::keep_secrets_from`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum Credential {
    #[serde(rename = "key-auth")]
    KeyAuth(KeyCredential),
    #[serde(rename = "basic-auth")]
    BasicAuth(BasicCredential),
    #[serde(rename = "jwt-auth")]
    JwtAuth(JwtCredential),
    #[serde(rename = "hmac-auth")]
    HmacAuth(HmacCredential),
}

/// An HMAC signing key of a consumer (`hmac-auth`): requests signed with `secret`
/// name `key_id`. The secret must stay usable: encrypted at rest by the admin, never
/// shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacCredential {
    pub id: String,
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The signature algorithms `jwt-auth` accepts (RFC 7518); `none` is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    ES256,
    EdDSA,
}

impl JwtAlgorithm {
    /// Signed with a shared secret (else verified with a public key).
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// A JWT signing key of a consumer: tokens whose header `kid` (or, as APISIX writes
/// them, whose `key` claim) is `key` must be signed with `algorithm` and verify with
/// `secret` (HS*) or `public_key` (PEM SubjectPublicKeyInfo; RS256, ES256, EdDSA).
/// The secret must stay usable, so it cannot be hashed: the admin stores it encrypted
/// at rest, like certificate keys, and never shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    pub id: String,
    /// The key id tokens name (`kid`).
    pub key: String,
    pub algorithm: JwtAlgorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

impl JwtCredential {
    fn validate(&self, v: &mut Validator) {
        let key_ok = !self.key.is_empty()
            && self.key.len() <= 256
            && self.key.bytes().all(|b| b.is_ascii_graphic());
        if !key_ok {
            v.error("key", "must be 1 to 256 visible ASCII characters");
        }
        if self.algorithm.is_hmac() {
            if self.public_key.is_some() {
                v.error(
                    "public_key",
                    "is for RS256, ES256 and EdDSA; HS* use secret",
                );
            }
            // RFC 7518 §3.2: a key at least as long as the hash output.
            let min = match self.algorithm {
                JwtAlgorithm::HS384 => 48,
                JwtAlgorithm::HS512 => 64,
                _ => 32,
            };
            if let Some(secret) = &self.secret {
                if secret.len() < min || secret.len() > 1024 {
                    v.error(
                        "secret",
                        format!(
                            "must be {min} to 1024 bytes for {}",
                            self.algorithm.as_str()
                        ),
                    );
                }
            }
        } else {
            if self.secret.is_some() {
                v.error(
                    "secret",
                    "is for HS*; RS256, ES256 and EdDSA use public_key",
                );
            }
            match &self.public_key {
                None => v.error("public_key", "is required for this algorithm"),
                Some(pem) => {
                    if let Err(why) = jwt_public_key(self.algorithm, pem) {
                        v.error("public_key", why);
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCredential {
    pub id: String,
    /// The key in clear: accepted on writes, replaced by `key_hash` before storing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub id: String,
    pub username: String,
    /// The password in clear: accepted on writes, replaced by `password_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

impl Credential {
    pub fn id(&self) -> &str {
        match self {
            Self::KeyAuth(c) => &c.id,
            Self::BasicAuth(c) => &c.id,
            Self::JwtAuth(c) => &c.id,
            Self::HmacAuth(c) => &c.id,
        }
    }

    /// A secret that must stay usable (JWT HS*, HMAC): the admin seals it at rest.
    pub fn sealable_secret(&mut self) -> Option<&mut String> {
        match self {
            Self::JwtAuth(c) => c.secret.as_mut(),
            Self::HmacAuth(c) => c.secret.as_mut(),
            Self::KeyAuth(_) | Self::BasicAuth(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::KeyAuth(_) => "key-auth",
            Self::BasicAuth(_) => "basic-auth",
            Self::JwtAuth(_) => "jwt-auth",
            Self::HmacAuth(_) => "hmac-auth",
        }
    }

    /// Whether it holds its secret, in clear or hashed.
    fn has_secret(&self) -> bool {
        match self {
            Self::KeyAuth(c) => c.key.is_some() || c.key_hash.is_some(),
            Self::BasicAuth(c) => c.password.is_some() || c.password_hash.is_some(),
            // A public key is not secret: it is always given.
            Self::JwtAuth(c) => !c.algorithm.is_hmac() || c.secret.is_some(),
            Self::HmacAuth(c) => c.secret.is_some(),
        }
    }

    /// The name of the field a new credential must give.
    fn secret_field(&self) -> &'static str {
        match self {
            Self::KeyAuth(_) => "key",
            Self::BasicAuth(_) => "password",
            Self::JwtAuth(_) | Self::HmacAuth(_) => "secret",
        }
    }

    fn validate(&self, v: &mut Validator) {
        check_id(v, "id", self.id());
        match self {
            Self::KeyAuth(c) => {
                if c.key.is_some() && c.key_hash.is_some() {
                    v.error("key_hash", "give key or key_hash, not both");
                }
                if let Some(key) = &c.key {
                    if !(8..=512).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic())
                    {
                        v.error("key", "must be 8 to 512 visible ASCII characters");
                    }
                }
                if c.key_hash.as_deref().is_some_and(|h| !key_hash_ok(h)) {
                    v.error("key_hash", "must be sha256: and 64 hex digits");
                }
            }
            Self::BasicAuth(c) => {
                let user_ok = !c.username.is_empty()
                    && c.username.len() <= 256
                    && !c.username.contains(':')
                    && !c.username.chars().any(char::is_control);
                if !user_ok {
                    v.error(
                        "username",
                        "must be 1 to 256 characters without ':' or control characters",
                    );
                }
                if c.password.is_some() && c.password_hash.is_some() {
                    v.error("password_hash", "give password or password_hash, not both");
                }
                if let Some(password) = &c.password {
                    if password.is_empty()
                        || password.len() > 256
                        || password.chars().any(char::is_control)
                    {
                        v.error(
                            "password",
                            "must be 1 to 256 characters without control characters",
                        );
                    }
                }
                if c.password_hash
                    .as_deref()
                    .is_some_and(|h| split_password_hash(h).is_none())
                {
                    v.error(
                        "password_hash",
                        "must be pbkdf2-sha256$<iterations>$<salt>$<hash> as Portico writes it",
                    );
                }
            }
            Self::JwtAuth(c) => c.validate(v),
            Self::HmacAuth(c) => {
                let ok = !c.key_id.is_empty()
                    && c.key_id.len() <= 256
                    && c.key_id.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
                if !ok {
                    v.error(
                        "key_id",
                        "must be 1 to 256 visible ASCII characters without quotes",
                    );
                }
                if let Some(secret) = &c.secret {
                    if secret.len() < 32 || secret.len() > 1024 {
                        v.error("secret", "must be 32 to 1024 bytes");
                    }
                }
            }
        }
    }
}

/// The routes and services a consumer may call; with subscriptions, an authenticated
/// request to anything else is refused (403). Without, every route whose
/// authentication accepts the consumer is open to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscriptions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

impl Subscriptions {
    /// Whether a request to `route` (of `service`) is covered.
    pub fn covers(&self, route: &str, service: Option<&str>) -> bool {
        self.routes.iter().any(|r| r == route)
            || service.is_some_and(|s| self.services.iter().any(|x| x == s))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// The consumer's name (APISIX's `username`).
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    #[serde(default, skip_serializing_if = "Plugins::is_empty")]
    pub plugins: Plugins,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Subscriptions>,
}

impl Consumer {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        if self.description.len() > 1024 {
            v.error("description", "must be at most 1024 characters");
        }
        if let Some(group) = &self.group_id {
            check_id(&mut v, "group_id", group);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, credential) in self.credentials.iter().enumerate() {
            v.at(&format!("credentials[{i}]"), |v| {
                credential.validate(v);
                if !seen.insert(credential.id()) {
                    v.error("id", "is used by another credential of this consumer");
                }
            });
        }
        if let Some(subscriptions) = &self.subscriptions {
            for (list, ids) in [
                ("subscriptions.routes", &subscriptions.routes),
                ("subscriptions.services", &subscriptions.services),
            ] {
                for (i, id) in ids.iter().enumerate() {
                    check_id(&mut v, &format!("{list}[{i}]"), id);
                }
            }
        }
        v.at("plugins", |v| self.plugins.validate(v));
        v.finish()
    }

    /// Replaces every clear key and password by its hash.
    pub fn hash_secrets(&mut self) {
        for credential in &mut self.credentials {
            match credential {
                Credential::KeyAuth(c) => {
                    if let Some(key) = c.key.take() {
                        c.key_hash = Some(hash_key(&key));
                    }
                }
                Credential::BasicAuth(c) => {
                    if let Some(password) = c.password.take() {
                        c.password_hash = Some(hash_password(&password));
                    }
                }
                // Must stay usable: encrypted at rest by the admin instead.
                Credential::JwtAuth(_) | Credential::HmacAuth(_) => {}
            }
        }
    }

    /// Gives each credential sent without its secret the secret of the stored
    /// credential with the same id and type (a consumer read back and written again).
    pub fn keep_secrets_from(&mut self, stored: &Consumer) {
        for credential in &mut self.credentials {
            if credential.has_secret() {
                continue;
            }
            let old = stored
                .credentials
                .iter()
                .find(|c| c.id() == credential.id() && c.kind() == credential.kind());
            match (credential, old) {
                (Credential::KeyAuth(new), Some(Credential::KeyAuth(old))) => {
                    new.key_hash = old.key_hash.clone();
                }
                (Credential::BasicAuth(new), Some(Credential::BasicAuth(old))) => {
                    new.password_hash = old.password_hash.clone();
                }
                (Credential::JwtAuth(new), Some(Credential::JwtAuth(old)))
                    if new.algorithm == old.algorithm =>
                {
                    new.secret = old.secret.clone();
                }
                (Credential::HmacAuth(new), Some(Credential::HmacAuth(old))) => {
                    new.secret = old.secret.clone();
                }
                _ => {}
            }
        }
    }

    /// Credentials without their secret: a new credential must give it.
    pub fn missing_secrets(&self) -> Vec<FieldError> {
        self.credentials
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.has_secret())
            .map(|(i, c)| FieldError {
                field: format!("credentials[{i}].{}", c.secret_field()),
                message: "is required for a new credential".to_owned(),
            })
            .collect()
    }

    /// What identifies the consumer to the gateway, each with its field: two
    /// consumers of an instance must never share one.
    pub fn identities(&self) -> Vec<(String, String)> {
        self.credentials
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Credential::KeyAuth(k) => k
                    .key_hash
                    .as_ref()
                    .map(|h| (format!("credentials[{i}].key"), format!("key-auth:{h}"))),
                Credential::BasicAuth(b) => Some((
                    format!("credentials[{i}].username"),
                    format!("basic-auth:{}", b.username),
                )),
                Credential::JwtAuth(j) => Some((
                    format!("credentials[{i}].key"),
                    format!("jwt-auth:{}", j.key),
                )),
                Credential::HmacAuth(h) => Some((
                    format!("credentials[{i}].key_id"),
                    format!("hmac-auth:{}", h.key_id),
                )),
            })
            .collect()
    }

    /// The form an API may show: no secret, no hash.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        for credential in &mut shown.credentials {
            match credential {
                Credential::KeyAuth(c) => {
                    c.key = None;
                    c.key_hash = None;
                }
                Credential::BasicAuth(c) => {
                    c.password = None;
                    c.password_hash = None;
                }
                Credential::JwtAuth(c) => c.secret = None,
                Credential::HmacAuth(c) => c.secret = None,
            }
        }
        shown
    }
}

/// Consumers sharing plugins (APISIX's consumer group): a consumer's own plugins
/// override its group's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroup {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Plugins::is_empty")]
    pub plugins: Plugins,
}

impl ConsumerGroup {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        if self.description.len() > 1024 {
            v.error("description", "must be at most 1024 characters");
        }
        v.at("plugins", |v| self.plugins.validate(v));
        v.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(json: &str) -> Consumer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn secrets_are_hashed_kept_and_never_shown() {
        let mut c = consumer(
            r#"{"id":"alice","credentials":[
                {"type":"key-auth","id":"k1","key":"alice-key-0123"},
                {"type":"basic-auth","id":"b1","username":"alice","password":"s3cret"}]}"#,
        );
        assert!(c.validate().is_ok());
        c.hash_secrets();
        let stored = serde_json::to_string(&c).unwrap();
        assert!(!stored.contains("alice-key-0123") && !stored.contains("s3cret"));
        let Credential::KeyAuth(k) = &c.credentials[0] else {
            panic!()
        };
        assert_eq!(
            k.key_hash.as_deref(),
            Some(hash_key("alice-key-0123").as_str())
        );
        let Credential::BasicAuth(b) = &c.credentials[1] else {
            panic!()
        };
        let hash = b.password_hash.as_deref().unwrap();
        assert!(verify_password("s3cret", hash));
        assert!(!verify_password("s3cre", hash));
        assert!(!verify_password("s3cret", "pbkdf2-sha256$1$AAAA$AAAA"));
        // Two hashes of one password differ (salted).
        assert_ne!(hash_password("s3cret"), hash_password("s3cret"));

        // Shown: no secret, no hash; sent back as shown: secrets kept.
        let shown = c.redacted();
        let text = serde_json::to_string(&shown).unwrap();
        assert!(!text.contains("hash") && !text.contains("key\""), "{text}");
        let mut again = shown.clone();
        assert_eq!(again.missing_secrets().len(), 2);
        again.keep_secrets_from(&c);
        assert!(again.missing_secrets().is_empty());
        assert_eq!(again, c);
        // A new credential without its secret is named.
        let fresh = consumer(r#"{"id":"bob","credentials":[{"type":"key-auth","id":"k"}]}"#);
        assert_eq!(fresh.missing_secrets()[0].field, "credentials[0].key");
        assert_eq!(c.identities()[1].1, "basic-auth:alice");
    }

    #[test]
    fn credentials_are_checked_field_by_field() {
        let fields = |json: &str| -> Vec<String> {
            consumer(json)
                .validate()
                .err()
                .map(|e| e.0.into_iter().map(|e| e.field).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            fields(r#"{"id":"a","credentials":[{"type":"key-auth","id":"k","key":"short"}]}"#),
            ["credentials[0].key"]
        );
        assert_eq!(
            fields(r#"{"id":"a","credentials":[{"type":"key-auth","id":"k","key_hash":"md5:x"}]}"#),
            ["credentials[0].key_hash"]
        );
        assert_eq!(
            fields(
                r#"{"id":"a","credentials":[{"type":"basic-auth","id":"b","username":"a:b","password":"p"},
                                            {"type":"key-auth","id":"b","key":"0123456789"}]}"#
            ),
            ["credentials[0].username", "credentials[1].id"]
        );
        assert_eq!(
            fields(r#"{"id":"a","subscriptions":{"routes":["r/1"]},"plugins":{"nope":{}}}"#),
            ["subscriptions.routes[0]", "plugins.nope"]
        );
        assert!(serde_json::from_str::<Consumer>(
            r#"{"id":"a","credentials":[{"type":"key-auth","id":"k","secret":"x"}]}"#
        )
        .is_err());
        let sub = Subscriptions {
            routes: vec!["r1".into()],
            services: vec!["s1".into()],
        };
        assert!(sub.covers("r1", None) && sub.covers("r9", Some("s1")) && !sub.covers("r9", None));
    }

    #[test]
    fn jwt_credentials_match_their_algorithm() {
        const EC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4mnZ36HMrE81XbVsvzkvBg+3Lriq\n9j+k6SFacrW5K8WpGDAned7/4Mnela+oBsrVwxiAHx6YSvrJN1dFQiHyFA==\n-----END PUBLIC KEY-----\n";
        let fields = |credential: &str| -> Vec<String> {
            consumer(&format!(r#"{{"id":"a","credentials":[{credential}]}}"#))
                .validate()
                .err()
                .map(|e| e.0.into_iter().map(|e| e.field).collect())
                .unwrap_or_default()
        };
        let ec = serde_json::to_string(EC_KEY).unwrap();
        assert!(fields(&format!(
            r#"{{"type":"jwt-auth","id":"j","key":"k","algorithm":"ES256","public_key":{ec}}}"#
        ))
        .is_empty());
        // An EC key for RS256, no key, a short HS secret, a public key for HS.
        for (credential, want) in [
            (
                format!(
                    r#"{{"type":"jwt-auth","id":"j","key":"k","algorithm":"RS256","public_key":{ec}}}"#
                ),
                "credentials[0].public_key",
            ),
            (
                r#"{"type":"jwt-auth","id":"j","key":"k","algorithm":"EdDSA"}"#.to_owned(),
                "credentials[0].public_key",
            ),
            (
                r#"{"type":"jwt-auth","id":"j","key":"k","algorithm":"HS256","secret":"short"}"#
                    .to_owned(),
                "credentials[0].secret",
            ),
            (
                format!(
                    r#"{{"type":"jwt-auth","id":"j","key":"k","algorithm":"HS512","secret":"{}","public_key":{ec}}}"#,
                    "s".repeat(64)
                ),
                "credentials[0].public_key",
            ),
        ] {
            assert_eq!(fields(&credential), [want], "{credential}");
        }
        assert!(serde_json::from_str::<Consumer>(
            r#"{"id":"a","credentials":[{"type":"jwt-auth","id":"j","key":"k","algorithm":"none"}]}"#
        )
        .is_err());
        // The secret is kept like a hash, and never shown.
        let mut c = consumer(&format!(
            r#"{{"id":"a","credentials":[{{"type":"jwt-auth","id":"j","key":"k","algorithm":"HS256","secret":"{}"}}]}}"#,
            "s".repeat(32)
        ));
        let shown = c.redacted();
        assert!(!serde_json::to_string(&shown).unwrap().contains("sss"));
        let mut back = shown.clone();
        assert_eq!(back.missing_secrets()[0].field, "credentials[0].secret");
        back.keep_secrets_from(&c);
        c.hash_secrets();
        assert_eq!(back, c);
    }
}
