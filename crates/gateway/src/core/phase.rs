//! The phases a plugin acts in, called by both engines at the same points of a request,
//! so a plugin is written once against this interface and runs on the fast path and on
//! Pingora's path alike:
//!
//! ```text
//! request          before routing (global plugins); may answer          [no global
//!                                                                        plugins yet]
//! access           after the route matched; may refuse (403, 401, 429…)  route_request
//!                  (async for plugins that wait: a Redis count, a delay)
//! upstream_request edits the headers sent upstream                       each engine,
//! response_head    edits the response head sent to the client            through
//! response_body    opt-in (`wants_response_body`): sees each body chunk  [fast path
//!                                                                        hands over]
//! log              always, once, when the request ends (also refused)    each engine
//! ```
//!
//! A route's plugins form a [`Chain`], ordered by priority (highest first, APISIX's
//! convention), built with the route. Per-request state lives in [`PhaseCtx`]. Header
//! edits are data ([`HeaderEdits`]): the fast path applies them while writing bytes,
//! Pingora's adapter on its header maps; neither knows which plugin asked.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::header::InvalidHeaderName;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::refusal::Refusal;
use crate::consumers::{ConsumerEntry, Consumers};

/// What a plugin sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Normalised, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Canonical host.
    pub host: &'a str,
    /// The request headers: on the fast path only those the chain
    /// [`reads`](Plugin::reads_headers) (all of them when routing reads headers).
    pub headers: &'a HeaderMap,
    /// The client after the trusted-proxy rules.
    pub client_ip: Option<IpAddr>,
    /// The client's connection is TLS (the request's scheme is https).
    pub tls: bool,
    /// The matched route and its service (set by the chain; [`NO_SCOPE`] before).
    pub scope: &'a RouteScope,
}

/// Per-request values plugins share between phases (e.g. the request id made in one
/// phase and sent back in another).
#[derive(Debug, Default)]
pub struct PhaseCtx {
    vars: Vec<(&'static str, HeaderValue)>,
    /// The consumer authentication identified.
    pub consumer: Option<Arc<ConsumerEntry>>,
    /// The instance's consumers, handed over by routing when the chain
    /// authenticates.
    pub consumers: Option<Arc<Consumers>>,
    /// The route's chain with the consumer's plugins merged in.
    merged: Option<Arc<Chain>>,
    /// The smallest request body limit a plugin set (request-size-limit); the engines
    /// hold a streamed body to it as well as to the node's limit.
    pub max_body: Option<u64>,
    /// What plugins hold until the request ends (limit-conn's slot): dropped with the
    /// context, however the request ends.
    held: Vec<Held>,
    /// Response compression the route's plugins ask for (gzip, brotli), with levels.
    pub compression: Vec<(Compress, u32)>,
    /// A body that replaces the upstream's (response-rewrite; Pingora's path).
    pub replace_body: Option<bytes::Bytes>,
    /// The snapshot's upstreams by id, handed over by routing when the chain
    /// [selects an upstream](Plugin::selects_upstream).
    pub pools: Option<Arc<UpstreamsById>>,
    /// The upstream a plugin picked instead of the route's (traffic-split).
    pub upstream: Option<Arc<crate::balancer::UpstreamPool>>,
    /// A copy of the request to send elsewhere when it ends (proxy-mirror).
    pub mirror: Option<Box<Mirror>>,
    /// What access logs show of the request; kept only when a plugin of the chain
    /// [wants it](Plugin::wants_request_summary).
    pub request: Option<Box<RequestSummary>>,
    /// The `X-RateLimit-*` values a limit (limit-count) reports in the response.
    pub rate_limit: Option<RateLimitReport>,
}

/// What `X-RateLimit-Limit`, `-Remaining` and `-Reset` say.
#[derive(Debug, Clone)]
pub struct RateLimitReport {
    /// The limit, as a header value made once with the plugin.
    pub limit: HeaderValue,
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset: u64,
}

/// The request as an access-log line shows it.
#[derive(Debug, Clone)]
pub struct RequestSummary {
    pub method: String,
    pub host: String,
    /// Normalised, with the query.
    pub path: String,
}

/// A request copy proxy-mirror sends (Pingora's adapter fills the body).
#[derive(Debug, Clone)]
pub struct Mirror {
    pub url: String,
    pub method: String,
    pub body: Vec<u8>,
    /// The body outgrew what is mirrored: no copy is sent.
    pub too_big: bool,
}

/// Upstream pools by id.
pub type UpstreamsById = std::collections::HashMap<String, Arc<crate::balancer::UpstreamPool>>;

/// A response compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    Gzip,
    Brotli,
}

