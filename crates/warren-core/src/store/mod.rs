//! Message storage for durable queues, behind the [`MessageStore`] trait.
//!
//! - [`memory::MemoryStore`]: keeps records in memory (brokers without a data dir, and tests).
//! - [`segment::SegmentStore`]: append-only segment files with a checksum per record, acks
//!   recorded beside each segment, fully acked segments deleted, torn or corrupt records cut off
//!   at recovery with a log line.
//! - [`sync::Syncer`]: the group-commit thread. Appends only copy bytes into memory; the syncer
//!   writes every dirty store and fsyncs it in rounds, so many messages share one fsync. A
//!   publisher confirm for a persistent message waits for the round that covers it.
//! - [`pager::Pager`]: the thread that reads paged backlogs back (and drops them on purge), so
//!   no disk read runs on the event loop or under a queue lock.
//!
//! This module (the trait) must not depend on an implementation. One conformance suite
//! (`tests`) runs against both implementations.

pub mod memory;
pub mod pager;
pub(crate) mod record;
pub mod segment;
pub mod stream;
pub mod sync;
#[cfg(test)]
mod tests;

use bytes::{Buf, BufMut, Bytes};
use std::sync::Arc;

use crate::message::Message;

/// A message found in a store when it was opened.
#[derive(Debug)]
pub struct Recovered {
    /// The id it was appended with (the queue position).
    pub id: u64,
    /// The message.
    pub message: Message,
    /// It had been delivered before (it comes back with `redelivered=true`).
    pub delivered: bool,
    /// When it expires, wall-clock ms since the Unix epoch (0: no TTL was recorded).
    pub expires: u64,
}

/// Persistent storage of one durable queue's persistent messages. Calls never block on disk:
/// they record intent; durability arrives with the sync round whose epoch `append` returned.
pub trait MessageStore: Send + Sync + std::fmt::Debug {
    /// Records a message under `id` (ids increase) that expires at `expires` (wall-clock ms
    /// since the Unix epoch; 0: never). Returns the sync epoch that makes it durable; 0 means
    /// durable already.
    fn append(&self, id: u64, message: &Message, expires: u64) -> u64;
    /// Records that message `id` was delivered to a client.
    fn delivered(&self, id: u64);
    /// Records that message `id` is gone (acked, or dropped without requeue).
    fn ack(&self, id: u64);
    /// Deletes everything (the queue was deleted).
    fn destroy(&self);
    /// Takes the messages found when the store was opened, ordered by id (at most the store's
    /// in-memory limit; the rest come from [`MessageStore::take_recovered_tail`]).
    fn take_recovered(&self) -> Vec<Recovered>;

    /// Whether what is appended survives a restart (false for a spill store, which only holds
    /// a non-durable queue's paged backlog): a queue writes its in-memory persistent messages
    /// only to a store that persists, and confirms wait for no sync round otherwise.
    fn persists(&self) -> bool {
        true
    }
    /// Ready messages a queue on this store keeps in memory before paging the rest to disk
    /// (0: this store does not page).
    fn paging_limit(&self) -> usize {
        0
    }
    /// Ids at or above this are unused in the store (new ids must start here).
    fn next_id(&self) -> u64 {
        0
    }
    /// Records a transient message that is paged to disk (never recovered after a restart).
    fn append_transient(&self, _id: u64, _message: &Message, _expires: u64) {}
    /// Where the next appended message will be, for reading a paged backlog back later.
    fn append_position(&self) -> TailCursor {
        TailCursor::default()
    }
    /// Reads up to `max` paged messages from `cursor` on, advancing it. Blocking disk I/O:
    /// called on the pager thread only.
    fn read_tail(&self, _cursor: &mut TailCursor, _max: usize) -> std::io::Result<Vec<Recovered>> {
        Ok(Vec::new())
    }
    /// Forgets the paged messages from `cursor` on whose ids are below `below` (a purge of the
    /// paged backlog) and makes that durable; returns how many. Blocking disk I/O: called on
    /// the pager thread only.
    fn drop_tail(&self, _cursor: TailCursor, _below: u64) -> std::io::Result<u64> {
        Ok(0)
    }
    /// The recovered backlog beyond the in-memory limit: where it starts, how many messages,
    /// how many body bytes.
    fn take_recovered_tail(&self) -> Option<(TailCursor, u64, u64)> {
        None
    }
}

