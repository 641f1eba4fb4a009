//! The instance's consumers compiled for the authentication plugins: one lookup from a
//! credential to its consumer, never a scan. Built with the rest of the config
//! (`runtime`) and replaced with it; a request keeps the table it started with.
//!
//! Keys are found by their SHA-256 (what the store holds); a key found once is
//! remembered by a keyed 128-bit SipHash (a secret of the table's own, made at random
//! when it is built), so later requests with it cost that hash instead of a SHA-256:
//! the memory never holds a key, only the fingerprint, and starts empty with each new
//! table, so a removed key is never served from it. A Basic password is
//! checked against its PBKDF2 hash once per node: a verified (username, password)
//! pair is remembered by its SHA-256 so later requests cost one hash, not ten
//! thousand (the cache is bounded and starts empty with each new table, so a changed
//! password is never served from it).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use model::consumer::Subscriptions;

use crate::core::phase::Entry;

use crate::HashMap;

/// Verified Basic pairs (and found keys) remembered per table; beyond this the memory
/// starts over.
const VERIFIED_PAIRS: usize = 10_000;

/// One consumer as requests see it.
#[derive(Debug)]
pub struct ConsumerEntry {
    pub id: Arc<str>,
    pub group: Option<String>,
    pub subscriptions: Option<Subscriptions>,
    /// The consumer's plugins (its group's under its own), compiled; empty when none.
    pub plugins: Vec<Entry>,
}

/// Why a Basic credential did not name a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicFailure {
    UnknownUser,
    WrongPassword,
}

/// The lookup tables.
#[derive(Debug, Default)]
pub struct Consumers {
    /// SHA-256 of a key → its consumer.
    keys: HashMap<[u8; 32], Arc<ConsumerEntry>>,
    /// Basic username → (password hash, consumer).
    basic: HashMap<String, (String, Arc<ConsumerEntry>)>,
    /// JWT key id → how its tokens verify, and the consumer.
    jwt: HashMap<String, (JwtKey, Arc<ConsumerEntry>)>,
    /// HMAC key id → its secret, and the consumer.
    hmac: HashMap<String, (HmacSecret, Arc<ConsumerEntry>)>,
    verified: Mutex<HashSet<[u8; 32]>>,
    /// Keys found before, by fingerprint.
    known_keys: KeyMemo,
    len: usize,
}

/// Keys found valid, by their fingerprint: SipHash-1-3 (128 bits) under a random
/// secret, so no one who lacks the secret can make another input share a
/// fingerprint. Bounded: beyond [`VERIFIED_PAIRS`] it starts over.
struct KeyMemo {
    secret: [u8; 16],
    found: std::sync::RwLock<HashMap<u128, Arc<ConsumerEntry>>>,
}

impl Default for KeyMemo {
    fn default() -> Self {
        Self {
            secret: rand::random(),
            found: Default::default(),
        }
    }
}

impl std::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMemo").finish_non_exhaustive()
    }
}

impl KeyMemo {
    fn fingerprint(&self, key: &[u8]) -> u128 {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut hasher = siphasher::sip128::SipHasher13::new_with_key(&self.secret);
        hasher.write(key);
        hasher.finish128().as_u128()
    }

    fn get(&self, fingerprint: u128) -> Option<Arc<ConsumerEntry>> {
        let found = self.found.read().unwrap_or_else(|e| e.into_inner());
        found.get(&fingerprint).cloned()
    }

    fn put(&self, fingerprint: u128, consumer: &Arc<ConsumerEntry>) {
        let mut found = self.found.write().unwrap_or_else(|e| e.into_inner());
        if found.len() >= VERIFIED_PAIRS {
            found.clear();
        }
        found.insert(fingerprint, consumer.clone());
    }
}

impl Consumers {
    /// The JWT key named `kid`, and its consumer.
    pub fn jwt_key(&self, kid: &str) -> Option<&(JwtKey, Arc<ConsumerEntry>)> {
        self.jwt.get(kid)
    }

    /// The HMAC secret named `key_id`, and its consumer.
    pub fn hmac_key(&self, key_id: &str) -> Option<&(HmacSecret, Arc<ConsumerEntry>)> {
        self.hmac.get(key_id)
    }

    pub fn builder() -> ConsumersBuilder {
        ConsumersBuilder::default()
    }

