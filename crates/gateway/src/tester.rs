//! The route tester: which route of an instance takes a request, with which plugins in
//! which order, and for every other route why it does not (`model::tester` holds the
//! question and the answer).
//!
//! Answered by the node's own code, not by a second matcher:
//!
//! ```text
//! objects ─ Compiler (dry: no sinks, links, resolution) ─▶ RuntimeConfig + route states
//! request ─ core::head::check_decoded (admission, canonical host)
//!         ─ core::route::Prepared (client address, normalised path)
//!         ─ core::route::route_prepared → Router::lookup          ─▶ the match, 404, 405
//!         ─ CompiledRoute::check per route (the router's own host,
//!           path, predicate and method tests, in its order)        ─▶ the near misses
//! ```
//!
//! A [`TestTable`] is built once per config and answers any number of tests; building
//! compiles every route (and its plugins) as a node does, so callers keep it while
//! the config's revision stays. Certificates are left out: they decide TLS, not
//! routing.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use model::cluster::InstanceBinding;
use model::resource::ResourceKind;
use model::snapshot::{Revision, Snapshot};
use model::tester::{
    MatchedRoute, MissReason, NearMiss, Outcome, RouteTest, RouteTestResult, SeenRequest,
    MAX_NEAR_MISSES,
};
use model::validate::{ValidationErrors, Validator};
use store::keys::Keyspace;

use crate::core::head::{self, Limits};
use crate::core::refusal::Refusal;
use crate::core::route::{route_prepared, Incoming, Prepared, Routed};
use crate::router::{Ahead, CompiledRoute, Failure, Fit, RequestInfo, Verdict};
use crate::runtime::{upstream_from, Compiler, ConfigObjects, RuntimeConfig};
use crate::settings::HttpSettings;

/// The instance name the objects of a snapshot are keyed under (any name would do:
/// keys never reach the answer).
const INSTANCE: &str = "route-test";

/// One config, compiled as a node compiles it, ready to answer tests.
#[derive(Debug)]
pub struct TestTable {
    config: RuntimeConfig,
    /// Every route object of the instance, by id.
    routes: Vec<RouteObject>,
    /// What it was built from: the snapshot's revision and the instance's binding.
    built_from: (Revision, Option<InstanceBinding>),
}

/// A route object and what the node makes of it.
#[derive(Debug)]
struct RouteObject {
    id: String,
    /// `None` when it does not even compile.
    compiled: Option<Arc<CompiledRoute>>,
    /// Why the node does not serve it; `None` when it does.
    left_out: Option<LeftOut>,
}

#[derive(Debug)]
enum LeftOut {
    Disabled,
    Invalid(String),
}

/// Answers one test against `snapshot` (see [`TestTable`]).
pub fn test_route(
    snapshot: &Snapshot,
    settings: &HttpSettings,
    test: &RouteTest,
) -> Result<RouteTestResult, ValidationErrors> {
    TestTable::from_snapshot(snapshot).test(settings, test)
}

