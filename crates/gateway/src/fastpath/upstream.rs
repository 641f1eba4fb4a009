//! The upstream side of the fast path, one for its HTTP/1.1 and HTTP/2 clients: the
//! attempt loop (pick a node, connect or reuse, send the request, read the response
//! head, retry by the core's rules), the idle connection pool, and reading and
//! classifying HTTP/1.x response heads. What differs by client protocol, where the
//! request body comes from, where interim responses go and how the kept response
//! headers are written, is the [`Client`] the loop is given.
//!
//! Retries follow `core::retry`: a connect failure is always retried on another node
//! while the budget lasts; once the request was sent, only an idempotent request
//! without a body is sent again; a pooled connection that fails before any byte of a
//! response is retried on a new connection without using the budget, under the same
//! rule; a status in `retry_on_statuses` is retried when safe.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderName, HeaderValue};
use httparse::Status;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::balancer::{HashInput, Outcome, Pick, UpstreamPool};
use crate::core::head::{self, MAX_RESPONSE_HEAD_BYTES};
use crate::core::headers::{forwarded_back, nominated, tokens, upstream_host};
use crate::core::rate::{too_slow, Meter, MinRate};
use crate::core::refusal::Refusal;
use crate::core::retry::{AfterFailure, Attempts};

/// Idle connections kept per upstream address (as many as the gateway's Pingora
/// pool: one HTTP/2 client alone may have hundreds of requests in flight).
const IDLE_PER_ADDR: usize = 4096;
/// Reads from the node reserve this much room; body parts up to it are sent to an
/// HTTP/1 client in the same write as the head before them.
pub(super) const COALESCE: usize = 16 * 1024;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
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
    pub(super) fn refusal(&self) -> Refusal {
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
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the node closes the connection.
    Close,
}

/// A final or interim response head, its kept headers already written out.
pub(super) struct ResponseHead {
    pub status: u16,
    /// Bytes of the head in the upstream buffer.
    pub len: usize,
    pub framing: Framing,
    /// The node keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Where the kept headers of a response head go.
pub(super) enum HeadOut<'a> {
    /// An HTTP/1.1 head: status line, header lines, blank line.
    H1(&'a mut Vec<u8>),
    /// A header map (HTTP/2): connection-specific headers never go in it.
    H2(&'a mut HeaderMap),
}

/// The client side of an exchange.
pub(super) enum Client<'a> {
    Http1 {
        stream: &'a mut Stream,
        /// The client's minimum send rate (interim responses are written to it).
        meter: &'a mut Meter,
        /// Body bytes still to read from the connection (after those sent with the
        /// head).
        body_left: u64,
        body_buf: &'a mut BytesMut,
        body_rate: MinRate,
        head: &'a mut Vec<u8>,
    },
    Http2 {
        recv: &'a mut RecvStream,
        respond: &'a mut SendResponse<Bytes>,
        /// No Content-Length: the body goes upstream chunk-encoded.
        chunked: bool,
        body_rate: MinRate,
        max_body: u64,
        headers: &'a mut HeaderMap,
    },
}

impl Client<'_> {
    fn head_out(&mut self) -> HeadOut<'_> {
        match self {
            Client::Http1 { head, .. } => HeadOut::H1(head),
            Client::Http2 { headers, .. } => HeadOut::H2(headers),
        }
    }

    /// Sends what is left of the request body upstream, as it arrives.
    async fn send_body(
        &mut self,
        up: &mut TcpStream,
        write: Duration,
        scratch: &mut Vec<u8>,
    ) -> Result<(), SendError> {
        match self {
            Client::Http1 {
                stream,
                body_left,
                body_buf,
                body_rate,
                ..
            } => {
                // Only the time spent waiting on the client counts (core::rate).
                let mut meter = body_rate.meter();
                let mut remaining = *body_left;
                while remaining > 0 {
                    body_buf.clear();
                    body_buf.reserve(COALESCE);
                    // Never past the body: what follows is the next request.
                    let mut limited = (&mut **stream).take(remaining);
                    let read = limited.read_buf(body_buf);
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
                    upstream_write(up, &body_buf[..n], write).await?;
                    remaining -= n as u64;
                }
                Ok(())
            }
            Client::Http2 {
                recv,
                chunked,
                body_rate,
                max_body,
                ..
            } => {
                let mut meter = body_rate.meter();
                let mut total = 0u64;
                loop {
                    let until = meter.wait(tokio::time::Instant::now());
                    let data = match tokio::time::timeout_at(until, recv.data()).await {
                        Ok(None) => break,
                        Ok(Some(Ok(data))) => data,
                        Ok(Some(Err(_))) => return Err(SendError::Client),
                        Err(_) => {
                            tracing::debug!(error = %too_slow("sent the request body"), "request cut");
                            return Err(SendError::Client);
                        }
                    };
                    meter.moved(data.len(), tokio::time::Instant::now());
                    total += data.len() as u64;
                    if total > *max_body {
                        return Err(SendError::Client);
                    }
                    if data.is_empty() {
                        continue;
                    }
                    if *chunked {
                        use std::io::Write;
                        scratch.clear();
                        let _ = write!(scratch, "{:x}\r\n", data.len());
                        scratch.extend_from_slice(&data);
                        scratch.extend_from_slice(b"\r\n");
                        upstream_write(up, scratch, write).await?;
                    } else {
                        upstream_write(up, &data, write).await?;
                    }
                    let _ = recv.flow_control().release_capacity(data.len());
                }
                if *chunked {
                    upstream_write(up, b"0\r\n\r\n", write).await?;
                }
                Ok(())
            }
        }
    }

    /// Passes an interim (1xx) response on; false when the client is gone.
    async fn interim(&mut self, status: u16) -> bool {
        match self {
            Client::Http1 {
                stream,
                meter,
                head,
                ..
            } => super::write_all(stream, head, meter).await.is_ok(),
            Client::Http2 {
                respond, headers, ..
            } => {
                let mut response = http::Response::new(());
                *response.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::CONTINUE);
                *response.headers_mut() = std::mem::take(*headers);
                respond.send_informational(response).is_ok()
            }
        }
    }
}

