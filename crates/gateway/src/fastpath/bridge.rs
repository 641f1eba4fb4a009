//! The way from the HTTP/2 fast path to Pingora for the streams the fast path does
//! not serve (TLS, HTTP/2 and gRPC upstreams; plugins that read the response body).
//! An HTTP/2 connection cannot be handed over stream by stream, so each client
//! connection that needs it gets one in-memory HTTP/2 connection to Pingora's proxy
//! (through the connection guard, like any connection), opened on first use; such a
//! stream is relayed frame for frame over it: head, body, trailers, both ways at
//! once (gRPC streams included), with the client's minimum rates applied here.
//! Pingora sees the client's socket (its address, for routing and X-Forwarded-For)
//! and TLS session (the request's scheme) through [`Bridged`].

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::OnceCell;

use super::h2::{refuse_stream, send_all, send_refusal, Gone};
use crate::core::guard::Guard;
use crate::core::load::Load;
use crate::core::rate::{too_slow, MinRate};
use crate::core::refusal::Refusal;

/// Bytes buffered each way in the in-memory connection.
const PIPE_BYTES: usize = 256 * 1024;
/// Pingora reads a request body at its upstream's pace and has its own timeouts for
/// it; this only bounds a stuck in-memory connection.
const PINGORA_PACE: MinRate = MinRate {
    grace: std::time::Duration::from_secs(3600),
    bytes_per_sec: 0,
};

/// One client connection's way to Pingora, opened on first use.
pub(super) struct Bridge<'a, A> {
    guard: &'a Arc<Guard<A>>,
    /// Where a stream that never reached Pingora is counted (Pingora counts the rest).
    load: &'a Load,
    shutdown: &'a ShutdownWatch,
    /// The client connection's socket and TLS session, as Pingora is to see them.
    socket: Option<Arc<SocketDigest>>,
    ssl: Option<Arc<SslDigest>>,
    /// The client's minimum rates (request body, response).
    body_rate: MinRate,
    send_rate: MinRate,
    to_pingora: OnceCell<Option<SendRequest<Bytes>>>,
}

impl<'a, A> Bridge<'a, A>
where
    A: ServerApp + Send + Sync + 'static,
{
    pub(super) fn new(
        guard: &'a Arc<Guard<A>>,
        load: &'a Load,
        shutdown: &'a ShutdownWatch,
        socket: Option<Arc<SocketDigest>>,
        ssl: Option<Arc<SslDigest>>,
        body_rate: MinRate,
        send_rate: MinRate,
    ) -> Self {
        Self {
            guard,
            load,
            shutdown,
            socket,
            ssl,
            body_rate,
            send_rate,
            to_pingora: OnceCell::new(),
        }
    }

    /// The connection to Pingora, opened the first time.
    async fn connection(&self) -> Option<SendRequest<Bytes>> {
        self.to_pingora
            .get_or_init(|| async {
                let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
                let stream = Box::new(Bridged {
                    io: theirs,
                    socket: self.socket.clone(),
                    ssl: self.ssl.clone(),
                });
                let guard = self.guard.clone();
                let shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    guard.process_new(stream, &shutdown).await;
                });
                match h2::client::handshake(ours).await {
                    Ok((send, conn)) => {
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, "bridge to Pingora ended");
                            }
                        });
                        Some(send)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "bridge to Pingora failed");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// Relays one stream through Pingora, which ends it in the core (`core::end`);
    /// a stream refused before Pingora got it is ended here.
    pub(super) async fn forward(
        &self,
        request: http::Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        let Some(send) = self.connection().await else {
            return refuse_stream(self.load, &mut respond, &Refusal::Internal);
        };
        let Ok(mut send) = send.ready().await else {
            return refuse_stream(self.load, &mut respond, &Refusal::Internal);
        };
        let (mut parts, recv) = request.into_parts();
        if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
            // h2 sends :scheme and :authority from the URI; the client's authority
            // may have come as Host.
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    parts
                        .headers
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "localhost".to_owned());
            let mut uri = http::uri::Parts::from(parts.uri.clone());
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = authority.parse().ok();
            match http::Uri::from_parts(uri) {
                Ok(uri) => parts.uri = uri,
                Err(_) => return refuse_stream(self.load, &mut respond, &Refusal::BadRequest),
            }
        }
        parts.headers.remove(http::header::HOST);
        let end = recv.is_end_stream();
        let Ok((response, body)) = send.send_request(http::Request::from_parts(parts, ()), end)
        else {
            return refuse_stream(self.load, &mut respond, &Refusal::Internal);
        };
        let upstream = async {
            if !end {
                relay_request_body(recv, body, self.body_rate).await;
            }
        };
        let downstream = async {
            let Ok(response) = response.await else {
                // Pingora had the request: its adapter ends it (core::end), not this.
                return send_refusal(&mut respond, &Refusal::BadGateway);
            };
            let (parts, recv) = response.into_parts();
            let end = recv.is_end_stream();
            let Ok(send) = respond.send_response(http::Response::from_parts(parts, ()), end) else {
                return;
            };
            if !end {
                relay_data(recv, send, self.send_rate).await;
            }
        };
        tokio::join!(upstream, downstream);
    }
}

