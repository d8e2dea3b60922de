//! Consumers and what they receive: `basic.qos`, `basic.consume`/`cancel`, deliveries,
//! `basic.get`, and settling (`ack`, `nack`, `reject`, `recover`) with the prefetch windows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::pause::{Then, Wait};
use super::{ok, random_tag, short, Channel, ChannelConsumer, Unacked, DIRECT_REPLY_TO};
use crate::clock::Millis;
use crate::connection::Ctx;
use crate::error::{AmqpError, AmqpResult};
use crate::events::{arguments, Event};
use crate::message::QueuedMessage;
use crate::metadata::{Command, QueueDef};
use crate::queue::{AfterCancel, Consumer, Credit, Delivery, Got, QueueRef, Settle, Sink, Waiter};
use crate::vhost::channel_pid;
use crate::vhost::{Applied, Origin, Pre};
use warren_codec::encode;
use warren_codec::proto::{basic, AMQPClass, FieldTable};

/// A message going out (a delivery or a get): `acked` or `no_ack` of `st`, and `redeliver`.
fn count_out(
    st: &crate::stats::MessageStats,
    acked: &crate::stats::Counter,
    no_ack_counter: &crate::stats::Counter,
    no_ack: bool,
    redelivered: bool,
) {
    if no_ack {
        no_ack_counter.inc();
    } else {
        acked.inc();
    }
    if redelivered {
        st.redeliver.inc();
    }
}

/// The properties a quorum queue's message goes out with: RabbitMQ 3.10.8 sets the
/// `x-delivery-count` header (a long: how often the message was returned to the queue before)
/// on every `basic.get`, and on a consumer's delivery once the message was returned at least
/// once; other queue types send the publisher's properties unchanged (`None`).
fn delivery_count_props(queue: &QueueRef, m: &QueuedMessage, get: bool) -> Option<bytes::Bytes> {
    if queue.info().args.kind != crate::queue::QueueKind::Quorum {
        return None;
    }
    let returned = m.deliveries.saturating_sub(1);
    if returned == 0 && !get {
        return None;
    }
    crate::message::with_header(
        &m.msg.raw_properties,
        "x-delivery-count",
        warren_codec::proto::AMQPValue::LongLongInt(i64::from(returned)),
    )
}

/// What a client did with delivered messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disposition {
    /// `basic.ack`.
    Ack,
    /// `nack`/`reject`/`recover` with requeue.
    Requeue,
    /// `nack`/`reject` without requeue: dead-lettered (reason `rejected`) or dropped.
    Reject,
}

/// Gives back a delivery that never reached the client (its channel or consumer is gone).
pub(crate) fn return_undelivered(d: Delivery, now: Millis) {
    d.queue.return_undelivered(d.message, !d.no_ack, now);
}

fn group_by_queue(
    entries: impl IntoIterator<Item = Unacked>,
) -> Vec<(QueueRef, Vec<QueuedMessage>)> {
    let mut groups: Vec<(QueueRef, Vec<QueuedMessage>)> = Vec::new();
    for u in entries {
        match groups
            .iter_mut()
            .find(|(q, _)| crate::queue::same(q, &u.queue))
        {
            Some((_, v)) => v.push(u.message),
            None => groups.push((u.queue, vec![u.message])),
        }
    }
    groups
}

pub(super) fn requeue_grouped(entries: impl IntoIterator<Item = Unacked>, now: Millis) {
    for (q, msgs) in group_by_queue(entries) {
        q.requeue(msgs, now);
    }
}

fn settle_grouped(entries: impl IntoIterator<Item = Unacked>, how: Settle, now: Millis) {
    for (q, msgs) in group_by_queue(entries) {
        q.settle(msgs, how, now);
    }
}

/// `x-priority` of `basic.consume` (default 0); must be an integer.
fn consumer_priority(args: &FieldTable) -> AmqpResult<i64> {
    match args.inner().get("x-priority") {
        None => Ok(0),
        Some(v) => crate::value::int_value(v).ok_or_else(|| {
            AmqpError::precondition_failed(format!(
                "invalid arg 'x-priority': expected integer, got {v:?}"
            ))
        }),
    }
}

