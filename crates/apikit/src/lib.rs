//! `apikit`: the HTTP plumbing the admin and the agent APIs share, written once.
//!
//! - [`auth`]: bearer tokens, kept as SHA-256 hashes and compared in constant time
//!   (`subtle`), and the middleware that answers 401.
//! - [`error`]: the one JSON error body ([`model::validate::ErrorBody`]) every refusal
//!   carries, and what a failed body read means (413, 408 or 400).
//! - [`limits`]: the request guard: an early 413 when `Content-Length` announces more
//!   than the body limit (before a byte of the body is read), the body limit for
//!   chunked bodies, and a deadline for the whole body.
//! - [`serve`]: the accept loop (hyper's HTTP/1.1 server with a header-read timeout,
//!   over TCP or TLS) with graceful shutdown.
//! - [`tls`]: rustls configurations for the agent's HTTPS server (optionally mTLS) and
//!   the admin's client of agents (the operator's CA only).
//!
//! The gateway does not use this crate: its data plane has rules of its own.

pub mod auth;
pub mod error;
pub mod limits;
pub mod serve;
pub mod tls;

pub use auth::TokenHash;
pub use limits::Limits;
pub use serve::{serve, serve_with};
