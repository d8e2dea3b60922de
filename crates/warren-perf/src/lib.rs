//! `warren-perf`: an AMQP 0-9-1 load generator in the spirit of RabbitMQ's PerfTest, usable
//! against any 0-9-1 broker.
//!
//! Built on `warren-codec` with a lean tokio client ([`conn`]): one task per connection, writes
//! batched into one `BytesMut` and flushed per batch, the publish/deliver/ack hot path encoded
//! and parsed by hand. Every message body carries an 8-byte sequence number, an 8-byte producer
//! id and an 8-byte send timestamp (ns), so consumers measure latency and check what they got:
//! duplicates, out-of-order and missing messages are counted and reported.
//!
//! The binary is a thin wrapper around [`run`].

pub mod bench;
pub mod conn;
pub mod connect;
pub mod hold;
pub mod replay;
pub mod rtt;
pub mod stats;
pub mod tls;
pub mod topology;

use std::io::{self, Write};

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Producers and consumers (the default).
    #[default]
    Run,
    /// Request-reply round trip with one message in flight.
    Rtt,
    /// Open `--connections` idle connections (one channel each) and hold them.
    Hold,
    /// Producers publish first (`-C` messages each, or for `-z` seconds) with no consumer
    /// attached; then the consumers attach and drain the standing backlog. Reports the drain
    /// rate and verifies that every message arrived exactly once.
    Drain,
    /// Durable metadata: `--clients` connections declare `--queues` durable queues between
    /// them one at a time (optionally each bound to `amq.direct`, `--bind`), then delete them
    /// one at a time. Reports rates, the time per quarter of the declares and the first vs
    /// the last 1,000. `-z` does not apply.
    Topology,
    /// Connection churn: `--clients` tasks each open a connection (TCP, TLS with `amqps://`,
    /// AMQP handshake and one `channel.open`), close it and open the next, for `-z`
    /// seconds. Reports completed handshakes per second and the latency of each open.
    Connect,
    /// Consumers only, on a queue that holds messages already (a stream filled by an earlier
    /// run with `--keep-queues`): `-y` consumers attach with the `--consumer-arg`s (e.g.
    /// `x-stream-offset=first` or `=N`), each on its own connection, and each reads until it
    /// has `-C` messages (or `-z` is up, or nothing arrives for `--drain` seconds). Reports
    /// the time from `basic.consume` to the first delivery and the replay rate, and checks
    /// that every consumer got a contiguous run of sequence numbers. Declares and deletes
    /// nothing; `-x` is how many producers filled the queue (their stamps are expected).
    Replay,
}

