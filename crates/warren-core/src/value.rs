//! Reading AMQP field values the way RabbitMQ does: integers of any width as one number,
//! long and short strings as text, and RabbitMQ's names for field types (as its error texts
//! print them, e.g. "expected integer, got longstr").

use warren_codec::proto::AMQPValue;

/// An integer of any AMQP integer type (not a timestamp), as RabbitMQ's `type_class` groups them.
pub(crate) fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => i64::from(*x),
        AMQPValue::ShortShortUInt(x) => i64::from(*x),
        AMQPValue::ShortInt(x) => i64::from(*x),
        AMQPValue::ShortUInt(x) => i64::from(*x),
        AMQPValue::LongInt(x) => i64::from(*x),
        AMQPValue::LongUInt(x) => i64::from(*x),
        AMQPValue::LongLongInt(x) => *x,
        _ => return None,
    })
}

/// A long or short string, as text.
pub(crate) fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// RabbitMQ's type atom for a decoded field (`rabbit_binary_parser`).
pub(crate) fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        // RabbitMQ tables have no short-string tag; such a value travels as a long string.
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}
