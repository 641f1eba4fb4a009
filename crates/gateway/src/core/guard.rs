//! The connection guard: the request core's admission rules and time limits applied
//! to the bytes Pingora's engine reads, so that what the fast path refuses Pingora
//! never sees either.
//!
//! [`Guard`] wraps the application serving the listeners (Pingora's HTTP app) and
//! each connection's stream in a `GuardStream`, which follows the HTTP/1.x exchange
//! from the bytes going through it:
//!
//! ```text
//! Idle --first byte--> Head: bytes held back until the head is complete, then checked
//!   by head::parse (the fast path's own parser): refused → the core's error response
//!   is written, the connection closed, Pingora sees nothing of the head; admitted →
//!   released to Pingora, and the body followed by its framing:
//! Body(n) / Chunked (head::parse's framing; chunks checked by chunked.rs) --end-->
//! AwaitResponse: bytes of a next (pipelined) request are held back until the final
//!   response head is written (Pingora serves one request at a time) --> Idle
//! a head asking for Upgrade --> UpgradePending: "HTTP/1.1 101" written --> Tunnel;
//!   another final response --> Idle (or closed, when bytes came meanwhile unchecked)
//! first bytes are the HTTP/2 preface --> H2 until the client's first SETTINGS frame
//!   --> Tunnel (HTTP/2 has its own handling: Pingora's h2_idle_timeout)
//! ```
//!
//! Time limits: a head must arrive in full within `header_read_timeout` of its first
//! byte (the slowloris defence nginx calls `client_header_timeout`), and so must the
//! HTTP/2 preface and first SETTINGS frame; the first head of a plaintext connection,
//! and the preface of an ALPN h2 one, from the connection's start. Request bodies
//! and writes to the client are held to their minimum rates (`rate.rs`): only the
//! time spent waiting on the client counts. Between requests (`Idle`) only Pingora's
//! keep-alive timeout applies.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::chunked::ChunkedScanner;
use super::end::request_ended;
use super::head::{self, BodyFraming, Limits, H2_PREFACE};
use super::load::Load;
use super::rate::{too_slow, Meter, MinRate};
use super::refusal::Refusal;
use crate::settings::HttpSettings;

/// HTTP/2 frame header length, and the SETTINGS frame type.
const H2_FRAME_HEADER: usize = 9;
const H2_SETTINGS: u8 = 0x4;
/// Largest first SETTINGS frame accepted while its deadline runs (RFC 9113's default
/// SETTINGS_MAX_FRAME_SIZE).
const H2_MAX_FIRST_FRAME: usize = 16_384;

/// A [`ServerApp`] that guards every connection (see the module docs), then hands it
/// to `inner`.
pub struct Guard<A> {
    inner: Arc<A>,
    rules: Arc<Rules>,
}

/// What the guard enforces, from the node's settings, and where the requests it
/// answers itself end.
#[derive(Debug, Clone)]
struct Rules {
    head_timeout: Duration,
    limits: Limits,
    body_rate: MinRate,
    send_rate: MinRate,
    /// A head refused before Pingora saw it ends here (`core::end`); every other
    /// request ends in Pingora's adapter.
    load: Arc<Load>,
}

impl<A> Guard<A> {
    /// Serves connections with `inner` under the node's limits and timeouts; the
    /// heads it refuses are counted in `load`. A zero `header_read_timeout` cuts every
    /// head that needs a second read.
    pub fn new(inner: A, settings: &HttpSettings, load: Arc<Load>) -> Self {
        Self {
            inner: Arc::new(inner),
            rules: Arc::new(Rules {
                head_timeout: settings.header_read_timeout,
                limits: Limits::of(settings),
                body_rate: settings.body_rate,
                send_rate: settings.send_rate,
                load,
            }),
        }
    }

