//! TTL, expiry and length limits of a classic queue, and the timer requests they need.

use std::sync::Arc;

use super::{ClassicQueue, Dead, State};
use crate::clock::{Clock, Millis};
use crate::message::{Message, QueuedMessage};
use crate::queue::{Overflow, QueueArgs, Reason};
use crate::store::Recovered;

/// When a message published at `now` expires (0: never): the queue's `x-message-ttl` or the
/// message's `expiration`, whichever is sooner.
pub(super) fn expiry(args: &QueueArgs, m: &Message, now: Millis) -> Millis {
    match (args.message_ttl, m.ttl) {
        (None, None) => 0,
        (a, b) => (now
            + a.unwrap_or(u64::MAX)
                .min(b.unwrap_or(u64::MAX))
                .min(u64::MAX / 4))
        .max(1),
    }
}

/// A message read back from the store (at startup, or from a paged backlog): its recorded
/// expiry keeps counting from its publish (records written before expiries were stored get
/// their TTL from `now`).
pub(super) fn recovered_message(args: &QueueArgs, r: Recovered, clock: &Clock) -> QueuedMessage {
    let Recovered {
        id,
        message,
        delivered,
        expires,
    } = r;
    let expires_at = if expires != 0 {
        clock.from_wall(expires)
    } else {
        expiry(args, &message, clock.now())
    };
    let mut m = QueuedMessage::new(id, Arc::new(message), expires_at);
    m.redelivered = delivered;
    m.deliveries = u32::from(delivered);
    m.stored = true;
    m
}

impl ClassicQueue {
    /// Removes messages at the head whose expiry is before `cutoff`.
    pub(super) fn expire_head(&self, st: &mut State, cutoff: Millis, dead: &mut Vec<Dead>) {
        while let Some(m) = st.ready.front() {
            if m.expires_at == 0 || m.expires_at >= cutoff {
                break;
            }
            if let Some(m) = st.ready.pop_front() {
                st.ready_bytes = st.ready_bytes.saturating_sub(m.msg.size() as u64);
                dead.push(Dead {
                    message: m,
                    reason: Reason::Expired,
                    stored: true,
                });
            }
        }
    }

    /// `x-max-length` / `x-max-length-bytes` with `drop-head`: the head goes. In a priority
    /// queue that is the next message to be delivered (highest priority first), as in
    /// `rabbit_priority_queue:drop/2`, which walks the levels in the same order as `fetch/2`.
    /// When the head is on disk (the in-memory part is empty while a paged batch is read),
    /// the limit is enforced once the batch arrives.
    pub(super) fn enforce_limits(&self, st: &mut State, dead: &mut Vec<Dead>) {
        let (max_length, max_length_bytes) = (st.args.max_length, st.args.max_length_bytes);
        if st.args.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let over = max_length.is_some_and(|m| Self::total_len(st) > m)
                || max_length_bytes.is_some_and(|m| Self::total_bytes(st) > m);
            if !over {
                return;
            }
            let Some(m) = st.ready.pop_front() else {
                self.request_page(st);
                return;
            };
            st.ready_bytes = st.ready_bytes.saturating_sub(m.msg.size() as u64);
            dead.push(Dead {
                message: m,
                reason: Reason::Maxlen,
                stored: true,
            });
        }
    }

    /// Asks the timer service to wake the queue for the next head expiry, `x-expires` check
    /// or retry of a failed paged read.
    pub(super) fn schedule(&self, st: &mut State) {
        let head = st.ready.front().map(|m| m.expires_at).filter(|e| *e > 0);
        let unused = st
            .args
            .expires
            .filter(|_| st.consumers.is_empty())
            .map(|e| st.last_used + e);
        let retry = st.tail.retry_at();
        let Some(at) = [head, unused, retry].into_iter().flatten().min() else {
            return;
        };
        if st.timer_at.is_none_or(|t| at < t) {
            st.timer_at = Some(at);
            if let Some(me) = self.handle() {
                self.services.timers.schedule(at, Arc::downgrade(&me));
            }
        }
    }
}
