//! Durable metadata (topology) benchmark: `--clients` connections declare `--queues` durable
//! queues between them (`<prefix>-<client>-<i>`), one at a time per connection (each
//! `queue.declare` waits for its `declare-ok`, and with `--bind` each queue is then bound to
//! `amq.direct` with its own name as key, waiting for `bind-ok`; `--bindings N` makes that N
//! bindings per queue, keys `<name>`, `<name>.1` .. `<name>.{N-1}`), then delete them the same
//! way. Nothing is pipelined: the point is the latency of one metadata operation, and how it
//! grows with the number of queues already there. The clients run concurrently, one task each.
//!
//! Reported: declare(+bind) time and rates, the wall time of each quarter of the declares
//! (by completion order over all clients) and of the first vs the last 1,000, latency
//! percentiles, and the delete time and rate. `--keep-queues` skips the delete phase.
//!
//! With `--await-queue NAME` nothing is declared: the tool connects (retrying while the
//! broker is down) and declares NAME passively until that succeeds, and reports how long it
//! took; used to time a broker restart with a large durable topology.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use warren_codec::proto::{queue, AMQPClass, FieldTable};

use crate::conn::{proto_err, AmqpUri, Conn};
use crate::stats::{latency_of, new_histogram};
use crate::{self_cpu_seconds, Mode, Options, Summary};

/// The exchange every queue is bound to with `--bind`.
pub const BIND_EXCHANGE: &str = "amq.direct";

/// The name of queue `i` of client `client`.
pub fn queue_name(prefix: &str, client: usize, i: usize) -> String {
    format!("{prefix}-{client}-{i}")
}

/// Bindings made per queue: `--bindings N` (N > 0), else 1 with `--bind`, else none.
pub fn bindings_per_queue(opts: &Options) -> usize {
    match (opts.bindings, opts.bind) {
        (0, true) => 1,
        (n, _) => n,
    }
}

/// The routing key of binding `k` of queue `name`.
pub fn binding_key(name: &str, k: usize) -> String {
    if k == 0 {
        name.to_string()
    } else {
        format!("{name}.{k}")
    }
}

/// How many of `total` queues client `client` of `clients` declares (an even split; the first
/// `total % clients` clients get one more).
pub fn share(total: usize, clients: usize, client: usize) -> usize {
    let clients = clients.max(1);
    total / clients + usize::from(client < total % clients)
}

/// How the declare phase's time was spread over the declares, from the completion time of
/// every declare(+bind) (any order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    /// Wall time of each quarter of the declares, by completion order, seconds.
    pub quarters_s: [f64; 4],
    /// Size of the first/last windows: 1,000, or half the count when there are fewer than
    /// 2,000 (so that the two never overlap).
    pub window: u64,
    /// Time until the first `window` declares had completed, seconds.
    pub first_window_s: f64,
    /// Time from the completion of declare `n - window` to the last one, seconds.
    pub last_window_s: f64,
}

/// Computes the [`Profile`] of completion times (each since the start of the phase).
pub fn profile(done: &[Duration]) -> Profile {
    let mut d: Vec<Duration> = done.to_vec();
    d.sort_unstable();
    let n = d.len();
    // When k declares had completed (k = 0: the start).
    let at = |k: usize| {
        if k == 0 {
            0.0
        } else {
            d[k - 1].as_secs_f64()
        }
    };
    let mut quarters_s = [0.0; 4];
    for (q, slot) in quarters_s.iter_mut().enumerate() {
        *slot = at((q + 1) * n / 4) - at(q * n / 4);
    }
    let window = if n >= 2000 { 1000 } else { n / 2 };
    Profile {
        quarters_s,
        window: window as u64,
        first_window_s: at(window),
        last_window_s: at(n) - at(n - window),
    }
}

/// What one client did in one phase.
struct Phase {
    conn: Conn,
    /// Completion time of each operation (declare+bind counts as one), since the phase start.
    done: Vec<Duration>,
    /// Latency of each operation, microseconds.
    hist: Histogram<u64>,
    /// Bindings made.
    bound: u64,
}

fn elapsed_us(t: Instant) -> u64 {
    (t.elapsed().as_micros() as u64).max(1)
}