/// What one request sends upstream: the request line, Host (per node, by
/// `pass_host`), the other header lines and the start of the body.
pub(super) struct Outgoing<'a> {
    pub pool: &'a Arc<UpstreamPool>,
    pub input: &'a HashInput<'a>,
    /// The request line, with its CRLF.
    pub line: &'a [u8],
    /// The Host the client sent, when `pass_host` keeps it.
    pub client_host: Option<&'a str>,
    /// A plugin's `Host` (proxy-rewrite): sent instead of the one `pass_host` picks.
    pub host_override: Option<&'a str>,
    /// The header lines after Host, with the blank line.
    pub rest: &'a [u8],
    /// Body bytes that came with the head.
    pub body_start: &'a [u8],
    pub replay_safe: bool,
    pub is_head: bool,
}

/// A response head from a node, its connection and the pick that chose it.
pub(super) struct Exchanged {
    pub up: TcpStream,
    pub pick: Pick,
    pub response: ResponseHead,
}

/// How an exchange that produced no response ended.
pub(super) enum Ended {
    /// The client went away or sent too little.
    Client,
    /// The gateway answers with this (the node failed, or none was there).
    Refused(Refusal),
}

pub(super) enum SendError {
    /// The client went away or sent too little.
    Client,
    Upstream(Failure),
}

