//! `api-breaker`: a circuit breaker per place (route, service or global rule).
//!
//! ```text
//! closed ──unhealthy.count unhealthy in a row──▶ open (2 s, doubling per break, ≤ max)
//!   ▲                                              │ time up
//!   └──healthy.count healthy in a row── half-open ◀┘  one probe at a time;
//!                                                     an unhealthy one opens it again
//! ```
//!
//! Outcomes are read in the log phase: the status the client got, so a node that
//! cannot be reached (502, 504 from the gateway) counts as unhealthy too. Requests
//! the breaker itself refused are not outcomes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::core::phase::{LogRecord, PhaseCtx, Plugin, RequestView};
use crate::core::refusal::Refusal;

/// A request the breaker let through (its outcome counts).
const PASSED: &str = "api-breaker.passed";
/// A probe may be lost (client gone before an answer): after this another may go.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    failures: u32,
    successes: u32,
    /// Breaks since the breaker last closed (the next break lasts 2^breaks s).
    breaks: u32,
    open_until: Option<Instant>,
    /// Half-open: when the probe in flight left.
    probing_since: Option<Instant>,
}

#[derive(Debug)]
pub struct ApiBreaker {
    status: u16,
    unhealthy: Vec<u16>,
    failures: u32,
    healthy: Vec<u16>,
    successes: u32,
    max: Duration,
    state: Mutex<State>,
}

impl ApiBreaker {
    pub fn compile(config: &model::plugin::ApiBreaker) -> Result<Self, String> {
        Ok(Self {
            status: config.break_response_code,
            unhealthy: config.unhealthy.http_statuses.clone(),
            failures: config.unhealthy.count,
            healthy: config.healthy.http_statuses.clone(),
            successes: config.healthy.count,
            max: Duration::from_secs(config.max_breaker_sec),
            state: Mutex::default(),
        })
    }

    /// Whether a request may go through now.
    fn admit(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => match state.probing_since {
                Some(since) if now.duration_since(since) < PROBE_TIMEOUT => false,
                _ => {
                    state.probing_since = Some(now);
                    true
                }
            },
        }
    }

    /// Records the outcome of a request it let through.
    fn outcome(&self, status: u16, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let half_open = state.open_until.is_some();
        state.probing_since = None;
        if self.unhealthy.contains(&status) {
            state.successes = 0;
            state.failures += 1;
            if half_open || state.failures >= self.failures {
                let seconds = 2u64.saturating_pow(state.breaks + 1);
                state.open_until = Some(now + Duration::from_secs(seconds).min(self.max));
                state.breaks = state.breaks.saturating_add(1);
                state.failures = 0;
            }
        } else if self.healthy.contains(&status) {
            state.failures = 0;
            if half_open {
                state.successes += 1;
                if state.successes >= self.successes {
                    *state = State::default();
                }
            }
        }
    }
}

impl Plugin for ApiBreaker {
    fn name(&self) -> &'static str {
        model::plugin::API_BREAKER.name
    }

    fn access(&self, _: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        if self.admit(Instant::now()) {
            ctx.set(PASSED, HeaderValue::from_static("1"));
            Ok(())
        } else {
            Err(Refusal::denied(
                self.status,
                "circuit_open",
                "The upstream is failing; the route is broken for a while",
            ))
        }
    }

    fn log(&self, record: &LogRecord<'_>, ctx: &PhaseCtx) {
        if ctx.get(PASSED).is_some() && record.status != 0 {
            self.outcome(record.status, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_probes_and_closes() {
        let breaker = ApiBreaker::compile(
            &serde_json::from_str(
                r#"{"unhealthy":{"http_statuses":[502],"count":2},"healthy":{"http_statuses":[200],"count":2}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        assert!(breaker.admit(at(0)));
        breaker.outcome(502, at(0));
        breaker.outcome(200, at(0)); // a success in between resets the count
        breaker.outcome(502, at(0));
        assert!(breaker.admit(at(0)));
        breaker.outcome(502, at(0));
        // Open for 2 s.
        assert!(!breaker.admit(at(1_999)));
        // Half-open: one probe, the others wait for it.
        assert!(breaker.admit(at(2_000)));
        assert!(!breaker.admit(at(2_001)));
        // The probe fails: open again, for 4 s now.
        breaker.outcome(502, at(2_010));
        assert!(!breaker.admit(at(6_000)));
        assert!(breaker.admit(at(6_011)));
        breaker.outcome(200, at(6_020));
        assert!(breaker.admit(at(6_030)));
        breaker.outcome(200, at(6_040));
        // Two healthy probes: closed, everything passes, the next break is 2 s again.
        assert!(breaker.admit(at(6_050)) && breaker.admit(at(6_050)));
        breaker.outcome(502, at(7_000));
        breaker.outcome(502, at(7_000));
        assert!(!breaker.admit(at(8_999)) && breaker.admit(at(9_000)));
    }
}
