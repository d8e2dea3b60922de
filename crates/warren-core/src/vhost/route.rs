//! Routing (exchange-to-exchange bindings, alternate exchanges) and dead-lettering, and the
//! vhost's side of [`QueueOwner`].

use std::sync::Arc;
use tracing::warn;

use super::VHost;
use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, Exchange};
use crate::queue::deadletter::is_cycle;
use crate::queue::{DeadLetter, QueueOwner, QueueRef, Reason};
use warren_codec::proto::{AMQPValue, FieldTable};

impl VHost {
    /// Finds the queues a message published to `exchange` with `routing_key` goes to, following
    /// exchange-to-exchange bindings (each exchange visited once, so loops terminate) and
    /// alternate exchanges (used by an exchange that routes nowhere).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> AmqpResult<Vec<QueueRef>> {
        self.route_from(exchange, routing_key, headers, true)
            .map(|(q, _)| q)
    }

    /// Like [`VHost::route`], also giving the exchange's shared name, so that messages do not
    /// each allocate their own copy of it.
    pub fn route_message(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> AmqpResult<(Vec<QueueRef>, Arc<str>)> {
        self.route_from(exchange, routing_key, headers, true)
    }

    /// Publishes a dead-lettered message to its dead-letter exchange (dropped if that exchange
    /// is missing), skipping target queues where it would cycle, as RabbitMQ does.
    pub fn publish_dead_letter(&self, dl: DeadLetter, reason: Reason, now: Millis) {
        let Ok((queues, _)) = self.route_from(
            &dl.message.exchange,
            &dl.message.routing_key,
            Some(&dl.headers),
            false,
        ) else {
            return;
        };
        let msg = Arc::new(dl.message);
        for q in queues {
            if reason != Reason::Rejected && is_cycle(q.name(), &dl.deaths) {
                warn!(queue = %q.name(), "dead-letter cycle without a rejection: message dropped");
                continue;
            }
            let _ = q.publish(msg.clone(), now);
        }
    }

    fn route_from(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        from_client: bool,
    ) -> AmqpResult<(Vec<QueueRef>, Arc<str>)> {
        // Sender-selected distribution: the CC and BCC headers' keys route too.
        let mut keys = vec![routing_key];
        if let Some(h) = headers {
            sender_selected_keys(h, &mut keys)?;
        }
        let topo = self.topo.read();
        let x = topo
            .exchanges
            .get(exchange)
            .ok_or_else(|| AmqpError::no_exchange(exchange, &self.name))?;
        if exchange.is_empty() {
            let mut q: Vec<QueueRef> = keys
                .iter()
                .filter_map(|k| topo.queues.get(*k).cloned())
                .collect();
            dedup_queues(&mut q);
            return Ok((q, x.name.clone()));
        }
        if x.internal && from_client {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        let mut visited: Vec<&str> = Vec::new();
        let mut pending: Vec<&Exchange> = vec![x];
        let mut dests: Vec<Destination> = Vec::new();
        let mut queues: Vec<QueueRef> = Vec::new();
        while let Some(x) = pending.pop() {
            if visited.contains(&&*x.name) {
                continue;
            }
            visited.push(&x.name);
            dests.clear();
            for key in &keys {
                x.route(key, headers, &mut dests);
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
        Ok((queues, x.name.clone()))
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
