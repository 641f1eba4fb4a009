//! `request-size-limit`: a per-route cap on the request body. A `Content-Length` over
//! it is refused with 413 before the body is read (the same answer as the node's own
//! limit); a streamed (chunked) body is held to it by the engines
//! ([`PhaseCtx::max_body`]).

use crate::core::phase::{PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;

#[derive(Debug)]
pub struct RequestSizeLimit {
    max: u64,
}

impl RequestSizeLimit {
    pub fn compile(config: &model::plugin::RequestSizeLimit) -> Result<Self, String> {
        Ok(Self {
            max: config.max_body_bytes,
        })
    }
}

impl Plugin for RequestSizeLimit {
    fn name(&self) -> &'static str {
        model::plugin::REQUEST_SIZE_LIMIT.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named([http::header::CONTENT_LENGTH])
    }

    fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        // The core admitted the head: at most one valid Content-Length.
        let announced = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.max) {
            return Err(Refusal::BodyTooLarge);
        }
        ctx.max_body = Some(ctx.max_body.map_or(self.max, |m| m.min(self.max)));
        Ok(())
    }
}
