//! A total deadline for receiving an HTTP/1.x request head: the slowloris defence
//! nginx calls `client_header_timeout`.
//!
//! Pingora only times each read of a request head (60 s by the keep-alive timeout), so
//! a client sending one header byte every 59 s holds a connection forever. On plaintext
//! (h2c enabled) it does not even time the read of its HTTP/2 preface probe, so a
//! client that connects and sends nothing is held forever too.
//!
//! [`HeadDeadline`] wraps the application serving the listeners and wraps each
//! connection's stream in a `DeadlineStream`, which follows the HTTP/1.x exchange from
//! the bytes going through it:
//!
//! ```text
//! Idle  --first byte read-->  Head  --blank line ending the head read-->  Body
//!  ^                                                                        |
//!  +---- final (non-1xx) response head written (from Head too: errors) -----+
//! Body  --"HTTP/1.x 101" written-->  Tunnel (WebSocket and other upgrades; forever)
//! first bytes read are the HTTP/2 preface  -->  Tunnel (HTTP/2 has its own handling)
//! ```
//!
//! In `Head` a read fails with [`io::ErrorKind::TimedOut`] once the deadline (first
//! byte + timeout) has passed, also when the client sends nothing more: Pingora then
//! closes the connection without a response (nginx does the same). Between requests
//! (`Idle`) only Pingora's keep-alive timeout applies. The probe for the HTTP/2
//! preface at the start of a plaintext connection is bounded by the same deadline,
//! which then also covers the first request's head. Connections whose TLS handshake
//! selected h2 are not wrapped. Only writes in `Head` and `Body` are looked at, so a
//! response body that starts like a status line is never taken for one.
//!
//! Limits of reading the exchange from the bytes: when the response head goes out
//! before the request body has been read in full (an upstream answering early), the
//! rest of that body is read as if it were the next head and must arrive within the
//! timeout. Pingora closes such a connection after the response (its default
//! `close_on_response_before_downstream_finish`, kept here), so no request follows on
//! it. With HTTP/1.1 pipelining (off in Pingora unless enabled; not enabled here),
//! bytes of a next head read along with the previous request would not be scanned.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4): the first bytes of an
/// h2c connection with prior knowledge. As an HTTP/1 request line it is refused (400).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// A [`ServerApp`] that gives every HTTP/1.x request head on its connections a total
/// deadline, then hands the connection to `inner`.
pub struct HeadDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> HeadDeadline<A> {
    /// Serves connections with `inner`; each request head must arrive within `timeout`
    /// of its first byte. A zero `timeout` cuts every head that needs a second read.
    pub fn new(inner: A, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            timeout,
        }
    }

    /// Serves a connection whose first bytes, `prefix`, were read already (by the
    /// fast path, which hands over what it does not serve): they are read again, and
    /// scanned like any other bytes, before the rest of the stream. The head deadline
    /// starts again at the hand-over.
    pub async fn process_with_prefix(
        self: &Arc<Self>,
        stream: Stream,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream>
    where
        A: ServerApp + Send + Sync + 'static,
    {
        let mut stream = DeadlineStream::new(stream, self.timeout);
        stream.prefix = prefix;
        self.inner.process_new(Box::new(stream), shutdown).await
    }

    /// The application this one hands connections to.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

#[async_trait]
impl<A> ServerApp for HeadDeadline<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A stream handed back for reuse is already wrapped (Pingora's HTTP app keeps
        // a kept-alive connection inside one `process_new`, but a reused one would
        // come back here). h2 over TLS: HTTP/2 has its own handling.
        let stream = if stream.as_any().is::<DeadlineStream>()
            || matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
        {
            stream
        } else {
            Box::new(DeadlineStream::new(stream, self.timeout))
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
    /// Part of a request head read; the deadline runs.
    Head,
    /// The head is complete: request body, response.
    Body,
    /// Upgraded or HTTP/2: bytes are no longer HTTP/1.x requests.
    Tunnel,
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
/// the request line not counting.
#[derive(Debug, Default)]
struct HeadScan {
    /// Whether a byte other than CR/LF has been read (httparse skips leading blank lines).
    started: bool,
    eol: Eol,
}

impl HeadScan {
    /// Feeds the next bytes of a head; true once the head is complete.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        if !self.started {
            match data.iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(i) => {
                    self.started = true;
                    data = &data[i..];
                }
                None => return false,
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
                return true;
            }
        }
        self.eol = match data {
            [.., b'\n'] => Eol::Lf,
            [.., b'\n', b'\r'] => Eol::LfCr,
            [b'\r'] if self.eol == Eol::Lf => Eol::LfCr,
            _ => Eol::None,
        };
        false
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

/// A connection's stream that fails reads once a request head has taken longer than
/// the timeout (see the module docs). Everything else goes to `inner` unchanged.
struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    state: State,
    /// Set while a head is awaited (`Head`, or `Idle` during the preface probe).
    deadline: Option<Pin<Box<Sleep>>>,
    scan: HeadScan,
    /// How much of [`H2_PREFACE_START`] the connection's first bytes matched; `None`
    /// once they did not, or once the first head is complete.
    preface: Option<usize>,
    /// Bytes read from `inner` before this stream was made (or by a peek), served
    /// before anything else.
    prefix: BytesMut,
}

impl DeadlineStream {
    fn new(inner: Stream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            state: State::Idle,
            deadline: None,
            scan: HeadScan::default(),
            preface: Some(0),
            prefix: BytesMut::new(),
        }
    }

    fn arm(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
        }
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        if state != State::Head {
            self.deadline = None;
        }
        // Past the connection's first head (or given up on it).
        self.preface = None;
        self.scan = HeadScan::default();
    }

    fn on_read(&mut self, data: &[u8]) {
        if let Some(matched) = self.preface {
            let want = &H2_PREFACE_START[matched..];
            let n = want.len().min(data.len());
            if data[..n] != want[..n] {
                self.preface = None;
            } else if matched + n == H2_PREFACE_START.len() {
                self.enter(State::Tunnel);
                return;
            } else {
                self.preface = Some(matched + n);
            }
        }
        match self.state {
            State::Idle => {
                self.state = State::Head;
                if self.scan.feed(data) {
                    self.enter(State::Body);
                } else {
                    self.arm();
                }
            }
            State::Head => {
                if self.scan.feed(data) {
                    self.enter(State::Body);
                }
            }
            State::Body | State::Tunnel => {}
        }
    }

    /// `head` is the start of what is being written.
    fn on_write(&mut self, head: &[u8]) {
        if !matches!(self.state, State::Head | State::Body) {
            return;
        }
        match response_status(head) {
            Some(101) if self.state == State::Body => self.enter(State::Tunnel),
            Some(status) if status >= 200 => self.enter(State::Idle),
            _ => {}
        }
    }
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Polled first so that its waker is registered while the read is pending: a
        // client sending nothing more is still cut off at the deadline.
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out(this.timeout)));
            }
        }
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
        } else {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        let read = &buf.filled()[before..];
        if !read.is_empty() && this.state != State::Tunnel {
            this.on_read(read);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
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
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if written > 0 && matches!(this.state, State::Head | State::Body) {
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
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
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

impl GetTimingDigest for DeadlineStream {
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

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    /// Pingora's probe for the h2c preface: it reads nothing as far as the state goes
    /// (the bytes are read again), but at the start of a connection it is bounded by
    /// the head deadline, which then keeps running for the first head.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.prefix.is_empty() && self.state != State::Idle {
            return self.inner.try_peek(buf).await;
        }
        if self.state == State::Idle {
            self.arm();
        }
        let timeout = self.timeout;
        let Self {
            inner,
            deadline,
            prefix,
            ..
        } = self;
        if !prefix.is_empty() {
            // Read what is missing into the prefix, where the next reads find it.
            let fill = async {
                while prefix.len() < buf.len() {
                    if inner.read_buf(prefix).await? == 0 {
                        return Ok(false);
                    }
                }
                buf.copy_from_slice(&prefix[..buf.len()]);
                Ok(true)
            };
            return match deadline.as_mut() {
                Some(deadline) => tokio::select! {
                    biased;
                    peeked = fill => peeked,
                    () = deadline.as_mut() => Err(timed_out(timeout)),
                },
                None => fill.await,
            };
        }
        let Some(deadline) = deadline.as_mut() else {
            return inner.try_peek(buf).await;
        };
        tokio::select! {
            biased;
            peeked = inner.try_peek(buf) => peeked,
            () = deadline.as_mut() => Err(timed_out(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const TIMEOUT: Duration = Duration::from_millis(200);

    /// The gateway's side (wrapped) and the client's side of a connection.
    fn pair() -> (DeadlineStream, DuplexStream) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        (DeadlineStream::new(Box::new(server), TIMEOUT), client)
    }

    /// Reads what is there (one read).
    async fn read(stream: &mut DeadlineStream) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads until the head is complete as the stream sees it, or an error.
    async fn read_head(stream: &mut DeadlineStream) -> io::Result<Vec<u8>> {
        let mut head = Vec::new();
        while stream.state != State::Body {
            let got = read(stream).await?;
            assert!(!got.is_empty(), "closed");
            head.extend_from_slice(&got);
        }
        Ok(head)
    }

    /// Sends `bytes` one at a time, `gap` apart.
    /// `err` is the deadline's, and came `TIMEOUT` (plus at most `slack`) after `start`.
    fn assert_cut_at_deadline(err: &io::Error, start: tokio::time::Instant, slack: Duration) {
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let took = start.elapsed();
        assert!(took >= TIMEOUT && took < TIMEOUT + slack, "{took:?}");
    }

    fn dribble(mut client: DuplexStream, bytes: &'static [u8], gap: Duration) {
        tokio::spawn(async move {
            for b in bytes {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
            // Keep the connection open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let cases: &[(&[&[u8]], bool)] = &[
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], true),
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"], true),
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n"], false),
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n\r"], false),
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"\n"], true),
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\n"], true),
            (&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\n"], true),
            (&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"x", b"\n"], false),
            (&[b"GET / HTTP/1.1\nHost: a\n\n"], true),
            (&[b"GET / HTTP/1.1\nHost: a\n", b"\n"], true),
            (&[b"GET / HTTP/1.1\nHost: a\n\r\n"], true),
            (&[b"GET / HTTP/1.1\r\n", b"\r\n"], true),
            (&[b"GET / HTTP/1.1\r\nx: \r\r\n"], false),
            // Blank lines before the request line are skipped, not the end of a head.
            (&[b"\r\n\r\n\r\n"], false),
            (&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n"], false),
            (&[b"\r\n", b"\n\nGET / HTTP/1.1\r\n", b"\r\n"], true),
        ];
        for (reads, complete) in cases {
            let mut scan = HeadScan::default();
            let mut done = false;
            for r in *reads {
                done = scan.feed(r);
                if done {
                    break;
                }
            }
            assert_eq!(done, *complete, "{reads:?}");
        }
        // Byte by byte is the same as all at once.
        let head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Long: abc\r\n\r\n";
        let mut scan = HeadScan::default();
        let ended: Vec<bool> = head.iter().map(|b| scan.feed(&[*b])).collect();
        assert_eq!(ended.iter().position(|e| *e), Some(head.len() - 1));
    }

    #[test]
    fn response_statuses_are_read_from_the_start_of_a_write() {
        assert_eq!(response_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(response_status(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(response_status(b"HTTP/1.1 101"), Some(101));
        assert_eq!(response_status(b"HTTP/1.1 10"), None);
        assert_eq!(response_status(b"HTTP/2 200"), None);
        assert_eq!(response_status(b"hello"), None);
        assert_eq!(response_status(b"HTTP/1.1 2x0"), None);
    }

    #[tokio::test]
    async fn a_head_within_the_deadline_passes() {
        tokio::time::pause();
        let (mut stream, client) = pair();
        // 18 bytes 9 ms apart: about 160 ms, under 200.
        dribble(client, b"GET / HTTP/1.1\r\n\r\n", Duration::from_millis(9));
        let head = read_head(&mut stream).await.unwrap();
        assert_eq!(head, b"GET / HTTP/1.1\r\n\r\n");
        assert!(stream.deadline.is_none());
    }

    #[tokio::test]
    async fn a_head_dribbled_past_the_deadline_is_cut() {
        tokio::time::pause();
        let (mut stream, client) = pair();
        // Every byte well within any per-read timeout, the whole head not.
        let start = tokio::time::Instant::now();
        dribble(
            client,
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            Duration::from_millis(20),
        );
        let err = read_head(&mut stream).await.unwrap_err();
        assert!(err.to_string().contains("request head"), "{err}");
        // The deadline counts from the first byte.
        assert_cut_at_deadline(&err, start, Duration::from_millis(25));
    }

    #[tokio::test]
    async fn a_client_that_stops_sending_is_cut_at_the_deadline() {
        tokio::time::pause();
        let (mut stream, mut client) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let start = tokio::time::Instant::now();
        // The read is pending on the client; only the deadline can end it.
        let err = read_head(&mut stream).await.unwrap_err();
        assert_cut_at_deadline(&err, start, Duration::from_millis(5));
        drop(client);
    }

    #[tokio::test]
    async fn a_response_gives_the_next_head_a_fresh_deadline() {
        tokio::time::pause();
        let (mut stream, mut client) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\n")
            .await
            .unwrap();
        read_head(&mut stream).await.unwrap();
        // A slow body is not the head's business.
        tokio::time::sleep(TIMEOUT * 3).await;
        client.write_all(b"abc").await.unwrap();
        assert_eq!(read(&mut stream).await.unwrap(), b"abc");
        assert_eq!(stream.state, State::Body);

        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(stream.state, State::Idle);
        // Idle between requests for longer than the timeout: not ours to cut.
        tokio::time::sleep(TIMEOUT * 3).await;
        client.write_all(b"GET /2 HTTP/1.1\r\n").await.unwrap();
        read(&mut stream).await.unwrap();
        assert_eq!(stream.state, State::Head);
        tokio::time::sleep(TIMEOUT / 2).await;
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        read_head(&mut stream).await.unwrap();

        // The third head dribbles past its own deadline.
        stream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(stream.state, State::Idle);
        client.write_all(b"GET /3 HTTP/1.1\r\n").await.unwrap();
        let start = tokio::time::Instant::now();
        let err = read_head(&mut stream).await.unwrap_err();
        assert_cut_at_deadline(&err, start, Duration::from_millis(5));
    }

    #[tokio::test]
    async fn continue_keeps_the_body_and_switching_protocols_ends_deadlines() {
        tokio::time::pause();
        let (mut stream, mut client) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n")
            .await
            .unwrap();
        read_head(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(stream.state, State::Body);
        tokio::time::sleep(TIMEOUT * 3).await;
        client.write_all(b"a").await.unwrap();
        assert_eq!(read(&mut stream).await.unwrap(), b"a");
        assert_eq!(stream.state, State::Body);
        // A response body that looks like a status line is only body.
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(stream.state, State::Idle);
        stream.write_all(b"HTTP/1.1 101").await.unwrap();
        assert_eq!(stream.state, State::Idle);

        client
            .write_all(b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        read_head(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(stream.state, State::Tunnel);
        // Frames that look like heads, slowly: never cut.
        for chunk in [&b"GET / HTTP/1.1\r\n"[..], b"x", b"y"] {
            tokio::time::sleep(TIMEOUT * 2).await;
            client.write_all(chunk).await.unwrap();
            assert_eq!(read(&mut stream).await.unwrap(), chunk);
        }
        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert_eq!(stream.state, State::Tunnel);
        assert!(stream.deadline.is_none());
    }

    #[tokio::test]
    async fn the_http2_preface_ends_deadlines() {
        tokio::time::pause();
        let (mut stream, mut client) = pair();
        // Split inside the preface.
        client.write_all(b"PRI * HT").await.unwrap();
        assert_eq!(read(&mut stream).await.unwrap(), b"PRI * HT");
        assert_eq!(stream.state, State::Head);
        client.write_all(b"TP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        read(&mut stream).await.unwrap();
        assert_eq!(stream.state, State::Tunnel);
        tokio::time::sleep(TIMEOUT * 3).await;
        client.write_all(b"\0\0\0\x04").await.unwrap();
        assert_eq!(read(&mut stream).await.unwrap(), b"\0\0\0\x04");

        // Only as the connection's first bytes, and only the whole of it.
        let (mut stream, mut client) = pair();
        client.write_all(b"PRX * HTTP/2.0\r\n").await.unwrap();
        read(&mut stream).await.unwrap();
        assert_eq!(stream.state, State::Head);
        let (mut stream, mut client) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        read_head(&mut stream).await.unwrap();
        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        read(&mut stream).await.unwrap();
        assert_eq!(stream.state, State::Head);
    }

    #[tokio::test]
    async fn peeking_bounds_the_first_head_without_reading_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        let mut stream = DeadlineStream::new(server, TIMEOUT);

        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let mut peeked = [0u8; 24];
        assert!(stream.try_peek(&mut peeked).await.unwrap());
        assert_eq!(&peeked, b"GET / HTTP/1.1\r\nHost: a\r");
        assert_eq!(stream.state, State::Idle);
        // The peeked bytes are read again, as the head's first.
        assert!(read(&mut stream)
            .await
            .unwrap()
            .starts_with(b"GET / HTTP/1.1\r\n"));
        assert_eq!(stream.state, State::Head);
        client.write_all(b"\r\n").await.unwrap();
        read_head(&mut stream).await.unwrap();

        // A client that connects and sends (almost) nothing: the probe is cut.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        let mut stream = DeadlineStream::new(server, TIMEOUT);
        client.write_all(b"GET").await.unwrap();
        let start = std::time::Instant::now();
        let err = stream.try_peek(&mut peeked).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < TIMEOUT * 5);
    }

    #[tokio::test]
    async fn process_new_wraps_each_connection_once() {
        struct Probe(std::sync::Mutex<Vec<bool>>);
        #[async_trait]
        impl ServerApp for Probe {
            async fn process_new(
                self: &Arc<Self>,
                stream: Stream,
                _shutdown: &ShutdownWatch,
            ) -> Option<Stream> {
                self.0
                    .lock()
                    .unwrap()
                    .push(stream.as_any().is::<DeadlineStream>());
                Some(stream)
            }
        }
        let app = Arc::new(HeadDeadline::new(
            Probe(std::sync::Mutex::new(Vec::new())),
            TIMEOUT,
        ));
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let (server, _client) = tokio::io::duplex(64);
        let again = app.process_new(Box::new(server), &shutdown).await.unwrap();
        let again = app.process_new(again, &shutdown).await.unwrap();
        assert!(again.as_any().is::<DeadlineStream>());
        assert_eq!(*app.inner().0.lock().unwrap(), [true, true]);
    }
}