/// Command-line options, modelled on PerfTest's.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "warren-perf",
    version,
    about = "AMQP 0-9-1 load generator (PerfTest-like)"
)]
pub struct Options {
    /// Mode: run (producers/consumers), rtt (request-reply latency), hold (idle connections),
    /// drain (publish a backlog first, then drain it), topology (declare, bind and delete
    /// durable queues one at a time), connect (connection churn), replay (consumers only, on
    /// a stream filled already).
    #[arg(value_enum, default_value_t = Mode::Run)]
    pub mode: Mode,
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Number of producers.
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,
    /// Number of consumers.
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes (at least 24: sequence, producer id, timestamp).
    #[arg(short = 's', long, default_value_t = 24)]
    pub size: usize,
    /// Consumer prefetch (basic.qos); 0 = unlimited.
    #[arg(short = 'q', long, default_value_t = 0)]
    pub qos: u16,
    /// Manual acks: one multiple-ack every N messages.
    #[arg(short = 'A', long = "multi-ack-every", default_value_t = 1)]
    pub multi_ack_every: u64,
    /// Auto-ack (no_ack consumers).
    #[arg(short = 'a', long = "autoack")]
    pub autoack: bool,
    /// Publisher confirms with at most N unconfirmed messages per producer.
    #[arg(short = 'c', long)]
    pub confirm: Option<u64>,
    /// Message flags; `persistent` makes messages persistent and queues/exchange durable.
    #[arg(short = 'f', long = "flag")]
    pub flags: Vec<String>,
    /// Queue name (with --queues N: the prefix, queues are NAME-0 .. NAME-{N-1}).
    #[arg(short = 'u', long, default_value = "warren-perf")]
    pub queue: String,
    /// Exchange name ("" = the default exchange).
    #[arg(short = 'e', long, default_value = "")]
    pub exchange: String,
    /// Exchange type (when an exchange is named).
    #[arg(short = 't', long = "type", default_value = "direct")]
    pub exchange_type: String,
    /// Routing key (default: the queue name; with --bindings: perf.<i>.x rotating).
    #[arg(short = 'k', long = "routing-key")]
    pub routing_key: Option<String>,
    /// Fixed publish rate per producer, msg/s.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Duration in seconds.
    #[arg(short = 'z', long = "time", default_value_t = 10.0)]
    pub time: f64,
    /// Stop each producer after N messages (replay mode: each consumer).
    #[arg(short = 'C', long = "pmessages")]
    pub pmessages: Option<u64>,
    /// Number of queues; producer i publishes to queue i mod N, consumer j consumes queue j mod N
    /// (with fanout/topic/explicit key every producer reaches every queue). Topology mode: the
    /// total number of durable queues declared, split evenly over the clients.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Topic routing: bind each queue with N keys perf.<i>.* and publish with perf.<seq mod N>.x.
    /// Topology mode: N bindings per queue to amq.direct (keys NAME, NAME.1 ..; implies --bind).
    #[arg(long, default_value_t = 0)]
    pub bindings: usize,
    /// Number of idle connections (hold mode). Producers and consumers always get one each.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold idle connections (hold mode).
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Queues and exchange exist already: declare, bind and delete nothing.
    #[arg(short = 'p', long)]
    pub predeclared: bool,
    /// Do not delete the queues at the end (e.g. to measure broker memory with a backlog).
    #[arg(long)]
    pub keep_queues: bool,
    /// Seconds without progress after which draining consumers give up (what has not arrived
    /// by then counts as missing).
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// TLS: a full handshake every time (no session resumption); connect mode measures
    /// full handshakes with it.
    #[arg(long)]
    pub tls_no_resume: bool,
    /// Topology and connect modes: client connections working concurrently, one task each.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Topology mode: bind each queue to amq.direct with its name as key after declaring it.
    #[arg(long)]
    pub bind: bool,
    /// Topology mode: declare nothing; connect and declare this queue passively (retrying every
    /// 20 ms while the broker is down or the queue not there yet) and report how long it took.
    #[arg(long)]
    pub await_queue: Option<String>,
    /// Seconds after which --await-queue gives up.
    #[arg(long, default_value_t = 600.0)]
    pub await_timeout: f64,
    /// Print the final summary as one JSON object (and no per-second lines).
    #[arg(long)]
    pub json: bool,
    /// A `queue.declare` argument KEY=VALUE (repeatable), e.g. `x-queue-type=stream`:
    /// integers are sent as numbers, `true`/`false` as booleans, anything else as a string.
    #[arg(long = "queue-arg")]
    pub queue_args: Vec<String>,
    /// A `basic.consume` argument KEY=VALUE (repeatable, typed as for --queue-arg), e.g.
    /// `x-stream-offset=first` to replay a stream.
    #[arg(long = "consumer-arg")]
    pub consumer_args: Vec<String>,
    /// Use TLS (an `amqp://` URI is taken as `amqps://`; its default port becomes 5671).
    #[arg(long)]
    pub tls: bool,
    /// PEM file of CA certificates that sign the broker's certificate.
    #[arg(long)]
    pub tls_ca: Option<String>,
    /// Do not verify the broker's certificate (self-signed test certificates).
    #[arg(long)]
    pub tls_insecure: bool,
    /// Server name sent (SNI) and checked against the certificate; default: the URI's host.
    #[arg(long)]
    pub tls_sni: Option<String>,
}

/// KEY=VALUE arguments as a field table (integers as longs, `true`/`false` as booleans,
/// everything else as long strings; an entry without `=` is a key with an empty string).
pub fn field_table(args: &[String]) -> warren_codec::proto::FieldTable {
    use warren_codec::proto::{AMQPValue, FieldTable, LongString};
    let mut t = FieldTable::default();
    for a in args {
        let (k, v) = a.split_once('=').unwrap_or((a.as_str(), ""));
        let value = if let Ok(i) = v.parse::<i64>() {
            AMQPValue::LongLongInt(i)
        } else if let Ok(b) = v.parse::<bool>() {
            AMQPValue::Boolean(b)
        } else {
            AMQPValue::LongString(LongString::from(v))
        };
        t.insert(k.into(), value);
    }
    t
}

impl Options {
    /// Parses options from an argument list (first item = program name).
    pub fn from_args<I, T>(args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Options::try_parse_from(args)
    }

    /// Whether messages are persistent (and queues durable).
    pub fn persistent(&self) -> bool {
        self.flags
            .iter()
            .any(|f| f.eq_ignore_ascii_case("persistent"))
    }

