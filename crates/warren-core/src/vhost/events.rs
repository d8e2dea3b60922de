//! Publishing events to the vhost's event exchange (`amq.rabbitmq.event`, see
//! `crate::events`), and the events of topology changes with the plugin's headers.
//!
//! Events of a metadata command are collected while it is applied (under the topology lock)
//! and published after the lock is released, like follow-up commands. Nothing is built when
//! nothing is bound to the event exchange.

use bytes::Bytes;
use std::sync::Arc;

use super::{Topology, VHost};
use crate::clock::Millis;
use crate::events::{arguments, Event, EVENT_EXCHANGE, INTERNAL_USER};
use crate::exchange::Routable;
use crate::message::Message;
use crate::metadata::{BindingDef, ExchangeDef, QueueDef};
use warren_codec::proto::{AMQPProperties, AMQPValue};

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl VHost {
    pub(super) fn wants_events_in(topo: &Topology) -> bool {
        topo.exchanges
            .get(EVENT_EXCHANGE)
            .is_some_and(|x| x.binding_count() > 0)
    }

    /// Whether anything is bound to the event exchange (build events only then).
    pub fn wants_events(&self) -> bool {
        Self::wants_events_in(&self.topo.read())
    }

    /// Queues an event of the change being applied (published by [`Self::publish_events`]).
    pub(super) fn queue_event(&self, topo: &Topology, build: impl FnOnce() -> Event) {
        if Self::wants_events_in(topo) {
            self.events.lock().push(build());
        }
    }

    /// Publishes the events queued by the last apply.
    pub(super) fn publish_events(&self, now: Millis) {
        let events = std::mem::take(&mut *self.events.lock());
        for e in events {
            self.emit_event(e, now);
        }
    }

    /// Publishes `event` to the event exchange (not under the topology lock).
    pub fn emit_event(&self, event: Event, now: Millis) {
        let ms = wall_ms();
        let mut headers = event.headers;
        headers.insert("timestamp_in_ms".into(), AMQPValue::LongLongInt(ms as i64));
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(ms / 1000)
            .with_headers(headers);
        let m = Routable {
            routing_key: event.name,
            headers: props.headers().as_ref(),
            properties: Some(&props),
        };
        let Ok(routed) = self.route_from(EVENT_EXCHANGE, &m, false, now) else {
            return;
        };
        if routed.queues.is_empty() {
            return;
        }
        let raw = Bytes::from(warren_codec::encode_properties(&props));
        let msg = Arc::new(Message::new(
            routed.exchange,
            event.name,
            &props,
            raw,
            Bytes::new(),
        ));
        for q in routed.queues {
            let _ = q.publish(msg.clone(), now);
        }
    }
}

fn user_or_internal(user: Option<&str>) -> &str {
    user.unwrap_or(INTERNAL_USER)
}

/// `exchange.created`.
pub(super) fn exchange_created(d: &ExchangeDef, user: Option<&str>) -> Event {
    Event::new("exchange.created", user_or_internal(user), &d.vhost)
        .str("name", &d.name)
        .str("type", &d.kind)
        .bool("durable", d.durable)
        .bool("auto_delete", d.auto_delete)
        .bool("internal", d.internal)
        .value("arguments", arguments(&d.arguments))
        .str("policy", "")
}

/// `queue.created`.
pub(super) fn queue_created(d: &QueueDef, user: Option<&str>) -> Event {
    Event::new("queue.created", user_or_internal(user), &d.vhost)
        .str("name", &d.name)
        .bool("durable", d.durable)
        .bool("auto_delete", d.auto_delete)
        .value("arguments", arguments(&d.arguments))
        .str(
            "owner_pid",
            &d.exclusive_owner
                .map(|c| format!("<warren@localhost.{c}.0.0>"))
                .unwrap_or_default(),
        )
        .bool("exclusive", d.exclusive_owner.is_some())
}

/// `queue.deleted`, `exchange.deleted`.
pub(super) fn deleted(event: &'static str, vhost: &str, name: &str, user: Option<&str>) -> Event {
    Event::new(event, user_or_internal(user), vhost).str("name", name)
}

/// `binding.created`, `binding.deleted`.
pub(super) fn binding(event: &'static str, b: &BindingDef, user: Option<&str>) -> Event {
    Event::new(event, user_or_internal(user), &b.vhost)
        .str("source_name", &b.source)
        .str("source_kind", "exchange")
        .str("destination_name", &b.destination)
        .str("destination_kind", &b.destination_type)
        .str("routing_key", &b.routing_key)
        .value("arguments", arguments(&b.arguments))
}

/// A channel's pid-like name in events (`channel` of consumer events).
pub fn channel_pid(conn_id: u64, channel: u16) -> String {
    format!("<warren@localhost.{conn_id}.{channel}.0>")
}
