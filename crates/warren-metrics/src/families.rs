//! Which families each endpoint serves, with rabbitmq_prometheus 3.10.8's names, types, HELP
//! texts and labels, filled from a [`Snapshot`].
//!
//! The three endpoints share the groups of `/metrics/detailed` (`queue_coarse_metrics`,
//! `channel_metrics`, ...): `/metrics` sums each per-object family into one unlabelled sample,
//! `/metrics/per-object` keeps one sample per object, `/metrics/detailed` serves the groups
//! asked for under the `rabbitmq_detailed_` prefix (and `rabbitmq_cluster_` for the vhost and
//! exchange groups), filtered by vhost.

use std::collections::HashSet;
use warren_core::queue::args::QueueKind;
use warren_core::stats::MessageTotals;

use crate::model::{Kind, Labels, MetricFamily};
use crate::snapshot::{ChannelRow, Snapshot};

/// How per-object families are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One unlabelled sample per family, the sum over objects (`/metrics`).
    Aggregated,
    /// One sample per object (`/metrics/per-object`, `/metrics/detailed`).
    PerObject,
}

/// The groups `/metrics/detailed?family=` accepts (RabbitMQ 3.10's names) that Warren serves.
pub const DETAILED_GROUPS: &[&str] = &[
    "connection_churn_metrics",
    "node_coarse_metrics",
    "node_metrics",
    "queue_coarse_metrics",
    "queue_metrics",
    "queue_consumer_count",
    "connection_coarse_metrics",
    "connection_metrics",
    "channel_metrics",
    "channel_exchange_metrics",
    "channel_queue_metrics",
    "channel_queue_exchange_metrics",
    "vhost_status",
    "exchange_names",
    "exchange_bindings",
];

/// What the detailed groups need read beyond the default snapshot.
pub fn needs_exchanges(groups: &[String]) -> bool {
    groups
        .iter()
        .any(|g| g == "exchange_names" || g == "exchange_bindings")
}

struct Out<'a> {
    scope: Scope,
    prefix: &'static str,
    vhosts: Option<&'a HashSet<String>>,
    fams: Vec<MetricFamily>,
}

impl Out<'_> {
    fn family(&mut self, name: &str, help: &'static str, kind: Kind) -> &mut MetricFamily {
        self.fams.push(MetricFamily::new(
            format!("{}{name}", self.prefix),
            help,
            kind,
        ));
        let i = self.fams.len() - 1;
        &mut self.fams[i]
    }

    /// A node-wide value (`None`: not measurable here, the family is declared without samples).
    fn one(&mut self, name: &str, help: &'static str, kind: Kind, v: Option<u64>) {
        let f = self.family(name, help, kind);
        if let Some(v) = v {
            f.samples.push((Vec::new(), clamp(v)));
        }
    }

    /// A per-object family: summed under [`Scope::Aggregated`], one sample per row otherwise.
    fn per<T>(
        &mut self,
        name: &str,
        help: &'static str,
        kind: Kind,
        rows: &[T],
        labels: impl Fn(&T) -> Labels,
        value: impl Fn(&T) -> u64,
    ) {
        let scope = self.scope;
        let f = self.family(name, help, kind);
        match scope {
            Scope::Aggregated => {
                let sum = rows.iter().map(&value).fold(0u64, u64::saturating_add);
                f.samples.push((Vec::new(), clamp(sum)));
            }
            Scope::PerObject => f
                .samples
                .extend(rows.iter().map(|r| (labels(r), clamp(value(r))))),
        }
    }

    fn keep(&self, vhost: &str) -> bool {
        self.vhosts.is_none_or(|v| v.contains(vhost))
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const C: Kind = Kind::Counter;
const G: Kind = Kind::Gauge;
const U: Kind = Kind::Untyped;

fn churn(o: &mut Out, s: &Snapshot) {
    let c = &s.churn;
    o.one(
        "connections_opened_total",
        "Total number of connections opened",
        C,
        Some(c.connections_opened),
    );
    o.one(
        "connections_closed_total",
        "Total number of connections closed or terminated",
        C,
        Some(c.connections_closed),
    );
    o.one(
        "channels_opened_total",
        "Total number of channels opened",
        C,
        Some(c.channels_opened),
    );
    o.one(
        "channels_closed_total",
        "Total number of channels closed",
        C,
        Some(c.channels_closed),
    );
    o.one(
        "queues_declared_total",
        "Total number of queues declared",
        C,
        Some(c.queues_declared),
    );
    o.one(
        "queues_created_total",
        "Total number of queues created",
        C,
        Some(c.queues_created),
    );
    o.one(
        "queues_deleted_total",
        "Total number of queues deleted",
        C,
        Some(c.queues_deleted),
    );
}

fn node_coarse(o: &mut Out, s: &Snapshot) {
    let n = &s.node;
    o.one("process_open_fds", "Open file descriptors", G, n.open_fds);
    o.one(
        "process_resident_memory_bytes",
        "Memory used in bytes",
        G,
        n.resident_memory_bytes,
    );
    o.one(
        "disk_space_available_bytes",
        "Disk space available in bytes",
        G,
        n.disk_free_bytes,
    );
}

fn node(o: &mut Out, s: &Snapshot) {
    let n = &s.node;
    o.one(
        "process_max_fds",
        "Open file descriptors limit",
        G,
        n.max_fds,
    );
    o.one(
        "resident_memory_limit_bytes",
        "Memory high watermark in bytes",
        G,
        n.memory_limit_bytes,
    );
    o.one(
        "disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes",
        G,
        Some(n.disk_free_limit_bytes),
    );
}

fn queue_labels(q: &crate::snapshot::QueueRow) -> Labels {
    vec![
        ("vhost", q.vhost.to_string()),
        ("queue", q.name.to_string()),
    ]
}

fn queues<'s>(o: &Out, s: &'s Snapshot) -> Vec<&'s crate::snapshot::QueueRow> {
    s.queues.iter().filter(|q| o.keep(&q.vhost)).collect()
}

