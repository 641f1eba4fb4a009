//! Encryption at rest of the secrets the admin keeps in its database: certificate
//! private keys and per-cluster agent tokens.
//!
//! Each secret is sealed with AES-256-GCM (`ring::aead`) under the operator's data key,
//! with a fresh random 96-bit nonce, and stored as `enc:v1:<key id>:<base64(nonce ‖
//! ciphertext ‖ tag)>`. The key id (8 hex digits of a SHA-256 of the key) says which key
//! to open it with, so rotation can keep old keys for reading. The row a secret belongs
//! to (`certificate/<cluster>/<instance>/<id>`, `agent_token/<cluster>`) is the
//! additional authenticated data: a sealed value copied into another row does not open.
//!
//! Opening never returns garbage: a wrong key or an altered value fails GCM's tag
//! check and is reported as such. Values written in clear by earlier versions are
//! recognised by the missing prefix; the admin seals them at start (see
//! `db::sealing`).

use std::path::Path;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "enc:v1:";

/// One 256-bit data key, named by its id. `Debug` shows the id only.
#[derive(Clone)]
pub struct DataKey {
    id: String,
    bytes: [u8; 32],
}

impl DataKey {
    /// A key given as base64 of 32 bytes (`head -c 32 /dev/urandom | base64`). The
    /// error never quotes the text.
    pub fn from_base64(text: &str) -> anyhow::Result<Self> {
        let decoded = STANDARD.decode(text.trim()).map_err(|_| {
            anyhow::anyhow!(
                "a data key must be 32 random bytes in base64 (head -c 32 /dev/urandom | base64); this is not base64"
            )
        })?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|d: Vec<u8>| {
            anyhow::anyhow!(
                "a data key must be 32 random bytes in base64; this one decodes to {} bytes",
                d.len()
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// A key read from a file holding its base64 (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the data key file {}", path.display()))?;
        Self::from_base64(&text).with_context(|| format!("data key file {}", path.display()))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random generator works");
        Self::from_bytes(bytes)
    }

    /// The key as base64, for writing a key file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// The key's id, as stored with every value sealed under it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A secret derived from this key for `purpose` (64 hex digits); `portico demo`
    /// derives its agent token this way so it needs one file only.
    pub fn derive(&self, purpose: &str) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"portico-derived-secret\0");
        context.update(purpose.as_bytes());
        context.update(b"\0");
        context.update(&self.bytes);
        hex::encode(context.finish().as_ref())
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"portico-data-key-id\0");
        context.update(&bytes);
        let id = hex::encode(&context.finish().as_ref()[..4]);
        Self { id, bytes }
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.bytes).expect("32 bytes is an AES-256 key"),
        )
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish()
    }
}

/// Why a secret cannot be sealed or opened. Messages name keys by id, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SecretError {
    #[error(
        "the admin has no data key to encrypt it with: start the admin with --data-key-file \
         (PORTICO_DATA_KEY_FILE) or PORTICO_DATA_KEY"
    )]
    NoKey,
    #[error(
        "it is encrypted with data key {0}, which this admin was not given: pass that key \
         with --data-key-file, or with --data-key-old-file next to a new primary key"
    )]
    UnknownKey(String),
    #[error(
        "it does not decrypt with data key {0}: the key is not the one it was written \
         with, or the stored value was altered"
    )]
    Undecryptable(String),
    #[error("the stored value is not in the encrypted format enc:v1:<key id>:<base64>")]
    Malformed,
}

/// The primary key (seals everything new) and older keys still accepted for opening.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keyring {
    primary: Option<DataKey>,
    old: Vec<DataKey>,
}

impl Keyring {
    pub(crate) fn new(primary: Option<DataKey>, old: Vec<DataKey>) -> Self {
        Self { primary, old }
    }

    pub(crate) fn primary_id(&self) -> Option<&str> {
        self.primary.as_ref().map(DataKey::id)
    }

    /// Whether `stored` is a sealed value (rather than one written in clear).
    pub(crate) fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Whether `stored` is sealed under the primary key.
    pub(crate) fn is_current(&self, stored: &str) -> bool {
        match (key_id(stored), self.primary_id()) {
            (Some(id), Some(primary)) => id == primary,
            _ => false,
        }
    }

