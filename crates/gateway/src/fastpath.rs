//! The HTTP/1.1 fast path: keep-alive requests that need nothing unusual are proxied
//! here, with one read buffer per connection, no per-request tasks or channels, and
//! the request head written upstream from the bytes the client sent; everything else
//! is handed, with the bytes read so far, to Pingora's proxy (see `proxy.rs`), which
//! keeps the connection from then on.
//!
//! ```text
//! read a head (keep-alive wait, then the head deadline) ─ httparse
//!   not HTTP/1.1, absolute-form or CONNECT, Transfer-Encoding, Upgrade, Expect,
//!   no or two Host, two Content-Length, over a limit, unparsable, no route (404/405),
//!   a TLS or HTTP/2 upstream                                  ──> Pingora (same bytes)
//! route_request (shared with Pingora's path) → pick a node (Attempts, shared)
//! request line (normalised path) + headers as sent, minus hop-by-hop ones, Host by
//!   pass_host, X-Forwarded-For appended → upstream (pooled connection) + body
//! response head ─ httparse → report to the pool (passive checks, ewma); a status in
//!   retry_on_statuses is retried when safe → head minus hop-by-hop headers → client
//! body by Content-Length, chunked (passed through as is, trailers too) or close
//! ```
//!
//! Retries follow the rules of the Pingora path: a connect failure is always retried
//! on another node while the budget lasts; once the request was sent, only an
//! idempotent request without a body is sent again; a pooled connection that fails
//! before any byte of a response is retried on a new connection without using the
//! budget, under the same rule. Refusals of the request itself (404, 405, 413, 414,
//! 431, 400) all come from the Pingora path, so they exist once.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use httparse::Status;
use model::upstream::Scheme;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::balancer::{HashInput, Outcome, UpstreamPool};
use crate::core::chunked::ChunkedScanner;
use crate::core::guard::Guard;
use crate::core::head::{
    self, BodyFraming, Head, Limits, TargetForm, H2_PREFACE, MAX_RESPONSE_HEAD_BYTES,
};
use crate::core::headers::{
    append_forwarded_for, forwarded, forwarded_back, nominated, tokens, upstream_host,
};
use crate::core::phase::{HeaderEdits, LogRecord, PhaseCtx, RequestView};
use crate::core::rate::{too_slow, Meter};
use crate::core::refusal::Refusal;
use crate::core::retry::{replay_is_safe, Attempts};
use crate::core::route::{route_request, Incoming};
use crate::proxy::InFlight;
use crate::router::CompiledRoute;
use crate::runtime::RuntimeConfig;
use crate::settings::HttpSettings;

/// How long a kept-alive client connection may wait for its next request (Pingora's).
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream address (Pingora's pool size).
const IDLE_PER_ADDR: usize = 128;
/// Body parts up to this size are sent in the same write as the head before them.
const COALESCE: usize = 16 * 1024;

/// Serves HTTP/1.1 connections, handing what it does not serve to `fallback`.
pub struct FastPath<A> {
    fallback: Arc<Guard<A>>,
    config: Arc<ArcSwap<RuntimeConfig>>,
    in_flight: Arc<InFlight>,
    settings: Arc<HttpSettings>,
    idle: IdleConnections,
}

impl<A> FastPath<A> {
    pub fn new(
        fallback: Guard<A>,
        config: Arc<ArcSwap<RuntimeConfig>>,
        in_flight: Arc<InFlight>,
        settings: Arc<HttpSettings>,
    ) -> Self {
        Self {
            fallback: Arc::new(fallback),
            config,
            in_flight,
            settings,
            idle: IdleConnections::default(),
        }
    }
}

#[async_trait]
impl<A> ServerApp for FastPath<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.fallback.process_new(stream, shutdown).await;
        }
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
            peer: Peer {
                ip: peer,
                text: peer.map(|ip| ip.to_canonical().to_string()),
            },
            first: true,
        };
        let mut scratch = Scratch::default();
        loop {
            match self.next_request(&mut conn, &mut scratch, shutdown).await {
                Step::KeepAlive => conn.first = false,
                Step::Close => return None,
                Step::Fallback => {
                    return self
                        .fallback
                        .process_with_prefix(conn.stream, conn.buf, shutdown)
                        .await
                }
            }
        }
    }

    async fn cleanup(&self) {
        self.fallback.cleanup().await
    }
}

