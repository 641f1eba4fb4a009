//! `gzip` and `brotli`: response compression negotiated with the client's
//! `Accept-Encoding`. The plugins want the response body, so the fast paths hand their
//! routes to Pingora's path, whose compression module does the work; the access phase
//! only records the levels ([`PhaseCtx::compression`]) for Pingora's adapter to set.

use crate::core::phase::{Compress, PhaseCtx, Plugin, RequestView};
use crate::core::refusal::Refusal;

#[derive(Debug)]
pub struct Compression {
    name: &'static str,
    algorithm: Compress,
    level: u32,
}

impl Compression {
    pub fn gzip(config: &model::plugin::Gzip) -> Result<Self, String> {
        Ok(Self {
            name: model::plugin::GZIP.name,
            algorithm: Compress::Gzip,
            level: config.0.comp_level,
        })
    }

    pub fn brotli(config: &model::plugin::Brotli) -> Result<Self, String> {
        Ok(Self {
            name: model::plugin::BROTLI.name,
            algorithm: Compress::Brotli,
            level: config.0.comp_level,
        })
    }
}

impl Plugin for Compression {
    fn name(&self) -> &'static str {
        self.name
    }

    fn wants_response_body(&self) -> bool {
        true
    }

    fn access(&self, _: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        ctx.compression.push((self.algorithm, self.level));
        Ok(())
    }
}
