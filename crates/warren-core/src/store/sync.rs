//! Group commit: one thread writes and fsyncs every dirty store in rounds.
//!
//! An append registers its store for the *next* round and gets that round's number (its
//! epoch). The thread takes the whole dirty list at once, bumps the round, writes and fsyncs each
//! store, then publishes the round as durable and wakes the connections waiting on it (they send
//! their publisher confirms). While one round fsyncs, the next accumulates: under load, many
//! messages share each fsync.
//!
//! The metadata log registers as a *first* flusher: in every round it is written and fsynced
//! before any message store, so a round that deletes a queue's files (a store destroyed after
//! `queue.delete`) has made the delete record durable first, and a message confirmed in a
//! round has its queue's declaration durable too (it was appended no later).
//!
//! Who waits implements [`SyncWaiter`] (the AMQP connection does); this module knows nothing
//! of connections.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tracing::error;

/// Something the syncer flushes: write pending bytes, fsync, delete what is garbage.
pub trait Flush: Send + Sync {
    /// Writes and fsyncs pending data.
    fn flush(&self) -> std::io::Result<()>;
}

/// Someone waiting for a sync round (a connection with confirms or replies to send).
pub trait SyncWaiter: Send + Sync {
    /// A round it asked about (or a later one) is durable: check [`Syncer::durable`].
    fn synced(&self);
}

#[derive(Default)]
struct State {
    next_round: u64,
    /// Flushed before `dirty` in each round (the metadata log).
    dirty_first: Vec<Arc<dyn Flush>>,
    dirty: Vec<Arc<dyn Flush>>,
    waiters: Vec<Arc<dyn SyncWaiter>>,
    stop: bool,
}

/// The group-commit service.
pub struct Syncer {
    state: Mutex<State>,
    cv: Condvar,
    durable: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("durable", &self.durable.load(Ordering::Relaxed))
            .finish()
    }
}

impl Syncer {
    /// Starts the sync thread. Failing to start it is an error: without it no persistent
    /// message or durable declaration would ever be confirmed.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let s = Arc::new(Self {
            state: Mutex::new(State {
                next_round: 1,
                ..State::default()
            }),
            cv: Condvar::new(),
            durable: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        let me = s.clone();
        let handle = std::thread::Builder::new()
            .name("warren-sync".into())
            .spawn(move || me.run())?;
        *s.thread.lock() = Some(handle);
        Ok(s)
    }

    /// The highest round whose data is on disk.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Registers `store` for the next round (once per round: `queued_for` remembers) and
    /// returns that round. Call with the store's own lock held, after adding the pending bytes.
    pub fn register(&self, store: &Arc<dyn Flush>, queued_for: &mut u64) -> u64 {
        self.register_in(store, queued_for, false)
    }

    /// Like [`Syncer::register`], for a flusher that goes first in its round (the metadata
    /// log).
    pub fn register_first(&self, store: &Arc<dyn Flush>, queued_for: &mut u64) -> u64 {
        self.register_in(store, queued_for, true)
    }

    fn register_in(&self, store: &Arc<dyn Flush>, queued_for: &mut u64, first: bool) -> u64 {
        let mut st = self.state.lock();
        let r = st.next_round;
        if *queued_for != r {
            if first {
                st.dirty_first.push(store.clone());
            } else {
                st.dirty.push(store.clone());
            }
            *queued_for = r;
            self.cv.notify_one();
        }
        r
    }

    /// The round the next registration goes into (what a change made now becomes durable
    /// with, once registered).
    pub fn next_round(&self) -> u64 {
        self.state.lock().next_round
    }

    /// Calls `waiter.synced()` once `epoch` is durable (at once if it already is).
    pub fn notify_when_durable(&self, epoch: u64, waiter: &Arc<dyn SyncWaiter>) {
        let mut st = self.state.lock();
        if self.durable() >= epoch {
            drop(st);
            waiter.synced();
        } else {
            st.waiters.push(waiter.clone());
        }
    }

    /// Blocks until everything registered so far is durable (tests, shutdown).
    pub fn barrier(&self) {
        let target = {
            let st = self.state.lock();
            if st.dirty.is_empty() && st.dirty_first.is_empty() {
                st.next_round - 1
            } else {
                st.next_round
            }
        };
        while self.durable() < target {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Flushes what is pending and stops the thread.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.cv.notify_one();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }

    fn run(&self) {
        loop {
            let (round, first, dirty) = {
                let mut st = self.state.lock();
                while st.dirty.is_empty() && st.dirty_first.is_empty() && !st.stop {
                    self.cv.wait(&mut st);
                }
                if st.dirty.is_empty() && st.dirty_first.is_empty() && st.stop {
                    return;
                }
                let r = st.next_round;
                st.next_round += 1;
                (
                    r,
                    std::mem::take(&mut st.dirty_first),
                    std::mem::take(&mut st.dirty),
                )
            };
            for s in first.iter().chain(&dirty) {
                if let Err(e) = s.flush() {
                    // A confirm is a promise that the message is on disk. After a failed write
                    // or fsync we can no longer tell what is (PostgreSQL's "fsyncgate"), so
                    // like PostgreSQL we stop rather than confirm something we may have lost.
                    error!(error = %e, "writing or fsyncing a message store failed: stopping");
                    std::process::abort();
                }
            }
            self.durable.store(round, Ordering::Release);
            let waiters = std::mem::take(&mut self.state.lock().waiters);
            for w in waiters {
                w.synced();
            }
        }
    }
}
