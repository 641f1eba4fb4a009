//! Upstream servers for tests: each answers with its own name, so a test can see which
//! node a request reached.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::response::IntoResponse;

/// An HTTP server answering every request with `200`, body `name`, and headers
/// `x-upstream: name` and `x-path: <path and query as received>`.
pub struct NamedUpstream {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl NamedUpstream {
    /// Starts on a free loopback port.
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener)
    }

    /// Starts on `addr` (to bring a node back on the same port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind upstream");
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let name = name.to_owned();
        let app = axum::Router::new().fallback(move |request: Request| {
            let name = name.clone();
            async move {
                let path = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                ([("x-upstream", name.clone()), ("x-path", path)], name).into_response()
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            stop: Some(tx),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for NamedUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
