//! `traffic-split`: the first rule whose tests hold (header, cookie or query argument
//! equal to a value; no tests: every request) picks one of its upstreams by weight;
//! without an `upstream_id` the pick is the route's own upstream, and so is a request
//! no rule takes. The pool is taken from the request's config snapshot
//! ([`PhaseCtx::pools`]); routes with this plugin are served by Pingora's path, which
//! sends the request where it was told ([`PhaseCtx::upstream`]).

use std::sync::Arc;

use model::plugin::{SplitOn, TrafficSplit as Config};
use rand::Rng as _;

use crate::core::phase::{PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;

#[derive(Debug)]
struct Rule {
    tests: Vec<(SplitOn, String, String)>,
    /// (upstream id or the route's, cumulative weight)
    choices: Vec<(Option<Arc<str>>, u64)>,
    total: u64,
}

#[derive(Debug)]
pub struct TrafficSplit {
    rules: Vec<Rule>,
}

impl TrafficSplit {
    pub fn compile(config: &Config) -> Result<Self, String> {
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let mut total = 0;
                let choices = rule
                    .weighted_upstreams
                    .iter()
                    .map(|w| {
                        total += u64::from(w.weight);
                        (w.upstream_id.as_deref().map(Arc::from), total)
                    })
                    .collect();
                Rule {
                    tests: rule
                        .matches
                        .iter()
                        .map(|m| (m.kind, m.name.to_ascii_lowercase(), m.value.clone()))
                        .collect(),
                    choices,
                    total,
                }
            })
            .collect();
        Ok(Self { rules })
    }

    fn holds(test: &(SplitOn, String, String), req: &RequestView<'_>) -> bool {
        let (kind, name, value) = test;
        match kind {
            SplitOn::Header => req
                .headers
                .get_all(name.as_str())
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes()),
            SplitOn::Query => req.query.is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .any(|(n, v)| n == name.as_str() && v == value.as_str())
            }),
            SplitOn::Cookie => req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .any(|pair| {
                    pair.trim()
                        .split_once('=')
                        .is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
                }),
        }
    }

    /// The upstream id picked for `req` (`None`: the route's own).
    fn pick(&self, req: &RequestView<'_>) -> Option<Arc<str>> {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.tests.iter().all(|t| Self::holds(t, req)))?;
        let at = rand::rng().random_range(0..rule.total);
        rule.choices
            .iter()
            .find(|(_, until)| at < *until)
            .and_then(|(id, _)| id.clone())
    }
}

impl Plugin for TrafficSplit {
    fn name(&self) -> &'static str {
        model::plugin::TRAFFIC_SPLIT.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::All
    }

    fn selects_upstream(&self) -> bool {
        true
    }

    fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        let Some(id) = self.pick(req) else {
            return Ok(());
        };
        // The build checked every id exists in the same snapshot.
        if let Some(pool) = ctx.pools.as_ref().and_then(|pools| pools.get(&*id)) {
            ctx.upstream = Some(pool.clone());
        }
        Ok(())
    }
}