    /// The body size actually sent.
    pub fn body_size(&self) -> usize {
        self.size.max(bench::STAMP_LEN)
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Maximum.
    pub max_us: u64,
}

/// The final summary of a run. Every field has a default when read back, so JSON written by
/// an older version (without the topology fields, say) still parses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Mode run.
    pub mode: Mode,
    /// Broker URI (password removed).
    pub uri: String,
    /// Server product and version from `connection.start`.
    pub server: String,
    /// Producers.
    pub producers: usize,
    /// Consumers.
    pub consumers: usize,
    /// Body size in bytes.
    pub size: usize,
    /// Measured publishing time in seconds.
    pub duration_s: f64,
    /// Messages published.
    pub sent: u64,
    /// Messages confirmed (acked) by the broker.
    pub confirmed: u64,
    /// Messages nacked by the broker.
    pub nacked: u64,
    /// Messages received during the run.
    pub received: u64,
    /// Messages received including the drain period.
    pub received_total: u64,
    /// Sent msg/s.
    pub send_rate: f64,
    /// Confirmed msg/s.
    pub confirm_rate: f64,
    /// Received msg/s (during the run).
    pub receive_rate: f64,
    /// Body MB/s sent (10^6 bytes).
    pub send_mb_s: f64,
    /// Body MB/s received.
    pub receive_mb_s: f64,
    /// Consumer latency (or round trip in rtt mode).
    pub latency: Latency,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Messages received after a later one of the same producer on the same consumer.
    pub out_of_order: u64,
    /// Messages sent (and routed to a consumed queue) but never received.
    pub missing: u64,
    /// Messages whose body did not carry a valid stamp of this run.
    pub foreign: u64,
    /// Seconds spent draining after producers stopped.
    pub drain_s: f64,
    /// Messages received after producers stopped, per second of draining.
    pub drain_rate: f64,
    /// This process's CPU time (user+system) during the run, seconds.
    pub client_cpu_s: f64,
    /// Client CPU per message (sent + received), microseconds.
    pub client_cpu_us_per_msg: f64,
    /// Idle connections opened (hold mode).
    pub connections: usize,
    /// Client connections (topology mode).
    pub clients: usize,
    /// Durable queues declared (topology mode).
    pub declared: u64,
    /// Bindings made to amq.direct (topology mode, `--bind`: one per queue, or `--bindings`).
    pub bound: u64,
    /// Seconds from the first declare to the last declare(+bind) completed.
    pub declare_s: f64,
    /// Queues declared (and bound) per second: queue+binding pairs/s with `--bind`.
    pub declare_rate: f64,
    /// Methods (declares + binds) completed per second in the declare phase.
    pub declare_ops_rate: f64,
    /// Wall time of each quarter of the declares (first 25% .. last 25%, by completion order
    /// over all clients), seconds.
    pub declare_quarters_s: Vec<f64>,
    /// Last quarter's time over the first's (1.0 = linear).
    pub last_to_first_quarter: f64,
    /// Size of the first/last declare windows: 1,000, or half the queues when fewer than 2,000.
    pub window: u64,
    /// Time of the first `window` declares, seconds.
    pub first_window_s: f64,
    /// Time of the last `window` declares, seconds.
    pub last_window_s: f64,
    /// Queues deleted (topology mode; 0 with `--keep-queues`).
    pub deleted: u64,
    /// Seconds from the first delete to the last.
    pub delete_s: f64,
    /// Queues deleted per second.
    pub delete_rate: f64,
    /// Latency of each delete (topology mode; `latency` holds the declare(+bind) latency).
    pub delete_latency: Latency,
    /// Seconds until `--await-queue`'s passive declare succeeded.
    pub await_s: f64,
    /// Connection + passive declare attempts until it did.
    pub await_attempts: u64,
    /// Connections opened and closed (connect mode).
    pub handshakes: u64,
    /// Handshakes per second (connect mode).
    pub handshake_rate: f64,
    /// Opens that failed (connect mode).
    pub handshake_errors: u64,
    /// Replay mode: time from each consumer's `basic.consume` to its first delivery.
    pub attach: Latency,
    /// Replay mode: the lowest and highest stamp sequence number any consumer received.
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
}

