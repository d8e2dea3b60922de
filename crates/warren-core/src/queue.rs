//! A queue: its ready messages, its consumers and its delivery loop.
//!
//! Each queue owns its state behind one short-lived mutex (see `docs/ARCHITECTURE.md` for why a
//! lock and not an actor task). Every operation is synchronous and never awaits: publishers
//! enqueue and dispatch in their own task; deliveries are handed to the consumer's connection
//! through an unbounded channel, bounded in practice by per-consumer credit (`basic.qos`).
//!
//! Lock rule: a queue lock is never held while taking the vhost topology lock or another queue's
//! lock.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::connection::{ConnEvent, ConnSender};
use crate::error::{AmqpError, AmqpResult};
use crate::message::{Message, QueuedMessage};
use crate::store::{Recovered, StoreRef};
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
    /// Per-consumer prefetch window.
    pub credit: Arc<Credit>,
    /// Channel-wide prefetch window (`basic.qos global=true`).
    pub channel_credit: Arc<Credit>,
    /// Where deliveries go.
    pub tx: ConnSender,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.no_ack || (self.credit.available() && self.channel_credit.available())
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
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<QueuedMessage>,
    unacked: u64,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    had_consumer: bool,
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
    /// Where persistent messages of a durable queue are stored (none: not persisted).
    store: Option<StoreRef>,
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

impl Queue {
    /// A new, empty queue.
    pub fn new(name: Arc<str>, vhost: Arc<str>, options: QueueOptions) -> Arc<Self> {
        Self::with_store(name, vhost, options, None)
    }

    /// A queue whose persistent messages go to `store`; messages the store recovered are
    /// loaded (delivered ones come back with `redelivered=true`).
    pub fn with_store(
        name: Arc<str>,
        vhost: Arc<str>,
        options: QueueOptions,
        store: Option<StoreRef>,
    ) -> Arc<Self> {
        let mut st = QueueState::default();
        if let Some(s) = &store {
            for Recovered {
                id,
                message,
                delivered,
            } in s.take_recovered()
            {
                st.next_seq = st.next_seq.max(id + 1);
                st.ready.push_back(QueuedMessage {
                    seq: id,
                    msg: Arc::new(message),
                    redelivered: delivered,
                });
            }
        }
        Arc::new(Self {
            name,
            vhost,
            options,
            store,
            state: Mutex::new(st),
        })
    }

    /// The store of a persistent message of this queue, if it has one.
    fn store_for(&self, m: &QueuedMessage) -> Option<&StoreRef> {
        self.store.as_ref().filter(|_| m.msg.persistent)
    }

