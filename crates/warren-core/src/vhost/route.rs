//! Routing (exchange-to-exchange bindings, alternate exchanges) and dead-lettering, and the
//! vhost's side of [`QueueOwner`].

use std::sync::Arc;
use tracing::warn;

use super::VHost;
use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::delayed::{delay_of, DelayedMessages, DelayedOwner, Held};
use crate::exchange::{Destination, Exchange, Routable};
use crate::queue::deadletter::is_cycle;
use crate::queue::{DeadLetter, QueueOwner, QueueRef, Reason};
use warren_codec::proto::{AMQPProperties, AMQPValue, FieldTable};

/// Where a publish goes.
#[derive(Debug)]
pub struct Routed {
    /// The queues, each once.
    pub queues: Vec<QueueRef>,
    /// The exchange's shared name (messages keep it rather than a copy of their own).
    pub exchange: Arc<str>,
    /// Whether the result depends only on exchange, routing key and topology, so that a
    /// message without headers may reuse it (false when an exchange read the properties).
    pub cacheable: bool,
    /// The exchange holds the message instead of routing it: its holder and the delay (ms).
    pub delayed: Option<(Arc<DelayedMessages>, u64)>,
    /// The counters of the exchange published to.
    pub stats: Arc<crate::stats::MessageStats>,
}

impl VHost {
    /// Finds the queues a message published to `exchange` with `routing_key` goes to, following
    /// exchange-to-exchange bindings (each exchange visited once, so loops terminate) and
    /// alternate exchanges (used by an exchange that routes nowhere).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        now: Millis,
    ) -> AmqpResult<Vec<QueueRef>> {
        let m = Routable {
            routing_key,
            headers,
            properties: None,
        };
        self.route_from(exchange, &m, true, now).map(|r| r.queues)
    }

    /// Routes a client's publish: like [`VHost::route`], with the properties (consistent-hash
    /// exchanges may hash one), and a delayed exchange may hold the message instead.
    pub fn route_message(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &AMQPProperties,
        now: Millis,
    ) -> AmqpResult<Routed> {
        let m = Routable {
            routing_key,
            headers: properties.headers().as_ref(),
            properties: Some(properties),
        };
        self.route_from(exchange, &m, true, now)
    }

    /// Publishes a dead-lettered message to its dead-letter exchange (dropped if that exchange
    /// is missing), skipping target queues where it would cycle, as RabbitMQ does.
    pub fn publish_dead_letter(&self, dl: DeadLetter, reason: Reason, now: Millis) {
        let m = Routable {
            routing_key: &dl.message.routing_key,
            headers: Some(&dl.headers),
            properties: None,
        };
        let Ok(routed) = self.route_from(&dl.message.exchange, &m, false, now) else {
            return;
        };
        let msg = Arc::new(dl.message);
        for q in routed.queues {
            if reason != Reason::Rejected && is_cycle(q.name(), &dl.deaths) {
                warn!(queue = %q.name(), "dead-letter cycle without a rejection: message dropped");
                continue;
            }
            let _ = q.publish(msg.clone(), now);
        }
    }

    /// `from_client`: a client's publish (internal exchanges refuse it; delayed exchanges
    /// hold it when it has a delay). `now` ages deduplication caches.
    pub(super) fn route_from(
        &self,
        exchange: &str,
        m: &Routable<'_>,
        from_client: bool,
        now: Millis,
    ) -> AmqpResult<Routed> {
        // Sender-selected distribution: the CC and BCC headers' keys route too.
        // Only a message with headers can name extra keys, so the usual publish allocates
        // nothing here.
        let mut extra = Vec::new();
        if let Some(h) = m.headers {
            sender_selected_keys(h, &mut extra)?;
        }
        let keys = std::iter::once(m.routing_key).chain(extra.iter().copied());
        let topo = self.topo.read();
        let x = topo
            .exchanges
            .get(exchange)
            .ok_or_else(|| AmqpError::no_exchange(exchange, &self.name))?;
        if exchange.is_empty() {
            let mut q: Vec<QueueRef> = keys.filter_map(|k| topo.queues.get(k).cloned()).collect();
            dedup_queues(&mut q);
            return Ok(Routed {
                queues: q,
                exchange: x.name.clone(),
                stats: x.stats.clone(),
                cacheable: true,
                delayed: None,
            });
        }
        if x.internal && from_client {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        if let (Some(held), true) = (x.delayed(), from_client) {
            if let Some(delay) = delay_of(m.headers)? {
                return Ok(Routed {
                    queues: Vec::new(),
                    exchange: x.name.clone(),
                    stats: x.stats.clone(),
                    cacheable: false,
                    delayed: Some((held.clone(), delay)),
                });
            }
        }
        let mut cacheable = true;
        let mut visited: Vec<&str> = Vec::new();
        let mut pending: Vec<&Exchange> = vec![x];
        let mut dests: Vec<Destination> = Vec::new();
        let mut queues: Vec<QueueRef> = Vec::new();
        while let Some(x) = pending.pop() {
            if visited.contains(&&*x.name) {
                continue;
            }
            visited.push(&x.name);
            cacheable &= !x.uses_properties();
            // A duplicate goes nowhere from this exchange (not to its alternate either).
            if x.is_duplicate(m.headers, now) {
                continue;
            }
            dests.clear();
            for key in keys.clone() {
                let by_key = Routable {
                    routing_key: key,
                    headers: m.headers,
                    properties: m.properties,
                };
                x.route(&by_key, &mut dests);
            }
            if dests.is_empty() {
                if let Some(ae) = x
                    .alternate_exchange()
                    .and_then(|n| topo.exchanges.get(n.as_str()))
                {
                    pending.push(ae);
                }
                continue;
            }
            for d in &dests {
                match d {
                    Destination::Queue(n) => {
                        if let Some(q) = topo.queues.get(&**n) {
                            queues.push(q.clone());
                        }
                    }
                    Destination::Exchange(n) => {
                        if let Some(x) = topo.exchanges.get(&**n) {
                            pending.push(x);
                        }
                    }
                }
            }
        }
        dedup_queues(&mut queues);
        Ok(Routed {
            queues,
            exchange: x.name.clone(),
            stats: x.stats.clone(),
            cacheable,
            delayed: None,
        })
    }
}

