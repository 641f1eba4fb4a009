//! `response-rewrite`: the status, headers and body the client gets instead of the
//! upstream's. Status and headers are response-head edits, applied by every engine;
//! a new body makes the route one the fast paths hand to Pingora's path, whose body
//! filter sends the replacement ([`PhaseCtx::replace_body`]) with a matching
//! `Content-Length`.

use bytes::Bytes;
use http::HeaderValue;

use super::header_changes::CompiledChanges;
use crate::core::phase::{HeaderEdits, PhaseCtx, Plugin};

#[derive(Debug)]
pub struct ResponseRewrite {
    status: Option<u16>,
    headers: CompiledChanges,
    body: Option<Bytes>,
}

impl ResponseRewrite {
    pub fn compile(config: &model::plugin::ResponseRewrite) -> Result<Self, String> {
        Ok(Self {
            status: config.status_code,
            headers: CompiledChanges::compile(&config.headers)?,
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
        self.headers.apply(edits);
        if let Some(body) = &self.body {
            edits.remove(http::header::TRANSFER_ENCODING);
            edits.set(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            ctx.replace_body = Some(body.clone());
        }
    }
}
