//! `limit-count`: at most `count` requests per `time_window` seconds and key, counted
//! in the node's memory (the `local` policy). Windows are aligned to the Unix epoch
//! (a 60 s window starts at every whole minute), so every node — and, later, the
//! cluster-wide policy — agree on where a window starts.
//!
//! Fixed windows count exactly: within one window at most `count` requests of a key
//! are admitted, whatever the concurrency (the check and the increment happen under
//! one lock). Sliding windows weight the previous window's count by how much of it
//! still overlaps the last `time_window` seconds.
//!
//! The counters live in the plugin, which the runtime keeps while its configuration
//! and place (route, service, global rule, consumer) stay the same: a change to
//! anything else keeps the counts.
//!
//! The `redis` policy counts in Redis instead, shared by every node: one Lua script
//! reads the window (and, sliding, the previous one), refuses or increments, so the
//! check and the count are one atomic step and the cluster admits exactly `count`.
//! Requests of one key that arrive while a call for that key is in flight wait for
//! the next call and go in it together: the script admits as many of them as the
//! window has room for, in arrival order (`INCRBY`), so a busy key costs one round
//! trip per batch instead of one per request, and the count stays exact.
//! Keys: `portico:limit-count:{instance}:{place}:{config digest}:{key}:{window}`,
//! expiring after two windows. While Redis is down or slower than `timeout_ms` the
//! node counts in its memory (`plugins::redis`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use model::plugin::{Policy, Window};
use tokio::sync::oneshot;

use super::keys::{Key, KeySpec, SHARDS};
use super::redis::RedisLink;
use super::PluginPlace;
use crate::core::phase::{
    HeaderEdits, PhaseCtx, Plugin, RateLimitReport, ReadsHeaders, RequestView,
};
use crate::core::refusal::Refusal;
use crate::runtime::NodeCounters;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    /// The window's index (Unix time / window).
    window: u64,
    count: u64,
    /// The previous window's count (sliding windows).
    previous: u64,
}

#[derive(Debug, Default)]
struct Shard {
    counters: HashMap<Key, Counter>,
    /// Size after the last sweep of finished windows.
    swept_at: usize,
}

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Checks and counts `ARGV[5]` requests in Redis; see the module doc. Returns
/// `{admitted (how many of them, the first ones), remaining after them}`.
const SCRIPT: &str = r#"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local into = tonumber(ARGV[3])
local wanted = tonumber(ARGV[5])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local carried = 0
if ARGV[4] == '1' then
  local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
  carried = math.ceil(previous * (window - into) / window)
end
local room = limit - carried - current
if room <= 0 then
  return {0, 0}
end
local admitted = math.min(wanted, room)
current = redis.call('INCRBY', KEYS[1], admitted)
if current == admitted then
  redis.call('PEXPIRE', KEYS[1], window * 2)
end
return {admitted, limit - carried - current}
"#;

/// The `redis` policy of one plugin.
#[derive(Debug)]
struct Shared {
    link: Arc<RedisLink>,
    timeout: Duration,
    /// Every key of this plugin starts with it.
    prefix: String,
    script: redis::Script,
    /// The node's, where fallbacks are counted.
    counters: Arc<NodeCounters>,
    count: u64,
    window_ms: u64,
    sliding: bool,
    /// The keys with a call in flight, each with the requests waiting for the next.
    queues: Mutex<HashMap<Key, Vec<oneshot::Sender<Option<Verdict>>>>>,
}

/// What one script call answered for a batch of requests.
#[derive(Debug, Clone, Copy)]
struct Batch {
    admitted: u64,
    /// Left in the window after the batch.
    remaining: u64,
    reset: u64,
}

impl Batch {
    /// The verdict of the batch's `i`-th request (in arrival order).
    fn verdict(&self, i: usize) -> Verdict {
        let i = i as u64;
        if i < self.admitted {
            Verdict {
                admitted: true,
                remaining: self.remaining + (self.admitted - 1 - i),
                reset: self.reset,
            }
        } else {
            Verdict {
                admitted: false,
                remaining: 0,
                reset: self.reset,
            }
        }
    }
}