    /// Seals `plain` under the primary key, bound to `context` (the row it goes in).
    pub(crate) fn seal(&self, context: &str, plain: &str) -> Result<String, SecretError> {
        let key = self.primary.as_ref().ok_or(SecretError::NoKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random generator works");
        let mut sealed = plain.as_bytes().to_vec();
        key.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any input of this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}:{}", key.id, STANDARD.encode(out)))
    }

    /// Opens a sealed value; `context` must be the one it was sealed with.
    pub(crate) fn open(&self, context: &str, stored: &str) -> Result<String, SecretError> {
        let id = key_id(stored).ok_or(SecretError::Malformed)?;
        let key = self
            .primary
            .iter()
            .chain(&self.old)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
        let payload = &stored[PREFIX.len() + id.len() + 1..];
        let mut bytes = STANDARD
            .decode(payload)
            .map_err(|_| SecretError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SecretError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = bytes[..NONCE_LEN].try_into().expect("length checked");
        let plain = key
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| SecretError::Undecryptable(id.to_owned()))?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Undecryptable(id.to_owned()))
    }
}

/// The key id of a sealed value.
fn key_id(stored: &str) -> Option<&str> {
    let rest = stored.strip_prefix(PREFIX)?;
    let (id, _) = rest.split_once(':')?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_their_key_and_context_only() {
        let k1 = DataKey::generate();
        let k2 = DataKey::generate();
        let ring1 = Keyring::new(Some(k1.clone()), vec![]);
        let sealed = ring1.seal("row/a", "secret value").unwrap();
        assert!(Keyring::is_sealed(&sealed));
        assert!(!sealed.contains("secret"));
        assert!(sealed.starts_with(&format!("enc:v1:{}:", k1.id())));
        assert_eq!(ring1.open("row/a", &sealed).unwrap(), "secret value");
        // Two seals of one value differ (random nonces).
        assert_ne!(ring1.seal("row/a", "secret value").unwrap(), sealed);
        // Another row's context does not open it.
        assert_eq!(
            ring1.open("row/b", &sealed),
            Err(SecretError::Undecryptable(k1.id().to_owned()))
        );
        // A key that is not there is named by id.
        let ring2 = Keyring::new(Some(k2.clone()), vec![]);
        assert_eq!(
            ring2.open("row/a", &sealed),
            Err(SecretError::UnknownKey(k1.id().to_owned()))
        );
        // Rotation: the old key still opens, and the value is not current.
        let rotated = Keyring::new(Some(k2.clone()), vec![k1.clone()]);
        assert_eq!(rotated.open("row/a", &sealed).unwrap(), "secret value");
        assert!(!rotated.is_current(&sealed));
        assert!(rotated.is_current(&rotated.seal("row/a", "x").unwrap()));
        // A wrong key under the same id (or an altered value) fails, never garbage.
        let impostor = DataKey {
            id: k1.id().to_owned(),
            ..k2.clone()
        };
        assert_eq!(
            Keyring::new(Some(impostor), vec![]).open("row/a", &sealed),
            Err(SecretError::Undecryptable(k1.id().to_owned()))
        );
        let mut altered = sealed.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(ring1.open("row/a", &altered).is_err());
        assert_eq!(
            ring1.open("row/a", "enc:v1:zz"),
            Err(SecretError::Malformed)
        );
        // Without a primary, nothing is sealed.
        assert_eq!(
            Keyring::default().seal("row/a", "x"),
            Err(SecretError::NoKey)
        );
    }

    #[test]
    fn keys_parse_from_base64_without_quoting_it() {
        let key = DataKey::generate();
        let again = DataKey::from_base64(&format!("  {}\n", key.to_base64())).unwrap();
        assert_eq!(again.id(), key.id());
        assert_eq!(again.bytes, key.bytes);
        let short = DataKey::from_base64("c2hvcnQ=").unwrap_err().to_string();
        assert!(
            short.contains("5 bytes") && !short.contains("c2hvcnQ"),
            "{short}"
        );
        let junk = DataKey::from_base64("not base64 at all!")
            .unwrap_err()
            .to_string();
        assert!(!junk.contains("at all"), "{junk}");
        assert!(!format!("{key:?}").contains(&key.to_base64()));
        assert_ne!(key.derive("a"), key.derive("b"));
        assert_eq!(key.derive("a"), again.derive("a"));
    }
}