/// Something a plugin holds for the request's lifetime.
struct Held(#[allow(dead_code)] Box<dyn Send + Sync>);

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

impl PhaseCtx {
    pub fn set(&mut self, key: &'static str, value: HeaderValue) {
        match self.vars.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&HeaderValue> {
        self.vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Keeps `guard` until the request ends; its `Drop` runs then.
    pub fn hold(&mut self, guard: impl Send + Sync + 'static) {
        self.held.push(Held(Box::new(guard)));
    }
}

/// A value a phase sets: a header value, or a number the engines write in decimal
/// (the fast path without making a `HeaderValue` for it: `X-RateLimit-Remaining` on
/// every request).
#[derive(Debug, Clone)]
pub enum EditValue {
    Header(HeaderValue),
    Number(u64),
}

impl EditValue {
    pub fn to_header_value(&self) -> HeaderValue {
        match self {
            Self::Header(value) => value.clone(),
            Self::Number(n) => HeaderValue::from(*n),
        }
    }

    /// The value's bytes; a number's digits are formatted into `digits`.
    fn as_bytes<'a>(&'a self, digits: &'a mut itoa::Buffer) -> &'a [u8] {
        match self {
            Self::Header(value) => value.as_bytes(),
            Self::Number(n) => digits.format(*n).as_bytes(),
        }
    }
}

/// Header changes a phase asks for: names removed, then values set (replacing any),
/// then values added; for the request sent upstream, also a new path and query string,
/// and the `Host` (which the engines write per node: see [`HeaderEdits::host`]).
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, EditValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    /// `Some(None)`: the query is dropped; `Some(Some(q))`: replaced by `q`.
    query: Option<Option<String>>,
    path: Option<String>,
    /// A new response status (response-rewrite).
    status: Option<u16>,
}

impl HeaderEdits {
    /// Replaces the response's status.
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// The status a phase set.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Replaces the path sent upstream.
    pub fn set_path(&mut self, path: String) {
        self.path = Some(path);
    }

    /// The path to send upstream: the replacement, else `original`.
    pub fn path<'a>(&'a self, original: &'a str) -> &'a str {
        self.path.as_deref().unwrap_or(original)
    }

    /// Whether a phase replaced the path or the query.
    pub fn replaces_target(&self) -> bool {
        self.path.is_some() || self.query.is_some()
    }

    /// Appends a value of `name` (after what the message has).
    pub fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.add.push((name, value));
    }

    /// The `Host` a phase set for the upstream request: the engines send it instead of
    /// the one the upstream's `pass_host` picks; [`HeaderEdits::write_set`] leaves it
    /// out.
    pub fn host(&self) -> Option<&str> {
        self.set
            .iter()
            .find(|(n, _)| n == http::header::HOST)
            .and_then(|(_, v)| match v {
                EditValue::Header(v) => v.to_str().ok(),
                EditValue::Number(_) => None,
            })
    }

    /// Replaces the request's query string (`None`: no query) upstream.
    pub fn set_query(&mut self, query: Option<String>) {
        self.query = Some(query);
    }

    /// The query to send upstream: the replacement, else `original`.
    pub fn query<'a>(&'a self, original: Option<&'a str>) -> Option<&'a str> {
        match &self.query {
            Some(replaced) => replaced.as_deref(),
            None => original,
        }
    }

    /// Sets `name` to `value`, replacing what the message had and what an earlier
    /// plugin set.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.set_value(name, EditValue::Header(value));
    }

    /// Sets `name` to the decimal digits of `n`, as [`set`](Self::set) does.
    pub fn set_number(&mut self, name: HeaderName, n: u64) {
        self.set_value(name, EditValue::Number(n));
    }

    fn set_value(&mut self, name: HeaderName, value: EditValue) {
        match self.set.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.set.push((name, value)),
        }
    }

    /// Removes `name` from the message (and what an earlier plugin set or added).
    pub fn remove(&mut self, name: HeaderName) {
        self.set.retain(|(n, _)| *n != name);
        self.add.retain(|(n, _)| *n != name);
        self.remove.push(name);
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.query.is_none()
            && self.path.is_none()
            && self.status.is_none()
    }

    /// Whether a header the engine would forward as it is is removed or replaced.
    pub fn touches(&self, name: &[u8]) -> bool {
        let same = |n: &HeaderName| n.as_str().as_bytes().eq_ignore_ascii_case(name);
        self.remove.iter().any(same) || self.set.iter().any(|(n, _)| same(n))
    }

    pub fn removals(&self) -> &[HeaderName] {
        &self.remove
    }

    pub fn sets(&self) -> &[(HeaderName, EditValue)] {
        &self.set
    }

    /// Applies the edits to a response or request head already written as bytes
    /// (status or request line, header lines, blank line): lines of touched names go,
    /// set ones are added before the blank line.
    pub fn apply_to_head(&self, head: &mut Vec<u8>) {
        if self.remove.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.status.is_none()
        {
            return;
        }
        // The usual case (headers only added, none of the head's replaced or removed):
        // the new lines go in before the blank line, without copying the head.
        if self.status.is_none() && head.ends_with(b"\r\n\r\n") && !self.touches_any(head) {
            head.truncate(head.len() - 2);
            self.write_set(head);
            head.extend_from_slice(b"\r\n");
            return;
        }
        let mut out = Vec::with_capacity(head.len() + 64);
        let mut lines = head.split(|&b| b == b'\n').peekable();
        if let Some(first) = lines.next() {
            match self.status {
                // A response head: its status line is written anew.
                Some(status) => {
                    let reason = http::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("");
                    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
                }
                None => {
                    out.extend_from_slice(first);
                    out.push(b'\n');
                }
            }
        }
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            let name = line.split(|&b| b == b':').next().unwrap_or(line);
            if !self.touches(name) {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.write_set(&mut out);
        out.extend_from_slice(b"\r\n");
        *head = out;
    }

    /// Whether a header line of `head` (after its first line) is removed or replaced.
    fn touches_any(&self, head: &[u8]) -> bool {
        if self.remove.is_empty() && self.set.is_empty() {
            return false;
        }
        // One pass over the line ends; a line is touched when a touched name and a
        // colon start it (a name has no colon, so that colon is the line's first).
        let mut ends = memchr::memchr_iter(b'\n', head);
        let Some(first) = ends.next() else {
            return false;
        };
        let mut start = first + 1;
        for end in ends {
            let line = &head[start..end];
            let starts_line = |name: &HeaderName| {
                let name = name.as_str().as_bytes();
                line.len() > name.len()
                    && line[name.len()] == b':'
                    && line[..name.len()].eq_ignore_ascii_case(name)
            };
            if self.remove.iter().any(starts_line) || self.set.iter().any(|(n, _)| starts_line(n)) {
                return true;
            }
            start = end + 1;
        }
        false
    }

    /// Applies the edits to a header map (Pingora's adapter).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.to_header_value());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    pub fn additions(&self) -> &[(HeaderName, HeaderValue)] {
        &self.add
    }

    /// Writes the set and added headers as header lines (the fast path, after the
    /// headers it kept, which skipped every name [`touches`](Self::touches) names);
    /// never `Host`, which the engine writes.
    pub fn write_set(&self, out: &mut Vec<u8>) {
        let mut line = |name: &HeaderName, value: &[u8]| {
            if name != http::header::HOST {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        };
        for (name, value) in &self.set {
            line(name, value.as_bytes(&mut itoa::Buffer::new()));
        }
        for (name, value) in &self.add {
            line(name, value.as_bytes());
        }
    }
}

