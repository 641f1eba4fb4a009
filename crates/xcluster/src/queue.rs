//! The cluster controllers' work queue and its bounded worker pool (requirement X2;
//! the seed's "preset coroutine pool" over resource-controller queues).
//!
//! Keys (a Service's namespace and name) are queued when a watch event touches them and
//! processed by at most `workers` tasks at once. The semantics are client-go's workqueue,
//! which informer-style controllers rely on:
//! - a key queued while it waits is queued once (a burst of events is one piece of work);
//! - a key is never processed by two workers at once;
//! - a key queued while it is being processed is processed once more afterwards, so the
//!   last event is never lost;
//! - after [`WorkQueue::close`] the keys already waiting are still handed out, then
//!   [`WorkQueue::next`] answers `None`.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A deduplicating queue of keys; cheap to clone (one queue, many handles).
#[derive(Debug)]
pub struct WorkQueue<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<K> {
    state: Mutex<State<K>>,
    /// Woken when a key becomes available or the queue closes.
    ready: Notify,
}

#[derive(Debug)]
struct State<K> {
    /// Keys waiting, in the order first queued.
    waiting: VecDeque<K>,
    /// The keys in `waiting`.
    queued: HashSet<K>,
    /// Keys a worker holds.
    active: HashSet<K>,
    /// Keys queued while active: queued again when their worker is done.
    again: HashSet<K>,
    closed: bool,
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    waiting: VecDeque::new(),
                    queued: HashSet::new(),
                    active: HashSet::new(),
                    again: HashSet::new(),
                    closed: false,
                }),
                ready: Notify::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // A worker that panicked holding the lock left the sets consistent (every
        // change under the lock is a single insert or remove): go on with them.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `key` unless it already waits; a key being processed is processed once
    /// more when its worker is done. Ignored after [`WorkQueue::close`].
    pub fn add(&self, key: K) {
        let mut state = self.state();
        if state.closed || state.queued.contains(&key) {
            return;
        }
        if state.active.contains(&key) {
            state.again.insert(key);
            return;
        }
        state.queued.insert(key.clone());
        state.waiting.push_back(key);
        drop(state);
        self.shared.ready.notify_one();
    }

    /// The next key to process; the caller must call [`WorkQueue::done`] with it.
    /// `None` once the queue is closed and nothing waits.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.shared.ready.notified();
            tokio::pin!(notified);
            // Registered before the check, so a key added in between still wakes us.
            notified.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(key) = state.waiting.pop_front() {
                    state.queued.remove(&key);
                    state.active.insert(key.clone());
                    let more = !state.waiting.is_empty();
                    drop(state);
                    if more {
                        // Another worker may take the next one.
                        self.shared.ready.notify_one();
                    }
                    return Some(key);
                }
                if state.closed {
                    drop(state);
                    // Wake the other workers so they see it too.
                    self.shared.ready.notify_waiters();
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Ends the processing of `key`; queues it again if it was added meanwhile.
    pub fn done(&self, key: &K) {
        let mut state = self.state();
        state.active.remove(key);
        if state.again.remove(key) && !state.closed && state.queued.insert(key.clone()) {
            state.waiting.push_back(key.clone());
            drop(state);
            self.shared.ready.notify_one();
        }
    }

    /// Takes no more keys; the waiting ones are still handed out.
    pub fn close(&self) {
        self.state().closed = true;
        self.shared.ready.notify_waiters();
    }

    /// How many keys wait (not counting those being processed).
    pub fn len(&self) -> usize {
        self.state().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Starts `workers` tasks that take keys from `queue` and run `handle` on each, one
/// key at a time per task, until the queue is closed and drained. Await the returned
/// set to wait for them.
pub fn spawn_workers<K, F, Fut>(
    queue: &WorkQueue<K>,
    workers: usize,
    handle: F,
) -> tokio::task::JoinSet<()>
where
    K: Clone + Eq + Hash + Send + 'static,
    F: Fn(K) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let handle = handle.clone();
        set.spawn(async move {
            while let Some(key) = queue.next().await {
                handle(key.clone()).await;
                queue.done(&key);
            }
        });
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_key_queued_while_waiting_is_processed_once() {
        let queue = WorkQueue::new();
        for _ in 0..5 {
            queue.add("a");
        }
        queue.add("b");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, Some("a"));
        assert_eq!(queue.next().await, Some("b"));
        queue.done(&"a");
        queue.done(&"b");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_key_queued_while_processed_runs_again_after_never_alongside() {
        let queue = WorkQueue::new();
        queue.add("a");
        assert_eq!(queue.next().await, Some("a"));
        queue.add("a");
        queue.add("a");
        // Held by a worker: not handed to another.
        assert!(queue.is_empty());
        let other = tokio::time::timeout(Duration::from_millis(50), queue.next()).await;
        assert!(other.is_err(), "handed out twice: {other:?}");
        queue.done(&"a");
        assert_eq!(queue.next().await, Some("a"), "processed once more");
        queue.done(&"a");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn close_hands_out_what_waits_then_ends_every_worker() {
        let queue = WorkQueue::new();
        queue.add(1);
        queue.add(2);
        queue.close();
        queue.add(3);
        assert_eq!(queue.next().await, Some(1));
        assert_eq!(queue.next().await, Some(2));
        assert_eq!(queue.next().await, None);

        // Idle workers end when the queue closes.
        let idle = WorkQueue::<u32>::new();
        let mut workers = spawn_workers(&idle, 3, |_| async {});
        tokio::time::sleep(Duration::from_millis(20)).await;
        idle.close();
        tokio::time::timeout(Duration::from_secs(5), async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .expect("workers did not end");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_pool_is_bounded_and_never_runs_one_key_twice_at_once() {
        let queue = WorkQueue::new();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let processed = Arc::new(AtomicUsize::new(0));
        let per_key: Arc<Vec<AtomicUsize>> =
            Arc::new((0..10).map(|_| AtomicUsize::new(0)).collect());
        let workers = {
            let (running, most, processed, per_key) = (
                running.clone(),
                most.clone(),
                processed.clone(),
                per_key.clone(),
            );
            spawn_workers(&queue, 3, move |key: usize| {
                let (running, most, processed, per_key) = (
                    running.clone(),
                    most.clone(),
                    processed.clone(),
                    per_key.clone(),
                );
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    assert_eq!(
                        per_key[key].fetch_add(1, Ordering::SeqCst),
                        0,
                        "key {key} processed twice at once"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    per_key[key].fetch_sub(1, Ordering::SeqCst);
                    running.fetch_sub(1, Ordering::SeqCst);
                    processed.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        for round in 0..50 {
            for key in 0..10 {
                queue.add((key + round) % 10);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Everything added is processed at least once after its last add.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !queue.is_empty() || running.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the queue did not drain");
        queue.close();
        let mut workers = workers;
        while let Some(done) = workers.join_next().await {
            done.expect("a worker panicked");
        }
        assert!(most.load(Ordering::SeqCst) <= 3, "more than 3 at once");
        assert!(most.load(Ordering::SeqCst) >= 2, "never ran in parallel");
        let processed = processed.load(Ordering::SeqCst);
        assert!(processed >= 10, "{processed}");
        assert!(processed < 500, "bursts were not merged: {processed}");
    }
}
