//! `fault-injection`: for resilience tests, aborts a share of the matching requests
//! with a status and body, or delays them, or both (the delay first). Which requests
//! are hit is drawn per request; `match_headers` narrows it to requests carrying those
//! header values.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use rand::Rng as _;

use crate::core::phase::{PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::{Answer, Refusal};

#[derive(Debug)]
pub struct FaultInjection {
    abort: Option<(Arc<Answer>, u8)>,
    delay: Option<(Duration, u8)>,
    match_headers: Vec<(HeaderName, String)>,
}

impl FaultInjection {
    pub fn compile(config: &model::plugin::FaultInjection) -> Result<Self, String> {
        Ok(Self {
            abort: config.abort.as_ref().map(|a| {
                (
                    Arc::new(Answer {
                        status: a.http_status,
                        headers: vec![(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; charset=utf-8"),
                        )],
                        body: Bytes::from(a.body.clone()),
                    }),
                    a.percentage,
                )
            }),
            delay: config
                .delay
                .as_ref()
                .map(|d| (Duration::from_millis(d.duration_ms), d.percentage)),
            match_headers: config
                .match_headers
                .iter()
                .map(|(n, v)| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map(|n| (n, v.clone()))
                        .map_err(|_| format!("match_headers.{n}: not a header name"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        self.match_headers.iter().all(|(name, value)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
        })
    }
}

/// Whether this request is in the `percentage` share.
fn drawn(percentage: u8) -> bool {
    percentage >= 100 || (percentage > 0 && rand::rng().random_range(0..100) < percentage)
}

impl Plugin for FaultInjection {
    fn name(&self) -> &'static str {
        model::plugin::FAULT_INJECTION.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named(self.match_headers.iter().map(|(name, _)| name.clone()))
    }

    fn is_async(&self) -> bool {
        true
    }

    fn access_async<'a>(
        &'a self,
        req: &'a RequestView<'a>,
        _ctx: &'a mut PhaseCtx,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        let hit = self.matches(req);
        let delay = self
            .delay
            .filter(|(_, share)| hit && drawn(*share))
            .map(|(d, _)| d);
        let abort = self
            .abort
            .as_ref()
            .filter(|(_, share)| hit && drawn(*share))
            .map(|(a, _)| a.clone());
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            match abort {
                Some(answer) => Err(Refusal::Answer(answer)),
                None => Ok(()),
            }
        })
    }
}
