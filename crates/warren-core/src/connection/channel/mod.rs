//! One AMQP channel: content assembly and the dispatch of every class's methods.
//!
//! A channel is owned by its connection task and never awaits. Deliveries arrive from queues as
//! [`ConnEvent::Deliver`](super::ConnEvent) and get their delivery tags here. When a method
//! must wait (see `pause.rs`), the channel pauses and its later frames are held.
//!
//! Files: this one (the state, assembly, method dispatch, close and teardown), `topology.rs`
//! (exchange and queue methods, through the metadata path), `publish.rs` (publish and
//! routing), `consume.rs` (consumers, deliveries, `basic.get`, acks, nacks, rejects,
//! recover), `confirm.rs` (publisher confirms), `tx.rs` (transactions), `pause.rs`.

mod confirm;
mod consume;
mod pause;
mod publish;
mod timeout;
mod topology;
mod tx;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::debug;

use super::Ctx;
use crate::auth::Perm;
use crate::error::{AmqpError, AmqpResult};
use crate::message::QueuedMessage;
use crate::queue::{Credit, QueueRef};
use crate::vhost::VHost;
use confirm::ConfirmState;
pub(crate) use consume::return_undelivered;
use pause::Paused;
pub(crate) use pause::Resume;
use publish::RouteCache;
use tx::TxState;
use warren_codec::proto::{access, basic, channel, confirm as confirm_class, AMQPClass};
use warren_codec::{method, Command, ContentAssembler, ContentHeader, DirectBody};

/// The pseudo-queue of direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A delivered, not yet settled message.
#[derive(Debug)]
struct Unacked {
    queue: QueueRef,
    message: QueuedMessage,
    /// The consumer window it counts against (none for `basic.get`).
    credit: Option<Arc<Credit>>,
    /// When the consumer timeout closes the channel for it (0 = never).
    deadline: crate::clock::Millis,
    /// The timeout that deadline came from, ms (for the error text).
    timeout: u64,
}

#[derive(Debug)]
struct ChannelConsumer {
    queue: QueueRef,
    credit: Arc<Credit>,
    /// Its consumer timeout, ms (0 = none).
    timeout: u64,
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
    /// What the channel waits for, and the frames held meanwhile.
    paused: Option<Paused>,
    /// The earliest consumer-timeout deadline of an unacked message (0 = none); may be stale
    /// (see `timeout.rs`).
    next_deadline: crate::clock::Millis,
    /// What the management API shows of the channel (its counters; this channel writes them).
    pub(crate) info: Arc<crate::broker::ChannelInfo>,
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

/// A string argument (`alternate-exchange`, `x-dead-letter-exchange`).
fn string_arg(args: &warren_codec::proto::FieldTable, key: &str) -> Option<String> {
    match args.inner().get(key)? {
        warren_codec::proto::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        warren_codec::proto::AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// `perm` on queue `name` for the connection's user.
fn permit_queue(ctx: &mut Ctx, perm: Perm, name: &str) -> AmqpResult<()> {
    ctx.access()?.queue(perm, name)
}

/// `perm` on exchange `name` for the connection's user.
fn permit_exchange(ctx: &mut Ctx, perm: Perm, name: &str) -> AmqpResult<()> {
    ctx.access()?.exchange(perm, name)
}

/// The topic permission for `key` on `exchange` when it is a topic exchange.
fn permit_topic(
    ctx: &mut Ctx,
    vh: &VHost,
    perm: Perm,
    exchange: &str,
    key: &str,
) -> AmqpResult<()> {
    let access = ctx.access()?;
    if access.has_topic_permissions() && vh.is_topic_exchange(exchange) {
        access.topic(perm, exchange, key)?;
    }
    Ok(())
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
            paused: None,
            next_deadline: 0,
            info: Arc::new(crate::broker::ChannelInfo::new(id)),
        }
    }

    /// Publishes the channel's unacked and consumer counts (after deliveries, settlements,
    /// consumes and cancels).
    fn publish_gauges(&self) {
        crate::broker::ChannelInfo::set(
            &self.info.messages_unacknowledged,
            self.unacked.len() as u64,
        );
        self.info.consumer_count.store(
            self.consumers.len() as u32,
            std::sync::atomic::Ordering::Relaxed,
        );
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
        if !self.closing {
            // A channel the broker closed was torn down (and announced) then.
            ctx.channel_event(false, self.id);
        }
        self.assembler.reset();
        self.paused = None;
        let vhost = ctx.vhost.clone();
        for (tag, c) in self.consumers.drain() {
            if c.queue.cancel(ctx.conn_id, self.id, &tag, ctx.now)
                == crate::queue::AfterCancel::AutoDelete
            {
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
        consume::requeue_grouped(all.into_values(), ctx.now);
        if let Some(c) = &mut self.confirm {
            c.clear();
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
        if self.closing || self.paused.is_some() {
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
            AMQPClass::Confirm(confirm_class::AMQPMethod::Select(s)) => self.confirm_select(ctx, s),
            AMQPClass::Tx(m) => self.tx_method(ctx, m),
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }
}
