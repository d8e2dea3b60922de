//! `queue.declare` arguments: parsed once, validated with RabbitMQ's texts
//! (`rabbit_amqqueue:declare_args/0` and its checkers), kept typed for the queue to use.
//!
//! Errors read `invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}`,
//! the Erlang-term style RabbitMQ prints. Unknown `x-` arguments are accepted and ignored.

use warren_codec::proto::{AMQPValue, FieldTable};

use crate::error::AmqpError;
use crate::value::{int_value, str_value, type_name};

/// What to do when a length limit is reached (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (`basic.nack` to confirming publishers).
    RejectPublish,
    /// Refuse and dead-letter the new message.
    RejectPublishDlx,
}

/// The queue type (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// `classic` (the default).
    #[default]
    Classic,
    /// `quorum`: served by the classic implementation on one node until replication exists.
    Quorum,
    /// `stream`: an append-only log consumers read from any offset (`queue/stream/`).
    Stream,
}

impl QueueKind {
    /// The type name as RabbitMQ reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        }
    }
}

/// Typed queue arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`, ms.
    pub message_ttl: Option<u64>,
    /// `x-expires`, ms.
    pub expires: Option<u64>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// Whether `x-overflow` was given (a policy's `overflow` applies only when not).
    pub overflow_given: bool,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-delivery-limit` (RabbitMQ has it on quorum queues; Warren on every queue).
    pub delivery_limit: Option<u64>,
    /// The limit that applies when neither `x-delivery-limit` nor a policy sets one (RabbitMQ
    /// 4.x's 20 for quorum queues under `amqp.compat = "4"`); set by the vhost, not parsed.
    pub default_delivery_limit: Option<u64>,
    /// `x-queue-type`.
    pub kind: QueueKind,
    /// `x-consumer-timeout`, ms (RabbitMQ 3.12+; 0 = none for this queue's consumers).
    pub consumer_timeout: Option<u64>,
    /// `x-max-age` (streams), ms.
    pub max_age: Option<u64>,
    /// `x-stream-max-segment-size-bytes` (streams).
    pub stream_max_segment_size: Option<u64>,
    /// `x-message-deduplication: true` (with `x-deduplication-header` naming the key's header):
    /// a message is not enqueued while one with the same key is in the queue.
    pub dedup: Option<crate::dedup::DedupArgs>,
}

/// Declare arguments RabbitMQ knows but a stream does not support (3.10.8 refuses them with
/// "... of queue type rabbit_stream_queue").
const NOT_FOR_STREAMS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-quorum-initial-group-size",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// Declare arguments RabbitMQ knows but a quorum queue does not support (3.10.8 refuses them,
/// before checking any argument's value, with "... of queue type rabbit_quorum_queue"; the
/// known arguments not in `rabbit_quorum_queue:capabilities/0`).
const NOT_FOR_QUORUM: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// Parses a RabbitMQ duration such as `7D` or `10m` (`rabbit_amqqueue:check_max_age/1`): a
/// positive integer and one of the units `Y` (365 days), `M` (30 days), `D`, `h`, `m`, `s`.
/// Returns milliseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (value, unit) = s.split_at(digits);
    let value: u64 = value.parse().ok().filter(|v| *v > 0)?;
    let unit_ms: u64 = match unit {
        "Y" => 365 * 86_400_000,
        "M" => 30 * 86_400_000,
        "D" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return None,
    };
    value.checked_mul(unit_ms)
}

impl QueueArgs {
    /// Parses and validates declare arguments for queue `queue` in `vhost`.
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<Self, AmqpError> {
        let bad = |key: &str, why: String| {
            AmqpError::precondition_failed(format!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let t = args.inner();
        if t.get("x-queue-type").and_then(str_value).as_deref() == Some("quorum") {
            if let Some(key) = NOT_FOR_QUORUM.iter().find(|k| t.contains_key(**k)) {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_quorum_queue"
                )));
            }
        }
        let int = |key: &str, min: i64| -> Result<Option<i64>, AmqpError> {
            let Some(v) = t.get(key) else { return Ok(None) };
            let Some(i) = int_value(v) else {
                return Err(bad(
                    key,
                    format!("\"expected integer, got {}\"", type_name(v)),
                ));
            };
            if i < 0 && min >= 0 {
                return Err(bad(key, format!("{{value_negative,{i}}}")));
            }
            if i < min {
                return Err(bad(key, format!("{{value_zero,{i}}}")));
            }
            Ok(Some(i))
        };
        let text = |key: &str| -> Result<Option<String>, AmqpError> {
            match t.get(key) {
                None => Ok(None),
                Some(v) => str_value(v)
                    .map(Some)
                    .ok_or_else(|| bad(key, format!("\"expected longstr, got {}\"", type_name(v)))),
            }
        };
        let mut a = QueueArgs {
            message_ttl: int("x-message-ttl", 0)?.map(|v| v as u64),
            expires: int("x-expires", 1)?.map(|v| v as u64),
            max_length: int("x-max-length", 0)?.map(|v| v as u64),
            max_length_bytes: int("x-max-length-bytes", 0)?.map(|v| v as u64),
            delivery_limit: int("x-delivery-limit", 0)?.map(|v| v as u64),
            consumer_timeout: int("x-consumer-timeout", 0)?.map(|v| v as u64),
            dead_letter_exchange: text("x-dead-letter-exchange")?,
            dead_letter_routing_key: text("x-dead-letter-routing-key")?,
            ..QueueArgs::default()
        };
        a.dedup = crate::dedup::parse_flag_args(args)?;
        if let Some(p) = int("x-max-priority", 0)? {
            if p > 255 {
                // rabbit_amqqueue:check_max_priority_arg/2.
                return Err(bad("x-max-priority", format!("{{max_value_exceeded,{p}}}")));
            }
            a.max_priority = Some(p as u8);
        }
        if a.dead_letter_routing_key.is_some() && a.dead_letter_exchange.is_none() {
            return Err(bad(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        if let Some(o) = text("x-overflow")? {
            a.overflow_given = true;
            a.overflow = match o.as_str() {
                "drop-head" => Overflow::DropHead,
                "reject-publish" => Overflow::RejectPublish,
                "reject-publish-dlx" => Overflow::RejectPublishDlx,
                // RabbitMQ's check_overflow/2 returns the bare atom, without the value.
                _ => return Err(bad("x-overflow", "invalid_overflow".into())),
            };
        }
        match t.get("x-single-active-consumer") {
            None => {}
            Some(AMQPValue::Boolean(b)) => a.single_active_consumer = *b,
            Some(v) => {
                return Err(bad(
                    "x-single-active-consumer",
                    format!("\"expected bool, got {}\"", type_name(v)),
                ))
            }
        }
        // Accepted for compatibility, with RabbitMQ 3.10.8's checks; Warren's classic queues
        // page to disk by themselves, so the mode and version change nothing.
        match t.get("x-queue-mode") {
            None => {}
            Some(v) => match str_value(v) {
                Some(m) if m == "default" || m == "lazy" => {}
                Some(m) => {
                    return Err(bad(
                        "x-queue-mode",
                        format!("\"unsupported queue mode '{m}'\""),
                    ))
                }
                None => {
                    return Err(bad(
                        "x-queue-mode",
                        format!("{{unacceptable_type,{}}}", type_name(v)),
                    ))
                }
            },
        }
        if let Some(v) = int("x-queue-version", 0)? {
            if v != 1 && v != 2 {
                return Err(bad(
                    "x-queue-version",
                    format!("\"unsupported queue version '{v}'\""),
                ));
            }
        }
        // RabbitMQ 3.10.8 answers a bad locator with 541 INTERNAL_ERROR and closes the
        // connection; Warren refuses it as a bad argument instead.
        if let Some(l) = text("x-queue-master-locator")? {
            if !matches!(l.as_str(), "min-masters" | "client-local" | "random") {
                return Err(bad(
                    "x-queue-master-locator",
                    format!("\"unsupported queue master locator '{l}'\""),
                ));
            }
        }
        // Quorum-queue arguments (accepted on every type, as RabbitMQ's declare_args): the group
        // size is that of a one-node cluster whatever is asked; the in-memory limits and the
        // leader locator change nothing on one node.
        int("x-quorum-initial-group-size", 1)?;
        int("x-max-in-memory-length", 0)?;
        int("x-max-in-memory-bytes", 0)?;
        if let Some(s) = text("x-dead-letter-strategy")? {
            if s != "at-most-once" && s != "at-least-once" {
                return Err(bad("x-dead-letter-strategy", "invalid_dlx_strategy".into()));
            }
        }
        if let Some(l) = text("x-queue-leader-locator")? {
            if l != "client-local" && l != "balanced" {
                return Err(bad(
                    "x-queue-leader-locator",
                    "invalid_queue_locator_arg".into(),
                ));
            }
        }
        a.stream_max_segment_size = int("x-stream-max-segment-size-bytes", 0)?.map(|v| v as u64);
        int("x-initial-cluster-size", 1)?;
        match t.get("x-max-age") {
            None => {}
            Some(AMQPValue::LongString(_) | AMQPValue::ShortString(_)) => {
                let s = text("x-max-age")?.unwrap_or_default();
                a.max_age = Some(
                    parse_duration(&s).ok_or_else(|| bad("x-max-age", "invalid_max_age".into()))?,
                );
            }
            Some(v) => {
                return Err(bad(
                    "x-max-age",
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                ))
            }
        }
        if let Some(ty) = text("x-queue-type")? {
            a.kind = match ty.as_str() {
                "classic" => QueueKind::Classic,
                // Served by the classic implementation (no replication here).
                "quorum" => QueueKind::Quorum,
                "stream" => QueueKind::Stream,
                _ => {
                    return Err(bad(
                        "x-queue-type",
                        format!("\"unsupported queue type '{ty}'\""),
                    ))
                }
            };
        }
        if a.kind == QueueKind::Stream {
            if let Some(key) = NOT_FOR_STREAMS.iter().find(|k| t.contains_key(**k)) {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_stream_queue"
                )));
            }
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_codec::proto::{LongString, ShortString};

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn err(entries: &[(&str, AMQPValue)]) -> String {
        QueueArgs::parse(&table(entries), "q", "/")
            .expect_err("invalid")
            .text
    }

    #[test]
    fn rabbitmq_texts() {
        assert_eq!(
            err(&[("x-max-length", AMQPValue::LongString(LongString::from("10")))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert_eq!(
            err(&[("x-max-length", AMQPValue::LongInt(-1))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert_eq!(
            err(&[(
                "x-overflow",
                AMQPValue::LongString(LongString::from("bogus"))
            )]),
            "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"
        );
        assert!(err(&[("x-message-ttl", AMQPValue::LongLongInt(-5))]).contains("value_negative"));
        assert!(err(&[("x-expires", AMQPValue::LongInt(0))]).contains("value_zero"));
        assert!(err(&[(
            "x-queue-type",
            AMQPValue::LongString(LongString::from("bogus"))
        )])
        .contains("unsupported queue type 'bogus'"));
    }

    #[test]
    fn quorum_arguments() {
        let q = || {
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("quorum")),
            )
        };
        // Refused before the value is checked.
        assert_eq!(
            err(&[q(), ("x-max-priority", AMQPValue::LongInt(500))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"
        );
        assert_eq!(
            err(&[q(), ("x-quorum-initial-group-size", AMQPValue::LongInt(0))]),
            "PRECONDITION_FAILED - invalid arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': {value_zero,0}"
        );
        // A classic queue takes x-max-priority, and checks its value.
        assert!(err(&[("x-max-priority", AMQPValue::LongInt(500))]).contains("max_value_exceeded"));
        let a = QueueArgs::parse(
            &table(&[q(), ("x-quorum-initial-group-size", AMQPValue::LongInt(3))]),
            "q",
            "/",
        )
        .expect("valid");
        assert_eq!(a.kind, QueueKind::Quorum);
        assert_eq!(a.default_delivery_limit, None);
    }

    #[test]
    fn stream_arguments() {
        let s = || {
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("stream")),
            )
        };
        let a = QueueArgs::parse(
            &table(&[
                s(),
                ("x-max-age", AMQPValue::LongString(LongString::from("7D"))),
                ("x-max-length-bytes", AMQPValue::LongInt(1000)),
                ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(100)),
                ("x-initial-cluster-size", AMQPValue::LongInt(3)),
            ]),
            "q",
            "/",
        )
        .expect("valid");
        assert_eq!(a.kind, QueueKind::Stream);
        assert_eq!(a.max_age, Some(7 * 86_400_000));
        assert_eq!(a.stream_max_segment_size, Some(100));
        assert_eq!(
            err(&[s(), ("x-max-priority", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_stream_queue"
        );
        assert_eq!(
            err(&[s(), ("x-max-age", AMQPValue::LongString(LongString::from("7X")))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 'q' in vhost '/': invalid_max_age"
        );
        assert_eq!(
            err(&[s(), ("x-max-age", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 'q' in vhost '/': {unacceptable_type,signedint}"
        );
        assert!(
            err(&[s(), ("x-initial-cluster-size", AMQPValue::LongInt(0))])
                .contains("{value_zero,0}")
        );
        // The same arguments on a classic queue are fine.
        assert!(QueueArgs::parse(
            &table(&[("x-max-priority", AMQPValue::LongInt(5))]),
            "q",
            "/"
        )
        .is_ok());
        for (t, ms) in [
            ("1Y", 365 * 86_400_000),
            ("2M", 60 * 86_400_000),
            ("3h", 10_800_000),
            ("10m", 600_000),
            ("5s", 5000),
        ] {
            assert_eq!(parse_duration(t), Some(ms), "{t}");
        }
        for t in ["", "h", "0s", "-1s", "1x", "1.5h"] {
            assert_eq!(parse_duration(t), None, "{t}");
        }
    }

    #[test]
    fn valid_arguments() {
        let a = QueueArgs::parse(
            &table(&[
                ("x-message-ttl", AMQPValue::ShortShortUInt(0)),
                ("x-max-priority", AMQPValue::LongInt(10)),
                (
                    "x-overflow",
                    AMQPValue::LongString(LongString::from("reject-publish")),
                ),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(LongString::from("dlx")),
                ),
                ("x-whatever", AMQPValue::Boolean(true)),
            ]),
            "q",
            "/",
        )
        .expect("valid");
        assert_eq!(a.message_ttl, Some(0));
        assert_eq!(a.max_priority, Some(10));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("dlx"));
    }
}
