//! What the limit plugins (`limit-count`, `limit-req`, `limit-conn`) count by: the
//! client's address, the consumer, a header, the route, the service or one constant
//! key (`model::plugin::LimitKey`), and the shards their tables are split into.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use model::plugin::LimitKey;

use crate::core::phase::{PhaseCtx, ReadsHeaders, RequestView};

/// Lock shards of a limit's table.
pub(crate) const SHARDS: usize = 16;

/// What requests share a counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Ip(IpAddr),
    /// A consumer, by id (the same key across consumer-table rebuilds).
    Consumer(Arc<str>),
    Text(Box<str>),
    Constant,
}

impl Key {
    /// The key as text (Redis key segments).
    pub(crate) fn text(&self) -> String {
        match self {
            Key::Ip(ip) => ip.to_string(),
            Key::Consumer(id) => format!("consumer:{id}"),
            Key::Text(text) => text.to_string(),
            Key::Constant => String::new(),
        }
    }

    /// The shard the key lives in.
    pub(crate) fn shard(&self) -> usize {
        use std::hash::BuildHasher;
        (foldhash::fast::FixedState::default().hash_one(self) as usize) % SHARDS
    }
}

/// A plugin's `key_type` (and `header`), compiled.
#[derive(Debug, Clone)]
pub(crate) struct KeySpec {
    kind: LimitKey,
    header: Option<HeaderName>,
}

impl KeySpec {
    pub(crate) fn new(kind: LimitKey, header: &Option<String>) -> Result<Self, String> {
        let header = match header {
            Some(name) => Some(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| "header: not a header name".to_owned())?,
            ),
            None => None,
        };
        Ok(Self { kind, header })
    }

    pub(crate) fn reads_headers(&self) -> ReadsHeaders {
        match (&self.kind, &self.header) {
            (LimitKey::Header, Some(header)) => ReadsHeaders::named([header.clone()]),
            _ => ReadsHeaders::None,
        }
    }

    /// The request's key; anonymous requests (no consumer, no header) count by the
    /// client's address.
    pub(crate) fn of(&self, req: &RequestView<'_>, ctx: &PhaseCtx) -> Key {
        let ip = || req.client_ip.map_or(Key::Constant, Key::Ip);
        match self.kind {
            LimitKey::RemoteAddr => ip(),
            LimitKey::Consumer => match &ctx.consumer {
                Some(consumer) => Key::Consumer(consumer.id.clone()),
                None => ip(),
            },
            LimitKey::Header => match self
                .header
                .as_ref()
                .and_then(|h| req.headers.get(h))
                .and_then(|v| v.to_str().ok())
            {
                Some(value) => Key::Text(value.into()),
                None => ip(),
            },
            LimitKey::Route => Key::Text(req.scope.route_id.as_str().into()),
            LimitKey::Service => Key::Text(
                req.scope
                    .service_id
                    .as_deref()
                    .unwrap_or(&req.scope.route_id)
                    .into(),
            ),
            LimitKey::Constant => Key::Constant,
        }
    }
}
