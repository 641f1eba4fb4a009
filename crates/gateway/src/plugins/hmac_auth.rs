//! `hmac-auth`: the consumer is the one whose HMAC secret signed the request
//! (draft-cavage HTTP Signatures, the scheme APISIX's hmac-auth reads):
//!
//! ```text
//! Authorization: Signature keyId="k1",algorithm="hmac-sha256",
//!                headers="(request-target) date",signature="<base64>"
//! signing string: one line per listed header, "\n"-joined:
//!   (request-target): <lowercase method> <normalised path>[?<query>]
//!   <lowercase header name>: <value>
//! ```
//!
//! Refused (401, each saying why): another scheme or a malformed value; an algorithm
//! other than hmac-sha256/384/512; a signature not covering `(request-target)`,
//! `date` and the configured headers; an unknown key; a `Date` further than
//! `clock_skew` from the gateway's clock; a wrong signature (compared in constant
//! time); a signature seen before within the skew window (replay; remembered per node
//! and place).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use http::HeaderValue;

use crate::consumers::Consumers;
use crate::core::phase::{AuthOutcome, HeaderEdits, PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;

use crate::HashMap;

/// Signatures remembered at most (a flood of valid ones beyond this starts over).
const REMEMBERED: usize = 100_000;

#[derive(Debug)]
pub struct HmacAuth {
    skew: Duration,
    required: Vec<String>,
    hide: bool,
    /// Signatures used, until when they could still be accepted.
    seen: Mutex<HashMap<[u8; 32], Instant>>,
}

/// The parameters of a `Signature` authorization.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Params<'a> {
    pub key_id: &'a str,
    pub algorithm: &'a str,
    pub headers: Vec<&'a str>,
    pub signature: &'a str,
}

/// Reads `Signature keyId="…",…`; `None` when it is not one (another scheme).
pub(crate) fn params(value: &str) -> Option<Params<'_>> {
    let rest = value.trim().strip_prefix("Signature ")?;
    let mut out = Params::default();
    for pair in rest.split(',') {
        let (name, quoted) = pair.trim().split_once('=')?;
        let value = quoted.strip_prefix('"')?.strip_suffix('"')?;
        match name {
            "keyId" => out.key_id = value,
            "algorithm" => out.algorithm = value,
            "headers" => out.headers = value.split(' ').filter(|h| !h.is_empty()).collect(),
            "signature" => out.signature = value,
            _ => {}
        }
    }
    (!out.key_id.is_empty() && !out.signature.is_empty()).then_some(out)
}

fn unauthorized(message: &'static str) -> Refusal {
    super::unauthorized(
        HeaderValue::from_static("Signature realm=\"portico\",headers=\"(request-target) date\""),
        message,
    )
}

impl HmacAuth {
    pub fn compile(config: &model::plugin::HmacAuth) -> Result<Self, String> {
        Ok(Self {
            skew: Duration::from_secs(config.clock_skew),
            required: config
                .signed_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            hide: config.hide_credentials,
            seen: Mutex::default(),
        })
    }

    /// The signing string of `req` over `headers`; `None` when a listed header is
    /// missing.
    fn signing_string(req: &RequestView<'_>, headers: &[&str]) -> Option<String> {
        let mut lines = Vec::with_capacity(headers.len());
        for name in headers {
            let name = name.to_ascii_lowercase();
            if name == "(request-target)" {
                let target = match req.query {
                    Some(query) => format!("{}?{query}", req.path),
                    None => req.path.to_owned(),
                };
                lines.push(format!(
                    "(request-target): {} {target}",
                    req.method.to_ascii_lowercase()
                ));
            } else {
                let values: Vec<&str> = req
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.to_str().ok())
                    .collect::<Option<_>>()?;
                if values.is_empty() {
                    return None;
                }
                lines.push(format!("{name}: {}", values.join(", ")));
            }
        }
        Some(lines.join("\n"))
    }

    pub(crate) fn check(
        &self,
        req: &RequestView<'_>,
        consumers: &Consumers,
        now: SystemTime,
    ) -> Result<std::sync::Arc<crate::consumers::ConsumerEntry>, &'static str> {
        let value = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("Missing HMAC signature in request")?;
        let params = params(value).ok_or("Missing HMAC signature in request")?;
        let algorithm = match params.algorithm {
            "hmac-sha256" => ring::hmac::HMAC_SHA256,
            "hmac-sha384" => ring::hmac::HMAC_SHA384,
            "hmac-sha512" => ring::hmac::HMAC_SHA512,
            _ => return Err("HMAC algorithm not accepted"),
        };
        let covered = |name: &str| params.headers.iter().any(|h| h.eq_ignore_ascii_case(name));
        if !covered("(request-target)")
            || !covered("date")
            || !self.required.iter().all(|h| covered(h))
        {
            return Err("HMAC signature does not cover the required headers");
        }
        let (secret, consumer) = consumers
            .hmac_key(params.key_id)
            .ok_or("HMAC key unknown")?;
        let date = req
            .headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .ok_or("HMAC signature needs a valid Date header")?;
        let skew = match now.duration_since(date) {
            Ok(behind) => behind,
            Err(ahead) => ahead.duration(),
        };
        if skew > self.skew {
            return Err("HMAC Date is outside the allowed clock skew");
        }
        let signing = Self::signing_string(req, &params.headers)
            .ok_or("HMAC signature names a header the request lacks")?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(params.signature)
            .map_err(|_| "HMAC signature invalid")?;
        let key = ring::hmac::Key::new(algorithm, secret.bytes());
        ring::hmac::verify(&key, signing.as_bytes(), &signature)
            .map_err(|_| "HMAC signature invalid")?;
        // Replays: a valid signature counts once while its Date is acceptable.
        let mut fingerprint = [0u8; 32];
        fingerprint
            .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &signature).as_ref());
        let mono = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBERED {
            seen.retain(|_, until| *until > mono);
            if seen.len() >= REMEMBERED {
                seen.clear();
            }
        }
        match seen.get(&fingerprint) {
            Some(until) if *until > mono => return Err("HMAC signature already used"),
            _ => {}
        }
        seen.insert(fingerprint, mono + self.skew * 2);
        Ok(consumer.clone())
    }
}

impl Plugin for HmacAuth {
    fn name(&self) -> &'static str {
        model::plugin::HMAC_AUTH.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::All
    }

    fn authenticate(&self, req: &RequestView<'_>, consumers: &Consumers) -> AuthOutcome {
        let present = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(params)
            .is_some();
        match self.check(req, consumers, SystemTime::now()) {
            Ok(consumer) => AuthOutcome::Found(consumer),
            Err(why) if present => AuthOutcome::Invalid(unauthorized(why)),
            Err(why) => AuthOutcome::Missing(unauthorized(why)),
        }
    }

    fn upstream_request(&self, _: &RequestView<'_>, _: &mut PhaseCtx, edits: &mut HeaderEdits) {
        if self.hide {
            edits.remove(http::header::AUTHORIZATION);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_parameters_are_read() {
        let p = params(r#"Signature keyId="k1",algorithm="hmac-sha256",headers="(request-target) date",signature="c2ln""#).unwrap();
        assert_eq!(p.key_id, "k1");
        assert_eq!(p.algorithm, "hmac-sha256");
        assert_eq!(p.headers, ["(request-target)", "date"]);
        assert_eq!(p.signature, "c2ln");
        assert!(params("Basic abc").is_none());
        assert!(params(r#"Signature keyId=k1,signature="x""#).is_none());
        assert!(params(r#"Signature algorithm="hmac-sha256""#).is_none());
    }
}
