//! The engine's ceiling, for `docs/benchmarks.md`: a Pingora proxy with nothing of
//! Portico in it (no limits, routing, balancing, head deadline or X-Forwarded-For),
//! every request to one upstream over a keep-alive pool, on a current-thread runtime
//! like `portico gateway --threads 1`. Comparing it with nginx and with the gateway in
//! the same run separates Pingora's cost per request from Portico's.
//!
//! `cargo run --release -p gateway --example bare_pingora -- <listen> <upstream>`

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_pingora <listen addr> <upstream addr>";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let upstream: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let conf = std::sync::Arc::new(pingora_core::server::configuration::ServerConf::default());
        let proxy = pingora_proxy::http_proxy(&conf, Bare { upstream });
        let mut service = pingora_core::services::listening::Service::new("bare".to_owned(), proxy);
        service.add_tcp(&listen.to_string());
        // Never flips: the process runs until it is killed.
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        pingora_core::services::Service::start_service(&mut service, None, shutdown, 1).await;
    });
    Ok(())
}