/// A client connection.
struct Conn {
    stream: Stream,
    /// Bytes read from the client and not yet used: the next head, or part of it.
    buf: BytesMut,
    peer: Peer,
    /// Before the connection's first request (the head deadline runs from the start).
    first: bool,
}

/// The client connection's peer address.
struct Peer {
    ip: Option<IpAddr>,
    /// As written in X-Forwarded-For, formatted once per connection.
    text: Option<String>,
}

/// Buffers a connection reuses from request to request.
#[derive(Default)]
struct Scratch {
    /// The request line, as sent upstream.
    line: Vec<u8>,
    /// The request's header lines after Host, as sent upstream, with the blank line.
    rest: Vec<u8>,
    /// What is written upstream (line + Host + rest + start of the body).
    out: Vec<u8>,
    /// The response head as sent to the client, then the start of its body.
    head: Vec<u8>,
    /// Bytes read from the upstream and not yet used.
    up_buf: BytesMut,
    /// Request body bytes on their way upstream.
    body: BytesMut,
    /// X-Forwarded-For as sent upstream.
    forwarded_for: Vec<u8>,
}

/// What the connection does after a request.
enum Step {
    KeepAlive,
    Close,
    /// Pingora takes the connection, starting with the unused bytes in `Conn::buf`.
    Fallback,
}

/// Why an upstream exchange failed.
#[derive(Debug)]
enum Failure {
    ConnectTimeout,
    Connect(io::Error),
    Timeout,
    Io(io::Error),
    /// The node closed the connection before a whole response head.
    Closed,
    /// The response could not be read as HTTP/1.x, or was framed both ways.
    BadResponse(&'static str),
}

impl Failure {
    fn refusal(&self) -> Refusal {
        match self {
            Failure::ConnectTimeout | Failure::Timeout => Refusal::GatewayTimeout,
            _ => Refusal::BadGateway,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ConnectTimeout => f.write_str("connect timed out"),
            Failure::Connect(e) => write!(f, "connect failed: {e}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Closed => f.write_str("connection closed before a response"),
            Failure::BadResponse(why) => write!(f, "bad response: {why}"),
        }
    }
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the node closes the connection.
    Close,
}

impl<A> FastPath<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    /// Reads one request head and serves it, or hands the connection over.
    async fn next_request(
        &self,
        conn: &mut Conn,
        scratch: &mut Scratch,
        shutdown: &ShutdownWatch,
    ) -> Step {
        let head_timeout = self.settings.header_read_timeout;
        let mut deadline = conn
            .first
            .then(|| tokio::time::Instant::now() + head_timeout);
        let limits = Limits::of(&self.settings);
        let Conn {
            stream,
            buf,
            peer,
            first,
        } = conn;
        loop {
            if !buf.is_empty() {
                let n = buf.len().min(H2_PREFACE.len());
                if *first && buf[..n] == H2_PREFACE[..n] {
                    // h2c with prior knowledge (or the start of it): Pingora's.
                    return Step::Fallback;
                }
                let mut storage = head::header_storage();
                match head::parse(&buf[..], &mut storage, limits) {
                    Ok(Some((head, headers))) => {
                        let (step, used) = self
                            .serve(stream, &buf[..], head, headers, peer, scratch, shutdown)
                            .await;
                        if !matches!(step, Step::Fallback) {
                            buf.advance(used);
                        }
                        return step;
                    }
                    Ok(None) => {}
                    Err(refusal) => {
                        let mut meter = self.settings.send_rate.meter();
                        return reply_refusal(stream, &refusal, &mut meter).await;
                    }
                }
            }
            let read = match deadline {
                Some(at) => tokio::time::timeout_at(at, stream.read_buf(buf)).await,
                None => timeout(KEEPALIVE, stream.read_buf(buf)).await,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Step::Close,
                Ok(Ok(_)) => {
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + head_timeout);
                }
            }
        }
    }