impl Shared {
    /// Counts one request of `key` in Redis; `None` when Redis cannot say within the
    /// timeout. With no call for `key` in flight the request makes one itself;
    /// otherwise it waits for the next call, which counts everything queued by then.
    async fn hit(self: &Arc<Self>, key: &Key) -> Option<Verdict> {
        let queued = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            match queues.get_mut(key) {
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    queue.push(tx);
                    Some(rx)
                }
                None => {
                    queues.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        match queued {
            Some(rx) => tokio::time::timeout(self.timeout, rx).await.ok()?.ok()?,
            None => {
                // Dropped however this ends (the client gone mid-call included).
                let _turn = Turn { shared: self, key };
                Some(self.call(key, 1).await?.verdict(0))
            }
        }
    }

    /// One script call counting `wanted` requests of `key`.
    async fn call(&self, key: &Key, wanted: usize) -> Option<Batch> {
        let (window, into, reset) = window_at(now_ms(), self.window_ms);
        let key = key.text();
        let current = format!("{}:{key}:{window}", self.prefix);
        let previous = format!("{}:{key}:{}", self.prefix, window.saturating_sub(1));
        let (admitted, remaining): (i64, i64) = self
            .link
            .run(
                &self.script,
                &[&current, &previous],
                &[
                    self.count as i64,
                    self.window_ms as i64,
                    into as i64,
                    i64::from(self.sliding),
                    wanted as i64,
                ],
                self.timeout,
            )
            .await?;
        Some(Batch {
            admitted: admitted.max(0) as u64,
            remaining: remaining.max(0) as u64,
            reset,
        })
    }

    /// Calls for the requests queued on `key`, batch after batch, until none wait.
    async fn drain(self: Arc<Self>, key: Key) {
        loop {
            let waiting = {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                match queues.get_mut(&key) {
                    Some(queue) if !queue.is_empty() => std::mem::take(queue),
                    _ => {
                        queues.remove(&key);
                        return;
                    }
                }
            };
            let batch = self.call(&key, waiting.len()).await;
            for (i, tx) in waiting.into_iter().enumerate() {
                let _ = tx.send(batch.map(|b| b.verdict(i)));
            }
        }
    }
}

/// A request's own call for a key: when it ends, the requests that queued meanwhile
/// are handed to a task that calls for them, or the key is free again.
struct Turn<'a> {
    shared: &'a Arc<Shared>,
    key: &'a Key,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut queues = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = queues.get(self.key).is_some_and(|q| !q.is_empty());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if waiting => {
                drop(queues);
                runtime.spawn(self.shared.clone().drain(self.key.clone()));
            }
            // Nobody waits (or no runtime to call from: the waiters count locally).
            _ => {
                queues.remove(self.key);
            }
        }
    }
}

#[derive(Debug)]
pub struct LimitCount {
    count: u64,
    window_ms: u64,
    sliding: bool,
    key: KeySpec,
    status: u16,
    message: Arc<str>,
    show_headers: bool,
    /// `count` as the `X-RateLimit-Limit` value, made once.
    limit_value: HeaderValue,
    shards: Vec<Mutex<Shard>>,
    /// `None` for the local policy.
    shared: Option<Arc<Shared>>,
}

/// The outcome of one request's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    admitted: bool,
    remaining: u64,
    /// Seconds until the window ends (at least 1).
    reset: u64,
}

