//! The stream queue (`x-queue-type: stream`): an append-only log that any number of consumers
//! read, each from where it asked (`x-stream-offset`), as often as it wants. Consuming deletes
//! nothing; retention (`x-max-length-bytes`, `x-max-age`) deletes whole segments from the head.
//!
//! The messages live only in the [`StreamLog`]. Each consumer is a reader with a position
//! and a bounded read-ahead buffer (`dispatch.rs`); its batches are read on the pager thread
//! (never on a tokio worker, never under this queue's lock) and arrive as
//! [`StreamQueue::on_batch`]. A published message is readable once its sync round has
//! committed it (the same fsync its publisher's confirm waits for); the log then calls
//! [`CommitListener::committed`] and waiting readers read on.
//!
//! RabbitMQ 3.10.8's rules hold: a consumer needs a prefetch (`basic.qos`) and manual acks;
//! acks only give credit back; nack, reject and requeue change nothing; `basic.get` and
//! `queue.purge` are refused. Every delivery carries the header `x-stream-offset`.

mod dispatch;
pub mod filter;
pub mod offset;

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, Weak};

use super::{
    AfterCancel, Consumer, Enqueued, Got, Queue, QueueInfo, QueueOwner, QueueRef, Services, Settle,
    Waiter,
};
use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::message::{Message, QueuedMessage};
use crate::store::stream::{CommitListener, LogStats, StreamLog};
use offset::StartAt;

/// A stream's numbers, for management and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// Size, segments, first and next offset.
    pub log: LogStats,
    /// Each consumer's tag and the offset of the next message it will be sent.
    pub consumers: Vec<(Arc<str>, u64)>,
    /// Reads for consumers that failed.
    pub read_errors: u64,
}

/// A consumer as the stream sees it: a reader of the log.
#[derive(Debug)]
struct Reader {
    c: Consumer,
    /// Tells batches for this reader from those of an earlier one with the same tag.
    id: u64,
    /// Where its next read starts.
    next: u64,
    /// Skip records older than this (attaching by timestamp).
    min_ts: Millis,
    /// Read ahead, not yet delivered.
    buf: VecDeque<QueuedMessage>,
    buf_bytes: usize,
    /// A read is on its way.
    reading: bool,
    /// The offset of the next message to deliver.
    position: u64,
    /// `x-stream-filter`.
    filter: Option<Arc<filter::Filter>>,
}

#[derive(Debug, Default)]
struct State {
    readers: Vec<Reader>,
    next_reader: u64,
    deleted: bool,
    /// The earliest retention wake-up already asked of the timer service.
    timer_at: Option<Millis>,
    read_errors: u64,
    /// Retention (`max-length-bytes`, `max-age`) from the effective arguments: the declared
    /// ones merged with the policy, kept here so a publish reads no policy.
    retention: (Option<u64>, Option<u64>),
}

fn retention(a: &crate::queue::QueueArgs) -> (Option<u64>, Option<u64>) {
    (a.max_length_bytes, a.max_age)
}

/// A stream queue.
#[derive(Debug)]
pub struct StreamQueue {
    info: QueueInfo,
    log: Arc<StreamLog>,
    services: Services,
    owner: OnceLock<Weak<dyn QueueOwner>>,
    me: Weak<StreamQueue>,
    state: Mutex<State>,
}

impl StreamQueue {
    /// A stream on `log` (empty, or recovered by the log).
    pub fn create(
        info: QueueInfo,
        log: Arc<StreamLog>,
        services: &Services,
        now: Millis,
    ) -> QueueRef {
        let info_retention = retention(&info.policy.get().args);
        let q = Arc::new_cyclic(|me: &Weak<StreamQueue>| Self {
            info,
            log,
            services: services.clone(),
            owner: OnceLock::new(),
            me: me.clone(),
            state: Mutex::new(State {
                retention: info_retention,
                ..State::default()
            }),
        });
        let listener: Weak<dyn CommitListener> = q.me.clone();
        q.log.set_listener(listener);
        {
            let mut st = q.state.lock();
            q.retain(&mut st, now);
        }
        q
    }