impl TestTable {
    /// The config of an admin snapshot, as a node of its instance builds it.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self::bound(snapshot, None)
    }

    /// The config of an admin snapshot with the instance's binding (its namespace,
    /// whether that exists, the namespace's plugin templates), as a node of the
    /// instance builds it.
    pub fn bound(snapshot: &Snapshot, binding: Option<&InstanceBinding>) -> Self {
        let keyspace = Keyspace::default();
        let mut objects = ConfigObjects::new(keyspace.clone(), INSTANCE);
        if let Some(binding) = binding {
            objects.put(
                keyspace.binding(INSTANCE),
                serde_json::to_vec(binding).expect("bindings always serialise"),
            );
        }
        objects.put(
            keyspace.meta(INSTANCE),
            serde_json::json!({ "revision": snapshot.revision })
                .to_string()
                .into_bytes(),
        );
        for resource in snapshot.resources() {
            if resource.kind() == ResourceKind::Certificates {
                continue;
            }
            objects.put(
                keyspace.resource(INSTANCE, resource.kind(), resource.id()),
                resource.to_json().to_string().into_bytes(),
            );
        }
        let mut table = Self::from_objects(objects);
        table.built_from = (snapshot.revision, binding.cloned());
        table
    }

    /// Whether this table is the config of `revision` under `binding`.
    pub fn built_from(&self, revision: Revision, binding: Option<&InstanceBinding>) -> bool {
        self.built_from.0 == revision && self.built_from.1.as_ref() == binding
    }

    /// The config of an instance's store objects (a node's view).
    pub fn from_objects(objects: ConfigObjects) -> Self {
        let mut compiler = Compiler::dry(objects);
        let built = compiler.build();
        let served: std::collections::HashSet<&str> = built
            .config
            .router
            .routes()
            .iter()
            .map(|t| t.route_id())
            .collect();
        let mut reasons: HashMap<&str, Vec<&str>> = HashMap::new();
        for problem in &built.problems {
            reasons
                .entry(problem.key.as_str())
                .or_default()
                .push(problem.reason.as_str());
        }
        let mut routes: Vec<RouteObject> = compiler
            .route_states()
            .map(|(key, id, compiled)| {
                let compiled = compiled.ok().cloned();
                let left_out = match &compiled {
                    Some(route) if served.contains(route.route.id.as_str()) => None,
                    Some(route) if !route.route.enabled => Some(LeftOut::Disabled),
                    _ => Some(LeftOut::Invalid(
                        reasons
                            .get(key)
                            .map_or_else(|| "not served".to_owned(), |r| r.join("; ")),
                    )),
                };
                RouteObject {
                    id: id.to_owned(),
                    compiled,
                    left_out,
                }
            })
            .collect();
        routes.sort_by(|a, b| a.id.cmp(&b.id));
        Self {
            built_from: (built.config.revision, None),
            config: built.config,
            routes,
        }
    }

    /// The admin revision of the config.
    pub fn revision(&self) -> Revision {
        self.config.revision
    }

    /// Answers `test` as a node with `settings` would route it now; `Err` when the
    /// test itself is invalid (see [`RouteTest::validate`]).
    pub fn test(
        &self,
        settings: &HttpSettings,
        test: &RouteTest,
    ) -> Result<RouteTestResult, ValidationErrors> {
        test.validate()?;
        let headers = header_map(test)?;
        let method = http::Method::from_bytes(test.method.as_bytes())
            .map_err(|_| invalid("method", "must be an HTTP method token such as GET"))?;
        let (path, query) = test.target();
        let target = match query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let answer =
            |outcome: Outcome, status: Option<u16>, request: Option<SeenRequest>| RouteTestResult {
                revision: self.config.revision,
                outcome,
                status,
                request,
                matched: None,
                near_misses: Vec::new(),
                truncated: 0,
                unbound: self.config.unbound.clone(),
            };
        let Ok(uri) = target.parse::<http::Uri>() else {
            let reason = "the request target does not parse".to_owned();
            return Ok(answer(Outcome::BadRequest { reason }, Some(400), None));
        };
        // The admission of a decoded head, as Pingora's path and HTTP/2 do it.
        let host = match head::check_decoded(&method, &uri, &headers, Limits::of(settings)) {
            Ok(host) => host,
            Err(refusal) => return Ok(answer(refused(&refusal), Some(refusal.status()), None)),
        };
        let peer = test.client_ip.as_deref().and_then(|ip| ip.parse().ok());
        let incoming = Incoming {
            host: &host,
            method: &test.method,
            path,
            query,
            headers: &headers,
            peer,
            tls: test.tls,
        };
        let prepared = match Prepared::new(settings, &incoming, crate::now_ms()) {
            Ok(prepared) => prepared,
            Err(refusal) => {
                let reason = match crate::normalize::normalize(path, settings.path) {
                    Err(why) => why.to_string(),
                    Ok(_) => refusal.describe().0.to_owned(),
                };
                return Ok(answer(
                    Outcome::BadRequest { reason },
                    Some(refusal.status()),
                    None,
                ));
            }
        };
        let seen = SeenRequest {
            method: test.method.clone(),
            host: host.clone().into_owned(),
            path: prepared.path.clone().into_owned(),
            query: query.map(str::to_owned),
            client_ip: prepared.client_ip.map(|ip| ip.to_string()),
        };
        let routed = route_prepared(&self.config, &incoming, prepared.clone());
        let info = prepared.info(&incoming);
        let (outcome, status, matched) = match &routed {
            Ok(routed) => (Outcome::Matched, None, Some(self.matched(routed, &info))),
            Err(Refusal::MethodNotAllowed(allow)) => (
                Outcome::MethodNotAllowed {
                    allow: allow.iter().map(|m| (*m).to_owned()).collect(),
                },
                Some(405),
                None,
            ),
            Err(refusal) => (refused(refusal), Some(refusal.status()), None),
        };
        let winner = routed.as_ref().ok().map(|r| &r.route);
        let (near_misses, truncated) = self.near_misses(&info, winner);
        Ok(RouteTestResult {
            revision: self.config.revision,
            outcome,
            status,
            request: Some(seen),
            matched,
            near_misses,
            truncated,
            unbound: self.config.unbound.clone(),
        })
    }

    fn matched(&self, routed: &Routed<'_>, info: &RequestInfo<'_>) -> MatchedRoute {
        let compiled = &routed.route;
        let route = &compiled.route;
        let (path, host) = match compiled.check(info) {
            Verdict::Takes(fit) => (
                route.paths.get(fit.path).cloned().unwrap_or_default(),
                fit.host.and_then(|i| compiled.host(i)).map(str::to_owned),
            ),
            // The lookup took it, so its own check does too.
            _ => (String::new(), None),
        };
        let pool = &routed.upstream;
        let standalone = self
            .config
            .upstreams_by_id
            .get(&pool.id)
            .is_some_and(|p| Arc::ptr_eq(p, pool));
        MatchedRoute {
            route_id: route.id.clone(),
            path,
            host,
            service_id: route.service_id.clone(),
            upstream_from: upstream_from(route),
            upstream_id: standalone.then(|| pool.id.clone()),
            plugins: routed.plugins.specs().cloned().collect(),
        }
    }

    /// Every route but the winner, closest first, capped.
    fn near_misses(
        &self,
        info: &RequestInfo<'_>,
        winner: Option<&Arc<CompiledRoute>>,
    ) -> (Vec<NearMiss>, usize) {
        let winner_fit = winner.and_then(|w| match w.check(info) {
            Verdict::Takes(fit) => Some((w, fit)),
            _ => None,
        });
        let mut misses: Vec<(Closeness, NearMiss)> = self
            .routes
            .iter()
            .filter(|r| winner.is_none_or(|w| w.route.id != r.id))
            .map(|r| self.near_miss(r, info, winner_fit))
            .collect();
        misses.sort_by(|(a, x), (b, y)| b.cmp(a).then_with(|| x.route_id.cmp(&y.route_id)));
        let truncated = misses.len().saturating_sub(MAX_NEAR_MISSES);
        misses.truncate(MAX_NEAR_MISSES);
        (misses.into_iter().map(|(_, m)| m).collect(), truncated)
    }

    fn near_miss(
        &self,
        object: &RouteObject,
        info: &RequestInfo<'_>,
        winner: Option<(&Arc<CompiledRoute>, Fit)>,
    ) -> (Closeness, NearMiss) {
        let Some(route) = &object.compiled else {
            let reason = match &object.left_out {
                Some(LeftOut::Invalid(reason)) => reason.clone(),
                _ => "it does not compile".to_owned(),
            };
            let miss = NearMiss {
                route_id: object.id.clone(),
                reason: MissReason::SkippedInvalid,
                detail: format!("the node does not serve it: {reason}"),
                expected: None,
                got: None,
                shadowed_by: None,
            };
            return (Closeness::default(), miss);
        };
        let verdict = route.check(info);
        let closeness = Closeness::of(verdict, object.left_out.is_none());
        let Some(left_out) = &object.left_out else {
            return (closeness, explain(route, verdict, info, winner));
        };
        let (reason, why) = match left_out {
            LeftOut::Disabled => (MissReason::Disabled, "it is disabled".to_owned()),
            LeftOut::Invalid(reason) => (
                MissReason::SkippedInvalid,
                format!("the node does not serve it: {reason}"),
            ),
        };
        let miss = match verdict {
            Verdict::Takes(_) => NearMiss {
                route_id: object.id.clone(),
                reason,
                detail: format!("{why}; it would take the request otherwise"),
                expected: None,
                got: None,
                shadowed_by: None,
            },
            _ => {
                let besides = explain(route, verdict, info, winner);
                NearMiss {
                    reason,
                    detail: format!("{why}; besides, {}", besides.detail),
                    ..besides
                }
            }
        };
        (closeness, miss)
    }
}

