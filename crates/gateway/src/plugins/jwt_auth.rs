//! `jwt-auth`: the consumer is the one whose key signed the request's JSON Web Token
//! (RFC 7519, JWS compact serialisation, RFC 7515). The token comes from the header
//! (`Bearer <token>` or bare), else the query argument, else the cookie.
//!
//! Checks, in order, each a 401 naming what failed (never the token or a key): three
//! base64url parts without padding, at most 8 KiB; a JSON header whose `alg` is the
//! credential's own (so `none`, and HS256 signed with an RSA public key, are refused
//! before any signature is computed); the key found by `kid` (or the payload's `key`
//! claim); the signature; then the claims: `exp` (required unless `require_exp` is
//! false) and `nbf` as numbers, with `leeway`; `aud` and `iss` against the configured
//! lists.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderName;
use serde_json::Value;

use crate::consumers::{ConsumerEntry, Consumers};
use crate::core::phase::{AuthOutcome, HeaderEdits, PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;
use crate::plugins::key_auth::hide_argument;

/// Larger tokens are refused before decoding.
const MAX_TOKEN: usize = 8 * 1024;

#[derive(Debug)]
pub struct JwtAuth {
    header: HeaderName,
    query: String,
    cookie: String,
    hide: bool,
    leeway: i64,
    require_exp: bool,
    audience: Vec<String>,
    issuer: Vec<String>,
}

/// Why a token does not identify a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NoExpiry,
    NotYetValid,
    Audience,
    Issuer,
}

impl JwtError {
    fn message(self) -> &'static str {
        match self {
            Self::Malformed => "JWT malformed",
            Self::Algorithm => "JWT algorithm not accepted",
            Self::UnknownKey => "JWT key unknown",
            Self::Signature => "JWT signature invalid",
            Self::Expired => "JWT expired",
            Self::NoExpiry => "JWT has no exp claim",
            Self::NotYetValid => "JWT not yet valid",
            Self::Audience => "JWT audience not accepted",
            Self::Issuer => "JWT issuer not accepted",
        }
    }
}

impl JwtAuth {
    pub fn compile(config: &model::plugin::JwtAuth) -> Result<Self, String> {
        Ok(Self {
            header: HeaderName::from_bytes(config.header.as_bytes())
                .map_err(|_| "header: not a header name".to_owned())?,
            query: config.query.clone(),
            cookie: config.cookie.clone(),
            hide: config.hide_credentials,
            leeway: config.leeway as i64,
            require_exp: config.require_exp,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
        })
    }

    /// The token: the header (without `Bearer `), else the query argument, else the
    /// cookie.
    fn token<'a>(&self, req: &'a RequestView<'_>) -> Option<Cow<'a, str>> {
        if let Some(value) = req.headers.get(&self.header) {
            let value = value.to_str().ok()?.trim();
            let token = match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
                _ => value,
            };
            return Some(Cow::Borrowed(token));
        }
        if let Some(query) = req.query {
            let found = form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == self.query.as_str())
                .map(|(_, value)| value);
            if found.is_some() {
                return found;
            }
        }
        req.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == self.cookie).then_some(Cow::Borrowed(value))
            })
    }

    /// The consumer `token` identifies at `now` (Unix seconds).
    pub(crate) fn verify(
        &self,
        token: &str,
        consumers: &Consumers,
        now: i64,
    ) -> Result<std::sync::Arc<ConsumerEntry>, JwtError> {
        if token.len() > MAX_TOKEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: Value = b64
            .decode(head)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(JwtError::Malformed)?;
        let claims: Value = b64
            .decode(body)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or(JwtError::Malformed)?;
        let signature = b64.decode(signature).map_err(|_| JwtError::Malformed)?;
        if !header.is_object() || !claims.is_object() {
            return Err(JwtError::Malformed);
        }
        let alg = header["alg"].as_str().ok_or(JwtError::Algorithm)?;
        // `kid` first; APISIX's tokens carry the key in the payload.
        let kid = header["kid"]
            .as_str()
            .or_else(|| claims["key"].as_str())
            .ok_or(JwtError::UnknownKey)?;
        let (key, consumer) = consumers.jwt_key(kid).ok_or(JwtError::UnknownKey)?;
        // The credential decides the algorithm, never the token.
        if alg != key.algorithm.as_str() {
            return Err(JwtError::Algorithm);
        }
        let signed = &token[..head.len() + 1 + body.len()];
        if !key.verifies(signed.as_bytes(), &signature) {
            return Err(JwtError::Signature);
        }
        let number = |claim: &str| -> Result<Option<i64>, JwtError> {
            match &claims[claim] {
                Value::Null => Ok(None),
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().map(|f| f as i64))
                    .map(Some)
                    .ok_or(JwtError::Malformed),
                _ => Err(JwtError::Malformed),
            }
        };
        match number("exp")? {
            None if self.require_exp => return Err(JwtError::NoExpiry),
            Some(exp) if now >= exp.saturating_add(self.leeway) => return Err(JwtError::Expired),
            _ => {}
        }
        if let Some(nbf) = number("nbf")? {
            if now.saturating_add(self.leeway) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if !self.audience.is_empty() {
            let accepted = match &claims["aud"] {
                Value::String(aud) => self.audience.contains(aud),
                Value::Array(auds) => auds
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audience.iter().any(|x| x == a)),
                _ => false,
            };
            if !accepted {
                return Err(JwtError::Audience);
            }
        }
        if !self.issuer.is_empty() {
            let accepted = claims["iss"]
                .as_str()
                .is_some_and(|iss| self.issuer.iter().any(|x| x == iss));
            if !accepted {
                return Err(JwtError::Issuer);
            }
        }
        Ok(consumer.clone())
    }
}

