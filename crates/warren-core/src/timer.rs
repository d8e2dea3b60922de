//! Queue timers (message TTL at the head of a queue, `x-expires`) and the broker's monotonic
//! millisecond clock.
//!
//! One task per broker keeps a heap of deadlines; queues ask for a wake-up with
//! [`Timers::schedule`] (non-blocking, from under their lock) and get
//! [`Queue::on_timer`](crate::queue::Queue::on_timer) called at the deadline. A queue that is
//! gone by then is skipped (the task only holds `Weak` references).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::queue::Queue;

static START: OnceLock<Instant> = OnceLock::new();

fn start() -> Instant {
    *START.get_or_init(Instant::now)
}

thread_local! {
    /// The time of the batch of input this thread is handling (0: none, read the clock).
    static BATCH_NOW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Milliseconds since the process started (monotonic). Inside a [`ClockScope`] the time taken
/// when the scope was entered: one clock read per batch of frames instead of several per message.
pub fn now_ms() -> u64 {
    let cached = BATCH_NOW.with(|c| c.get());
    if cached != 0 {
        return cached;
    }
    read_clock()
}

fn read_clock() -> u64 {
    // Never 0, which means "not cached".
    (start().elapsed().as_millis() as u64).max(1)
}

/// While alive, [`now_ms`] on this thread returns the time at which it was created. A
/// connection holds one while it handles the frames of one socket read (synchronous code, so
/// the task cannot move to another thread meanwhile); millisecond TTLs do not notice.
pub struct ClockScope {
    previous: u64,
}

impl ClockScope {
    /// Reads the clock once and caches it for this thread.
    pub fn enter() -> Self {
        let now = read_clock();
        let previous = BATCH_NOW.with(|c| c.replace(now));
        ClockScope { previous }
    }
}

impl Drop for ClockScope {
    fn drop(&mut self) {
        BATCH_NOW.with(|c| c.set(self.previous));
    }
}

type Request = (u64, Weak<Queue>);

/// Handle to a broker's timer task.
#[derive(Debug, Clone)]
pub struct Timers {
    tx: mpsc::UnboundedSender<Request>,
    rx: Arc<parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Request>>>>,
}

impl Default for Timers {
    fn default() -> Self {
        Self::new()
    }
}

impl Timers {
    /// A timer service; nothing fires until [`Timers::start`] runs it on a runtime.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Arc::new(parking_lot::Mutex::new(Some(rx))),
        }
    }

    /// Asks for `queue.on_timer()` at `at_ms` (see [`now_ms`]).
    pub fn schedule(&self, at_ms: u64, queue: &Arc<Queue>) {
        let _ = self.tx.send((at_ms, Arc::downgrade(queue)));
    }

    /// Spawns the timer task on the current runtime (once).
    pub fn start(&self) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        tokio::spawn(async move {
            let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
            let mut waiting: std::collections::HashMap<u64, Weak<Queue>> = Default::default();
            let mut counter = 0u64;
            loop {
                let next = heap.peek().map(|Reverse((at, _))| *at);
                let sleep = async {
                    match next {
                        Some(at) => {
                            let when = start() + Duration::from_millis(at);
                            tokio::time::sleep_until(tokio::time::Instant::from_std(when)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    req = rx.recv() => match req {
                        Some((at, q)) => {
                            counter += 1;
                            heap.push(Reverse((at, counter)));
                            waiting.insert(counter, q);
                        }
                        None => return,
                    },
                    _ = sleep => {
                        let now = now_ms();
                        while let Some(Reverse((at, id))) = heap.peek().copied() {
                            if at > now {
                                break;
                            }
                            heap.pop();
                            if let Some(q) = waiting.remove(&id).and_then(|w| w.upgrade()) {
                                q.on_timer();
                            }
                        }
                    }
                }
            }
        });
    }
}
