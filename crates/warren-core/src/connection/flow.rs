//! Output backpressure of one connection, and the ownership of its wake-up (see `Flow`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Output backpressure of one connection: bytes handed to the writer and not yet written,
/// plus the estimated output of deliveries queues have handed over and the connection has not
/// encoded yet. At [`Flow::HIGH`] the connection stops reading its socket and its consumers get
/// nothing more (so a client that does not read cannot make the broker buffer without bound).
///
/// Wake-ups have one owner, the connection task. Whoever finds the connection not writable (a
/// queue's dispatch skipping a consumer, or the connection itself before reading) marks it
/// *parked*; every place that lowers the level checks for a parked mark afterwards: the
/// connection task at the end of each turn ([`Flow::resume_due`], after encoding deliveries
/// and writing directly), the writer task after each write (it pokes the connection task,
/// which then does the same check). Once the level is below [`Flow::LOW`] and the mark is
/// set, the connection task clears it and kicks the queues of its consumers. The mark is set
/// before the level is read again and the level is lowered before the mark is read (both
/// `SeqCst`), so a dispatch that parks concurrently with the last decrement is either seen by
/// the check or sees the lowered level itself: no wake-up is lost.
#[derive(Debug, Default)]
pub struct Flow {
    pending: AtomicUsize,
    /// Estimated output bytes of deliveries handed to the connection and not yet encoded.
    reserved: AtomicUsize,
    parked: AtomicBool,
    pub(super) drained: tokio::sync::Notify,
}

impl Flow {
    /// Stop at this many output bytes.
    pub const HIGH: usize = 8 * 1024 * 1024;
    /// Resume below this many.
    pub const LOW: usize = 2 * 1024 * 1024;

    fn level(&self) -> usize {
        self.pending.load(Ordering::SeqCst) + self.reserved.load(Ordering::SeqCst)
    }

    /// Whether more output may be produced for this connection. When not, the connection is
    /// marked parked, and its task kicks its consumers' queues once it drains.
    pub fn writable(&self) -> bool {
        if self.level() < Self::HIGH {
            return true;
        }
        self.parked.store(true, Ordering::SeqCst);
        // Re-read after parking: a decrement that raced with the first read is seen here, or
        // it sees the mark (see the type's docs).
        self.level() < Self::HIGH
    }

    /// A queue hands this connection a delivery of about `n` output bytes.
    pub fn reserve(&self, n: usize) {
        self.reserved.fetch_add(n, Ordering::SeqCst);
    }

    /// The delivery reserved with [`Flow::reserve`] was encoded (or returned).
    pub fn unreserve(&self, n: usize) {
        let _ = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Nothing is waiting at (or being written by) the writer.
    pub(super) fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    pub(super) fn queued(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::SeqCst);
    }

    /// The writer wrote `n` bytes; pokes the connection task if someone is parked and the
    /// level is low enough to resume.
    pub(crate) fn written(&self, n: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
        if self.level() < Self::LOW && self.parked.load(Ordering::SeqCst) {
            self.drained.notify_one();
        }
    }

    /// The connection task's check after every turn: true (once) when something parked on this
    /// connection's output and it has drained below [`Flow::LOW`], i.e. its consumers' queues
    /// must be kicked now.
    pub(super) fn resume_due(&self) -> bool {
        // Read before the swap: no locked instruction on the usual turn, with nothing parked.
        self.parked.load(Ordering::SeqCst)
            && self.level() < Self::LOW
            && self.parked.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::Flow;

    /// The issue-11 stall: a dispatch burst reserves the whole window and parks; the connection
    /// encodes everything and writes it directly (the writer never sees a byte). The check at
    /// the end of the connection's turn must resume, exactly once.
    #[test]
    fn reserved_window_drained_without_the_writer_resumes() {
        let f = Flow::default();
        let mut reserved = 0;
        while f.writable() {
            f.reserve(100);
            reserved += 100;
        }
        assert!(!f.resume_due(), "still full");
        f.unreserve(reserved - Flow::LOW);
        assert!(!f.resume_due(), "not below the low mark yet");
        f.unreserve(Flow::LOW);
        assert!(f.resume_due(), "drained: kick the consumers");
        assert!(!f.resume_due(), "one kick per park");
        assert!(f.writable());
    }

    /// Bytes queued at the writer: the writer's write pokes the connection task once the level
    /// is low, and only when something parked.
    #[tokio::test]
    async fn writer_drain_pokes_the_connection_when_parked() {
        let f = Flow::default();
        f.queued(Flow::HIGH);
        assert!(!f.writable());
        f.written(Flow::HIGH - Flow::LOW);
        let poked =
            tokio::time::timeout(std::time::Duration::from_millis(20), f.drained.notified());
        assert!(poked.await.is_err(), "not below the low mark: no poke");
        f.written(Flow::LOW);
        tokio::time::timeout(std::time::Duration::from_secs(1), f.drained.notified())
            .await
            .expect("poked");
        assert!(f.resume_due());
        // Without a park, draining pokes nobody.
        f.queued(1000);
        f.written(1000);
        assert!(!f.resume_due());
    }

    /// Parking and the last decrement racing on two threads never lose the wake-up: either the
    /// parking side sees the connection writable again, or the connection's check sees the mark.
    #[test]
    fn park_and_drain_race_loses_no_wakeup() {
        for _ in 0..2000 {
            let f = std::sync::Arc::new(Flow::default());
            f.reserve(Flow::HIGH);
            let g = f.clone();
            let parker = std::thread::spawn(move || g.writable());
            f.unreserve(Flow::HIGH);
            let resumed = f.resume_due();
            let writable = parker.join().expect("join");
            assert!(writable || resumed, "a park was missed");
        }
    }
}