fn queue_coarse(o: &mut Out, s: &Snapshot) {
    let qs = queues(o, s);
    o.per(
        "queue_messages_ready",
        "Messages ready to be delivered to consumers",
        G,
        &qs,
        |q| queue_labels(q),
        |q| q.ready,
    );
    o.per(
        "queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        G,
        &qs,
        |q| queue_labels(q),
        |q| q.unacked,
    );
    o.per(
        "queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        G,
        &qs,
        |q| queue_labels(q),
        |q| q.ready + q.unacked,
    );
}

fn queue_consumers(o: &mut Out, s: &Snapshot) {
    let qs = queues(o, s);
    o.per(
        "queue_consumers",
        "Consumers on a queue",
        G,
        &qs,
        |q| queue_labels(q),
        |q| q.consumers,
    );
}

fn queue_metrics(o: &mut Out, s: &Snapshot) {
    queue_consumers(o, s);
    let qs = queues(o, s);
    o.per(
        "queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        G,
        &qs,
        |q| queue_labels(q),
        |q| q.ready_bytes,
    );
}

fn queue_published(o: &mut Out, s: &Snapshot) {
    let qs = queues(o, s);
    o.per(
        "queue_messages_published_total",
        "Total number of messages published to queues",
        C,
        &qs,
        |q| queue_labels(q),
        |q| q.stats.publish,
    );
}

fn conn_labels(c: &crate::snapshot::ConnectionRow) -> Labels {
    vec![("channel", c.label.clone())]
}

fn connection_coarse(o: &mut Out, s: &Snapshot) {
    let cs = &s.connections;
    o.per(
        "connection_incoming_bytes_total",
        "Total number of bytes received on a connection",
        C,
        cs,
        conn_labels,
        |c| c.recv_oct,
    );
    o.per(
        "connection_outgoing_bytes_total",
        "Total number of bytes sent on a connection",
        C,
        cs,
        conn_labels,
        |c| c.send_oct,
    );
}

