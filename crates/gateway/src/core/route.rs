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

/// What routing derives from a request before the lookup: the node's rules applied.
#[derive(Debug, Clone)]
pub(crate) struct Prepared<'a> {
    /// The client's address after the trusted-proxy rules.
    pub client_ip: Option<std::net::IpAddr>,
    /// The normalised path; `Owned` when it differs from the path received.
    pub path: Cow<'a, str>,
    /// When the request is routed, in milliseconds since the Unix epoch.
    pub now_ms: i64,
}

impl<'a> Prepared<'a> {
    /// The client's address and the normalised path (400 when it does not normalise).
    #[inline]
    pub(crate) fn new(
        settings: &HttpSettings,
        req: &Incoming<'a>,
        now_ms: i64,
    ) -> Result<Self, Refusal> {
        Ok(Self {
            client_ip: settings.client_ip(req.peer, req.headers),
            path: normalize(req.path, settings.path).map_err(|_| Refusal::BadRequest)?,
            now_ms,
        })
    }

    /// What the router reads of the request.
    #[inline]
    pub(crate) fn info<'s>(&'s self, req: &Incoming<'s>) -> RequestInfo<'s> {
        RequestInfo {
            host: req.host,
            path: &self.path,
            method: req.method,
            headers: req.headers,
            query: req.query,
            client_ip: self.client_ip,
            now_ms: self.now_ms,
            tls: req.tls,
        }
    }
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
    let prepared = Prepared::new(settings, req, crate::now_ms())?;
    route_prepared(config, req, prepared)
}

/// The lookup of [`find_route`], for a request already [`Prepared`] (the route
/// tester prepares it once and explains the other routes with the same view).
#[inline]
pub(crate) fn route_prepared<'a>(
    config: &RuntimeConfig,
    req: &Incoming<'a>,
    prepared: Prepared<'a>,
) -> Result<Routed<'a>, Refusal> {
    let target = match config.router.lookup(&prepared.info(req)) {
        Match::Found(target) => target,
        Match::MethodNotAllowed { allow } => return Err(Refusal::MethodNotAllowed(allow)),
        Match::NotFound => return Err(Refusal::NoRoute),
    };
    Ok(Routed {
        upstream: target.upstream.clone(),
        route: target.route.clone(),
        plugins: target.plugins.clone(),
        client_ip: prepared.client_ip,
        path: prepared.path,
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
