//! The node's load, as its heartbeat reports it (M7): requests and 5xx answers over
//! the last minute, client connections open now.
//!
//! ```text
//! every request's end (end.rs, both engines) ─ Load::count ─ one atomic add
//! every accepted connection (Counted, the data plane's app) ─ +1 now, −1 when it closes
//! once a second (sample_every_second) ─ Load::tick: the totals into a ring of 61
//! the heartbeat ─ Load::last_minute: newest sample − the one 60 ticks before
//! ```
//!
//! What the request path pays, and why it is cheap: one `fetch_add` (Relaxed) on one
//! word per request, whatever its status — no lock, no allocation, no clock read, no
//! branch on time. Requests and errors share the word (requests in the low 32 bits,
//! errors in the high 32), so a 5xx is counted by the same single add (`1 + 2^32`)
//! and a sample reads both at the same instant (never an error without its request).
//! The minute's arithmetic — the ring of per-second samples, the subtraction — runs
//! once a second on the sampler task and once a beat on the heartbeat's, behind a
//! mutex the request path never takes. Connections cost one add when accepted and one
//! when closed. The word is contended by the data plane's worker threads like the
//! in-flight counter is already (one cache line, a few tens of nanoseconds per add
//! under contention, against the microseconds a proxied request takes); per-thread
//! shards would remove that if a benchmark ever shows it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::sync::watch;

/// Samples in a window: one a second.
const WINDOW: usize = model::cluster::NodeLoad::WINDOW_SECS as usize;

/// One error in the shared word (see the module docs).
const ERROR: u64 = 1 << 32;

/// The node's request and connection counters; one per node, shared by both engines,
/// the connection guard, the sampler and the heartbeat.
#[derive(Debug)]
pub struct Load {
    /// Requests ended since the node started (low 32 bits) and of those the ones
    /// answered 5xx (high 32 bits), each modulo 2^32. A carry out of the low half
    /// (every 2^32 requests) lands in the high half; [`Minute::between`] takes it
    /// back out. Relaxed: it only counts, nothing is ordered by it.
    counts: AtomicU64,
    /// Client connections open now.
    connections: AtomicU64,
    /// The sampler's ring of `counts`, read by the heartbeat; never touched by a
    /// request.
    samples: Mutex<Samples>,
}

impl Default for Load {
    fn default() -> Self {
        Self::starting_at(0)
    }
}

/// Requests and errors in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    pub requests: u64,
    pub errors: u64,
}

impl Minute {
    /// What happened between two samples of [`Load::counts`], `older` first: fewer
    /// than 2^32 requests between them (71 million a second over a minute) is assumed.
    fn between(older: u64, newer: u64) -> Self {
        let (old_requests, old_errors) = (older as u32, (older >> 32) as u32);
        let (new_requests, new_errors) = (newer as u32, (newer >> 32) as u32);
        // The low half wrapped (at most once): its carry went into the high half.
        let carried = u32::from(new_requests < old_requests);
        Self {
            requests: u64::from(new_requests.wrapping_sub(old_requests)),
            errors: u64::from(new_errors.wrapping_sub(old_errors).wrapping_sub(carried)),
        }
    }
}

/// The last `WINDOW + 1` samples of [`Load::counts`], oldest overwritten first.
#[derive(Debug)]
struct Samples {
    ring: [u64; WINDOW + 1],
    /// Where the newest sample is.
    newest: usize,
    /// Samples taken, the one at start included, up to the ring's length.
    taken: usize,
}

impl Load {
    /// Counters as if `counts` had been reached before the node started (the tests
    /// start near the wrap of the low half).
    fn starting_at(counts: u64) -> Self {
        Self {
            counts: AtomicU64::new(counts),
            connections: AtomicU64::new(0),
            // The start is the first sample: a node younger than a minute reports what
            // it served since it started.
            samples: Mutex::new(Samples {
                ring: [counts; WINDOW + 1],
                newest: 0,
                taken: 1,
            }),
        }
    }

    /// Counts one request that ended with `status` (0: none was sent) — the rule of
    /// what an error is, here only: a 5xx answer. Called by `end::request_ended`.
    pub(super) fn count(&self, status: u16) {
        let error = if (500..600).contains(&status) {
            ERROR
        } else {
            0
        };
        self.counts.fetch_add(1 + error, Ordering::Relaxed);
    }

