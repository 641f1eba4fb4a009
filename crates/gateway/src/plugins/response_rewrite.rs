//! `response-rewrite`: the status, headers and body the client gets instead of the
//! upstream's. Status and headers are response-head edits, applied by every engine;
//! a new body makes the route one the fast paths hand to Pingora's path, whose body
//! filter sends the replacement ([`PhaseCtx::replace_body`]) with a matching
//! `Content-Length`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::core::phase::{HeaderEdits, PhaseCtx, Plugin};

#[derive(Debug)]
pub struct ResponseRewrite {
    status: Option<u16>,
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
}

fn pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    Ok((
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name}: not a header name"))?,
        HeaderValue::from_str(value).map_err(|_| format!("{name}: not a header value"))?,
    ))
}

impl ResponseRewrite {
    pub fn compile(config: &model::plugin::ResponseRewrite) -> Result<Self, String> {
        let changes = &config.headers;
        Ok(Self {
            status: config.status_code,
            remove: changes
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("{n}: not a header name"))
                })
                .collect::<Result<_, _>>()?,
            set: changes
                .set
                .iter()
                .map(|(n, v)| pair(n, v))
                .collect::<Result<_, _>>()?,
            add: changes
                .add
                .iter()
                .map(|(n, v)| pair(n, v))
                .collect::<Result<_, _>>()?,
            body: config.body.clone().map(Bytes::from),
        })
    }
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        model::plugin::RESPONSE_REWRITE.name
    }

    fn wants_response_body(&self) -> bool {
        self.body.is_some()
    }

    fn response_head(&self, _status: u16, ctx: &mut PhaseCtx, edits: &mut HeaderEdits) {
        if let Some(status) = self.status {
            edits.set_status(status);
        }
        for name in &self.remove {
            edits.remove(name.clone());
        }
        for (name, value) in &self.set {
            edits.set(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            edits.add(name.clone(), value.clone());
        }
        if let Some(body) = &self.body {
            edits.remove(http::header::TRANSFER_ENCODING);
            edits.set(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            ctx.replace_body = Some(body.clone());
        }
    }
}
