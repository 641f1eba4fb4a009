//! The fast path: HTTP/1.1 keep-alive requests that need nothing unusual are proxied
//! here, with one read buffer per connection, no per-request tasks or channels, and
//! the request head written upstream from the bytes the client sent; HTTP/2
//! connections are served by `h2.rs`; everything else is handed, with the bytes read
//! so far, to Pingora's proxy (see `proxy.rs`), which keeps the connection from then
//! on.
//!
//! ```text
//! ALPN h2, or the h2c preface                                ──> h2.rs
//! read a head (keep-alive wait, then the head deadline) ─ core::head::parse
//!   refused (400/413/414/431/501, CONNECT 405): the core's answer, closed
//!   not HTTP/1.1, absolute-form, chunked body, Upgrade, Expect, no route
//!   (404/405/403), a TLS or HTTP/2 upstream, a response-body plugin
//!                                                            ──> Pingora (same bytes)
//! route_request (the core) → upstream_request phase → request line (normalised
//!   path) + headers as sent, minus hop-by-hop ones, X-Forwarded-For appended
//! upstream::exchange: pick a node, Host by pass_host, pooled connection, body,
//!   response head (1xx passed on), retries by core::retry
//! response_head phase → head minus hop-by-hop headers → client
//! body by Content-Length, chunked (passed through as is, trailers too) or close
//! ```

mod bridge;
mod h2;
mod upstream;

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderValue};
use model::upstream::Scheme;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use self::upstream::{
    exchange, upstream_read, Client, Ended, Exchanged, Failure, Framing, IdleConnections, Outgoing,
    COALESCE,
};
use crate::balancer::{HashInput, UpstreamPool};
use crate::core::chunked::ChunkedScanner;
use crate::core::end::{request_ended, Logged};
use crate::core::guard::Guard;
use crate::core::head::{self, BodyFraming, Head, Limits, TargetForm, H2_PREFACE};
use crate::core::headers::{append_forwarded_for, forwarded, nominated};
use crate::core::load::Load;
use crate::core::phase::{Chain, HeaderEdits, PhaseCtx, ReadsHeaders, RequestView, NO_SCOPE};
use crate::core::rate::{too_slow, Meter};
use crate::core::refusal::Refusal;
use crate::core::retry::replay_is_safe;
use crate::core::route::{find_route, run_access, Incoming};
use crate::proxy::InFlight;
use crate::router::CompiledRoute;
use crate::runtime::RuntimeConfig;
use crate::settings::HttpSettings;

/// How long a kept-alive client connection may wait for its next request (Pingora's).
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Serves HTTP/1.1 and HTTP/2 connections, handing what it does not serve to
/// `fallback` (Pingora behind the guard).
pub struct FastPath<A> {
    fallback: Arc<Guard<A>>,
    config: Arc<ArcSwap<RuntimeConfig>>,
    in_flight: Arc<InFlight>,
    /// Where every request this engine serves is counted when it ends (`core::end`).
    load: Arc<Load>,
    settings: Arc<HttpSettings>,
    idle: IdleConnections,
}