    /// Forgets settled messages in the store.
    fn store_ack(&self, msgs: &[QueuedMessage]) {
        for m in msgs {
            if let Some(s) = self.store_for(m) {
                s.ack(m.seq);
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

    /// Ready messages.
    pub fn message_count(&self) -> u32 {
        u32::try_from(self.state.lock().ready.len()).unwrap_or(u32::MAX)
    }

    /// Consumers attached.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.state.lock().consumers.len()).unwrap_or(u32::MAX)
    }

    /// Delivered but not yet settled messages.
    pub fn unacked_count(&self) -> u64 {
        self.state.lock().unacked
    }

    /// Enqueues a message and delivers what can be delivered. Returns `None` if the queue was
    /// deleted meanwhile (nothing enqueued), else the sync epoch after which the message is
    /// on disk (0: nothing to wait for).
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Option<u64> {
        let mut st = self.state.lock();
        if st.deleted {
            return None;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let epoch = match &self.store {
            Some(s) if msg.persistent => s.append(seq, &msg),
            _ => 0,
        };
        st.ready.push_back(QueuedMessage {
            seq,
            msg,
            redelivered: false,
        });
        self.dispatch(&mut st);
        Some(epoch)
    }

    /// Adds a consumer. 403 when the queue has an exclusive consumer, or when an exclusive
    /// consumer asks for a queue that already has consumers.
    pub fn consume(self: &Arc<Self>, consumer: Consumer) -> AmqpResult<()> {
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
        self.dispatch(&mut st);
        Ok(())
    }

    /// Removes one consumer.
    pub fn cancel(&self, conn_id: u64, channel: u16, tag: &str) -> AfterCancel {
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers
            .retain(|c| !(c.conn_id == conn_id && c.channel == channel && &*c.tag == tag));
        if st.consumers.len() < before && st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        self.after_cancel(&st)
    }

    fn after_cancel(&self, st: &QueueState) -> AfterCancel {
        if self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted {
            AfterCancel::AutoDelete
        } else {
            AfterCancel::Keep
        }
    }

    /// Takes the head message for `basic.get`. Returns it with the count of messages left.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        let m = st.ready.pop_front()?;
        if no_ack {
            self.store_ack(std::slice::from_ref(&m));
        } else {
            st.unacked += 1;
            self.mark_delivered(&m);
        }
        let left = u32::try_from(st.ready.len()).unwrap_or(u32::MAX);
        Some((m, left))
    }

    /// Settles delivered messages (ack, or reject/nack without requeue), then delivers
    /// whatever the freed credit allows.
    pub fn settle(self: &Arc<Self>, msgs: &[QueuedMessage]) {
        self.store_ack(msgs);
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
        self.dispatch(&mut st);
    }

    /// A message delivered to a no-ack consumer reached its client: it is gone.
    pub fn forget(&self, m: &QueuedMessage) {
        self.store_ack(std::slice::from_ref(m));
    }

    fn mark_delivered(&self, m: &QueuedMessage) {
        if !m.redelivered {
            if let Some(s) = self.store_for(m) {
                s.delivered(m.seq);
            }
        }
    }

    /// Puts delivered messages back at their original positions, marked redelivered.
    pub fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
        if st.deleted {
            return;
        }
        for mut m in msgs {
            m.redelivered = true;
            insert_in_order(&mut st.ready, m);
        }
        self.dispatch(&mut st);
    }

    /// Returns a message that was handed to a connection but never written to the client (its
    /// consumer or channel went away first): back in place, redelivery flag unchanged.
    pub fn return_undelivered(self: &Arc<Self>, m: QueuedMessage, was_unacked: bool) {
        let mut st = self.state.lock();
        if was_unacked {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if st.deleted {
            return;
        }
        insert_in_order(&mut st.ready, m);
        self.dispatch(&mut st);
    }

    /// Tries to deliver again (credit was freed elsewhere, e.g. a channel-wide window).
    pub fn kick(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch(&mut st);
    }

    /// Drops all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len();
        let purged: Vec<QueuedMessage> = st.ready.drain(..).collect();
        self.store_ack(&purged);
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
        if if_empty && !st.ready.is_empty() {
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
        let n = u32::try_from(st.ready.len()).unwrap_or(u32::MAX);
        st.ready.clear();
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

    /// Hands ready messages to consumers with credit, round robin.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let start = st.next_consumer % n;
            let Some(idx) = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| st.consumers[i].has_credit())
            else {
                return;
            };
            st.next_consumer = (idx + 1) % n;
            let Some(message) = st.ready.pop_front() else {
                return;
            };
            let c = &st.consumers[idx];
            if !c.no_ack {
                c.credit.take();
                c.channel_credit.take();
                self.mark_delivered(&message);
            }
            let delivery = Delivery {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                queue: Arc::clone(self),
                message,
                no_ack: c.no_ack,
            };
            let no_ack = c.no_ack;
            match c.tx.send(ConnEvent::Deliver(delivery)) {
                Ok(()) => {
                    if !no_ack {
                        st.unacked += 1;
                    }
                }
                Err(e) => {
                    // The connection is gone: put the message back and forget the consumer.
                    if let ConnEvent::Deliver(d) = e.0 {
                        st.ready.push_front(d.message);
                    }
                    st.consumers.remove(idx);
                    st.next_consumer = 0;
                }
            }
        }
    }
}

fn insert_in_order(ready: &mut VecDeque<QueuedMessage>, m: QueuedMessage) {
    // Requeued messages are usually older than everything ready: fast path at the front.
    if ready.front().is_none_or(|f| m.seq < f.seq) {
        ready.push_front(m);
        return;
    }
    let pos = ready.partition_point(|x| x.seq < m.seq);
    ready.insert(pos, m);
}
