//! One AMQP channel: content assembly, every class's methods, consumers, the unacked map,
//! prefetch windows, publisher confirms and transactions.
//!
//! A channel is owned by its connection task and never awaits. Deliveries arrive from queues as
//! [`ConnEvent::Deliver`](super::ConnEvent) and get their delivery tags here.

use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use tracing::debug;

use super::Ctx;
use crate::error::{AmqpError, AmqpResult};
use crate::message::{Message, QueuedMessage};
use crate::queue::{AfterCancel, Consumer, Credit, Delivery, Enqueued, Queue, Settle};
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use warren_codec::proto::{
    access, basic, channel, confirm, exchange, queue, tx, AMQPClass, AMQPProperties,
};
use warren_codec::{
    encode, method, Command, ContentAssembler, ContentHeader, DirectBody, ReplyCode,
};

/// What a client did with delivered messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// `basic.ack`.
    Ack,
    /// `nack`/`reject`/`recover` with requeue.
    Requeue,
    /// `nack`/`reject` without requeue: dead-lettered (reason `rejected`) or dropped.
    Reject,
}

/// The pseudo-queue of direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A delivered, not yet settled message.
#[derive(Debug)]
struct Unacked {
    queue: Arc<Queue>,
    message: QueuedMessage,
    /// The consumer window it counts against (none for `basic.get`).
    credit: Option<Arc<Credit>>,
}

#[derive(Debug)]
struct ChannelConsumer {
    queue: Arc<Queue>,
    credit: Arc<Credit>,
}

/// The queues a publish goes to (shared with the channel's route cache).
type Targets = Arc<[Arc<Queue>]>;

/// A publish held until `tx.commit`.
#[derive(Debug)]
struct TxPublish {
    queues: Targets,
    message: Arc<Message>,
    mandatory: bool,
}

#[derive(Debug, Default)]
struct TxState {
    publishes: Vec<TxPublish>,
    /// Settlements held until commit.
    settles: Vec<(u64, Unacked, Disposition)>,
}

#[derive(Debug, Default)]
struct ConfirmState {
    next_seq: u64,
    /// (sequence number, ack?) decided and waiting to be sent at the end of this turn.
    pending: Vec<(u64, bool)>,
    /// Persistent messages waiting for their sync epoch: (sequence number, epoch), in order.
    waiting: VecDeque<(u64, u64)>,
}

/// One channel.
#[derive(Debug)]
pub(crate) struct Channel {
    id: u16,
    closing: bool,
    assembler: ContentAssembler,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: FxHashMap<Arc<str>, ChannelConsumer>,
    prefetch: u16,
    channel_credit: Arc<Credit>,
    confirm: Option<ConfirmState>,
    tx: Option<TxState>,
    last_queue: Option<String>,
    /// The hidden queue behind this channel's direct reply-to consumer
    /// (`amq.rabbitmq.reply-to`), once it consumes from it.
    reply_queue: Option<String>,
    /// The last route computed for a publish without headers: repeated publishes to the same
    /// exchange and key skip the topology lock while the topology version is unchanged.
    route_cache: Option<RouteCache>,
    /// A `tx.commit` whose `commit-ok` waits for this sync epoch.
    commit_waiting: Option<u64>,
}

#[derive(Debug)]
struct RouteCache {
    version: u64,
    exchange: String,
    routing_key: String,
    queues: Targets,
    exchange_name: Arc<str>,
}

/// `a == b`, without calling `memcmp` for two empty strings (the default exchange's name):
/// glibc's AVX-512 `memcmp` does a masked load even for length 0, and from the dangling pointer
/// of an empty `String` that costs a fault-suppression assist of hundreds of cycles (it was
/// ~10% of the broker's CPU in the 16 B publish profile).
fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

fn ok(ctx: &mut Ctx, ch: u16, m: AMQPClass) -> AmqpResult<()> {
    ctx.send_method(ch, &m);
    Ok(())
}

