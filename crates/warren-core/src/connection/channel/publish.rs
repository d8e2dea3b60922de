//! `basic.publish`: checks, routing (with the channel's one-entry route cache), enqueueing,
//! mandatory returns and the confirm each publish earns.

use bytes::Bytes;
use std::sync::Arc;

use super::tx::TxPublish;
use super::{short, Channel, DIRECT_REPLY_TO};
use crate::connection::Ctx;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::delayed::{due_properties, DelayedMessages, Held};
use crate::message::Message;
use crate::queue::{Enqueued, QueueRef};
use crate::stats::MessageStats;
use crate::vhost::VHost;
use warren_codec::proto::{basic, AMQPClass, AMQPProperties};
use warren_codec::{encode, ContentHeader, ReplyCode};

/// The queues a publish goes to (shared with the channel's route cache).
pub(super) type Targets = Arc<[QueueRef]>;

/// Where a publish goes, as the channel keeps it.
pub(super) struct Routed<Q> {
    queues: Q,
    exchange: Arc<str>,
    /// Held by a delayed exchange instead: its holder and the delay.
    delayed: Option<(Arc<DelayedMessages>, u64)>,
}

#[derive(Debug)]
pub(super) struct RouteCache {
    version: u64,
    /// The users generation the write permission was checked at.
    auth_gen: u64,
    exchange: String,
    routing_key: String,
    queues: Targets,
    exchange_name: Arc<str>,
    stats: Arc<MessageStats>,
}