/// The client's request body (and trailers) on to Pingora.
async fn relay_request_body(mut recv: RecvStream, mut send: SendStream<Bytes>, rate: MinRate) {
    let mut meter = rate.meter();
    loop {
        let until = meter.wait(tokio::time::Instant::now());
        match tokio::time::timeout_at(until, recv.data()).await {
            Ok(Some(Ok(data))) => {
                meter.moved(data.len(), tokio::time::Instant::now());
                let n = data.len();
                let mut pingora = PINGORA_PACE.meter();
                if send_all(&mut send, data, false, &mut pingora)
                    .await
                    .is_err()
                {
                    // Pingora reset the stream: it answers the client.
                    return;
                }
                let _ = recv.flow_control().release_capacity(n);
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => return send.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                tracing::debug!(error = %too_slow("sent the request body"), "request cut");
                return send.send_reset(h2::Reason::CANCEL);
            }
        }
    }
    match recv.trailers().await {
        Ok(Some(trailers)) => {
            let _ = send.send_trailers(trailers);
        }
        Ok(None) => {
            let _ = send.send_data(Bytes::new(), true);
        }
        Err(_) => send.send_reset(h2::Reason::CANCEL),
    }
}

/// Pingora's response body (and trailers) on to the client.
async fn relay_data(mut recv: RecvStream, mut send: SendStream<Bytes>, rate: MinRate) {
    let mut meter = rate.meter();
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                let n = data.len();
                if let Err(Gone::Client) = send_all(&mut send, data, false, &mut meter).await {
                    return send.send_reset(h2::Reason::CANCEL);
                }
                let _ = recv.flow_control().release_capacity(n);
            }
            None => break,
            Some(Err(_)) => return send.send_reset(h2::Reason::INTERNAL_ERROR),
        }
    }
    match recv.trailers().await {
        Ok(Some(trailers)) => {
            let _ = send.send_trailers(trailers);
        }
        Ok(None) => {
            let _ = send.send_data(Bytes::new(), true);
        }
        Err(_) => send.send_reset(h2::Reason::INTERNAL_ERROR),
    }
}

/// Pingora's end of the in-memory connection: the client's socket digest (so
/// Pingora sees the client's address), ALPN h2.
struct Bridged {
    io: DuplexStream,
    socket: Option<Arc<SocketDigest>>,
    ssl: Option<Arc<SslDigest>>,
}

impl fmt::Debug for Bridged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bridged")
    }
}

impl AsyncRead for Bridged {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bridged {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Bridged {
    async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = AsyncWriteExt::shutdown(&mut self.io).await;
    }
}

impl UniqueID for Bridged {
    fn id(&self) -> UniqueIDType {
        0
    }
}

impl Ssl for Bridged {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        Some(ALPN::H2)
    }
}

impl GetTimingDigest for Bridged {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Bridged {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Bridged {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket.clone()
    }
}

impl Peek for Bridged {}
