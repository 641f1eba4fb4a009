//! The request guard both APIs put in front of their routes: how much a client may
//! send and how long it may take.
//!
//! - A `Content-Length` above the body limit is answered 413 at once, before any of the
//!   body is read (the connection is then closed).
//! - A chunked body is cut at the same limit by axum's `DefaultBodyLimit` (413).
//! - The whole body must arrive within [`Limits::body_timeout`] of the request head
//!   (a total deadline, not an idle one: a body trickling a byte at a time is cut too);
//!   otherwise 408 and the connection is closed.
//! - The head itself must arrive within [`Limits::header_read_timeout`], enforced by
//!   the server ([`crate::serve`]), which closes the connection.
//!
//! So no request holds a connection for longer than the two timeouts together.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// What a client may send and how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body in bytes (413 above).
    pub max_body: usize,
    /// Longest time a client may take to send a request head, from the connection (or
    /// the end of the previous request); the connection is closed after it.
    pub header_read_timeout: Duration,
    /// Longest time a client may take to send the whole body after the head (408).
    pub body_timeout: Duration,
}

impl Limits {
    /// Defaults for an API taking bodies up to `max_body` bytes: 10 s for the head,
    /// 30 s for the body.
    pub fn with_max_body(max_body: usize) -> Self {
        Self {
            max_body,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Puts the guard in front of every route of `router` (the fallback included).
pub fn apply(router: Router, limits: Limits) -> Router {
    router
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(axum::middleware::from_fn_with_state(limits, guard))
}

/// The early 413 and the body deadline.
async fn guard(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > limits.max_body as u64) {
        return crate::error::payload_too_large(limits.max_body);
    }
    let (parts, body) = request.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(limits.body_timeout)),
    });
    next.run(Request::from_parts(parts, body)).await
}

/// The error a body read fails with when the body deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
