//! Redeclaration equivalence, as RabbitMQ judges it, with its `inequivalent arg` texts.

use crate::error::{AmqpError, AmqpResult};
use crate::value::{int_value, str_value};
use warren_codec::proto::{AMQPValue, FieldTable};

pub(super) fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// `PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received
/// 'true' but current is 'false'`.
pub(super) fn inequivalent(
    vhost: &str,
    what: &str,
    arg: &str,
    name: &str,
    received: &str,
    current: &str,
) -> AmqpError {
    AmqpError::precondition_failed(format!(
        "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
    ))
}

/// Queue arguments RabbitMQ compares on redeclare (`rabbit_amqqueue:declare_args/0`); others
/// are stored and ignored.
const COMPARED_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-max-age",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// Checks a queue redeclaration's arguments against the existing ones.
pub(super) fn check_queue_args(
    vhost: &str,
    name: &str,
    old: &FieldTable,
    new: &FieldTable,
) -> AmqpResult<()> {
    for key in COMPARED_QUEUE_ARGS {
        let a = old.inner().get(*key);
        let b = new.inner().get(*key);
        let same = match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => values_equivalent(a, b),
            // A missing x-queue-type means classic.
            (None, Some(v)) | (Some(v), None) if *key == "x-queue-type" => {
                arg_display(Some(v)) == "classic"
            }
            _ => false,
        };
        if !same {
            if a.is_none() || b.is_none() {
                // rabbit_misc:val/1: `none` for a missing value, the value with its type for
                // the other side.
                let val = |v: Option<&AMQPValue>| match v {
                    None => "none".to_string(),
                    Some(v) => format!(
                        "the value '{}' of type '{}'",
                        arg_display(Some(v)),
                        crate::value::type_name(v)
                    ),
                };
                return Err(AmqpError::precondition_failed(format!(
                    "inequivalent arg '{key}' for queue '{name}' in vhost '{vhost}': received {} but current is {}",
                    val(b),
                    val(a)
                )));
            }
            return Err(inequivalent(
                vhost,
                "queue",
                key,
                name,
                &arg_display(b),
                &arg_display(a),
            ));
        }
    }
    Ok(())
}

/// Argument equivalence as RabbitMQ judges it: integers by value, strings by content.
pub(crate) fn values_equivalent(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (int_value(a), int_value(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (str_value(a), str_value(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// How an argument value appears in an "inequivalent arg" text.
pub(crate) fn arg_display(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => {
            if let Some(i) = int_value(v) {
                i.to_string()
            } else if let Some(s) = str_value(v) {
                s
            } else {
                match v {
                    AMQPValue::Boolean(b) => bool_str(*b).into(),
                    other => format!("{other:?}"),
                }
            }
        }
    }
}