fn connection_metrics(o: &mut Out, s: &Snapshot) {
    let cs = &s.connections;
    o.per(
        "connection_incoming_packets_total",
        "Total number of packets received on a connection",
        C,
        cs,
        conn_labels,
        |c| c.recv_cnt,
    );
    o.per(
        "connection_outgoing_packets_total",
        "Total number of packets sent on a connection",
        C,
        cs,
        conn_labels,
        |c| c.send_cnt,
    );
    o.per(
        "connection_channels",
        "Channels on a connection",
        G,
        cs,
        conn_labels,
        |c| c.channels,
    );
}

fn chan_labels(c: &ChannelRow) -> Labels {
    vec![("channel", c.label.clone())]
}

fn chan_vhost_labels(c: &ChannelRow) -> Labels {
    vec![("channel", c.label.clone()), ("vhost", c.vhost.clone())]
}

fn channels<'s>(o: &Out, s: &'s Snapshot) -> Vec<&'s ChannelRow> {
    s.channels.iter().filter(|c| o.keep(&c.vhost)).collect()
}

fn channel_metrics(o: &mut Out, s: &Snapshot) {
    let cs = &channels(o, s);
    let chan_labels = |c: &&ChannelRow| chan_labels(c);
    o.per(
        "channel_consumers",
        "Consumers on a channel",
        G,
        cs,
        chan_labels,
        |c| c.consumers,
    );
    o.per(
        "channel_messages_unacked",
        "Delivered but not yet acknowledged messages",
        G,
        cs,
        chan_labels,
        |c| c.unacked,
    );
    o.per(
        "channel_messages_unconfirmed",
        "Published but not yet confirmed messages",
        G,
        cs,
        chan_labels,
        |c| c.unconfirmed,
    );
    o.per(
        "consumer_prefetch",
        "Limit of unacknowledged messages for each consumer",
        G,
        cs,
        chan_labels,
        |c| c.prefetch,
    );
    o.per(
        "channel_prefetch",
        "Total limit of unacknowledged messages for all consumers on a channel",
        G,
        cs,
        chan_labels,
        |c| c.global_prefetch,
    );
}

