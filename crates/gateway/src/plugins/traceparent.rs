//! `traceparent`: W3C Trace Context propagation. A valid incoming `traceparent`
//! (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero) keeps
//! its trace id and flags; the gateway's span gets a new id, sent upstream as the
//! parent. Anything else — absent, malformed, version `ff` — starts a new trace. The
//! trace id is kept in the request context (access logs carry it).

use http::{HeaderName, HeaderValue};
use rand::Rng as _;

use crate::core::phase::{HeaderEdits, PhaseCtx, Plugin, ReadsHeaders, RequestView};

/// The ctx key of the request's trace id.
pub(crate) const TRACE_ID: &str = "trace-id";

#[derive(Debug)]
pub struct Traceparent {
    sampled: bool,
}

impl Traceparent {
    pub fn compile(config: &model::plugin::Traceparent) -> Result<Self, String> {
        Ok(Self {
            sampled: config.sampled,
        })
    }
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `(trace id, flags)` of a valid `traceparent` value.
pub(crate) fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may add some.
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let valid = lower_hex(trace, 32)
        && lower_hex(parent, 16)
        && lower_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, flags))
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    loop {
        let id: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
        if id.iter().any(|b| *b != 0) {
            return hex::encode(id);
        }
    }
}

impl Plugin for Traceparent {
    fn name(&self) -> &'static str {
        model::plugin::TRACEPARENT.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named([HeaderName::from_static("traceparent")])
    }

    fn upstream_request(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx, edits: &mut HeaderEdits) {
        let incoming = req
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        let (trace, flags) = match incoming {
            Some((trace, flags)) => (trace.to_owned(), flags.to_owned()),
            None => (
                random_hex(16),
                if self.sampled { "01" } else { "00" }.to_owned(),
            ),
        };
        let value = format!("00-{trace}-{}-{flags}", random_hex(8));
        if let Ok(value) = HeaderValue::from_str(&value) {
            edits.set(HeaderName::from_static("traceparent"), value);
        }
        if incoming.is_none() {
            // tracestate belongs to the trace it came with.
            edits.remove(HeaderName::from_static("tracestate"));
        }
        if let Ok(trace) = HeaderValue::from_str(&trace) {
            ctx.set(TRACE_ID, trace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_traceparents_are_continued() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let ok = format!("00-{trace}-00f067aa0ba902b7-01");
        assert_eq!(parse(&ok), Some((trace, "01")));
        // A later version may carry more fields.
        assert!(parse(&format!("01-{trace}-00f067aa0ba902b7-01-extra")).is_some());
        for bad in [
            format!("00-{trace}-00f067aa0ba902b7-01-extra"),
            format!("ff-{trace}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{trace}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", trace.to_uppercase()),
            format!("00-{trace}-00f067aa0ba902b7"),
            "garbage".to_owned(),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
