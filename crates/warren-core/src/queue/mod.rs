//! Queues behind one handle, and the small interfaces the queue side owns.
//!
//! A queue is a [`QueueRef`] (`Arc<dyn Queue>`): channels, routing, the HTTP API and metrics
//! hold that and never care which type is behind it. The type is chosen from `x-queue-type`
//! at declare time ([`create`]): `stream` by [`stream::StreamQueue`], every other type by
//! [`classic::ClassicQueue`] (quorum-typed queues have no replication here).
//!
//! The queue side depends on nothing above it. What it needs from above, it defines here and
//! the upper layers implement:
//! - [`Sink`]: where a consumer's deliveries go (the AMQP connection implements it; later an
//!   MQTT session, and the tests' sinks);
//! - [`QueueOwner`]: dead-lettering and `x-expires` deletion (the vhost implements it);
//! - timers ([`timers::Timers`]) belong to the queue side and call [`Queue::on_timer`].
//!
//! Every operation takes the current time (`now`, [`Millis`]) from its caller: no queue code
//! reads a clock.

pub mod args;
pub mod classic;
pub mod deadletter;
pub mod memory_sink;
pub mod stream;
pub mod timers;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::message::{Message, QueuedMessage};
pub use args::{Overflow, QueueArgs, QueueKind};
pub use deadletter::{DeadLetter, Reason};
use warren_codec::proto::FieldTable;

/// A queue handle.
pub type QueueRef = Arc<dyn Queue>;

/// Whether two handles are the same queue (compares the data pointers only).
pub fn same(a: &QueueRef, b: &QueueRef) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Where a consumer's deliveries go: implemented by the consumer's connection.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Takes a delivery (reserving its output, see [`Delivery::reserved`]); gives it back when
    /// the consumer's connection is gone.
    fn deliver(&self, d: Delivery) -> Result<(), Delivery>;
    /// Whether more output may be produced for this consumer's connection now. When not, the
    /// sink has noted that a consumer is parked on it and owns the wake-up: it kicks the
    /// consumer's queues once it has drained.
    fn writable(&self) -> bool;
    /// The queue was deleted under consumer `tag` of `channel`.
    fn cancelled(&self, channel: u16, tag: Arc<str>);
    /// Something `channel` waits for on this queue (a paged batch for `basic.get`, a purge of
    /// a paged backlog) has happened: ask again.
    fn wake(&self, channel: u16);
}

/// What a queue needs from the vhost it lives in.
pub trait QueueOwner: Send + Sync {
    /// Routes a dead-lettered message to the dead-letter exchange of the queue it died in.
    fn dead_letter(&self, dl: DeadLetter, reason: Reason, now: Millis);
    /// The queue has been unused for its `x-expires`: delete it (if it is still this
    /// incarnation).
    fn expired(&self, q: &QueueRef);
}

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
    /// Takes one unit of credit (a delivery).
    pub fn take(&self) {
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
    pub sink: Arc<dyn Sink>,
    /// `basic.consume` arguments (`x-stream-offset` for streams).
    pub arguments: FieldTable,
}

impl Consumer {
    /// Whether the consumer may take another message now. Prefetch credit is checked first,
    /// so that only a consumer held back by its connection's output parks on it.
    pub fn has_credit(&self) -> bool {
        (self.no_ack || (self.credit.available() && self.channel_credit.available()))
            && self.sink.writable()
    }
}

/// A consumer as the management API shows it.
#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Owning connection.
    pub conn_id: u64,
    /// Owning channel.
    pub channel: u16,
    /// Deliveries must be acknowledged.
    pub ack_required: bool,
    /// `basic.consume exclusive=true`.
    pub exclusive: bool,
    /// Its prefetch window (0 = unlimited).
    pub prefetch_count: u32,
    /// `basic.consume` arguments.
    pub arguments: FieldTable,
}

