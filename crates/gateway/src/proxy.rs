//! The request spine on Pingora.
//!
//! ```text
//! new_ctx            count the request in flight (shutdown waits for it)
//! request_filter     load ONE runtime-config snapshot → match route → 404 / 405 here
//! upstream_peer      pick a node of the route's pool → peer with the pool's timeouts
//! upstream_request   append the client to X-Forwarded-For; Host passes unchanged
//! fail_to_proxy      any failure → Refusal → JSON error (the one error → status mapping)
//! ```

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::sync::Notify;

use crate::balancer::UpstreamPool;
use crate::router::Match;
use crate::runtime::RuntimeConfig;

/// How long an idle pooled connection to a node is kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Proxy {
    /// Swapped by the config loop; each request loads it once.
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    pub in_flight: Arc<InFlight>,
}

/// Per-request state.
pub struct RequestCtx {
    /// The pool of the matched route, taken from the request's config snapshot so a
    /// reload in the middle of the request does not change where it goes.
    upstream: Option<Arc<UpstreamPool>>,
    /// Held for the request's whole life (Pingora drops the context last).
    _in_flight: InFlightGuard,
}

/// Why a request gets an error response instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoRoute,
    MethodNotAllowed(Vec<&'static str>),
    /// The client sent something that could not be read as a request.
    BadRequest,
    RequestTimeout,
    /// The upstream could not be reached, or failed mid-response.
    BadGateway,
    GatewayTimeout,
    Internal,
    /// A status raised explicitly as `ErrorType::HTTPStatus`.
    Status(u16),
}

impl Refusal {
    /// The one place an error becomes a status: Pingora's error classification (which
    /// side failed, what failed) → refusal. `None` when the client is gone.
    pub fn from_error(e: &Error) -> Option<Refusal> {
        use ErrorType::*;
        if let HTTPStatus(status) = e.etype() {
            return Some(Refusal::Status(*status));
        }
        Some(match (e.esource(), e.etype()) {
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
            (ErrorSource::Downstream, ReadTimedout) => Refusal::RequestTimeout,
            (ErrorSource::Downstream, _) => Refusal::BadRequest,
            (
                ErrorSource::Upstream,
                ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
            ) => Refusal::GatewayTimeout,
            (ErrorSource::Upstream, _) => Refusal::BadGateway,
            (ErrorSource::Internal | ErrorSource::Unset, _) => Refusal::Internal,
        })
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoRoute => 404,
            Refusal::MethodNotAllowed(_) => 405,
            Refusal::BadRequest => 400,
            Refusal::RequestTimeout => 408,
            Refusal::BadGateway => 502,
            Refusal::GatewayTimeout => 504,
            Refusal::Internal => 500,
            Refusal::Status(status) => *status,
        }
    }

    /// `(message, machine code)` of the JSON body.
    fn describe(&self) -> (&'static str, &'static str) {
        match self {
            Refusal::NoRoute => ("no route matches the request", "route_not_found"),
            Refusal::MethodNotAllowed(_) => ("method not allowed", "method_not_allowed"),
            Refusal::BadRequest => ("the request could not be read", "bad_request"),
            Refusal::RequestTimeout => ("the request was not received in time", "request_timeout"),
            Refusal::BadGateway => ("the upstream could not be reached", "bad_gateway"),
            Refusal::GatewayTimeout => ("the upstream did not answer in time", "gateway_timeout"),
            Refusal::Internal => ("internal gateway error", "internal_error"),
            Refusal::Status(_) => ("the request was refused", "refused"),
        }
    }

    /// The complete error response.
    pub fn response(&self) -> Result<(ResponseHeader, Bytes)> {
        let (message, code) = self.describe();
        let body = Bytes::from(serde_json::json!({ "error": message, "code": code }).to_string());
        let mut header = ResponseHeader::build(self.status(), Some(4))?;
        header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        if let Refusal::MethodNotAllowed(allow) = self {
            header.insert_header(http::header::ALLOW, allow.join(", "))?;
        }
        Ok((header, body))
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            upstream: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // One snapshot for the whole request, whatever reloads happen meanwhile.
        let config = self.config.load();
        let req = session.req_header();
        let refusal =
            match config
                .router
                .lookup(&request_host(req), req.uri.path(), req.method.as_str())
            {
                Match::Found(target) => {
                    ctx.upstream = Some(target.upstream.clone());
                    return Ok(false);
                }
                Match::MethodNotAllowed { allow } => Refusal::MethodNotAllowed(allow),
                Match::NotFound => Refusal::NoRoute,
            };
        // Routing refusals keep the connection open, unlike failures (below).
        let (header, body) = refusal.response()?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = &ctx.upstream else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route was matched before choosing a peer",
            ));
        };
        let Some(addr) = pool.pick() else {
            let mut e = Error::explain(
                ErrorType::ConnectNoRoute,
                format!("upstream {:?} has no node with a known address", pool.id),
            );
            e.as_up();
            return Err(e);
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(pool.timeouts.connect);
        peer.options.read_timeout = Some(pool.timeouts.read);
        peer.options.write_timeout = Some(pool.timeouts.write);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_string();
            let forwarded = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip,
            };
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut Self::CTX,
    ) -> FailToProxy {
        // Pingora logs the error itself, with the status returned here.
        let Some(refusal) = Refusal::from_error(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        match refusal.response() {
            Ok((header, body)) => {
                // Writes nothing when the upstream's response has begun already, and
                // closes the connection after the response.
                if let Err(write_error) = session
                    .as_downstream_mut()
                    .write_error_response(header, body)
                    .await
                {
                    tracing::debug!(error = %write_error, "could not send the error response");
                }
            }
            Err(build_error) => {
                tracing::error!(error = %build_error, "could not build the error response")
            }
        }
        FailToProxy {
            error_code: refusal.status(),
            can_reuse_downstream: false,
        }
    }
}