fn is_declare_ok(m: &AMQPClass) -> bool {
    matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
}
fn is_bind_ok(m: &AMQPClass) -> bool {
    matches!(m, AMQPClass::Queue(queue::AMQPMethod::BindOk(_)))
}
fn is_delete_ok(m: &AMQPClass) -> bool {
    matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_)))
}

/// One synchronous method on channel 1; the reply must be the expected one.
async fn call(
    conn: &mut Conn,
    m: AMQPClass,
    what: &str,
    ok: fn(&AMQPClass) -> bool,
) -> io::Result<()> {
    let reply = conn.rpc(m).await?;
    if ok(&reply) {
        Ok(())
    } else {
        Err(proto_err(format!("{what}: unexpected reply {reply:?}")))
    }
}

fn declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn bind(name: &str, key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: name.into(),
        exchange: BIND_EXCHANGE.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn delete(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    }))
}

/// Declares (and binds) client `client`'s queues one at a time.
async fn declare_client(
    mut conn: Conn,
    opts: Arc<Options>,
    client: usize,
    t0: Instant,
    progress: Arc<AtomicU64>,
) -> io::Result<Phase> {
    let n = share(opts.queues, opts.clients, client);
    let mut done = Vec::with_capacity(n);
    let mut hist = new_histogram();
    let mut bound = 0;
    let per_queue = bindings_per_queue(&opts);
    for i in 0..n {
        let name = queue_name(&opts.queue, client, i);
        let start = Instant::now();
        call(&mut conn, declare(&name), "queue.declare", is_declare_ok).await?;
        for k in 0..per_queue {
            let key = binding_key(&name, k);
            call(&mut conn, bind(&name, &key), "queue.bind", is_bind_ok).await?;
            bound += 1;
        }
        let _ = hist.record(elapsed_us(start));
        done.push(t0.elapsed());
        progress.fetch_add(1, Relaxed);
    }
    Ok(Phase {
        conn,
        done,
        hist,
        bound,
    })
}

/// Deletes client `client`'s queues one at a time.
async fn delete_client(
    mut conn: Conn,
    opts: Arc<Options>,
    client: usize,
    t0: Instant,
    progress: Arc<AtomicU64>,
) -> io::Result<Phase> {
    let n = share(opts.queues, opts.clients, client);
    let mut done = Vec::with_capacity(n);
    let mut hist = new_histogram();
    for i in 0..n {
        let name = queue_name(&opts.queue, client, i);
        let start = Instant::now();
        call(&mut conn, delete(&name), "queue.delete", is_delete_ok).await?;
        let _ = hist.record(elapsed_us(start));
        done.push(t0.elapsed());
        progress.fetch_add(1, Relaxed);
    }
    Ok(Phase {
        conn,
        done,
        hist,
        bound: 0,
    })
}

/// Waits for every client of a phase, writing a progress line per second (unless `--json`).
/// Returns the phases in client order; the first client error fails the whole phase.
async fn wait_phase(
    mut set: JoinSet<(usize, io::Result<Phase>)>,
    clients: usize,
    what: &str,
    progress: &AtomicU64,
    t0: Instant,
    opts: &Options,
    out: &mut (dyn Write + Send),
) -> io::Result<Vec<Phase>> {
    let mut phases: Vec<Option<Phase>> = (0..clients).map(|_| None).collect();
    let mut tick =
        tokio::time::interval_at((t0 + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let (mut last, mut last_t) = (0u64, t0);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok((c, Ok(p)))) => phases[c] = Some(p),
                Some(Ok((c, Err(e)))) => {
                    return Err(io::Error::new(e.kind(), format!("{what}, client {c}: {e}")))
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
            },
            _ = tick.tick() => {
                if !opts.json {
                    let now = progress.load(Relaxed);
                    let dt = last_t.elapsed().as_secs_f64();
                    writeln!(
                        out,
                        "time {:.1} s, {what} {now}/{}, {:.0}/s",
                        t0.elapsed().as_secs_f64(),
                        opts.queues,
                        (now - last) as f64 / dt,
                    )?;
                    out.flush()?;
                    (last, last_t) = (now, Instant::now());
                }
            }
        }
    }
    phases
        .into_iter()
        .enumerate()
        .map(|(c, p)| p.ok_or_else(|| proto_err(format!("{what}: client {c} did not report"))))
        .collect()
}

