//! The `x-stream-offset` consumer argument: where a stream consumer starts.

use warren_codec::proto::{AMQPValue, FieldTable};

use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::args::parse_duration;
use crate::value::{int_value, str_value, type_name};

/// Where a consumer attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest message still in the stream.
    First,
    /// The start of the last chunk (the last sync round's batch), as RabbitMQ.
    Last,
    /// Only messages published from now on (the default).
    Next,
    /// This offset (the head if it is older; the end if beyond).
    Offset(u64),
    /// The first message published at or after this time (broker clock, ms).
    Timestamp(Millis),
}

/// Reads `x-stream-offset` from consumer arguments; `now` is the broker clock (for intervals
/// such as `1h`).
pub fn parse(args: &FieldTable, queue: &str, vhost: &str, now: Millis) -> AmqpResult<StartAt> {
    let Some(v) = args.inner().get("x-stream-offset") else {
        return Ok(StartAt::Next);
    };
    let bad = |shown: String| {
        AmqpError::precondition_failed(format!(
            "invalid arg 'x-stream-offset' for queue '{queue}' in vhost '{vhost}': {{invalid_stream_offset_arg,{{{},{shown}}}}}",
            type_name(v)
        ))
    };
    if let Some(s) = str_value(v) {
        return match s.as_str() {
            "first" => Ok(StartAt::First),
            "last" => Ok(StartAt::Last),
            "next" => Ok(StartAt::Next),
            _ => match parse_duration(&s) {
                Some(ms) => Ok(StartAt::Timestamp(now.saturating_sub(ms))),
                None => Err(bad(format!("<<\"{s}\">>"))),
            },
        };
    }
    if let AMQPValue::Timestamp(t) = v {
        return Ok(StartAt::Timestamp(t.saturating_mul(1000)));
    }
    match int_value(v) {
        Some(i) => Ok(StartAt::Offset(i.max(0) as u64)),
        None => Err(bad(match v {
            AMQPValue::Boolean(b) => b.to_string(),
            other => format!("{other:?}"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_codec::proto::LongString;

    fn p(v: AMQPValue) -> AmqpResult<StartAt> {
        let mut t = FieldTable::default();
        t.insert("x-stream-offset".into(), v);
        parse(&t, "s", "/", 10_000_000)
    }

    #[test]
    fn offsets() {
        let s = |x: &str| AMQPValue::LongString(LongString::from(x));
        assert_eq!(
            parse(&FieldTable::default(), "s", "/", 0).ok(),
            Some(StartAt::Next)
        );
        assert_eq!(p(s("first")).ok(), Some(StartAt::First));
        assert_eq!(p(s("last")).ok(), Some(StartAt::Last));
        assert_eq!(p(s("next")).ok(), Some(StartAt::Next));
        assert_eq!(
            p(AMQPValue::LongLongInt(42)).ok(),
            Some(StartAt::Offset(42))
        );
        assert_eq!(p(AMQPValue::ShortInt(-1)).ok(), Some(StartAt::Offset(0)));
        assert_eq!(
            p(AMQPValue::Timestamp(5)).ok(),
            Some(StartAt::Timestamp(5000))
        );
        assert_eq!(
            p(s("1h")).ok(),
            Some(StartAt::Timestamp(10_000_000 - 3_600_000))
        );
        assert_eq!(
            p(s("10x")).err().map(|e| e.text),
            Some("PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 's' in vhost '/': {invalid_stream_offset_arg,{longstr,<<\"10x\">>}}".into())
        );
        assert!(p(AMQPValue::Boolean(true))
            .err()
            .is_some_and(|e| e.text.ends_with("{invalid_stream_offset_arg,{bool,true}}")));
    }
}