    /// Counts a client connection open until the returned guard drops.
    pub fn connection(self: &Arc<Self>) -> Connection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Connection(self.clone())
    }

    /// Client connections open now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Takes this second's sample (the sampler calls it once a second).
    pub fn tick(&self) {
        let now = self.counts.load(Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.newest = (samples.newest + 1) % samples.ring.len();
        let newest = samples.newest;
        samples.ring[newest] = now;
        samples.taken = (samples.taken + 1).min(samples.ring.len());
    }

    /// Requests and errors between the newest sample and the one `WINDOW` ticks
    /// before it (or the start, for a node younger than that).
    pub fn last_minute(&self) -> Minute {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let len = samples.ring.len();
        let back = samples.taken - 1;
        let oldest = (samples.newest + len - back) % len;
        Minute::between(samples.ring[oldest], samples.ring[samples.newest])
    }
}

/// One open client connection (see [`Load::connection`]).
#[derive(Debug)]
pub struct Connection(Arc<Load>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Samples `load` once a second until `stop` flips to true. A tick the runtime
/// delays is taken late and the following ones catch up (tokio's `Burst`), so sixty
/// samples stay sixty seconds of the schedule: the window's edges move by the delay,
/// and no request is lost or counted twice.
pub async fn sample_every_second(load: Arc<Load>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // The first tick is immediate; the start was sampled already.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => load.tick(),
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// A [`ServerApp`] that counts the client connections `inner` serves. The data plane
/// hands it every connection its listeners accept (TLS ones after the handshake),
/// whichever engine serves it: the fast path, which may hand a connection to Pingora
/// within the same call (counted once), or Pingora behind the guard. A connection
/// Pingora keeps alive comes back through `process_new` after each request: it leaves
/// the count as it returns and is counted again at once.
pub struct Counted<A> {
    inner: Arc<A>,
    load: Arc<Load>,
}

impl<A> Counted<A> {
    pub fn new(inner: A, load: Arc<Load>) -> Self {
        Self {
            inner: Arc::new(inner),
            load,
        }
    }
}

#[async_trait]
impl<A> ServerApp for Counted<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.load.connection();
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_5xx_answers_only() {
        let load = Load::default();
        for status in [200, 204, 301, 400, 401, 403, 404, 429, 499, 0] {
            load.count(status);
        }
        for status in [500, 502, 503, 504, 599] {
            load.count(status);
        }
        load.tick();
        assert_eq!(
            load.last_minute(),
            Minute {
                requests: 15,
                errors: 5
            }
        );
    }

    #[test]
    fn the_window_is_the_last_sixty_samples() {
        let load = Load::default();
        // Before the first sample nothing shows; a young node counts from its start.
        load.count(502);
        assert_eq!(load.last_minute(), Minute::default());
        load.tick();
        assert_eq!(load.last_minute().requests, 1);
        // Second k (1-based) gets k requests, every third one a 502.
        for second in 2..=100u64 {
            for i in 0..second {
                load.count(if i % 3 == 0 { 502 } else { 200 });
            }
            load.tick();
            let first = second.saturating_sub(WINDOW as u64 - 1).max(1);
            let requests: u64 = (first..=second).sum();
            let errors: u64 = (first..=second).map(|k| k.div_ceil(3)).sum();
            assert_eq!(
                load.last_minute(),
                Minute { requests, errors },
                "after second {second}"
            );
        }
        // A quiet minute empties the window.
        for _ in 0..WINDOW {
            load.tick();
        }
        assert_eq!(load.last_minute(), Minute::default());
    }

    #[test]
    fn counts_survive_the_wrap_of_the_low_half() {
        // 3 requests before the low half wraps, 2 of them errors so far.
        let start = (7u64 << 32) | u64::from(u32::MAX - 2);
        let load = Load::starting_at(start);
        for status in [200, 500, 200, 503, 200, 500, 200] {
            load.count(status);
        }
        load.tick();
        assert_eq!(
            load.last_minute(),
            Minute {
                requests: 7,
                errors: 3
            }
        );
    }

    #[test]
    fn connections_count_while_open() {
        let load = Arc::new(Load::default());
        let a = load.connection();
        let b = load.connection();
        assert_eq!(load.connections(), 2);
        drop(a);
        assert_eq!(load.connections(), 1);
        drop(b);
        assert_eq!(load.connections(), 0);
    }
}