impl Channel {
    pub(super) fn basic_method(&mut self, ctx: &mut Ctx, m: basic::AMQPMethod) -> AmqpResult<()> {
        let id = self.id;
        let now = ctx.now;
        match m {
            basic::AMQPMethod::Qos(q) => {
                // RabbitMQ 4.3 denies the deprecated feature `global_qos`: a global prefetch
                // is accepted and taken as per-consumer.
                if q.global && ctx.broker.config.amqp.compat.global_qos() {
                    self.channel_credit.set_limit(q.prefetch_count);
                    self.info
                        .global_prefetch_count
                        .store(u32::from(q.prefetch_count), Ordering::Relaxed);
                    self.kick_consumer_queues(now);
                } else {
                    self.prefetch = q.prefetch_count;
                    self.info
                        .prefetch_count
                        .store(u32::from(q.prefetch_count), Ordering::Relaxed);
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                )
            }
            basic::AMQPMethod::Consume(c) => self.consume(ctx, c),
            basic::AMQPMethod::Cancel(c) => {
                let tag: Arc<str> = c.consumer_tag.as_str().into();
                self.cancel_consumer(ctx, &tag);
                if !c.nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Get(g) => self.get(ctx, g),
            basic::AMQPMethod::Ack(a) => {
                let taken = self.take_unacked(a.delivery_tag, a.multiple)?;
                self.settle(taken, Disposition::Ack, now);
                Ok(())
            }
            basic::AMQPMethod::Nack(n) => {
                let taken = self.take_unacked(n.delivery_tag, n.multiple)?;
                let how = if n.requeue {
                    Disposition::Requeue
                } else {
                    Disposition::Reject
                };
                self.settle(taken, how, now);
                Ok(())
            }
            basic::AMQPMethod::Reject(r) => {
                let taken = self.take_unacked(r.delivery_tag, false)?;
                let how = if r.requeue {
                    Disposition::Requeue
                } else {
                    Disposition::Reject
                };
                self.settle(taken, how, now);
                Ok(())
            }
            basic::AMQPMethod::Recover(r) => {
                self.recover(r.requeue, now)?;
                ok(
                    ctx,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                )
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(r.requeue, now),
            basic::AMQPMethod::Publish(_) => Err(AmqpError::internal("publish without content")),
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    /// The hidden queue behind direct reply-to for this channel.
    fn reply_queue(&mut self, ctx: &mut Ctx) -> AmqpResult<QueueRef> {
        let vh = Self::vhost(ctx)?;
        let name = format!(
            "amq.rabbitmq.reply-to.{}",
            crate::vhost::server_named().trim_start_matches("amq.gen-")
        );
        let cmd = Command::DeclareQueue(QueueDef {
            vhost: vh.name.to_string(),
            name,
            durable: false,
            auto_delete: true,
            arguments: FieldTable::default(),
            store_dir: String::new(),
            exclusive_owner: Some(ctx.conn_id),
        });
        let origin = Origin {
            conn_id: Some(ctx.conn_id),
            user: Some(ctx.user.as_str().into()),
            internal: true,
        };
        // Not durable: applied at once.
        match ctx
            .broker
            .submit(cmd, origin, Pre::default(), Box::new(|_| {}))
        {
            Some(Ok(Applied::Queue(d))) => Ok(d.queue),
            Some(Err(e)) => Err(e),
            _ => Err(AmqpError::internal("direct reply-to queue not created")),
        }
    }

    fn consume(&mut self, ctx: &mut Ctx, c: basic::Consume) -> AmqpResult<()> {
        let vh = Self::vhost(ctx)?;
        let q = if c.queue.as_str() == DIRECT_REPLY_TO {
            // Direct reply-to (RabbitMQ's docs/direct-reply-to.md): a hidden exclusive
            // auto-delete queue per channel stands behind the pseudo-queue; publishes whose
            // reply_to is `amq.rabbitmq.reply-to` get its name, and replies routed to it by the
            // default exchange reach this consumer.
            if !c.no_ack {
                return Err(AmqpError::precondition_failed(
                    "reply consumer cannot acknowledge",
                ));
            }
            if self.reply_queue.is_some() {
                return Err(AmqpError::precondition_failed("reply consumer already set"));
            }
            let q = self.reply_queue(ctx)?;
            self.reply_queue = Some(q.name().to_string());
            q
        } else {
            let qname = self.queue_name(c.queue.as_str())?;
            super::permit_queue(ctx, crate::auth::Perm::Read, &qname)?;
            vh.usable_queue(ctx.conn_id, &qname)?
        };
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            random_tag("amq.ctag-").into()
        } else {
            c.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let credit = Credit::new(self.prefetch);
        let sink: Arc<dyn Sink> = ctx.sink.clone();
        // For the consumer.created event; the arguments themselves go to the queue.
        let event_args = vh.wants_events().then(|| arguments(&c.arguments));
        let consumer = Consumer {
            tag: tag.clone(),
            conn_id: ctx.conn_id,
            channel: self.id,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            priority: consumer_priority(&c.arguments)?,
            credit: credit.clone(),
            channel_credit: self.channel_credit.clone(),
            sink,
            arguments: c.arguments,
        };
        q.consume(consumer, ctx.now)?;
        if let Some(event_args) = event_args {
            let e = Event::new("consumer.created", &ctx.user, &vh.name)
                .str("queue", q.name())
                .str("consumer_tag", &tag)
                .bool("ack_required", !c.no_ack)
                .bool("exclusive", c.exclusive)
                .int("prefetch_count", i64::from(self.prefetch))
                .value("arguments", event_args)
                .str("channel", &channel_pid(ctx.conn_id, self.id));
            vh.emit_event(e, ctx.now);
        }
        // consume-ok precedes every delivery: deliveries come back through this connection's
        // event queue, which is read only after this method has been handled.
        if !c.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(&tag),
                })),
            );
        }
        // The consumer timeout is fixed when it starts consuming (one lookup, not one per
        // delivery).
        let (_, timeout) = super::timeout::deadline(ctx, &q);
        self.consumers.insert(
            tag,
            ChannelConsumer {
                queue: q,
                credit,
                timeout,
            },
        );
        self.publish_gauges();
        Ok(())
    }

    fn cancel_consumer(&mut self, ctx: &mut Ctx, tag: &Arc<str>) {
        if let Some(c) = self.consumers.remove(tag) {
            self.publish_gauges();
            let after = c.queue.cancel(ctx.conn_id, self.id, tag, ctx.now);
            let Ok(vh) = Self::vhost(ctx) else { return };
            if vh.wants_events() {
                let e = Event::new("consumer.deleted", &ctx.user, &vh.name)
                    .str("queue", c.queue.name())
                    .str("consumer_tag", tag)
                    .str("channel", &channel_pid(ctx.conn_id, self.id));
                vh.emit_event(e, ctx.now);
            }
            if after == AfterCancel::AutoDelete {
                vh.delete_queue_instance(&c.queue);
            }
        }
    }

    /// The queue of a consumer was deleted: forget it and tell clients that want to know.
    pub fn consumer_cancelled(&mut self, ctx: &mut Ctx, tag: &Arc<str>) {
        if self.closing || self.consumers.remove(tag).is_none() {
            return;
        }
        self.publish_gauges();
        if ctx.cap_consumer_cancel_notify {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: short(tag),
                    nowait: true,
                })),
            );
        }
    }

    /// `basic.get`; pauses when the queue's messages are all on disk and a batch is being read.
    pub(super) fn get(&mut self, ctx: &mut Ctx, g: basic::Get) -> AmqpResult<()> {
        let vh = Self::vhost(ctx)?;
        let qname = self.queue_name(g.queue.as_str())?;
        super::permit_queue(ctx, crate::auth::Perm::Read, &qname)?;
        let q = vh.usable_queue(ctx.conn_id, &qname)?;
        let waiter = Waiter {
            sink: ctx.sink.clone(),
            channel: self.id,
        };
        let (m, left) = match q.get(g.no_ack, ctx.now, &waiter) {
            Got::Message(m, left) => (m, left),
            Got::Empty => {
                self.info.stats.get_empty.inc();
                q.info().stats.get_empty.inc();
                return ok(
                    ctx,
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                );
            }
            Got::Wait => {
                self.pause(Wait::Woken, Then::Get(g));
                return Ok(());
            }
            Got::Refused(e) => return Err(e),
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        for st in [&self.info.stats, &q.info().stats] {
            count_out(st, &st.get, &st.get_no_ack, g.no_ack, m.redelivered);
        }
        let get_ok = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: tag,
            redelivered: m.redelivered,
            exchange: short(&m.msg.exchange),
            routing_key: short(&m.msg.routing_key),
            message_count: left,
        }));
        let counted = delivery_count_props(&q, &m, true);
        encode::encode_content(
            &mut ctx.out,
            self.id,
            &get_ok,
            counted.as_ref().unwrap_or(&m.msg.raw_properties),
            &m.msg.body,
            ctx.frame_max,
        );
        if !g.no_ack {
            let (deadline, timeout) = super::timeout::deadline(ctx, &q);
            self.track_deadline(deadline);
            self.unacked.insert(
                tag,
                Unacked {
                    queue: q,
                    message: m,
                    credit: None,
                    deadline,
                    timeout,
                },
            );
            self.publish_gauges();
        }
        Ok(())
    }

    /// A queue hands us a message for one of our consumers.
    pub fn deliver(&mut self, ctx: &mut Ctx, d: Delivery) {
        if self.closing {
            return return_undelivered(d, ctx.now);
        }
        let Some(c) = self.consumers.get(&d.consumer_tag) else {
            if !d.no_ack {
                // The window the delivery took is free again: other consumers of this channel
                // that wait on it are woken (their queues kicked); the returned message wakes
                // its own queue.
                self.channel_credit.release();
                return_undelivered(d, ctx.now);
                if self.channel_credit.limit() != 0 {
                    self.kick_consumer_queues(ctx.now);
                }
                return;
            }
            return return_undelivered(d, ctx.now);
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let m = &d.message;
        let counted = delivery_count_props(&d.queue, m, false);
        for st in [&self.info.stats, &d.queue.info().stats] {
            count_out(st, &st.deliver, &st.deliver_no_ack, d.no_ack, m.redelivered);
        }
        encode::encode_delivery_zero_copy(
            &mut ctx.out,
            &mut ctx.chunks,
            self.id,
            &d.consumer_tag,
            tag,
            m.redelivered,
            &m.msg.exchange,
            &m.msg.routing_key,
            counted.as_ref().unwrap_or(&m.msg.raw_properties),
            &m.msg.body,
            ctx.frame_max,
        );
        if d.no_ack {
            d.queue.forget(&d.message);
        } else {
            let credit = Some(c.credit.clone());
            let timeout = c.timeout;
            let deadline = if timeout == 0 {
                0
            } else {
                ctx.now.saturating_add(timeout)
            };
            self.track_deadline(deadline);
            self.unacked.insert(
                tag,
                Unacked {
                    queue: d.queue,
                    message: d.message,
                    credit,
                    deadline,
                    timeout,
                },
            );
            self.publish_gauges();
        }
    }

    /// Removes the entries an ack/nack/reject names. Unknown tags are 406, as on RabbitMQ.
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<(u64, Unacked)>> {
        if multiple {
            if tag == 0 {
                return Ok(std::mem::take(&mut self.unacked).into_iter().collect());
            }
            if !self.unacked.contains_key(&tag) {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            let rest = self.unacked.split_off(&(tag + 1));
            let taken = std::mem::replace(&mut self.unacked, rest);
            Ok(taken.into_iter().collect())
        } else {
            match self.unacked.remove(&tag) {
                Some(u) => Ok(vec![(tag, u)]),
                None => Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                ))),
            }
        }
    }

    /// Settles the taken entries, or holds them until commit in a transaction.
    fn settle(&mut self, taken: Vec<(u64, Unacked)>, how: Disposition, now: Millis) {
        if let Some(tx) = &mut self.tx {
            tx.settles
                .extend(taken.into_iter().map(|(t, u)| (t, u, how)));
            return;
        }
        let entries: Vec<Unacked> = taken.into_iter().map(|(_, u)| u).collect();
        self.publish_gauges();
        self.dispose(entries, how, now);
        if self.channel_credit_limited() {
            self.kick_consumer_queues(now);
        }
    }

    pub(super) fn dispose(&self, entries: Vec<Unacked>, how: Disposition, now: Millis) {
        if entries.is_empty() {
            return;
        }
        self.release_credit(&entries);
        if how == Disposition::Ack {
            self.info.stats.ack.add(entries.len() as u64);
            for u in &entries {
                u.queue.info().stats.ack.inc();
            }
        }
        match how {
            Disposition::Requeue => requeue_grouped(entries, now),
            Disposition::Ack => settle_grouped(entries, Settle::Ack, now),
            Disposition::Reject => settle_grouped(entries, Settle::Reject, now),
        }
    }

    fn release_credit(&self, entries: &[Unacked]) {
        for u in entries {
            if let Some(c) = &u.credit {
                c.release();
                self.channel_credit.release();
            }
        }
    }

    /// With a channel-wide window, credit freed by one queue's ack may unblock another queue.
    fn channel_credit_limited(&self) -> bool {
        self.channel_credit.limit() != 0 && self.consumers.len() > 1
    }

    /// Tries every queue this channel consumes from again.
    pub fn kick_consumer_queues(&self, now: Millis) {
        let mut seen: Vec<*const ()> = Vec::new();
        for c in self.consumers.values() {
            let p = Arc::as_ptr(&c.queue).cast::<()>();
            if !seen.contains(&p) {
                seen.push(p);
                c.queue.kick(now);
            }
        }
    }

    fn recover(&mut self, requeue: bool, now: Millis) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let all: Vec<Unacked> = std::mem::take(&mut self.unacked).into_values().collect();
        self.release_credit(&all);
        requeue_grouped(all, now);
        if self.channel_credit_limited() {
            // Requeued queues dispatch themselves; consumers of other queues waiting on the
            // channel-wide window need a kick.
            self.kick_consumer_queues(now);
        }
        Ok(())
    }
}