/// How close a route came: the later the check it failed, the closer; among equals a
/// served route before one the node leaves out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Closeness {
    /// 0: does not compile; 1 host; 2 path; 3 predicates; 4 method; 5 takes it.
    stage: u8,
    /// Among predicates, the later in the router's order.
    predicate: (u8, usize),
    served: bool,
}

impl Closeness {
    fn of(verdict: Verdict, served: bool) -> Self {
        let (stage, predicate) = match verdict {
            Verdict::Host => (1, (0, 0)),
            Verdict::Path => (2, (0, 0)),
            Verdict::Predicate(failure) => (
                3,
                match failure {
                    Failure::TimeWindow => (0, 0),
                    Failure::RemoteAddr => (1, 0),
                    Failure::Header(i) => (2, i),
                    Failure::Query(i) => (3, i),
                    Failure::Cookie(i) => (4, i),
                },
            ),
            Verdict::Method => (4, (0, 0)),
            Verdict::Takes(_) => (5, (0, 0)),
        };
        Self {
            stage,
            predicate,
            served,
        }
    }
}

/// Why a compiled route does not take the request, from its verdict.
fn explain(
    route: &CompiledRoute,
    verdict: Verdict,
    info: &RequestInfo<'_>,
    winner: Option<(&Arc<CompiledRoute>, Fit)>,
) -> NearMiss {
    let spec = &route.route;
    let miss = |reason, detail: String, expected: Option<String>, got: Option<String>| NearMiss {
        route_id: spec.id.clone(),
        reason,
        detail,
        expected,
        got,
        shadowed_by: None,
    };
    match verdict {
        Verdict::Host => {
            let hosts = spec.hosts.join(", ");
            let detail = if info.host.is_empty() {
                format!("the request names no host; the route takes {hosts} only")
            } else {
                format!("its hosts ({hosts}) do not include {:?}", info.host)
            };
            miss(
                MissReason::HostMismatch,
                detail,
                Some(hosts),
                Some(info.host.to_owned()),
            )
        }
        Verdict::Path => {
            let paths = spec.paths.join(", ");
            miss(
                MissReason::PathMismatch,
                format!("none of its paths ({paths}) matches {:?}", info.path),
                Some(paths),
                Some(info.path.to_owned()),
            )
        }
        Verdict::Predicate(failure) => {
            let text = route.explain_failure(failure, info);
            let reason = match failure {
                Failure::TimeWindow => MissReason::OutsideTimeWindow,
                Failure::RemoteAddr => MissReason::RemoteAddrMismatch,
                Failure::Header(_) => MissReason::HeaderMismatch,
                Failure::Query(_) => MissReason::QueryMismatch,
                Failure::Cookie(_) => MissReason::CookieMismatch,
            };
            miss(
                reason,
                format!(
                    "{}: expected {}, got {}",
                    text.what, text.expected, text.got
                ),
                Some(text.expected),
                Some(text.got),
            )
        }
        Verdict::Method => {
            let methods = spec.methods.join(", ");
            miss(
                MissReason::MethodNotAllowed,
                format!("it takes {methods} only, not {}", info.method),
                Some(methods),
                Some(info.method.to_owned()),
            )
        }
        Verdict::Takes(fit) => {
            let Some((winner, winner_fit)) = winner else {
                // The lookup found nothing while this route takes the request: the
                // two views disagree, which the tests rule out.
                debug_assert!(false, "{} takes the request but was not found", spec.id);
                return miss(
                    MissReason::Shadowed,
                    "it takes the request, yet the router's lookup did not find it".to_owned(),
                    None,
                    None,
                );
            };
            let w = &winner.route;
            let path_of =
                |r: &CompiledRoute, f: &Fit| r.route.paths.get(f.path).cloned().unwrap_or_default();
            let host_of = |r: &CompiledRoute, f: &Fit| {
                f.host
                    .and_then(|i| r.host(i))
                    .map_or_else(|| "any host".to_owned(), |h| format!("{h:?}"))
            };
            let why = match winner.ahead_of(&winner_fit, route, &fit) {
                Some(Ahead::Path) => format!(
                    "its path {:?} is more specific than {:?}",
                    path_of(winner, &winner_fit),
                    path_of(route, &fit)
                ),
                Some(Ahead::Host) => format!(
                    "the paths are equally specific and its host {} is more specific than {}",
                    host_of(winner, &winner_fit),
                    host_of(route, &fit)
                ),
                Some(Ahead::Priority) => format!(
                    "path and host are equally specific and its priority {} is above {}",
                    w.priority, spec.priority
                ),
                Some(Ahead::Id) => format!(
                    "path, host and priority are equal and its id sorts first ({:?} < {:?})",
                    w.id, spec.id
                ),
                None => {
                    debug_assert!(false, "{} ranks above the route the router chose", spec.id);
                    "the router chose it".to_owned()
                }
            };
            NearMiss {
                shadowed_by: Some(w.id.clone()),
                ..miss(
                    MissReason::Shadowed,
                    format!(
                        "it takes the request too, but route {:?} comes first: {why}",
                        w.id
                    ),
                    None,
                    None,
                )
            }
        }
    }
}