/// How a request ended, for the log phase.
#[derive(Debug, Clone)]
pub struct LogRecord<'a> {
    pub route_id: &'a str,
    /// The route's service (set by the chain).
    pub service_id: Option<&'a str>,
    /// Time from sending to the upstream node to its response head; `None` when no
    /// node answered.
    pub upstream: Option<Duration>,
    /// The status the client got (0: no response was sent).
    pub status: u16,
    pub duration: Duration,
    pub client_ip: Option<IpAddr>,
}

/// What an authentication plugin found.
#[derive(Debug)]
pub enum AuthOutcome {
    /// The consumer the credential belongs to.
    Found(Arc<ConsumerEntry>),
    /// The request carries no credential this plugin reads.
    Missing(Refusal),
    /// It carries one, and it is wrong.
    Invalid(Refusal),
}

/// Which request headers a plugin's phases read. The HTTP/1 fast path copies only
/// those into [`RequestView::headers`] (a copy costs an allocation per header per
/// request), so a plugin reading a header it does not name here finds it absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReadsHeaders {
    #[default]
    None,
    /// These names only.
    Named(Vec<HeaderName>),
    All,
}

impl ReadsHeaders {
    pub fn named(names: impl IntoIterator<Item = HeaderName>) -> Self {
        Self::Named(names.into_iter().collect())
    }