/// Host without port, lowercase: from an absolute-form target (which takes precedence,
/// RFC 9112 §3.2.2), else the Host header. Borrows when the host is already lowercase,
/// which is the common case.
fn request_host(req: &RequestHeader) -> Cow<'_, str> {
    let raw = req
        .uri
        .host()
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    let host = match raw.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => raw.split_once(':').map_or(raw, |(h, _)| h),
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Counts requests in flight, so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One request in flight; dropping it ends the request.
pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a drop between check and await is not missed.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_bare_and_lowercase() {
        let cases = [
            (Some("api.example.com"), "api.example.com"),
            (Some("API.Example.com:8080"), "api.example.com"),
            (Some("127.0.0.1:80"), "127.0.0.1"),
            (Some("[::1]:8080"), "::1"),
            (Some("[::1]"), "::1"),
            (None, ""),
        ];
        for (header, want) in cases {
            let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
            if let Some(h) = header {
                req.insert_header("host", h).unwrap();
            }
            assert_eq!(request_host(&req), want, "{header:?}");
        }
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.set_uri("http://Absolute.io:81/x".parse().unwrap());
        req.insert_header("host", "ignored.io").unwrap();
        assert_eq!(request_host(&req), "absolute.io");
    }

    #[test]
    fn errors_map_to_statuses() {
        use ErrorType::*;
        let cases = [
            (ErrorSource::Upstream, ConnectRefused, Some(502)),
            (ErrorSource::Upstream, ConnectNoRoute, Some(502)),
            (ErrorSource::Upstream, ConnectionClosed, Some(502)),
            (ErrorSource::Upstream, ConnectTimedout, Some(504)),
            (ErrorSource::Upstream, ReadTimedout, Some(504)),
            (ErrorSource::Upstream, WriteTimedout, Some(504)),
            (ErrorSource::Downstream, ReadTimedout, Some(408)),
            (ErrorSource::Downstream, InvalidHTTPHeader, Some(400)),
            (ErrorSource::Downstream, ConnectionClosed, None),
            (ErrorSource::Downstream, WriteError, None),
            (ErrorSource::Internal, InternalError, Some(500)),
            (ErrorSource::Unset, HTTPStatus(429), Some(429)),
        ];
        for (source, etype, want) in cases {
            let mut e = Error::new(etype.clone());
            e.esource = source.clone();
            assert_eq!(
                Refusal::from_error(&e).map(|r| r.status()),
                want,
                "{source:?} {etype:?}"
            );
        }
    }

    #[test]
    fn refusals_are_json_with_a_code() {
        let (header, body) = Refusal::MethodNotAllowed(vec!["GET", "HEAD"])
            .response()
            .unwrap();
        assert_eq!(header.status, 405);
        assert_eq!(header.headers["allow"], "GET, HEAD");
        assert_eq!(header.headers["content-type"], "application/json");
        assert_eq!(header.headers["content-length"], body.len().to_string());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": "method not allowed", "code": "method_not_allowed"})
        );
        let (header, body) = Refusal::NoRoute.response().unwrap();
        assert_eq!(header.status, 404);
        assert!(header.headers.get("allow").is_none());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": "no route matches the request", "code": "route_not_found"})
        );
    }

    #[tokio::test]
    async fn in_flight_waits_for_the_last_request() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.idle().await;
        let a = in_flight.enter();
        let b = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
