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
//! Every held message is in memory (due order, for the timer). Persistent messages of a
//! durable exchange are also written to a store of the exchange's own through the group-commit
//! syncer (the publisher's confirm waits for the fsync), held again after a restart or a
//! crash, and forgotten once routed and durable in their queues.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use super::proto::{AMQPProperties, AMQPValue, FieldTable};
use super::ExchangeKind;
use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::timers::{Deadline, Timers};
use crate::store::sync::{SyncWaiter, Syncer};
use crate::store::StoreRef;
use crate::value::int_value;
use bytes::{Buf, BufMut, BytesMut};

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
    /// `held` is due: route it from exchange `exchange` as the delayed type would. Returns the
    /// sync epoch that makes it durable in its queues (0: nothing to wait for).
    fn publish_due(&self, exchange: &str, held: &Held, now: Millis) -> u64;
}

/// Where a durable delayed exchange keeps its persistent held messages: a message store of
/// its own (records: the message as it will be routed, its body prefixed with the wall-clock
/// due time, so that a restart knows how long is left).
#[derive(Clone)]
pub struct DelayedStore {
    /// The store.
    pub store: StoreRef,
    /// The sync service its writes go through.
    pub syncer: Arc<Syncer>,
}

#[derive(Debug)]
struct Entry {
    held: Held,
    /// Its id in the store, when stored.
    stored: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// By due time, then arrival (so that equal due times keep their order).
    due: BTreeMap<(Millis, u64), Entry>,
    /// The next store id, also the arrival number of the next message.
    next_id: u64,
    /// The time of the wake-up asked for (0: none pending).
    wake: Millis,
    /// Stored messages routed, to forget once their queues have them on disk: (epoch, id).
    routed: Vec<(u64, u64)>,
}

/// The messages one delayed exchange holds, in due order.
pub struct DelayedMessages {
    exchange: Arc<str>,
    state: Mutex<State>,
    timers: Timers,
    owner: Weak<dyn DelayedOwner>,
    store: Option<DelayedStore>,
    me: Weak<DelayedMessages>,
}

impl std::fmt::Debug for DelayedMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedMessages")
            .field("exchange", &self.exchange)
            .field("held", &self.len())
            .field("durable", &self.store.is_some())
            .finish()
    }
}

/// Milliseconds since the Unix epoch (due times on disk outlive the monotonic clock).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A held message as stored: its body prefixed with the wall-clock due time.
fn stored_form(m: &Message, due_wall: u64) -> Message {
    let mut body = BytesMut::with_capacity(8 + m.body.len());
    body.put_u64(due_wall);
    body.extend_from_slice(&m.body);
    Message {
        body: body.freeze(),
        raw_properties: m.raw_properties.clone(),
        exchange: m.exchange.clone(),
        routing_key: m.routing_key.clone(),
        persistent: m.persistent,
        priority: m.priority,
        ttl: m.ttl,
    }
}

impl DelayedMessages {
    /// A holder for exchange `exchange`; `owner` routes what falls due. With `store` (a durable
    /// exchange on a broker with a data dir), persistent messages are kept there, and what a
    /// previous run left is held again, due after the time it had left (`now`: the clock).
    pub fn new(
        exchange: Arc<str>,
        timers: Timers,
        owner: Weak<dyn DelayedOwner>,
        store: Option<DelayedStore>,
        now: Millis,
    ) -> Arc<Self> {
        let me = Arc::new_cyclic(|me| Self {
            exchange,
            state: Mutex::new(State::default()),
            timers,
            owner,
            store,
            me: me.clone(),
        });
        me.recover(now);
        me
    }