fn short(s: &str) -> warren_codec::proto::ShortString {
    // Names and tags come from short strings already, so they fit; cut defensively.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

fn random_tag(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let s: String = (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{s}")
}

/// Gives back a delivery that never reached the client (its channel or consumer is gone).
pub(crate) fn return_undelivered(d: Delivery) {
    d.queue.return_undelivered(d.message, !d.no_ack);
}

impl Channel {
    pub fn new(id: u16) -> Self {
        Self {
            id,
            closing: false,
            assembler: ContentAssembler::new(),
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: FxHashMap::default(),
            prefetch: 0,
            channel_credit: Credit::new(0),
            confirm: None,
            tx: None,
            last_queue: None,
            reply_queue: None,
            route_cache: None,
            commit_waiting: None,
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    fn vhost(ctx: &Ctx) -> AmqpResult<Arc<VHost>> {
        ctx.vhost
            .clone()
            .ok_or_else(|| AmqpError::internal("channel without vhost"))
    }

    /// Sends `channel.close` for a soft error and releases the channel's resources. The channel
    /// stays (closing) until the client's `close-ok`, so its number is not reused early.
    pub fn close_with(&mut self, ctx: &mut Ctx, e: AmqpError) {
        debug!(channel = self.id, code = e.code.code(), text = %e.text, "closing channel");
        self.teardown(ctx);
        self.closing = true;
        ctx.send_method(
            self.id,
            &AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code.code(),
                reply_text: short(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Cancels consumers (auto-deleting queues that lose their last one) and requeues every
    /// unacked message, as RabbitMQ does when a channel closes.
    pub fn teardown(&mut self, ctx: &mut Ctx) {
        self.assembler.reset();
        let vhost = ctx.vhost.clone();
        for (tag, c) in self.consumers.drain() {
            if c.queue.cancel(ctx.conn_id, self.id, &tag) == AfterCancel::AutoDelete {
                if let Some(vh) = &vhost {
                    vh.delete_queue_instance(&c.queue);
                }
            }
        }
        if let Some(tx) = self.tx.take() {
            for (tag, u, _) in tx.settles {
                self.unacked.insert(tag, u);
            }
        }
        let all = std::mem::take(&mut self.unacked);
        requeue_grouped(all.into_values());
        if let Some(c) = &mut self.confirm {
            c.pending.clear();
            c.waiting.clear();
        }
    }

    pub fn handle_header(&mut self, ctx: &mut Ctx, header: ContentHeader) -> AmqpResult<()> {
        match self
            .assembler
            .handle_header(header)
            .map_err(AmqpError::from)?
        {
            Some(cmd) => self.handle_command(ctx, cmd),
            None => Ok(()),
        }
    }

    pub fn handle_body(&mut self, ctx: &mut Ctx, payload: Bytes) -> AmqpResult<()> {
        match self
            .assembler
            .handle_body(payload)
            .map_err(AmqpError::from)?
        {
            Some(cmd) => self.handle_command(ctx, cmd),
            None => Ok(()),
        }
    }

    /// Lends the body buffer for a body frame of `len` payload bytes to be read into directly
    /// (see `ContentAssembler::begin_direct`).
    pub fn begin_direct(&mut self, len: usize) -> Option<DirectBody> {
        if self.closing {
            return None;
        }
        self.assembler.begin_direct(len)
    }

    /// Takes back the body buffer after a body frame of `len` bytes was read into it.
    pub fn finish_direct(&mut self, ctx: &mut Ctx, buf: BytesMut, len: usize) -> AmqpResult<()> {
        match self
            .assembler
            .finish_direct(buf, len)
            .map_err(AmqpError::from)?
        {
            Some(cmd) => self.handle_command(ctx, cmd),
            None => Ok(()),
        }
    }

    pub fn handle_method(&mut self, ctx: &mut Ctx, m: AMQPClass) -> AmqpResult<()> {
        match self.assembler.handle_method(m).map_err(AmqpError::from)? {
            Some(cmd) => self.handle_command(ctx, cmd),
            None => Ok(()),
        }
    }

    fn handle_command(&mut self, ctx: &mut Ctx, cmd: Command) -> AmqpResult<()> {
        match cmd {
            Command::Method(m) => {
                let ids = method::ids(&m);
                self.dispatch_method(ctx, m).map_err(|e| e.on(ids))
            }
            Command::Content {
                method: AMQPClass::Basic(basic::AMQPMethod::Publish(p)),
                header,
                body,
            } => self
                .publish(ctx, p, header, body)
                .map_err(|e| e.on((60, 40))),
            Command::Content { method: m, .. } => {
                Err(AmqpError::command_invalid("unimplemented method").on(method::ids(&m)))
            }
        }
    }

    /// Resolves an empty queue name to the channel's most recently declared queue.
    fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    fn dispatch_method(&mut self, ctx: &mut Ctx, m: AMQPClass) -> AmqpResult<()> {
        let id = self.id;
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                if !f.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                )
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => ok(
                ctx,
                id,
                AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
            ),
            AMQPClass::Exchange(m) => self.exchange_method(ctx, m),
            AMQPClass::Queue(m) => self.queue_method(ctx, m),
            AMQPClass::Basic(m) => self.basic_method(ctx, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirm.is_none() {
                    self.confirm = Some(ConfirmState {
                        next_seq: 1,
                        ..ConfirmState::default()
                    });
                }
                if !s.nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(ctx, m),
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    fn exchange_method(&mut self, ctx: &mut Ctx, m: exchange::AMQPMethod) -> AmqpResult<()> {
        use exchange::AMQPMethod as X;
        let vh = Self::vhost(ctx)?;
        let (nowait, reply) = match m {
            X::Declare(d) => {
                vh.declare_exchange(&ExchangeDeclare {
                    name: d.exchange.to_string(),
                    kind: d.kind.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                })?;
                (d.nowait, X::DeclareOk(exchange::DeclareOk {}))
            }
            X::Delete(d) => {
                vh.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                (d.nowait, X::DeleteOk(exchange::DeleteOk {}))
            }
            X::Bind(b) => {
                let (dst, src, key) = (
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                );
                vh.bind_exchange(dst, src, key, &b.arguments, true)?;
                (b.nowait, X::BindOk(exchange::BindOk {}))
            }
            X::Unbind(b) => {
                let (dst, src, key) = (
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                );
                vh.bind_exchange(dst, src, key, &b.arguments, false)?;
                (b.nowait, X::UnbindOk(exchange::UnbindOk {}))
            }
            _ => return Err(AmqpError::command_invalid("unimplemented method")),
        };
        if !nowait {
            ctx.send_method(self.id, &AMQPClass::Exchange(reply));
        }
        Ok(())
    }

    fn queue_method(&mut self, ctx: &mut Ctx, m: queue::AMQPMethod) -> AmqpResult<()> {
        let vh = Self::vhost(ctx)?;
        let id = self.id;
        match m {
            queue::AMQPMethod::Declare(d) if d.passive && d.queue.as_str() == DIRECT_REPLY_TO => {
                // The pseudo-queue always exists (RabbitMQ answers a passive declare of it).
                if !d.nowait {
                    let ok = queue::DeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 0,
                    };
                    ctx.send_method(id, &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)));
                }
                Ok(())
            }
            queue::AMQPMethod::Declare(d) => {
                let name = if d.passive {
                    self.queue_name(d.queue.as_str())?
                } else {
                    d.queue.to_string()
                };
                let r = vh.declare_queue(
                    ctx.conn_id,
                    &QueueDeclare {
                        name,
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: d.arguments,
                    },
                )?;
                self.last_queue = Some(r.queue.name.to_string());
                if !d.nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: short(&r.queue.name),
                            message_count: r.message_count,
                            consumer_count: r.consumer_count,
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Bind(b) => {
                let qname = self.queue_name(b.queue.as_str())?;
                // RabbitMQ: an empty queue name *and* key bind with the queue's name as key.
                let key = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                    qname.clone()
                } else {
                    b.routing_key.to_string()
                };
                vh.bind_queue(
                    ctx.conn_id,
                    &qname,
                    b.exchange.as_str(),
                    &key,
                    &b.arguments,
                    true,
                )?;
                if !b.nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Unbind(b) => {
                let qname = self.queue_name(b.queue.as_str())?;
                vh.bind_queue(
                    ctx.conn_id,
                    &qname,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    &b.arguments,
                    false,
                )?;
                ok(
                    ctx,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                )
            }
            queue::AMQPMethod::Purge(p) => {
                let qname = self.queue_name(p.queue.as_str())?;
                let q = vh.usable_queue(ctx.conn_id, &qname)?;
                let n = q.purge();
                if !p.nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: n,
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Delete(d) => {
                let qname = self.queue_name(d.queue.as_str())?;
                let n = vh.delete_queue(ctx.conn_id, &qname, d.if_unused, d.if_empty)?;
                if !d.nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: n,
                        })),
                    );
                }
                Ok(())
            }
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    fn basic_method(&mut self, ctx: &mut Ctx, m: basic::AMQPMethod) -> AmqpResult<()> {
        let id = self.id;
        match m {
            basic::AMQPMethod::Qos(q) => {
                if q.global {
                    self.channel_credit.set_limit(q.prefetch_count);
                    self.kick_consumer_queues();
                } else {
                    self.prefetch = q.prefetch_count;
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
                self.settle(taken, Disposition::Ack);
                Ok(())
            }
            basic::AMQPMethod::Nack(n) => {
                let taken = self.take_unacked(n.delivery_tag, n.multiple)?;
                self.settle(
                    taken,
                    if n.requeue {
                        Disposition::Requeue
                    } else {
                        Disposition::Reject
                    },
                );
                Ok(())
            }
            basic::AMQPMethod::Reject(r) => {
                let taken = self.take_unacked(r.delivery_tag, false)?;
                self.settle(
                    taken,
                    if r.requeue {
                        Disposition::Requeue
                    } else {
                        Disposition::Reject
                    },
                );
                Ok(())
            }
            basic::AMQPMethod::Recover(r) => {
                self.recover(r.requeue)?;
                ok(
                    ctx,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                )
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(r.requeue),
            basic::AMQPMethod::Publish(_) => Err(AmqpError::internal("publish without content")),
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    fn tx_method(&mut self, ctx: &mut Ctx, m: tx::AMQPMethod) -> AmqpResult<()> {
        let id = self.id;
        match m {
            tx::AMQPMethod::Select(_) => {
                if self.confirm.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(TxState::default());
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                )
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(state) = self.tx.replace(TxState::default()) else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                let mut epoch = 0;
                for p in state.publishes {
                    epoch = epoch.max(self.enqueue(ctx, &p.queues, p.message, p.mandatory));
                }
                let (mut acks, mut rejects, mut requeues) = (Vec::new(), Vec::new(), Vec::new());
                for (_, u, how) in state.settles {
                    match how {
                        Disposition::Ack => acks.push(u),
                        Disposition::Reject => rejects.push(u),
                        Disposition::Requeue => requeues.push(u),
                    }
                }
                self.dispose(acks, Disposition::Ack);
                self.dispose(rejects, Disposition::Reject);
                self.dispose(requeues, Disposition::Requeue);
                self.kick_consumer_queues();
                if epoch > ctx.durable_epoch() {
                    // Like a confirm, commit-ok promises that the persistent messages of the
                    // transaction are on disk: it goes out when their sync round is done.
                    self.commit_waiting = Some(epoch);
                    ctx.wait_for_sync(epoch);
                    return Ok(());
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                )
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(state) = self.tx.replace(TxState::default()) else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                for (tag, u, _) in state.settles {
                    self.unacked.insert(tag, u);
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                )
            }
            _ => Err(AmqpError::command_invalid("unimplemented method")),
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
            let q = vh.declare_reply_queue(ctx.conn_id);
            self.reply_queue = Some(q.name.to_string());
            q
        } else {
            let qname = self.queue_name(c.queue.as_str())?;
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
        let consumer = Consumer {
            tag: tag.clone(),
            conn_id: ctx.conn_id,
            channel: self.id,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            priority: consumer_priority(&c.arguments)?,
            credit: credit.clone(),
            channel_credit: self.channel_credit.clone(),
            tx: ctx.events.clone(),
            flow: ctx.flow.clone(),
        };
        q.consume(consumer)?;
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
        self.consumers
            .insert(tag, ChannelConsumer { queue: q, credit });
        Ok(())
    }

    fn cancel_consumer(&mut self, ctx: &mut Ctx, tag: &Arc<str>) {
        if let Some(c) = self.consumers.remove(tag) {
            if c.queue.cancel(ctx.conn_id, self.id, tag) == AfterCancel::AutoDelete {
                if let Ok(vh) = Self::vhost(ctx) {
                    vh.delete_queue_instance(&c.queue);
                }
            }
        }
    }

    /// The queue of a consumer was deleted: forget it and tell clients that want to know.
    pub fn consumer_cancelled(&mut self, ctx: &mut Ctx, tag: &Arc<str>) {
        if self.closing || self.consumers.remove(tag).is_none() {
            return;
        }
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

    fn get(&mut self, ctx: &mut Ctx, g: basic::Get) -> AmqpResult<()> {
        let vh = Self::vhost(ctx)?;
        let qname = self.queue_name(g.queue.as_str())?;
        let q = vh.usable_queue(ctx.conn_id, &qname)?;
        let Some((m, left)) = q.get(g.no_ack) else {
            return ok(
                ctx,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let get_ok = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: tag,
            redelivered: m.redelivered,
            exchange: short(&m.msg.exchange),
            routing_key: short(&m.msg.routing_key),
            message_count: left,
        }));
        encode::encode_content(
            &mut ctx.out,
            self.id,
            &get_ok,
            &m.msg.raw_properties,
            &m.msg.body,
            ctx.frame_max,
        );
        if !g.no_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    queue: q,
                    message: m,
                    credit: None,
                },
            );
        }
        Ok(())
    }

    /// A queue hands us a message for one of our consumers.
    pub fn deliver(&mut self, ctx: &mut Ctx, d: Delivery) {
        if self.closing {
            return return_undelivered(d);
        }
        let Some(c) = self.consumers.get(&d.consumer_tag) else {
            if !d.no_ack {
                // The window the delivery took is free again: other consumers of this channel
                // that wait on it are woken (their queues kicked); the returned message wakes
                // its own queue.
                self.channel_credit.release();
                return_undelivered(d);
                if self.channel_credit.limit() != 0 {
                    self.kick_consumer_queues();
                }
                return;
            }
            return return_undelivered(d);
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let m = &d.message;
        encode::encode_delivery_zero_copy(
            &mut ctx.out,
            &mut ctx.chunks,
            self.id,
            &d.consumer_tag,
            tag,
            m.redelivered,
            &m.msg.exchange,
            &m.msg.routing_key,
            &m.msg.raw_properties,
            &m.msg.body,
            ctx.frame_max,
        );
        if d.no_ack {
            d.queue.forget(&d.message);
        } else {
            let credit = Some(c.credit.clone());
            self.unacked.insert(
                tag,
                Unacked {
                    queue: d.queue,
                    message: d.message,
                    credit,
                },
            );
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
    fn settle(&mut self, taken: Vec<(u64, Unacked)>, how: Disposition) {
        if let Some(tx) = &mut self.tx {
            tx.settles
                .extend(taken.into_iter().map(|(t, u)| (t, u, how)));
            return;
        }
        let entries: Vec<Unacked> = taken.into_iter().map(|(_, u)| u).collect();
        self.dispose(entries, how);
        if self.channel_credit_limited() {
            self.kick_consumer_queues();
        }
    }

    fn dispose(&self, entries: Vec<Unacked>, how: Disposition) {
        if entries.is_empty() {
            return;
        }
        self.release_credit(&entries);
        match how {
            Disposition::Requeue => requeue_grouped(entries),
            Disposition::Ack => settle_grouped(entries, Settle::Ack),
            Disposition::Reject => settle_grouped(entries, Settle::Reject),
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

    pub fn kick_consumer_queues(&self) {
        let mut seen: Vec<*const Queue> = Vec::new();
        for c in self.consumers.values() {
            let p = Arc::as_ptr(&c.queue);
            if !seen.contains(&p) {
                seen.push(p);
                c.queue.kick();
            }
        }
    }

    fn recover(&mut self, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let all: Vec<Unacked> = std::mem::take(&mut self.unacked).into_values().collect();
        self.release_credit(&all);
        requeue_grouped(all);
        if self.channel_credit_limited() {
            // Requeued queues dispatch themselves; consumers of other queues waiting on the
            // channel-wide window need a kick.
            self.kick_consumer_queues();
        }
        Ok(())
    }

    fn publish(
        &mut self,
        ctx: &mut Ctx,
        p: basic::Publish,
        header: ContentHeader,
        body: Bytes,
    ) -> AmqpResult<()> {
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        ctx.published = true;
        let max = ctx.broker.config.amqp.max_message_size;
        if body.len() as u64 > max {
            return Err(AmqpError::precondition_failed(format!(
                "message size {} is larger than configured max size {}",
                body.len(),
                max
            )));
        }
        let mut header = header;
        if header
            .properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == DIRECT_REPLY_TO)
        {
            let Some(reply_queue) = &self.reply_queue else {
                return Err(AmqpError::precondition_failed(
                    "fast reply consumer does not exist",
                ));
            };
            let props = (*header.properties)
                .clone()
                .with_reply_to(reply_queue.as_str().into());
            header.raw_properties = Bytes::from(warren_codec::encode_properties(&props));
            header.properties = Box::new(props);
        }
        let props: &AMQPProperties = &header.properties;
        if let Some(exp) = props.expiration() {
            check_expiration(exp.as_str())?;
        }
        if let Some(uid) = props.user_id() {
            if uid.as_str() != ctx.user {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    uid, ctx.user
                )));
            }
        }
        let vh = Self::vhost(ctx)?;
        let (queues, exchange) =
            self.route(&vh, p.exchange.as_str(), p.routing_key.as_str(), props)?;
        let message = Arc::new(Message::new(
            exchange,
            p.routing_key.as_str(),
            props,
            header.raw_properties,
            body,
        ));
        if let Some(tx) = &mut self.tx {
            tx.publishes.push(TxPublish {
                queues,
                message,
                mandatory: p.mandatory,
            });
            return Ok(());
        }
        self.enqueue(ctx, &queues, message, p.mandatory);
        Ok(())
    }

    /// Routes a publish, through the channel's one-entry cache when the message has no headers
    /// (then the route depends only on exchange, key and topology version).
    fn route(
        &mut self,
        vh: &VHost,
        exchange: &str,
        routing_key: &str,
        props: &AMQPProperties,
    ) -> AmqpResult<(Targets, Arc<str>)> {
        if props.headers().is_some() {
            return vh
                .route_message(exchange, routing_key, props.headers().as_ref())
                .map(|(q, e)| (q.into(), e));
        }
        let version = vh.version();
        if let Some(c) = &self.route_cache {
            if c.version == version
                && same_str(&c.exchange, exchange)
                && same_str(&c.routing_key, routing_key)
            {
                return Ok((c.queues.clone(), c.exchange_name.clone()));
            }
        }
        let (queues, exchange_name) = vh.route_message(exchange, routing_key, None)?;
        let queues: Targets = queues.into();
        self.route_cache = Some(RouteCache {
            version,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            queues: queues.clone(),
            exchange_name: exchange_name.clone(),
        });
        Ok((queues, exchange_name))
    }

    /// Puts a routed message into its queues, returns it if mandatory and unroutable, and
    /// records its confirm.
    fn enqueue(
        &mut self,
        ctx: &mut Ctx,
        queues: &[Arc<Queue>],
        message: Arc<Message>,
        mandatory: bool,
    ) -> u64 {
        let mut routed = false;
        let mut rejected = false;
        let mut epoch = 0;
        for q in queues {
            match q.publish(message.clone()) {
                Enqueued::Yes(e) => {
                    routed = true;
                    epoch = epoch.max(e);
                }
                Enqueued::Rejected => rejected = true,
                Enqueued::Gone => {}
            }
        }
        let routed = routed || rejected;
        if !routed && mandatory {
            let ret = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: ReplyCode::NoRoute.code(),
                reply_text: "NO_ROUTE".into(),
                exchange: short(&message.exchange),
                routing_key: short(&message.routing_key),
            }));
            encode::encode_content(
                &mut ctx.out,
                self.id,
                &ret,
                &message.raw_properties,
                &message.body,
                ctx.frame_max,
            );
        }
        if let Some(c) = &mut self.confirm {
            let seq = c.next_seq;
            c.next_seq += 1;
            if rejected {
                // x-overflow=reject-publish: the publisher learns through a nack.
                if c.pending.is_empty() {
                    ctx.confirms_dirty.push(self.id);
                }
                c.pending.push((seq, false));
                return epoch;
            }
            if epoch > ctx.durable_epoch() {
                // On disk only after that sync round: confirm then (persistent + durable).
                c.waiting.push_back((seq, epoch));
                ctx.wait_for_sync(epoch);
                return epoch;
            }
            if c.pending.is_empty() {
                ctx.confirms_dirty.push(self.id);
            }
            c.pending.push((seq, true));
        }
        epoch
    }

    /// A sync round finished: confirms whose messages are now on disk become sendable.
    pub fn on_synced(&mut self, ctx: &mut Ctx, durable: u64) {
        if let Some(epoch) = self.commit_waiting {
            if epoch <= durable {
                self.commit_waiting = None;
                ctx.send_method(
                    self.id,
                    &AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
            } else {
                ctx.wait_for_sync(epoch);
            }
        }
        let Some(c) = &mut self.confirm else { return };
        let before = c.pending.len();
        while let Some(&(seq, epoch)) = c.waiting.front() {
            if epoch > durable {
                ctx.wait_for_sync(epoch);
                break;
            }
            c.waiting.pop_front();
            c.pending.push((seq, true));
        }
        if before == 0 && !c.pending.is_empty() {
            ctx.confirms_dirty.push(self.id);
        }
    }

    /// Sends the confirms gathered this turn. Acks below the oldest still-waiting message are
    /// coalesced into one `multiple` ack (which must not cover anything unconfirmed).
    pub fn flush_confirms(&mut self, ctx: &mut Ctx) {
        let Some(c) = &mut self.confirm else { return };
        if c.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut c.pending);
        pending.sort_unstable_by_key(|(seq, _)| *seq);
        let oldest_waiting = c.waiting.front().map_or(u64::MAX, |(s, _)| *s);
        let split = pending.partition_point(|(seq, _)| *seq < oldest_waiting);
        let mut rest: Vec<(u64, bool)> = pending.split_off(split);
        if pending.len() > 1 && pending.iter().all(|(_, ack)| *ack) {
            let (last, _) = pending[pending.len() - 1];
            let ack = basic::Ack {
                delivery_tag: last,
                multiple: true,
            };
            ctx.send_method(self.id, &AMQPClass::Basic(basic::AMQPMethod::Ack(ack)));
        } else {
            rest.splice(0..0, pending);
        }
        for (seq, is_ack) in rest {
            let m = if is_ack {
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: seq,
                    multiple: false,
                })
            } else {
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                })
            };
            ctx.send_method(self.id, &AMQPClass::Basic(m));
        }
    }
}

