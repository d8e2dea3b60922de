//! The classic queue: its ready messages, consumers, delivery loop, and the features that act
//! on them (TTL, expiry, length limits, dead-lettering, priorities, single active consumer,
//! consumer priorities, paging of long backlogs).
//!
//! Each queue owns its state behind one short-lived mutex (see `docs/ARCHITECTURE.md` for why a
//! lock and not an actor task). Every operation is synchronous, takes the time from its
//! caller and never awaits or touches the disk: publishers enqueue and dispatch in their own
//! task; deliveries go to the consumer's [`Sink`](super::Sink); paged batches are read by the
//! pager thread and arrive as [`ClassicQueue::paged`].
//!
//! Files: this one (the state and the [`Queue`] operations), `dispatch.rs` (consumer choice
//! and the delivery loop), `paging.rs` (the on-disk part of long backlogs), `limits.rs`
//! (TTL, length limits, timers), `ready.rs` (the ready list).
//!
//! Lock rule: a queue lock is never held while taking the vhost topology lock or another
//! queue's lock. Work that needs them (dead-lettering, deleting an expired queue) is collected
//! under the lock and carried out after it is released.

mod dispatch;
mod limits;
mod paging;
mod ready;

use parking_lot::Mutex;
use std::sync::{Arc, OnceLock, Weak};

use super::{
    AfterCancel, Consumer, Enqueued, Got, Overflow, Queue, QueueArgs, QueueInfo, QueueOwner,
    QueueRef, Reason, Services, Settle, Waiter,
};
use crate::clock::Millis;
use crate::dedup::Present;
use crate::error::{AmqpError, AmqpResult};
use crate::message::{amq_props, Message, QueuedMessage};
use crate::store::StoreRef;
use paging::Tail;
use ready::Ready;
use warren_codec::proto::FieldTable;

/// A message leaving the queue for a dead-letter exchange (or for nowhere, without one).
#[derive(Debug)]
struct Dead {
    message: QueuedMessage,
    reason: Reason,
    /// The message is in this queue's store (so the store must forget it).
    stored: bool,
}

#[derive(Debug)]
struct State {
    /// The effective arguments: the declared ones merged with the queue's policy.
    args: QueueArgs,
    ready: Ready,
    ready_bytes: u64,
    unacked: u64,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    had_consumer: bool,
    /// Last time the queue was used (declared, consumed from, got from): for `x-expires`.
    last_used: Millis,
    /// The earliest wake-up already asked of the timer service.
    timer_at: Option<Millis>,
    /// Ready messages that are only on disk (a paged backlog), after all of `ready`.
    tail: Tail,
    /// Channels waiting for a paged batch (`basic.get` found nothing in memory) or for a
    /// paged backlog to be dropped (purge).
    waiters: Vec<Waiter>,
}

/// A classic queue.
#[derive(Debug)]
pub struct ClassicQueue {
    info: QueueInfo,
    /// Where persistent messages of a durable queue are stored, or a non-durable queue's
    /// spill store for its paged backlog (`persists()` false); none: nothing on disk.
    store: Option<StoreRef>,
    services: Services,
    /// The keys of its messages, when it deduplicates (`x-message-deduplication`).
    dedup: Option<Present>,
    /// The vhost, for dead-lettering and self-deletion (`x-expires`).
    owner: OnceLock<Weak<dyn QueueOwner>>,
    me: Weak<ClassicQueue>,
    state: Mutex<State>,
}

impl ClassicQueue {
    /// A queue whose persistent messages go to `store` (if any); messages the store recovered
    /// are loaded (delivered ones come back with `redelivered=true`).
    pub fn create(
        info: QueueInfo,
        store: Option<StoreRef>,
        services: &Services,
        now: Millis,
    ) -> QueueRef {
        let mut st = State {
            args: info.policy.get().args.clone(),
            ready: Ready::new(info.args.max_priority),
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
            waiters: Vec::new(),
        };
        let dedup = info.args.dedup.as_ref().map(Present::of);
        if let Some(s) = &store {
            st.next_seq = s.next_id();
            for r in s.take_recovered() {
                if let Some(d) = &dedup {
                    d.hold(headers(&r.message).as_ref());
                }
                st.next_seq = st.next_seq.max(r.id + 1);
                st.ready_bytes += r.message.size() as u64;
                let m = limits::recovered_message(&st.args, r, &services.clock);
                st.ready.push_back(m);
            }
            if let Some((cursor, count, bytes)) = s.take_recovered_tail() {
                st.tail = Tail::recovered(cursor, count, bytes);
            }
        }
        let q = Arc::new_cyclic(|me| Self {
            info,
            store,
            services: services.clone(),
            dedup,
            owner: OnceLock::new(),
            me: me.clone(),
            state: Mutex::new(st),
        });
        {
            let mut st = q.state.lock();
            q.schedule(&mut st);
            q.request_page(&mut st);
        }
        q
    }