    fn recover(&self, now: Millis) {
        let Some(s) = &self.store else { return };
        let wall = wall_ms();
        let mut found = Vec::new();
        for r in s.store.take_recovered() {
            let mut body = r.message.body.clone();
            if body.len() < 8 {
                s.store.ack(r.id);
                continue;
            }
            let due_wall = body.get_u64();
            found.push((due_wall, r, body));
        }
        // Overdue messages all fall due now: they keep their due order by arrival number.
        found.sort_by_key(|(due_wall, r, _)| (*due_wall, r.id));
        let mut st = self.state.lock();
        st.next_id = s.store.next_id().max(found.len() as u64);
        for (arrival, (due_wall, r, body)) in found.into_iter().enumerate() {
            let raw = r.message.raw_properties.clone();
            let properties = warren_codec::decode_properties(&raw).unwrap_or_default();
            let message = Message::new(
                self.exchange.clone(),
                &r.message.routing_key,
                &properties,
                raw,
                body,
            );
            let at = now.saturating_add(due_wall.saturating_sub(wall));
            st.next_id = st.next_id.max(r.id + 1);
            st.due.insert(
                (at, arrival as u64),
                Entry {
                    held: Held {
                        message: Arc::new(message),
                        properties,
                    },
                    stored: Some(r.id),
                },
            );
        }
        if let Some(at) = st.due.first_key_value().map(|((at, _), _)| *at) {
            st.wake = at;
            let me: Weak<dyn Deadline> = self.me.clone();
            self.timers.schedule_deadline(at, me);
        }
    }

    /// Number of messages held.
    pub fn len(&self) -> usize {
        self.state.lock().due.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds `held` until `at` (`now`: the clock). A persistent message of a durable exchange
    /// is stored: returns the sync epoch that makes it durable (0: nothing to wait for).
    pub fn hold(&self, held: Held, at: Millis, now: Millis) -> u64 {
        let (wake, epoch) = {
            let mut s = self.state.lock();
            let id = s.next_id;
            s.next_id += 1;
            let mut epoch = 0;
            let stored = match &self.store {
                Some(st) if held.message.persistent => {
                    let due_wall = wall_ms().saturating_add(at.saturating_sub(now));
                    epoch = st
                        .store
                        .append(id, &stored_form(&held.message, due_wall), 0);
                    Some(id)
                }
                _ => None,
            };
            s.due.insert((at, id), Entry { held, stored });
            let wake = s.wake == 0 || at < s.wake;
            if wake {
                s.wake = at;
            }
            (wake, epoch)
        };
        if wake {
            let me: Weak<dyn Deadline> = self.me.clone();
            self.timers.schedule_deadline(at, me);
        }
        epoch
    }

    /// The exchange was deleted: its stored messages go with it.
    pub fn destroy(&self) {
        self.state.lock().due.clear();
        if let Some(s) = &self.store {
            s.store.destroy();
        }
    }

    /// Takes the messages due by `now`, in due order, and asks for the next wake-up.
    fn take_due(&self, now: Millis) -> Vec<Entry> {
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

    /// Forgets stored messages whose queues have them on disk.
    fn forget_routed(&self) {
        let Some(s) = &self.store else { return };
        let durable = s.syncer.durable();
        let mut st = self.state.lock();

        st.routed.retain(|(epoch, id)| {
            if *epoch <= durable {
                s.store.ack(*id);
                false
            } else {
                true
            }
        });
        // The syncer calls its waiters after every round: ask again for the rest.
        let rest = st.routed.iter().map(|(e, _)| *e).max();
        drop(st);
        if let (Some(epoch), Some(me)) = (rest, self.me.upgrade()) {
            let w: Arc<dyn SyncWaiter> = me;
            s.syncer.notify_when_durable(epoch, &w);
        }
    }
}

impl Deadline for DelayedMessages {
    fn on_deadline(&self, now: Millis) {
        let due = self.take_due(now);
        let Some(owner) = self.owner.upgrade() else {
            return;
        };
        let mut stored = false;
        for e in due {
            let epoch = owner.publish_due(&self.exchange, &e.held, now);
            if let Some(id) = e.stored {
                // Forgotten only once its queues hold it durably: a crash in between routes
                // it again after the restart (at least once, never lost).
                self.state.lock().routed.push((epoch, id));
                stored = true;
            }
        }
        if stored {
            self.forget_routed();
        }
    }
}

impl SyncWaiter for DelayedMessages {
    fn synced(&self) {
        self.forget_routed();
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