fn group_by_queue(
    entries: impl IntoIterator<Item = Unacked>,
) -> Vec<(Arc<Queue>, Vec<QueuedMessage>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
    for u in entries {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, v)) => v.push(u.message),
            None => groups.push((u.queue, vec![u.message])),
        }
    }
    groups
}

fn requeue_grouped(entries: impl IntoIterator<Item = Unacked>) {
    for (q, msgs) in group_by_queue(entries) {
        q.requeue(msgs);
    }
}

fn settle_grouped(entries: impl IntoIterator<Item = Unacked>, how: Settle) {
    for (q, msgs) in group_by_queue(entries) {
        q.settle(msgs, how);
    }
}

/// `x-priority` of `basic.consume` (default 0); must be an integer.
fn consumer_priority(args: &warren_codec::proto::FieldTable) -> AmqpResult<i64> {
    match args.inner().get("x-priority") {
        None => Ok(0),
        Some(v) => crate::value::int_value(v).ok_or_else(|| {
            AmqpError::precondition_failed(format!(
                "invalid arg 'x-priority': expected integer, got {v:?}"
            ))
        }),
    }
}

/// The `expiration` property must hold a non-negative integer of milliseconds
/// (`rabbit_basic:parse_expiration/1`); RabbitMQ's texts for the failures.
fn check_expiration(exp: &str) -> AmqpResult<()> {
    let digits_end = exp
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && (*c == '-' || *c == '+'))))
        .map_or(exp.len(), |(i, _)| i);
    let (num, rest) = exp.split_at(digits_end);
    let why = match num.parse::<i64>() {
        Err(_) => "no_integer".to_string(),
        Ok(_) if !rest.is_empty() => format!("{{leftover_string,\"{rest}\"}}"),
        Ok(n) if n < 0 => format!("{{value_negative,{n}}}"),
        Ok(_) => return Ok(()),
    };
    Err(AmqpError::precondition_failed(format!(
        "invalid expiration '{exp}': {why}"
    )))
}