/// The attempt loop: sends the request to a node and returns its final response
/// head (the kept headers written to the client's [`HeadOut`]), retrying by the
/// rules in the module docs. The response head's bytes are at the start of `up_buf`.
pub(super) async fn exchange(
    idle: &IdleConnections,
    req: &Outgoing<'_>,
    client: &mut Client<'_>,
    out: &mut Vec<u8>,
    up_buf: &mut BytesMut,
) -> Result<Exchanged, Ended> {
    let pool = req.pool;
    let mut attempts = Attempts::default();
    // After a pooled connection failed before any response byte: a new one.
    let mut fresh = false;
    loop {
        let Some(pick) = pool.pick(req.input, &attempts.tried) else {
            tracing::warn!(upstream = %pool.id, "no node with a known address");
            return Err(Ended::Refused(Refusal::BadGateway));
        };
        attempts.made += 1;
        let addr = pick.node().addr;
        let (mut up, reused) = match idle.connect(pool, addr, fresh).await {
            Ok(connected) => connected,
            Err(failure) => {
                pick.record(Outcome::Failed);
                tracing::warn!(upstream = %pool.id, node = %addr, error = %failure, "upstream connect failed");
                if attempts.may_try_another(pool, pick.index) {
                    attempts.failed_on(pick.index);
                    continue;
                }
                return Err(Ended::Refused(failure.refusal()));
            }
        };
        fresh = false;

        // Request head, Host by pass_host, and the start of the body.
        out.clear();
        out.extend_from_slice(req.line);
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(
            req.host_override
                .or_else(|| upstream_host(pool, &pick))
                .or(req.client_host)
                .unwrap_or("")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(req.rest);
        out.extend_from_slice(req.body_start);
        let sent = match upstream_write(&mut up, out, pool.timeouts.write).await {
            Ok(()) => client.send_body(&mut up, pool.timeouts.write, out).await,
            failed => failed,
        };
        // The response head, or why there is none: the failure, whether it came from
        // a stale pooled connection (the request never reached the node), and when.
        let response = match sent {
            Err(SendError::Client) => return Err(Ended::Client),
            // A write to a pooled connection fails at once when the node had closed
            // it; a timeout means it was there and did not take it.
            Err(SendError::Upstream(failure)) => {
                let stale = reused && !matches!(failure, Failure::Timeout);
                Err((failure, stale, "sending to the upstream failed"))
            }
            Ok(()) => {
                // 1xx heads are passed on as they come.
                up_buf.clear();
                loop {
                    let head =
                        read_response_head(&mut up, up_buf, pool, req.is_head, client.head_out())
                            .await;
                    match head {
                        Ok(interim) if interim.status < 200 => {
                            if !client.interim(interim.status).await {
                                return Err(Ended::Client);
                            }
                            up_buf.advance(interim.len);
                        }
                        Ok(response) => break Ok(response),
                        // Closed (or reset) before a byte of a response: a pooled
                        // connection the node had given up on.
                        Err(failure) => {
                            let stale =
                                reused && matches!(failure, Failure::Closed | Failure::Io(_));
                            break Err((failure, stale, "reading the upstream response failed"));
                        }
                    }
                }
            }
        };
        let response = match response {
            Ok(response) => response,
            Err((failure, stale, what)) => {
                match attempts.after_send_failure(pool, pick.index, req.replay_safe, stale) {
                    AfterFailure::NewConnection => {
                        fresh = true;
                        continue;
                    }
                    decision => {
                        pick.record(Outcome::Failed);
                        tracing::warn!(upstream = %pool.id, node = %addr, error = %failure, "{what}");
                        if decision == AfterFailure::AnotherNode {
                            continue;
                        }
                        return Err(Ended::Refused(failure.refusal()));
                    }
                }
            }
        };
        pick.record(Outcome::Status(response.status, pick.elapsed()));
        if pool.retries_on(response.status)
            && req.replay_safe
            && attempts.may_try_another(pool, pick.index)
        {
            // Nothing of this response reached the client: try another node.
            attempts.failed_on(pick.index);
            continue;
        }
        return Ok(Exchanged { up, pick, response });
    }
}

pub(super) async fn upstream_write(
    up: &mut TcpStream,
    data: &[u8],
    limit: Duration,
) -> Result<(), SendError> {
    match timeout(limit, up.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Upstream(Failure::Io(e))),
        Err(_) => Err(SendError::Upstream(Failure::Timeout)),
    }
}