impl DelayedOwner for VHost {
    fn publish_due(&self, exchange: &str, held: &Held, now: Millis) -> u64 {
        let m = Routable {
            routing_key: &held.message.routing_key,
            headers: held.properties.headers().as_ref(),
            properties: Some(&held.properties),
        };
        // The exchange may have gone since; then the message goes with it.
        let Ok(routed) = self.route_from(exchange, &m, false, now) else {
            return 0;
        };
        let mut epoch = 0;
        for q in routed.queues {
            if let crate::queue::Enqueued::Yes(e) = q.publish(held.message.clone(), now) {
                epoch = epoch.max(e);
            }
        }
        epoch
    }
}

/// Each queue once.
fn dedup_queues(queues: &mut Vec<QueueRef>) {
    if queues.len() > 1 {
        queues.sort_by_key(|q| Arc::as_ptr(q).cast::<()>() as usize);
        queues.dedup_by(|a, b| crate::queue::same(a, b));
    }
}

/// Appends the routing keys of the `CC` and `BCC` headers (arrays; their long-string elements
/// count, others are skipped, as in RabbitMQ's `rabbit_basic:header_routes`). Another type for
/// either header is RabbitMQ's 406.
fn sender_selected_keys<'a>(headers: &'a FieldTable, keys: &mut Vec<&'a str>) -> AmqpResult<()> {
    for name in ["CC", "BCC"] {
        match headers.inner().get(name) {
            None => {}
            Some(AMQPValue::FieldArray(a)) => {
                keys.extend(a.as_slice().iter().filter_map(|v| match v {
                    AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                    _ => None,
                }))
            }
            Some(other) => {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                    crate::value::type_name(other)
                )))
            }
        }
    }
    Ok(())
}

impl QueueOwner for VHost {
    fn dead_letter(&self, dl: DeadLetter, reason: Reason, now: Millis) {
        self.publish_dead_letter(dl, reason, now);
    }

    fn expired(&self, q: &QueueRef) {
        self.delete_queue_instance(q);
    }
}
