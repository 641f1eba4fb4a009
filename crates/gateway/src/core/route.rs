//! Routing, the same for every engine: the client's address (trusted proxies,
//! canonical), the path normalised once, the route matched against one config
//! snapshot, the access phase of its plugins (403…), 404 / 405.

use std::borrow::Cow;
use std::sync::Arc;

use super::phase::PhaseCtx;
use super::refusal::Refusal;
use crate::balancer::UpstreamPool;
use crate::normalize::normalize;
use crate::router::{CompiledRoute, Match, RequestInfo};
use crate::runtime::RuntimeConfig;
use crate::settings::HttpSettings;

/// What routing needs of a request, whichever HTTP/1 path (Pingora's or the fast
/// path) read it.
pub(crate) struct Incoming<'a> {
    /// Lowercase, without port (see [`super::head::canonical_host`]).
    pub host: &'a str,
    pub method: &'a str,
    /// As received, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// The connection's peer.
    pub peer: Option<std::net::IpAddr>,
    /// The connection is TLS.
    pub tls: bool,
}

/// Where a request goes.
pub(crate) struct Routed<'a> {
    /// The matched route's pool, from the request's one config snapshot.
    pub upstream: Arc<UpstreamPool>,
    /// The matched route (its plugins run the later phases).
    pub route: Arc<CompiledRoute>,
    /// The client's address after the trusted-proxy rules.
    pub client_ip: Option<std::net::IpAddr>,
    /// The normalised path, used for routing and forwarding alike; `Owned` when it
    /// differs from the path received.
    pub path: Cow<'a, str>,
}

/// Normalises the path and matches the request against one config snapshot: the
/// routing both HTTP/1 paths share. Limits are checked by the caller.
pub(crate) fn route_request<'a>(
    config: &RuntimeConfig,
    settings: &HttpSettings,
    req: &Incoming<'a>,
    ctx: &mut PhaseCtx,
) -> Result<Routed<'a>, Refusal> {
    let client_ip = settings.client_ip(req.peer, req.headers);
    let path = normalize(req.path, settings.path).map_err(|_| Refusal::BadRequest)?;
    let info = RequestInfo {
        host: req.host,
        path: &path,
        method: req.method,
        headers: req.headers,
        query: req.query,
        client_ip,
        now_ms: crate::now_ms(),
        tls: req.tls,
    };
    let target = match config.router.lookup(&info) {
        Match::Found(target) => target,
        Match::MethodNotAllowed { allow } => return Err(Refusal::MethodNotAllowed(allow)),
        Match::NotFound => return Err(Refusal::NoRoute),
    };
    // The access phase of the route's plugins (403 from ip-restriction, …).
    target.route.plugins.access(&info.view(), ctx)?;
    Ok(Routed {
        upstream: target.upstream.clone(),
        route: target.route.clone(),
        client_ip,
        path,
    })
}