    /// What two plugins read together.
    pub fn union(self, other: Self) -> Self {
        match (self, other) {
            (Self::All, _) | (_, Self::All) => Self::All,
            (Self::None, x) | (x, Self::None) => x,
            (Self::Named(mut a), Self::Named(b)) => {
                for name in b {
                    if !a.contains(&name) {
                        a.push(name);
                    }
                }
                Self::Named(a)
            }
        }
    }

    pub fn any(&self) -> bool {
        *self != Self::None
    }

    /// The name to collect a request header under, `name` as it came (any case);
    /// `None` when it is not read, an error when all are and this one is not a name.
    pub fn wanted(&self, name: &str) -> Result<Option<HeaderName>, InvalidHeaderName> {
        Ok(match self {
            Self::None => None,
            Self::All => Some(HeaderName::from_bytes(name.as_bytes())?),
            Self::Named(names) => names
                .iter()
                .find(|n| n.as_str().eq_ignore_ascii_case(name))
                .cloned(),
        })
    }
}

/// A plugin: every phase is optional. Its priority is not its own: the catalog's,
/// or the instance's plugin template's (`model::plugin::effective`).
pub trait Plugin: Send + Sync + fmt::Debug {
    /// The plugin's name, as configured (`ip-restriction`).
    fn name(&self) -> &'static str;
    /// Which request headers a phase reads (they are collected only then).
    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::None
    }
    /// For the plugins the catalog marks `authenticates`: who the request's
    /// credential names. The chain runs every such plugin of a route as one "any of"
    /// group (see [`Chain::access`]).
    fn authenticate(&self, _req: &RequestView<'_>, _consumers: &Consumers) -> AuthOutcome {
        AuthOutcome::Missing(Refusal::Internal)
    }
    /// After routing: `Err` ends the request with that refusal.
    fn access(&self, _req: &RequestView<'_>, _ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        Ok(())
    }
    /// Whether the access phase waits on something (a Redis round trip, a delay):
    /// the chain then runs [`Plugin::access_async`] instead of [`Plugin::access`].
    fn is_async(&self) -> bool {
        false
    }
    /// The access phase of a plugin that [`is_async`](Plugin::is_async).
    fn access_async<'a>(
        &'a self,
        req: &'a RequestView<'a>,
        ctx: &'a mut PhaseCtx,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(std::future::ready(self.access(req, ctx)))
    }
    fn upstream_request(
        &self,
        _req: &RequestView<'_>,
        _ctx: &mut PhaseCtx,
        _edits: &mut HeaderEdits,
    ) {
    }
    fn response_head(&self, _status: u16, _ctx: &mut PhaseCtx, _edits: &mut HeaderEdits) {}
    /// Whether the plugin wants the response body (the fast path then hands the
    /// request to Pingora's path, which decodes bodies).
    fn wants_response_body(&self) -> bool {
        false
    }
    fn log(&self, _record: &LogRecord<'_>, _ctx: &PhaseCtx) {}
    /// Whether the route must be served by Pingora's path (the fast paths hand it over
    /// before the access phase): response bodies, request copies.
    fn needs_pingora(&self) -> bool {
        self.wants_response_body() || self.selects_upstream()
    }
    /// Whether the access phase may send the request to another upstream than the
    /// route's ([`PhaseCtx::upstream`]): the fast paths then hand the route to
    /// Pingora's path, as for response bodies.
    fn selects_upstream(&self) -> bool {
        false
    }
    /// Whether the log phase reads [`PhaseCtx::request`] (access loggers): the chain
    /// then keeps it before any plugin may refuse the request.
    fn wants_request_summary(&self) -> bool {
        false
    }
}

