//! Messages as queues hold them: one [`Message`] shared (`Arc`) by every queue it was routed to.
//!
//! Only what the broker needs is decoded out of the content header (persistence, priority); the
//! publisher's property bytes are kept verbatim and forwarded on delivery, as RabbitMQ forwards
//! `properties_bin`. Small messages are copied into one compact allocation so a long-lived
//! message never pins the (much larger) socket read buffer it arrived in.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use warren_codec::proto::AMQPProperties;

/// Messages whose properties and body together are smaller than this are compacted.
const COMPACT_BELOW: usize = 4096;

/// A published message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: Arc<str>,
    /// The routing key it was published with.
    pub routing_key: Box<str>,
    /// Content property flags and fields exactly as the publisher sent them.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
    /// `delivery_mode == 2`.
    pub persistent: bool,
    /// The `priority` property (0 when absent).
    pub priority: u8,
    /// The `expiration` property in ms, if it holds a valid one.
    pub ttl: Option<u64>,
}

impl Message {
    /// Builds a message from an assembled publish.
    pub fn new(
        exchange: Arc<str>,
        routing_key: &str,
        properties: &AMQPProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        let (raw_properties, body) = if raw_properties.len() + body.len() < COMPACT_BELOW {
            let mut b = BytesMut::with_capacity(raw_properties.len() + body.len());
            b.extend_from_slice(&raw_properties);
            b.extend_from_slice(&body);
            let all = b.freeze();
            (
                all.slice(..raw_properties.len()),
                all.slice(raw_properties.len()..),
            )
        } else {
            (raw_properties, body)
        };
        Self {
            exchange,
            routing_key: routing_key.into(),
            raw_properties,
            body,
            persistent: *properties.delivery_mode() == Some(2),
            priority: properties.priority().unwrap_or(0),
            ttl: properties
                .expiration()
                .as_ref()
                .and_then(|e| e.as_str().parse().ok()),
        }
    }

    /// Rebuilds a message read back from storage (the broker only stores persistent ones).
    pub fn recovered(
        exchange: &str,
        routing_key: &str,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        let props = amq_props(&raw_properties);
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            raw_properties,
            body,
            persistent: true,
            priority: props.as_ref().and_then(|p| *p.priority()).unwrap_or(0),
            ttl: props.as_ref().and_then(|p| {
                p.expiration()
                    .as_ref()
                    .and_then(|e| e.as_str().parse().ok())
            }),
        }
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }

    /// About how many bytes a delivery of this message takes on the wire (`basic.deliver`,
    /// content header and body frames; the consumer tag not included): what output
    /// backpressure counts, so that a backlog of tiny messages is bounded by its real output
    /// size, not by its body bytes alone.
    pub fn wire_size(&self) -> usize {
        const FRAMES: usize = 3 * 8 + 4 + 8 + 2 + 12;
        FRAMES
            + self.exchange.len()
            + self.routing_key.len()
            + self.raw_properties.len()
            + self.body.len()
    }
}

/// A message in a queue: its position (`seq`, which requeues restore), redelivery flag,
/// expiry and delivery count.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue; lower is older.
    pub seq: u64,
    /// The shared message.
    pub msg: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// When it expires (broker [`crate::clock::Clock`] time; 0 = never).
    pub expires_at: u64,
    /// How many times it was handed to a client.
    pub deliveries: u32,
    /// It is in its queue's message store (so settling it must be recorded there).
    pub stored: bool,
}

impl QueuedMessage {
    /// A message entering a queue at position `seq`.
    pub fn new(seq: u64, msg: Arc<Message>, expires_at: u64) -> Self {
        Self {
            seq,
            msg,
            redelivered: false,
            expires_at,
            deliveries: 0,
            stored: false,
        }
    }
}

/// Raw properties `raw` with header `key` set to `value` (the other properties and headers
/// kept); `None` when `raw` does not decode.
pub fn with_header(raw: &[u8], key: &str, value: warren_codec::proto::AMQPValue) -> Option<Bytes> {
    let props = amq_props(raw)?;
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(key.into(), value);
    Some(Bytes::from(warren_codec::encode_properties(
        &props.with_headers(headers),
    )))
}

/// Decodes raw content properties (flags and fields).
pub fn amq_props(raw: &[u8]) -> Option<AMQPProperties> {
    warren_codec::decode_properties(raw)
}