    /// Serves a connection whose first bytes, `prefix`, were read already (by the
    /// fast path, which hands over what it does not serve): they are checked like any
    /// other bytes, before the rest of the stream. The head deadline starts again at
    /// the hand-over.
    pub async fn process_with_prefix(
        self: &Arc<Self>,
        stream: Stream,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream>
    where
        A: ServerApp + Send + Sync + 'static,
    {
        let stream = self.wrap(stream, prefix);
        self.inner.process_new(stream, shutdown).await
    }

    /// The stream as the guard checks it, `prefix` (bytes read already) first: for an
    /// engine that serves the connection itself (the fast path's HTTP/2), so the
    /// preface deadline and the client's minimum send rate are the ones Pingora's
    /// connections get.
    pub fn wrap(&self, stream: Stream, prefix: BytesMut) -> Stream {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut stream = GuardStream::new(stream, self.rules.clone(), h2);
        stream.raw = prefix;
        Box::new(stream)
    }

    /// The application this one hands connections to.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

#[async_trait]
impl<A> ServerApp for Guard<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A stream handed back for reuse is already wrapped.
        let stream = if stream.as_any().is::<GuardStream>() {
            stream
        } else {
            self.wrap(stream, BytesMut::new())
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests: no deadline of ours.
    Idle,
    /// Part of a request head read (held back); the deadline runs.
    Head,
    /// Body bytes left of a Content-Length body.
    Body(u64),
    /// A chunked body (see `chunks`).
    Chunked,
    /// The request is read; what follows waits for the response head.
    AwaitResponse,
    /// An upgrade was asked for; bytes pass unchecked until the response says.
    UpgradePending,
    /// The HTTP/2 preface and first frame are being read (held back).
    H2,
    /// Upgraded or HTTP/2: bytes are no longer HTTP/1.x requests.
    Tunnel,
    /// Refused: the refusal is being written, then reads fail.
    Refused,
    /// Reads end (EOF): the connection must not carry another request.
    Done,
}

/// Line ends at the end of the head bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Eol {
    #[default]
    None,
    /// Ends with `\n`.
    Lf,
    /// Ends with `\n\r`.
    LfCr,
}

/// Finds the blank line ending a request head across reads, as httparse does: a line
/// end (`\n`, optionally after `\r`) followed by `\r\n` or `\n`, blank lines before
/// the request line not counting. (Bare LFs are then refused by `head::parse`; they
/// must still end the head here, or such a head would wait for its deadline.)
#[derive(Debug, Default)]
struct HeadScan {
    /// Whether a byte other than CR/LF has been read (httparse skips leading blank lines).
    started: bool,
    eol: Eol,
}

impl HeadScan {
    /// Feeds the next bytes of a head; `Some(n)`: the head ends after `data[..n]`.
    fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let mut offset = 0;
        let mut data = data;
        if !self.started {
            match data.iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(i) => {
                    self.started = true;
                    offset = i;
                    data = &data[i..];
                }
                None => return None,
            }
        }
        for i in memchr::memchr_iter(b'\n', data) {
            let ended = match &data[..i] {
                [.., b'\n'] | [.., b'\n', b'\r'] => true,
                [b'\r'] => self.eol == Eol::Lf,
                [] => self.eol != Eol::None,
                _ => false,
            };
            if ended {
                return Some(offset + i + 1);
            }
        }
        self.eol = match data {
            [.., b'\n'] => Eol::Lf,
            [.., b'\n', b'\r'] => Eol::LfCr,
            [b'\r'] if self.eol == Eol::Lf => Eol::LfCr,
            _ => Eol::None,
        };
        None
    }
}

/// The status of a response head starting `data` (`HTTP/1.x NNN`), if it does.
fn response_status(data: &[u8]) -> Option<u16> {
    match data.strip_prefix(b"HTTP/1.")? {
        [minor, b' ', a, b, c, ..]
            if minor.is_ascii_digit()
                && a.is_ascii_digit()
                && b.is_ascii_digit()
                && c.is_ascii_digit() =>
        {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fn timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("request head not received within {timeout:?}"),
    )
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "request refused by the gateway")
}