impl<A> FastPath<A> {
    pub fn new(
        fallback: Guard<A>,
        config: Arc<ArcSwap<RuntimeConfig>>,
        in_flight: Arc<InFlight>,
        load: Arc<Load>,
        settings: Arc<HttpSettings>,
    ) -> Self {
        Self {
            fallback: Arc::new(fallback),
            config,
            in_flight,
            load,
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
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let peer = Peer {
            ip: peer,
            text: peer.map(|ip| ip.to_canonical().to_string()),
            tls: stream.get_ssl_digest().is_some(),
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.serve_h2(stream, BytesMut::new(), peer, shutdown).await;
        }
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
            peer,
            first: true,
        };
        let mut scratch = Scratch::default();
        loop {
            match self.next_request(&mut conn, &mut scratch, shutdown).await {
                Step::KeepAlive => conn.first = false,
                Step::Close => return None,
                Step::Http2 => {
                    return self
                        .serve_h2(conn.stream, conn.buf, conn.peer, shutdown)
                        .await
                }
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
pub(super) struct Peer {
    pub ip: Option<IpAddr>,
    /// As written in X-Forwarded-For, formatted once per connection.
    pub text: Option<String>,
    /// The connection is TLS.
    pub tls: bool,
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
    /// The request's headers when routing reads them (all of them).
    headers: HeaderMap,
    /// The headers the route's plugins read, when routing did not collect them.
    plugin_headers: HeaderMap,
}

/// What the connection does after a request.
enum Step {
    KeepAlive,
    Close,
    /// The client speaks HTTP/2 (prior knowledge): `h2.rs` serves it.
    Http2,
    /// Pingora takes the connection, starting with the unused bytes in `Conn::buf`.
    Fallback,
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
            let n = buf.len().min(H2_PREFACE.len());
            let preface = *first && buf[..n] == H2_PREFACE[..n];
            if preface && n == H2_PREFACE.len() {
                // h2c with prior knowledge.
                return Step::Http2;
            }
            // The start of a preface (or of a request starting like one, "P"): the
            // rest decides, within the head deadline.
            if !buf.is_empty() && !preface {
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
                        let step = reply_refusal(stream, &refusal, &mut meter).await;
                        request_ended(&self.load, refusal.status(), None);
                        return step;
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
    /// with a Content-Length body (or none), no upgrade, no Expect.
    fn admits(head: &Head<'_>) -> bool {
        head.minor == 1
            && head.form == TargetForm::Origin
            && !head.upgrade
            && !head.expect
            && !matches!(head.framing, BodyFraming::Chunked)
    }

    /// Fills `map` (emptied first; it keeps its allocations from request to request)
    /// with the headers `reads` names: a copy of each name and value, which most
    /// configurations never need. `false` when a header read does not fit a map (the
    /// request then goes to Pingora's path, which refuses or serves it).
    fn collect(
        map: &mut HeaderMap,
        headers: &[httparse::Header<'_>],
        reads: &ReadsHeaders,
    ) -> bool {
        map.clear();
        if !reads.any() {
            return true;
        }
        for h in headers {
            let name = match reads.wanted(h.name) {
                Ok(Some(name)) => name,
                Ok(None) => continue,
                Err(_) => return false,
            };
            let Ok(value) = HeaderValue::from_bytes(h.value) else {
                return false;
            };
            map.append(name, value);
        }
        true
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
        if !Self::admits(&head) {
            return (Step::Fallback, 0);
        }
        // Routing reads every header, or none.
        let collect = config.reads_headers || self.settings.reads_headers();
        let reads = if collect {
            &ReadsHeaders::All
        } else {
            &ReadsHeaders::None
        };
        if !Self::collect(&mut scratch.headers, headers, reads) {
            return (Step::Fallback, 0);
        }
        let head_len = head.len;
        let close = head.close;
        let incoming = Incoming {
            host: &head.host,
            method: head.method,
            path: head.path,
            query: head.query,
            headers: &scratch.headers,
            peer: peer.ip,
            tls: peer.tls,
        };
        let Ok(routed) = find_route(&config, &self.settings, &incoming) else {
            // 404 / 405: Pingora's adapter answers with the same renderer and keeps
            // the connection, as a refusal of a well-formed request does.
            return (Step::Fallback, 0);
        };
        let pool = routed.upstream.clone();
        if pool.scheme != Scheme::Http || routed.plugins.pingora_only() {
            return (Step::Fallback, 0);
        }
        // Routing did not need the headers but this route's plugins do: the ones they
        // read are collected now, for this route only (a plain route beside a key-auth
        // one pays nothing, and key-auth pays for its key header alone).
        let header_map = if !collect && routed.plugins.reads_headers().any() {
            if !Self::collect(
                &mut scratch.plugin_headers,
                headers,
                routed.plugins.reads_headers(),
            ) {
                return (Step::Fallback, 0);
            }
            &scratch.plugin_headers
        } else {
            &scratch.headers
        };
        let incoming = Incoming {
            headers: header_map,
            ..incoming
        };
        // The body that came with the head, and whether that is all of it.
        let body_in_buf = (body_len.min((buf.len() - head_len) as u64)) as usize;
        let used = head_len + body_in_buf;
        let chain = &*routed.plugins;
        // The log phase runs when `log` drops, however the request ends.
        let mut log = LogPhase::new(
            &self.load,
            &routed.route,
            chain,
            PhaseCtx::default(),
            routed.client_ip,
        );
        if let Err(refusal) = run_access(&config, &routed, &incoming, &mut log.phase).await {
            // Answered here (the access phase ran; it must not run again on Pingora's
            // path). The connection stays when the request was read whole.
            log.status = refusal.status();
            let whole = body_in_buf as u64 == body_len;
            if whole && !close && refusal.keeps_connection() && head.method != "HEAD" {
                let _ = write_all(stream, &refusal.to_h1_open(), &mut send_meter).await;
                return (Step::KeepAlive, used);
            }
            return (reply_refusal(stream, &refusal, &mut send_meter).await, used);
        }
        let _in_flight = self.in_flight.enter();
        let upstream_edits = chain.upstream_request(
            &RequestView {
                method: head.method,
                path: &routed.path,
                query: head.query,
                host: &head.host,
                headers: header_map,
                client_ip: routed.client_ip,
                tls: peer.tls,
                scope: &NO_SCOPE,
            },
            &mut log.phase,
        );

        // The request head without Host, which depends on the node.
        scratch.line.clear();
        let line = &mut scratch.line;
        line.extend_from_slice(head.method.as_bytes());
        line.push(b' ');
        line.extend_from_slice(upstream_edits.path(&routed.path).as_bytes());
        if let Some(query) = upstream_edits.query(head.query) {
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

        let replay_safe = replay_is_safe(head.method, body_len);
        let is_head = head.method == "HEAD";
        let input = HashInput {
            client_ip: routed.client_ip,
            path: &routed.path,
            headers: header_map,
            query: head.query,
        };

        let mut client = Client::Http1 {
            stream: &mut *stream,
            meter: &mut send_meter,
            body_left: body_len - body_in_buf as u64,
            body_buf: &mut scratch.body,
            body_rate: self.settings.body_rate,
            head: &mut scratch.head,
        };
        let outgoing = Outgoing {
            pool: &pool,
            input: &input,
            line: &scratch.line,
            client_host: head.host_header,
            host_override: upstream_edits.host(),
            rest: &scratch.rest,
            body_start: &buf[head_len..used],
            replay_safe,
            is_head,
        };
        let exchanged = exchange(
            &self.idle,
            &outgoing,
            &mut client,
            &mut scratch.out,
            &mut scratch.up_buf,
        )
        .await;
        let Exchanged {
            mut up,
            pick,
            response,
        } = match exchanged {
            Ok(exchanged) => exchanged,
            Err(Ended::Client) => return (Step::Close, used),
            Err(Ended::Refused(refusal)) => {
                log.status = refusal.status();
                return (reply_refusal(stream, &refusal, &mut send_meter).await, used);
            }
        };
        log.upstream = Some(pick.elapsed());
        scratch.up_buf.advance(response.len);
        let edits = chain.response_head(response.status, &mut log.phase);
        edits.apply_to_head(&mut scratch.head);
        log.status = edits.status().unwrap_or(response.status);

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
        match relayed {
            Ok(()) => {
                if response.keep_alive
                    && response.framing != Framing::Close
                    && scratch.up_buf.is_empty()
                {
                    self.idle.put(pick.addr, up, pool.timeouts.idle);
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
                tracing::warn!(upstream = %pool.id, node = %pick.addr, error = %failure, "the upstream response broke off");
                (Step::Close, used)
            }
        }
    }
}

enum RelayError {
    Client,
    Upstream(Failure),
}

/// Ends the request in the core (`core::end`: counted, the route's log phase) once
/// it ends, however it ends.
pub(super) struct LogPhase<'a> {
    load: &'a Load,
    route: &'a CompiledRoute,
    chain: &'a Chain,
    pub phase: PhaseCtx,
    /// `None` when the route has no plugins: nothing to log.
    started: Option<Instant>,
    client_ip: Option<IpAddr>,
    /// The status sent to the client; 0 while none was.
    pub status: u16,
    /// Time to the upstream node's response head.
    pub upstream: Option<std::time::Duration>,
}

impl<'a> LogPhase<'a> {
    pub(super) fn new(
        load: &'a Load,
        route: &'a CompiledRoute,
        chain: &'a Chain,
        phase: PhaseCtx,
        client_ip: Option<IpAddr>,
    ) -> Self {
        Self {
            load,
            route,
            chain,
            phase,
            // No clock read for a route without plugins (the common case).
            started: (!chain.is_empty()).then(Instant::now),
            client_ip,
            status: 0,
            upstream: None,
        }
    }
}

impl Drop for LogPhase<'_> {
    fn drop(&mut self) {
        let logged = self.started.map(|started| Logged {
            chain: self.chain,
            phase: &self.phase,
            route_id: &self.route.route.id,
            upstream: self.upstream,
            duration: started.elapsed(),
            client_ip: self.client_ip,
        });
        request_ended(self.load, self.status, logged);
    }
}

/// Writes to the client, held to the send rate (core::rate): only the time the write
/// waits on the client counts.
pub(super) async fn write_all(
    stream: &mut Stream,
    mut data: &[u8],
    meter: &mut Meter,
) -> io::Result<()> {
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
}
