//! Connections to the Redis servers plugins count in (`limit-count`'s `redis`
//! policy), one per URL and process, shared by every plugin that names it.
//!
//! A request never waits on Redis longer than its plugin's timeout: connecting and
//! each call are bounded, and after a failure the link is left alone for a second
//! (every request meanwhile counts locally at once) so a dead Redis costs one timeout
//! per second, not one per request. The plugin counts every fallback in its node's
//! counters (`runtime::NodeCounters`) for the heartbeat and the metrics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

/// How long a link is left alone after a failure.
const COOL_DOWN_MS: i64 = 1_000;

static LINKS: LazyLock<Mutex<HashMap<String, Arc<RedisLink>>>> = LazyLock::new(Default::default);

/// One Redis server.
pub(crate) struct RedisLink {
    url: String,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    /// Held while connecting: one attempt at a time, the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    /// Unix milliseconds before which the link is not tried.
    down_until_ms: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("url", &self.url).finish()
    }
}

impl RedisLink {
    /// The process's link to `url` (validated by the plugin's config).
    pub(crate) fn shared(url: &str) -> Result<Arc<RedisLink>, String> {
        let mut links = LINKS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(url) {
            return Ok(link.clone());
        }
        let link = Arc::new(RedisLink::new(url)?);
        links.insert(url.to_owned(), link.clone());
        Ok(link)
    }

    /// A link of its own, not shared (a dry build's); it connects on first use only.
    pub(crate) fn new(url: &str) -> Result<RedisLink, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis.url: {e}"))?;
        Ok(RedisLink {
            url: url.to_owned(),
            client,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            down_until_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    fn down(&self, why: &dyn std::fmt::Display) {
        let was = self
            .down_until_ms
            .swap(crate::now_ms() + COOL_DOWN_MS, Ordering::Relaxed);
        if was <= crate::now_ms() {
            tracing::warn!(url = %self.url, error = %why, "redis unavailable; counting locally for a second");
        }
    }

    /// A connection, or `None` when Redis is cooling down or does not answer within
    /// `timeout`. Requests arriving while the link connects wait for that connection
    /// (within their timeout) rather than counting locally: a cold start under load
    /// stays exact.
    async fn connection(&self, timeout: Duration) -> Option<ConnectionManager> {
        if let Some(conn) = self.conn.load_full() {
            return Some((*conn).clone());
        }
        if crate::now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let _connecting = tokio::time::timeout_at(deadline, self.connecting.lock())
            .await
            .ok()?;
        if let Some(conn) = self.conn.load_full() {
            return Some((*conn).clone());
        }
        if crate::now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let connected =
            tokio::time::timeout_at(deadline, ConnectionManager::new(self.client.clone())).await;
        match connected {
            Ok(Ok(conn)) => {
                self.conn.store(Some(Arc::new(conn.clone())));
                Some(conn)
            }
            Ok(Err(e)) => {
                self.down(&e);
                None
            }
            Err(_) => {
                self.down(&"connecting timed out");
                None
            }
        }
    }

    /// Runs `script` with `keys` and `args`; `None` (a fallback) when Redis is down,
    /// slow or answers with an error.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[i64],
        timeout: Duration,
    ) -> Option<T> {
        if crate::now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let mut conn = self.connection(timeout).await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        match tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.down(&e);
                None
            }
            Err(_) => {
                self.down(&"a call timed out");
                None
            }
        }
    }
}