    /// This queue as a handle.
    fn handle(&self) -> Option<QueueRef> {
        self.me.upgrade().map(|q| q as QueueRef)
    }

    /// The store of a message of this queue that is in it.
    fn store_for(&self, m: &QueuedMessage) -> Option<&StoreRef> {
        self.store.as_ref().filter(|_| m.stored)
    }

    fn total_len(st: &State) -> u64 {
        st.ready.len() as u64 + st.tail.count
    }

    fn total_bytes(st: &State) -> u64 {
        st.ready_bytes + st.tail.bytes
    }

    /// Forgets messages that left the queue for good, in the store and the dedup keys.
    fn store_ack(&self, msgs: &[QueuedMessage]) {
        for m in msgs {
            if let Some(s) = self.store_for(m) {
                s.ack(m.seq);
            }
        }
        if let Some(d) = &self.dedup {
            for m in msgs {
                d.release(headers(&m.msg).as_ref());
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

    /// Carries out dead-lettering collected under the lock (no lock held here).
    fn dead_letter(&self, dead: Vec<Dead>, now: Millis) {
        if dead.is_empty() {
            return;
        }
        let owner = self.owner.get().and_then(Weak::upgrade);
        // The dead-letter target as the queue's policy has it now (read once per batch).
        let (dlx, dlrk) = {
            let st = self.state.lock();
            (
                st.args.dead_letter_exchange.clone(),
                st.args.dead_letter_routing_key.clone(),
            )
        };
        for d in dead {
            if let (Some(vh), Some(dlx)) = (&owner, &dlx) {
                let dl = super::deadletter::dead_lettered(
                    &d.message.msg,
                    d.reason,
                    &self.info.name,
                    dlx,
                    dlrk.as_deref(),
                );
                vh.dead_letter(dl, d.reason, now);
            }
            if d.stored {
                self.store_ack(std::slice::from_ref(&d.message));
            } else if let Some(dd) = &self.dedup {
                dd.release(headers(&d.message.msg).as_ref());
            }
        }
    }

    /// Wakes the channels waiting on this queue (after the lock is released).
    fn wake(waiters: Vec<Waiter>) {
        for w in waiters {
            w.sink.wake(w.channel);
        }
    }
}

impl Queue for ClassicQueue {
    fn info(&self) -> &QueueInfo {
        &self.info
    }

    fn attach(&self, owner: Weak<dyn QueueOwner>) {
        let _ = self.owner.set(owner);
    }

    fn message_count(&self) -> u32 {
        u32::try_from(Self::total_len(&self.state.lock())).unwrap_or(u32::MAX)
    }

    fn consumer_count(&self) -> u32 {
        u32::try_from(self.state.lock().consumers.len()).unwrap_or(u32::MAX)
    }

    fn ready_bytes(&self) -> u64 {
        Self::total_bytes(&self.state.lock())
    }

    fn consumers(&self) -> Vec<crate::queue::ConsumerInfo> {
        self.state.lock().consumers.iter().map(Into::into).collect()
    }

    fn unacked_count(&self) -> u64 {
        self.state.lock().unacked
    }

    fn set_policy(&self, p: crate::policy::Applied, now: Millis) {
        let args = p.args.clone();
        self.info.policy.set(Arc::new(p));
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            st.args = args;
            // A lower limit trims at once; a shorter x-expires is rescheduled.
            self.enforce_limits(&mut st, &mut dead);
            self.schedule(&mut st);
        }
        self.dead_letter(dead, now);
    }

    fn touch(&self, now: Millis) {
        let mut st = self.state.lock();
        st.last_used = now;
        self.schedule(&mut st);
    }

    fn paging_read_errors(&self) -> u64 {
        self.state.lock().tail.read_errors
    }

    fn paged_out(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.tail.count, st.tail.bytes)
    }

    fn publish(&self, msg: Arc<Message>, now: Millis) -> Enqueued {
        let mut dead = Vec::new();
        let result = {
            let mut st = self.state.lock();
            if st.deleted {
                return Enqueued::Gone;
            }
            self.expire_head(&mut st, now, &mut dead);
            let keyed = self.dedup.as_ref().map(|d| (d, headers(&msg)));
            if keyed.as_ref().is_some_and(|(d, h)| !d.admit(h.as_ref())) {
                // A duplicate of a queued message: dropped, and confirmed as the plugin does.
                drop(st);
                self.dead_letter(dead, now);
                return Enqueued::Yes(0);
            }
            let size = msg.size() as u64;
            let overflow = st.args.overflow;
            let full = st
                .args
                .max_length
                .is_some_and(|m| Self::total_len(&st) >= m)
                || st
                    .args
                    .max_length_bytes
                    .is_some_and(|m| Self::total_bytes(&st) + size > m);
            if full && overflow != Overflow::DropHead {
                if overflow == Overflow::RejectPublishDlx {
                    // Its dedup key is released when it is dead-lettered.
                    dead.push(Dead {
                        message: QueuedMessage::new(0, msg, 0),
                        reason: Reason::Maxlen,
                        stored: false,
                    });
                } else if let Some((d, h)) = &keyed {
                    d.release(h.as_ref());
                }
                Enqueued::Rejected
            } else {
                let seq = st.next_seq;
                st.next_seq += 1;
                let expires_at = limits::expiry(&st.args, &msg, now);
                let epoch = match self.page_out(&mut st, seq, &msg, expires_at) {
                    Some(epoch) => epoch,
                    None => {
                        let mut m = QueuedMessage::new(seq, msg, 0);
                        let mut epoch = 0;
                        if let Some(s) = self
                            .store
                            .as_ref()
                            .filter(|s| m.msg.persistent && s.persists())
                        {
                            // On disk the expiry is absolute (wall clock), so the TTL keeps
                            // counting across a restart.
                            epoch = s.append(seq, &m.msg, self.services.clock.to_wall(expires_at));
                            m.stored = true;
                        }
                        m.expires_at = expires_at;
                        st.ready_bytes += size;
                        st.ready.push_back(m);
                        epoch
                    }
                };
                self.dispatch(&mut st, now, &mut dead);
                self.enforce_limits(&mut st, &mut dead);
                // A TTL of 0 means "deliver now or never": what dispatch could not place expires.
                self.expire_head(&mut st, now + 1, &mut dead);
                self.schedule(&mut st);
                Enqueued::Yes(epoch)
            }
        };
        self.dead_letter(dead, now);
        result
    }

    fn consume(&self, consumer: Consumer, now: Millis) -> AmqpResult<()> {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(AmqpError::no_queue(&self.info.name, &self.info.vhost));
            }
            if st.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !st.consumers.is_empty())
            {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.info.name, self.info.vhost
                )));
            }
            st.consumers.push(consumer);
            st.had_consumer = true;
            st.last_used = now;
            self.dispatch(&mut st, now, &mut dead);
        }
        self.dead_letter(dead, now);
        Ok(())
    }

    fn cancel(&self, conn_id: u64, channel: u16, tag: &str, now: Millis) -> AfterCancel {
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
                st.last_used = now;
                // With a single active consumer, the next one takes over now.
                self.dispatch(&mut st, now, &mut dead);
                self.schedule(&mut st);
            }
            if self.info.options.auto_delete
                && st.had_consumer
                && st.consumers.is_empty()
                && !st.deleted
            {
                AfterCancel::AutoDelete
            } else {
                AfterCancel::Keep
            }
        };
        self.dead_letter(dead, now);
        after
    }

    fn get(&self, no_ack: bool, now: Millis, waiter: &Waiter) -> Got {
        let mut dead = Vec::new();
        let got = {
            let mut st = self.state.lock();
            st.last_used = now;
            self.expire_head(&mut st, now, &mut dead);
            self.request_page(&mut st);
            let got = match st.ready.pop_front() {
                Some(mut m) => {
                    st.ready_bytes = st.ready_bytes.saturating_sub(m.msg.size() as u64);
                    m.deliveries += 1;
                    if no_ack {
                        self.store_ack(std::slice::from_ref(&m));
                    } else {
                        st.unacked += 1;
                        self.mark_delivered(&m);
                    }
                    let left = u32::try_from(Self::total_len(&st)).unwrap_or(u32::MAX);
                    Got::Message(m, left)
                }
                // Paged messages are on their way: wait for them (unless reading them failed:
                // then there is nothing to give now).
                None if st.tail.count > 0 && st.tail.retry_at().is_none() => {
                    st.waiters.push(waiter.clone());
                    Got::Wait
                }
                None => Got::Empty,
            };
            self.schedule(&mut st);
            got
        };
        self.dead_letter(dead, now);
        got
    }

    fn settle(&self, msgs: Vec<QueuedMessage>, how: Settle, now: Millis) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
            self.dispatch(&mut st, now, &mut dead);
        }
        match how {
            Settle::Ack => self.store_ack(&msgs),
            Settle::Reject => dead.extend(msgs.into_iter().map(|message| Dead {
                message,
                reason: Reason::Rejected,
                stored: true,
            })),
        }
        self.dead_letter(dead, now);
    }

    fn forget(&self, m: &QueuedMessage) {
        self.store_ack(std::slice::from_ref(m));
    }

    fn requeue(&self, msgs: Vec<QueuedMessage>, now: Millis) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            st.unacked = st.unacked.saturating_sub(msgs.len() as u64);
            if st.deleted {
                return;
            }
            for mut m in msgs {
                if st
                    .args
                    .delivery_limit
                    .or(st.args.default_delivery_limit)
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
        self.dead_letter(dead, now);
    }

    fn return_undelivered(&self, mut m: QueuedMessage, was_unacked: bool, now: Millis) {
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
            self.dispatch(&mut st, now, &mut dead);
        }
        self.dead_letter(dead, now);
    }

    fn kick(&self, now: Millis) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            self.dispatch(&mut st, now, &mut dead);
        }
        self.dead_letter(dead, now);
    }

    fn on_timer(&self, now: Millis) {
        let mut dead = Vec::new();
        let expire_queue = {
            let mut st = self.state.lock();
            st.timer_at = None;
            if st.deleted {
                return;
            }
            self.expire_head(&mut st, now + 1, &mut dead);
            if st.tail.retry_due(now) {
                self.request_page(&mut st);
            }
            let unused = st
                .args
                .expires
                .is_some_and(|e| st.consumers.is_empty() && now >= st.last_used + e);
            if !unused {
                self.schedule(&mut st);
            }
            unused
        };
        self.dead_letter(dead, now);
        if expire_queue {
            if let (Some(vh), Some(me)) = (self.owner.get().and_then(Weak::upgrade), self.handle())
            {
                tracing::debug!(queue = %self.info.name, "queue expired (x-expires)");
                vh.expired(&me);
            }
        }
    }

    fn purge(&self, _now: Millis, waiter: &Waiter) -> (u32, bool) {
        let mut st = self.state.lock();
        let purged = st.ready.drain();
        st.ready_bytes = 0;
        self.store_ack(&purged);
        if let Some(d) = &self.dedup {
            // Paged messages are dropped unread: no key survives a purge.
            d.clear();
        }
        let n = purged.len() as u64 + st.tail.count;
        let wait = self.drop_tail(&mut st, waiter);
        (u32::try_from(n).unwrap_or(u32::MAX), wait)
    }

    fn check_delete(&self, if_unused: bool, if_empty: bool) -> AmqpResult<()> {
        let st = self.state.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{}' in vhost '{}' in use",
                self.info.name, self.info.vhost
            )));
        }
        if if_empty && Self::total_len(&st) > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{}' in vhost '{}' not empty",
                self.info.name, self.info.vhost
            )));
        }
        Ok(())
    }

    fn mark_deleted(&self) -> u32 {
        let (waiters, consumers, n) = {
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
            (
                std::mem::take(&mut st.waiters),
                std::mem::take(&mut st.consumers),
                n,
            )
        };
        for c in consumers {
            c.sink.cancelled(c.channel, c.tag.clone());
        }
        Self::wake(waiters);
        n
    }

    fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }
}

/// A message's headers (decoded only for deduplicating queues).
fn headers(m: &Message) -> Option<FieldTable> {
    amq_props(&m.raw_properties).and_then(|p| p.headers().clone())
}

#[cfg(test)]
mod tests;
