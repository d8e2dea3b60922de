//! Events for the event exchange (`amq.rabbitmq.event`), as RabbitMQ's
//! `rabbitmq_event_exchange` plugin publishes them: routing key the event name
//! (`queue.created`, `binding.deleted`, ...), an empty body, `delivery_mode` 2, `timestamp` in
//! seconds, and the event's properties as headers (with `timestamp_in_ms`).
//!
//! This file builds the events; the vhost publishes them ([`crate::vhost::VHost`]'s
//! `emit_events`), and only when something is bound to the exchange: an unused event
//! exchange costs one read of its binding count per change, nothing per message.
//!
//! Hook for users and vhosts: `user.authentication.success/failure`, `vhost.created`,
//! `user.created` and friends are built with [`Event::new`] and the plugin's header names,
//! and given to the vhost the plugin publishes to (RabbitMQ: `/`, its `vhost` setting).

use warren_codec::proto::{AMQPValue, FieldArray, FieldTable, LongString};

use crate::value::{int_value, str_value, type_name};

/// The exchange events go to.
pub const EVENT_EXCHANGE: &str = "amq.rabbitmq.event";

/// RabbitMQ's name for the broker acting on its own (auto-delete, expiry, a closed
/// connection's exclusive queues).
pub const INTERNAL_USER: &str = "rmq-internal";

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its name and routing key, e.g. `queue.created`.
    pub name: &'static str,
    /// Its properties.
    pub headers: FieldTable,
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// An argument table as the plugin shows it: a list of Erlang-formatted
/// `{<<"name">>,type,value}` strings.
pub fn arguments(t: &FieldTable) -> AMQPValue {
    let mut a = FieldArray::default();
    for (k, v) in t.inner() {
        a.push(s(&format!(
            "{{<<\"{}\">>,{},{}}}",
            k.as_str(),
            type_name(v),
            erlang_value(v)
        )));
    }
    AMQPValue::FieldArray(a)
}

fn erlang_value(v: &AMQPValue) -> String {
    if let Some(i) = int_value(v) {
        return i.to_string();
    }
    if let Some(x) = str_value(v) {
        return format!("<<\"{x}\">>");
    }
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::FieldTable(t) => {
            let items: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{{<<\"{}\">>,{},{}}}",
                        k.as_str(),
                        type_name(v),
                        erlang_value(v)
                    )
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a
                .as_slice()
                .iter()
                .map(|v| format!("{{{},{}}}", type_name(v), erlang_value(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        other => format!("{other:?}"),
    }
}

impl Event {
    /// An event with `user` as `user_who_performed_action` and `vhost`.
    pub fn new(name: &'static str, user: &str, vhost: &str) -> Self {
        let mut headers = FieldTable::default();
        headers.insert("user_who_performed_action".into(), s(user));
        headers.insert("vhost".into(), s(vhost));
        Self { name, headers }
    }

    /// Adds a string header.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.headers.insert(k.into(), s(v));
        self
    }

    /// Adds a boolean header.
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        self.headers.insert(k.into(), AMQPValue::Boolean(v));
        self
    }

    /// Adds an integer header.
    pub fn int(mut self, k: &str, v: i64) -> Self {
        self.headers.insert(k.into(), AMQPValue::LongLongInt(v));
        self
    }

    /// Adds a header as it is.
    pub fn value(mut self, k: &str, v: AMQPValue) -> Self {
        self.headers.insert(k.into(), v);
        self
    }
}

impl Event {
    /// An event with only `user` as `user_who_performed_action` (no `vhost`: user events).
    pub fn bare(name: &'static str, user: &str) -> Self {
        let mut headers = FieldTable::default();
        headers.insert("user_who_performed_action".into(), s(user));
        Self { name, headers }
    }
}

/// The node's name as events show it (`rabbit@<short hostname>`, as the management API).
pub fn node_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        let short = host.split('.').next().unwrap_or("localhost").to_string();
        format!("rabbit@{short}")
    })
}

/// An IP address as Erlang prints its tuple (`{127,0,0,1}`; IPv6 as eight numbers).
pub fn erlang_ip(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{{{},{},{},{}}}", o[0], o[1], o[2], o[3])
        }
        std::net::IpAddr::V6(v6) => {
            let parts: Vec<String> = v6.segments().iter().map(|x| x.to_string()).collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

/// A list of strings as a field array (`tags`).
pub fn str_array<'a>(items: impl IntoIterator<Item = &'a str>) -> AMQPValue {
    let mut a = FieldArray::default();
    for i in items {
        a.push(s(i));
    }
    AMQPValue::FieldArray(a)
}
