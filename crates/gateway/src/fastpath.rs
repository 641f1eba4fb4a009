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
use crate::deadline::HeadDeadline;
use crate::proxy::{
    host_of, route_request, tokens, upstream_host, Attempts, InFlight, Incoming, Refusal,
};
use crate::runtime::RuntimeConfig;
use crate::settings::HttpSettings;

/// Header lines parsed per head; a head with more goes to Pingora.
const MAX_HEADERS: usize = 64;
/// How long a kept-alive client connection may wait for its next request (Pingora's).
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream address (Pingora's pool size).
const IDLE_PER_ADDR: usize = 128;
/// Body parts up to this size are sent in the same write as the head before them.
const COALESCE: usize = 16 * 1024;

/// Serves HTTP/1.1 connections, handing what it does not serve to `fallback`.
pub struct FastPath<A> {
    fallback: Arc<HeadDeadline<A>>,
    config: Arc<ArcSwap<RuntimeConfig>>,
    in_flight: Arc<InFlight>,
    settings: Arc<HttpSettings>,
    idle: IdleConnections,
}

impl<A> FastPath<A> {
    pub fn new(
        fallback: HeadDeadline<A>,
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
                text: peer.map(|ip| ip.to_string()),
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

/// The request as read from the client, checked for the fast path.
struct Request<'a> {
    method: &'a str,
    target: &'a str,
    host: &'a str,
    headers: HeaderMap,
    body_len: u64,
    /// The client asked to close after this request.
    close: bool,
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
        // Heads larger than this are refused by Pingora's path (431 / 414).
        let cap = self.settings.max_uri_bytes + self.settings.max_header_bytes + 4096;
        let Conn {
            stream, buf, peer, ..
        } = conn;
        loop {
            if !buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf[..]) {
                    Ok(Status::Complete(head_len)) => {
                        let (step, used) = self
                            .serve(stream, &buf[..], &req, head_len, peer, scratch, shutdown)
                            .await;
                        if !matches!(step, Step::Fallback) {
                            buf.advance(used);
                        }
                        return step;
                    }
                    Ok(Status::Partial) if buf.len() < cap => {}
                    // Errors, too many headers, a head too large: Pingora's answer.
                    _ => return Step::Fallback,
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

    /// Checks that the request is one for the fast path; `None` hands it to Pingora.
    /// The headers go into a map (for routing and balancing) only when `collect`: the
    /// map copies every name and value, and most configurations never read it.
    fn admit<'a>(&self, req: &httparse::Request<'_, 'a>, collect: bool) -> Option<Request<'a>> {
        let settings = &self.settings;
        if req.version != Some(1) {
            return None;
        }
        let method = req.method?;
        let target = req.path?;
        if method == "CONNECT" || !target.starts_with('/') || target.len() > settings.max_uri_bytes
        {
            return None;
        }
        let mut host = None;
        let mut length = None;
        let mut close = false;
        let mut size = 0;
        let mut headers = if collect {
            HeaderMap::with_capacity(req.headers.len())
        } else {
            HeaderMap::new()
        };
        for h in req.headers.iter() {
            size += h.name.len() + h.value.len() + 4;
            let name = h.name.as_bytes();
            let is = |known: &HeaderName| name.eq_ignore_ascii_case(known.as_str().as_bytes());
            if is(&http::header::HOST) {
                if host.is_some() {
                    return None;
                }
                host = Some(std::str::from_utf8(h.value).ok()?);
            } else if is(&http::header::CONTENT_LENGTH) {
                if length.is_some() || h.value.is_empty() || h.value.len() > 19 {
                    return None;
                }
                if !h.value.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let n: u64 = std::str::from_utf8(h.value).ok()?.parse().ok()?;
                if n > settings.max_body_bytes {
                    return None;
                }
                length = Some(n);
            } else if is(&http::header::TRANSFER_ENCODING)
                || is(&http::header::UPGRADE)
                || is(&http::header::EXPECT)
            {
                return None;
            } else if is(&http::header::CONNECTION) {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return None;
                    }
                }
            }
            if collect {
                headers.append(
                    HeaderName::from_bytes(name).ok()?,
                    HeaderValue::from_bytes(h.value).ok()?,
                );
            } else if !h
                .value
                .iter()
                .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
            {
                // What a header map would refuse (httparse lets none of it through
                // today) still goes to Pingora's path.
                return None;
            }
        }
        if size > settings.max_header_bytes {
            return None;
        }
        Some(Request {
            method,
            target,
            host: host?,
            headers,
            body_len: length.unwrap_or(0),
            close,
        })
    }

    /// Serves one request whose head is `buf[..head_len]`. Returns what the connection
    /// does next and how many bytes of `buf` the request used.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        stream: &mut Stream,
        buf: &[u8],
        req: &httparse::Request<'_, '_>,
        head_len: usize,
        peer: &Peer,
        scratch: &mut Scratch,
        shutdown: &ShutdownWatch,
    ) -> (Step, usize) {
        let config = self.config.load();
        let collect = config.reads_headers || self.settings.reads_headers();
        let Some(request) = self.admit(req, collect) else {
            return (Step::Fallback, 0);
        };
        let (path, query) = match request.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (request.target, None),
        };
        let host = host_of(request.host);
        let Ok(routed) = route_request(
            &config,
            &self.settings,
            &Incoming {
                host: &host,
                method: request.method,
                path,
                query,
                headers: &request.headers,
                peer: peer.ip,
            },
        ) else {
            return (Step::Fallback, 0);
        };
        let pool = routed.upstream;
        if pool.upstream.scheme != Scheme::Http {
            return (Step::Fallback, 0);
        }
        let _in_flight = self.in_flight.enter();

        // The request head without Host, which depends on the node.
        scratch.line.clear();
        let line = &mut scratch.line;
        line.extend_from_slice(request.method.as_bytes());
        line.push(b' ');
        line.extend_from_slice(routed.path.as_bytes());
        if let Some(query) = query {
            line.push(b'?');
            line.extend_from_slice(query.as_bytes());
        }
        line.extend_from_slice(b" HTTP/1.1\r\n");
        write_request_headers(&mut scratch.rest, &*req.headers, peer.text.as_deref());

        let body_len = request.body_len;
        // The part of the body that came with the head.
        let body_in_buf = (body_len.min((buf.len() - head_len) as u64)) as usize;
        let used = head_len + body_in_buf;
        let replay_safe = body_len == 0
            && http::Method::from_bytes(request.method.as_bytes()).is_ok_and(|m| m.is_idempotent());
        let is_head = request.method == "HEAD";
        let input = HashInput {
            client_ip: routed.client_ip,
            path: &routed.path,
            headers: &request.headers,
            query,
        };

        let mut attempts = Attempts::default();
        // After a pooled connection failed before any response byte: a new one.
        let mut fresh = false;
        loop {
            let Some(pick) = pool.pick(&input, &attempts.tried) else {
                tracing::warn!(upstream = %pool.id, "no node with a known address");
                return (reply_refusal(stream, &Refusal::BadGateway).await, used);
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
                    return (reply_refusal(stream, &failure.refusal()).await, used);
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
                    .unwrap_or(request.host)
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
                    return (reply_refusal(stream, &failure.refusal()).await, used);
                }
            }

            // The response head (1xx ones are passed on as they come).
            scratch.up_buf.clear();
            let head = loop {
                match read_response_head(
                    &mut up,
                    &mut scratch.up_buf,
                    &pool,
                    is_head,
                    &mut scratch.head,
                )
                .await
                {
                    Ok(head) if head.status < 200 => {
                        if write_all(stream, &scratch.head).await.is_err() {
                            return (Step::Close, used);
                        }
                        scratch.up_buf.advance(head.len);
                    }
                    other => break other,
                }
            };
            let head = match head {
                Ok(head) => head,
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
                    return (reply_refusal(stream, &failure.refusal()).await, used);
                }
            };
            pick.record(Outcome::Status(head.status, pick.elapsed()));
            if pool.upstream.retry_on_statuses.contains(&head.status)
                && replay_safe
                && attempts.may_try_another(&pool, pick.index)
            {
                // Nothing of this response reached the client: try another node.
                attempts.failed_on(pick.index);
                continue;
            }
            scratch.up_buf.advance(head.len);

            // The client's connection stays open unless it or the body framing says
            // otherwise, or the node is shutting down.
            let keep_client =
                !request.close && head.framing != Framing::Close && !*shutdown.borrow();
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
                head.framing,
                &pool,
            )
            .await;
            return match relayed {
                Ok(()) => {
                    if head.keep_alive
                        && head.framing != Framing::Close
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
        while remaining > 0 {
            body.clear();
            body.reserve(COALESCE);
            // Never past the body: what follows is the next request.
            let mut limited = (&mut *client).take(remaining);
            let read = limited.read_buf(body);
            let n = match timeout(self.settings.header_read_timeout, read).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(SendError::Client),
                Ok(Ok(n)) => n,
            };
            upstream_write(up, &body[..n], write).await?;
            remaining -= n as u64;
        }
        Ok(())
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

async fn write_all(stream: &mut Stream, data: &[u8]) -> io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

/// Writes a refusal and ends the connection.
async fn reply_refusal(stream: &mut Stream, refusal: &Refusal) -> Step {
    let body = refusal.body();
    let status =
        http::StatusCode::from_u16(refusal.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    let _ = write_all(stream, &out).await;
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
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(Status::Complete(len)) => return rewrite_response(&resp, len, is_head, out),
                Ok(Status::Partial) => {}
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
    if status == 101 {
        return Err(Failure::BadResponse("an upgrade nobody asked for"));
    }
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut listed: Vec<&[u8]> = Vec::new();
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
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    listed.push(token);
                }
            }
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
        if is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"transfer-encoding")
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || (framing == Framing::Close && name.eq_ignore_ascii_case(b"transfer-encoding"))
            || (both && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
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
) -> Result<(), RelayError> {
    let mut chunks = ChunkedEnd::default();
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
                Err(()) => return Err(RelayError::Upstream(Failure::BadResponse("bad chunk"))),
            },
            Framing::Close => (buf.len(), false),
        };
        let sent = if head_sent {
            write_all(client, &buf[..take]).await
        } else {
            head_sent = true;
            if head.len() + take <= COALESCE {
                head.extend_from_slice(&buf[..take]);
                write_all(client, head).await
            } else {
                match client.write_all(head).await {
                    Ok(()) => write_all(client, &buf[..take]).await,
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

/// Finds where a chunked body ends (RFC 9112 §7.1), across reads, without changing
/// a byte: the chunks, the last chunk and the trailer section go through as sent.
#[derive(Debug, Default)]
struct ChunkedEnd {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the chunk size (hex digits so far, their value).
    #[default]
    SizeStart,
    Size {
        digits: u8,
        value: u64,
    },
    /// Chunk extensions, up to the line end.
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    TrailerLine,
    FinalLf,
}

impl ChunkedEnd {
    /// Feeds the next bytes; `Some(n)`: the body ends after `data[..n]`.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                SizeStart | Size { .. } => {
                    let (digits, value) = match self.state {
                        Size { digits, value } => (digits, value),
                        _ => (0, 0),
                    };
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            if digits == 15 {
                                return Err(());
                            }
                            let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                            Size {
                                digits: digits + 1,
                                value: value * 16 + d,
                            }
                        }
                        b';' | b' ' | b'\t' if digits > 0 => Extension { value },
                        b'\r' if digits > 0 => SizeLf { value },
                        b'\n' if digits > 0 => after_size(value),
                        _ => return Err(()),
                    }
                }
                Extension { value } => match b {
                    b'\r' => SizeLf { value },
                    b'\n' => after_size(value),
                    _ => Extension { value },
                },
                SizeLf { value } => match b {
                    b'\n' => after_size(value),
                    _ => return Err(()),
                },
                Data(left) => {
                    let n = (left.min((data.len() - i) as u64)) as usize;
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                DataCr => match b {
                    b'\r' => DataLf,
                    b'\n' => SizeStart,
                    _ => return Err(()),
                },
                DataLf => match b {
                    b'\n' => SizeStart,
                    _ => return Err(()),
                },
                TrailerStart => match b {
                    b'\r' => FinalLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => TrailerLine,
                },
                TrailerLine => match b {
                    b'\n' => TrailerStart,
                    _ => TrailerLine,
                },
                FinalLf => match b {
                    b'\n' => return Ok(Some(i + 1)),
                    _ => return Err(()),
                },
            };
            i += 1;
        }
        Ok(None)
    }
}

