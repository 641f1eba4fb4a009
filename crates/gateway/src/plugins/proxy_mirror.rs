//! `proxy-mirror`: a copy of a share of the requests goes to another host,
//! fire-and-forget. The access phase draws the sample and notes the copy
//! ([`PhaseCtx::mirror`]); Pingora's adapter (such routes are served there) keeps the
//! body (up to [`MAX_MIRRORED_BODY`]) and sends the copy from a task of its own when
//! the request ends, so the client's request never waits for the mirror or fails with
//! it. At most [`MAX_IN_FLIGHT`] copies are under way per process; beyond that copies
//! are skipped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use rand::Rng as _;

use crate::core::phase::{Mirror, PhaseCtx, Plugin, RequestView};
use crate::core::refusal::Refusal;

/// Larger bodies are not mirrored.
pub const MAX_MIRRORED_BODY: usize = 1 << 20;
/// Copies under way at most.
pub const MAX_IN_FLIGHT: usize = 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
});

#[derive(Debug)]
pub struct ProxyMirror {
    host: String,
    ratio: f64,
}

impl ProxyMirror {
    pub fn compile(config: &model::plugin::ProxyMirror) -> Result<Self, String> {
        Ok(Self {
            host: config.host.clone(),
            ratio: config.sample_ratio,
        })
    }
}

impl Plugin for ProxyMirror {
    fn name(&self) -> &'static str {
        model::plugin::PROXY_MIRROR.name
    }

    fn needs_pingora(&self) -> bool {
        true
    }

    fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        let sampled =
            self.ratio >= 1.0 || (self.ratio > 0.0 && rand::rng().random_bool(self.ratio));
        if sampled {
            let target = match req.query {
                Some(query) => format!("{}{}?{query}", self.host, req.path),
                None => format!("{}{}", self.host, req.path),
            };
            ctx.mirror = Some(Box::new(Mirror {
                url: target,
                method: req.method.to_owned(),
                body: Vec::new(),
                too_big: false,
            }));
        }
        Ok(())
    }
}

/// Sends `mirror` with `headers` from a task of its own (when the runtime and the
/// in-flight bound allow).
pub(crate) fn send(mirror: Mirror, headers: http::HeaderMap) {
    if mirror.too_big {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    runtime.spawn(async move {
        let method =
            reqwest::Method::from_bytes(mirror.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let sent = CLIENT
            .request(method, &mirror.url)
            .headers(headers)
            .body(mirror.body)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "a mirrored request was not delivered");
        }
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    });
}