/// A read position in a store's message segments (for paged backlogs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailCursor {
    /// Segment number.
    pub segment: u32,
    /// Byte offset in that segment's message file.
    pub offset: u64,
    /// Transient records below this id belong to a previous run and are skipped.
    pub live_from: u64,
}

/// A shared store handle.
pub type StoreRef = Arc<dyn MessageStore>;

/// Serialises a message record of `kind` (MESSAGE or TRANSIENT; their EXPIRING form when
/// `expires` is not 0, with the expiry right after the id).
pub(crate) fn encode_message(
    id: u64,
    m: &Message,
    kind: u8,
    expires: u64,
    out: &mut Vec<u8>,
) -> usize {
    let kind = match (kind, expires) {
        (_, 0) => kind,
        (record::kind::TRANSIENT, _) => record::kind::TRANSIENT_EXPIRING,
        _ => record::kind::MESSAGE_EXPIRING,
    };
    let meta = meta_with_expiry(id, expires, m);
    let before = out.len();
    record::put_record(out, kind, &[&meta, &m.body]);
    out.len() - before
}

/// The part of a MESSAGE record payload before the body: id, exchange, routing key,
/// properties ([`decode_message`] reads it back).
pub(crate) fn message_meta(id: u64, m: &Message) -> Vec<u8> {
    meta_with_expiry(id, 0, m)
}

/// [`message_meta`], with the expiry after the id when it is not 0 (the EXPIRING kinds).
fn meta_with_expiry(id: u64, expires: u64, m: &Message) -> Vec<u8> {
    let mut meta = Vec::with_capacity(24 + m.exchange.len() + m.routing_key.len());
    meta.put_u64(id);
    if expires != 0 {
        meta.put_u64(expires);
    }
    meta.put_u8(m.exchange.len().min(255) as u8);
    meta.put_slice(&m.exchange.as_bytes()[..m.exchange.len().min(255)]);
    meta.put_u8(m.routing_key.len().min(255) as u8);
    meta.put_slice(&m.routing_key.as_bytes()[..m.routing_key.len().min(255)]);
    meta.put_u32(m.raw_properties.len() as u32);
    meta.put_slice(&m.raw_properties);
    meta
}

/// Parses a message record payload of `kind`: id, message, expiry (0: none recorded).
pub(crate) fn decode_message(kind: u8, mut p: Bytes) -> Option<(u64, Message, u64)> {
    if p.remaining() < 8 + 1 {
        return None;
    }
    let id = p.get_u64();
    let expires = match kind {
        record::kind::MESSAGE_EXPIRING | record::kind::TRANSIENT_EXPIRING => {
            if p.remaining() < 8 + 1 {
                return None;
            }
            p.get_u64()
        }
        _ => 0,
    };
    let xl = p.get_u8() as usize;
    if p.remaining() < xl + 1 {
        return None;
    }
    let exchange = String::from_utf8(p.split_to(xl).to_vec()).ok()?;
    let kl = p.get_u8() as usize;
    if p.remaining() < kl + 4 {
        return None;
    }
    let routing_key = String::from_utf8(p.split_to(kl).to_vec()).ok()?;
    let pl = p.get_u32() as usize;
    if p.remaining() < pl {
        return None;
    }
    let raw_properties = p.split_to(pl);
    let body = p;
    Some((
        id,
        Message::recovered(&exchange, &routing_key, raw_properties, body),
        expires,
    ))
}

/// Parses an ACK or DELIVERED record payload.
pub(crate) fn decode_id(mut p: Bytes) -> Option<u64> {
    (p.remaining() == 8).then(|| p.get_u64())
}
