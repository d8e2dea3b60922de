//! One reading of everything a scrape reports, copied out of the broker's views.
//!
//! The views are atomics and short `parking_lot` locks (no lock is held across an await, and
//! the scrape runs on a blocking thread), so reading 10,000 queues costs a few milliseconds and
//! never waits on the hot path.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use warren_core::queue::args::QueueKind;
use warren_core::stats::MessageTotals;
use warren_core::Broker;

use crate::process::{self, NodeStats};

/// A queue's gauges and counters.
#[derive(Debug, Clone)]
pub struct QueueRow {
    /// Vhost.
    pub vhost: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// Type.
    pub kind: QueueKind,
    /// Ready messages.
    pub ready: u64,
    /// Delivered, not yet settled.
    pub unacked: u64,
    /// Consumers.
    pub consumers: u64,
    /// Body bytes of the ready messages.
    pub ready_bytes: u64,
    /// The queue's own counters (`publish`, `deliver`, `get`, `ack`...).
    pub stats: MessageTotals,
    /// A stream's log (size, segments, offsets); `None` for other types.
    pub stream: Option<warren_core::store::stream::LogStats>,
}

/// A channel's gauges and counters.
#[derive(Debug, Clone)]
pub struct ChannelRow {
    /// The `channel` label (the pid-like id events use: `<warren@localhost.{connection}.{channel}.0>`).
    pub label: String,
    /// Its connection's vhost.
    pub vhost: String,
    /// Consumers.
    pub consumers: u64,
    /// Deliveries not yet acknowledged.
    pub unacked: u64,
    /// Publishes not yet confirmed.
    pub unconfirmed: u64,
    /// `basic.qos` per-consumer prefetch.
    pub prefetch: u64,
    /// `basic.qos global` prefetch.
    pub global_prefetch: u64,
    /// Counters.
    pub totals: MessageTotals,
}

/// A connection's counters.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    /// The `channel` label RabbitMQ uses for connection metrics (`<warren@localhost.{id}.0.0>`, as events name a connection).
    pub label: String,
    /// Bytes received.
    pub recv_oct: u64,
    /// Bytes sent.
    pub send_oct: u64,
    /// Socket reads.
    pub recv_cnt: u64,
    /// Socket writes.
    pub send_cnt: u64,
    /// Open channels.
    pub channels: u64,
}

/// An exchange and its binding count.
#[derive(Debug, Clone)]
pub struct ExchangeRow {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: Arc<str>,
    /// Type (`direct`, `topic`...).
    pub kind: &'static str,
    /// Bindings with it as the source.
    pub bindings: u64,
}

/// Churn counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChurnRow {
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// Channels opened.
    pub channels_opened: u64,
    /// Channels closed.
    pub channels_closed: u64,
    /// Queues declared.
    pub queues_declared: u64,
    /// Queues created.
    pub queues_created: u64,
    /// Queues deleted.
    pub queues_deleted: u64,
}

/// A delayed-message exchange (`x-delayed-message`) and the messages it holds.
#[derive(Debug, Clone)]
pub struct DelayedRow {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: Arc<str>,
    /// Messages waiting for their delay.
    pub messages: u64,
}

/// What one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Vhost names.
    pub vhosts: Vec<String>,
    /// Queues.
    pub queues: Vec<QueueRow>,
    /// Channels.
    pub channels: Vec<ChannelRow>,
    /// Connections.
    pub connections: Vec<ConnectionRow>,
    /// Exchanges (read only when a family needs them).
    pub exchanges: Vec<ExchangeRow>,
    /// Delayed-message exchanges and how many messages each holds (always read).
    pub delayed: Vec<DelayedRow>,
    /// Broker-wide channel counters (monotonic).
    pub totals: MessageTotals,
    /// Churn.
    pub churn: ChurnRow,
    /// Node resources.
    pub node: NodeStats,
}

/// What to read (exchanges and bindings are only read for the detailed families that need
/// them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// Exchanges and their bindings.
    pub exchanges: bool,
}

/// Reads the broker (blocking: `/proc` and `statvfs`; call off the event loop).
pub fn take(broker: &Broker, want: Want) -> Snapshot {
    let vhosts = broker.vhost_names();
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut delayed = Vec::new();
    for name in &vhosts {
        let Some(vh) = broker.vhost(name) else {
            continue;
        };
        for q in vh.queues() {
            let info = q.info();
            queues.push(QueueRow {
                vhost: info.vhost.clone(),
                name: info.name.clone(),
                kind: info.args.kind,
                ready: u64::from(q.message_count()),
                unacked: q.unacked_count(),
                consumers: u64::from(q.consumer_count()),
                ready_bytes: q.ready_bytes(),
                stats: info.stats.totals(),
                stream: q.stream_stats().map(|st| st.log),
            });
        }
        let bindings: HashMap<Arc<str>, u64> = if want.exchanges {
            let mut n: HashMap<Arc<str>, u64> = HashMap::new();
            for b in vh.bindings() {
                *n.entry(b.source.clone()).or_default() += 1;
            }
            n
        } else {
            HashMap::new()
        };
        // One pass: delayed counts always, the exchange rows when a family needs them.
        for e in vh.exchanges() {
            if let Some(n) = e.delayed {
                delayed.push(DelayedRow {
                    vhost: name.clone(),
                    name: e.name.clone(),
                    messages: n as u64,
                });
            }
            if want.exchanges {
                exchanges.push(ExchangeRow {
                    vhost: name.clone(),
                    bindings: bindings.get(&e.name).copied().unwrap_or(0),
                    name: e.name,
                    kind: e.kind,
                });
            }
        }
    }
    let mut channels = Vec::new();
    let mut connections = Vec::new();
    for c in broker.connections() {
        let chans = c.channels();
        connections.push(ConnectionRow {
            label: format!("<warren@localhost.{}.0.0>", c.id),
            recv_oct: c.io.recv_oct.get(),
            send_oct: c.io.send_oct.get(),
            recv_cnt: c.io.recv_cnt.get(),
            send_cnt: c.io.send_cnt.get(),
            channels: chans.len() as u64,
        });
        for ch in chans {
            channels.push(ChannelRow {
                label: warren_core::vhost::channel_pid(c.id, ch.number),
                vhost: c.vhost.clone(),
                consumers: u64::from(ch.consumer_count.load(Ordering::Relaxed)),
                unacked: ch.messages_unacknowledged.load(Ordering::Relaxed),
                unconfirmed: ch.messages_unconfirmed.load(Ordering::Relaxed),
                prefetch: u64::from(ch.prefetch_count.load(Ordering::Relaxed)),
                global_prefetch: u64::from(ch.global_prefetch_count.load(Ordering::Relaxed)),
                totals: ch.stats.totals(),
            });
        }
    }
    let ch = &broker.churn;
    Snapshot {
        vhosts,
        queues,
        channels,
        connections,
        exchanges,
        delayed,
        totals: broker.message_totals(),
        churn: ChurnRow {
            connections_opened: ch.connections_opened.get(),
            connections_closed: ch.connections_closed.get(),
            channels_opened: ch.channels_opened.get(),
            channels_closed: ch.channels_closed.get(),
            queues_declared: ch.queues_declared.get(),
            queues_created: ch.queues_created.get(),
            queues_deleted: ch.queues_deleted.get(),
        },
        node: process::measure(broker),
    }
}
