//! What the rest of the broker may tell a connection, and the connection's side of the
//! interfaces the lower layers own: [`queue::Sink`](crate::queue::Sink) (deliveries, consumer
//! cancellations, wake-ups) and [`SyncWaiter`] (sync rounds). Everything arrives as a
//! [`ConnEvent`] on the connection task's event channel; nothing outside this module sees
//! that channel or the connection's [`Flow`].

use std::sync::Arc;
use tokio::sync::mpsc;

use super::flow::Flow;
use crate::error::AmqpResult;
use crate::queue::{Delivery, Sink};
use crate::store::sync::SyncWaiter;
use crate::vhost::Applied;

/// Something another part of the broker tells a connection.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A queue delivers a message to one of this connection's consumers.
    Deliver(Delivery),
    /// A sync round completed: persistent messages may be confirmable now.
    Synced,
    /// A queue was deleted under one of this connection's consumers.
    ConsumerCancelled {
        /// Channel of the consumer.
        channel: u16,
        /// Its tag.
        tag: Arc<str>,
    },
    /// A metadata command of `channel` was applied (or refused) after the log made it durable.
    Applied {
        /// The channel waiting for it.
        channel: u16,
        /// What it did.
        result: AmqpResult<Applied>,
    },
    /// What `channel` waits for on a queue happened (see [`Sink::wake`]).
    Wake {
        /// The channel.
        channel: u16,
    },
    /// The broker closes the connection (its vhost or user was deleted): 320 with this text.
    ForceClose(String),
}

/// A connection as the queues and the syncer see it.
#[derive(Debug)]
pub(crate) struct ConnSink {
    events: mpsc::UnboundedSender<ConnEvent>,
    flow: Arc<Flow>,
}

impl crate::broker::ConnControl for ConnSink {
    fn force_close(&self, explanation: String) {
        self.send(ConnEvent::ForceClose(explanation));
    }
}

impl ConnSink {
    pub fn new(events: mpsc::UnboundedSender<ConnEvent>, flow: Arc<Flow>) -> Arc<Self> {
        Arc::new(Self { events, flow })
    }

    /// Sends an event to the connection (dropped if it is gone).
    pub fn send(&self, ev: ConnEvent) {
        let _ = self.events.send(ev);
    }
}

impl Sink for ConnSink {
    fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
        let reserved = d.reserved;
        self.flow.reserve(reserved);
        match self.events.send(ConnEvent::Deliver(d)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(ev)) => {
                self.flow.unreserve(reserved);
                match ev {
                    ConnEvent::Deliver(d) => Err(d),
                    // Only a delivery was sent.
                    _ => Ok(()),
                }
            }
        }
    }

    fn writable(&self) -> bool {
        self.flow.writable()
    }

    fn cancelled(&self, channel: u16, tag: Arc<str>) {
        self.send(ConnEvent::ConsumerCancelled { channel, tag });
    }

    fn wake(&self, channel: u16) {
        self.send(ConnEvent::Wake { channel });
    }
}

impl SyncWaiter for ConnSink {
    fn synced(&self) {
        self.send(ConnEvent::Synced);
    }
}