/// A connection's stream under the guard (see the module docs).
struct GuardStream {
    inner: Stream,
    rules: Arc<Rules>,
    state: State,
    /// The head deadline, while a head (or the HTTP/2 preface) is awaited.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The minimum-rate timer of body reads, and of writes.
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    body_meter: Option<Meter>,
    send_meter: Meter,
    scan: HeadScan,
    chunks: ChunkedScanner,
    /// Whether the connection's first bytes may still be the HTTP/2 preface.
    preface_possible: bool,
    /// Bytes read from `inner` (or handed over) and not yet checked.
    raw: BytesMut,
    /// Bytes of a head being read (held back), or of the HTTP/2 preface.
    held: BytesMut,
    /// Checked bytes Pingora has yet to read.
    out: BytesMut,
    /// The refusal being written, and how much of it went out.
    refusal: Vec<u8>,
    refusal_sent: usize,
    /// Bytes passed unchecked while an upgrade was pending.
    unchecked: bool,
    /// The request being read asked for an upgrade (pending once its body is read).
    upgrade: bool,
    /// TLS chose h2 (no HTTP/1 can follow).
    alpn_h2: bool,
    /// A head was admitted into `out` by the bytes being checked now (`out` is empty
    /// when a check starts): the engine has not read it yet.
    head_queued: bool,
    /// Where reads from the socket land before they are checked.
    scratch: Vec<u8>,
}

impl GuardStream {
    fn new(inner: Stream, rules: Arc<Rules>, alpn_h2: bool) -> Self {
        let mut stream = Self {
            inner,
            state: State::Idle,
            deadline: None,
            read_timer: None,
            write_timer: None,
            body_meter: None,
            send_meter: rules.send_rate.meter(),
            rules,
            scan: HeadScan::default(),
            chunks: ChunkedScanner::default(),
            preface_possible: true,
            raw: BytesMut::new(),
            held: BytesMut::new(),
            out: BytesMut::new(),
            refusal: Vec::new(),
            refusal_sent: 0,
            unchecked: false,
            upgrade: false,
            alpn_h2,
            head_queued: false,
            scratch: Vec::new(),
        };
        if alpn_h2 {
            // TLS chose h2: the preface must come, within the deadline.
            stream.state = State::H2;
            stream.arm();
        }
        stream
    }

