//! A queue: its ready messages, its consumers, its delivery loop, and the queue features that
//! act on them (TTL, expiry, length limits, dead-lettering, priorities, single active consumer,
//! consumer priorities).
//!
//! Each queue owns its state behind one short-lived mutex (see `docs/ARCHITECTURE.md` for why a
//! lock and not an actor task). Every operation is synchronous and never awaits: publishers
//! enqueue and dispatch in their own task; deliveries are handed to the consumer's connection
//! through an unbounded channel, bounded in practice by per-consumer credit (`basic.qos`).
//!
//! Lock rule: a queue lock is never held while taking the vhost topology lock or another queue's
//! lock. Work that needs them (dead-lettering, deleting an expired queue) is collected under the
//! lock and carried out after it is released.

pub mod args;
pub(crate) mod deadletter;
mod ready;

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crate::connection::{ConnEvent, ConnSender, Flow};
use crate::error::{AmqpError, AmqpResult};
use crate::message::{Message, QueuedMessage};
use crate::store::{Recovered, StoreRef, TailCursor};
use crate::timer::{now_ms, Timers};
use crate::vhost::VHost;
pub use args::{Overflow, QueueArgs};
pub use deadletter::Reason;
use ready::Ready;
use warren_codec::proto::FieldTable;

/// A prefetch window: `limit` messages may be unacknowledged at once (0 = unlimited).
#[derive(Debug, Default)]
pub struct Credit {
    limit: AtomicU32,
    inflight: AtomicU32,
}

impl Credit {
    /// A window of `limit` (0 = unlimited).
    pub fn new(limit: u16) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicU32::new(u32::from(limit)),
            inflight: AtomicU32::new(0),
        })
    }
    /// Whether another message may be sent.
    pub fn available(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        limit == 0 || self.inflight.load(Ordering::Acquire) < limit
    }
    /// The window (0 = unlimited).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }
    /// Changes the window.
    pub fn set_limit(&self, limit: u16) {
        self.limit.store(u32::from(limit), Ordering::Release);
    }
    fn take(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }
    /// Returns one unit of credit (on ack, nack, reject or requeue).
    pub fn release(&self) {
        let _ = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
    }
    /// Messages currently unacknowledged in this window.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }
}

/// A consumer as its queue sees it.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Owning connection.
    pub conn_id: u64,
    /// Owning channel.
    pub channel: u16,
    /// Messages are settled on delivery.
    pub no_ack: bool,
    /// `basic.consume exclusive=true`.
    pub exclusive: bool,
    /// `x-priority` (higher first; default 0).
    pub priority: i64,
    /// Per-consumer prefetch window.
    pub credit: Arc<Credit>,
    /// Channel-wide prefetch window (`basic.qos global=true`).
    pub channel_credit: Arc<Credit>,
    /// Where deliveries go.
    pub tx: ConnSender,
    /// The consumer's connection output backpressure.
    pub flow: Arc<Flow>,
}

impl Consumer {
    /// Whether the consumer may take another message now. Prefetch credit is checked first,
    /// so that only a consumer held back by its connection's output parks on it (see `Flow`).
    fn has_credit(&self) -> bool {
        (self.no_ack || (self.credit.available() && self.channel_credit.available()))
            && self.flow.writable()
    }
}

/// A message handed to a consumer's connection.
#[derive(Debug)]
pub struct Delivery {
    /// Channel of the consumer.
    pub channel: u16,
    /// Consumer tag.
    pub consumer_tag: Arc<str>,
    /// The queue it came from (to ack or requeue).
    pub queue: Arc<Queue>,
    /// The message.
    pub message: QueuedMessage,
    /// Delivered to a no-ack consumer (already settled in the queue).
    pub no_ack: bool,
    /// Output bytes reserved for it on the consumer's connection (see `Flow`).
    pub reserved: usize,
}

/// A message leaving the queue for a dead-letter exchange (or for nowhere, without one).
#[derive(Debug)]
struct Dead {
    message: QueuedMessage,
    reason: Reason,
    /// The message is in this queue's store (so the store must forget it).
    stored: bool,
}

#[derive(Debug)]
struct QueueState {
    ready: Ready,
    ready_bytes: u64,
    unacked: u64,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    had_consumer: bool,
    /// Last time the queue was used (declared, consumed from, got from): for `x-expires`.
    last_used: u64,
    /// The earliest wake-up already asked of the timer service.
    timer_at: Option<u64>,
    /// Ready messages that are only on disk (a paged backlog), after all of `ready`.
    tail: Tail,
}