    /// Broker time `now` as Unix time (ms): what the log stamps and compares, since its
    /// timestamps outlive the process (and AMQP timestamps are Unix time).
    fn unix(&self, now: Millis) -> Millis {
        now.saturating_add(self.services.clock.epoch_offset())
    }

    /// The rabbit_misc:rs/1 form of the queue's name, for error texts.
    fn rs(&self) -> String {
        format!("queue '{}' in vhost '{}'", self.info.name, self.info.vhost)
    }

    /// Deletes what retention says must go, and asks for a wake-up when the head segment
    /// will be too old.
    fn retain(&self, st: &mut State, now: Millis) {
        let (max_bytes, max_age) = st.retention;
        if max_bytes.is_none() && max_age.is_none() {
            return;
        }
        let (_, due) = self.log.retain(max_bytes, max_age, self.unix(now));
        // A head that is due but could not go yet (the next segment is not committed) goes at
        // the commit (`committed` runs retention too).
        let due = due.map(|at| at.saturating_sub(self.services.clock.epoch_offset()));
        if let Some(at) = due.filter(|at| *at > now) {
            if st.timer_at.is_none_or(|t| at < t || t <= now) {
                st.timer_at = Some(at);
                let me: Weak<dyn Queue> = self.me.clone();
                self.services.timers.schedule(at, me);
            }
        }
    }
}

/// Adds the `x-stream-offset` header (a long) to a message read back from the log, whose
/// properties decoded are `props`.
fn with_offset_header(
    m: Message,
    props: warren_codec::proto::AMQPProperties,
    offset: u64,
) -> Message {
    use warren_codec::proto::AMQPValue;
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        "x-stream-offset".into(),
        AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
    );
    let props = props.with_headers(headers);
    Message {
        raw_properties: warren_codec::encode_properties(&props).into(),
        ..m
    }
}

impl CommitListener for StreamQueue {
    fn committed(&self) {
        let now = self.services.clock.now();
        let mut st = self.state.lock();
        self.retain(&mut st, now);
        self.dispatch(&mut st);
    }
}

impl Queue for StreamQueue {
    fn info(&self) -> &QueueInfo {
        &self.info
    }

    fn attach(&self, owner: Weak<dyn QueueOwner>) {
        let _ = self.owner.set(owner);
    }

    fn publish(&self, msg: Arc<Message>, now: Millis) -> Enqueued {
        let mut st = self.state.lock();
        if st.deleted {
            return Enqueued::Gone;
        }
        let (_, epoch) = self.log.append(&msg, self.unix(now));
        self.retain(&mut st, now);
        if epoch == 0 {
            // Committed at once (a log in memory): readers at the end read on.
            self.dispatch(&mut st);
        }
        Enqueued::Yes(epoch)
    }

    fn consume(&self, consumer: Consumer, now: Millis) -> AmqpResult<()> {
        // rabbit_stream_queue:consume/3, in its order.
        if consumer.credit.limit() == 0 {
            return Err(AmqpError::precondition_failed(format!(
                "consumer prefetch count is not set for '{}'",
                self.rs()
            )));
        }
        if consumer.no_ack {
            return Err(AmqpError::not_implemented(format!(
                "automatic acknowledgement not supported by stream queues {}",
                self.rs()
            )));
        }
        let start = offset::parse(
            &consumer.arguments,
            &self.info.name,
            &self.info.vhost,
            self.unix(now),
        )?;
        let (first, last, next) = self.log.bounds();
        let (from, min_ts) = match start {
            StartAt::First => (first, 0),
            StartAt::Last => (last, 0),
            StartAt::Next => (next, 0),
            StartAt::Offset(o) => (o.max(first).min(next), 0),
            StartAt::Timestamp(t) => (first, t.max(1)),
        };
        let consumer_args = consumer.arguments.clone();
        let mut st = self.state.lock();
        if st.deleted {
            return Err(AmqpError::not_found(format!("no {}", self.rs())));
        }
        let id = st.next_reader;
        st.next_reader += 1;
        st.readers.push(Reader {
            c: consumer,
            id,
            next: from,
            min_ts,
            buf: VecDeque::new(),
            buf_bytes: 0,
            reading: false,
            position: from,
            filter: filter::Filter::from_args(&consumer_args).map(Arc::new),
        });
        self.dispatch(&mut st);
        Ok(())
    }

