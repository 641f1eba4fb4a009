//! The request core: every rule of a request, written once, called by both HTTP
//! engines — the fast path (`fastpath/`, which writes bytes and serves HTTP/2 streams) and the adapter over
//! Pingora's proxy (`proxy.rs`, which fills Pingora's hooks) — and, through the phase
//! interface, by every plugin.
//!
//! ```text
//! admission   head.rs      strict RFC 9112 head: request line, header lines, framing,
//!                          Host, Connection nominations, size limits (400/414/431/501)
//!             chunked.rs   strict chunked bodies (requests and responses)
//!             guard.rs     the same rules on the bytes Pingora reads; minimum rates
//!             rate.rs      minimum data rates for bodies and writes to the client
//! routing     route.rs     client address (trusted proxies, canonical) → normalised
//!                          path → route + predicates → filters (403) / 404 / 405
//! upstream    retry.rs     attempts on distinct nodes, when a replay is safe
//! headers     headers.rs   hop-by-hop and nominated headers both ways,
//!                          X-Forwarded-For, Host by pass_host
//! errors      refusal.rs   one JSON body and one set of codes for every error
//! plugins     phase.rs     the phases a plugin acts in, run by both engines
//! the end     end.rs       every request's end: counted (load.rs), log phase
//!             load.rs      requests and 5xx over the last minute, connections open
//! ```

pub mod chunked;
pub mod end;
pub mod guard;
pub mod head;
pub mod headers;
pub mod load;
pub mod phase;
pub mod rate;
pub mod refusal;
pub mod retry;
pub mod route;
