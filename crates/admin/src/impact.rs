//! What a change does to routing, for dry runs: which requests a route would stop or
//! start taking. For every route the change creates, updates or deletes, one request
//! per path and host of its old and new versions (`/api/*` → `/api/x`,
//! `/users/{id}` → `/users/1`, a wildcard host `*.a.com` → `x.a.com`; regex paths
//! have no sample) is routed by the gateway's own router on the config before and
//! after; the requests whose route differs are the answer.

use std::collections::BTreeSet;

use gateway::tester::TestTable;
use gateway::HttpSettings;
use model::diff::{ObjectDiff, Objects};
use model::resource::{Resource, ResourceKind};
use model::route::Route;
use model::snapshot::Snapshot;
use model::tester::RouteTest;
use serde::Serialize;

/// Most sample requests one dry run routes.
const MAX_SAMPLES: usize = 200;

/// A request whose route the change would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Rerouted {
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    /// The route taking it now (`None`: none, a 404 or 405).
    pub before: Option<String>,
    /// The route that would take it.
    pub after: Option<String>,
}

/// The requests the routes in `diff` would stop or start taking, from `before` to
/// `after` (built off the async workers: it compiles both configs).
pub(crate) async fn rerouted(
    before: &Objects,
    after: &Objects,
    diff: &[ObjectDiff],
) -> Vec<Rerouted> {
    let mut samples = BTreeSet::new();
    for d in diff.iter().filter(|d| d.kind == ResourceKind::Routes) {
        let key = (ResourceKind::Routes, d.id.clone());
        for objects in [before, after] {
            if let Some(Resource::Route(route)) = objects.get(&key) {
                samples.extend(samples_of(route));
            }
        }
    }
    if samples.is_empty() {
        return Vec::new();
    }
    let (before, after) = (snapshot(before), snapshot(after));
    let answer = tokio::task::spawn_blocking(move || {
        let (old, new) = (
            TestTable::from_snapshot(&before),
            TestTable::from_snapshot(&after),
        );
        let settings = HttpSettings::default();
        let route_of = |table: &TestTable, test: &RouteTest| {
            table
                .test(&settings, test)
                .ok()
                .and_then(|r| r.matched.map(|m| m.route_id))
        };
        samples
            .into_iter()
            .take(MAX_SAMPLES)
            .filter_map(|(method, host, path)| {
                let test = RouteTest {
                    method: method.clone(),
                    host: host.clone(),
                    path: path.clone(),
                    headers: Default::default(),
                    query: None,
                    client_ip: None,
                    tls: false,
                };
                let (was, will) = (route_of(&old, &test), route_of(&new, &test));
                (was != will).then_some(Rerouted {
                    method,
                    host,
                    path,
                    before: was,
                    after: will,
                })
            })
            .collect()
    })
    .await;
    answer.unwrap_or_default()
}

fn snapshot(objects: &Objects) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for resource in objects.values() {
        snapshot.push(resource.clone());
    }
    snapshot
}

/// One request per path and host of the route (method: its first, else GET).
fn samples_of(route: &Route) -> Vec<(String, Option<String>, String)> {
    let method = route
        .methods
        .first()
        .cloned()
        .unwrap_or_else(|| "GET".into());
    let hosts: Vec<Option<String>> = if route.hosts.is_empty() {
        vec![None]
    } else {
        route
            .hosts
            .iter()
            .map(|h| {
                Some(
                    h.strip_prefix('*')
                        .map_or(h.clone(), |rest| format!("x{rest}")),
                )
            })
            .collect()
    };
    let mut out = Vec::new();
    for path in route.paths.iter().filter_map(|p| sample_path(p)) {
        for host in &hosts {
            out.push((method.clone(), host.clone(), path.clone()));
        }
    }
    out
}

/// A concrete path a route path takes; `None` for regex paths.
fn sample_path(path: &str) -> Option<String> {
    if path.starts_with('~') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' if in_param => {
                in_param = false;
                out.push('1');
            }
            _ if in_param => {}
            '*' => out.push('x'),
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_paths() {
        assert_eq!(sample_path("/api/*").as_deref(), Some("/api/x"));
        assert_eq!(sample_path("/users/{id}/x").as_deref(), Some("/users/1/x"));
        assert_eq!(sample_path("/exact").as_deref(), Some("/exact"));
        assert_eq!(sample_path("~^/v[0-9]+"), None);
    }
}
