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
//! A full disk (or any failed *write*, as opposed to a failed fsync) is not fatal: the flusher
//! rolls its batch back (nothing of it stays in the files) and keeps it, and the round is
//! retried every [`RETRY_EVERY`] until it succeeds. Until then the round is not durable, so no
//! publish in it is confirmed; the full-disk hook raises the disk alarm (publishers are
//! blocked, consumers go on, acks are recorded in memory and free whole segments) and clears it
//! when writes succeed again. A failed fsync still stops the broker (see `run`).
//!
//! Who waits implements [`SyncWaiter`] (the AMQP connection does); this module knows nothing
//! of connections.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{error, info, warn};

/// How often a round whose writes failed (a full disk) is tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);

/// The error a [`Flush`] returns when a *write* failed and it rolled the batch back: nothing
/// of the batch is in its files and all of it is kept for the next flush. The syncer retries;
/// any other error is fatal.
#[derive(Debug)]
pub struct WriteRefused(pub std::io::Error);

impl std::fmt::Display for WriteRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "write failed (batch kept for a retry): {}", self.0)
    }
}

impl std::error::Error for WriteRefused {}

/// Wraps `e` as a [`WriteRefused`].
pub fn write_refused(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), WriteRefused(e))
}

/// `e` is a [`WriteRefused`].
pub fn is_write_refused(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<WriteRefused>())
}

type FullHook = Box<dyn Fn(bool) + Send + Sync>;

/// Something the syncer flushes: write pending bytes, fsync, delete what is garbage.
pub trait Flush: Send + Sync {
    /// Writes and fsyncs pending data. A failed write that was rolled back returns
    /// [`write_refused`]; every other error is fatal.
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
    /// Called with `true` when a round's writes start failing, `false` when they succeed again.
    full_hook: Mutex<Option<FullHook>>,
    /// Writes are failing (a round is being retried).
    full: std::sync::atomic::AtomicBool,
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
            full_hook: Mutex::new(None),
            full: std::sync::atomic::AtomicBool::new(false),
        });
        let me = s.clone();
        let handle = std::thread::Builder::new()
            .name("warren-sync".into())
            .spawn(move || me.run())?;
        *s.thread.lock() = Some(handle);
        Ok(s)
    }

    /// Sets what is called when store writes start failing (`true`) and succeed again
    /// (`false`): the broker raises and clears its disk alarm.
    pub fn on_full(&self, hook: impl Fn(bool) + Send + Sync + 'static) {
        *self.full_hook.lock() = Some(Box::new(hook));
    }

    /// Store writes are failing (the disk is full): rounds are being retried.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    fn set_full(&self, on: bool) {
        self.full.store(on, Ordering::Release);
        if let Some(h) = &*self.full_hook.lock() {
            h(on);
        }
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
            let mut todo: Vec<Arc<dyn Flush>> = first.into_iter().chain(dirty).collect();
            loop {
                let mut failed = Vec::new();
                for s in todo {
                    match s.flush() {
                        Ok(()) => {}
                        Err(e) if is_write_refused(&e) => {
                            if !self.is_full() && failed.is_empty() {
                                error!(error = %e, "writing a message store failed (disk full?): \
                                    nothing of the round is confirmed, retrying; publishers blocked");
                            }
                            failed.push(s);
                        }
                        Err(e) => {
                            // A confirm is a promise that the message is on disk. After a
                            // failed fsync we can no longer tell what is (PostgreSQL's
                            // "fsyncgate"), so like PostgreSQL we stop rather than confirm
                            // something we may have lost.
                            error!(error = %e, "fsyncing a message store failed: stopping");
                            std::process::abort();
                        }
                    }
                }
                if failed.is_empty() {
                    break;
                }
                if !self.is_full() {
                    self.set_full(true);
                }
                let mut st = self.state.lock();
                if !st.stop {
                    self.cv.wait_for(&mut st, RETRY_EVERY);
                }
                if st.stop {
                    // Nothing of this round was confirmed: its publishes stay unconfirmed.
                    warn!(
                        stores = failed.len(),
                        "stopping with unwritten messages (disk full): \
                        their publishes were never confirmed"
                    );
                    return;
                }
                todo = failed;
            }
            if self.is_full() {
                info!("message store writes succeed again: disk alarm cleared");
                self.set_full(false);
            }
            self.durable.store(round, Ordering::Release);
            let waiters = std::mem::take(&mut self.state.lock().waiters);
            for w in waiters {
                w.synced();
            }
        }
    }
}