/// A durable queue's backlog beyond its in-memory limit: on disk only, in order, read back in
/// batches from `cursor` as the in-memory part drains.
#[derive(Debug, Default)]
struct Tail {
    count: u64,
    bytes: u64,
    cursor: TailCursor,
}

/// Declared properties of a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    /// Survives restarts.
    pub durable: bool,
    /// Owning connection of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declare arguments, kept as given.
    pub arguments: FieldTable,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Queue name.
    pub name: Arc<str>,
    /// Vhost name (for error texts).
    pub vhost: Arc<str>,
    /// Declared properties.
    pub options: QueueOptions,
    /// Typed, validated arguments.
    pub args: QueueArgs,
    /// Where persistent messages of a durable queue are stored (none: not persisted).
    store: Option<StoreRef>,
    timers: Timers,
    /// The vhost, for dead-lettering and self-deletion (`x-expires`).
    owner: OnceLock<Weak<VHost>>,
    state: Mutex<QueueState>,
}

/// What `cancel` and channel teardown tell the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCancel {
    /// Nothing to do.
    Keep,
    /// The queue is auto-delete and lost its last consumer: delete it.
    AutoDelete,
}

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// In the queue; on disk after this sync epoch (0: nothing to wait for).
    Yes(u64),
    /// Refused by `x-overflow = reject-publish(-dlx)`: the publisher gets a `basic.nack`.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
}

/// How settled messages leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// `basic.ack`.
    Ack,
    /// `basic.reject`/`nack` with `requeue=false`: dead-lettered with reason `rejected`.
    Reject,
}

impl Queue {
    /// A queue whose persistent messages go to `store` (if any); messages the store recovered
    /// are loaded (delivered ones come back with `redelivered=true`).
    pub fn create(
        name: Arc<str>,
        vhost: Arc<str>,
        options: QueueOptions,
        args: QueueArgs,
        store: Option<StoreRef>,
        timers: Timers,
    ) -> Arc<Self> {
        let now = now_ms();
        let mut st = QueueState {
            ready: Ready::new(args.max_priority),
            ready_bytes: 0,
            unacked: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 0,
            deleted: false,
            had_consumer: false,
            last_used: now,
            timer_at: None,
            tail: Tail::default(),
        };
        if let Some(s) = &store {
            st.next_seq = s.next_id();
            for r in s.take_recovered() {
                st.next_seq = st.next_seq.max(r.id + 1);
                st.ready_bytes += r.message.size() as u64;
                st.ready.push_back(recovered_message(&args, r, now));
            }
            if let Some((cursor, count, bytes)) = s.take_recovered_tail() {
                st.tail = Tail {
                    count,
                    bytes,
                    cursor,
                };
            }
        }
        let q = Arc::new(Self {
            name,
            vhost,
            options,
            args,
            store,
            timers,
            owner: OnceLock::new(),
            state: Mutex::new(st),
        });
        {
            let mut st = q.state.lock();
            q.schedule(&mut st);
        }
        q
    }

    /// Tells the queue which vhost it lives in.
    pub fn attach(&self, owner: Weak<VHost>) {
        let _ = self.owner.set(owner);
    }

    /// The store of a message of this queue that is in it.
    fn store_for(&self, m: &QueuedMessage) -> Option<&StoreRef> {
        self.store.as_ref().filter(|_| m.stored)
    }

    /// Ready messages kept in memory before the backlog pages to disk (0: never pages).
    /// Priority and TTL queues do not page: their order and expiry need every message at hand.
    fn paging_limit(&self) -> usize {
        match &self.store {
            Some(s) if self.args.max_priority.is_none() && self.args.message_ttl.is_none() => {
                s.paging_limit()
            }
            _ => 0,
        }
    }