    /// Whether a checked request is one for the fast path: HTTP/1.1 in origin form
    /// with a Content-Length body (or none), no upgrade, no Expect. The headers go
    /// into a map (for routing and balancing) only when `collect`: the map copies
    /// every name and value, and most configurations never read it.
    fn admit(
        head: &Head<'_>,
        headers: &[httparse::Header<'_>],
        collect: bool,
    ) -> Option<HeaderMap> {
        if head.minor != 1
            || head.form != TargetForm::Origin
            || head.upgrade
            || head.expect
            || matches!(head.framing, BodyFraming::Chunked)
        {
            return None;
        }
        if !collect {
            return Some(HeaderMap::new());
        }
        let mut map = HeaderMap::with_capacity(headers.len());
        for h in headers {
            map.append(
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_bytes(h.value).ok()?,
            );
        }
        Some(map)
    }

    /// Serves one request whose head, `head`, starts `buf`. Returns what the
    /// connection does next and how many bytes of `buf` the request used.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        stream: &mut Stream,
        buf: &[u8],
        head: Head<'_>,
        headers: &[httparse::Header<'_>],
        peer: &Peer,
        scratch: &mut Scratch,
        shutdown: &ShutdownWatch,
    ) -> (Step, usize) {
        let mut send_meter = self.settings.send_rate.meter();
        let BodyFraming::Length(body_len) = head.framing else {
            return (Step::Fallback, 0);
        };
        let config = self.config.load();
        let collect = config.reads_headers || self.settings.reads_headers();
        let Some(header_map) = Self::admit(&head, headers, collect) else {
            return (Step::Fallback, 0);
        };
        let head_len = head.len;
        let close = head.close;
        let mut phase = PhaseCtx::default();
        let Ok(routed) = route_request(
            &config,
            &self.settings,
            &Incoming {
                host: &head.host,
                method: head.method,
                path: head.path,
                query: head.query,
                headers: &header_map,
                peer: peer.ip,
            },
            &mut phase,
        ) else {
            // 404 / 405 / 403: Pingora's adapter answers with the same renderer and
            // keeps the connection, as a refusal of a well-formed request does.
            return (Step::Fallback, 0);
        };
        let pool = routed.upstream;
        if pool.scheme != Scheme::Http || routed.route.plugins.wants_response_body() {
            return (Step::Fallback, 0);
        }
        let _in_flight = self.in_flight.enter();
        let chain = &routed.route.plugins;
        let upstream_edits = chain.upstream_request(
            &RequestView {
                method: head.method,
                path: &routed.path,
                query: head.query,
                host: &head.host,
                headers: &header_map,
                client_ip: routed.client_ip,
            },
            &mut phase,
        );
        let mut log = LogPhase {
            route: &routed.route,
            phase,
            // No clock read for a route without plugins (the common case).
            started: (!chain.is_empty()).then(Instant::now),
            client_ip: routed.client_ip,
            status: 0,
        };

        // The request head without Host, which depends on the node.
        scratch.line.clear();
        let line = &mut scratch.line;
        line.extend_from_slice(head.method.as_bytes());
        line.push(b' ');
        line.extend_from_slice(routed.path.as_bytes());
        if let Some(query) = head.query {
            line.push(b'?');
            line.extend_from_slice(query.as_bytes());
        }
        line.extend_from_slice(b" HTTP/1.1\r\n");
        write_request_headers(
            &mut scratch.rest,
            &mut scratch.forwarded_for,
            headers,
            head.nominates,
            &upstream_edits,
            peer.text.as_deref(),
        );

        // The part of the body that came with the head.
        let body_in_buf = (body_len.min((buf.len() - head_len) as u64)) as usize;
        let used = head_len + body_in_buf;
        let replay_safe = replay_is_safe(head.method, body_len);
        let is_head = head.method == "HEAD";
        let input = HashInput {
            client_ip: routed.client_ip,
            path: &routed.path,
            headers: &header_map,
            query: head.query,
        };

        let mut attempts = Attempts::default();
        // After a pooled connection failed before any response byte: a new one.
        let mut fresh = false;
        loop {
            let Some(pick) = pool.pick(&input, &attempts.tried) else {
                tracing::warn!(upstream = %pool.id, "no node with a known address");
                return (
                    reply_refusal(stream, &Refusal::BadGateway, &mut send_meter).await,
                    used,
                );
            };
            attempts.made += 1;
            let node = pick.node();
            let (mut up, reused) = match self.connect(&pool, node.addr, fresh).await {
                Ok(connected) => connected,
                Err(failure) => {
                    pick.record(Outcome::Failed);
                    tracing::warn!(upstream = %pool.id, node = %node.addr, error = %failure, "upstream connect failed");
                    if attempts.may_try_another(&pool, pick.index) {
                        attempts.failed_on(pick.index);
                        continue;
                    }
                    return (
                        reply_refusal(stream, &failure.refusal(), &mut send_meter).await,
                        used,
                    );
                }
            };
            fresh = false;

            // Request head, Host by pass_host, and the start of the body.
            let out = &mut scratch.out;
            out.clear();
            out.extend_from_slice(&scratch.line);
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(
                upstream_host(&pool, &pick)
                    .or(head.host_header)
                    .unwrap_or("")
                    .as_bytes(),
            );
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&scratch.rest);
            out.extend_from_slice(&buf[head_len..used]);
            let sent = self
                .send_request(
                    stream,
                    &mut up,
                    &scratch.out,
                    body_len - body_in_buf as u64,
                    &mut scratch.body,
                    &pool,
                )
                .await;
            match sent {
                Ok(()) => {}
                Err(SendError::Client) => return (Step::Close, used),
                Err(SendError::Upstream(failure)) => {
                    if reused && replay_safe && !matches!(failure, Failure::Timeout) {
                        attempts.made -= 1;
                        fresh = true;
                        continue;
                    }
                    pick.record(Outcome::Failed);
                    tracing::warn!(upstream = %pool.id, node = %node.addr, error = %failure, "sending to the upstream failed");
                    if replay_safe && attempts.may_try_another(&pool, pick.index) {
                        attempts.failed_on(pick.index);
                        continue;
                    }
                    return (
                        reply_refusal(stream, &failure.refusal(), &mut send_meter).await,
                        used,
                    );
                }
            }

            // The response head (1xx ones are passed on as they come).
            scratch.up_buf.clear();
            let response = loop {
                match read_response_head(
                    &mut up,
                    &mut scratch.up_buf,
                    &pool,
                    is_head,
                    &mut scratch.head,
                )
                .await
                {
                    Ok(interim) if interim.status < 200 => {
                        if write_all(stream, &scratch.head, &mut send_meter)
                            .await
                            .is_err()
                        {
                            return (Step::Close, used);
                        }
                        scratch.up_buf.advance(interim.len);
                    }
                    other => break other,
                }
            };
            let response = match response {
                Ok(response) => response,
                Err(failure) => {
                    if reused && replay_safe && matches!(failure, Failure::Closed | Failure::Io(_))
                    {
                        attempts.made -= 1;
                        fresh = true;
                        continue;
                    }
                    pick.record(Outcome::Failed);
                    tracing::warn!(upstream = %pool.id, node = %node.addr, error = %failure, "reading the upstream response failed");
                    if replay_safe && attempts.may_try_another(&pool, pick.index) {
                        attempts.failed_on(pick.index);
                        continue;
                    }
                    return (
                        reply_refusal(stream, &failure.refusal(), &mut send_meter).await,
                        used,
                    );
                }
            };
            pick.record(Outcome::Status(response.status, pick.elapsed()));
            if pool.retries_on(response.status)
                && replay_safe
                && attempts.may_try_another(&pool, pick.index)
            {
                // Nothing of this response reached the client: try another node.
                attempts.failed_on(pick.index);
                continue;
            }
            scratch.up_buf.advance(response.len);
            chain
                .response_head(response.status, &mut log.phase)
                .apply_to_head(&mut scratch.head);
            log.status = response.status;

            // The client's connection stays open unless it or the body framing says
            // otherwise, or the node is shutting down.
            let keep_client = !close && response.framing != Framing::Close && !*shutdown.borrow();
            if !keep_client {
                // The blank line ending the head is the last two bytes.
                let end = scratch.head.len() - 2;
                scratch.head.truncate(end);
                scratch.head.extend_from_slice(b"Connection: close\r\n\r\n");
            }
            let relayed = relay_body(
                stream,
                &mut up,
                &mut scratch.up_buf,
                &mut scratch.head,
                response.framing,
                &pool,
                &mut send_meter,
            )
            .await;
            return match relayed {
                Ok(()) => {
                    if response.keep_alive
                        && response.framing != Framing::Close
                        && scratch.up_buf.is_empty()
                    {
                        self.idle.put(node.addr, up, pool.timeouts.idle);
                    }
                    (
                        if keep_client {
                            Step::KeepAlive
                        } else {
                            Step::Close
                        },
                        used,
                    )
                }
                Err(RelayError::Client) => (Step::Close, used),
                Err(RelayError::Upstream(failure)) => {
                    tracing::warn!(upstream = %pool.id, node = %node.addr, error = %failure, "the upstream response broke off");
                    (Step::Close, used)
                }
            };
        }
    }