/// `a == b`, without calling `memcmp` for two empty strings (the default exchange's name):
/// glibc's AVX-512 `memcmp` does a masked load even for length 0, and from the dangling pointer
/// of an empty `String` that costs a fault-suppression assist of hundreds of cycles (it was
/// ~10% of the broker's CPU in the 16 B publish profile).
fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// A publish into an exchange: `publish_in`, and `publish_out` when it routed anywhere. Counted
/// through the route's (or the route cache's) reference to the exchange's counters, so a cached
/// publish touches no reference count.
fn count_exchange(stats: &MessageStats, routed: bool) {
    stats.publish_in.inc();
    if routed {
        stats.publish_out.inc();
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

impl Channel {
    pub(super) fn publish(
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
        let amqp = &ctx.broker.config.amqp;
        let max = amqp.compat.max_message_size(amqp.max_message_size);
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
            if uid.as_str() != ctx.user && !ctx.access()?.user.has_tag("impersonator") {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    uid, ctx.user
                )));
            }
        }
        let vh = Self::vhost(ctx)?;
        let now = ctx.now;
        let routed = self.route(
            ctx,
            &vh,
            p.exchange.as_str(),
            p.routing_key.as_str(),
            props,
            now,
        )?;
        if props
            .headers()
            .as_ref()
            .is_some_and(|h| h.contains_key("BCC"))
        {
            // BCC routes, but no consumer sees it (RabbitMQ's sender-selected distribution).
            let mut headers = props.headers().clone().unwrap_or_default().inner().clone();
            headers.remove("BCC");
            let stripped = (*header.properties).clone().with_headers(headers.into());
            header.raw_properties = Bytes::from(warren_codec::encode_properties(&stripped));
            header.properties = Box::new(stripped);
        }
        let props: &AMQPProperties = &header.properties;
        let message = Arc::new(Message::new(
            routed.exchange,
            p.routing_key.as_str(),
            props,
            header.raw_properties,
            body,
        ));
        if let Some(tx) = &mut self.tx {
            tx.publishes.push(TxPublish {
                queues: routed.queues,
                message,
                mandatory: p.mandatory,
                delayed: routed.delayed,
            });
            return Ok(());
        }
        let held_epoch = match routed.delayed {
            Some((held, delay)) => Self::hold_delayed(ctx, &held, &message, props, delay),
            None => 0,
        };
        self.enqueue(ctx, &routed.queues, message, p.mandatory, held_epoch);
        Ok(())
    }

    /// Gives a message with a delay to its delayed exchange. Then it has gone nowhere yet, so
    /// that the caller's enqueue returns it if mandatory and confirms it, as the plugin does
    /// (the plugin's route answers no queues); returns the sync epoch the confirm waits for
    /// (a persistent message of a durable exchange is stored).
    pub(super) fn hold_delayed(
        ctx: &Ctx,
        held: &DelayedMessages,
        message: &Message,
        props: &AMQPProperties,
        delay: u64,
    ) -> u64 {
        let properties = due_properties(props, delay);
        let raw = Bytes::from(warren_codec::encode_properties(&properties));
        let due = Message::new(
            message.exchange.clone(),
            &message.routing_key,
            &properties,
            raw,
            message.body.clone(),
        );
        held.hold(
            Held {
                message: Arc::new(due),
                properties,
            },
            ctx.now.saturating_add(delay),
            ctx.now,
        )
    }

    /// Routes a publish, through the channel's one-entry cache when the message has no headers
    /// and no exchange on the way reads its properties (then the route depends only on
    /// exchange, key and topology version). The write permission (and the topic permission of
    /// a topic exchange) is checked on a cache miss: a hit means the same exchange and key at
    /// the same users generation.
    fn route(
        &mut self,
        ctx: &mut Ctx,
        vh: &VHost,
        exchange: &str,
        routing_key: &str,
        props: &AMQPProperties,
        now: crate::clock::Millis,
    ) -> AmqpResult<Routed<Targets>> {
        if props.headers().is_some() {
            Self::permit_publish(ctx, vh, exchange, routing_key)?;
            let r = vh.route_message(exchange, routing_key, props, now)?;
            count_exchange(&r.stats, !r.queues.is_empty());
            return Ok(Routed {
                queues: r.queues.into(),
                exchange: r.exchange,
                delayed: r.delayed,
            });
        }
        let version = vh.version();
        let auth_gen = ctx.broker.users.generation();
        if let Some(c) = &self.route_cache {
            if c.version == version
                && c.auth_gen == auth_gen
                && same_str(&c.exchange, exchange)
                && same_str(&c.routing_key, routing_key)
            {
                count_exchange(&c.stats, !c.queues.is_empty());
                return Ok(Routed {
                    queues: c.queues.clone(),
                    exchange: c.exchange_name.clone(),
                    delayed: None,
                });
            }
        }
        Self::permit_publish(ctx, vh, exchange, routing_key)?;
        let r = vh.route_message(exchange, routing_key, props, now)?;
        let queues: Targets = r.queues.into();
        count_exchange(&r.stats, !queues.is_empty());
        if r.cacheable {
            self.route_cache = Some(RouteCache {
                version,
                auth_gen,
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                queues: queues.clone(),
                exchange_name: r.exchange.clone(),
                stats: r.stats,
            });
        }
        Ok(Routed {
            queues,
            exchange: r.exchange,
            delayed: r.delayed,
        })
    }

    /// `basic.publish`: write on the exchange, and the topic permission of a topic exchange.
    fn permit_publish(ctx: &mut Ctx, vh: &VHost, exchange: &str, key: &str) -> AmqpResult<()> {
        super::permit_exchange(ctx, crate::auth::Perm::Write, exchange)?;
        super::permit_topic(ctx, vh, crate::auth::Perm::Write, exchange, key)
    }

    /// Puts a routed message into its queues, returns it if mandatory and unroutable, and
    /// records its confirm. Returns the sync epoch that makes it durable (0: nothing to wait
    /// for).
    pub(super) fn enqueue(
        &mut self,
        ctx: &mut Ctx,
        queues: &[QueueRef],
        message: Arc<Message>,
        mandatory: bool,
        held_epoch: u64,
    ) -> u64 {
        let mut routed = false;
        let mut rejected = false;
        let mut epoch = held_epoch;
        for q in queues {
            match q.publish(message.clone(), ctx.now) {
                Enqueued::Yes(e) => {
                    routed = true;
                    epoch = epoch.max(e);
                    q.info().stats.publish.inc();
                }
                Enqueued::Rejected => rejected = true,
                Enqueued::Gone => {}
            }
        }
        let routed = routed || rejected;
        self.info.stats.publish.inc();
        if !routed && held_epoch == 0 {
            if mandatory {
                self.info.stats.return_unroutable.inc();
            } else {
                self.info.stats.drop_unroutable.inc();
            }
        }
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
        self.record_confirm(ctx, rejected, epoch);
        epoch
    }
}
