//! Method identities: the `(class_id, method_id)` pairs of AMQP 0-9-1 with RabbitMQ's
//! extensions, their names as RabbitMQ prints them (`basic.publish`), and which carry content.

use crate::proto::AMQPClass;

/// `(class_id, method_id, name, has_content)` for every method of 0-9-1 plus RabbitMQ extensions
/// (`rabbitmq_codegen/amqp-rabbitmq-0.9.1.json`).
const METHODS: &[(u16, u16, &str, bool)] = &[
    (10, 10, "connection.start", false),
    (10, 11, "connection.start_ok", false),
    (10, 20, "connection.secure", false),
    (10, 21, "connection.secure_ok", false),
    (10, 30, "connection.tune", false),
    (10, 31, "connection.tune_ok", false),
    (10, 40, "connection.open", false),
    (10, 41, "connection.open_ok", false),
    (10, 50, "connection.close", false),
    (10, 51, "connection.close_ok", false),
    (10, 60, "connection.blocked", false),
    (10, 61, "connection.unblocked", false),
    (10, 70, "connection.update_secret", false),
    (10, 71, "connection.update_secret_ok", false),
    (20, 10, "channel.open", false),
    (20, 11, "channel.open_ok", false),
    (20, 20, "channel.flow", false),
    (20, 21, "channel.flow_ok", false),
    (20, 40, "channel.close", false),
    (20, 41, "channel.close_ok", false),
    (30, 10, "access.request", false),
    (30, 11, "access.request_ok", false),
    (40, 10, "exchange.declare", false),
    (40, 11, "exchange.declare_ok", false),
    (40, 20, "exchange.delete", false),
    (40, 21, "exchange.delete_ok", false),
    (40, 30, "exchange.bind", false),
    (40, 31, "exchange.bind_ok", false),
    (40, 40, "exchange.unbind", false),
    (40, 51, "exchange.unbind_ok", false),
    (50, 10, "queue.declare", false),
    (50, 11, "queue.declare_ok", false),
    (50, 20, "queue.bind", false),
    (50, 21, "queue.bind_ok", false),
    (50, 30, "queue.purge", false),
    (50, 31, "queue.purge_ok", false),
    (50, 40, "queue.delete", false),
    (50, 41, "queue.delete_ok", false),
    (50, 50, "queue.unbind", false),
    (50, 51, "queue.unbind_ok", false),
    (60, 10, "basic.qos", false),
    (60, 11, "basic.qos_ok", false),
    (60, 20, "basic.consume", false),
    (60, 21, "basic.consume_ok", false),
    (60, 30, "basic.cancel", false),
    (60, 31, "basic.cancel_ok", false),
    (60, 40, "basic.publish", true),
    (60, 50, "basic.return", true),
    (60, 60, "basic.deliver", true),
    (60, 70, "basic.get", false),
    (60, 71, "basic.get_ok", true),
    (60, 72, "basic.get_empty", false),
    (60, 80, "basic.ack", false),
    (60, 90, "basic.reject", false),
    (60, 100, "basic.recover_async", false),
    (60, 110, "basic.recover", false),
    (60, 111, "basic.recover_ok", false),
    (60, 120, "basic.nack", false),
    (85, 10, "confirm.select", false),
    (85, 11, "confirm.select_ok", false),
    (90, 10, "tx.select", false),
    (90, 11, "tx.select_ok", false),
    (90, 20, "tx.commit", false),
    (90, 21, "tx.commit_ok", false),
    (90, 30, "tx.rollback", false),
    (90, 31, "tx.rollback_ok", false),
];

fn lookup(class_id: u16, method_id: u16) -> Option<&'static (u16, u16, &'static str, bool)> {
    METHODS
        .iter()
        .find(|(c, m, _, _)| *c == class_id && *m == method_id)
}

/// Whether `(class_id, method_id)` names a method this protocol defines.
pub fn is_known(class_id: u16, method_id: u16) -> bool {
    lookup(class_id, method_id).is_some()
}

/// RabbitMQ's name for a method, e.g. `basic.publish`, or `"unknown"`.
pub fn name(class_id: u16, method_id: u16) -> &'static str {
    lookup(class_id, method_id).map_or("unknown", |m| m.2)
}

/// Whether the method is followed by a content header and body frames.
pub fn has_content(class_id: u16, method_id: u16) -> bool {
    lookup(class_id, method_id).is_some_and(|m| m.3)
}

/// The `(class_id, method_id)` of a decoded method.
pub fn ids(method: &AMQPClass) -> (u16, u16) {
    (method.get_amqp_class_id(), method.get_amqp_method_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_content() {
        assert_eq!(name(60, 40), "basic.publish");
        assert!(has_content(60, 40));
        assert!(!has_content(60, 80));
        assert!(is_known(40, 51));
        assert!(!is_known(40, 41));
        assert_eq!(name(1, 1), "unknown");
    }
}
