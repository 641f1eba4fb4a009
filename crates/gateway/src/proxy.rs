//! The adapter of the request core (`core/`) over Pingora's proxy: TLS and gRPC
//! upstreams, upgrades, chunked request bodies and everything the fast path
//! (`fastpath/`) hands over (HTTP/2 streams through its bridge) come through here. Every rule is the core's; this file
//! only maps it onto Pingora's hooks.
//!
//! ```text
//! (core::guard)      the HTTP/1 head was admitted before Pingora parsed it
//! new_ctx            count the request in flight (shutdown waits for it)
//! request_filter     core::head::check_decoded (limits, host; HTTP/2 heads) →
//!                    core::route::route_request
//!                    (normalise, client address, route, access phase) → refusals
//!                    rendered by core::refusal
//! upstream_peer      pick a node of the route's pool (not one this request already
//!                    failed on) → its peer, set up with the pool
//! upstream_request   core::headers (Connection-nominated headers, Keep-Alive,
//!                    Proxy-Connection; X-Forwarded-For; Host by pass_host), then the
//!                    upstream_request phase's edits
//! upstream_response  report the status to the pool; a status in `retry_on_statuses`
//!                    is retried when core::retry allows, else the response_head
//!                    phase's edits
//! fail_to_connect /  core::retry decides; a pooled connection the node had closed is
//! error_while_proxy  retried on a new one without using the budget
//! logging            core::end: the request counted in the node's load, the log phase
//! fail_to_proxy      any failure → Refusal → the core's JSON error
//! ```

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::sync::Notify;

use crate::balancer::{HashInput, Outcome, Pick, UpstreamPool};
use crate::core::end::{request_ended, Logged};
use crate::core::head::{self, Limits};
use crate::core::headers::{append_forwarded_for, nominated, upstream_host};
use crate::core::load::Load;
use crate::core::phase::{Chain, Compress, HeaderEdits, PhaseCtx, RequestView, NO_SCOPE};
use crate::core::refusal::Refusal;
use crate::core::retry::{replay_is_safe, AfterFailure, Attempts};
use crate::core::route::{find_route, run_access, Incoming, Routed};
use crate::router::CompiledRoute;
use crate::runtime::RuntimeConfig;
use crate::settings::HttpSettings;

pub struct Proxy {
    /// Swapped by the config loop; each request loads it once.
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    pub in_flight: Arc<InFlight>,
    /// Where every request ends (`core::end`), shared with the fast path.
    pub load: Arc<Load>,
    pub settings: Arc<HttpSettings>,
}

/// Per-request state.
pub struct RequestCtx {
    /// The pool of the matched route, taken from the request's config snapshot so a
    /// reload in the middle of the request does not change where it goes.
    upstream: Option<Arc<UpstreamPool>>,
    /// The client's address after the trusted-proxy rules (routing and chash use it).
    client_ip: Option<std::net::IpAddr>,
    /// The node of the current attempt; held until the request ends, so the node counts
    /// it as in flight (least_conn, ewma) for the whole exchange.
    pick: Option<Pick>,
    /// Whether the current pick's outcome went to the pool already.
    reported: bool,
    /// Attempts made (upstream_peer calls that picked a node) and nodes that failed.
    attempts: Attempts,
    /// Set when the upstream's status is being retried (see upstream_response_filter).
    status_retry: bool,
    /// Request body bytes seen so far.
    body_bytes: u64,
    /// The matched route (its plugins run the later phases).
    route: Option<Arc<CompiledRoute>>,
    /// The matched route's effective plugins (empty before routing).
    plugins: Arc<Chain>,
    /// Time to the last upstream response head.
    upstream_latency: Option<std::time::Duration>,
    /// Per-request state of the route's plugins.
    phase: PhaseCtx,
    started: std::time::Instant,
    /// Held for the request's whole life (Pingora drops the context last).
    _in_flight: InFlightGuard,
}

