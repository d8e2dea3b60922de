//! Stream filtering (RabbitMQ 3.13): a publisher tags a message with the header
//! `x-stream-filter-value`; a consumer with `x-stream-filter` (a string or a list of strings)
//! receives only messages tagged with one of those values, plus untagged ones if it set
//! `x-stream-match-unfiltered`. RabbitMQ filters by chunk with a Bloom filter and leaves exact
//! filtering to the client; Warren filters each message exactly while reading (on the pager
//! thread), so a filtering consumer is sent only what it asked for.

use warren_codec::proto::{AMQPProperties, AMQPValue, FieldTable};

use crate::value::str_value;

/// What a consumer asked to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    values: Vec<String>,
    match_unfiltered: bool,
}

impl Filter {
    /// The filter of `basic.consume` arguments, if they ask for one.
    pub fn from_args(args: &FieldTable) -> Option<Self> {
        let t = args.inner();
        let values: Vec<String> = match t.get("x-stream-filter")? {
            AMQPValue::FieldArray(a) => a.as_slice().iter().filter_map(str_value).collect(),
            v => str_value(v).into_iter().collect(),
        };
        let match_unfiltered = matches!(
            t.get("x-stream-match-unfiltered"),
            Some(AMQPValue::Boolean(true))
        );
        Some(Self {
            values,
            match_unfiltered,
        })
    }

    /// Whether a message with these properties passes.
    pub fn matches(&self, props: &AMQPProperties) -> bool {
        let value = props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-filter-value"))
            .and_then(str_value);
        match value {
            Some(v) => self.values.contains(&v),
            None => self.match_unfiltered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_codec::proto::{FieldArray, LongString};

    fn tagged(v: Option<&str>) -> AMQPProperties {
        let mut h = FieldTable::default();
        if let Some(v) = v {
            h.insert(
                "x-stream-filter-value".into(),
                AMQPValue::LongString(LongString::from(v)),
            );
        }
        AMQPProperties::default().with_headers(h)
    }

    #[test]
    fn filters() {
        assert_eq!(Filter::from_args(&FieldTable::default()), None);
        let mut a = FieldTable::default();
        a.insert(
            "x-stream-filter".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongString(LongString::from("red")),
                AMQPValue::LongString(LongString::from("blue")),
            ])),
        );
        let f = Filter::from_args(&a).expect("a filter");
        assert!(f.matches(&tagged(Some("red"))) && f.matches(&tagged(Some("blue"))));
        assert!(!f.matches(&tagged(Some("green"))) && !f.matches(&tagged(None)));
        a.insert("x-stream-match-unfiltered".into(), AMQPValue::Boolean(true));
        let f = Filter::from_args(&a).expect("a filter");
        assert!(f.matches(&tagged(None)) && !f.matches(&tagged(Some("green"))));
    }
}
