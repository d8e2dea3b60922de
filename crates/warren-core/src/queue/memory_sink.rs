//! A [`Sink`] that keeps deliveries in memory: for driving queues without a connection (unit
//! tests, benchmarks, embedding).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Delivery, Sink};

/// Collects what a queue hands its consumers.
#[derive(Debug)]
pub struct MemorySink {
    deliveries: Mutex<Vec<Delivery>>,
    cancelled: Mutex<Vec<(u16, Arc<str>)>>,
    woken: Mutex<Vec<u16>>,
    writable: AtomicBool,
}

impl MemorySink {
    /// An empty, writable sink.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            deliveries: Mutex::new(Vec::new()),
            cancelled: Mutex::new(Vec::new()),
            woken: Mutex::new(Vec::new()),
            writable: AtomicBool::new(true),
        })
    }

    /// Takes the deliveries received so far.
    pub fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock())
    }

    /// Consumer cancellations received so far: (channel, tag).
    pub fn cancelled(&self) -> Vec<(u16, Arc<str>)> {
        self.cancelled.lock().clone()
    }

    /// Channels woken so far.
    pub fn woken(&self) -> Vec<u16> {
        self.woken.lock().clone()
    }

    /// Makes the sink refuse (false) or accept (true) more output.
    pub fn set_writable(&self, w: bool) {
        self.writable.store(w, Ordering::Release);
    }
}

impl Sink for MemorySink {
    fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
        self.deliveries.lock().push(d);
        Ok(())
    }

    fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    fn cancelled(&self, channel: u16, tag: Arc<str>) {
        self.cancelled.lock().push((channel, tag));
    }

    fn wake(&self, channel: u16) {
        self.woken.lock().push(channel);
    }
}
