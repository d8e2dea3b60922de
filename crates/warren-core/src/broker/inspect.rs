//! What the management API and metrics see of open connections and channels, and the broker's
//! message totals.
//!
//! A connection publishes a [`ConnInfo`] when it opens (`connection.open`); its task keeps the
//! counters in it (one writer each, relaxed atomics) and registers a [`ChannelInfo`] per open
//! channel. Readers copy what they need; nothing here is on a lock the hot path takes.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use warren_codec::proto::FieldTable;

use super::Broker;
use crate::stats::{Counter, MessageStats, MessageTotals};

/// Bytes and frames a connection moved.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Bytes received.
    pub recv_oct: Counter,
    /// Socket reads that returned data (RabbitMQ's `recv_cnt` counts packets).
    pub recv_cnt: Counter,
    /// Bytes sent.
    pub send_oct: Counter,
    /// Socket writes.
    pub send_cnt: Counter,
}

/// An open connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// Broker-wide id.
    pub id: u64,
    /// RabbitMQ's name: `"<peer> -> <local>"`.
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The broker's address of the connection, when the transport knows it.
    pub local: Option<SocketAddr>,
    /// Authenticated user.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// `client_properties` of `start-ok`.
    pub client_properties: FieldTable,
    /// The SASL mechanism used.
    pub auth_mechanism: String,
    /// Over TLS.
    pub tls: bool,
    /// When it opened (ms since the Unix epoch).
    pub connected_at: u64,
    /// Negotiated `frame_max`.
    pub frame_max: u32,
    /// Negotiated `channel_max`.
    pub channel_max: u16,
    /// Negotiated heartbeat (s).
    pub heartbeat: u16,
    /// Bytes and frames.
    pub io: Arc<IoStats>,
    /// Blocked by a resource alarm (`connection.blocked` sent or publishes held).
    pub blocked: AtomicBool,
    channels: Mutex<Vec<Arc<ChannelInfo>>>,
}

impl ConnInfo {
    /// A connection's description (counters at zero, no channels).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        user: String,
        vhost: String,
        client_properties: FieldTable,
        auth_mechanism: String,
        tls: bool,
        connected_at: u64,
        tuned: (u32, u16, u16),
        io: Arc<IoStats>,
    ) -> Self {
        let name = match local {
            Some(l) => format!("{peer} -> {l}"),
            None => format!("{peer}"),
        };
        Self {
            id,
            name,
            peer,
            local,
            user,
            vhost,
            client_properties,
            auth_mechanism,
            tls,
            connected_at,
            frame_max: tuned.0,
            channel_max: tuned.1,
            heartbeat: tuned.2,
            io,
            blocked: AtomicBool::new(false),
            channels: Mutex::new(Vec::new()),
        }
    }

    /// Its open channels, by number.
    pub fn channels(&self) -> Vec<Arc<ChannelInfo>> {
        let mut v = self.channels.lock().clone();
        v.sort_by_key(|c| c.number);
        v
    }

    pub(crate) fn add_channel(&self, ch: Arc<ChannelInfo>) {
        self.channels.lock().push(ch);
    }

    pub(crate) fn remove_channel(&self, number: u16) -> Option<Arc<ChannelInfo>> {
        let mut v = self.channels.lock();
        let i = v.iter().position(|c| c.number == number)?;
        Some(v.swap_remove(i))
    }

    /// What its channels counted so far.
    pub fn message_totals(&self) -> MessageTotals {
        let mut t = MessageTotals::default();
        for c in self.channels.lock().iter() {
            t.add(&c.stats.totals());
        }
        t
    }
}

/// An open channel.
#[derive(Debug, Default)]
pub struct ChannelInfo {
    /// Channel number.
    pub number: u16,
    /// Its message counters (`publish`, `confirm`, `deliver`, `get`, `ack`, ...).
    pub stats: MessageStats,
    /// `basic.qos` prefetch per consumer.
    pub prefetch_count: AtomicU32,
    /// `basic.qos global=true` prefetch.
    pub global_prefetch_count: AtomicU32,
    /// In confirm mode.
    pub confirm: AtomicBool,
    /// In transaction mode.
    pub transactional: AtomicBool,
    /// Deliveries not yet acknowledged.
    pub messages_unacknowledged: AtomicU64,
    /// Publishes not yet confirmed.
    pub messages_unconfirmed: AtomicU64,
    /// Consumers on the channel.
    pub consumer_count: AtomicU32,
}

impl ChannelInfo {
    /// A new channel's description.
    pub(crate) fn new(number: u16) -> Self {
        Self {
            number,
            ..Self::default()
        }
    }
    /// Sets a gauge (the channel's own task is the only writer).
    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}

impl Broker {
    /// Every open connection (in no particular order).
    pub fn connections(&self) -> Vec<Arc<ConnInfo>> {
        self.conns
            .inner
            .lock()
            .values()
            .filter_map(|e| e.info.clone())
            .collect()
    }

    /// Closes the connection named `name` with `320 CONNECTION_FORCED - {reason}` (the HTTP
    /// API's `DELETE /api/connections/{name}`); false if there is none.
    pub fn close_connection(&self, name: &str, reason: &str) -> bool {
        let control = self
            .conns
            .inner
            .lock()
            .values()
            .find(|e| e.info.as_ref().is_some_and(|i| i.name == name))
            .map(|e| e.control.clone());
        match control {
            Some(c) => {
                c.force_close(reason.to_string());
                true
            }
            None => false,
        }
    }

    /// Message counters of `vhost`'s channels, open and closed (`None`: no such vhost).
    pub fn vhost_message_totals(&self, vhost: &str) -> Option<MessageTotals> {
        let vh = self.vhost(vhost)?;
        let mut t = vh.retired_totals();
        for c in self.connections() {
            if c.vhost == vhost {
                t.add(&c.message_totals());
            }
        }
        Some(t)
    }

    /// Message counters of every channel since the broker started (monotonic).
    pub fn message_totals(&self) -> MessageTotals {
        let mut t = *self.retired.lock();
        for name in self.vhost_names() {
            if let Some(vh) = self.vhost(&name) {
                t.add(&vh.retired_totals());
            }
        }
        for c in self.connections() {
            t.add(&c.message_totals());
        }
        t
    }
}