    /// Number of consumers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The consumer whose key this is.
    pub fn by_key(&self, key: &str) -> Option<Arc<ConsumerEntry>> {
        let fingerprint = self.known_keys.fingerprint(key.as_bytes());
        if let Some(consumer) = self.known_keys.get(fingerprint) {
            return Some(consumer);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        let consumer = self.keys.get(&hash)?;
        self.known_keys.put(fingerprint, consumer);
        Some(consumer.clone())
    }

    /// The consumer of a Basic credential.
    pub fn by_basic(
        &self,
        username: &str,
        password: &str,
    ) -> Result<&Arc<ConsumerEntry>, BasicFailure> {
        let (hash, consumer) = self.basic.get(username).ok_or(BasicFailure::UnknownUser)?;
        let mut pair = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [username, "\0", password, "\0", hash.as_str()] {
            pair.update(part.as_bytes());
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(pair.finish().as_ref());
        let known = self
            .verified
            .lock()
            .map(|v| v.contains(&fingerprint))
            .unwrap_or(false);
        if known {
            return Ok(consumer);
        }
        if !model::consumer::verify_password(password, hash) {
            return Err(BasicFailure::WrongPassword);
        }
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_PAIRS {
                verified.clear();
            }
            verified.insert(fingerprint);
        }
        Ok(consumer)
    }
}

/// Collects consumers; a credential two consumers claim stays with the first added
/// (the builder is fed in id order) and is reported.
#[derive(Debug, Default)]
pub struct ConsumersBuilder {
    table: Consumers,
}

impl ConsumersBuilder {
    /// Adds a consumer with its credentials; returns the problems found (credentials
    /// without a hash, or claimed by an earlier consumer), each with its field.
    pub fn add(
        &mut self,
        consumer: &model::consumer::Consumer,
        entry: Arc<ConsumerEntry>,
    ) -> Vec<String> {
        use model::consumer::Credential;
        let mut problems = Vec::new();
        for (i, credential) in consumer.credentials.iter().enumerate() {
            let taken = match credential {
                Credential::KeyAuth(c) => match &c.key_hash {
                    None => {
                        problems.push(format!("credentials[{i}]: no key_hash; not served"));
                        continue;
                    }
                    Some(hash) => {
                        let Some(digest) = key_digest(hash) else {
                            problems
                                .push(format!("credentials[{i}]: key_hash unreadable; not served"));
                            continue;
                        };
                        match self.table.keys.get(&digest) {
                            Some(owner) => Some(owner.id.clone()),
                            None => {
                                self.table.keys.insert(digest, entry.clone());
                                None
                            }
                        }
                    }
                },
                Credential::BasicAuth(c) => match &c.password_hash {
                    None => {
                        problems.push(format!("credentials[{i}]: no password_hash; not served"));
                        continue;
                    }
                    Some(hash) => match self.table.basic.get(&c.username) {
                        Some((_, owner)) => Some(owner.id.clone()),
                        None => {
                            self.table
                                .basic
                                .insert(c.username.clone(), (hash.clone(), entry.clone()));
                            None
                        }
                    },
                },
                Credential::JwtAuth(c) => match JwtKey::new(c) {
                    Err(why) => {
                        problems.push(format!("credentials[{i}]: {why}; not served"));
                        continue;
                    }
                    Ok(key) => match self.table.jwt.get(&c.key) {
                        Some((_, owner)) => Some(owner.id.clone()),
                        None => {
                            self.table.jwt.insert(c.key.clone(), (key, entry.clone()));
                            None
                        }
                    },
                },
                Credential::HmacAuth(c) => match &c.secret {
                    None => {
                        problems.push(format!("credentials[{i}]: no secret; not served"));
                        continue;
                    }
                    Some(secret) => match self.table.hmac.get(&c.key_id) {
                        Some((_, owner)) => Some(owner.id.clone()),
                        None => {
                            self.table.hmac.insert(
                                c.key_id.clone(),
                                (HmacSecret(secret.as_bytes().to_vec()), entry.clone()),
                            );
                            None
                        }
                    },
                },
            };
            if let Some(owner) = taken {
                problems.push(format!(
                    "credentials[{i}]: already a credential of consumer {owner:?}; not served"
                ));
            }
        }
        self.table.len += 1;
        problems
    }

    pub fn build(self) -> Consumers {
        self.table
    }
}

/// The digest of a stored `sha256:<hex>` key hash.
fn key_digest(hash: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hash.strip_prefix("sha256:")?).ok()?;
    bytes.try_into().ok()
}

/// How the tokens of one JWT credential verify: its algorithm (the only one a token
/// may name) and its key, prepared once.
pub struct JwtKey {
    pub algorithm: model::consumer::JwtAlgorithm,
    verifier: Verifier,
}

enum Verifier {
    Hmac(ring::hmac::Key),
    Public(ring::signature::UnparsedPublicKey<Vec<u8>>),
}

impl std::fmt::Debug for JwtKey {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    pub fn new(credential: &model::consumer::JwtCredential) -> Result<Self, String> {
        use model::consumer::JwtAlgorithm::*;
        use ring::signature as sig;
        let algorithm = credential.algorithm;
        let verifier = if algorithm.is_hmac() {
            let secret = credential.secret.as_deref().ok_or("no secret")?;
            let hmac = match algorithm {
                HS384 => ring::hmac::HMAC_SHA384,
                HS512 => ring::hmac::HMAC_SHA512,
                _ => ring::hmac::HMAC_SHA256,
            };
            Verifier::Hmac(ring::hmac::Key::new(hmac, secret.as_bytes()))
        } else {
            let pem = credential.public_key.as_deref().ok_or("no public_key")?;
            let der = model::consumer::jwt_public_key(algorithm, pem)
                .map_err(|e| format!("public_key {e}"))?;
            let scheme: &'static dyn sig::VerificationAlgorithm = match algorithm {
                RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                _ => &sig::ED25519,
            };
            Verifier::Public(sig::UnparsedPublicKey::new(scheme, der))
        };
        Ok(Self {
            algorithm,
            verifier,
        })
    }

    /// Whether `signature` signs `message` (constant time for HMAC).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Hmac(key) => ring::hmac::verify(key, message, signature).is_ok(),
            Verifier::Public(key) => key.verify(message, signature).is_ok(),
        }
    }
}

/// An HMAC credential's secret (never shown by `Debug`).
pub struct HmacSecret(Vec<u8>);

impl HmacSecret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSecret(..)")
    }
}