/// One plugin of a chain, with the effective plugin it was compiled from (its
/// priority, the layer that configured it, its configuration).
#[derive(Debug, Clone)]
pub struct Entry {
    pub plugin: Arc<dyn Plugin>,
    /// What `model::plugin::effective` said of it: what the route tester shows.
    pub spec: Arc<model::plugin::EffectivePlugin>,
    /// The catalog marks it as identifying the consumer; looked up once, here, not
    /// per request.
    authenticates: bool,
}

impl Entry {
    pub fn new(spec: Arc<model::plugin::EffectivePlugin>, plugin: Arc<dyn Plugin>) -> Self {
        let authenticates = model::plugin::find(plugin.name()).is_some_and(|p| p.authenticates);
        Self {
            plugin,
            spec,
            authenticates,
        }
    }

    /// The priority it runs at (the catalog's or the instance's template's).
    pub fn priority(&self) -> i32 {
        self.spec.priority
    }

    fn authenticates(&self) -> bool {
        self.authenticates
    }

    fn same(&self, other: &Entry) -> bool {
        Arc::ptr_eq(&self.plugin, &other.plugin)
    }

    /// The access phase, awaited only for plugins that wait on something.
    async fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        if self.plugin.is_async() {
            self.plugin.access_async(req, ctx).await
        } else {
            self.plugin.access(req, ctx)
        }
    }
}

/// The route (and its service) a chain belongs to; plugins read it from
/// [`RequestView::scope`] (limits keyed by route or service, subscriptions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteScope {
    pub route_id: String,
    pub service_id: Option<String>,
}

/// The scope of a view made outside a chain (before routing).
pub static NO_SCOPE: RouteScope = RouteScope {
    route_id: String::new(),
    service_id: None,
};

/// A route's plugins in the order they run (the effective list of
/// `model::plugin::effective`, compiled).
#[derive(Debug, Default, Clone)]
pub struct Chain {
    entries: Vec<Entry>,
    scope: RouteScope,
    authenticates: bool,
    summary: bool,
    /// What the entries say of themselves, asked once here, not per request.
    reads_headers: ReadsHeaders,
    wants_response_body: bool,
    selects_upstream: bool,
    pingora_only: bool,
    /// Upstream ids the plugins may send requests to (traffic-split): the route is
    /// served only while they all exist.
    upstream_refs: Vec<String>,
}

