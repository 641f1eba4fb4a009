//! `limit-req`: nginx's `limit_req` leaky bucket per key. The bucket drains `rate`
//! requests per second; a request adds one. Above `burst` excess the request is
//! refused; within it, it is delayed until the bucket drained back to the rate
//! (`nodelay` false) or let in at once (`nodelay` true). A refused request does not
//! fill the bucket.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::keys::{Key, KeySpec, SHARDS};
use crate::core::phase::{PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::Refusal;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Requests above the rate, as of `at`.
    excess: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct LimitReq {
    rate: f64,
    burst: f64,
    nodelay: bool,
    key: KeySpec,
    status: u16,
    message: Arc<str>,
    shards: Vec<Mutex<HashMap<Key, Bucket>>>,
}

/// A request's fate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Pass,
    Delay(Duration),
    Refuse,
}

impl LimitReq {
    pub fn compile(config: &model::plugin::LimitReq) -> Result<Self, String> {
        Ok(Self {
            rate: config.rate,
            burst: config.burst,
            nodelay: config.nodelay,
            key: KeySpec::new(config.key_type, &config.header)?,
            status: config.rejected_code,
            message: config
                .rejected_msg
                .as_deref()
                .unwrap_or(model::plugin::LimitCount::DEFAULT_MESSAGE)
                .into(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    fn hit(&self, key: Key, now: Instant) -> Verdict {
        let mut shard = self.shards[key.shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() > 4096 {
            // Buckets that drained empty hold nothing.
            let rate = self.rate;
            shard.retain(|_, b| b.excess - rate * now.duration_since(b.at).as_secs_f64() > 0.0);
        }
        let bucket = shard.entry(key).or_insert(Bucket {
            excess: -1.0,
            at: now,
        });
        let drained = self.rate * now.duration_since(bucket.at).as_secs_f64();
        let excess = (bucket.excess - drained).max(-1.0) + 1.0;
        if excess > self.burst {
            return Verdict::Refuse;
        }
        *bucket = Bucket { excess, at: now };
        if excess <= 0.0 || self.nodelay {
            Verdict::Pass
        } else {
            Verdict::Delay(Duration::from_secs_f64(excess / self.rate))
        }
    }

    fn refusal(&self) -> Refusal {
        Refusal::denied(self.status, "rate_limited", self.message.clone())
    }
}

impl Plugin for LimitReq {
    fn name(&self) -> &'static str {
        model::plugin::LIMIT_REQ.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        self.key.reads_headers()
    }

    fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        match self.hit(self.key.of(req, ctx), Instant::now()) {
            Verdict::Refuse => Err(self.refusal()),
            // Only with nodelay or no burst, where nothing waits.
            Verdict::Pass | Verdict::Delay(_) => Ok(()),
        }
    }

    /// Waiting is needed only when a burst is delayed.
    fn is_async(&self) -> bool {
        !self.nodelay && self.burst > 0.0
    }

    fn access_async<'a>(
        &'a self,
        req: &'a RequestView<'a>,
        ctx: &'a mut PhaseCtx,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        let verdict = self.hit(self.key.of(req, ctx), Instant::now());
        Box::pin(async move {
            match verdict {
                Verdict::Refuse => Err(self.refusal()),
                Verdict::Pass => Ok(()),
                Verdict::Delay(wait) => {
                    tokio::time::sleep(wait).await;
                    Ok(())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_drains_at_the_rate_and_holds_the_burst() {
        let plugin = |json: &str| LimitReq::compile(&serde_json::from_str(json).unwrap()).unwrap();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // 10/s, burst 2, delayed: one passes, two wait 100 and 200 ms, the fourth is
        // refused; 100 ms later one more fits.
        let delayed = plugin(r#"{"rate":10,"burst":2}"#);
        let verdicts: Vec<Verdict> = (0..4).map(|_| delayed.hit(Key::Constant, at(0))).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Pass,
                Verdict::Delay(Duration::from_millis(100)),
                Verdict::Delay(Duration::from_millis(200)),
                Verdict::Refuse
            ]
        );
        assert!(matches!(
            delayed.hit(Key::Constant, at(100)),
            Verdict::Delay(_)
        ));
        assert_eq!(delayed.hit(Key::Constant, at(100)), Verdict::Refuse);
        // nodelay: the burst passes at once; no burst: one per 100 ms.
        let nodelay = plugin(r#"{"rate":10,"burst":2,"nodelay":true}"#);
        let passed = (0..5)
            .filter(|_| nodelay.hit(Key::Constant, at(0)) == Verdict::Pass)
            .count();
        assert_eq!(passed, 3);
        let strict = plugin(r#"{"rate":10}"#);
        assert_eq!(strict.hit(Key::Constant, at(0)), Verdict::Pass);
        assert_eq!(strict.hit(Key::Constant, at(50)), Verdict::Refuse);
        assert_eq!(strict.hit(Key::Constant, at(100)), Verdict::Pass);
        // Keys are apart.
        assert_eq!(
            strict.hit(Key::Text("other".into()), at(100)),
            Verdict::Pass
        );
    }
}
