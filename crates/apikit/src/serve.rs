//! The accept loop of the admin and agent APIs: hyper's HTTP/1.1 server with a
//! header-read timeout, every connection tracked so a shutdown lets requests in flight
//! finish (for at most [`DRAIN_TIMEOUT`]).
//!
//! `axum::serve` has no header-read timeout, so a client sending half a request head
//! and then nothing would hold its connection for ever; here it is closed after
//! [`Limits::header_read_timeout`].
//!
//! A connection is closed the way nginx's lingering close does it: our side is shut
//! down first (the client sees the end of our answer), then what the client still
//! sends is read and thrown away until it closes too, for at most [`LINGER_TIME`] and
//! [`LINGER_BYTES`]. Without it, an early answer (a 413 to a body announced too large)
//! would be lost: closing a socket with unread data sends a reset, and the client's
//! system drops the answer it had not read yet.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::limits::{self, Limits};

/// How long requests in flight may go on after a shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection keeps reading what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(3);

/// How much a closing connection reads (and throws away) at most.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// Serves `app` over plain HTTP, guarded by `limits` (see [`crate::limits`]), on
/// `listener` until `shutdown` flips to true or its sender is dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_with(listener, app, limits, None, shutdown).await
}

/// [`serve`], over HTTPS when `tls` is given (see [`crate::tls::server_config`]). The
/// TLS handshake must end within the header-read timeout.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let service = TowerToHyperService::new(limits::apply(app, limits));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        // Handlers may ask who connected (`axum::extract::ConnectInfo`: audit logs).
        let service = {
            let service = service.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                hyper::service::Service::call(&service, req)
            })
        };
        let (http, watcher) = (http.clone(), graceful.watcher());
        let Some(tls) = tls.clone() else {
            tokio::spawn(async move {
                let io = TokioIo::new(Lingering::new(stream));
                if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
            continue;
        };
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done within the header-read timeout");
                    return;
                }
            };
            let io = TokioIo::new(Lingering::new(stream));
            if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain timeout; closing them");
    }
    Ok(())
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A stream (TCP, or TLS over TCP) whose shutdown is a lingering close (see the module
/// doc).
struct Lingering<S> {
    stream: S,
    /// Set once our side is shut down: the deadline and the bytes read since.
    draining: Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
}

impl<S> Lingering<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            draining: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.draining.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.draining = Some((Box::pin(tokio::time::sleep(LINGER_TIME)), 0));
        }
        let Some((deadline, drained)) = this.draining.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *drained >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *drained += buf.filled().len() as u64,
                // A reset or another error: nothing is left to wait for.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