    /// Reads the paged backlog back while the in-memory part is below half the limit (or
    /// `force`d, when something must be taken from the head).
    fn page_in(&self, st: &mut QueueState, force: bool) {
        let limit = self.paging_limit();
        if st.tail.count == 0 || limit == 0 || (!force && st.ready.len() >= (limit / 2).max(1)) {
            return;
        }
        let Some(store) = &self.store else { return };
        let want = limit
            .saturating_sub(st.ready.len())
            .max(1)
            .min(st.tail.count as usize);
        let now = now_ms();
        match store.read_tail(&mut st.tail.cursor, want) {
            Ok(batch) if !batch.is_empty() => {
                for r in batch {
                    let size = r.message.size() as u64;
                    st.tail.count = st.tail.count.saturating_sub(1);
                    st.tail.bytes = st.tail.bytes.saturating_sub(size);
                    st.ready_bytes += size;
                    st.ready.push_back(recovered_message(&self.args, r, now));
                }
            }
            other => {
                tracing::error!(queue = %self.name, lost = st.tail.count, result = ?other.map(|v| v.len()),
                    "the paged backlog of the queue could not be read back");
                st.tail = Tail::default();
            }
        }
    }

    fn total_len(st: &QueueState) -> u64 {
        st.ready.len() as u64 + st.tail.count
    }

    fn total_bytes(st: &QueueState) -> u64 {
        st.ready_bytes + st.tail.bytes
    }

    /// Forgets settled messages in the store.
    fn store_ack(&self, msgs: &[QueuedMessage]) {
        for m in msgs {
            if let Some(s) = self.store_for(m) {
                s.ack(m.seq);
            }
        }
    }

    fn mark_delivered(&self, m: &QueuedMessage) {
        if !m.redelivered {
            if let Some(s) = self.store_for(m) {
                s.delivered(m.seq);
            }
        }
    }

    /// Whether `conn_id` may use this queue (exclusive queues belong to one connection).
    pub fn check_access(&self, conn_id: u64) -> AmqpResult<()> {
        match self.options.exclusive_owner {
            Some(owner) if owner != conn_id => {
                Err(AmqpError::queue_locked(&self.name, &self.vhost))
            }
            _ => Ok(()),
        }
    }

    /// Ready messages (in memory and paged to disk).
    pub fn message_count(&self) -> u32 {
        u32::try_from(Self::total_len(&self.state.lock())).unwrap_or(u32::MAX)
    }

