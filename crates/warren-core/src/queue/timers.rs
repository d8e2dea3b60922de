//! Queue timers: message TTL at the head of a queue and `x-expires`.
//!
//! One task per broker keeps a heap of deadlines; queues ask for a wake-up with
//! [`Timers::schedule`] (non-blocking, from under their lock) and get [`Queue::on_timer`]
//! called with the time at the deadline. A queue that is gone by then is skipped (the task
//! holds only `Weak` references). The task sleeps on the broker's [`Clock`], so on a manual
//! clock deadlines fire when a test advances it, without anyone sleeping.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, Notify};

use super::Queue;
use crate::clock::{Clock, Millis};

/// Something other than a queue that wants to be woken at a deadline (a delayed-message
/// exchange's held messages).
pub trait Deadline: Send + Sync {
    /// The deadline asked for has come; `now` is the time.
    fn on_deadline(&self, now: Millis);
}

/// Who asked for a wake-up.
enum Target {
    Queue(Weak<dyn Queue>),
    Other(Weak<dyn Deadline>),
}

impl Target {
    fn fire(&self, now: Millis) {
        match self {
            Target::Queue(w) => {
                if let Some(q) = w.upgrade() {
                    q.on_timer(now);
                }
            }
            Target::Other(w) => {
                if let Some(d) = w.upgrade() {
                    d.on_deadline(now);
                }
            }
        }
    }
}

type Request = (Millis, Target);

/// The deadlines asked for, soonest first.
#[derive(Default)]
struct Pending {
    heap: BinaryHeap<Reverse<(Millis, u64)>>,
    waiting: HashMap<u64, Target>,
    counter: u64,
}

impl Pending {
    fn add(&mut self, (at, q): Request) {
        self.counter += 1;
        self.heap.push(Reverse((at, self.counter)));
        self.waiting.insert(self.counter, q);
    }
}

/// Handle to a broker's timer task.
#[derive(Debug, Clone)]
pub struct Timers {
    tx: mpsc::UnboundedSender<Request>,
    rx: Arc<parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Request>>>>,
    clock: Clock,
    /// The time up to which every deadline asked for has fired (see [`Timers::settled`]).
    processed: Arc<(AtomicU64, Notify)>,
}

impl Timers {
    /// A timer service on `clock`; nothing fires until [`Timers::start`] runs it.
    pub fn new(clock: Clock) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Arc::new(parking_lot::Mutex::new(Some(rx))),
            clock,
            processed: Arc::new((AtomicU64::new(0), Notify::new())),
        }
    }

    /// Waits until every deadline at or before `t` that was asked for before this call has
    /// fired (for tests on a manual clock: advance, then wait for this).
    pub async fn settled(&self, t: Millis) {
        let (done, changed) = &*self.processed;
        loop {
            let notified = changed.notified();
            if done.load(Ordering::Acquire) >= t {
                return;
            }
            notified.await;
        }
    }

    /// Asks for `queue.on_timer(now)` at `at` (or soon after).
    pub fn schedule(&self, at: Millis, queue: Weak<dyn Queue>) {
        let _ = self.tx.send((at, Target::Queue(queue)));
    }

    /// Asks for `target.on_deadline(now)` at `at` (or soon after).
    pub fn schedule_deadline(&self, at: Millis, target: Weak<dyn Deadline>) {
        let _ = self.tx.send((at, Target::Other(target)));
    }

    /// Spawns the timer task on the current runtime (once).
    pub fn start(&self) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        let clock = self.clock.clone();
        let processed = self.processed.clone();
        tokio::spawn(async move {
            let mut pending = Pending::default();
            loop {
                while let Ok(req) = rx.try_recv() {
                    pending.add(req);
                }
                let Pending { heap, waiting, .. } = &mut pending;
                let now = clock.now();
                while let Some(Reverse((at, id))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    if let Some(t) = waiting.remove(&id) {
                        t.fire(now);
                    }
                }
                processed.0.store(now, Ordering::Release);
                processed.1.notify_waiters();
                let next = heap.peek().map(|Reverse((at, _))| *at);
                let sleep = async {
                    match (next, &clock) {
                        (Some(at), _) => clock.sleep_until(at).await,
                        // A manual clock wakes the task whenever it moves, so that `settled`
                        // is answered even with nothing to fire.
                        (None, Clock::Manual(_)) => clock.sleep_until(Millis::MAX).await,
                        (None, Clock::System) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    req = rx.recv() => match req {
                        Some(req) => pending.add(req),
                        None => return,
                    },
                    _ = sleep => {}
                }
            }
        });
    }
}
