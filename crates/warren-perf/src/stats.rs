//! Verification of what consumers receive, and latency histograms.

use hdrhistogram::Histogram;

use crate::Latency;

/// A latency histogram in microseconds (1 us .. 1 hour, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Summarises a histogram.
pub fn latency_of(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        mean_us: h.mean(),
        p50_us: h.value_at_quantile(0.50),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

/// What one consumer saw of one producer.
#[derive(Debug, Default, Clone)]
pub struct ProducerTrack {
    /// Bit `seq` set when message `seq` was received.
    pub bits: Vec<u64>,
    /// Highest sequence number seen so far (+1; 0 = none).
    pub high: u64,
}

/// Per-consumer verification state: one [`ProducerTrack`] per producer.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    /// Indexed by producer id.
    pub producers: Vec<ProducerTrack>,
    /// Duplicates seen by this consumer.
    pub duplicates: u64,
    /// Out-of-order arrivals seen by this consumer.
    pub out_of_order: u64,
    /// Bodies that were not stamped by a producer of this run.
    pub foreign: u64,
}

impl Tracker {
    /// A tracker for `producers` producers.
    pub fn new(producers: usize) -> Tracker {
        Tracker {
            producers: vec![ProducerTrack::default(); producers],
            ..Tracker::default()
        }
    }

    /// Records message `seq` of producer `pid`.
    #[inline]
    pub fn record(&mut self, pid: u64, seq: u64) {
        let Some(p) = self.producers.get_mut(pid as usize) else {
            self.foreign += 1;
            return;
        };
        let word = (seq / 64) as usize;
        if word >= p.bits.len() {
            if word > (1 << 26) {
                // > 4 billion messages from one producer: not one of ours.
                self.foreign += 1;
                return;
            }
            let grow = (word + 1).max(p.bits.len() * 2).max(1024);
            p.bits.resize(grow, 0);
        }
        let mask = 1u64 << (seq % 64);
        if p.bits[word] & mask != 0 {
            self.duplicates += 1;
            return;
        }
        p.bits[word] |= mask;
        if seq + 1 < p.high {
            self.out_of_order += 1;
        } else {
            p.high = seq + 1;
        }
    }
}

/// Merges the trackers of the consumers of one queue: returns (unique messages received per
/// producer, duplicates across consumers).
pub fn merge_queue(trackers: &[&Tracker], producers: usize) -> (Vec<u64>, u64) {
    let mut unique = vec![0u64; producers];
    let mut dups = 0u64;
    for (pid, u) in unique.iter_mut().enumerate() {
        let len = trackers
            .iter()
            .map(|t| t.producers[pid].bits.len())
            .max()
            .unwrap_or(0);
        for w in 0..len {
            let mut acc = 0u64;
            for t in trackers {
                let b = t.producers[pid].bits.get(w).copied().unwrap_or(0);
                dups += u64::from((acc & b).count_ones());
                acc |= b;
            }
            *u += u64::from(acc.count_ones());
        }
    }
    (unique, dups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_and_reordering() {
        let mut t = Tracker::new(2);
        for s in [0, 1, 2, 4, 3, 3] {
            t.record(1, s);
        }
        t.record(7, 0);
        assert_eq!((t.duplicates, t.out_of_order, t.foreign), (1, 1, 1));
        let mut u = Tracker::new(2);
        u.record(1, 4);
        u.record(1, 100);
        let (unique, dups) = merge_queue(&[&t, &u], 2);
        assert_eq!(unique, vec![0, 6]);
        assert_eq!(dups, 1);
    }

    #[test]
    fn percentiles() {
        let mut h = new_histogram();
        for v in 1..=100u64 {
            h.record(v).expect("in range");
        }
        let l = latency_of(&h);
        assert_eq!((l.p50_us, l.p99_us, l.max_us), (50, 99, 100));
    }
}
