//! `key-auth`: the consumer is the one whose API key the request carries, in a header
//! or else in a query argument (APISIX's and Kong's plugin). The key is looked up by
//! its hash (`consumers`); with `hide_credentials` (the default) the header and the
//! query argument are removed before the request goes upstream.

use http::{HeaderName, HeaderValue};

use crate::consumers::Consumers;
use crate::core::phase::{AuthOutcome, HeaderEdits, PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;

#[derive(Debug)]
pub struct KeyAuth {
    header: HeaderName,
    query: String,
    hide: bool,
}

impl KeyAuth {
    pub fn compile(config: &model::plugin::KeyAuth) -> Result<Self, String> {
        Ok(Self {
            header: HeaderName::from_bytes(config.header.as_bytes())
                .map_err(|_| "header: not a header name".to_owned())?,
            query: config.query.clone(),
            hide: config.hide_credentials,
        })
    }

    /// The key: the header's first value, else the query argument (decoded).
    fn key<'a>(&self, req: &'a RequestView<'_>) -> Option<std::borrow::Cow<'a, str>> {
        if let Some(value) = req.headers.get(&self.header) {
            return value.to_str().ok().map(std::borrow::Cow::Borrowed);
        }
        let query = req.query?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == self.query.as_str())
            .map(|(_, value)| value)
    }
}

/// A 401 with a Key challenge (Kong's answer).
fn unauthorized(message: &'static str) -> Refusal {
    super::unauthorized(HeaderValue::from_static("Key realm=\"portico\""), message)
}

/// `query` without the arguments named `name` (the others kept byte for byte);
/// `None` when nothing is left.
pub(crate) fn without_argument(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let raw = pair.split('=').next().unwrap_or(pair);
            let decoded: String = form_urlencoded::parse(raw.as_bytes())
                .map(|(n, _)| n.into_owned())
                .next()
                .unwrap_or_default();
            !pair.is_empty() && decoded != name
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Removes the query argument `name` (a credential) from the query sent upstream.
pub(crate) fn hide_argument(req: &RequestView<'_>, edits: &mut HeaderEdits, name: &str) {
    let Some(query) = edits.query(req.query) else {
        return;
    };
    if form_urlencoded::parse(query.as_bytes()).any(|(n, _)| n == name) {
        let rest = without_argument(query, name);
        edits.set_query(rest);
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        model::plugin::KEY_AUTH.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named([self.header.clone()])
    }

    fn authenticate(&self, req: &RequestView<'_>, consumers: &Consumers) -> AuthOutcome {
        let Some(key) = self.key(req) else {
            return AuthOutcome::Missing(unauthorized("Missing API key in request"));
        };
        match consumers.by_key(&key) {
            Some(consumer) => AuthOutcome::Found(consumer),
            None => AuthOutcome::Invalid(unauthorized("Invalid API key in request")),
        }
    }

    fn upstream_request(&self, req: &RequestView<'_>, _: &mut PhaseCtx, edits: &mut HeaderEdits) {
        if !self.hide {
            return;
        }
        edits.remove(self.header.clone());
        hide_argument(req, edits, &self.query);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_argument_is_removed() {
        let cases = [
            ("apikey=k", None),
            ("a=1&apikey=k&b=2", Some("a=1&b=2")),
            ("api%6Bey=k&b=%20", Some("b=%20")),
            ("apikey2=k&apikey", Some("apikey2=k")),
            ("a=1&&apikey=k", Some("a=1")),
        ];
        for (query, want) in cases {
            assert_eq!(
                without_argument(query, "apikey").as_deref(),
                want,
                "{query}"
            );
        }
    }
}
