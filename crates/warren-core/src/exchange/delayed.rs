//! The delayed-message exchange (`x-delayed-message`), as the community
//! `rabbitmq_delayed_message_exchange` plugin: declared with `x-delayed-type` naming the type
//! it routes as; a message whose `x-delay` header holds a delay in ms (`0 < delay <= 2^32-1`)
//! is held by the exchange until due and then routed as by that type, with `x-delay` set to
//! `-delay` (so a later delayed exchange does not delay it again). Any other message routes
//! at once.
//!
//! This file owns the arguments and the held messages ([`DelayedMessages`]: due order, one
//! timer wake-up for the nearest due, not one per message); routing them when due is the
//! vhost's job, behind the [`DelayedOwner`] trait it implements.
//!
//! Held messages are kept in memory only: they do not survive a restart (see the README).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use super::proto::{AMQPProperties, AMQPValue, FieldTable};
use super::ExchangeKind;
use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::timers::{Deadline, Timers};
use crate::value::int_value;

/// Erlang's largest timer, the plugin's upper bound for a delay (`?ERL_MAX_T`).
const MAX_DELAY: i64 = 4_294_967_295;

/// The type a delayed exchange routes as (`validate/1`), with the plugin's texts (typos
/// included: clients match on them).
pub fn delayed_type(args: &FieldTable) -> AmqpResult<ExchangeKind> {
    let name = match args.inner().get("x-delayed-type") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => {
            return Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-delayed-type' must bean existing exchnage type",
            ))
        }
    };
    match ExchangeKind::parse(&name) {
        // A delayed exchange cannot route as a delayed exchange.
        Some(ExchangeKind::Delayed) | None => Err(AmqpError::command_invalid(format!(
            "invalid exchange type '{name}'"
        ))),
        Some(kind) => Ok(kind),
    }
}

/// A message's delay (`rabbit_delayed_message_utils:get_delay/1`): integers as they are,
/// floats truncated, strings parsed as integers; `None` (route now) when missing, of another
/// type, not positive, or beyond the largest delay. A string that is not an integer crashes
/// the plugin's routing, which RabbitMQ answers with a bare 541 `INTERNAL_ERROR`.
pub fn delay_of(headers: Option<&FieldTable>) -> AmqpResult<Option<u64>> {
    let Some(v) = headers.and_then(|h| h.inner().get("x-delay")) else {
        return Ok(None);
    };
    let d = match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            let s = crate::value::str_value(v).unwrap_or_default();
            let digits = s.strip_prefix(['+', '-']).unwrap_or(&s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AmqpError::internal_crash());
            }
            // Too long for an i64: far beyond the largest delay either way.
            s.parse::<i64>()
                .unwrap_or(if s.starts_with('-') { -1 } else { i64::MAX })
        }
        AMQPValue::Float(f) => *f as i64,
        AMQPValue::Double(f) => *f as i64,
        AMQPValue::DecimalValue(d) => (f64::from(d.value) / 10f64.powi(i32::from(d.scale))) as i64,
        other => match int_value(other) {
            Some(i) => i,
            None => return Ok(None),
        },
    };
    Ok((d > 0 && d <= MAX_DELAY).then_some(d as u64))
}

/// The properties a held message is routed with when due: `x-delay` set to `-delay`.
pub fn due_properties(props: &AMQPProperties, delay: u64) -> AMQPProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    let neg = -(delay as i64);
    let v = match i32::try_from(neg) {
        Ok(n) => AMQPValue::LongInt(n),
        Err(_) => AMQPValue::LongLongInt(neg),
    };
    headers.insert("x-delay".into(), v);
    props.clone().with_headers(headers)
}

/// A message held until due.
#[derive(Debug)]
pub struct Held {
    /// The message as it will be routed (its `x-delay` already negated).
    pub message: Arc<Message>,
    /// Its properties (headers and properties route it).
    pub properties: AMQPProperties,
}

/// Routes held messages when they are due (the vhost implements it).
pub trait DelayedOwner: Send + Sync {
    /// `held` is due: route it from exchange `exchange` as the delayed type would.
    fn publish_due(&self, exchange: &str, held: Held, now: Millis);
}

