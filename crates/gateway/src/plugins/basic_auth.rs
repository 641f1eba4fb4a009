//! `basic-auth`: the consumer is the one whose Basic credential (RFC 7617) the request
//! carries in `Authorization`. Passwords are checked against their PBKDF2 hash
//! (`consumers`); with `hide_credentials` (the default) `Authorization` is removed
//! before the request goes upstream.

use base64::Engine as _;
use http::HeaderValue;

use crate::consumers::{BasicFailure, Consumers};
use crate::core::phase::{AuthOutcome, HeaderEdits, PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;

#[derive(Debug)]
pub struct BasicAuth {
    challenge: HeaderValue,
    hide: bool,
}

impl BasicAuth {
    pub fn compile(config: &model::plugin::BasicAuth) -> Result<Self, String> {
        Ok(Self {
            challenge: HeaderValue::from_str(&format!("Basic realm=\"{}\"", config.realm))
                .map_err(|_| "realm: not usable in a header".to_owned())?,
            hide: config.hide_credentials,
        })
    }

    fn unauthorized(&self, message: &'static str) -> Refusal {
        super::unauthorized(self.challenge.clone(), message)
    }
}

/// `(username, password)` of an `Authorization: Basic …` value; `None` when it is
/// not one (another scheme, bad base64, no colon, not UTF-8).
pub(crate) fn credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        model::plugin::BASIC_AUTH.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named([http::header::AUTHORIZATION])
    }

    fn authenticate(&self, req: &RequestView<'_>, consumers: &Consumers) -> AuthOutcome {
        let Some(value) = req.headers.get(http::header::AUTHORIZATION) else {
            return AuthOutcome::Missing(self.unauthorized("Missing authorization in request"));
        };
        let Some((user, password)) = credentials(value.as_bytes()) else {
            // Another scheme (a bearer token for another plugin) is not a wrong one.
            return AuthOutcome::Missing(self.unauthorized("Missing authorization in request"));
        };
        match consumers.by_basic(&user, &password) {
            Ok(consumer) => AuthOutcome::Found(consumer.clone()),
            Err(BasicFailure::UnknownUser | BasicFailure::WrongPassword) => {
                AuthOutcome::Invalid(self.unauthorized("Invalid user authorization"))
            }
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
    fn authorization_values_are_read_strictly() {
        let ok = |v: &str| credentials(v.as_bytes());
        assert_eq!(
            ok("Basic YWxpY2U6czNjcmV0"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            ok("basic   YWxpY2U6YTpi "),
            Some(("alice".into(), "a:b".into()))
        );
        for bad in [
            "Bearer YWxpY2U6czNjcmV0",
            "Basic !!!",
            "Basic YWxpY2U=",
            "Basic",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
    }
}
