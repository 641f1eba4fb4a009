//! The fast path's HTTP/2 server: h2c with prior knowledge and TLS with ALPN h2.
//! Every stream of a connection is served on the connection's own task (no task,
//! channel or header-map copy per stream), its head from `h2` straight into the
//! request core, the request sent upstream over HTTP/1.1 by the attempt loop the
//! HTTP/1 fast path uses (`upstream.rs`), the response streamed back within the
//! stream's flow-control window.
//!
//! ```text
//! connection: core::guard (preface + first SETTINGS within the head deadline, the
//!   client's minimum send rate) → h2 handshake → accept streams, serve them all
//!   concurrently; no stream for h2_idle_timeout → closed; shutdown → GOAWAY, drain
//! stream: head::check_decoded (CONNECT, limits, host) → route_request (404/405/403…)
//!   → plugins' upstream_request → exchange (upstream.rs) → response head (plugins'
//!   response_head) → body: DATA frames as the window allows (Content-Length, close-
//!   delimited or de-chunked; upstream trailers are not passed on)
//! ```
//!
//! A stream whose route this engine does not serve (TLS, HTTP/2 or gRPC upstreams,
//! plugins that read the response body) goes through `bridge.rs` to Pingora.

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use model::upstream::Scheme;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::net::TcpStream;

use super::bridge::Bridge;
use super::upstream::{
    exchange, upstream_read, Client, Ended, Exchanged, Failure, Framing, Outgoing,
};
use super::{FastPath, LogPhase, Peer};
use crate::balancer::{HashInput, UpstreamPool};
use crate::core::chunked::ChunkedScanner;
use crate::core::end::request_ended;
use crate::core::head::{self, Limits, MAX_HEADERS};
use crate::core::headers::{append_forwarded_for, forwarded};
use crate::core::load::Load;
use crate::core::phase::{PhaseCtx, RequestView, NO_SCOPE};
use crate::core::rate::{too_slow, Meter};
use crate::core::refusal::Refusal;
use crate::core::retry::replay_is_safe;
use crate::core::route::{find_route, run_access, Incoming};

/// Streams a client may open at once (nginx's `http2_max_concurrent_streams`).
const MAX_STREAMS: u32 = 128;
/// Streams served at once on one connection, reset ones whose exchange still runs
/// included.
const MAX_IN_PROGRESS: usize = 2 * MAX_STREAMS as usize;
/// HPACK counts 32 bytes per header beyond name and value (RFC 7541 §4.1): a list
/// within the core's header limit always decodes, and the core refuses it with 431.
const HPACK_ENTRY_OVERHEAD: usize = 32;