fn unauthorized(message: &'static str) -> Refusal {
    super::unauthorized(
        http::HeaderValue::from_static("Bearer realm=\"portico\""),
        message,
    )
}

impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        model::plugin::JWT_AUTH.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named([self.header.clone(), http::header::COOKIE])
    }

    fn authenticate(&self, req: &RequestView<'_>, consumers: &Consumers) -> AuthOutcome {
        let Some(token) = self.token(req) else {
            return AuthOutcome::Missing(unauthorized("Missing JWT token in request"));
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match self.verify(&token, consumers, now) {
            Ok(consumer) => AuthOutcome::Found(consumer),
            Err(e) => AuthOutcome::Invalid(unauthorized(e.message())),
        }
    }

    fn upstream_request(&self, req: &RequestView<'_>, _: &mut PhaseCtx, edits: &mut HeaderEdits) {
        if !self.hide {
            return;
        }
        if req.headers.contains_key(&self.header) {
            edits.remove(self.header.clone());
        } else {
            hide_argument(req, edits, &self.query);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    use serde_json::json;

    use super::*;

    const HS_SECRET: &str = "an-hs256-secret-of-32-bytes-min!";
    const RSA_KEY: &str = include_str!("../../tests/fixtures/jwt_rsa.key");
    const RSA_PUB: &str = include_str!("../../tests/fixtures/jwt_rsa.pub");
    const NOW: i64 = 1_800_000_000;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A PEM SubjectPublicKeyInfo around a raw key: the DER prefix of the algorithm
    /// (RFC 5480 for P-256, RFC 8410 for Ed25519), then the key.
    fn spki_pem(prefix: &str, key: &[u8]) -> String {
        let mut der = hex::decode(prefix).unwrap();
        der.extend_from_slice(key);
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
    }

    enum Signer {
        Hmac(&'static str),
        Rsa,
        Ec(ring::signature::EcdsaKeyPair),
        Ed(ring::signature::Ed25519KeyPair),
    }

    fn sign(header: &Value, claims: &Value, signer: &Signer) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let signature = match signer {
            Signer::Hmac(secret) => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
                ring::hmac::sign(&key, signed.as_bytes()).as_ref().to_vec()
            }
            Signer::Rsa => {
                use rustls_pki_types::pem::PemObject as _;
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(RSA_KEY.as_bytes())
                    .unwrap();
                let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    signed.as_bytes(),
                    &mut out,
                )
                .unwrap();
                out
            }
            Signer::Ec(pair) => pair
                .sign(&rng, signed.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", b64(&signature))
    }

    #[test]
    fn the_attack_table() {
        let rng = ring::rand::SystemRandom::new();
        let p256 = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec_doc = ring::signature::EcdsaKeyPair::generate_pkcs8(p256, &rng).unwrap();
        let ec = ring::signature::EcdsaKeyPair::from_pkcs8(p256, ec_doc.as_ref(), &rng).unwrap();
        let ec_pub = spki_pem(
            "3059301306072a8648ce3d020106082a8648ce3d030107034200",
            ec.public_key().as_ref(),
        );
        let ed_doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = ring::signature::Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).unwrap();
        let ed_pub = spki_pem("302a300506032b6570032100", ed.public_key().as_ref());

        let consumer: model::consumer::Consumer = serde_json::from_value(json!({
            "id": "alice", "credentials": [
                {"type": "jwt-auth", "id": "hs", "key": "hs", "algorithm": "HS256", "secret": HS_SECRET},
                {"type": "jwt-auth", "id": "rs", "key": "rs", "algorithm": "RS256", "public_key": RSA_PUB},
                {"type": "jwt-auth", "id": "es", "key": "es", "algorithm": "ES256", "public_key": ec_pub},
                {"type": "jwt-auth", "id": "ed", "key": "ed", "algorithm": "EdDSA", "public_key": ed_pub}
            ]}))
        .unwrap();
        consumer.validate().unwrap();
        let mut builder = Consumers::builder();
        let entry = Arc::new(ConsumerEntry {
            id: "alice".into(),
            group: None,
            subscriptions: None,
            plugins: Vec::new(),
        });
        assert!(builder.add(&consumer, entry).is_empty());
        let consumers = builder.build();
        let plugin =
            |config: Value| JwtAuth::compile(&serde_json::from_value(config).unwrap()).unwrap();
        let strict = plugin(json!({"audience": ["shop"], "issuer": ["https://idp"]}));
        let lenient = plugin(json!({"leeway": 30, "require_exp": false}));

        let head = |alg: &str, kid: &str| json!({"alg": alg, "typ": "JWT", "kid": kid});
        let good = json!({"exp": NOW + 60, "aud": ["other", "shop"], "iss": "https://idp"});
        let with = |changes: Value| {
            let mut claims = good.clone();
            for (k, v) in changes.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            claims
        };
        let hs = Signer::Hmac(HS_SECRET);
        let valid_hs = sign(&head("HS256", "hs"), &good, &hs);
        let (body_start, body_end) = {
            let first = valid_hs.find('.').unwrap();
            (first + 1, valid_hs.rfind('.').unwrap())
        };
        let tampered = format!(
            "{}{}{}",
            &valid_hs[..body_start],
            b64(with(json!({"exp": NOW + 999_999})).to_string().as_bytes()),
            &valid_hs[body_end..]
        );
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "kid": "hs"}).to_string().as_bytes()),
            b64(good.to_string().as_bytes())
        );
        let cases: Vec<(&str, String, &JwtAuth, Result<(), JwtError>)> = vec![
            ("valid HS256", valid_hs.clone(), &strict, Ok(())),
            (
                "valid RS256",
                sign(&head("RS256", "rs"), &good, &Signer::Rsa),
                &strict,
                Ok(()),
            ),
            (
                "valid ES256",
                sign(&head("ES256", "es"), &good, &Signer::Ec(ec)),
                &strict,
                Ok(()),
            ),
            (
                "valid EdDSA",
                sign(&head("EdDSA", "ed"), &good, &Signer::Ed(ed)),
                &strict,
                Ok(()),
            ),
            ("alg none", none, &strict, Err(JwtError::Algorithm)),
            (
                "HS256 signed with the RSA public key",
                sign(&head("HS256", "rs"), &good, &Signer::Hmac(RSA_PUB)),
                &strict,
                Err(JwtError::Algorithm),
            ),
            (
                "RS256 header on an HS key",
                sign(&head("RS256", "hs"), &good, &hs),
                &strict,
                Err(JwtError::Algorithm),
            ),
            (
                "expired",
                sign(&head("HS256", "hs"), &with(json!({"exp": NOW - 1})), &hs),
                &strict,
                Err(JwtError::Expired),
            ),
            (
                "expired within the leeway",
                sign(&head("HS256", "hs"), &with(json!({"exp": NOW - 10})), &hs),
                &lenient,
                Ok(()),
            ),
            (
                "not yet valid",
                sign(&head("HS256", "hs"), &with(json!({"nbf": NOW + 60})), &hs),
                &strict,
                Err(JwtError::NotYetValid),
            ),
            (
                "no exp",
                sign(&head("HS256", "hs"), &with(json!({"exp": null})), &hs),
                &strict,
                Err(JwtError::NoExpiry),
            ),
            (
                "no exp where not required",
                sign(&head("HS256", "hs"), &with(json!({"exp": null})), &hs),
                &lenient,
                Ok(()),
            ),
            (
                "exp as a string",
                sign(&head("HS256", "hs"), &with(json!({"exp": "never"})), &hs),
                &strict,
                Err(JwtError::Malformed),
            ),
            (
                "wrong key",
                sign(
                    &head("HS256", "hs"),
                    &good,
                    &Signer::Hmac("another-secret-of-32-bytes-long!"),
                ),
                &strict,
                Err(JwtError::Signature),
            ),
            (
                "tampered payload",
                tampered,
                &strict,
                Err(JwtError::Signature),
            ),
            (
                "unknown kid",
                sign(&head("HS256", "nobody"), &good, &hs),
                &strict,
                Err(JwtError::UnknownKey),
            ),
            (
                "wrong audience",
                sign(
                    &head("HS256", "hs"),
                    &with(json!({"aud": "elsewhere"})),
                    &hs,
                ),
                &strict,
                Err(JwtError::Audience),
            ),
            (
                "wrong issuer",
                sign(
                    &head("HS256", "hs"),
                    &with(json!({"iss": "https://evil"})),
                    &hs,
                ),
                &strict,
                Err(JwtError::Issuer),
            ),
            (
                "two parts",
                "a.b".to_owned(),
                &strict,
                Err(JwtError::Malformed),
            ),
            (
                "padded base64",
                format!("{valid_hs}="),
                &strict,
                Err(JwtError::Malformed),
            ),
            (
                "huge",
                "a".repeat(MAX_TOKEN + 1),
                &strict,
                Err(JwtError::Malformed),
            ),
        ];
        for (what, token, plugin, want) in cases {
            let got = plugin.verify(&token, &consumers, NOW).map(|c| {
                assert_eq!(&*c.id, "alice");
            });
            assert_eq!(got, want, "{what}");
        }
    }
}