/// CPU seconds (utime + stime) of this process, from `/proc/self/stat` (USER_HZ = 100).
pub fn self_cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Runs what `opts` asks for, writing per-second lines (unless `--json`) to `out`.
pub async fn run(opts: &Options, out: &mut (dyn Write + Send)) -> io::Result<Summary> {
    let tls_opts;
    let opts = if opts.tls || opts.uri.starts_with("amqps://") {
        tls::configure(
            opts.tls_ca.as_deref(),
            opts.tls_insecure,
            opts.tls_sni.clone(),
            !opts.tls_no_resume,
        )?;
        let mut o = opts.clone();
        if let Some(rest) = o.uri.strip_prefix("amqp://") {
            o.uri = format!("amqps://{rest}");
        }
        tls_opts = o;
        &tls_opts
    } else {
        opts
    };
    if opts.mode == Mode::Rtt && opts.uri.starts_with("amqps://") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "rtt over TLS is not supported",
        ));
    }
    match opts.mode {
        Mode::Run | Mode::Drain => bench::run(opts, out).await,
        Mode::Rtt => rtt::run(opts, out).await,
        Mode::Hold => hold::run(opts, out).await,
        Mode::Topology => topology::run(opts, out).await,
        Mode::Connect => connect::run(opts, out).await,
        Mode::Replay => replay::run(opts, out).await,
    }
}

/// Writes the human-readable summary.
pub fn write_summary(s: &Summary, out: &mut dyn Write) -> io::Result<()> {
    let l = &s.latency;
    writeln!(out, "--- summary ({}, {}) ---", s.uri, s.server)?;
    match s.mode {
        Mode::Hold => {
            writeln!(out, "held {} connections", s.connections)?;
            return Ok(());
        }
        Mode::Topology => return write_topology(s, out),
        Mode::Connect => {
            writeln!(
                out,
                "handshakes: {} in {:.1} s ({:.0}/s) over {} clients, {} failed; open p50 {} us, p95 {} us, p99 {} us, max {} us",
                s.handshakes, s.duration_s, s.handshake_rate, s.clients, s.handshake_errors,
                l.p50_us, l.p95_us, l.p99_us, l.max_us
            )?;
            return Ok(());
        }
        Mode::Replay => {
            let a = &s.attach;
            writeln!(
                out,
                "consumers {}, body {} B: received {} in {:.2} s ({:.0} msg/s, {:.2} MB/s), sequence numbers {} ..= {}",
                s.consumers, s.size, s.received_total, s.duration_s, s.receive_rate, s.receive_mb_s,
                s.first_seq, s.last_seq
            )?;
            writeln!(
                out,
                "basic.consume to first delivery: p50 {} us, max {} us, mean {:.1} us ({} consumers)",
                a.p50_us, a.max_us, a.mean_us, a.count
            )?;
            writeln!(
                out,
                "verification (per consumer): duplicates {}, out-of-order {}, missing {}, foreign {}",
                s.duplicates, s.out_of_order, s.missing, s.foreign
            )?;
        }
        Mode::Rtt => {
            writeln!(
                out,
                "round trips: {} in {:.1} s ({:.0}/s), rtt p50 {} us, p95 {} us, p99 {} us, max {} us, mean {:.1} us",
                l.count, s.duration_s, s.receive_rate, l.p50_us, l.p95_us, l.p99_us, l.max_us, l.mean_us
            )?;
        }
        Mode::Run | Mode::Drain => {
            writeln!(
                out,
                "producers {}, consumers {}, body {} B, {:.1} s",
                s.producers, s.consumers, s.size, s.duration_s
            )?;
            writeln!(
                out,
                "sent {} ({:.0} msg/s, {:.2} MB/s), confirmed {} ({:.0} msg/s), nacked {}",
                s.sent, s.send_rate, s.send_mb_s, s.confirmed, s.confirm_rate, s.nacked
            )?;
            writeln!(
                out,
                "received {} during run ({:.0} msg/s, {:.2} MB/s), {} in total after {:.1} s drain",
                s.received, s.receive_rate, s.receive_mb_s, s.received_total, s.drain_s
            )?;
            if s.mode == Mode::Drain {
                writeln!(
                    out,
                    "drained {} in {:.2} s ({:.0} msg/s)",
                    s.received_total - s.received,
                    s.drain_s,
                    s.drain_rate
                )?;
            }
            writeln!(
                out,
                "consumer latency p50 {} us, p95 {} us, p99 {} us, max {} us, mean {:.1} us ({} samples)",
                l.p50_us, l.p95_us, l.p99_us, l.max_us, l.mean_us, l.count
            )?;
            writeln!(
                out,
                "verification: duplicates {}, out-of-order {}, missing {}, foreign {}",
                s.duplicates, s.out_of_order, s.missing, s.foreign
            )?;
        }
    }
    writeln!(
        out,
        "client cpu {:.2} s ({:.2} us/msg)",
        s.client_cpu_s, s.client_cpu_us_per_msg
    )
}