impl LimitCount {
    pub fn compile(
        config: &model::plugin::LimitCount,
        place: &PluginPlace<'_>,
    ) -> Result<Self, String> {
        let shared = match (&config.policy, &config.redis) {
            (Policy::Redis, Some(redis)) => {
                let text = serde_json::to_string(config).map_err(|e| e.to_string())?;
                let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
                let link = match place.effects {
                    crate::runtime::Effects::Live => RedisLink::shared(&redis.url)?,
                    // Checked the same way, but not registered for the process.
                    crate::runtime::Effects::Dry => Arc::new(RedisLink::new(&redis.url)?),
                };
                Some(Arc::new(Shared {
                    link,
                    timeout: Duration::from_millis(redis.timeout_ms),
                    prefix: format!(
                        "portico:limit-count:{}:{}:{}",
                        place.instance,
                        place.place,
                        hex::encode(&digest.as_ref()[..8])
                    ),
                    script: redis::Script::new(SCRIPT),
                    counters: place.counters.clone(),
                    count: config.count,
                    window_ms: config.time_window * 1000,
                    sliding: config.window == Window::Sliding,
                    queues: Mutex::default(),
                }))
            }
            (Policy::Redis, None) => return Err("redis: required with policy redis".to_owned()),
            (Policy::Local, _) => None,
        };
        Ok(Self {
            count: config.count,
            window_ms: config.time_window * 1000,
            sliding: config.window == Window::Sliding,
            key: KeySpec::new(config.key_type, &config.header)?,
            status: config.rejected_code,
            message: config
                .rejected_msg
                .as_deref()
                .unwrap_or(model::plugin::LimitCount::DEFAULT_MESSAGE)
                .into(),
            show_headers: config.show_limit_headers,
            limit_value: HeaderValue::from(config.count),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shared,
        })
    }

    /// Counts one request of `key` at `now_ms` (Unix milliseconds).
    fn hit(&self, key: Key, now_ms: u64) -> Verdict {
        let (window, into, reset) = window_at(now_ms, self.window_ms);
        let shard = &self.shards[key.shard()];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if shard.counters.len() > 1024 && shard.counters.len() >= shard.swept_at * 2 {
            // Counters of finished windows (the previous one is kept for sliding).
            shard.counters.retain(|_, c| c.window + 1 >= window);
            shard.swept_at = shard.counters.len();
        }
        let counter = shard.counters.entry(key).or_default();
        if counter.window != window {
            counter.previous = if counter.window + 1 == window {
                counter.count
            } else {
                0
            };
            counter.window = window;
            counter.count = 0;
        }
        // Requests the window holds, the previous one weighted by its overlap.
        let carried = if self.sliding {
            // previous × (window − into) / window, rounded up: never admit more.
            (u128::from(counter.previous) * u128::from(self.window_ms - into))
                .div_ceil(u128::from(self.window_ms)) as u64
        } else {
            0
        };
        let used = carried + counter.count;
        if used >= self.count {
            return Verdict {
                admitted: false,
                remaining: 0,
                reset,
            };
        }
        counter.count += 1;
        Verdict {
            admitted: true,
            remaining: self.count - used - 1,
            reset,
        }
    }

    /// The request's fate: admitted (headers noted for the response) or refused.
    fn answer(&self, verdict: Verdict, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        if verdict.admitted {
            if self.show_headers {
                ctx.rate_limit = Some(RateLimitReport {
                    limit: self.limit_value.clone(),
                    remaining: verdict.remaining,
                    reset: verdict.reset,
                });
            }
            return Ok(());
        }
        let mut headers = vec![(http::header::RETRY_AFTER, HeaderValue::from(verdict.reset))];
        if self.show_headers {
            headers.extend([
                (X_RATELIMIT_LIMIT, self.limit_value.clone()),
                (X_RATELIMIT_REMAINING, HeaderValue::from_static("0")),
                (X_RATELIMIT_RESET, HeaderValue::from(verdict.reset)),
            ]);
        }
        Err(Refusal::denied_with(
            self.status,
            "rate_limited",
            self.message.clone(),
            headers,
        ))
    }
}

