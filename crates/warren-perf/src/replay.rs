//! Replay mode: consumers attach to a queue that holds messages already (a stream filled by an
//! earlier run with `--keep-queues`), each on its own connection with the `--consumer-arg`s
//! given (`x-stream-offset=first`, `=N`, ...), and each reads until it has `-C` messages.
//! Nothing is declared, published or deleted. Reports the time from each `basic.consume` to
//! its first delivery, the aggregate and per-consumer rates, and checks what every consumer
//! got on its own: each must see a contiguous run of one producer's sequence numbers, once
//! each, in order (several consumers replaying one stream each get every message; they do not
//! compete as on a classic queue).

use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::bench::{plan, start_consumers, Shared};
use crate::conn::{AmqpUri, Conn};
use crate::stats::{latency_of, new_histogram, Tracker};
use crate::{self_cpu_seconds, Options, Summary};

/// What one consumer's tracker says about producer `pid`'s messages: (lowest sequence number
/// seen, highest, how many distinct), or `None` when it saw none.
pub fn seq_span(t: &Tracker, pid: usize) -> Option<(u64, u64, u64)> {
    let bits = &t.producers.get(pid)?.bits;
    let first_word = bits.iter().position(|w| *w != 0)?;
    let last_word = bits.iter().rposition(|w| *w != 0)?;
    let low = first_word as u64 * 64 + u64::from(bits[first_word].trailing_zeros());
    let high = last_word as u64 * 64 + 63 - u64::from(bits[last_word].leading_zeros());
    let distinct = bits.iter().map(|w| u64::from(w.count_ones())).sum();
    Some((low, high, distinct))
}

/// Runs replay mode.
pub async fn run(opts: &Options, out: &mut (dyn Write + Send)) -> io::Result<Summary> {
    let uri = AmqpUri::parse(&opts.uri)?;
    let opts = Arc::new(opts.clone());
    let plan = plan(&opts);
    let mut admin = Conn::connect(&uri, "warren-perf replay").await?;
    let server = admin.server.clone();
    // Fail early and clearly when the queue is not there.
    for q in &plan.queues {
        admin.declare_queue_passive(q).await?;
    }
    let producers = opts.producers.max(1);
    let shared = Arc::new(Shared::new(producers, opts.consumers));
    let limit = opts.pmessages.unwrap_or(u64::MAX);
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu0 = self_cpu_seconds();
    let t0 = Instant::now();
    let consumers = start_consumers(&uri, &opts, &plan, &shared, &stop_rx).await?;

    // Until every consumer has its `-C` messages, `-z` is up, or nothing arrives for `--drain` s.
    let duration = Duration::from_secs_f64(opts.time.max(0.0));
    let idle = Duration::from_secs_f64(opts.drain.max(0.1));
    let mut tick =
        tokio::time::interval_at((t0 + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let (mut last_r, mut last_t) = (0u64, t0);
    let (mut seen, mut progress_at) = (0u64, Instant::now());
    loop {
        let r = shared.received.load(Relaxed);
        if r != seen {
            (seen, progress_at) = (r, Instant::now());
        }
        if t0.elapsed() >= duration
            || progress_at.elapsed() >= idle
            || consumers.iter().all(|h| h.is_finished())
        {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
        }
        if !opts.json {
            let dt = last_t.elapsed().as_secs_f64();
            last_t = Instant::now();
            writeln!(
                out,
                "time {:.1} s, received {:.0} msg/s ({} in total)",
                t0.elapsed().as_secs_f64(),
                (r - last_r) as f64 / dt,
                r
            )?;
            out.flush()?;
            last_r = r;
        }
    }
    let _ = stop_tx.send(true);
    let mut first_err = None;
    let mut trackers = Vec::new();
    for h in consumers {
        match h.await {
            Ok(Ok(t)) => trackers.push(t),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(io::Error::other(e));
            }
        }
    }
    let cpu = self_cpu_seconds() - cpu0;
    admin.close().await;
    if let Some(e) = first_err {
        return Err(e);
    }

    // Each consumer on its own: a contiguous, duplicate-free, ordered run of sequence numbers.
    let (mut duplicates, mut out_of_order, mut foreign, mut missing) = (0, 0, 0, 0);
    let (mut first_seq, mut last_seq) = (u64::MAX, 0u64);
    for t in &trackers {
        duplicates += t.duplicates;
        out_of_order += t.out_of_order;
        foreign += t.foreign;
        let mut got = 0;
        for pid in 0..producers {
            if let Some((low, high, distinct)) = seq_span(t, pid) {
                missing += (high - low + 1) - distinct;
                got += distinct;
                first_seq = first_seq.min(low);
                last_seq = last_seq.max(high);
            }
        }
        if limit != u64::MAX {
            missing += limit.saturating_sub(got + t.duplicates + t.foreign);
        }
    }
    let ns = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    let mut attach = new_histogram();
    for c in 0..opts.consumers {
        let (sent, first) = (ns(&shared.consume_ns[c]), ns(&shared.first_ns[c]));
        if sent > 0 && first > sent {
            let _ = attach.record(((first - sent) / 1000).max(1));
        }
    }
    // From the first basic.consume to the last consumer done (or the last message seen).
    let start = shared.consume_ns.iter().map(ns).filter(|v| *v > 0).min();
    let end = if shared.done_ns.iter().all(|d| ns(d) > 0) {
        shared.done_ns.iter().map(ns).max()
    } else {
        Some(progress_at.duration_since(shared.base).as_nanos() as u64)
    };
    let replay_s = match (start, end) {
        (Some(s), Some(e)) if e > s => (e - s) as f64 / 1e9,
        _ => t0.elapsed().as_secs_f64(),
    };
    let received = shared.received.load(Relaxed);
    let size = opts.body_size();
    Ok(Summary {
        mode: opts.mode,
        uri: uri.redacted(),
        server,
        producers: 0,
        consumers: opts.consumers,
        size,
        duration_s: replay_s,
        received,
        received_total: received,
        receive_rate: received as f64 / replay_s,
        receive_mb_s: received as f64 * size as f64 / 1e6 / replay_s,
        attach: latency_of(&attach),
        first_seq: if first_seq == u64::MAX { 0 } else { first_seq },
        last_seq,
        duplicates,
        out_of_order,
        missing,
        foreign,
        client_cpu_s: cpu,
        client_cpu_us_per_msg: if received > 0 {
            cpu * 1e6 / received as f64
        } else {
            0.0
        },
        ..Summary::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_of_a_contiguous_run() {
        let mut t = Tracker::new(1);
        for s in 70..200 {
            t.record(0, s);
        }
        assert_eq!(seq_span(&t, 0), Some((70, 199, 130)));
        t.record(0, 300);
        assert_eq!(seq_span(&t, 0), Some((70, 300, 131)));
        assert_eq!(seq_span(&Tracker::new(1), 0), None);
        assert_eq!(seq_span(&t, 3), None);
    }
}
