//! The end of a request, on both engines and every protocol: the one place every
//! request is counted in the node's load ([`Load`]) and its route's log phase runs.
//!
//! ```text
//! fast path, HTTP/1 and HTTP/2 streams   its LogPhase drops (however the request ends),
//!                                        or it refuses a head before routing
//! Pingora's adapter (proxy.rs)           the `logging` hook, after every request it
//!                                        served (HTTP/2 streams bridged to it included)
//! the connection guard (guard.rs)        a head it refuses before Pingora sees it
//! ```
//!
//! A request the fast path hands to Pingora ends on Pingora's side only: the fast
//! path hands it over before it would count it.

use std::net::IpAddr;
use std::time::Duration;

use super::load::Load;
use super::phase::{Chain, LogRecord, PhaseCtx};

/// What the log phase of a routed request needs.
pub struct Logged<'a> {
    pub chain: &'a Chain,
    pub phase: &'a PhaseCtx,
    pub route_id: &'a str,
    /// Time to the upstream node's response head; `None` when no node answered.
    pub upstream: Option<Duration>,
    pub duration: Duration,
    pub client_ip: Option<IpAddr>,
}

/// A request ended with `status` (the status the client got; 0: none was sent):
/// counted in `load`, then the log phase of its route's plugins, when it was routed
/// to a route with plugins (`logged`).
pub fn request_ended(load: &Load, status: u16, logged: Option<Logged<'_>>) {
    load.count(status);
    if let Some(logged) = logged {
        logged.chain.log(
            &LogRecord {
                route_id: logged.route_id,
                service_id: None,
                upstream: logged.upstream,
                status,
                duration: logged.duration,
                client_ip: logged.client_ip,
            },
            logged.phase,
        );
    }
}