impl Proxy {
    /// Checks the request's limits, normalises its path (rewriting the request when the
    /// normal form differs, so the upstream sees what routing saw) and matches it.
    async fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let settings = &self.settings;
        // HTTP/1 heads passed the core's parser already (core::guard); HTTP/2 heads
        // were decoded by Pingora: the same admission applies.
        let req = session.req_header();
        let host = head::check_decoded(&req.method, &req.uri, &req.headers, Limits::of(settings))?;
        let config = self.config.load_full();
        let incoming = Incoming {
            host: &host,
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: is_tls(session),
        };
        let routed = find_route(&config, settings, &incoming)?;
        // Known before the access phase, so the log phase sees refused requests too.
        ctx.route = Some(routed.route.clone());
        ctx.plugins = routed.plugins.clone();
        ctx.client_ip = routed.client_ip;
        run_access(&config, &routed, &incoming, &mut ctx.phase).await?;
        let Routed { upstream, path, .. } = routed;
        // traffic-split's pick, else the route's.
        let upstream = ctx.phase.upstream.take().unwrap_or(upstream);
        let normal = match path {
            Cow::Owned(normal) => Some(normal),
            Cow::Borrowed(_) => None,
        };
        if let Some(normal) = normal {
            let target = match req.uri.query() {
                Some(q) => format!("{normal}?{q}"),
                None => normal,
            };
            // Scheme and authority stay: an HTTP/2 request's Host comes from them.
            let mut uri = http::uri::Parts::from(req.uri.clone());
            uri.path_and_query = Some(target.parse().map_err(|_| Refusal::BadRequest)?);
            let uri = http::Uri::from_parts(uri).map_err(|_| Refusal::BadRequest)?;
            session.req_header_mut().set_uri(uri);
        }
        ctx.upstream = Some(upstream);
        Ok(())
    }

    /// Reports the current pick's outcome to its pool, once.
    fn report(ctx: &mut RequestCtx, outcome: Outcome) {
        if let Some(pick) = &ctx.pick {
            if !ctx.reported {
                pick.record(outcome);
                ctx.reported = true;
            }
        }
    }

    /// Whether another attempt on another node is allowed (see [`Attempts`]).
    fn may_try_another(ctx: &RequestCtx, failed: usize) -> bool {
        ctx.upstream
            .as_ref()
            .is_some_and(|pool| ctx.attempts.may_try_another(pool, failed))
    }

    /// Whether the request may be sent again once it reached a node: an idempotent
    /// method and no body bytes read from the client.
    fn replay_is_safe(session: &Session, ctx: &RequestCtx) -> bool {
        replay_is_safe(session.req_header().method.as_str(), ctx.body_bytes)
            && !session.as_ref().retry_buffer_truncated()
    }
}