/// Reads from the node into `buf` within the pool's read timeout; 0 at the end.
pub(super) async fn upstream_read(
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

/// Reads a response head from the node and writes what the client gets of it into
/// `out`: the status line (HTTP/1) and the headers minus hop-by-hop ones.
async fn read_response_head(
    up: &mut TcpStream,
    buf: &mut BytesMut,
    pool: &UpstreamPool,
    is_head: bool,
    mut out: HeadOut<'_>,
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
                Ok(Status::Complete(len)) => {
                    return rewrite_response(&resp, len, is_head, &mut out)
                }
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

/// Classifies a response head (status, framing, keep-alive) and writes the headers
/// the client gets into `out`.
pub(super) fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    len: usize,
    is_head: bool,
    out: &mut HeadOut<'_>,
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
    let h2 = matches!(out, HeadOut::H2(_));
    match out {
        HeadOut::H1(out) => {
            use std::io::Write;
            out.clear();
            let _ = write!(out, "HTTP/1.1 {status} ");
            out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        HeadOut::H2(map) => map.clear(),
    }
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // HTTP/2 frames the body itself: Transfer-Encoding never goes to its clients.
        let transfer_encoding = name.eq_ignore_ascii_case(b"transfer-encoding");
        if !forwarded_back(name, &listed)
            || (transfer_encoding && (h2 || framing == Framing::Close))
            || (both && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        match out {
            HeadOut::H1(out) => {
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
            HeadOut::H2(map) => {
                let unfolded: Vec<u8>;
                let value = if h.value.iter().any(|&b| b == b'\r' || b == b'\n') {
                    unfolded = h
                        .value
                        .iter()
                        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                        .collect();
                    &unfolded[..]
                } else {
                    h.value
                };
                let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                else {
                    return Err(Failure::BadResponse("header not valid in HTTP/2"));
                };
                map.append(name, value);
            }
        }
    }
    if let HeadOut::H1(out) = out {
        out.extend_from_slice(b"\r\n");
    }
    Ok(ResponseHead {
        status,
        len,
        framing,
        keep_alive,
    })
}

/// Idle upstream connections by node address.
#[derive(Default)]
pub(super) struct IdleConnections {
    by_addr: Mutex<HashMap<SocketAddr, VecDeque<(TcpStream, Instant)>>>,
}

impl IdleConnections {
    /// A pooled connection to `addr`, unless `fresh`, else a new one; true when
    /// pooled.
    pub(super) async fn connect(
        &self,
        pool: &UpstreamPool,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<(TcpStream, bool), Failure> {
        if !fresh {
            if let Some(conn) = self.take(addr) {
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

    /// Keeps a connection whose response ended cleanly for the next request.
    pub(super) fn put(&self, addr: SocketAddr, conn: TcpStream, idle: Duration) {
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
    fn responses_are_framed_and_cleaned() {
        /// Response head, HEAD request, framing and keep-alive (or an error), head sent
        /// to an HTTP/1.1 client, header names sent to an HTTP/2 one.
        type Case = (
            &'static [u8],
            bool,
            Result<(Framing, bool), ()>,
            &'static str,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
                false,
                Ok((Framing::Length(3), true)),
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                &["content-length"],
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
                false,
                Ok((Framing::Chunked, false)),
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &[],
            ),
            (
                b"HTTP/1.0 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
                false,
                Ok((Framing::Close, false)),
                "HTTP/1.1 200 OK\r\nX-Folded: a   b\r\n\r\n",
                &["x-folded"],
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                Ok((Framing::Empty, true)),
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                &["content-length"],
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\n\r\n",
                false,
                Ok((Framing::Empty, true)),
                "HTTP/1.1 304 Not Modified\r\n\r\n",
                &[],
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Ok((Framing::Chunked, false)),
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &[],
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false,
                Err(()),
                "",
                &[],
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
                false,
                Err(()),
                "",
                &[],
            ),
        ];
        for (raw, is_head, want, want_head, want_names) in cases {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = head::response_parser()
                .parse_response(&mut resp, raw)
                .unwrap();
            let Status::Complete(len) = parsed else {
                panic!("partial");
            };
            let mut out = Vec::new();
            let got = rewrite_response(&resp, len, *is_head, &mut HeadOut::H1(&mut out))
                .map(|h| (h.framing, h.keep_alive))
                .map_err(|_| ());
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(raw));
            if got.is_ok() {
                assert_eq!(String::from_utf8(out).unwrap(), *want_head);
            }
            let mut map = HeaderMap::new();
            let got = rewrite_response(&resp, len, *is_head, &mut HeadOut::H2(&mut map))
                .map(|h| (h.framing, h.keep_alive))
                .map_err(|_| ());
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(raw));
            let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, *want_names, "{}", String::from_utf8_lossy(raw));
        }
    }
}
