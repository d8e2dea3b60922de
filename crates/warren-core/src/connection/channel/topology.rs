//! `exchange.*` and `queue.*` methods. Every change goes through the metadata path
//! (`Broker::submit`); a durable one pauses the channel until the log has made it durable and
//! it is applied, and only then is it answered.

use super::pause::{Reply, Then, Wait};
use super::{
    ok, permit_exchange, permit_queue, permit_topic, short, string_arg, Channel, DIRECT_REPLY_TO,
};
use crate::auth::Perm;
use crate::broker::Done;
use crate::connection::{ConnEvent, Ctx};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::ExchangeKind;
use crate::metadata::{BindingDef, Command, ExchangeDef, QueueDef};
use crate::queue::Waiter;
use crate::vhost::{new_store_dir, server_named, Applied, Origin, Pre, VHost};
use warren_codec::proto::{exchange, queue, AMQPClass, ShortString};

impl Channel {
    /// Submits a metadata command; answers now when it is applied now, or pauses until the
    /// log has made it durable.
    fn submit(&mut self, ctx: &mut Ctx, cmd: Command, pre: Pre, reply: Reply) -> AmqpResult<()> {
        self.submit_as(ctx, cmd, pre, reply, false)
    }

    /// [`Channel::submit`]; `internal`: the broker chose the name (a server-named queue), so
    /// its reserved `amq.` prefix is allowed.
    fn submit_as(
        &mut self,
        ctx: &mut Ctx,
        cmd: Command,
        pre: Pre,
        reply: Reply,
        internal: bool,
    ) -> AmqpResult<()> {
        let origin = Origin {
            conn_id: Some(ctx.conn_id),
            user: Some(ctx.user.as_str().into()),
            internal,
        };
        let sink = ctx.sink.clone();
        let channel = self.id;
        let done: Done = Box::new(move |result| sink.send(ConnEvent::Applied { channel, result }));
        match ctx.broker.submit(cmd, origin, pre, done) {
            Some(r) => {
                let a = r?;
                self.send_reply(ctx, reply, a);
            }
            None => self.pause(Wait::Applied, Then::Reply(reply)),
        }
        Ok(())
    }

    /// The `*-ok` of an applied metadata command.
    pub(super) fn send_reply(&mut self, ctx: &mut Ctx, reply: Reply, a: Applied) {
        use exchange::AMQPMethod as X;
        use queue::AMQPMethod as Q;
        let m = match reply {
            Reply::ExchangeDeclare { nowait: false } => {
                AMQPClass::Exchange(X::DeclareOk(exchange::DeclareOk {}))
            }
            Reply::ExchangeDelete { nowait: false } => {
                AMQPClass::Exchange(X::DeleteOk(exchange::DeleteOk {}))
            }
            Reply::ExchangeBind { nowait: false } => {
                AMQPClass::Exchange(X::BindOk(exchange::BindOk {}))
            }
            Reply::ExchangeUnbind { nowait: false } => {
                AMQPClass::Exchange(X::UnbindOk(exchange::UnbindOk {}))
            }
            Reply::QueueDeclare { nowait } => {
                let Applied::Queue(d) = a else { return };
                self.last_queue = Some(d.queue.name().to_string());
                if nowait {
                    return;
                }
                AMQPClass::Queue(Q::DeclareOk(queue::DeclareOk {
                    queue: short(d.queue.name()),
                    message_count: d.message_count,
                    consumer_count: d.consumer_count,
                }))
            }
            Reply::QueueBind { nowait: false } => AMQPClass::Queue(Q::BindOk(queue::BindOk {})),
            Reply::QueueUnbind => AMQPClass::Queue(Q::UnbindOk(queue::UnbindOk {})),
            Reply::QueueDelete { nowait: false } => {
                let n = match a {
                    Applied::Deleted(n) => n,
                    _ => 0,
                };
                AMQPClass::Queue(Q::DeleteOk(queue::DeleteOk { message_count: n }))
            }
            _ => return,
        };
        ctx.send_method(self.id, &m);
    }