impl Chain {
    /// Orders `entries` by priority, highest first; equal priorities by name, so the
    /// order never depends on how the config listed them.
    pub fn new(mut entries: Vec<Entry>, scope: RouteScope) -> Self {
        entries.sort_by(|a, b| {
            b.priority()
                .cmp(&a.priority())
                .then_with(|| a.plugin.name().cmp(b.plugin.name()))
        });
        let authenticates = entries.iter().any(Entry::authenticates);
        let summary = entries.iter().any(|e| e.plugin.wants_request_summary());
        let any = |f: fn(&dyn Plugin) -> bool| entries.iter().any(|e| f(&*e.plugin));
        Self {
            reads_headers: entries
                .iter()
                .fold(ReadsHeaders::None, |r, e| r.union(e.plugin.reads_headers())),
            wants_response_body: any(|p| p.wants_response_body()),
            selects_upstream: any(|p| p.selects_upstream()),
            pingora_only: any(|p| p.needs_pingora()),
            entries,
            scope,
            authenticates,
            summary,
            upstream_refs: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The chain, naming the upstreams its plugins may pick.
    pub fn with_upstream_refs(mut self, refs: Vec<String>) -> Self {
        self.upstream_refs = refs;
        self
    }

    pub fn upstream_refs(&self) -> &[String] {
        &self.upstream_refs
    }

    /// The names in running order (the effective order an operator can be shown).
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.plugin.name()).collect()
    }

    /// The plugins in running order, as `model::plugin::effective` gave them.
    pub fn specs(&self) -> impl Iterator<Item = &model::plugin::EffectivePlugin> {
        self.entries.iter().map(|e| &*e.spec)
    }

    pub fn reads_headers(&self) -> &ReadsHeaders {
        &self.reads_headers
    }

    /// Whether a plugin identifies the consumer: routing then hands the instance's
    /// consumers to the request ([`PhaseCtx::consumers`]).
    pub fn authenticates(&self) -> bool {
        self.authenticates
    }

    pub fn wants_response_body(&self) -> bool {
        self.wants_response_body
    }

    pub fn selects_upstream(&self) -> bool {
        self.selects_upstream
    }

    /// Whether the route is served by Pingora's path only: a plugin reads response
    /// bodies, picks the upstream or copies requests ([`Plugin::needs_pingora`]).
    pub fn pingora_only(&self) -> bool {
        self.pingora_only
    }

    fn view<'a>(&'a self, req: &RequestView<'a>) -> RequestView<'a> {
        RequestView {
            scope: &self.scope,
            ..*req
        }
    }

