//! The request spine on Pingora: one runtime-config snapshot per request → match route
//! → pick a node → proxy; every refusal and failure becomes a JSON error in one place.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::balancer::UpstreamPool;
use crate::router::Match;
use crate::runtime::RuntimeConfig;

pub struct Proxy {
    pub config: Arc<ArcSwap<RuntimeConfig>>,
}

/// Per-request state: the pool chosen by routing.
#[derive(Default)]
pub struct RequestCtx {
    upstream: Option<Arc<UpstreamPool>>,
}

/// Why a request gets an error response; mapped to status and body in [`respond`].
enum Refusal {
    NoRoute,
    MethodNotAllowed(Vec<&'static str>),
    BadGateway,
    GatewayTimeout,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // One snapshot for the whole request, whatever reloads happen meanwhile.
        let config = self.config.load();
        let req = session.req_header();
        let host = request_host(req);
        let outcome = match config
            .router
            .lookup(&host, req.uri.path(), req.method.as_str())
        {
            Match::Found(target) => {
                ctx.upstream = Some(target.upstream.clone());
                return Ok(false);
            }
            Match::MethodNotAllowed { allow } => Refusal::MethodNotAllowed(allow),
            Match::NotFound => Refusal::NoRoute,
        };
        respond(session, outcome).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = &ctx.upstream else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen for the request",
            ));
        };
        let mut peer = HttpPeer::new(pool.pick(), false, String::new());
        peer.options.connection_timeout = Some(pool.timeouts.connect);
        peer.options.read_timeout = Some(pool.timeouts.read);
        peer.options.write_timeout = Some(pool.timeouts.write);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_string();
            let forwarded = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip,
            };
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let refusal = match (e.esource(), e.etype()) {
            (
                _,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => Some(Refusal::GatewayTimeout),
            (ErrorSource::Upstream, _)
            | (_, ErrorType::ConnectRefused | ErrorType::ConnectError) => Some(Refusal::BadGateway),
            // The client went away or sent garbage: nothing useful to answer.
            (ErrorSource::Downstream, _) => None,
            _ => Some(Refusal::BadGateway),
        };
        let code = match refusal {
            Some(refusal) => {
                let code = status_of(&refusal);
                if let Err(write_error) = respond(session, refusal).await {
                    tracing::debug!(error = %write_error, "could not send the error response");
                }
                code
            }
            None => 0,
        };
        tracing::warn!(error = %e, status = code, "request failed");
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// Host without port, lowercase; from the Host header, else the request target.
fn request_host(req: &RequestHeader) -> String {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    let host = if raw.starts_with('[') {
        // [v6]:port
        raw.split(']').next().map(|h| &h[1..]).unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

fn status_of(refusal: &Refusal) -> u16 {
    match refusal {
        Refusal::NoRoute => 404,
        Refusal::MethodNotAllowed(_) => 405,
        Refusal::BadGateway => 502,
        Refusal::GatewayTimeout => 504,
    }
}

/// The one place a refusal becomes a response.
async fn respond(session: &mut Session, refusal: Refusal) -> Result<()> {
    let status = status_of(&refusal);
    let (message, code) = match &refusal {
        Refusal::NoRoute => ("no route matches the request", "route_not_found"),
        Refusal::MethodNotAllowed(_) => ("method not allowed", "method_not_allowed"),
        Refusal::BadGateway => ("the upstream could not be reached", "bad_gateway"),
        Refusal::GatewayTimeout => ("the upstream did not answer in time", "gateway_timeout"),
    };
    let body = Bytes::from(serde_json::json!({ "error": message, "code": code }).to_string());
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    if let Refusal::MethodNotAllowed(allow) = &refusal {
        header.insert_header("allow", allow.join(", "))?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