fn channel_exchange(o: &mut Out, s: &Snapshot) {
    let cs = channels(o, s);
    let l = |c: &&ChannelRow| chan_vhost_labels(c);
    o.per(
        "channel_messages_published_total",
        "Total number of messages published into an exchange on a channel",
        C,
        &cs,
        l,
        |c| c.totals.publish,
    );
    o.per(
        "channel_messages_confirmed_total",
        "Total number of messages published into an exchange and confirmed on the channel",
        C,
        &cs,
        l,
        |c| c.totals.confirm,
    );
    o.per("channel_messages_unroutable_returned_total", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", C, &cs, l, |c| c.totals.return_unroutable);
    o.per("channel_messages_unroutable_dropped_total", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", C, &cs, l, |c| c.totals.drop_unroutable);
}

fn channel_queue(o: &mut Out, s: &Snapshot) {
    let cs = channels(o, s);
    let l = |c: &&ChannelRow| chan_vhost_labels(c);
    o.per(
        "channel_get_ack_total",
        "Total number of messages fetched with basic.get in manual acknowledgement mode",
        C,
        &cs,
        l,
        |c| c.totals.get,
    );
    o.per(
        "channel_get_total",
        "Total number of messages fetched with basic.get in automatic acknowledgement mode",
        C,
        &cs,
        l,
        |c| c.totals.get_no_ack,
    );
    o.per(
        "channel_messages_delivered_ack_total",
        "Total number of messages delivered to consumers in manual acknowledgement mode",
        C,
        &cs,
        l,
        |c| c.totals.deliver,
    );
    o.per(
        "channel_messages_delivered_total",
        "Total number of messages delivered to consumers in automatic acknowledgement mode",
        C,
        &cs,
        l,
        |c| c.totals.deliver_no_ack,
    );
    o.per(
        "channel_messages_redelivered_total",
        "Total number of messages redelivered to consumers",
        C,
        &cs,
        l,
        |c| c.totals.redeliver,
    );
    o.per(
        "channel_messages_acked_total",
        "Total number of messages acknowledged by consumers",
        C,
        &cs,
        l,
        |c| c.totals.ack,
    );
    o.per(
        "channel_get_empty_total",
        "Total number of times basic.get operations fetched no message",
        C,
        &cs,
        l,
        |c| c.totals.get_empty,
    );
}

fn vhost_status(o: &mut Out, s: &Snapshot) {
    let vs: Vec<&String> = s.vhosts.iter().filter(|v| o.keep(v)).collect();
    let f = o.family("vhost_status", "Whether a given vhost is running", G);
    f.samples
        .extend(vs.into_iter().map(|v| (vec![("vhost", v.clone())], 1)));
}

fn exchanges(o: &mut Out, s: &Snapshot, bindings: bool) {
    let es: Vec<_> = s.exchanges.iter().filter(|e| o.keep(&e.vhost)).collect();
    let f = if bindings {
        o.family(
            "exchange_bindings",
            "Number of bindings for an exchange. This value is cluster-wide.",
            G,
        )
    } else {
        o.family("exchange_name", "Enumerates exchanges without any additional info. This value is cluster-wide. A cheaper alternative to `exchange_bindings`", G)
    };
    f.samples.extend(es.into_iter().map(|e| {
        let labels = vec![
            ("vhost", e.vhost.clone()),
            ("exchange", e.name.to_string()),
            ("type", e.kind.to_string()),
        ];
        (labels, if bindings { clamp(e.bindings) } else { 1 })
    }));
}

fn alarms(o: &mut Out, s: &Snapshot) {
    o.one(
        "alarms_free_disk_space_watermark",
        "is 1 if free disk space watermark alarm is in effect",
        U,
        Some(u64::from(s.node.disk_alarm)),
    );
    o.one(
        "alarms_memory_used_watermark",
        "is 1 if VM memory watermark alarm is in effect",
        U,
        Some(u64::from(s.node.memory_alarm)),
    );
}

fn overview(o: &mut Out, s: &Snapshot) {
    let consumers: u64 = s.queues.iter().map(|q| q.consumers).sum();
    o.one(
        "connections",
        "Connections currently open",
        G,
        Some(s.connections.len() as u64),
    );
    o.one(
        "channels",
        "Channels currently open",
        G,
        Some(s.channels.len() as u64),
    );
    o.one(
        "consumers",
        "Consumers currently connected",
        G,
        Some(consumers),
    );
    o.one("queues", "Queues available", G, Some(s.queues.len() as u64));
}

/// `rabbitmq_build_info` and `rabbitmq_identity_info` (served by every endpoint).
fn identity(fams: &mut Vec<MetricFamily>, version: &str) {
    let mut b = MetricFamily::new(
        "rabbitmq_build_info".into(),
        "RabbitMQ & Erlang/OTP version info",
        U,
    );
    b.samples.push((
        vec![
            ("rabbitmq_version", version.to_string()),
            ("prometheus_plugin_version", version.to_string()),
            (
                "prometheus_client_version",
                "prometheus-client-rs-0.23".to_string(),
            ),
            ("erlang_version", "none".to_string()),
            ("warren_version", env!("CARGO_PKG_VERSION").to_string()),
        ],
        1,
    ));
    fams.push(b);
    let mut i = MetricFamily::new(
        "rabbitmq_identity_info".into(),
        "RabbitMQ node & cluster identity info",
        U,
    );
    i.samples.push((
        vec![
            ("rabbitmq_node", "warren@localhost".to_string()),
            ("rabbitmq_cluster", "warren".to_string()),
            (
                "rabbitmq_cluster_permanent_id",
                "rabbitmq-cluster-id-warren".to_string(),
            ),
        ],
        1,
    ));
    fams.push(i);
}

/// Counters of queues of `kind` (live queues only); the classic share is the broker total less
/// the other types, so the three series add up to the broker-wide counter.
fn by_queue_type(s: &Snapshot) -> [(&'static str, MessageTotals); 3] {
    let mut quorum = MessageTotals::default();
    let mut stream = MessageTotals::default();
    for q in &s.queues {
        match q.kind {
            QueueKind::Quorum => quorum.add(&q.stats),
            QueueKind::Stream => stream.add(&q.stats),
            QueueKind::Classic => {}
        }
    }
    let t = &s.totals;
    let sub =
        |f: fn(&MessageTotals) -> u64| f(t).saturating_sub(f(&quorum)).saturating_sub(f(&stream));
    let classic = MessageTotals {
        deliver: sub(|m| m.deliver),
        deliver_no_ack: sub(|m| m.deliver_no_ack),
        get: sub(|m| m.get),
        get_no_ack: sub(|m| m.get_no_ack),
        get_empty: sub(|m| m.get_empty),
        ack: sub(|m| m.ack),
        redeliver: sub(|m| m.redeliver),
        ..MessageTotals::default()
    };
    [
        ("rabbit_classic_queue", classic),
        ("rabbit_quorum_queue", quorum),
        ("rabbit_stream_queue", stream),
    ]
}

/// Reads one counter of a [`MessageTotals`].
type Field = fn(&MessageTotals) -> u64;

fn global(fams: &mut Vec<MetricFamily>, s: &Snapshot) {
    let proto = || ("protocol", "amqp091".to_string());
    let t = &s.totals;
    let mut plain = |name: &str, help: &'static str, kind: Kind, v: u64| {
        let mut f = MetricFamily::new(format!("rabbitmq_global_{name}"), help, kind);
        f.samples.push((vec![proto()], clamp(v)));
        fams.push(f);
    };
    let consumers: u64 = s.queues.iter().map(|q| q.consumers).sum();
    plain("consumers", "Current number of consumers", G, consumers);
    plain(
        "messages_confirmed_total",
        "Total number of messages confirmed to publishers",
        C,
        t.confirm,
    );
    plain(
        "messages_received_total",
        "Total number of messages received from publishers",
        C,
        t.publish,
    );
    let routed = t
        .publish
        .saturating_sub(t.drop_unroutable)
        .saturating_sub(t.return_unroutable);
    plain(
        "messages_routed_total",
        "Total number of messages routed to queues or streams",
        C,
        routed,
    );
    plain("messages_unroutable_dropped_total", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", C, t.drop_unroutable);
    plain("messages_unroutable_returned_total", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", C, t.return_unroutable);
    let split = by_queue_type(s);
    let typed: [(&str, &'static str, Field); 8] = [
        ("messages_acknowledged_total", "Total number of messages acknowledged by consumers", |m| m.ack),
        ("messages_delivered_consume_auto_ack_total", "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment", |m| m.deliver_no_ack),
        ("messages_delivered_consume_manual_ack_total", "Total number of messages delivered to consumers using basic.consume with manual acknowledgment", |m| m.deliver),
        ("messages_delivered_get_auto_ack_total", "Total number of messages delivered to consumers using basic.get with automatic acknowledgment", |m| m.get_no_ack),
        ("messages_delivered_get_manual_ack_total", "Total number of messages delivered to consumers using basic.get with manual acknowledgment", |m| m.get),
        ("messages_delivered_total", "Total number of messages delivered to consumers", |m| m.deliver_get()),
        ("messages_get_empty_total", "Total number of times basic.get operations fetched no message", |m| m.get_empty),
        ("messages_redelivered_total", "Total number of messages redelivered to consumers", |m| m.redeliver),
    ];
    for (name, help, value) in typed {
        let mut f = MetricFamily::new(format!("rabbitmq_global_{name}"), help, C);
        for (qt, m) in &split {
            f.samples.push((
                vec![proto(), ("queue_type", qt.to_string())],
                clamp(value(m)),
            ));
        }
        fams.push(f);
    }
}

/// The families of `/metrics` (`Scope::Aggregated`) or `/metrics/per-object`.
pub fn standard(s: &Snapshot, scope: Scope, version: &str) -> Vec<MetricFamily> {
    let mut o = Out {
        scope,
        prefix: "rabbitmq_",
        vhosts: None,
        fams: Vec::new(),
    };
    // RabbitMQ 3.10.8 serves the alarm families on `/metrics` only.
    if scope == Scope::Aggregated {
        alarms(&mut o, s);
    }
    churn(&mut o, s);
    node_coarse(&mut o, s);
    node(&mut o, s);
    queue_coarse(&mut o, s);
    queue_metrics(&mut o, s);
    channel_metrics(&mut o, s);
    channel_exchange(&mut o, s);
    channel_queue(&mut o, s);
    connection_coarse(&mut o, s);
    connection_metrics(&mut o, s);
    queue_published(&mut o, s);
    overview(&mut o, s);
    let mut fams = o.fams;
    identity(&mut fams, version);
    global(&mut fams, s);
    fams.extend(warren_own(s, scope));
    fams
}

/// Families RabbitMQ has no counterpart for, under Warren's own prefix: the messages held by
/// delayed-message exchanges (the plugin shows them only as an exchange info item) and the
/// size, segments and offsets of streams.
fn warren_own(s: &Snapshot, scope: Scope) -> Vec<MetricFamily> {
    let mut o = Out {
        scope,
        prefix: "warren_",
        vhosts: None,
        fams: Vec::new(),
    };
    o.per(
        "exchange_messages_delayed",
        "Messages held by a delayed-message exchange until their x-delay is up",
        G,
        &s.delayed,
        |d| vec![("vhost", d.vhost.clone()), ("exchange", d.name.to_string())],
        |d| d.messages,
    );
    let streams: Vec<_> = s
        .queues
        .iter()
        .filter_map(|q| q.stream.as_ref().map(|l| (q, l)))
        .collect();
    let labels = |(q, _): &(&crate::snapshot::QueueRow, _)| queue_labels(q);
    o.per(
        "stream_segments",
        "Segment files of a stream",
        G,
        &streams,
        labels,
        |(_, l)| l.segments as u64,
    );
    o.per(
        "stream_bytes",
        "Bytes a stream keeps on disk (or in memory)",
        G,
        &streams,
        labels,
        |(_, l)| l.bytes,
    );
    // Offsets do not add up across streams: per object only.
    if scope == Scope::PerObject {
        o.per(
            "stream_first_offset",
            "Offset of the oldest message still in a stream",
            G,
            &streams,
            labels,
            |(_, l)| l.first_offset,
        );
        o.per(
            "stream_next_offset",
            "Offset the next message published to a stream will get",
            G,
            &streams,
            labels,
            |(_, l)| l.next_offset,
        );
    }
    o.fams
}

/// The families of `/metrics/detailed` for `groups` (unknown names are ignored, as RabbitMQ
/// does), restricted to `vhosts` when given.
pub fn detailed(
    s: &Snapshot,
    groups: &[String],
    vhosts: Option<&HashSet<String>>,
    version: &str,
) -> Vec<MetricFamily> {
    let mut o = Out {
        scope: Scope::PerObject,
        prefix: "rabbitmq_detailed_",
        vhosts,
        fams: Vec::new(),
    };
    // RabbitMQ answers in its own group order, each group once.
    for g in DETAILED_GROUPS {
        if !groups.iter().any(|x| x == g) {
            continue;
        }
        match *g {
            "connection_churn_metrics" => churn(&mut o, s),
            "node_coarse_metrics" => node_coarse(&mut o, s),
            "node_metrics" => node(&mut o, s),
            "queue_coarse_metrics" => queue_coarse(&mut o, s),
            "queue_metrics" => queue_metrics(&mut o, s),
            // `queue_metrics` already has `queue_consumers`.
            "queue_consumer_count" if !groups.iter().any(|x| x == "queue_metrics") => {
                queue_consumers(&mut o, s)
            }
            "connection_coarse_metrics" => connection_coarse(&mut o, s),
            "connection_metrics" => connection_metrics(&mut o, s),
            "channel_metrics" => channel_metrics(&mut o, s),
            "channel_exchange_metrics" => channel_exchange(&mut o, s),
            "channel_queue_metrics" => channel_queue(&mut o, s),
            "channel_queue_exchange_metrics" => queue_published(&mut o, s),
            "vhost_status" | "exchange_names" | "exchange_bindings" => {
                o.prefix = "rabbitmq_cluster_";
                match *g {
                    "vhost_status" => vhost_status(&mut o, s),
                    "exchange_names" => exchanges(&mut o, s, false),
                    _ => exchanges(&mut o, s, true),
                }
                o.prefix = "rabbitmq_detailed_";
            }
            _ => {}
        }
    }
    let mut fams = o.fams;
    identity(&mut fams, version);
    fams
}