fn after_size(value: u64) -> ChunkState {
    if value == 0 {
        ChunkState::TrailerStart
    } else {
        ChunkState::Data(value)
    }
}

/// Headers that concern one connection only (RFC 9110 §7.6.1), plus the
/// non-standard Keep-Alive and Proxy-Connection.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The request's header lines as sent upstream, after the Host line: the client's,
/// minus Host, hop-by-hop headers and those its Connection header lists, with the
/// client's address appended to X-Forwarded-For (one line).
fn write_request_headers(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], peer: Option<&str>) {
    out.clear();
    let mut listed: Vec<&[u8]> = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            listed.extend(tokens(h.value).filter(|t| {
                !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
            }));
        }
    }
    let mut forwarded = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host")
            || (is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"trailer"))
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            if forwarded {
                // One line: the first one's addresses, then the peer (as Pingora's
                // path does).
                continue;
            }
            forwarded = true;
            out.extend_from_slice(b"X-Forwarded-For: ");
            out.extend_from_slice(h.value);
            if let Some(ip) = peer {
                out.extend_from_slice(b", ");
                out.extend_from_slice(ip.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !forwarded {
        if let Some(ip) = peer {
            out.extend_from_slice(b"X-Forwarded-For: ");
            out.extend_from_slice(ip.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Idle upstream connections by address, newest last; each kept until the idle
/// timeout of the pool that put it there.
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

    fn end_of(chunks: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut end = ChunkedEnd::default();
        let mut offset = 0;
        for part in chunks {
            if let Some(n) = end.feed(part)? {
                return Ok(Some(offset + n));
            }
            offset += part.len();
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        assert_eq!(end_of(&[body]), Ok(Some(body.len() - 4)));
        // Split at every position.
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(
                end_of(&[a, b]),
                Ok(Some(body.len() - 4)),
                "split at {split}"
            );
        }
        let trailers = b"A;ext=1\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n";
        assert_eq!(end_of(&[trailers]), Ok(Some(trailers.len())));
        assert_eq!(end_of(&[b"5\r\nhel"]), Ok(None));
        assert_eq!(end_of(&[b"zz\r\n"]), Err(()));
        assert_eq!(end_of(&[b"5\r\nhelloXX"]), Err(()));
        assert_eq!(end_of(&[b"ffffffffffffffff\r\n"]), Err(()));
        assert_eq!(end_of(&[b"\r\n"]), Err(()));
    }

    #[test]
    fn request_headers_lose_hop_by_hop_ones_and_gain_the_client() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\nAccept: */*\r\n\r\n";
        req.parse(raw).unwrap();
        let mut out = Vec::new();
        write_request_headers(&mut out, req.headers, Some("10.0.0.1"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Forwarded-For: 1.2.3.4, 10.0.0.1\r\nAccept: */*\r\n\r\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut out = Vec::new();
        write_request_headers(&mut out, req.headers, Some("::1"));
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