    fn arm(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.rules.head_timeout)));
        }
    }

    /// Checks `data` (just read) and queues what Pingora may read in `out`.
    fn process(&mut self, mut data: &[u8]) -> Result<(), Option<Refusal>> {
        while !data.is_empty() {
            match self.state {
                State::Idle => {
                    if self.preface_possible {
                        let n = data.len().min(H2_PREFACE.len());
                        if data[..n] == H2_PREFACE[..n] {
                            self.state = State::H2;
                            self.arm();
                            continue;
                        }
                        self.preface_possible = false;
                    }
                    self.state = State::Head;
                    self.scan = HeadScan::default();
                    self.arm();
                }
                State::H2 => {
                    self.held.extend_from_slice(data);
                    return self.h2_start();
                }
                State::Head => {
                    self.preface_possible = false;
                    let Some(end) = self.scan.feed(data) else {
                        self.held.extend_from_slice(data);
                        return self.check_partial();
                    };
                    self.held.extend_from_slice(&data[..end]);
                    data = &data[end..];
                    self.admit()?;
                }
                State::Body(left) => {
                    let take = (left.min(data.len() as u64)) as usize;
                    self.out.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if left == take as u64 {
                        self.body_done();
                    } else {
                        self.state = State::Body(left - take as u64);
                    }
                }
                State::Chunked => match self.chunks.feed(data) {
                    Ok(Some(end)) => {
                        self.out.extend_from_slice(&data[..end]);
                        data = &data[end..];
                        self.body_done();
                    }
                    Ok(None) => {
                        self.out.extend_from_slice(data);
                        return Ok(());
                    }
                    Err(_) => return Err(Some(Refusal::BadRequest)),
                },
                State::AwaitResponse => {
                    // Kept for after the response (see poll_read).
                    self.raw.extend_from_slice(data);
                    return Ok(());
                }
                State::UpgradePending => {
                    self.unchecked = true;
                    self.out.extend_from_slice(data);
                    return Ok(());
                }
                State::Tunnel => {
                    self.out.extend_from_slice(data);
                    return Ok(());
                }
                State::Refused | State::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// A partial head already over the size limits, or already broken, is refused
    /// before it ends.
    fn check_partial(&self) -> Result<(), Option<Refusal>> {
        let mut storage = head::header_storage();
        head::parse(&self.held, &mut storage, self.rules.limits)
            .map(|_| ())
            .map_err(Some)
    }

    /// The head in `held` is complete: check it, release it, follow its body.
    fn admit(&mut self) -> Result<(), Option<Refusal>> {
        let mut storage = head::header_storage();
        let (framing, upgrade) = match head::parse(&self.held, &mut storage, self.rules.limits) {
            Ok(Some((head, _))) => (head.framing, head.upgrade),
            Ok(None) => return Err(Some(Refusal::BadRequest)),
            Err(refusal) => return Err(Some(refusal)),
        };
        self.deadline = None;
        self.out.extend_from_slice(&self.held);
        self.head_queued = true;
        self.held.clear();
        self.upgrade = upgrade;
        self.body_meter = Some(self.rules.body_rate.meter());
        match framing {
            BodyFraming::Length(0) => self.body_done(),
            BodyFraming::Length(n) => self.state = State::Body(n),
            BodyFraming::Chunked => {
                self.chunks = ChunkedScanner::default();
                self.state = State::Chunked;
            }
        }
        Ok(())
    }

    /// The body ended: the next head, or the upgrade's answer.
    fn body_done(&mut self) {
        self.body_meter = None;
        self.read_timer = None;
        self.state = if self.upgrade {
            State::UpgradePending
        } else {
            State::AwaitResponse
        };
    }

    /// The HTTP/2 preface and the first frame, a SETTINGS frame, held until complete.
    fn h2_start(&mut self) -> Result<(), Option<Refusal>> {
        let held = &self.held[..];
        let n = held.len().min(H2_PREFACE.len());
        if held[..n] != H2_PREFACE[..n] {
            if self.alpn_h2 {
                return Err(None);
            }
            // Began like the preface (`P`, `PRI`…) but is an HTTP/1 head after all.
            let held = std::mem::take(&mut self.held);
            self.preface_possible = false;
            self.state = State::Head;
            self.scan = HeadScan::default();
            return self.process(&held);
        }
        let header_end = H2_PREFACE.len() + H2_FRAME_HEADER;
        if held.len() < header_end {
            return Ok(());
        }
        let header = &held[H2_PREFACE.len()..header_end];
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        if header[3] != H2_SETTINGS || length > H2_MAX_FIRST_FRAME {
            return Err(None);
        }
        if held.len() < header_end + length {
            return Ok(());
        }
        self.deadline = None;
        self.state = State::Tunnel;
        let held = std::mem::take(&mut self.held);
        self.out.extend_from_slice(&held);
        Ok(())
    }

    fn refuse(&mut self, refusal: Option<Refusal>) {
        // A head refused, or one refused with its body before Pingora read it, never
        // reached Pingora: its request ends here. A body refused once Pingora has its
        // head belongs to a request Pingora is serving, which ends there.
        let unseen =
            matches!(self.state, State::Idle | State::Head | State::H2) || self.head_queued;
        if let (true, Some(refusal)) = (unseen, &refusal) {
            request_ended(&self.rules.load, refusal.status(), None);
        }
        self.state = State::Refused;
        self.deadline = None;
        self.read_timer = None;
        self.held.clear();
        self.out.clear();
        self.raw.clear();
        if let Some(refusal) = refusal {
            tracing::debug!(status = refusal.status(), "request refused before Pingora");
            self.refusal = refusal.to_h1();
        }
    }

    /// `head` is the start of what is being written.
    fn on_write(&mut self, head: &[u8]) {
        if self.state == State::AwaitResponse {
            if response_status(head).is_some_and(|s| s >= 200) {
                self.state = State::Idle;
            }
            return;
        }
        if self.state != State::UpgradePending {
            return;
        }
        match response_status(head) {
            Some(101) => self.state = State::Tunnel,
            Some(status) if status >= 200 => {
                self.state = if self.unchecked {
                    State::Done
                } else {
                    State::Idle
                }
            }
            _ => {}
        }
    }

    /// Polls the deadline and the body's rate timer; `Err` once one ran out.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Err(timed_out(self.rules.head_timeout));
            }
        }
        if let Some(meter) = self.body_meter.as_mut() {
            let until = meter.wait(Instant::now());
            let timer = self
                .read_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if timer.deadline() != until {
                timer.as_mut().reset(until);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Err(too_slow("sent the request body"));
            }
        }
        Ok(())
    }

    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.refusal_sent < self.refusal.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.refusal[self.refusal_sent..])
            )?;
            if n == 0 {
                break;
            }
            self.refusal_sent += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Err(refused()))
    }
}