    /// A pooled connection to `addr`, unless `fresh`, else a new one.
    async fn connect(
        &self,
        pool: &UpstreamPool,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<(TcpStream, bool), Failure> {
        if !fresh {
            if let Some(conn) = self.idle.take(addr) {
                return Ok((conn, true));
            }
        }
        let conn = match timeout(pool.timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(Failure::Connect(e)),
            Err(_) => return Err(Failure::ConnectTimeout),
        };
        let _ = conn.set_nodelay(true);
        Ok((conn, false))
    }

    /// Writes the request head (and the body bytes that came with it), then the rest
    /// of the body as it arrives from the client.
    async fn send_request(
        &self,
        client: &mut Stream,
        up: &mut TcpStream,
        head: &[u8],
        mut remaining: u64,
        body: &mut BytesMut,
        pool: &UpstreamPool,
    ) -> Result<(), SendError> {
        let write = pool.timeouts.write;
        upstream_write(up, head, write).await?;
        // Only the time spent waiting on the client counts (core::rate).
        let mut meter = self.settings.body_rate.meter();
        while remaining > 0 {
            body.clear();
            body.reserve(COALESCE);
            // Never past the body: what follows is the next request.
            let mut limited = (&mut *client).take(remaining);
            let read = limited.read_buf(body);
            let until = meter.wait(tokio::time::Instant::now());
            let n = match tokio::time::timeout_at(until, read).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(SendError::Client),
                Err(_) => {
                    tracing::debug!(error = %too_slow("sent the request body"), "request cut");
                    return Err(SendError::Client);
                }
                Ok(Ok(n)) => n,
            };
            meter.moved(n, tokio::time::Instant::now());
            upstream_write(up, &body[..n], write).await?;
            remaining -= n as u64;
        }
        Ok(())
    }
}