#[derive(Debug, Default)]
struct State {
    due: BTreeMap<(Millis, u64), Held>,
    seq: u64,
    /// The time of the wake-up asked for (0: none pending).
    wake: Millis,
}

/// The messages one delayed exchange holds, in due order.
pub struct DelayedMessages {
    exchange: Arc<str>,
    state: Mutex<State>,
    timers: Timers,
    owner: Weak<dyn DelayedOwner>,
    me: Weak<DelayedMessages>,
}

impl std::fmt::Debug for DelayedMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedMessages")
            .field("exchange", &self.exchange)
            .field("held", &self.len())
            .finish()
    }
}

impl DelayedMessages {
    /// An empty holder for exchange `exchange`; `owner` routes what falls due.
    pub fn new(exchange: Arc<str>, timers: Timers, owner: Weak<dyn DelayedOwner>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            exchange,
            state: Mutex::new(State::default()),
            timers,
            owner,
            me: me.clone(),
        })
    }

    /// Number of messages held.
    pub fn len(&self) -> usize {
        self.state.lock().due.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds `held` until `at`.
    pub fn hold(&self, held: Held, at: Millis) {
        let wake = {
            let mut s = self.state.lock();
            s.seq += 1;
            let seq = s.seq;
            s.due.insert((at, seq), held);
            if s.wake == 0 || at < s.wake {
                s.wake = at;
                true
            } else {
                false
            }
        };
        if wake {
            let me: Weak<dyn Deadline> = self.me.clone();
            self.timers.schedule_deadline(at, me);
        }
    }

    /// Takes the messages due by `now`, in due order, and asks for the next wake-up.
    fn take_due(&self, now: Millis) -> Vec<Held> {
        let mut s = self.state.lock();
        let mut out = Vec::new();
        while let Some(entry) = s.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
        let next = s.due.first_key_value().map(|((at, _), _)| *at);
        // A wake-up at or before `next` is still pending unless this is it.
        if s.wake <= now {
            s.wake = next.unwrap_or(0);
            if let Some(at) = next {
                let me: Weak<dyn Deadline> = self.me.clone();
                self.timers.schedule_deadline(at, me);
            }
        }
        out
    }
}

impl Deadline for DelayedMessages {
    fn on_deadline(&self, now: Millis) {
        let due = self.take_due(now);
        let Some(owner) = self.owner.upgrade() else {
            return;
        };
        for held in due {
            owner.publish_due(&self.exchange, held, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-delay".into(), v);
        t
    }

    #[test]
    fn delays_as_the_plugin_reads_them() {
        let d = |v| delay_of(Some(&headers(v))).map_err(|e| e.text);
        assert_eq!(delay_of(None), Ok(None));
        assert_eq!(d(AMQPValue::LongInt(1500)), Ok(Some(1500)));
        assert_eq!(d(AMQPValue::ShortShortUInt(7)), Ok(Some(7)));
        assert_eq!(d(AMQPValue::LongLongInt(-5)), Ok(None));
        assert_eq!(d(AMQPValue::LongInt(0)), Ok(None));
        assert_eq!(d(AMQPValue::LongLongInt(MAX_DELAY + 1)), Ok(None));
        assert_eq!(d(AMQPValue::Double(20.9)), Ok(Some(20)));
        assert_eq!(d(AMQPValue::LongString("250".into())), Ok(Some(250)));
        assert_eq!(d(AMQPValue::Boolean(true)), Ok(None));
        assert_eq!(
            d(AMQPValue::LongString("soon".into())),
            Err("INTERNAL_ERROR".into())
        );
    }

    #[test]
    fn delayed_type_texts() {
        let mut args = FieldTable::default();
        assert_eq!(
            delayed_type(&args).map_err(|e| e.text),
            Err(
                "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must bean existing exchnage type"
                    .into()
            )
        );
        args.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("nope".into()),
        );
        assert_eq!(
            delayed_type(&args).map_err(|e| e.text),
            Err("COMMAND_INVALID - invalid exchange type 'nope'".into())
        );
        args.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("topic".into()),
        );
        assert_eq!(delayed_type(&args), Ok(ExchangeKind::Topic));
    }
}