impl fmt::Debug for GuardStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardStream")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for GuardStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Refused => return this.poll_refusal(cx),
                State::Done => return Poll::Ready(Ok(())),
                State::AwaitResponse => return this.poll_await_response(cx),
                // Nothing to check: straight from the socket.
                State::Tunnel if this.raw.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf)
                }
                _ => {}
            }
            if !this.raw.is_empty() {
                let raw = std::mem::take(&mut this.raw);
                this.head_queued = false;
                if let Err(refusal) = this.process(&raw) {
                    this.refuse(refusal);
                }
                continue;
            }
            // Polled first so that their wakers are registered while the read is
            // pending: a client sending nothing more is still cut off.
            this.poll_timers(cx)?;
            if this.scratch.is_empty() {
                this.scratch = vec![0; 16 * 1024];
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            this.raw.extend_from_slice(read.filled());
            if let Some(meter) = this.body_meter.as_mut() {
                meter.moved(n, Instant::now());
            }
            if n == 0 {
                // The client closed; what was held back is not a request.
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for GuardStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state == State::Refused {
            // Whatever Pingora answers after a refusal is not sent.
            return Poll::Ready(Ok(buf.len()));
        }
        let written = match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => result?,
            Poll::Pending => return this.write_pending(cx),
        };
        this.write_done(written);
        if written > 0 {
            this.on_write(buf);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state == State::Refused {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let written = match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => result?,
            Poll::Pending => return this.write_pending(cx),
        };
        this.write_done(written);
        if written > 0 && matches!(this.state, State::UpgradePending | State::AwaitResponse) {
            // Enough of the start to see a status line.
            let mut head = [0u8; 12];
            let mut len = 0;
            for b in bufs {
                let take = (head.len() - len).min(b.len());
                head[len..len + take].copy_from_slice(&b[..take]);
                len += take;
                if len == head.len() {
                    break;
                }
            }
            this.on_write(&head[..len]);
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => {
                this.write_done(0);
                Poll::Ready(result)
            }
            Poll::Pending => this.write_pending::<()>(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl GuardStream {
    /// A read while the response is awaited (Pingora watches for the client going
    /// away): the end of the stream is passed on; bytes of a next request are kept
    /// for after the response, and the read stays pending.
    fn poll_await_response(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.raw.is_empty() {
            return Poll::Pending;
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; 16 * 1024];
        }
        let mut read = ReadBuf::new(&mut self.scratch);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        if read.filled().is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.raw.extend_from_slice(read.filled());
        Poll::Pending
    }

    /// A write waits on the client: fails once the send rate's budget is spent.
    fn write_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let until = self.send_meter.wait(Instant::now());
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if timer.deadline() != until {
            timer.as_mut().reset(until);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(too_slow("took the response")));
        }
        Poll::Pending
    }

    fn write_done(&mut self, written: usize) {
        self.send_meter.moved(written, Instant::now());
    }
}

#[async_trait]
impl Shutdown for GuardStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for GuardStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

#[async_trait]
impl Peek for GuardStream {
    /// Pingora's probe for the h2c preface at the start of a plaintext connection: the
    /// bytes are kept for the reads that follow, and the probe is bounded by the head
    /// deadline, which then keeps running for the first head.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.state == State::Idle {
            self.arm();
        }
        let timeout = self.rules.head_timeout;
        let Self {
            inner,
            deadline,
            raw,
            ..
        } = self;
        let fill = async {
            while raw.len() < buf.len() {
                if inner.read_buf(raw).await? == 0 {
                    return Ok(false);
                }
            }
            buf.copy_from_slice(&raw[..buf.len()]);
            Ok(true)
        };
        match deadline.as_mut() {
            Some(deadline) => tokio::select! {
                biased;
                peeked = fill => peeked,
                () = deadline.as_mut() => Err(timed_out(timeout)),
            },
            None => fill.await,
        }
    }
}