/// Runs the route's log phase once the request ends, however it ends.
struct LogPhase<'a> {
    route: &'a CompiledRoute,
    phase: PhaseCtx,
    /// `None` when the route has no plugins: nothing to log.
    started: Option<Instant>,
    client_ip: Option<IpAddr>,
    /// The status sent to the client; 0 while none was.
    status: u16,
}

impl Drop for LogPhase<'_> {
    fn drop(&mut self) {
        let Some(started) = self.started else {
            return;
        };
        self.route.plugins.log(
            &LogRecord {
                route_id: &self.route.route.id,
                status: self.status,
                duration: started.elapsed(),
                client_ip: self.client_ip,
            },
            &self.phase,
        );
    }
}

enum SendError {
    /// The client went away or sent too little.
    Client,
    Upstream(Failure),
}

enum RelayError {
    Client,
    Upstream(Failure),
}

async fn upstream_write(up: &mut TcpStream, data: &[u8], limit: Duration) -> Result<(), SendError> {
    match timeout(limit, up.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Upstream(Failure::Io(e))),
        Err(_) => Err(SendError::Upstream(Failure::Timeout)),
    }
}

/// Reads from the node into `buf` within the pool's read timeout; 0 at the end.
async fn upstream_read(
    up: &mut TcpStream,
    buf: &mut BytesMut,
    pool: &UpstreamPool,
) -> Result<usize, Failure> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(COALESCE);
    }
    match timeout(pool.timeouts.read, up.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(Failure::Io(e)),
        Err(_) => Err(Failure::Timeout),
    }
}