    fn cancel(&self, conn_id: u64, channel: u16, tag: &str, _now: Millis) -> AfterCancel {
        let mut st = self.state.lock();
        st.readers
            .retain(|r| !(r.c.conn_id == conn_id && r.c.channel == channel && &*r.c.tag == tag));
        AfterCancel::Keep
    }

    fn get(&self, _no_ack: bool, _now: Millis, _waiter: &Waiter) -> Got {
        Got::Refused(AmqpError::not_implemented(format!(
            "basic.get not supported by stream queues {}",
            self.rs()
        )))
    }

    fn settle(&self, _msgs: Vec<QueuedMessage>, _how: Settle, _now: Millis) {
        // Acks only give credit back (the channel released it): read on.
        let mut st = self.state.lock();
        self.dispatch(&mut st);
    }

    fn requeue(&self, _msgs: Vec<QueuedMessage>, _now: Millis) {
        // The stream does not change; the credit is back.
        let mut st = self.state.lock();
        self.dispatch(&mut st);
    }

    fn return_undelivered(&self, _m: QueuedMessage, _was_unacked: bool, _now: Millis) {}

    fn forget(&self, _m: &QueuedMessage) {}

    fn kick(&self, _now: Millis) {
        let mut st = self.state.lock();
        self.dispatch(&mut st);
    }

    fn set_policy(&self, p: crate::policy::Applied, now: Millis) {
        let r = retention(&p.args);
        self.info.policy.set(Arc::new(p));
        let mut st = self.state.lock();
        st.retention = r;
        if !st.deleted {
            // A policy's retention applies at once, as a declare argument would.
            self.retain(&mut st, now);
        }
    }

    fn on_timer(&self, now: Millis) {
        let mut st = self.state.lock();
        if st.timer_at.is_some_and(|t| t <= now) {
            st.timer_at = None;
        }
        self.retain(&mut st, now);
    }

    fn purge(&self, _now: Millis, _waiter: &Waiter) -> (u32, bool) {
        (0, false)
    }

    fn check_purge(&self) -> AmqpResult<()> {
        Err(AmqpError::not_implemented(format!(
            "queue.purge not supported by stream queues {}",
            self.rs()
        )))
    }

    fn check_delete(&self, _if_unused: bool, _if_empty: bool) -> AmqpResult<()> {
        // RabbitMQ 3.10.8 deletes a stream under if-unused and if-empty whatever it holds (it
        // counts neither its consumers nor its messages there).
        Ok(())
    }

    fn mark_deleted(&self) -> u32 {
        let readers = {
            let mut st = self.state.lock();
            st.deleted = true;
            std::mem::take(&mut st.readers)
        };
        for r in readers {
            r.c.sink.cancelled(r.c.channel, r.c.tag.clone());
        }
        self.log.destroy();
        // RabbitMQ 3.10.8 answers delete-ok with 0 for a stream.
        0
    }

    fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    fn message_count(&self) -> u32 {
        let s = self.log.stats();
        u32::try_from(s.committed.saturating_sub(s.first_offset)).unwrap_or(u32::MAX)
    }

    fn consumer_count(&self) -> u32 {
        self.state.lock().readers.len() as u32
    }

    fn consumers(&self) -> Vec<crate::queue::ConsumerInfo> {
        self.state
            .lock()
            .readers
            .iter()
            .map(|r| (&r.c).into())
            .collect()
    }

    fn unacked_count(&self) -> u64 {
        let st = self.state.lock();
        st.readers
            .iter()
            .map(|r| u64::from(r.c.credit.inflight()))
            .sum()
    }

    fn touch(&self, _now: Millis) {}

    fn paging_read_errors(&self) -> u64 {
        self.state.lock().read_errors
    }

    fn stream_stats(&self) -> Option<StreamStats> {
        let st = self.state.lock();
        Some(StreamStats {
            log: self.log.stats(),
            consumers: st
                .readers
                .iter()
                .map(|r| (r.c.tag.clone(), r.position))
                .collect(),
            read_errors: st.read_errors,
        })
    }
}