    /// Runs every access phase in order; the first refusal ends the request.
    ///
    /// The authentication plugins run as one group at the place of the first: the
    /// request passes when any of them finds its consumer (the first in order wins);
    /// when none does, the refusal is the first "wrong credential" one, else the first
    /// "no credential" one. Then a consumer with subscriptions must be subscribed to
    /// the route or its service (403). A consumer's plugins (its group's under its
    /// own) join the chain: the same plugin on the route is replaced by the
    /// consumer's, and the access phases not yet run run in the merged order; the
    /// later phases run the merged chain.
    pub async fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        let req = self.view(req);
        if self.summary {
            ctx.request = Some(Box::new(RequestSummary {
                method: req.method.to_owned(),
                host: req.host.to_owned(),
                path: match req.query {
                    Some(query) => format!("{}?{query}", req.path),
                    None => req.path.to_owned(),
                },
            }));
        }
        for (i, entry) in self.entries.iter().enumerate() {
            if !entry.authenticates() {
                entry.access(&req, ctx).await?;
                continue;
            }
            if ctx.consumer.is_some() {
                continue;
            }
            let consumer = self.authenticate(&req, ctx)?;
            if let Some(subscriptions) = &consumer.subscriptions {
                if !subscriptions.covers(&self.scope.route_id, self.scope.service_id.as_deref()) {
                    return Err(Refusal::denied(
                        403,
                        "not_subscribed",
                        "The consumer is not subscribed to this API",
                    ));
                }
            }
            ctx.consumer = Some(consumer.clone());
            if consumer.plugins.is_empty() {
                continue;
            }
            let merged = Arc::new(self.merge(&consumer.plugins));
            ctx.merged = Some(merged.clone());
            let ran = &self.entries[..=i];
            for entry in &merged.entries {
                if entry.authenticates() || ran.iter().any(|r| r.same(entry)) {
                    continue;
                }
                entry.access(&req, ctx).await?;
            }
            return Ok(());
        }
        Ok(())
    }

    fn authenticate(
        &self,
        req: &RequestView<'_>,
        ctx: &PhaseCtx,
    ) -> Result<Arc<ConsumerEntry>, Refusal> {
        static EMPTY: std::sync::LazyLock<Consumers> = std::sync::LazyLock::new(Consumers::default);
        let consumers = ctx.consumers.as_deref().unwrap_or(&EMPTY);
        let (mut missing, mut invalid) = (None, None);
        for entry in self.entries.iter().filter(|e| e.authenticates()) {
            match entry.plugin.authenticate(req, consumers) {
                AuthOutcome::Found(consumer) => return Ok(consumer),
                AuthOutcome::Missing(refusal) => {
                    missing.get_or_insert(refusal);
                }
                AuthOutcome::Invalid(refusal) => {
                    invalid.get_or_insert(refusal);
                }
            }
        }
        Err(invalid.or(missing).unwrap_or(Refusal::Internal))
    }

    /// This chain with `extra` (a consumer's plugins) merged in: a plugin of both
    /// runs with `extra`'s configuration.
    fn merge(&self, extra: &[Entry]) -> Chain {
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| !extra.iter().any(|x| x.plugin.name() == e.plugin.name()))
            .cloned()
            .collect();
        entries.extend(extra.iter().cloned());
        Chain::new(entries, self.scope.clone())
    }

    pub fn upstream_request(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> HeaderEdits {
        let merged = ctx.merged.clone();
        let chain = merged.as_deref().unwrap_or(self);
        let req = chain.view(req);
        let mut edits = HeaderEdits::default();
        for entry in &chain.entries {
            entry.plugin.upstream_request(&req, ctx, &mut edits);
        }
        edits
    }

    pub fn response_head(&self, status: u16, ctx: &mut PhaseCtx) -> HeaderEdits {
        let merged = ctx.merged.clone();
        let chain = merged.as_deref().unwrap_or(self);
        let mut edits = HeaderEdits::default();
        for entry in &chain.entries {
            entry.plugin.response_head(status, ctx, &mut edits);
        }
        edits
    }

    pub fn log(&self, record: &LogRecord<'_>, ctx: &PhaseCtx) {
        let merged = ctx.merged.clone();
        let chain = merged.as_deref().unwrap_or(self);
        let record = LogRecord {
            service_id: self.scope.service_id.as_deref(),
            ..record.clone()
        };
        for entry in &chain.entries {
            entry.plugin.log(&record, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_chain_reads_is_the_union_of_its_plugins_and_matches_any_case() {
        let named = |names: &[&'static str]| {
            ReadsHeaders::named(names.iter().map(|n| HeaderName::from_static(n)))
        };
        let cases = [
            (ReadsHeaders::None, ReadsHeaders::None, ReadsHeaders::None),
            (ReadsHeaders::None, named(&["apikey"]), named(&["apikey"])),
            (
                named(&["apikey", "origin"]),
                named(&["origin", "cookie"]),
                named(&["apikey", "origin", "cookie"]),
            ),
            (named(&["apikey"]), ReadsHeaders::All, ReadsHeaders::All),
            (ReadsHeaders::All, ReadsHeaders::None, ReadsHeaders::All),
        ];
        for (a, b, union) in cases {
            assert_eq!(a.clone().union(b.clone()), union, "{a:?} ∪ {b:?}");
        }
        let reads = named(&["apikey", "origin"]);
        assert!(reads.any() && !ReadsHeaders::None.any());
        assert_eq!(
            reads.wanted("APIKey").unwrap(),
            Some(HeaderName::from_static("apikey"))
        );
        assert_eq!(reads.wanted("Origin").unwrap(), Some(http::header::ORIGIN));
        assert_eq!(reads.wanted("host").unwrap(), None);
        assert_eq!(reads.wanted("bad name").unwrap(), None);
        assert_eq!(ReadsHeaders::None.wanted("apikey").unwrap(), None);
        assert_eq!(
            ReadsHeaders::All.wanted("X-Any").unwrap(),
            Some(HeaderName::from_static("x-any"))
        );
        assert!(ReadsHeaders::All.wanted("bad name").is_err());
    }

    #[derive(Debug)]
    struct Named(&'static str);

    impl Plugin for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn upstream_request(
            &self,
            _: &RequestView<'_>,
            ctx: &mut PhaseCtx,
            edits: &mut HeaderEdits,
        ) {
            // Each plugin sees what the ones before it set.
            let seen = ctx
                .get("order")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let now = format!("{seen}{}", self.0);
            ctx.set("order", HeaderValue::from_str(&now).unwrap());
            edits.set(
                HeaderName::from_static("x-order"),
                HeaderValue::from_str(&now).unwrap(),
            );
        }
    }

    #[test]
    fn plugins_run_by_priority_then_name() {
        let entry = |name: &'static str, priority| {
            let spec = model::plugin::EffectivePlugin {
                name,
                priority,
                source: model::plugin::Source::Route("test".into()),
                config: serde_json::json!({}),
            };
            Entry::new(Arc::new(spec), Arc::new(Named(name)))
        };
        let chain = Chain::new(
            vec![entry("b", 1), entry("c", 5), entry("a", 1)],
            RouteScope::default(),
        );
        assert_eq!(chain.names(), ["c", "a", "b"]);
        let headers = HeaderMap::new();
        let view = RequestView {
            method: "GET",
            path: "/",
            query: None,
            host: "",
            headers: &headers,
            client_ip: None,
            tls: false,
            scope: &NO_SCOPE,
        };
        let mut ctx = PhaseCtx::default();
        let edits = chain.upstream_request(&view, &mut ctx);
        assert_eq!(ctx.get("order").unwrap(), "cab");
        let mut map = HeaderMap::new();
        map.insert("x-order", HeaderValue::from_static("client"));
        edits.apply(&mut map);
        assert_eq!(map["x-order"], "cab");
        assert!(edits.touches(b"X-Order"));
        let mut out = Vec::new();
        edits.write_set(&mut out);
        assert_eq!(out, b"x-order: cab\r\n");
        let mut head = b"HTTP/1.1 200 OK\r\nX-Order: old\r\nA: 1\r\n\r\n".to_vec();
        edits.apply_to_head(&mut head);
        assert_eq!(head, b"HTTP/1.1 200 OK\r\nA: 1\r\nx-order: cab\r\n\r\n");
        // Nothing replaced: added in place, the same bytes as a rebuild would give.
        let mut head = b"HTTP/1.1 200 OK\r\nA: 1\r\nX-Order-2: x\r\n\r\n".to_vec();
        edits.apply_to_head(&mut head);
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nA: 1\r\nX-Order-2: x\r\nx-order: cab\r\n\r\n"
        );
        let mut edits = HeaderEdits::default();
        edits.set_status(503);
        edits.set(HeaderName::from_static("b"), HeaderValue::from_static("2"));
        let mut head = b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n".to_vec();
        edits.apply_to_head(&mut head);
        assert_eq!(
            head,
            b"HTTP/1.1 503 Service Unavailable\r\nA: 1\r\nb: 2\r\n\r\n"
        );
    }

    #[test]
    fn a_number_set_reads_the_same_in_bytes_and_in_a_map() {
        let mut edits = HeaderEdits::default();
        edits.set(HeaderName::from_static("n"), HeaderValue::from_static("x"));
        edits.set_number(HeaderName::from_static("n"), 18_446_744_073_709_551_615);
        edits.set_number(HeaderName::from_static("z"), 0);
        let mut out = Vec::new();
        edits.write_set(&mut out);
        assert_eq!(out, b"n: 18446744073709551615\r\nz: 0\r\n");
        let mut map = HeaderMap::new();
        map.insert("n", HeaderValue::from_static("old"));
        edits.apply(&mut map);
        assert_eq!(map["n"], "18446744073709551615");
        assert_eq!(map["z"], "0");
        assert_eq!(edits.host(), None);
    }
}