impl From<&Consumer> for ConsumerInfo {
    fn from(c: &Consumer) -> Self {
        Self {
            tag: c.tag.clone(),
            conn_id: c.conn_id,
            channel: c.channel,
            ack_required: !c.no_ack,
            exclusive: c.exclusive,
            prefetch_count: c.credit.limit(),
            arguments: c.arguments.clone(),
        }
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
    pub queue: QueueRef,
    /// The message.
    pub message: QueuedMessage,
    /// Delivered to a no-ack consumer (already settled in the queue).
    pub no_ack: bool,
    /// Estimated output bytes of this delivery (what the sink reserves for it).
    pub reserved: usize,
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

/// What every queue type has.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    /// Queue name.
    pub name: Arc<str>,
    /// Vhost name (for error texts).
    pub vhost: Arc<str>,
    /// Declared properties.
    pub options: QueueOptions,
    /// Typed, validated arguments.
    pub args: QueueArgs,
    /// Its store directory (durable queues), which also names this incarnation.
    pub store_dir: Option<String>,
    /// Its message counters (`publish`, `deliver`, `get`, `ack`, `redeliver`, ...).
    pub stats: Arc<crate::stats::MessageStats>,
    /// The policy it runs with (set at declare and by every policy change).
    pub policy: PolicyCell,
}

/// The policy a queue runs with, swapped whole by a policy change (read for display and when
/// a queue is created or re-evaluated, never per message).
#[derive(Debug, Clone, Default)]
pub struct PolicyCell(Arc<parking_lot::RwLock<Arc<crate::policy::Applied>>>);

impl PolicyCell {
    /// A cell holding `a`.
    pub fn new(a: crate::policy::Applied) -> Self {
        Self(Arc::new(parking_lot::RwLock::new(Arc::new(a))))
    }
    /// The current policy.
    pub fn get(&self) -> Arc<crate::policy::Applied> {
        self.0.read().clone()
    }
    /// Replaces it.
    pub fn set(&self, a: Arc<crate::policy::Applied>) {
        *self.0.write() = a;
    }
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

/// What `basic.get` found.
#[derive(Debug)]
pub enum Got {
    /// The head message, and how many are left.
    Message(QueuedMessage, u32),
    /// Nothing ready.
    Empty,
    /// Nothing in memory, but paged messages are being read: the waiter is woken
    /// ([`Sink::wake`]) when they are in; then ask again.
    Wait,
    /// This queue type has no `basic.get` (streams): the error to answer with.
    Refused(AmqpError),
}

/// Who waits on a queue operation that may have to wait for the pager.
#[derive(Debug, Clone)]
pub struct Waiter {
    /// Its connection.
    pub sink: Arc<dyn Sink>,
    /// Its channel.
    pub channel: u16,
}

/// The operations every queue type offers.
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Name, options, arguments.
    fn info(&self) -> &QueueInfo;
    /// Tells the queue which vhost it lives in.
    fn attach(&self, owner: Weak<dyn QueueOwner>);
    /// Enqueues a message and delivers what can be delivered.
    fn publish(&self, msg: Arc<Message>, now: Millis) -> Enqueued;
    /// Adds a consumer (403 when exclusivity forbids it).
    fn consume(&self, consumer: Consumer, now: Millis) -> AmqpResult<()>;
    /// Removes one consumer.
    fn cancel(&self, conn_id: u64, channel: u16, tag: &str, now: Millis) -> AfterCancel;
    /// Takes the head message for `basic.get`.
    fn get(&self, no_ack: bool, now: Millis, waiter: &Waiter) -> Got;
    /// Settles delivered messages (ack, or reject without requeue).
    fn settle(&self, msgs: Vec<QueuedMessage>, how: Settle, now: Millis);
    /// Puts delivered messages back in place, marked redelivered.
    fn requeue(&self, msgs: Vec<QueuedMessage>, now: Millis);
    /// Returns a message that never reached its client, unchanged.
    fn return_undelivered(&self, m: QueuedMessage, was_unacked: bool, now: Millis);
    /// A message delivered to a no-ack consumer reached its client.
    fn forget(&self, m: &QueuedMessage);
    /// Tries to deliver again (credit or output was freed elsewhere).
    fn kick(&self, now: Millis);
    /// The timer service's call at a deadline the queue asked for.
    fn on_timer(&self, now: Millis);
    /// Drops all ready messages; returns how many, and whether the caller must wait for a
    /// wake-up before answering (a paged backlog is being dropped on the pager thread).
    fn purge(&self, now: Millis, waiter: &Waiter) -> (u32, bool);
    /// Whether `queue.purge` is supported (streams refuse it).
    fn check_purge(&self) -> AmqpResult<()> {
        Ok(())
    }
    /// Whether `queue.delete if-unused / if-empty` may proceed.
    fn check_delete(&self, if_unused: bool, if_empty: bool) -> AmqpResult<()>;
    /// Marks the queue deleted, drops its messages, cancels its consumers; returns how many
    /// ready messages were dropped.
    fn mark_deleted(&self) -> u32;
    /// Whether the queue was deleted.
    fn is_deleted(&self) -> bool;
    /// Ready messages (in memory and paged).
    fn message_count(&self) -> u32;
    /// Consumers attached.
    fn consumer_count(&self) -> u32;
    /// Delivered but not yet settled messages.
    fn unacked_count(&self) -> u64;
    /// Marks the queue as used now (redeclared): restarts its `x-expires` clock.
    fn touch(&self, now: Millis);
    /// Runs with policy `p` from now on (a policy was set, changed or cleared). Types that do
    /// not act on policies only show it.
    fn set_policy(&self, p: crate::policy::Applied, _now: Millis) {
        self.info().policy.set(Arc::new(p));
    }
    /// The policy it runs with (names, effective definition, effective arguments).
    fn policy(&self) -> Arc<crate::policy::Applied> {
        self.info().policy.get()
    }
    /// Reads of its paged backlog that failed so far.
    fn paging_read_errors(&self) -> u64 {
        0
    }
    /// Body bytes of its ready messages (in memory and paged; 0 where not tracked).
    fn ready_bytes(&self) -> u64 {
        0
    }
    /// Ready messages (and their body bytes) that are on disk only: the paged backlog.
    fn paged_out(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Its consumers, as the management API lists them.
    fn consumers(&self) -> Vec<ConsumerInfo>;
    /// A stream's size, offsets and consumers (none for other types); what management and
    /// metrics will show.
    fn stream_stats(&self) -> Option<stream::StreamStats> {
        None
    }

    /// Name.
    fn name(&self) -> &Arc<str> {
        &self.info().name
    }
    /// Declared properties.
    fn options(&self) -> &QueueOptions {
        &self.info().options
    }
    /// Whether `conn_id` may use this queue (exclusive queues belong to one connection).
    fn check_access(&self, conn_id: u64) -> AmqpResult<()> {
        let i = self.info();
        match i.options.exclusive_owner {
            Some(owner) if owner != conn_id => Err(AmqpError::queue_locked(&i.name, &i.vhost)),
            _ => Ok(()),
        }
    }
}

/// What a new queue needs from the broker.
#[derive(Debug, Clone)]
pub struct Services {
    /// Queue timers.
    pub timers: timers::Timers,
    /// The pager thread, when queues page to disk.
    pub pager: Option<Arc<crate::store::pager::Pager>>,
    /// The broker's clock (read by the pager's callbacks, which have no caller to ask).
    pub clock: crate::clock::Clock,
    /// Whose defaults new queues follow (`amqp.compat`).
    pub compat: crate::config::Compat,
}

/// Where a new queue keeps its messages.
#[derive(Debug)]
pub enum Backing {
    /// Nothing on disk (non-durable, or a broker without a data dir), classic types.
    None,
    /// The message store of a durable classic (or quorum-typed) queue.
    Store(crate::store::StoreRef),
    /// The log of a stream.
    Stream(Arc<crate::store::stream::StreamLog>),
    /// A non-durable classic queue's spill store: its backlog beyond the in-memory limit
    /// (nothing of it survives a restart).
    Spill(crate::store::StoreRef),
}

/// Creates a queue of the type its arguments name, on `backing`.
pub fn create(info: QueueInfo, backing: Backing, services: &Services, now: Millis) -> QueueRef {
    match (info.args.kind, backing) {
        (QueueKind::Stream, Backing::Stream(log)) => {
            stream::StreamQueue::create(info, log, services, now)
        }
        (QueueKind::Stream, _) => {
            let log =
                crate::store::stream::StreamLog::memory(crate::store::stream::DEFAULT_SEGMENT_SIZE);
            stream::StreamQueue::create(info, log, services, now)
        }
        (_, Backing::Store(store) | Backing::Spill(store)) => {
            classic::ClassicQueue::create(info, Some(store), services, now)
        }
        (_, _) => classic::ClassicQueue::create(info, None, services, now),
    }
}