    /// Consumers attached.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.state.lock().consumers.len()).unwrap_or(u32::MAX)
    }

    /// Delivered but not yet settled messages.
    pub fn unacked_count(&self) -> u64 {
        self.state.lock().unacked
    }

    /// Marks the queue as used now (redeclared): restarts its `x-expires` clock.
    pub fn touch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.last_used = now_ms();
        self.schedule(&mut st);
    }

    /// Enqueues a message and delivers what can be delivered.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Enqueued {
        let now = now_ms();
        let mut dead = Vec::new();
        let result = {
            let mut st = self.state.lock();
            if st.deleted {
                return Enqueued::Gone;
            }
            self.expire_head(&mut st, now, &mut dead);
            let size = msg.size() as u64;
            let full = self
                .args
                .max_length
                .is_some_and(|m| Self::total_len(&st) >= m)
                || self
                    .args
                    .max_length_bytes
                    .is_some_and(|m| Self::total_bytes(&st) + size > m);
            if full && self.args.overflow != Overflow::DropHead {
                if self.args.overflow == Overflow::RejectPublishDlx {
                    let message = QueuedMessage::new(0, msg, 0);
                    dead.push(Dead {
                        message,
                        reason: Reason::Maxlen,
                        stored: false,
                    });
                }
                Enqueued::Rejected
            } else {
                let seq = st.next_seq;
                st.next_seq += 1;
                let limit = self.paging_limit();
                let mut epoch = 0;
                match &self.store {
                    Some(s) if limit > 0 && (st.tail.count > 0 || st.ready.len() >= limit) => {
                        // The queue is long: this message lives on disk only until read back.
                        if st.tail.count == 0 {
                            st.tail.cursor = s.append_position();
                        }
                        if msg.persistent {
                            epoch = s.append(seq, &msg);
                        } else {
                            s.append_transient(seq, &msg);
                        }
                        st.tail.count += 1;
                        st.tail.bytes += size;
                    }
                    store => {
                        let mut m = QueuedMessage::new(seq, msg, 0);
                        if let Some(s) = store.as_ref().filter(|_| m.msg.persistent) {
                            epoch = s.append(seq, &m.msg);
                            m.stored = true;
                        }
                        m.expires_at = expiry(&self.args, &m.msg, now);
                        st.ready_bytes += size;
                        st.ready.push_back(m);
                    }
                }
                self.dispatch(&mut st, now, &mut dead);
                self.enforce_limits(&mut st, &mut dead);
                // A TTL of 0 means "deliver now or never": what dispatch could not place expires.
                self.expire_head(&mut st, now + 1, &mut dead);
                self.schedule(&mut st);
                Enqueued::Yes(epoch)
            }
        };
        self.dead_letter(dead);
        result
    }

    /// Adds a consumer. 403 when the queue has an exclusive consumer, or when an exclusive
    /// consumer asks for a queue that already has consumers.
    pub fn consume(self: &Arc<Self>, consumer: Consumer) -> AmqpResult<()> {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(AmqpError::no_queue(&self.name, &self.vhost));
            }
            if st.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !st.consumers.is_empty())
            {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost
                )));
            }
            st.consumers.push(consumer);
            st.had_consumer = true;
            st.last_used = now_ms();
            self.dispatch(&mut st, now_ms(), &mut dead);
        }
        self.dead_letter(dead);
        Ok(())
    }

    /// Removes one consumer.
    pub fn cancel(self: &Arc<Self>, conn_id: u64, channel: u16, tag: &str) -> AfterCancel {
        let mut dead = Vec::new();
        let after = {
            let mut st = self.state.lock();
            let before = st.consumers.len();
            st.consumers
                .retain(|c| !(c.conn_id == conn_id && c.channel == channel && &*c.tag == tag));
            if st.consumers.len() < before {
                if st.next_consumer >= st.consumers.len() {
                    st.next_consumer = 0;
                }
                st.last_used = now_ms();
                // With a single active consumer, the next one takes over now.
                self.dispatch(&mut st, now_ms(), &mut dead);
                self.schedule(&mut st);
            }
            if self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
            {
                AfterCancel::AutoDelete
            } else {
                AfterCancel::Keep
            }
        };
        self.dead_letter(dead);
        after
    }

    /// Takes the head message for `basic.get`. Returns it with the count of messages left.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let now = now_ms();
        let mut dead = Vec::new();
        let got = {
            let mut st = self.state.lock();
            st.last_used = now;
            self.expire_head(&mut st, now, &mut dead);
            self.page_in(&mut st, false);
            let got = st.ready.pop_front().map(|mut m| {
                st.ready_bytes = st.ready_bytes.saturating_sub(m.msg.size() as u64);
                m.deliveries += 1;
                if no_ack {
                    self.store_ack(std::slice::from_ref(&m));
                } else {
                    st.unacked += 1;
                    self.mark_delivered(&m);
                }
                let left = u32::try_from(Self::total_len(&st)).unwrap_or(u32::MAX);
                (m, left)
            });
            self.schedule(&mut st);
            got
        };
        self.dead_letter(dead);
        got
    }

    /// Settles delivered messages: acked, or rejected without requeue (dead-lettered with
    /// reason `rejected`). Then delivers whatever the freed credit allows.
    pub fn settle(self: &Arc<Self>, msgs: Vec<QueuedMessage>, how: Settle) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
            self.dispatch(&mut st, now_ms(), &mut dead);
        }
        match how {
            Settle::Ack => self.store_ack(&msgs),
            Settle::Reject => dead.extend(msgs.into_iter().map(|message| Dead {
                message,
                reason: Reason::Rejected,
                stored: true,
            })),
        }
        self.dead_letter(dead);
    }

    /// A message delivered to a no-ack consumer reached its client: it is gone.
    pub fn forget(&self, m: &QueuedMessage) {
        self.store_ack(std::slice::from_ref(m));
    }

    /// Puts delivered messages back at their original positions, marked redelivered; those over
    /// `x-delivery-limit` are dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let now = now_ms();
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
            if st.deleted {
                return;
            }
            for mut m in msgs {
                if self
                    .args
                    .delivery_limit
                    .is_some_and(|l| u64::from(m.deliveries) > l)
                {
                    dead.push(Dead {
                        message: m,
                        reason: Reason::DeliveryLimit,
                        stored: true,
                    });
                    continue;
                }
                m.redelivered = true;
                st.ready_bytes += m.msg.size() as u64;
                st.ready.insert_in_order(m);
            }
            self.dispatch(&mut st, now, &mut dead);
            self.enforce_limits(&mut st, &mut dead);
            self.schedule(&mut st);
        }
        self.dead_letter(dead);
    }

    /// Returns a message that was handed to a connection but never written to the client (its
    /// consumer or channel went away first): back in place, redelivery flag unchanged.
    pub fn return_undelivered(self: &Arc<Self>, mut m: QueuedMessage, was_unacked: bool) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if was_unacked {
                st.unacked = st.unacked.saturating_sub(1);
            }
            if st.deleted {
                return;
            }
            m.deliveries = m.deliveries.saturating_sub(1);
            st.ready_bytes += m.msg.size() as u64;
            st.ready.insert_in_order(m);
            self.dispatch(&mut st, now_ms(), &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Tries to deliver again (credit was freed elsewhere, e.g. a channel-wide window).
    pub fn kick(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            self.dispatch(&mut st, now_ms(), &mut dead);
        }
        self.dead_letter(dead);
    }

    /// The timer service's call: expire messages at the head, and delete the queue if it has
    /// been unused for `x-expires`.
    pub fn on_timer(self: &Arc<Self>) {
        let now = now_ms();
        let mut dead = Vec::new();
        let expire_queue = {
            let mut st = self.state.lock();
            st.timer_at = None;
            if st.deleted {
                return;
            }
            self.expire_head(&mut st, now + 1, &mut dead);
            let unused = self
                .args
                .expires
                .is_some_and(|e| st.consumers.is_empty() && now >= st.last_used + e);
            if !unused {
                self.schedule(&mut st);
            }
            unused
        };
        self.dead_letter(dead);
        if expire_queue {
            if let Some(vh) = self.owner.get().and_then(Weak::upgrade) {
                tracing::debug!(queue = %self.name, "queue expired (x-expires)");
                vh.delete_queue_instance(self);
            }
        }
    }

    /// Drops all ready messages (in memory and paged); returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let mut n = 0usize;
        loop {
            let purged = st.ready.drain();
            st.ready_bytes = 0;
            self.store_ack(&purged);
            n += purged.len();
            if st.tail.count == 0 {
                break;
            }
            self.page_in(&mut st, true);
        }
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether `queue.delete if-unused / if-empty` may proceed.
    pub fn check_delete(&self, if_unused: bool, if_empty: bool) -> AmqpResult<()> {
        let st = self.state.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{}' in vhost '{}' in use",
                self.name, self.vhost
            )));
        }
        if if_empty && Self::total_len(&st) > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{}' in vhost '{}' not empty",
                self.name, self.vhost
            )));
        }
        Ok(())
    }

    /// Marks the queue deleted, drops its messages and tells each consumer's connection that
    /// its consumer is gone. Returns the number of ready messages dropped.
    pub fn mark_deleted(&self) -> u32 {
        let mut st = self.state.lock();
        if st.deleted {
            return 0;
        }
        st.deleted = true;
        let n = u32::try_from(Self::total_len(&st)).unwrap_or(u32::MAX);
        st.ready.drain();
        st.ready_bytes = 0;
        st.tail = Tail::default();
        if let Some(s) = &self.store {
            s.destroy();
        }
        for c in st.consumers.drain(..) {
            let _ = c.tx.send(ConnEvent::ConsumerCancelled {
                channel: c.channel,
                tag: c.tag.clone(),
            });
        }
        n
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Removes messages at the head whose expiry is before `cutoff` (ms).
    fn expire_head(&self, st: &mut QueueState, cutoff: u64, dead: &mut Vec<Dead>) {
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
    fn enforce_limits(&self, st: &mut QueueState, dead: &mut Vec<Dead>) {
        if self.args.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let over = self
                .args
                .max_length
                .is_some_and(|m| Self::total_len(st) > m)
                || self
                    .args
                    .max_length_bytes
                    .is_some_and(|m| Self::total_bytes(st) > m);
            if !over {
                return;
            }
            if st.ready.is_empty() {
                self.page_in(st, true);
            }
            let Some(m) = st.ready.pop_front() else {
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

    /// Asks the timer service to wake the queue for the next head expiry or `x-expires` check.
    fn schedule(self: &Arc<Self>, st: &mut QueueState) {
        let head = st.ready.front().map(|m| m.expires_at).filter(|e| *e > 0);
        let unused = self
            .args
            .expires
            .filter(|_| st.consumers.is_empty())
            .map(|e| st.last_used + e);
        let Some(at) = [head, unused].into_iter().flatten().min() else {
            return;
        };
        if st.timer_at.is_none_or(|t| at < t) {
            st.timer_at = Some(at);
            self.timers.schedule(at, self);
        }
    }

    /// Picks the consumer for the next message: with single active consumer only the first
    /// registered; otherwise round robin among the highest-priority consumers with credit.
    fn pick_consumer(&self, st: &QueueState) -> Option<usize> {
        if self.args.single_active_consumer {
            return st.consumers.first().filter(|c| c.has_credit()).map(|_| 0);
        }
        let n = st.consumers.len();
        let best = st
            .consumers
            .iter()
            .filter(|c| c.has_credit())
            .map(|c| c.priority)
            .max()?;
        let start = st.next_consumer % n;
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| st.consumers[i].priority == best && st.consumers[i].has_credit())
    }

    /// Hands ready messages to consumers with credit.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState, now: u64, dead: &mut Vec<Dead>) {
        while !st.consumers.is_empty() {
            self.expire_head(st, now, dead);
            self.page_in(st, false);
            if st.ready.is_empty() {
                return;
            }
            let Some(idx) = self.pick_consumer(st) else {
                return;
            };
            let Some(mut message) = st.ready.pop_front() else {
                return;
            };
            st.next_consumer = (idx + 1) % st.consumers.len();
            st.ready_bytes = st.ready_bytes.saturating_sub(message.msg.size() as u64);
            message.deliveries += 1;
            let c = &st.consumers[idx];
            if !c.no_ack {
                c.credit.take();
                c.channel_credit.take();
                self.mark_delivered(&message);
            }
            let no_ack = c.no_ack;
            let reserved = message.msg.wire_size() + c.tag.len();
            c.flow.reserve(reserved);
            let delivery = Delivery {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                queue: Arc::clone(self),
                message,
                no_ack,
                reserved,
            };
            match c.tx.send(ConnEvent::Deliver(delivery)) {
                Ok(()) => {
                    if !no_ack {
                        st.unacked += 1;
                    }
                }
                Err(e) => {
                    // The connection is gone: put the message back and forget the consumer.
                    c.flow.unreserve(reserved);
                    if let ConnEvent::Deliver(mut d) = e.0 {
                        d.message.deliveries -= 1;
                        st.ready_bytes += d.message.msg.size() as u64;
                        st.ready.insert_in_order(d.message);
                    }
                    st.consumers.remove(idx);
                    st.next_consumer = 0;
                }
            }
        }
    }

    /// Carries out dead-lettering collected under the lock (no lock held here).
    fn dead_letter(&self, dead: Vec<Dead>) {
        if dead.is_empty() {
            return;
        }
        let owner = self.owner.get().and_then(Weak::upgrade);
        for d in dead {
            if let (Some(vh), Some(dlx)) = (&owner, &self.args.dead_letter_exchange) {
                let dl = deadletter::dead_lettered(
                    &d.message.msg,
                    d.reason,
                    &self.name,
                    dlx,
                    self.args.dead_letter_routing_key.as_deref(),
                );
                vh.publish_dead_letter(dl, d.reason);
            }
            if d.stored {
                self.store_ack(std::slice::from_ref(&d.message));
            }
        }
    }
}

/// When a message published now expires (0: never): the queue's `x-message-ttl` or the
/// message's `expiration`, whichever is sooner.
fn expiry(args: &QueueArgs, m: &Message, now: u64) -> u64 {
    match (args.message_ttl, m.ttl) {
        (None, None) => 0,
        (a, b) => (now
            + a.unwrap_or(u64::MAX)
                .min(b.unwrap_or(u64::MAX))
                .min(u64::MAX / 4))
        .max(1),
    }
}

/// A message read back from the store (at startup, or from a paged backlog).
fn recovered_message(args: &QueueArgs, r: Recovered, now: u64) -> QueuedMessage {
    let Recovered {
        id,
        message,
        delivered,
    } = r;
    let expires_at = expiry(args, &message, now);
    let mut m = QueuedMessage::new(id, Arc::new(message), expires_at);
    m.redelivered = delivered;
    m.deliveries = u32::from(delivered);
    m.stored = true;
    m
}
