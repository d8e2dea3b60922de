//! Queue timers: message TTL at the head of a queue and `x-expires`.
//!
//! One task per broker keeps a heap of deadlines; queues ask for a wake-up with
//! [`Timers::schedule`] (non-blocking, from under their lock) and get [`Queue::on_timer`]
//! called with the time at the deadline. A queue that is gone by then is skipped (the task
//! holds only `Weak` references). The task sleeps on the broker's [`Clock`], so on a manual
//! clock deadlines fire when a test advances it, without anyone sleeping.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;

use super::Queue;
use crate::clock::{Clock, Millis};

type Request = (Millis, Weak<dyn Queue>);

/// Handle to a broker's timer task.
#[derive(Debug, Clone)]
pub struct Timers {
    tx: mpsc::UnboundedSender<Request>,
    rx: Arc<parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Request>>>>,
    clock: Clock,
}

impl Timers {
    /// A timer service on `clock`; nothing fires until [`Timers::start`] runs it.
    pub fn new(clock: Clock) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Arc::new(parking_lot::Mutex::new(Some(rx))),
            clock,
        }
    }

    /// Asks for `queue.on_timer(now)` at `at` (or soon after).
    pub fn schedule(&self, at: Millis, queue: Weak<dyn Queue>) {
        let _ = self.tx.send((at, queue));
    }

    /// Spawns the timer task on the current runtime (once).
    pub fn start(&self) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let mut heap: BinaryHeap<Reverse<(Millis, u64)>> = BinaryHeap::new();
            let mut waiting: HashMap<u64, Weak<dyn Queue>> = HashMap::new();
            let mut counter = 0u64;
            loop {
                let next = heap.peek().map(|Reverse((at, _))| *at);
                let sleep = async {
                    match next {
                        Some(at) => clock.sleep_until(at).await,
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
                        let now = clock.now();
                        while let Some(Reverse((at, id))) = heap.peek().copied() {
                            if at > now {
                                break;
                            }
                            heap.pop();
                            if let Some(q) = waiting.remove(&id).and_then(|w| w.upgrade()) {
                                q.on_timer(now);
                            }
                        }
                    }
                }
            }
        });
    }
}