    pub(super) fn exchange_method(
        &mut self,
        ctx: &mut Ctx,
        m: exchange::AMQPMethod,
    ) -> AmqpResult<()> {
        use exchange::AMQPMethod as X;
        let vh = Self::vhost(ctx)?;
        let vhost = vh.name.to_string();
        match m {
            X::Declare(d) if d.passive => {
                if d.exchange.as_str().is_empty() {
                    return Err(AmqpError::default_exchange_refused());
                }
                if ctx
                    .broker
                    .config
                    .amqp
                    .compat
                    .passive_declare_needs_configure()
                {
                    permit_exchange(ctx, Perm::Configure, d.exchange.as_str())?;
                }
                if !vh.has_exchange(d.exchange.as_str()) {
                    return Err(AmqpError::no_exchange(d.exchange.as_str(), &vh.name));
                }
                if !d.nowait {
                    ctx.send_method(
                        self.id,
                        &AMQPClass::Exchange(X::DeclareOk(exchange::DeclareOk {})),
                    );
                }
                Ok(())
            }
            X::Declare(d) => {
                permit_exchange(ctx, Perm::Configure, d.exchange.as_str())?;
                if let Some(ae) = string_arg(&d.arguments, "alternate-exchange") {
                    permit_exchange(ctx, Perm::Write, &ae)?;
                    permit_exchange(ctx, Perm::Read, d.exchange.as_str())?;
                }
                // A durable delayed exchange keeps persistent held messages in a store.
                let store_dir = if d.durable
                    && d.kind.as_str() == ExchangeKind::Delayed.as_str()
                    && vh.persistent()
                {
                    format!("dx-{}", new_store_dir(d.exchange.as_str()))
                } else {
                    String::new()
                };
                let cmd = Command::DeclareExchange(ExchangeDef {
                    vhost,
                    name: d.exchange.to_string(),
                    kind: d.kind.to_string(),
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                    store_dir,
                });
                let reply = Reply::ExchangeDeclare { nowait: d.nowait };
                self.submit(ctx, cmd, Pre::default(), reply)
            }
            X::Delete(d) => {
                permit_exchange(ctx, Perm::Configure, d.exchange.as_str())?;
                let cmd = Command::DeleteExchange {
                    vhost,
                    name: d.exchange.to_string(),
                };
                let pre = Pre {
                    if_unused: d.if_unused,
                    ..Pre::default()
                };
                self.submit(ctx, cmd, pre, Reply::ExchangeDelete { nowait: d.nowait })
            }
            X::Bind(b) => {
                permit_exchange_binding(ctx, &vh, &b.source, &b.destination, &b.routing_key)?;
                let def = exchange_binding(vhost, &b.source, &b.destination, &b.routing_key);
                let cmd = Command::Bind(BindingDef {
                    arguments: b.arguments,
                    ..def
                });
                let reply = Reply::ExchangeBind { nowait: b.nowait };
                self.submit(ctx, cmd, Pre::default(), reply)
            }
            X::Unbind(b) => {
                permit_exchange_binding(ctx, &vh, &b.source, &b.destination, &b.routing_key)?;
                let def = exchange_binding(vhost, &b.source, &b.destination, &b.routing_key);
                let cmd = Command::Unbind(BindingDef {
                    arguments: b.arguments,
                    ..def
                });
                let reply = Reply::ExchangeUnbind { nowait: b.nowait };
                self.submit(ctx, cmd, Pre::default(), reply)
            }
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    pub(super) fn queue_method(&mut self, ctx: &mut Ctx, m: queue::AMQPMethod) -> AmqpResult<()> {
        let vh = Self::vhost(ctx)?;
        let vhost = vh.name.to_string();
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
            queue::AMQPMethod::Declare(d) if d.passive => {
                let name = self.queue_name(d.queue.as_str())?;
                if ctx
                    .broker
                    .config
                    .amqp
                    .compat
                    .passive_declare_needs_configure()
                {
                    permit_queue(ctx, Perm::Configure, &name)?;
                }
                let q = vh
                    .queue(&name)
                    .ok_or_else(|| AmqpError::no_queue(&name, &vh.name))?;
                q.check_access(ctx.conn_id)?;
                // RabbitMQ answers a passive declare with the queue's `stat`, which restarts its
                // x-expires timer (`rabbit_amqqueue_process:handle_call(stat, ...)`).
                q.touch(ctx.now);
                self.last_queue = Some(name);
                if !d.nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: short(q.name()),
                            message_count: q.message_count(),
                            consumer_count: q.consumer_count(),
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Declare(d) => {
                let server_named_queue = d.queue.as_str().is_empty();
                let name = if server_named_queue {
                    server_named()
                } else {
                    d.queue.to_string()
                };
                permit_queue(ctx, Perm::Configure, &name)?;
                if let Some(dlx) = string_arg(&d.arguments, "x-dead-letter-exchange") {
                    permit_queue(ctx, Perm::Read, &name)?;
                    permit_exchange(ctx, Perm::Write, &dlx)?;
                }
                let exclusive_owner = d.exclusive.then_some(ctx.conn_id);
                let store_dir = if d.durable && !d.exclusive && vh.persistent() {
                    new_store_dir(&name)
                } else {
                    String::new()
                };
                let cmd = Command::DeclareQueue(QueueDef {
                    vhost,
                    name,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                    store_dir,
                    exclusive_owner,
                });
                let reply = Reply::QueueDeclare { nowait: d.nowait };
                self.submit_as(ctx, cmd, Pre::default(), reply, server_named_queue)
            }
            queue::AMQPMethod::Bind(b) => {
                let qname = self.queue_name(b.queue.as_str())?;
                // RabbitMQ: an empty queue name *and* key bind with the queue's name as key.
                let key = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                    qname.clone()
                } else {
                    b.routing_key.to_string()
                };
                permit_queue(ctx, Perm::Write, &qname)?;
                permit_exchange(ctx, Perm::Read, b.exchange.as_str())?;
                permit_topic(ctx, &vh, Perm::Read, b.exchange.as_str(), &key)?;
                let cmd = Command::Bind(BindingDef {
                    vhost,
                    source: b.exchange.to_string(),
                    destination: qname,
                    destination_type: "queue".into(),
                    routing_key: key,
                    arguments: b.arguments,
                });
                self.submit(
                    ctx,
                    cmd,
                    Pre::default(),
                    Reply::QueueBind { nowait: b.nowait },
                )
            }
            queue::AMQPMethod::Unbind(b) => {
                let qname = self.queue_name(b.queue.as_str())?;
                permit_queue(ctx, Perm::Write, &qname)?;
                permit_exchange(ctx, Perm::Read, b.exchange.as_str())?;
                permit_topic(
                    ctx,
                    &vh,
                    Perm::Read,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                )?;
                let cmd = Command::Unbind(BindingDef {
                    vhost,
                    source: b.exchange.to_string(),
                    destination: qname,
                    destination_type: "queue".into(),
                    routing_key: b.routing_key.to_string(),
                    arguments: b.arguments,
                });
                self.submit(ctx, cmd, Pre::default(), Reply::QueueUnbind)
            }
            queue::AMQPMethod::Purge(p) => {
                let qname = self.queue_name(p.queue.as_str())?;
                permit_queue(ctx, Perm::Read, &qname)?;
                let q = vh.usable_queue(ctx.conn_id, &qname)?;
                q.check_purge()?;
                let waiter = Waiter {
                    sink: ctx.sink.clone(),
                    channel: id,
                };
                let (count, wait) = q.purge(ctx.now, &waiter);
                if wait {
                    self.pause(
                        Wait::Woken,
                        Then::PurgeOk {
                            count,
                            nowait: p.nowait,
                        },
                    );
                    return Ok(());
                }
                if !p.nowait {
                    return ok(
                        ctx,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: count,
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Delete(d) => {
                let qname = self.queue_name(d.queue.as_str())?;
                permit_queue(ctx, Perm::Configure, &qname)?;
                let cmd = Command::DeleteQueue {
                    vhost,
                    name: qname,
                    store_dir: None,
                };
                let pre = Pre {
                    if_unused: d.if_unused,
                    if_empty: d.if_empty,
                };
                self.submit(ctx, cmd, pre, Reply::QueueDelete { nowait: d.nowait })
            }
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }
}

/// An exchange-to-exchange binding (`exchange.bind` / `exchange.unbind`), without arguments.
fn exchange_binding(
    vhost: String,
    source: &ShortString,
    destination: &ShortString,
    routing_key: &ShortString,
) -> BindingDef {
    BindingDef {
        vhost,
        source: source.to_string(),
        destination: destination.to_string(),
        destination_type: "exchange".into(),
        routing_key: routing_key.to_string(),
        arguments: Default::default(),
    }
}

/// `exchange.bind`/`unbind`: write on the destination, read on the source (and the topic
/// permission of a topic source), as RabbitMQ checks them.
fn permit_exchange_binding(
    ctx: &mut Ctx,
    vh: &VHost,
    source: &ShortString,
    destination: &ShortString,
    routing_key: &ShortString,
) -> AmqpResult<()> {
    permit_exchange(ctx, Perm::Write, destination.as_str())?;
    permit_exchange(ctx, Perm::Read, source.as_str())?;
    permit_topic(ctx, vh, Perm::Read, source.as_str(), routing_key.as_str())
}