fn write_topology(s: &Summary, out: &mut dyn Write) -> io::Result<()> {
    if s.await_attempts > 0 {
        return writeln!(
            out,
            "queue visible after {:.3} s ({} attempts)",
            s.await_s, s.await_attempts
        );
    }
    let l = &s.latency;
    let what = match s.bound {
        0 => "queues",
        b if b == s.declared => "queue+binding pairs",
        _ => "queues (with their bindings)",
    };
    writeln!(
        out,
        "clients {}: declared {} durable queues, bound {} (to {}), one at a time per client",
        s.clients,
        s.declared,
        s.bound,
        topology::BIND_EXCHANGE
    )?;
    writeln!(
        out,
        "declare phase {:.3} s: {:.0} {what}/s, {:.0} ops/s",
        s.declare_s, s.declare_rate, s.declare_ops_rate
    )?;
    let q: Vec<String> = s
        .declare_quarters_s
        .iter()
        .map(|q| format!("{q:.3}"))
        .collect();
    writeln!(
        out,
        "quarters of the declares: {} s (last/first {:.2}x)",
        q.join(" / "),
        s.last_to_first_quarter
    )?;
    let ratio = if s.first_window_s > 0.0 {
        s.last_window_s / s.first_window_s
    } else {
        0.0
    };
    writeln!(
        out,
        "first {} declares {:.3} s, last {} {:.3} s ({ratio:.2}x)",
        s.window, s.first_window_s, s.window, s.last_window_s
    )?;
    writeln!(
        out,
        "declare latency p50 {} us, p95 {} us, p99 {} us, max {} us, mean {:.1} us",
        l.p50_us, l.p95_us, l.p99_us, l.max_us, l.mean_us
    )?;
    if s.deleted > 0 {
        let d = &s.delete_latency;
        writeln!(
            out,
            "deleted {} in {:.3} s ({:.0}/s), latency p50 {} us, p99 {} us, max {} us",
            s.deleted, s.delete_s, s.delete_rate, d.p50_us, d.p99_us, d.max_us
        )?;
    } else {
        writeln!(out, "queues kept (--keep-queues)")?;
    }
    writeln!(
        out,
        "client cpu {:.2} s ({:.2} us/op)",
        s.client_cpu_s, s.client_cpu_us_per_msg
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_json_without_new_fields_parses() {
        let old = r#"{"mode":"run","uri":"u","server":"s","sent":5,"latency":{"count":1}}"#;
        let s: Summary = serde_json::from_str(old).expect("parses");
        assert_eq!((s.mode, s.sent, s.declared), (Mode::Run, 5, 0));
        assert!(s.declare_quarters_s.is_empty());
        let back = serde_json::to_string(&s).expect("serialises");
        let again: Summary = serde_json::from_str(&back).expect("round trip");
        assert_eq!(again.latency, s.latency);
    }

    #[test]
    fn queue_and_consumer_arguments_parse() {
        use warren_codec::proto::{AMQPValue, LongString};
        let o = Options::from_args([
            "warren-perf",
            "--queue-arg",
            "x-queue-type=stream",
            "--queue-arg",
            "x-max-length-bytes=1000",
            "--consumer-arg",
            "x-stream-offset=first",
            "--consumer-arg",
            "x-flag=true",
        ])
        .expect("parses");
        let q = field_table(&o.queue_args);
        assert_eq!(
            q.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString(LongString::from("stream")))
        );
        assert_eq!(
            q.inner().get("x-max-length-bytes"),
            Some(&AMQPValue::LongLongInt(1000))
        );
        let c = field_table(&o.consumer_args);
        assert_eq!(c.inner().get("x-flag"), Some(&AMQPValue::Boolean(true)));
        assert_eq!(
            c.inner().get("x-stream-offset"),
            Some(&AMQPValue::LongString(LongString::from("first")))
        );
    }

    #[test]
    fn topology_flags_parse() {
        let o = Options::from_args([
            "warren-perf",
            "topology",
            "--queues",
            "100",
            "--clients",
            "4",
            "--bind",
            "-u",
            "t",
        ])
        .expect("parses");
        assert_eq!(o.mode, Mode::Topology);
        assert_eq!(
            (o.queues, o.clients, o.bind, o.queue.as_str()),
            (100, 4, true, "t")
        );
        let mut text = Vec::new();
        write_summary(
            &Summary {
                mode: Mode::Topology,
                declare_quarters_s: vec![1.0; 4],
                ..Summary::default()
            },
            &mut text,
        )
        .expect("writes");
        assert!(String::from_utf8_lossy(&text).contains("quarters of the declares"));
    }
}
