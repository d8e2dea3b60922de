//! Message counters per queue, exchange, channel, vhost and broker, read by the management
//! API and the metrics endpoint.
//!
//! Each counter is a relaxed atomic that, on the hot path, is written by the one owner that
//! already holds the object (a channel's counters by its connection task; a queue's inside its
//! own operations), so counting costs an uncontended add. Totals over many objects are summed
//! at read time; what a closed channel or deleted queue counted is folded into its vhost's
//! `retired` totals so that broker-wide counters never go backwards.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! message_stats {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// The message counters RabbitMQ reports as `message_stats` (which of them an object
        /// uses depends on its kind: an exchange counts `publish_in`/`publish_out`, a queue
        /// `publish`, `deliver`, `get`, `ack`, ...).
        #[derive(Debug, Default)]
        pub struct MessageStats {
            $($(#[$doc])* pub $field: Counter,)*
        }

        /// A reading of [`MessageStats`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct MessageTotals {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl MessageStats {
            /// Reads every counter.
            pub fn totals(&self) -> MessageTotals {
                MessageTotals { $($field: self.$field.get(),)* }
            }
        }

        impl MessageTotals {
            /// Adds `other` field by field.
            pub fn add(&mut self, other: &MessageTotals) {
                $(self.$field += other.$field;)*
            }
            /// Every field with its RabbitMQ name (for JSON and metrics).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

message_stats! {
    /// Messages published (by a channel; into a queue).
    publish,
    /// Messages published into an exchange.
    publish_in,
    /// Messages an exchange routed to at least one queue.
    publish_out,
    /// Publishes confirmed to the publisher.
    confirm,
    /// Deliveries to consumers that acknowledge.
    deliver,
    /// Deliveries to no-ack consumers.
    deliver_no_ack,
    /// `basic.get` answered with a message, acknowledgement required.
    get,
    /// `basic.get` answered with a message, no-ack.
    get_no_ack,
    /// `basic.get` answered with get-empty.
    get_empty,
    /// Messages acknowledged.
    ack,
    /// Deliveries (and gets) of redelivered messages.
    redeliver,
    /// Mandatory messages returned unroutable.
    return_unroutable,
    /// Messages dropped as unroutable.
    drop_unroutable,
}

impl MessageTotals {
    /// `deliver + deliver_no_ack + get + get_no_ack` (RabbitMQ's `deliver_get`).
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }
}

/// Objects opened and closed since the broker started (Prometheus' `*_opened_total`...).
#[derive(Debug, Default)]
pub struct Churn {
    /// Connections opened.
    pub connections_opened: Counter,
    /// Connections closed.
    pub connections_closed: Counter,
    /// Channels opened.
    pub channels_opened: Counter,
    /// Channels closed.
    pub channels_closed: Counter,
    /// Queues declared (including redeclarations).
    pub queues_declared: Counter,
    /// Queues created.
    pub queues_created: Counter,
    /// Queues deleted.
    pub queues_deleted: Counter,
}
