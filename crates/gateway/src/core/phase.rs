//! The phases a plugin acts in, called by both engines at the same points of a request,
//! so a plugin is written once against this interface and runs on the fast path and on
//! Pingora's path alike:
//!
//! ```text
//! request          before routing (global plugins); may answer          [no global
//!                                                                        plugins yet]
//! access           after the route matched; may refuse (403, 401, 429…)  route_request
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

use http::{HeaderMap, HeaderName, HeaderValue};

use super::refusal::Refusal;

/// What a plugin sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Normalised, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Canonical host.
    pub host: &'a str,
    /// The request headers; filled only when some plugin of the chain (or routing)
    /// `reads_headers`, empty otherwise.
    pub headers: &'a HeaderMap,
    /// The client after the trusted-proxy rules.
    pub client_ip: Option<IpAddr>,
    /// The client's connection is TLS (the request's scheme is https).
    pub tls: bool,
}

/// Per-request values plugins share between phases (e.g. the request id made in one
/// phase and sent back in another).
#[derive(Debug, Default)]
pub struct PhaseCtx {
    vars: Vec<(&'static str, HeaderValue)>,
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
}

/// Header changes a phase asks for: names removed, then values set (replacing any).
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// Sets `name` to `value`, replacing what the message had and what an earlier
    /// plugin set.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        match self.set.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.set.push((name, value)),
        }
    }

    /// Removes `name` from the message (and what an earlier plugin set).
    pub fn remove(&mut self, name: HeaderName) {
        self.set.retain(|(n, _)| *n != name);
        self.remove.push(name);
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Whether a header the engine would forward as it is is removed or replaced.
    pub fn touches(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .chain(self.set.iter().map(|(n, _)| n))
            .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    pub fn removals(&self) -> &[HeaderName] {
        &self.remove
    }

    pub fn sets(&self) -> &[(HeaderName, HeaderValue)] {
        &self.set
    }

    /// Applies the edits to a response or request head already written as bytes
    /// (status or request line, header lines, blank line): lines of touched names go,
    /// set ones are added before the blank line.
    pub fn apply_to_head(&self, head: &mut Vec<u8>) {
        if self.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(head.len() + 64);
        let mut lines = head.split(|&b| b == b'\n').peekable();
        if let Some(first) = lines.next() {
            out.extend_from_slice(first);
            out.push(b'\n');
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

    /// Applies the edits to a header map (Pingora's adapter).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Writes the set headers as header lines (the fast path, after the headers it
    /// kept, which skipped every name [`touches`](Self::touches) names).
    pub fn write_set(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.set {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// How a request ended, for the log phase.
#[derive(Debug, Clone)]
pub struct LogRecord<'a> {
    pub route_id: &'a str,
    /// The status the client got (0: no response was sent).
    pub status: u16,
    pub duration: Duration,
    pub client_ip: Option<IpAddr>,
}

/// A plugin: every phase is optional.
pub trait Plugin: Send + Sync + fmt::Debug {
    /// The plugin's name, as configured (`ip-restriction`).
    fn name(&self) -> &'static str;
    /// Higher runs first.
    fn priority(&self) -> i32;
    /// Whether a phase reads the request headers (they are collected only then).
    fn reads_headers(&self) -> bool {
        false
    }
    /// After routing: `Err` ends the request with that refusal.
    fn access(&self, _req: &RequestView<'_>, _ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        Ok(())
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
}

/// A route's plugins in the order they run.
#[derive(Debug, Default, Clone)]
pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Chain {
    /// Orders `plugins` by priority, highest first; equal priorities by name, so the
    /// order never depends on how the config listed them.
    pub fn new(mut plugins: Vec<Arc<dyn Plugin>>) -> Self {
        plugins.sort_by(|a, b| {
            b.priority()
                .cmp(&a.priority())
                .then_with(|| a.name().cmp(b.name()))
        });
        Self { plugins }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The names in running order (the effective order an operator can be shown).
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    pub fn reads_headers(&self) -> bool {
        self.plugins.iter().any(|p| p.reads_headers())
    }

    pub fn wants_response_body(&self) -> bool {
        self.plugins.iter().any(|p| p.wants_response_body())
    }

    /// Runs every access phase in order; the first refusal ends the request.
    pub fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        self.plugins.iter().try_for_each(|p| p.access(req, ctx))
    }

    pub fn upstream_request(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        for plugin in &self.plugins {
            plugin.upstream_request(req, ctx, &mut edits);
        }
        edits
    }

    pub fn response_head(&self, status: u16, ctx: &mut PhaseCtx) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        for plugin in &self.plugins {
            plugin.response_head(status, ctx, &mut edits);
        }
        edits
    }

    pub fn log(&self, record: &LogRecord<'_>, ctx: &PhaseCtx) {
        for plugin in &self.plugins {
            plugin.log(record, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Named(&'static str, i32);

    impl Plugin for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn priority(&self) -> i32 {
            self.1
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
        let chain = Chain::new(vec![
            Arc::new(Named("b", 1)),
            Arc::new(Named("c", 5)),
            Arc::new(Named("a", 1)),
        ]);
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
    }
}
