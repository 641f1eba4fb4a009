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

/// What a [`ScriptedUpstream`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// The request line's version (`HTTP/1.1`).
    pub version: String,
    /// Header names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a [`ScriptedUpstream`] answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// Wait this long before answering (timeouts).
    pub delay: std::time::Duration,
    /// Header fields besides Content-Length.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            delay: std::time::Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// The answer with one more header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Script = dyn Fn(&Received) -> Answer + Send + Sync;

#[derive(Default)]
struct Recorded {
    received: std::sync::Mutex<Vec<Received>>,
    connections: std::sync::atomic::AtomicUsize,
}

/// A minimal HTTP/1.1 server written on the socket (keep-alive, `Content-Length` and
/// chunked bodies, parsed as leniently as a typical backend: a request smuggled into
/// a body shows up as a request of its own), so a test sees exactly what reached it and over how many connections; its
/// answers come from a closure.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    recorded: std::sync::Arc<Recorded>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedUpstream {
    pub async fn start(script: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let recorded = std::sync::Arc::new(Recorded::default());
        let script: std::sync::Arc<Script> = std::sync::Arc::new(script);
        let task = tokio::spawn({
            let recorded = recorded.clone();
            async move {
                // Dropped with the accept loop, which aborts every connection.
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    recorded
                        .connections
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    connections.spawn(serve_connection(stream, script.clone(), recorded.clone()));
                }
            }
        });
        Self {
            addr,
            recorded,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.recorded
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.recorded
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    script: std::sync::Arc<Script>,
    recorded: std::sync::Arc<Recorded>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::io::BufReader::new(stream);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let version = parts.next().unwrap_or("").to_owned();
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                if stream.read_line(&mut size).await.unwrap_or(0) == 0 {
                    return;
                }
                let size = size.trim_end().split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(size, 16) else {
                    return;
                };
                if size == 0 {
                    // Trailers, up to the blank line.
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break body;
                }
                let mut chunk = vec![0; size + 2];
                if stream.read_exact(&mut chunk).await.is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let length = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            body
        };
        let received = Received {
            method,
            target,
            version,
            headers,
            body,
        };
        let answer = script(&received);
        recorded
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(received);
        tokio::time::sleep(answer.delay).await;
        let fields: String = answer
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let response = format!(
            "HTTP/1.1 {} Scripted\r\n{fields}content-length: {}\r\n\r\n{}",
            answer.status,
            answer.body.len(),
            answer.body
        );
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