/// Connects `clients` connections concurrently.
async fn connect_all(uri: &AmqpUri, clients: usize) -> io::Result<Vec<Conn>> {
    let mut set = JoinSet::new();
    for c in 0..clients {
        let uri = uri.clone();
        set.spawn(async move {
            let conn = Conn::connect(&uri, &format!("warren-perf topology {c}")).await;
            (c, conn)
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..clients).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (c, conn) = joined.map_err(io::Error::other)?;
        conns[c] = Some(conn.map_err(|e| io::Error::new(e.kind(), format!("client {c}: {e}")))?);
    }
    conns
        .into_iter()
        .map(|c| c.ok_or_else(|| proto_err("a client did not connect")))
        .collect()
}

fn merge(phases: &[Phase]) -> (Vec<Duration>, Histogram<u64>) {
    let mut done = Vec::new();
    let mut hist = new_histogram();
    for p in phases {
        done.extend_from_slice(&p.done);
        let _ = hist.add(&p.hist);
    }
    (done, hist)
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Runs the declare and delete phases (or, with `--await-queue`, the restart probe).
pub async fn run(opts: &Options, out: &mut (dyn Write + Send)) -> io::Result<Summary> {
    let uri = AmqpUri::parse(&opts.uri)?;
    if let Some(name) = &opts.await_queue {
        return await_queue(opts, &uri, name, out).await;
    }
    let clients = opts.clients.max(1);
    let mut o = opts.clone();
    o.clients = clients;
    let opts = Arc::new(o);
    let cpu0 = self_cpu_seconds();
    let conns = connect_all(&uri, clients).await?;
    let server = conns.first().map(|c| c.server.clone()).unwrap_or_default();

    // Declare (+ bind).
    let progress = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let (opts, progress) = (opts.clone(), progress.clone());
        set.spawn(async move { (c, declare_client(conn, opts, c, t0, progress).await) });
    }
    let phases = wait_phase(set, clients, "declared", &progress, t0, &opts, out).await?;
    let (done, hist) = merge(&phases);
    let declare_s = done.iter().max().copied().unwrap_or_default().as_secs_f64();
    let declared = done.len() as u64;
    let bound: u64 = phases.iter().map(|p| p.bound).sum();
    let prof = profile(&done);
    let latency = latency_of(&hist);
    let conns: Vec<Conn> = phases.into_iter().map(|p| p.conn).collect();

    // Delete.
    let (mut deleted, mut delete_s, mut delete_latency) = (0, 0.0, Default::default());
    let conns = if opts.keep_queues {
        conns
    } else {
        let progress = Arc::new(AtomicU64::new(0));
        let t1 = Instant::now();
        let mut set = JoinSet::new();
        for (c, conn) in conns.into_iter().enumerate() {
            let (opts, progress) = (opts.clone(), progress.clone());
            set.spawn(async move { (c, delete_client(conn, opts, c, t1, progress).await) });
        }
        let phases = wait_phase(set, clients, "deleted", &progress, t1, &opts, out).await?;
        let (done, hist) = merge(&phases);
        deleted = done.len() as u64;
        delete_s = done.iter().max().copied().unwrap_or_default().as_secs_f64();
        delete_latency = latency_of(&hist);
        phases.into_iter().map(|p| p.conn).collect()
    };
    let duration_s = t0.elapsed().as_secs_f64();
    let mut closing = JoinSet::new();
    for c in conns {
        closing.spawn(c.close());
    }
    while closing.join_next().await.is_some() {}

    let q = prof.quarters_s;
    let ops = declared + bound + deleted;
    let cpu = self_cpu_seconds() - cpu0;
    Ok(Summary {
        mode: Mode::Topology,
        uri: uri.redacted(),
        server,
        clients,
        duration_s,
        latency,
        declared,
        bound,
        declare_s,
        declare_rate: rate(declared, declare_s),
        declare_ops_rate: rate(declared + bound, declare_s),
        declare_quarters_s: q.to_vec(),
        last_to_first_quarter: if q[0] > 0.0 { q[3] / q[0] } else { 0.0 },
        window: prof.window,
        first_window_s: prof.first_window_s,
        last_window_s: prof.last_window_s,
        deleted,
        delete_s,
        delete_rate: rate(deleted, delete_s),
        delete_latency,
        client_cpu_s: cpu,
        client_cpu_us_per_msg: if ops > 0 { cpu * 1e6 / ops as f64 } else { 0.0 },
        ..Summary::default()
    })
}

/// Connects and declares `name` passively until that succeeds (every 20 ms, each attempt
/// bounded to 5 s), for at most `--await-timeout` seconds.
async fn await_queue(
    opts: &Options,
    uri: &AmqpUri,
    name: &str,
    out: &mut (dyn Write + Send),
) -> io::Result<Summary> {
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(opts.await_timeout.max(0.0));
    let mut attempts = 0u64;
    let mut last_err;
    let mut last_report = t0;
    loop {
        attempts += 1;
        let attempt = async {
            let mut conn = Conn::connect(uri, "warren-perf await").await?;
            let count = conn.declare_queue_passive(name).await?;
            let server = conn.server.clone();
            conn.close().await;
            Ok::<(String, u32), io::Error>((server, count))
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok((server, _))) => {
                return Ok(Summary {
                    mode: Mode::Topology,
                    uri: uri.redacted(),
                    server,
                    await_s: t0.elapsed().as_secs_f64(),
                    await_attempts: attempts,
                    duration_s: t0.elapsed().as_secs_f64(),
                    ..Summary::default()
                })
            }
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = "attempt timed out after 5 s".into(),
        }
        if t0.elapsed() >= limit {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "queue {name} not visible after {:.1} s ({attempts} attempts; last: {last_err})",
                    t0.elapsed().as_secs_f64()
                ),
            ));
        }
        if !opts.json && last_report.elapsed() >= Duration::from_secs(1) {
            writeln!(
                out,
                "time {:.1} s, waiting for {name}: {last_err}",
                t0.elapsed().as_secs_f64()
            )?;
            out.flush()?;
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, clients) in [(10_000, 16), (200, 4), (3, 5), (0, 1), (7, 0)] {
            let sum: usize = (0..clients.max(1)).map(|c| share(total, clients, c)).sum();
            assert_eq!(sum, total, "{total} over {clients}");
        }
        assert_eq!(share(10, 4, 0), 3);
        assert_eq!(share(10, 4, 3), 2);
    }

    #[test]
    fn profile_of_linear_and_growing_costs() {
        // 4,000 declares of 1 ms each: every quarter takes 1 s, windows 1 s each.
        let done: Vec<Duration> = (1..=4000).map(Duration::from_millis).collect();
        let p = profile(&done);
        for q in p.quarters_s {
            assert!((q - 1.0).abs() < 1e-9, "{p:?}");
        }
        assert_eq!(p.window, 1000);
        assert!((p.first_window_s - 1.0).abs() < 1e-9);
        assert!((p.last_window_s - 1.0).abs() < 1e-9);

        // Declare i costs i ms (quadratic total): the last quarter costs ~6.9x the first.
        // Completion times in any order give the same profile.
        let mut t = 0;
        let mut done: Vec<Duration> = (1..=400u64)
            .map(|i| {
                t += i;
                Duration::from_millis(t)
            })
            .collect();
        done.reverse();
        let p = profile(&done);
        assert_eq!(p.window, 200);
        let total: f64 = p.quarters_s.iter().sum();
        assert!((total - 80.2).abs() < 1e-6, "{p:?}");
        assert!((p.quarters_s[0] - 5.05).abs() < 1e-6, "{p:?}");
        assert!((p.quarters_s[3] - 35.05).abs() < 1e-6, "{p:?}");
        // Windows of 200: 1..200 ms vs 201..400 ms.
        assert!((p.first_window_s - 20.1).abs() < 1e-6, "{p:?}");
        assert!((p.last_window_s - 60.1).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn profile_of_nothing() {
        assert_eq!(profile(&[]), Profile::default());
        let p = profile(&[Duration::from_secs(1)]);
        assert_eq!(p.window, 0);
        assert_eq!(p.quarters_s[3], 1.0);
    }
}