/// Hop-by-hop headers Pingora leaves in place: those a Connection header names (RFC
/// 9110 §7.6.1), Keep-Alive and Proxy-Connection. (It handles Connection,
/// Transfer-Encoding and Upgrade itself.)
fn connection_listed(headers: &http::HeaderMap) -> Vec<http::HeaderName> {
    const ALWAYS: [&str; 2] = ["keep-alive", "proxy-connection"];
    let listed = nominated(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .into_iter()
    .filter_map(|t| http::HeaderName::from_bytes(t).ok());
    ALWAYS
        .iter()
        .filter(|name| headers.contains_key(**name))
        .map(|name| http::HeaderName::from_static(name))
        .chain(listed)
        .collect()
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            upstream: None,
            client_ip: None,
            pick: None,
            reported: false,
            attempts: Attempts::default(),
            status_retry: false,
            body_bytes: 0,
            route: None,
            plugins: Arc::default(),
            upstream_latency: None,
            phase: PhaseCtx::default(),
            started: std::time::Instant::now(),
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let refusal = match self.route(session, ctx).await {
            Ok(()) => {
                // gzip / brotli: Pingora's compression, negotiated per request.
                for (algorithm, level) in &ctx.phase.compression {
                    let algorithm = match algorithm {
                        Compress::Gzip => {
                            pingora_core::protocols::http::compression::Algorithm::Gzip
                        }
                        Compress::Brotli => {
                            pingora_core::protocols::http::compression::Algorithm::Brotli
                        }
                    };
                    session
                        .upstream_compression
                        .adjust_algorithm_level(algorithm, *level);
                }
                return Ok(false);
            }
            Err(refusal) => refusal,
        };
        // Refusals of a well-formed request keep the connection open; a request whose
        // framing is in doubt (or that is too big to skip) closes it.
        let keep_alive = refusal.keeps_connection();
        let (header, body) = refusal.response()?;
        if !keep_alive {
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(chunk), Some(mirror)) = (body.as_ref(), ctx.phase.mirror.as_mut()) {
            if mirror.body.len() + chunk.len() > crate::plugins::MAX_MIRRORED_BODY {
                mirror.too_big = true;
                mirror.body = Vec::new();
            } else if !mirror.too_big {
                mirror.body.extend_from_slice(chunk);
            }
        }
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx
                .phase
                .max_body
                .map_or(self.settings.max_body_bytes, |m| {
                    m.min(self.settings.max_body_bytes)
                });
            if ctx.body_bytes > limit {
                // A chunked body that outgrew the limit on the way; Content-Length ones
                // were refused before anything was sent.
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "the request body is over the limit",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.upstream.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route was matched before choosing a peer",
            ));
        };
        // The previous attempt's pick (if any) is done with before the next is made.
        ctx.pick = None;
        ctx.reported = false;
        let req = session.req_header();
        let input = HashInput {
            client_ip: ctx.client_ip,
            path: req.uri.path(),
            headers: &req.headers,
            query: req.uri.query(),
        };
        let Some(pick) = pool.pick(&input, &ctx.attempts.tried) else {
            let mut e = Error::explain(
                ErrorType::ConnectNoRoute,
                format!("upstream {:?} has no node with a known address", pool.id),
            );
            e.as_up();
            return Err(e);
        };
        ctx.attempts.made += 1;
        // Scheme, TLS, CA and timeouts were set up with the pool.
        let peer = Box::new(pick.node().peer.clone());
        ctx.pick = Some(pick);
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        Self::report(ctx, Outcome::Failed);
        if let Some(index) = ctx.pick.as_ref().map(|p| p.index) {
            // Nothing reached the node: always safe to try another.
            e.set_retry(Self::may_try_another(ctx, index));
            ctx.attempts.failed_on(index);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            // Decided in upstream_response_filter, which checked everything below.
            e.set_retry(true);
            return e;
        }
        // A pooled connection the node had closed: the request never reached it
        // (Pingora marks such errors ReusedOnly).
        e.retry.decide_reuse(client_reused);
        let stale = client_reused && e.retry();
        let replay_safe = Self::replay_is_safe(session, ctx);
        let (Some(index), Some(pool)) = (ctx.pick.as_ref().map(|p| p.index), ctx.upstream.clone())
        else {
            e.set_retry(false);
            return e;
        };
        let decision = ctx
            .attempts
            .after_send_failure(&pool, index, replay_safe, stale);
        if decision != AfterFailure::NewConnection {
            Self::report(ctx, Outcome::Failed);
        }
        e.set_retry(decision != AfterFailure::GiveUp);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        for name in connection_listed(&upstream_request.headers) {
            upstream_request.remove_header(&name);
        }
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_canonical().to_string();
            let mut forwarded = Vec::new();
            append_forwarded_for(
                &mut forwarded,
                upstream_request
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(|v| v.as_bytes()),
                Some(&ip),
            );
            let value = http::HeaderValue::from_bytes(&forwarded)
                .map_err(|_| Error::explain(ErrorType::InternalError, "X-Forwarded-For"))?;
            upstream_request.insert_header("x-forwarded-for", value)?;
        }
        if let (Some(pool), Some(pick)) = (&ctx.upstream, &ctx.pick) {
            if let Some(host) = upstream_host(pool, pick) {
                upstream_request.insert_header(http::header::HOST, host)?;
            }
        }
        if !ctx.plugins.is_empty() {
            let chain = ctx.plugins.clone();
            let req = session.req_header();
            // Checked when the request was routed.
            let host = request_host(req).unwrap_or_default();
            let edits = chain.upstream_request(
                &RequestView {
                    method: req.method.as_str(),
                    path: req.uri.path(),
                    query: req.uri.query(),
                    host: &host,
                    headers: &req.headers,
                    client_ip: ctx.client_ip,
                    tls: is_tls(session),
                    scope: &NO_SCOPE,
                },
                &mut ctx.phase,
            );
            if edits.replaces_target() {
                let uri = &upstream_request.uri;
                let path = edits.path(uri.path());
                let target = match edits.query(uri.query()) {
                    Some(query) => format!("{path}?{query}"),
                    None => path.to_owned(),
                };
                let mut parts = http::uri::Parts::from(uri.clone());
                parts.path_and_query =
                    Some(target.parse().map_err(|_| {
                        Error::explain(ErrorType::InternalError, "a plugin's target")
                    })?);
                let uri = http::Uri::from_parts(parts)
                    .map_err(|_| Error::explain(ErrorType::InternalError, "a plugin's target"))?;
                upstream_request.set_uri(uri);
            }
            apply(&edits, upstream_request)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        for name in connection_listed(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        let status = upstream_response.status.as_u16();
        // 1xx are interim; 101 (an upgrade) is the final answer.
        if status < 200 && status != 101 {
            return Ok(());
        }
        let Some(pick) = &ctx.pick else {
            return Ok(());
        };
        let index = pick.index;
        let latency = pick.elapsed();
        ctx.upstream_latency = Some(latency);
        Self::report(ctx, Outcome::Status(status, latency));
        let retry = ctx
            .upstream
            .as_ref()
            .is_some_and(|pool| pool.retries_on(status))
            && Self::may_try_another(ctx, index)
            && Self::replay_is_safe(session, ctx);
        if !retry {
            if !ctx.plugins.is_empty() {
                let chain = ctx.plugins.clone();
                let edits = chain.response_head(status, &mut ctx.phase);
                apply(&edits, upstream_response)?;
                if let Some(status) = edits.status() {
                    upstream_response.set_status(status)?;
                }
            }
            return Ok(());
        }
        // Nothing of this response reached the client: drop it and try another node.
        ctx.attempts.failed_on(index);
        ctx.status_retry = true;
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            "the upstream answered with a status configured for retry",
        );
        e.as_up();
        Err(e)
    }

    /// A body a plugin replaces (response-rewrite): the upstream's chunks are dropped,
    /// the replacement goes out at the end (its length was set with the head).
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if session.req_header().method == http::Method::HEAD {
            return Ok(None);
        }
        if let Some(replacement) = &ctx.phase.replace_body {
            *body = end_of_stream.then(|| replacement.clone());
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        if let Some(mirror) = ctx.phase.mirror.take() {
            let mut headers = session.req_header().headers.clone();
            for name in connection_listed(&headers) {
                headers.remove(&name);
            }
            for name in [
                http::header::HOST,
                http::header::CONNECTION,
                http::header::CONTENT_LENGTH,
                http::header::TRANSFER_ENCODING,
                http::header::TE,
                http::header::UPGRADE,
            ] {
                headers.remove(name);
            }
            crate::plugins::send_mirror(*mirror, headers);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let logged = match (&ctx.route, ctx.plugins.is_empty()) {
            (Some(route), false) => Some(Logged {
                chain: &ctx.plugins,
                phase: &ctx.phase,
                route_id: &route.route.id,
                upstream: ctx.upstream_latency,
                duration: ctx.started.elapsed(),
                client_ip: ctx.client_ip,
            }),
            _ => None,
        };
        request_ended(&self.load, status, logged);
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

/// Applies a phase's header edits to a Pingora request or response head.
fn apply(edits: &HeaderEdits, head: &mut impl HeaderEdit) -> Result<()> {
    for name in edits.removals() {
        head.remove(name);
    }
    for (name, value) in edits.sets() {
        head.insert(name.clone(), value.to_header_value())?;
    }
    for (name, value) in edits.additions() {
        head.append(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Pingora's request and response heads, as [`apply`] edits them (their
/// `insert_header` keeps Pingora's header-case map in step).
trait HeaderEdit {
    fn remove(&mut self, name: &http::HeaderName);
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()>;
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()>;
}

impl HeaderEdit for RequestHeader {
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

impl HeaderEdit for ResponseHeader {
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

/// The canonical host: the authority (absolute-form target or `:authority`), else
/// the Host header, checked and compared by the core (`head::decoded_host`).
fn request_host(req: &RequestHeader) -> Result<Cow<'_, str>, Refusal> {
    head::decoded_host(req.uri.authority().map(|a| a.as_str()), &req.headers)
}

/// Whether the client's connection is TLS (for a stream bridged from the fast path's
/// HTTP/2 server: the client's connection, see `fastpath/bridge.rs`).
fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
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
    use std::time::Duration;

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
            assert_eq!(request_host(&req).unwrap(), want, "{header:?}");
        }
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.set_uri("http://Absolute.io:81/x".parse().unwrap());
        assert_eq!(request_host(&req).unwrap(), "absolute.io");
        req.insert_header("host", "absolute.io").unwrap();
        assert_eq!(request_host(&req).unwrap(), "absolute.io");
        // A Host naming another host than the authority, or userinfo: refused.
        req.insert_header("host", "other.io").unwrap();
        assert_eq!(request_host(&req), Err(Refusal::BadRequest));
        req.set_uri("http://user@absolute.io/x".parse().unwrap());
        req.remove_header("host");
        assert_eq!(request_host(&req), Err(Refusal::BadRequest));
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
