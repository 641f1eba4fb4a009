//! Minimum data rates for the client's side of a request: a request body arriving,
//! a response leaving. Apache's mod_reqtimeout gives a body 20 s and one more second
//! per 500 bytes received (`body=20,MinRate=500`); nginx's `send_timeout` bounds each
//! write to the client. Here both directions count only the time the gateway spends
//! *waiting for the client* (a read of the body, or a write, pending), so a slow
//! upstream never counts against a client, and a client may take at most
//! `grace + bytes / bytes_per_sec` of waiting in all, `bytes` being what it moved so
//! far, and no single wait may last longer than `grace` (a client that stops after a
//! large upload or download has earned time, but not an endless stall). A body
//! trickling at 1 byte/s is cut after ~20 s; a large upload at any normal rate earns
//! time faster than it spends it.

use std::time::Duration;

use tokio::time::Instant;

/// A minimum rate: `grace` of waiting, plus one second per `bytes_per_sec` moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    pub grace: Duration,
    pub bytes_per_sec: u64,
}

impl MinRate {
    /// Request bodies: mod_reqtimeout's default.
    pub const BODY: MinRate = MinRate {
        grace: Duration::from_secs(20),
        bytes_per_sec: 500,
    };
    /// Writes to the client: nginx's `send_timeout` (60 s) as the grace.
    pub const SEND: MinRate = MinRate {
        grace: Duration::from_secs(60),
        bytes_per_sec: 500,
    };

    /// A meter that starts with nothing moved and nothing waited.
    pub fn meter(self) -> Meter {
        Meter {
            rate: self,
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
        }
    }
}

/// The waiting budget of one direction of one request.
#[derive(Debug, Clone)]
pub struct Meter {
    rate: MinRate,
    bytes: u64,
    waited: Duration,
    waiting_since: Option<Instant>,
}

impl Meter {
    /// The budget: grace plus what the bytes moved so far earned.
    fn allowed(&self) -> Duration {
        let earned = if self.rate.bytes_per_sec == 0 {
            Duration::MAX
        } else {
            Duration::from_secs_f64(self.bytes as f64 / self.rate.bytes_per_sec as f64)
        };
        self.rate.grace.saturating_add(earned)
    }

    /// A read or write starts waiting for the client (no-op while already waiting);
    /// returns when the wait must end.
    pub fn wait(&mut self, now: Instant) -> Instant {
        let since = *self.waiting_since.get_or_insert(now);
        let left = self
            .allowed()
            .saturating_sub(self.waited)
            .min(self.rate.grace);
        since + left
    }

    /// `bytes` moved without waiting.
    pub fn add(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// The wait ended with `bytes` moved.
    pub fn moved(&mut self, bytes: usize, now: Instant) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += now.saturating_duration_since(since);
        }
        self.bytes += bytes as u64;
    }

    /// Whether the wait that started has run out of budget.
    pub fn expired(&self, now: Instant) -> bool {
        let current = self
            .waiting_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        self.waited + current > self.allowed() || current > self.rate.grace
    }
}

/// The error a read or write gets when the client is too slow.
pub fn too_slow(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the client {what} below the minimum rate"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_runs_out_and_a_steady_upload_does_not() {
        let start = Instant::now();
        let rate = MinRate {
            grace: Duration::from_secs(20),
            bytes_per_sec: 500,
        };
        // One byte a second: every wait is a second; after ~20 the budget is spent.
        let mut trickle = rate.meter();
        let mut t = start;
        let mut cut_at = None;
        for second in 1..100u64 {
            let deadline = trickle.wait(t);
            t += Duration::from_secs(1);
            if t > deadline {
                cut_at = Some(second);
                break;
            }
            trickle.moved(1, t);
        }
        let cut_at = cut_at.expect("the trickle is cut");
        assert!((20..=21).contains(&cut_at), "cut after {cut_at} s");
        // 64 KiB every 100 ms (640 KiB/s) for ten minutes: never near the budget.
        let mut steady = rate.meter();
        let mut t = start;
        for _ in 0..6000 {
            let deadline = steady.wait(t);
            t += Duration::from_millis(100);
            assert!(t <= deadline);
            steady.moved(64 * 1024, t);
        }
        assert!(!steady.expired(t));
        // Then it stops: one wait is cut after the grace, whatever was earned.
        let deadline = steady.wait(t);
        assert_eq!(deadline, t + rate.grace);
    }
}
