//! `request-id` (APISIX's): the request keeps the id its client sent in the
//! configured header, or gets a new UUID v4; the upstream receives it, and the client
//! gets it back with the response unless `include_in_response` is false.

use http::{HeaderName, HeaderValue};
use rand::Rng;

use crate::core::phase::{HeaderEdits, PhaseCtx, Plugin, ReadsHeaders, RequestView};

#[derive(Debug)]
pub struct RequestId {
    header: HeaderName,
    include_in_response: bool,
}

const KEY: &str = "request-id";

impl RequestId {
    pub fn compile(config: &model::plugin::RequestId) -> Result<Self, String> {
        Ok(Self {
            header: HeaderName::from_bytes(config.header_name.as_bytes())
                .map_err(|_| "plugins.request-id.header_name: not a header name".to_owned())?,
            include_in_response: config.include_in_response,
        })
    }
}

/// A random (version 4) UUID in its usual text form.
fn uuid_v4() -> HeaderValue {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    HeaderValue::from_str(&text).expect("hex and dashes")
}

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        model::plugin::REQUEST_ID.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named([self.header.clone()])
    }

    fn upstream_request(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx, edits: &mut HeaderEdits) {
        let id = match req.headers.get(&self.header) {
            Some(sent) if !sent.is_empty() => sent.clone(),
            _ => uuid_v4(),
        };
        ctx.set(KEY, id.clone());
        edits.set(self.header.clone(), id);
    }

    fn response_head(&self, _status: u16, ctx: &mut PhaseCtx, edits: &mut HeaderEdits) {
        if !self.include_in_response {
            return;
        }
        if let Some(id) = ctx.get(KEY) {
            edits.set(self.header.clone(), id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_or_made_and_sent_both_ways() {
        let plugin = RequestId::compile(&model::plugin::RequestId {
            header_name: "X-Request-Id".into(),
            include_in_response: true,
        })
        .unwrap();
        fn view(headers: &http::HeaderMap) -> RequestView<'_> {
            RequestView {
                method: "GET",
                path: "/",
                query: None,
                host: "",
                headers,
                client_ip: None,
                tls: false,
                scope: &crate::core::phase::NO_SCOPE,
            }
        }
        let mut headers = http::HeaderMap::new();
        let mut ctx = PhaseCtx::default();
        let mut edits = HeaderEdits::default();
        plugin.upstream_request(&view(&headers), &mut ctx, &mut edits);
        let made = ctx.get(KEY).unwrap().to_str().unwrap().to_owned();
        assert_eq!(made.len(), 36);
        assert_eq!(&made[14..15], "4");
        let mut back = HeaderEdits::default();
        plugin.response_head(200, &mut ctx, &mut back);
        let mut map = http::HeaderMap::new();
        back.apply(&mut map);
        assert_eq!(map["x-request-id"], made.as_str());

        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let mut ctx = PhaseCtx::default();
        plugin.upstream_request(&view(&headers), &mut ctx, &mut HeaderEdits::default());
        assert_eq!(ctx.get(KEY).unwrap(), "abc");
        assert_ne!(uuid_v4(), uuid_v4());
    }
}
