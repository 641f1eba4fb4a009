//! Routing, the same for every engine: the client's address (trusted proxies,
//! canonical), the path normalised once, the route matched against one config
//! snapshot, the access phase of its plugins (401, 403, 429 …), 404 / 405.

use std::borrow::Cow;
use std::sync::Arc;

use super::phase::{Chain, PhaseCtx, RequestView, NO_SCOPE};
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
    /// The matched route.
    pub route: Arc<CompiledRoute>,
    /// Its effective plugins (they run the later phases).
    pub plugins: Arc<Chain>,
    /// The client's address after the trusted-proxy rules.
    pub client_ip: Option<std::net::IpAddr>,
    /// The normalised path, used for routing and forwarding alike; `Owned` when it
    /// differs from the path received.
    pub path: Cow<'a, str>,
}

/// Normalises the path and matches the request against one config snapshot: the
/// routing every engine shares. Limits are checked by the caller; then
/// [`run_access`] runs the route's plugins (the fast paths first hand some routes to
/// Pingora's path, which runs it there: it must run once, limits count).
pub(crate) fn find_route<'a>(
    config: &RuntimeConfig,
    settings: &HttpSettings,
    req: &Incoming<'a>,
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
    Ok(Routed {
        upstream: target.upstream.clone(),
        route: target.route.clone(),
        plugins: target.plugins.clone(),
        client_ip,
        path,
    })
}

/// The access phase of the route's plugins (401 from key-auth, 403 from
/// ip-restriction, 429 from limit-count …).
pub(crate) async fn run_access(
    config: &RuntimeConfig,
    routed: &Routed<'_>,
    req: &Incoming<'_>,
    ctx: &mut PhaseCtx,
) -> Result<(), Refusal> {
    if routed.plugins.is_empty() {
        return Ok(());
    }
    if routed.plugins.authenticates() {
        ctx.consumers = Some(config.consumers.clone());
    }
    if routed.plugins.selects_upstream() {
        ctx.pools = Some(config.upstreams_by_id.clone());
    }
    routed
        .plugins
        .access(
            &RequestView {
                method: req.method,
                path: &routed.path,
                query: req.query,
                host: req.host,
                headers: req.headers,
                client_ip: routed.client_ip,
                tls: req.tls,
                scope: &NO_SCOPE,
            },
            ctx,
        )
        .await
}