/// Writes to the client, held to the send rate (core::rate): only the time the write
/// waits on the client counts.
async fn write_all(stream: &mut Stream, mut data: &[u8], meter: &mut Meter) -> io::Result<()> {
    // Most writes are taken by the socket at once: then no clock is read and no timer
    // is armed. Only a write that has to wait is timed.
    if let Some(written) = poll_once(stream.write(data)) {
        let n = written?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        meter.add(n);
        data = &data[n..];
        if data.is_empty() {
            if let Some(flushed) = poll_once(stream.flush()) {
                return flushed;
            }
        }
    }
    let until = meter.wait(tokio::time::Instant::now());
    let written = tokio::time::timeout_at(until, async {
        stream.write_all(data).await?;
        stream.flush().await
    })
    .await;
    meter.moved(data.len(), tokio::time::Instant::now());
    match written {
        Ok(result) => result,
        Err(_) => Err(too_slow("took the response")),
    }
}

/// Polls `future` once; `None` when it is not ready (it is dropped: only for futures
/// that do nothing until they complete, like one `write`).
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Writes a refusal (the core's renderer) and ends the connection.
async fn reply_refusal(stream: &mut Stream, refusal: &Refusal, meter: &mut Meter) -> Step {
    let _ = write_all(stream, &refusal.to_h1(), meter).await;
    Step::Close
}

/// A final or interim response head, already rewritten into `Scratch::head`.
struct ResponseHead {
    status: u16,
    /// Bytes of the head in the upstream buffer.
    len: usize,
    framing: Framing,
    /// The node keeps the connection open after this response.
    keep_alive: bool,
}

/// Reads a response head from the node and writes what the client gets of it into
/// `out`: the status line and the headers minus hop-by-hop ones.
async fn read_response_head(
    up: &mut TcpStream,
    buf: &mut BytesMut,
    pool: &UpstreamPool,
    is_head: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Failure> {
    loop {
        if !buf.is_empty() {
            let mut storage = head::header_storage();
            let mut resp = httparse::Response::new(&mut []);
            match head::response_parser().parse_response_with_uninit_headers(
                &mut resp,
                buf,
                &mut storage,
            ) {
                Ok(Status::Complete(len)) => return rewrite_response(&resp, len, is_head, out),
                Ok(Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD_BYTES => {}
                Ok(Status::Partial) => return Err(Failure::BadResponse("head too large")),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(Failure::BadResponse("too many header lines"))
                }
                Err(_) => return Err(Failure::BadResponse("unparsable head")),
            }
        }
        if upstream_read(up, buf, pool).await? == 0 {
            return Err(if buf.is_empty() {
                Failure::Closed
            } else {
                Failure::BadResponse("head cut short")
            });
        }
    }
}

fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    len: usize,
    is_head: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Failure> {
    let status = resp.code.ok_or(Failure::BadResponse("no status"))?;
    // Three digits from 100 (http's StatusCode, which Pingora's path parses into).
    if status < 100 {
        return Err(Failure::BadResponse("status below 100"));
    }
    if status == 101 {
        return Err(Failure::BadResponse("an upgrade nobody asked for"));
    }
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let listed = nominated(
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    );
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or(Failure::BadResponse("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failure::BadResponse("two Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked only when it is the last coding applied.
            chunked = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case(b"connection")
            && tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
    }
    let framing = if is_head || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        // Transfer-Encoding overrides Content-Length, which is not forwarded (RFC 9112
        // §6.3); the connection is not reused after such a message.
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let both = chunked.is_some() && length.is_some();
    keep_alive &= !both;
    out.clear();
    {
        use std::io::Write;
        let _ = write!(out, "HTTP/1.1 {status} ");
    }
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if !forwarded_back(name, &listed)
            || (framing == Framing::Close && name.eq_ignore_ascii_case(b"transfer-encoding"))
            || (both && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n') {
            // obs-fold: line breaks become spaces (RFC 9112 §5.2).
            out.extend(
                h.value
                    .iter()
                    .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
        } else {
            out.extend_from_slice(h.value);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ResponseHead {
        status,
        len,
        framing,
        keep_alive,
    })
}

/// Sends the response head in `head` and the body after it to the client; leaves in
/// `buf` what the node sent beyond the response.
async fn relay_body(
    client: &mut Stream,
    up: &mut TcpStream,
    buf: &mut BytesMut,
    head: &mut Vec<u8>,
    framing: Framing,
    pool: &UpstreamPool,
    meter: &mut Meter,
) -> Result<(), RelayError> {
    let mut chunks = ChunkedScanner::default();
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    // The head goes out with the first part of the body.
    let mut head_sent = false;
    loop {
        // How much of `buf` belongs to the body, and whether the body ends there.
        let (take, done) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = remaining.min(buf.len() as u64) as usize;
                remaining -= take as u64;
                (take, remaining == 0)
            }
            Framing::Chunked => match chunks.feed(buf) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (buf.len(), false),
                Err(_) => {
                    // As on Pingora's path: the client gets the head the node sent,
                    // then the connection ends where the body went wrong.
                    if !head_sent {
                        write_all(client, head, meter)
                            .await
                            .map_err(|_| RelayError::Client)?;
                    }
                    return Err(RelayError::Upstream(Failure::BadResponse("bad chunk")));
                }
            },
            Framing::Close => (buf.len(), false),
        };
        let sent = if head_sent {
            write_all(client, &buf[..take], meter).await
        } else {
            head_sent = true;
            if head.len() + take <= COALESCE {
                head.extend_from_slice(&buf[..take]);
                write_all(client, head, meter).await
            } else {
                match write_all(client, head, meter).await {
                    Ok(()) => write_all(client, &buf[..take], meter).await,
                    Err(e) => Err(e),
                }
            }
        };
        sent.map_err(|_| RelayError::Client)?;
        buf.advance(take);
        if done {
            return Ok(());
        }
        match upstream_read(up, buf, pool).await {
            Ok(0) if framing == Framing::Close => return Ok(()),
            Ok(0) => return Err(RelayError::Upstream(Failure::Closed)),
            Ok(_) => {}
            Err(failure) => return Err(RelayError::Upstream(failure)),
        }
    }
}

/// The request's header lines after Host, as sent upstream, with the blank line: the
/// core's header policy (hop-by-hop and nominated headers dropped, X-Forwarded-For
/// with the client appended).
fn write_request_headers(
    out: &mut Vec<u8>,
    forwarded_for: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    nominates: bool,
    edits: &HeaderEdits,
    peer: Option<&str>,
) {
    out.clear();
    let listed = if nominates {
        nominated(
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .map(|h| h.value),
        )
    } else {
        Vec::new()
    };
    for h in headers {
        let name = h.name.as_bytes();
        if !forwarded(name, &listed, false) || edits.touches(name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    edits.write_set(out);
    append_forwarded_for(
        forwarded_for,
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value),
        peer,
    );
    if !forwarded_for.is_empty() {
        out.extend_from_slice(b"X-Forwarded-For: ");
        out.extend_from_slice(forwarded_for);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[derive(Default)]
struct IdleConnections {
    by_addr: Mutex<HashMap<SocketAddr, VecDeque<(TcpStream, Instant)>>>,
}

impl IdleConnections {
    /// The newest live idle connection to `addr`. A connection the node has closed
    /// (or sent something on) is dropped: tokio knows it is readable, so the check
    /// costs a system call only then.
    fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        let list = by_addr.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((conn, until)) = list.pop_back() {
            if until <= now {
                // Older ones expired too.
                list.clear();
                return None;
            }
            let mut probe = [0u8; 1];
            if matches!(conn.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, conn: TcpStream, idle: Duration) {
        let now = Instant::now();
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        let list = by_addr.entry(addr).or_default();
        while list.front().is_some_and(|(_, until)| *until <= now) {
            list.pop_front();
        }
        if list.len() < IDLE_PER_ADDR {
            list.push_back((conn, now + idle));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_lose_hop_by_hop_ones_and_gain_the_client() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\nAccept: */*\r\n\r\n";
        req.parse(raw).unwrap();
        let (mut out, mut xff) = (Vec::new(), Vec::new());
        write_request_headers(
            &mut out,
            &mut xff,
            req.headers,
            true,
            &HeaderEdits::default(),
            Some("10.0.0.1"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Accept: */*\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8, 10.0.0.1\r\n\r\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (mut out, mut xff) = (Vec::new(), Vec::new());
        write_request_headers(
            &mut out,
            &mut xff,
            req.headers,
            false,
            &HeaderEdits::default(),
            Some("::1"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Forwarded-For: ::1\r\n\r\n"
        );
    }

    #[test]
    fn responses_are_framed_and_cleaned() {
        /// Response head, HEAD request, framing and keep-alive (or an error), head sent.
        type Case = (
            &'static [u8],
            bool,
            Result<(Framing, bool), ()>,
            &'static str,
        );
        let cases: &[Case] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
                false,
                Ok((Framing::Length(3), true)),
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
                false,
                Ok((Framing::Chunked, false)),
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\n",
                false,
                Ok((Framing::Close, false)),
                "HTTP/1.1 200 OK\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                Ok((Framing::Empty, true)),
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\n\r\n",
                false,
                Ok((Framing::Empty, true)),
                "HTTP/1.1 304 Not Modified\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Ok((Framing::Chunked, false)),
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false,
                Err(()),
                "",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
                false,
                Err(()),
                "",
            ),
        ];
        for (raw, is_head, want, want_head) in cases {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let Status::Complete(len) = resp.parse(raw).unwrap() else {
                panic!("partial");
            };
            let mut out = Vec::new();
            let got = rewrite_response(&resp, len, *is_head, &mut out)
                .map(|h| (h.framing, h.keep_alive))
                .map_err(|_| ());
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(raw));
            if got.is_ok() {
                assert_eq!(String::from_utf8(out).unwrap(), *want_head);
            }
        }
    }
}