impl<A> FastPath<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    /// Serves an HTTP/2 connection whose first bytes, `prefix`, were read already.
    pub(super) async fn serve_h2(
        &self,
        stream: Stream,
        prefix: BytesMut,
        peer: Peer,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let bridge = Bridge::new(
            &self.fallback,
            &self.load,
            shutdown,
            stream.get_socket_digest(),
            stream.get_ssl_digest(),
            self.settings.body_rate,
            self.settings.send_rate,
        );
        let io = self.fallback.wrap(stream, prefix);
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(
                (self.settings.max_header_bytes + MAX_HEADERS * HPACK_ENTRY_OVERHEAD) as u32,
            );
        // The guard holds the preface and first SETTINGS to the head deadline.
        let handshake = builder.handshake::<_, Bytes>(io);
        let mut conn =
            match tokio::time::timeout(self.settings.header_read_timeout, handshake).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 handshake failed");
                    return None;
                }
                Err(_) => return None,
            };
        let mut shutdown = shutdown.clone();
        let mut draining = false;
        let mut streams = FuturesUnordered::new();
        loop {
            let idle = streams.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.changed(), if !draining => {
                    conn.graceful_shutdown();
                    draining = true;
                }
                Some(()) = streams.next(), if !idle => {}
                accepted = conn.accept() => match accepted {
                    Some(Ok((request, mut respond))) => {
                        if streams.len() < MAX_IN_PROGRESS {
                            streams.push(self.h2_stream(request, respond, &peer, &bridge));
                        } else {
                            // Streams reset by the client leave h2's count while
                            // their upstream exchange runs on: a rapid-reset flood
                            // (CVE-2023-44487) would pile up work. Past the cap, new
                            // streams are refused (the client may retry them).
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "HTTP/2 connection ended");
                        break;
                    }
                    None => break,
                },
                () = tokio::time::sleep(self.settings.h2_idle_timeout), if idle => break,
            }
        }
        // Streams still running finish (or fail) with the connection driven.
        let mut closed = false;
        while !streams.is_empty() {
            tokio::select! {
                Some(()) = streams.next() => {}
                _ = poll_fn(|cx| conn.poll_closed(cx)), if !closed => closed = true,
            }
        }
        None
    }

    /// Serves one stream.
    async fn h2_stream(
        &self,
        request: http::Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        peer: &Peer,
        bridge: &Bridge<'_, A>,
    ) {
        let (parts, mut recv) = request.into_parts();
        let checked = head::check_decoded(
            &parts.method,
            &parts.uri,
            &parts.headers,
            Limits::of(&self.settings),
        );
        let host = match checked {
            Ok(host) => host,
            Err(refusal) => return refuse_stream(&self.load, &mut respond, &refusal),
        };
        let config = self.config.load();
        let incoming = Incoming {
            host: &host,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            peer: peer.ip,
            tls: peer.tls,
        };
        let routed = match find_route(&config, &self.settings, &incoming) {
            Ok(routed) => routed,
            Err(refusal) => return refuse_stream(&self.load, &mut respond, &refusal),
        };
        let pool = routed.upstream.clone();
        if pool.scheme != Scheme::Http || routed.plugins.pingora_only() {
            // Pingora runs the access phase itself: it must run once.
            drop(routed);
            return bridge
                .forward(http::Request::from_parts(parts, recv), respond)
                .await;
        }
        let chain = &*routed.plugins;
        // The log phase runs when `log` drops, however the stream ends.
        let mut log = LogPhase::new(
            &self.load,
            &routed.route,
            chain,
            PhaseCtx::default(),
            routed.client_ip,
        );
        if let Err(refusal) = run_access(&config, &routed, &incoming, &mut log.phase).await {
            log.status = refusal.status();
            return send_refusal(&mut respond, &refusal);
        }
        let _in_flight = self.in_flight.enter();
        let query = parts.uri.query();
        let upstream_edits = chain.upstream_request(
            &RequestView {
                method: parts.method.as_str(),
                path: &routed.path,
                query,
                host: &host,
                headers: &parts.headers,
                client_ip: routed.client_ip,
                tls: peer.tls,
                scope: &NO_SCOPE,
            },
            &mut log.phase,
        );
        // The query sent upstream (a plugin may have removed a credential from it).
        let sent_query = upstream_edits.query(query);

        // The request head as HTTP/1.1: the core's header policy, cookies joined
        // (RFC 9113 §8.2.3), framed by Content-Length or else chunked.
        let mut line = Vec::with_capacity(64);
        line.extend_from_slice(parts.method.as_str().as_bytes());
        line.push(b' ');
        line.extend_from_slice(upstream_edits.path(&routed.path).as_bytes());
        if let Some(query) = sent_query {
            line.push(b'?');
            line.extend_from_slice(query.as_bytes());
        }
        line.extend_from_slice(b" HTTP/1.1\r\n");
        let has_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
        let chunked = !has_length && !recv.is_end_stream();
        let mut rest = Vec::with_capacity(512);
        let mut cookies = 0;
        for (name, value) in &parts.headers {
            let raw = name.as_str().as_bytes();
            if !forwarded(raw, &[], false) || upstream_edits.touches(raw) {
                continue;
            }
            if name == http::header::COOKIE {
                cookies += 1;
                continue;
            }
            push_line(&mut rest, raw, value.as_bytes());
        }
        if cookies > 0 && !upstream_edits.touches(b"cookie") {
            let mut joined = Vec::new();
            for value in parts.headers.get_all(http::header::COOKIE) {
                if !joined.is_empty() {
                    joined.extend_from_slice(b"; ");
                }
                joined.extend_from_slice(value.as_bytes());
            }
            push_line(&mut rest, b"cookie", &joined);
        }
        upstream_edits.write_set(&mut rest);
        let mut forwarded_for = Vec::new();
        append_forwarded_for(
            &mut forwarded_for,
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
            peer.text.as_deref(),
        );
        if !forwarded_for.is_empty() {
            push_line(&mut rest, b"X-Forwarded-For", &forwarded_for);
        }
        if chunked {
            rest.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        rest.extend_from_slice(b"\r\n");

        let body_len = if recv.is_end_stream() {
            0
        } else {
            parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(u64::MAX)
        };
        let input = HashInput {
            client_ip: routed.client_ip,
            path: &routed.path,
            headers: &parts.headers,
            query,
        };
        let client_host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok());
        let outgoing = Outgoing {
            pool: &pool,
            input: &input,
            line: &line,
            client_host,
            host_override: upstream_edits.host(),
            rest: &rest,
            body_start: &[],
            replay_safe: replay_is_safe(parts.method.as_str(), body_len),
            is_head: parts.method == http::Method::HEAD,
        };
        let mut headers = HeaderMap::new();
        let mut out = Vec::new();
        let mut up_buf = BytesMut::new();
        let mut client = Client::Http2 {
            recv: &mut recv,
            respond: &mut respond,
            chunked,
            body_rate: self.settings.body_rate,
            max_body: log
                .phase
                .max_body
                .map_or(self.settings.max_body_bytes, |m| {
                    m.min(self.settings.max_body_bytes)
                }),
            headers: &mut headers,
        };
        let exchanged = exchange(&self.idle, &outgoing, &mut client, &mut out, &mut up_buf).await;
        let Exchanged { up, pick, response } = match exchanged {
            Ok(exchanged) => exchanged,
            Err(Ended::Client) => return respond.send_reset(h2::Reason::CANCEL),
            Err(Ended::Refused(refusal)) => {
                log.status = refusal.status();
                return send_refusal(&mut respond, &refusal);
            }
        };
        log.upstream = Some(pick.elapsed());
        let _ = up_buf.split_to(response.len);
        let edits = chain.response_head(response.status, &mut log.phase);
        edits.apply(&mut headers);
        let status = edits.status().unwrap_or(response.status);
        log.status = status;
        let mut head = http::Response::new(());
        *head.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        *head.headers_mut() = headers;
        let empty = response.framing == Framing::Empty;
        let Ok(mut send) = respond.send_response(head, empty) else {
            return;
        };
        let relayed = if empty {
            Ok(up_buf.is_empty().then_some(up))
        } else {
            relay_h2(
                &mut send,
                up,
                up_buf,
                response.framing,
                &pool,
                self.settings.send_rate.meter(),
            )
            .await
        };
        match relayed {
            Ok(Some(up)) if response.keep_alive && response.framing != Framing::Close => {
                self.idle.put(pick.addr, up, pool.timeouts.idle)
            }
            Ok(_) => {}
            Err(Gone::Client) => send.send_reset(h2::Reason::CANCEL),
            Err(Gone::Upstream(failure)) => {
                tracing::warn!(upstream = %pool.id, node = %pick.addr, error = %failure, "the upstream response broke off");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
            }
        }
    }
}

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Answers a stream no log phase will end (refused before it was routed, or before
/// the bridge got it to Pingora) with the core's error response, and ends it in the
/// core.
pub(super) fn refuse_stream(load: &Load, respond: &mut SendResponse<Bytes>, refusal: &Refusal) {
    send_refusal(respond, refusal);
    request_ended(load, refusal.status(), None);
}

/// Answers a stream with the core's error response.
pub(super) fn send_refusal(respond: &mut SendResponse<Bytes>, refusal: &Refusal) {
    let Ok((head, body)) = refusal.response() else {
        return respond.send_reset(h2::Reason::INTERNAL_ERROR);
    };
    let mut response = http::Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers.clone();
    if let Ok(mut send) = respond.send_response(response, false) {
        // Small enough to be buffered whatever the window.
        let _ = send.send_data(body, true);
    }
}

/// Why a response stream ended early.
pub(super) enum Gone {
    Client,
    Upstream(Failure),
}

/// Streams the response body after the head (whose bytes are gone from `buf`) to
/// the client; returns the upstream connection when the response ended cleanly at
/// the end of what was read.
async fn relay_h2(
    send: &mut SendStream<Bytes>,
    mut up: TcpStream,
    mut buf: BytesMut,
    framing: Framing,
    pool: &UpstreamPool,
    mut meter: Meter,
) -> Result<Option<TcpStream>, Gone> {
    let mut chunks = ChunkedScanner::default();
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut pieces: Vec<std::ops::Range<usize>> = Vec::new();
    loop {
        // The body bytes in `buf`, and whether the body ends there.
        pieces.clear();
        let (take, done) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = remaining.min(buf.len() as u64) as usize;
                remaining -= take as u64;
                pieces.push(0..take);
                (take, remaining == 0)
            }
            Framing::Chunked => match chunks.feed_with(&buf, |r| pieces.push(r)) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (buf.len(), false),
                Err(_) => return Err(Gone::Upstream(Failure::BadResponse("bad chunk"))),
            },
            Framing::Close => {
                pieces.push(0..buf.len());
                (buf.len(), false)
            }
        };
        let taken = buf.split_to(take).freeze();
        let last = pieces.iter().rposition(|r| !r.is_empty());
        for (i, range) in pieces.iter().enumerate() {
            if !range.is_empty() {
                let end = done && Some(i) == last;
                send_all(send, taken.slice(range.clone()), end, &mut meter).await?;
            }
        }
        if done {
            if last.is_none() {
                send_all(send, Bytes::new(), true, &mut meter).await?;
            }
            return Ok(buf.is_empty().then_some(up));
        }
        match upstream_read(&mut up, &mut buf, pool).await {
            Ok(0) if framing == Framing::Close => {
                send_all(send, Bytes::new(), true, &mut meter).await?;
                return Ok(None);
            }
            Ok(0) => return Err(Gone::Upstream(Failure::Closed)),
            Ok(_) => {}
            Err(failure) => return Err(Gone::Upstream(failure)),
        }
    }
}

/// Sends `data` as the stream's window allows, held to the client's minimum send
/// rate (a client that never opens the window is cut, as one that never reads is).
pub(super) async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    meter: &mut Meter,
) -> Result<(), Gone> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(|_| Gone::Client);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let mut capacity = send.capacity();
        if capacity > 0 {
            // The common case: no wait, no clock read.
            meter.add(capacity.min(data.len()));
        } else {
            let until = meter.wait(tokio::time::Instant::now());
            let granted = tokio::time::timeout_at(until, async {
                loop {
                    match poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(0)) => {}
                        Some(Ok(n)) => return Ok(n),
                        Some(Err(_)) | None => return Err(Gone::Client),
                    }
                }
            })
            .await;
            capacity = match granted {
                Ok(granted) => granted?,
                Err(_) => {
                    tracing::debug!(error = %too_slow("took the response"), "stream cut");
                    return Err(Gone::Client);
                }
            };
            meter.moved(capacity.min(data.len()), tokio::time::Instant::now());
        }
        let piece = data.split_to(capacity.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(|_| Gone::Client)?;
    }
    Ok(())
}