/// A refusal before or instead of routing, as an outcome.
fn refused(refusal: &Refusal) -> Outcome {
    let (message, code) = refusal.describe();
    match refusal {
        Refusal::NoRoute => Outcome::NotFound,
        Refusal::BadRequest => Outcome::BadRequest {
            reason: "the node refuses its head: a malformed Host, a Host naming another \
                     host than the target, two Hosts, or a bad Content-Length"
                .to_owned(),
        },
        _ => Outcome::Refused {
            code: code.to_owned(),
            reason: message.to_owned(),
        },
    }
}

/// The test's headers as a node receives them (validated already: any error here is
/// reported at its field all the same).
fn header_map(test: &RouteTest) -> Result<HeaderMap, ValidationErrors> {
    let mut headers = HeaderMap::new();
    for (name, value) in test.header_lines() {
        let field = if name == "host" && test.host.is_some() {
            "host".to_owned()
        } else {
            format!("headers.{name}")
        };
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(&field, "must be a header name (an HTTP token)"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| invalid(&field, "must be a header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn invalid(field: &str, message: &str) -> ValidationErrors {
    let mut v = Validator::new();
    v.error(field, message);
    v.finish().err().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::tester::{HeaderValues, UpstreamFrom};
    use serde_json::json;

    /// A table of `routes` (each sent to upstream `u` unless it says otherwise) and
    /// any other objects.
    fn table(routes: &[serde_json::Value], others: &[Resource]) -> TestTable {
        let mut snapshot = Snapshot {
            revision: Revision(7),
            ..Snapshot::default()
        };
        snapshot.push(Resource::Upstream(
            serde_json::from_value(json!({"id": "u", "nodes": [{"host": "127.0.0.1", "port": 1}]}))
                .unwrap(),
        ));
        for route in routes {
            let mut route = route.clone();
            if route.get("upstream_id").is_none()
                && route.get("upstream").is_none()
                && route.get("service_id").is_none()
            {
                route["upstream_id"] = json!("u");
            }
            snapshot.push(Resource::Route(serde_json::from_value(route).unwrap()));
        }
        for other in others {
            snapshot.push(other.clone());
        }
        TestTable::from_snapshot(&snapshot)
    }

    use model::resource::Resource;

    fn run(table: &TestTable, test: &RouteTest) -> RouteTestResult {
        table.test(&HttpSettings::default(), test).unwrap()
    }

    fn get(host: &str, path: &str) -> RouteTest {
        let mut test = RouteTest::get(path);
        test.host = Some(host.to_owned());
        test
    }

    /// The near miss of route `id`.
    fn miss<'r>(result: &'r RouteTestResult, id: &str) -> &'r NearMiss {
        result
            .near_misses
            .iter()
            .find(|m| m.route_id == id)
            .unwrap_or_else(|| panic!("no near miss {id}: {result:#?}"))
    }

    #[test]
    fn the_match_with_its_path_host_upstream_and_plugins_in_running_order() {
        let global: Resource = Resource::GlobalRule(
            serde_json::from_value(json!({"id": "g", "plugins": {"request-id": {}}})).unwrap(),
        );
        let table = table(
            &[
                json!({"id": "r", "paths": ["/x", "/a/*"], "hosts": ["*.example.com", "Api.Example.com"],
                     "plugins": {"key-auth": {}, "limit-count": {"count": 5, "time_window": 60}}}),
            ],
            &[global],
        );
        let result = run(&table, &get("api.example.com:8443", "/a/b?c=1"));
        assert_eq!(result.outcome, Outcome::Matched);
        assert_eq!(result.status, None);
        assert_eq!(result.revision, Revision(7));
        let seen = result.request.as_ref().unwrap();
        assert_eq!(seen.host, "api.example.com");
        assert_eq!(seen.query.as_deref(), Some("c=1"));
        let matched = result.matched.unwrap();
        assert_eq!(matched.route_id, "r");
        assert_eq!(matched.path, "/a/*");
        assert_eq!(matched.host.as_deref(), Some("api.example.com"));
        assert_eq!(matched.upstream_from, UpstreamFrom::Route);
        assert_eq!(matched.upstream_id.as_deref(), Some("u"));
        let plugins: Vec<(&str, String)> = matched
            .plugins
            .iter()
            .map(|p| (p.name, p.source.to_string()))
            .collect();
        assert_eq!(
            plugins,
            [
                ("request-id", "global_rule:g".to_owned()),
                ("key-auth", "route:r".to_owned()),
                ("limit-count", "route:r".to_owned()),
            ]
        );
        assert!(result.near_misses.is_empty());
    }

    #[test]
    fn a_service_upstream_and_an_inline_one() {
        let service = Resource::Service(
            serde_json::from_value(json!({"id": "s", "upstream_id": "u"})).unwrap(),
        );
        let table = table(
            &[
                json!({"id": "via-service", "paths": ["/s"], "service_id": "s"}),
                json!({"id": "inline", "paths": ["/i"],
                       "upstream": {"nodes": [{"host": "127.0.0.1", "port": 2}]}}),
            ],
            &[service],
        );
        let matched = run(&table, &RouteTest::get("/s")).matched.unwrap();
        assert_eq!(matched.upstream_from, UpstreamFrom::Service);
        assert_eq!(matched.service_id.as_deref(), Some("s"));
        assert_eq!(matched.upstream_id.as_deref(), Some("u"));
        let matched = run(&table, &RouteTest::get("/i")).matched.unwrap();
        assert_eq!(matched.upstream_from, UpstreamFrom::Route);
        assert_eq!(matched.upstream_id, None);
    }

    #[test]
    fn host_and_path_mismatches() {
        let table = table(
            &[
                json!({"id": "other-host", "paths": ["/a"], "hosts": ["*.example.org"]}),
                json!({"id": "other-path", "paths": ["/b", "/c/{id}"]}),
            ],
            &[],
        );
        let result = run(&table, &get("example.org", "/a"));
        assert_eq!(result.outcome, Outcome::NotFound);
        assert_eq!(result.status, Some(404));
        let host = miss(&result, "other-host");
        assert_eq!(host.reason, MissReason::HostMismatch);
        assert_eq!(host.expected.as_deref(), Some("*.example.org"));
        assert_eq!(host.got.as_deref(), Some("example.org"));
        let path = miss(&result, "other-path");
        assert_eq!(path.reason, MissReason::PathMismatch);
        assert_eq!(path.got.as_deref(), Some("/a"));
        // A path mismatch came closer than a host mismatch.
        assert_eq!(result.near_misses[0].route_id, "other-path");
        let no_host = run(&table, &RouteTest::get("/a"));
        assert!(miss(&no_host, "other-host")
            .detail
            .contains("names no host"));
    }

    #[test]
    fn each_predicate_says_what_it_wants_and_what_the_request_has() {
        let table = table(
            &[
                json!({"id": "header", "paths": ["/p"],
                       "headers": [{"name": "x-tenant", "op": "equals", "value": "blue"}]}),
                json!({"id": "secret", "paths": ["/p"],
                       "headers": [{"name": "authorization", "op": "equals", "value": "Bearer s3cret"}]}),
                json!({"id": "query", "paths": ["/p"],
                       "query": [{"name": "beta", "op": "present"}]}),
                json!({"id": "cookie", "paths": ["/p"],
                       "cookies": [{"name": "flavor", "op": "regex", "value": "^choc", "not": true}]}),
                json!({"id": "remote", "paths": ["/p"], "remote_addrs": ["10.0.0.0/8"]}),
                json!({"id": "window", "paths": ["/p"],
                       "time_window": {"before": "2001-01-01T00:00:00Z"}}),
            ],
            &[],
        );
        let mut test = RouteTest::get("/p");
        test.client_ip = Some("192.0.2.1".into());
        test.headers
            .insert("x-tenant".into(), HeaderValues::One("red".into()));
        test.headers.insert(
            "Authorization".into(),
            HeaderValues::One("Bearer hunter2-token".into()),
        );
        test.headers.insert(
            "cookie".into(),
            HeaderValues::One("flavor=chocolate".into()),
        );
        let result = run(&table, &test);
        assert_eq!(result.outcome, Outcome::NotFound);

        let header = miss(&result, "header");
        assert_eq!(header.reason, MissReason::HeaderMismatch);
        assert_eq!(header.expected.as_deref(), Some("equal to \"blue\""));
        assert_eq!(header.got.as_deref(), Some("\"red\""));
        assert!(
            header.detail.starts_with("header \"x-tenant\""),
            "{header:?}"
        );

        // Neither the request's credential nor the route's is shown.
        let secret = miss(&result, "secret");
        assert_eq!(secret.reason, MissReason::HeaderMismatch);
        assert_eq!(secret.got.as_deref(), Some("<masked, 20 bytes>"));
        assert_eq!(
            secret.expected.as_deref(),
            Some("equal to <masked, 13 bytes>")
        );
        let json = serde_json::to_string(&result).unwrap();
        assert!(
            !json.contains("hunter2") && !json.contains("s3cret"),
            "{json}"
        );

        let query = miss(&result, "query");
        assert_eq!(query.reason, MissReason::QueryMismatch);
        assert_eq!(
            (query.expected.as_deref(), query.got.as_deref()),
            (Some("present"), Some("absent"))
        );

        let cookie = miss(&result, "cookie");
        assert_eq!(cookie.reason, MissReason::CookieMismatch);
        assert_eq!(cookie.expected.as_deref(), Some("not matching \"^choc\""));
        assert_eq!(cookie.got.as_deref(), Some("\"chocolate\""));

        let remote = miss(&result, "remote");
        assert_eq!(remote.reason, MissReason::RemoteAddrMismatch);
        assert_eq!(
            (remote.expected.as_deref(), remote.got.as_deref()),
            (Some("in 10.0.0.0/8"), Some("192.0.2.1"))
        );

        let window = miss(&result, "window");
        assert_eq!(window.reason, MissReason::OutsideTimeWindow);
        assert_eq!(
            window.expected.as_deref(),
            Some("before 2001-01-01T00:00:00Z")
        );
        assert!(window.got.as_deref().unwrap().starts_with("now: "));

        // Closest first: the later the predicate in the router's order, the closer.
        let order: Vec<&str> = result
            .near_misses
            .iter()
            .map(|m| m.route_id.as_str())
            .collect();
        assert_eq!(
            order,
            ["cookie", "query", "header", "secret", "remote", "window"]
        );
    }

    #[test]
    fn method_not_allowed_lists_what_the_routes_take() {
        let table = table(
            &[
                json!({"id": "get", "paths": ["/m"], "methods": ["GET", "HEAD"]}),
                json!({"id": "put", "paths": ["/m*"], "methods": ["PUT"]}),
            ],
            &[],
        );
        let mut test = RouteTest::get("/m");
        test.method = "POST".into();
        let result = run(&table, &test);
        assert_eq!(
            result.outcome,
            Outcome::MethodNotAllowed {
                allow: vec!["GET".into(), "PUT".into(), "HEAD".into()]
            }
        );
        assert_eq!(result.status, Some(405));
        let get = miss(&result, "get");
        assert_eq!(get.reason, MissReason::MethodNotAllowed);
        assert_eq!(get.expected.as_deref(), Some("GET, HEAD"));
        assert_eq!(get.got.as_deref(), Some("POST"));
    }

    #[test]
    fn shadowed_routes_name_the_winner_and_the_rule() {
        let table = table(
            &[
                json!({"id": "exact", "paths": ["/api/x"]}),
                json!({"id": "prefix", "paths": ["/api/*"], "priority": 100}),
                json!({"id": "host", "paths": ["/h"], "hosts": ["a.example.com"]}),
                json!({"id": "wild", "paths": ["/h"], "hosts": ["*.example.com"]}),
                json!({"id": "high", "paths": ["/p"], "priority": 5}),
                json!({"id": "low", "paths": ["/p"]}),
                json!({"id": "a-first", "paths": ["/i"]}),
                json!({"id": "b-second", "paths": ["/i"]}),
            ],
            &[],
        );
        for (path, winner, loser, rule) in [
            (
                "/api/x",
                "exact",
                "prefix",
                "its path \"/api/x\" is more specific",
            ),
            (
                "/h",
                "host",
                "wild",
                "its host \"a.example.com\" is more specific",
            ),
            ("/p", "high", "low", "its priority 5 is above 0"),
            ("/i", "a-first", "b-second", "its id sorts first"),
        ] {
            let result = run(&table, &get("a.example.com", path));
            assert_eq!(result.matched.as_ref().unwrap().route_id, winner, "{path}");
            let shadowed = miss(&result, loser);
            assert_eq!(shadowed.reason, MissReason::Shadowed, "{path}");
            assert_eq!(shadowed.shadowed_by.as_deref(), Some(winner));
            assert!(
                shadowed.detail.contains(rule),
                "{path}: {}",
                shadowed.detail
            );
            // Shadowed is the closest a route gets.
            assert_eq!(result.near_misses[0].route_id, loser, "{path}");
        }
    }

    #[test]
    fn routes_the_node_leaves_out_say_why() {
        let table = table(
            &[
                json!({"id": "no-upstream", "paths": ["/x"], "upstream_id": "gone"}),
                json!({"id": "off", "paths": ["/x"], "enabled": false}),
                json!({"id": "off-elsewhere", "paths": ["/y"], "enabled": false}),
                json!({"id": "bad-plugin", "paths": ["/z"],
                       "plugins": {"limit-count": {"count": 0, "time_window": 60}}}),
            ],
            &[],
        );
        let result = run(&table, &RouteTest::get("/x"));
        assert_eq!(result.outcome, Outcome::NotFound);
        let skipped = miss(&result, "no-upstream");
        assert_eq!(skipped.reason, MissReason::SkippedInvalid);
        assert!(
            skipped.detail.contains("upstream \"gone\" is missing")
                && skipped
                    .detail
                    .ends_with("it would take the request otherwise"),
            "{}",
            skipped.detail
        );
        let off = miss(&result, "off");
        assert_eq!(off.reason, MissReason::Disabled);
        let elsewhere = miss(&result, "off-elsewhere");
        assert!(
            elsewhere
                .detail
                .starts_with("it is disabled; besides, none of its paths"),
            "{}",
            elsewhere.detail
        );
        assert_eq!(
            miss(&result, "bad-plugin").reason,
            MissReason::SkippedInvalid
        );
        // Those that would take the request come first.
        let first: Vec<&str> = result.near_misses[..2]
            .iter()
            .map(|m| m.route_id.as_str())
            .collect();
        assert_eq!(first, ["no-upstream", "off"]);
    }

    #[test]
    fn requests_refused_before_routing() {
        let table = table(&[json!({"id": "r", "paths": ["/*"]})], &[]);
        let bad_path = run(&table, &RouteTest::get("/a/%zz"));
        assert_eq!(bad_path.status, Some(400));
        assert!(
            matches!(&bad_path.outcome, Outcome::BadRequest { reason } if reason.contains("percent")),
            "{:?}",
            bad_path.outcome
        );
        assert!(bad_path.request.is_none() && bad_path.near_misses.is_empty());
        let bad_host = run(&table, &get("a b", "/"));
        assert_eq!(bad_host.status, Some(400));
        let mut connect = RouteTest::get("/");
        connect.method = "CONNECT".into();
        let connect = run(&table, &connect);
        assert_eq!(connect.status, Some(405));
        assert!(matches!(connect.outcome, Outcome::Refused { .. }));
        let settings = HttpSettings {
            max_uri_bytes: 8,
            ..HttpSettings::default()
        };
        let long = table
            .test(&settings, &RouteTest::get("/0123456789"))
            .unwrap();
        assert_eq!(long.status, Some(414));
        // An invalid test is an error, not an answer.
        assert!(table.test(&settings, &RouteTest::get("no-slash")).is_err());
    }

    #[test]
    fn near_misses_are_capped() {
        let routes: Vec<serde_json::Value> = (0..MAX_NEAR_MISSES + 10)
            .map(|i| json!({"id": format!("r{i:03}"), "paths": [format!("/p{i}")]}))
            .collect();
        let table = table(&routes, &[]);
        let result = run(&table, &RouteTest::get("/p0"));
        assert_eq!(result.matched.unwrap().route_id, "r000");
        assert_eq!(result.near_misses.len(), MAX_NEAR_MISSES);
        assert_eq!(result.truncated, 9);
    }

    #[test]
    fn a_dry_build_opens_no_sink_and_resolves_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let table = table(
            &[json!({"id": "logged", "paths": ["/l"],
                     "upstream": {"nodes": [{"host": "name.invalid", "port": 80}]},
                     "plugins": {"file-logger": {"path": log.to_str().unwrap()},
                                 "limit-count": {"count": 1, "time_window": 1, "policy": "redis",
                                                 "redis": {"url": "redis://127.0.0.1:1"}}}})],
            &[],
        );
        let result = run(&table, &RouteTest::get("/l"));
        assert_eq!(result.matched.unwrap().route_id, "logged");
        assert!(!log.exists(), "the dry build created the log file");
    }
}
