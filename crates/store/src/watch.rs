//! A prefix watch that survives store restarts and compaction.
//!
//! [`PrefixWatcher::next`] first yields a full listing ([`Update::Reset`]), then the
//! changes after it ([`Update::Changes`]). When the raw watch breaks (store restarted,
//! connection lost) it resumes from the revision after the last one delivered; when that
//! revision has been compacted away it relists and yields a new `Reset`. Events at or
//! below the last delivered revision are dropped, so nothing is delivered twice, and a
//! resume always starts right after the last delivered revision, so nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::{ConfigStore, Listing, RawWatch, StoreError, StoreRevision, WatchBatch};

/// What a consumer applies next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The whole content under the prefix: replace everything held before.
    Reset(Listing),
    /// Changes of one store revision, after everything delivered so far.
    Changes(WatchBatch),
}

/// Watches one prefix for as long as it lives; never gives up, only backs off.
pub struct PrefixWatcher {
    store: Arc<dyn ConfigStore>,
    prefix: String,
    /// Highest store revision delivered to the consumer; `None` before the first listing.
    delivered: Option<StoreRevision>,
    stream: Option<RawWatch>,
    backoff: Duration,
    /// Whether the last attempt to reach the store failed (for health reporting).
    disconnected: bool,
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl PrefixWatcher {
    pub fn new(store: Arc<dyn ConfigStore>, prefix: impl Into<String>) -> Self {
        Self {
            store,
            prefix: prefix.into(),
            delivered: None,
            stream: None,
            backoff: MIN_BACKOFF,
            disconnected: false,
        }
    }

    /// True while the store cannot be reached; the consumer keeps what it has.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// The next update; waits (retrying with backoff) for as long as it takes.
    ///
    /// Cancel-safe (usable in `select!` or under a timeout): state only changes after an
    /// await completes, so dropping the future loses no update.
    pub async fn next(&mut self) -> Update {
        loop {
            match self.try_next().await {
                Ok(Some(update)) => {
                    self.backoff = MIN_BACKOFF;
                    self.disconnected = false;
                    return update;
                }
                Ok(None) => {}
                Err(StoreError::Compacted { compact_revision }) => {
                    tracing::warn!(
                        prefix = %self.prefix,
                        compact_revision,
                        "watch revision compacted; relisting"
                    );
                    self.delivered = None;
                    self.stream = None;
                }
                Err(e) => {
                    if !self.disconnected {
                        tracing::warn!(prefix = %self.prefix, error = %e, "store watch broke; retrying");
                    }
                    self.disconnected = true;
                    self.stream = None;
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One step: list, open a watch, or read a batch. `Ok(None)` means "go round again".
    async fn try_next(&mut self) -> Result<Option<Update>, StoreError> {
        let Some(delivered) = self.delivered else {
            let listing = self.store.list(&self.prefix).await?;
            self.delivered = Some(listing.revision);
            return Ok(Some(Update::Reset(listing)));
        };
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = self.store.watch(&self.prefix, delivered + 1).await?;
                if self.disconnected {
                    tracing::info!(prefix = %self.prefix, resume_from = delivered + 1, "store watch resumed");
                    self.disconnected = false;
                }
                self.stream.insert(stream)
            }
        };
        match stream.next().await {
            Some(Ok(mut batch)) => {
                batch.events.retain(|e| e.mod_revision() > delivered);
                if batch.events.is_empty() {
                    // A progress notification or a replay of what was delivered.
                    return Ok(None);
                }
                let top = batch
                    .events
                    .iter()
                    .map(|e| e.mod_revision())
                    .max()
                    .unwrap_or(batch.revision);
                self.delivered = Some(top.max(delivered));
                Ok(Some(Update::Changes(batch)))
            }
            Some(Err(e)) => Err(e),
            None => Err(StoreError::Unavailable("watch stream ended".to_owned())),
        }
    }
}