/// The window `now_ms` falls in (its index), how far into it (ms), and the seconds
/// until it ends (at least 1).
fn window_at(now_ms: u64, window_ms: u64) -> (u64, u64, u64) {
    let into = now_ms % window_ms;
    (
        now_ms / window_ms,
        into,
        (window_ms - into).div_ceil(1000).max(1),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Plugin for LimitCount {
    fn name(&self) -> &'static str {
        model::plugin::LIMIT_COUNT.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        self.key.reads_headers()
    }

    fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        let verdict = self.hit(self.key.of(req, ctx), now_ms());
        self.answer(verdict, ctx)
    }

    fn is_async(&self) -> bool {
        self.shared.is_some()
    }

    fn access_async<'a>(
        &'a self,
        req: &'a RequestView<'a>,
        ctx: &'a mut PhaseCtx,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let key = self.key.of(req, ctx);
            let verdict = match &self.shared {
                Some(shared) => match shared.hit(&key).await {
                    Some(verdict) => verdict,
                    None => {
                        shared
                            .counters
                            .redis_fallbacks
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.hit(key, now_ms())
                    }
                },
                None => self.hit(key, now_ms()),
            };
            self.answer(verdict, ctx)
        })
    }
    fn response_head(&self, _status: u16, ctx: &mut PhaseCtx, edits: &mut HeaderEdits) {
        if let Some(report) = &ctx.rate_limit {
            edits.set(X_RATELIMIT_LIMIT, report.limit.clone());
            edits.set_number(X_RATELIMIT_REMAINING, report.remaining);
            edits.set_number(X_RATELIMIT_RESET, report.reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(json: &str) -> LimitCount {
        LimitCount::compile(&serde_json::from_str(json).unwrap(), &PluginPlace::test()).unwrap()
    }

    #[test]
    fn a_batch_tells_each_request_what_one_at_a_time_would() {
        // Five requests, room for three: the first three admitted, counting down to
        // the two left after the batch; the others refused.
        let batch = Batch {
            admitted: 3,
            remaining: 2,
            reset: 7,
        };
        let verdicts: Vec<(bool, u64)> = (0..5)
            .map(|i| batch.verdict(i))
            .map(|v| (v.admitted, v.remaining))
            .collect();
        assert_eq!(
            verdicts,
            [(true, 4), (true, 3), (true, 2), (false, 0), (false, 0)]
        );
        assert!((0..5).all(|i| batch.verdict(i).reset == 7));
        assert_eq!(window_at(61_500, 60_000), (1, 1_500, 59));
        assert_eq!(window_at(119_999, 60_000), (1, 59_999, 1));
    }

    #[test]
    fn fixed_windows_admit_exactly_count_then_reset() {
        let limit = plugin(r#"{"count":3,"time_window":10}"#);
        let key = || Key::Constant;
        let start = 1_000_000_000_000; // a window boundary (divisible by 10 000)
        let verdicts: Vec<(bool, u64, u64)> = (0..4)
            .map(|i| {
                let v = limit.hit(key(), start + i * 1000);
                (v.admitted, v.remaining, v.reset)
            })
            .collect();
        assert_eq!(
            verdicts,
            [(true, 2, 10), (true, 1, 9), (true, 0, 8), (false, 0, 7)]
        );
        // Other keys count alone; the next window starts over.
        assert!(limit.hit(Key::Text("other".into()), start).admitted);
        assert_eq!(limit.hit(key(), start + 10_000).remaining, 2);
    }

    #[test]
    fn sliding_windows_carry_the_overlap() {
        let limit = plugin(r#"{"count":10,"time_window":10,"window":"sliding"}"#);
        let start = 1_000_000_000_000;
        for i in 0..10 {
            assert!(limit.hit(Key::Constant, start + 5_000 + i).admitted);
        }
        // 2.5 s into the next window 75% of the previous 10 still count: 2 more pass.
        let next = start + 12_500;
        let admitted = (0..5)
            .filter(|_| limit.hit(Key::Constant, next).admitted)
            .count();
        assert_eq!(admitted, 2);
        // A fixed window would have let all 10 through at once.
    }

    #[test]
    fn concurrent_hits_never_exceed_the_count() {
        let limit = Arc::new(plugin(r#"{"count":1000,"time_window":60}"#));
        let now = now_ms();
        // Far from a boundary: every hit lands in one window.
        let now = now - now % 60_000 + 1_000;
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let limit = limit.clone();
                    s.spawn(move || {
                        (0..500)
                            .filter(|_| limit.hit(Key::Constant, now).admitted)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1000);
    }
}
