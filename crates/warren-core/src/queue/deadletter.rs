//! Dead-lettering: the message a dead-letter exchange receives, with the `x-death` header and
//! `x-first-death-*` headers exactly as RabbitMQ 3.x writes them
//! (`rabbit_dead_letter:make_msg/5`, `update_x_death_header/2`), and RabbitMQ's cycle rule.

use bytes::Bytes;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::{amq_props, Message};
use warren_codec::proto::{
    AMQPProperties, AMQPValue, FieldArray, FieldTable, LongString, ShortString,
};

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `basic.reject`/`basic.nack` with `requeue=false`.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// A length limit pushed it out (or refused it with `reject-publish-dlx`).
    Maxlen,
    /// It was returned more often than `x-delivery-limit`.
    DeliveryLimit,
}

impl Reason {
    /// The name written in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn text(v: Option<&AMQPValue>) -> Option<String> {
    crate::value::str_value(v?)
}

/// A copy of `p` without its `expiration` (amq-protocol has no way to unset one field).
fn without_expiration(p: &AMQPProperties, headers: FieldTable) -> AMQPProperties {
    let mut n = AMQPProperties::default().with_headers(headers);
    macro_rules! copy {
        ($get:ident, $set:ident) => {
            if let Some(v) = p.$get().clone() {
                n = n.$set(v);
            }
        };
    }
    copy!(content_type, with_content_type);
    copy!(content_encoding, with_content_encoding);
    copy!(delivery_mode, with_delivery_mode);
    copy!(priority, with_priority);
    copy!(correlation_id, with_correlation_id);
    copy!(reply_to, with_reply_to);
    copy!(message_id, with_message_id);
    copy!(timestamp, with_timestamp);
    copy!(kind, with_type);
    copy!(user_id, with_user_id);
    copy!(app_id, with_app_id);
    copy!(cluster_id, with_cluster_id);
    n
}

/// A dead-lettered copy of a message, ready to route.
#[derive(Debug)]
pub struct DeadLetter {
    /// The message to publish to the dead-letter exchange.
    pub message: Message,
    /// Its headers (for headers-exchange routing).
    pub headers: FieldTable,
    /// Queue names in its `x-death`, most recent first, with their reasons.
    pub deaths: Vec<(String, String)>,
}

/// Builds what the dead-letter exchange receives for `msg` dying in `queue` for `reason`.
pub fn dead_lettered(
    msg: &Message,
    reason: Reason,
    queue: &str,
    dlx: &str,
    dlrk: Option<&str>,
) -> DeadLetter {
    let props = amq_props(&msg.raw_properties).unwrap_or_default();
    let mut headers = props.headers().clone().unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    // The first routing key is the publish's, then any CC keys.
    let mut keys = vec![long_str(&msg.routing_key)];
    if let Some(AMQPValue::FieldArray(cc)) = headers.inner().get("CC") {
        keys.extend(
            cc.as_slice()
                .iter()
                .filter(|v| text(Some(v)).is_some())
                .cloned(),
        );
    }
    let mut info = FieldTable::default();
    info.insert("reason".into(), long_str(reason.as_str()));
    info.insert("queue".into(), long_str(queue));
    info.insert("time".into(), AMQPValue::Timestamp(now));
    info.insert("exchange".into(), long_str(&msg.exchange));
    info.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(keys)),
    );
    if let Some(exp) = props.expiration() {
        info.insert("original-expiration".into(), long_str(exp.as_str()));
    }

    let matches = |t: &FieldTable| {
        text(t.inner().get("queue")).as_deref() == Some(queue)
            && text(t.inner().get("reason")).as_deref() == Some(reason.as_str())
    };
    let deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(existing)) => {
            let mut found: Option<FieldTable> = None;
            let mut others = Vec::new();
            for v in existing.as_slice() {
                match v {
                    AMQPValue::FieldTable(t) if found.is_none() && matches(t) => {
                        found = Some(t.clone())
                    }
                    other => others.push(other.clone()),
                }
            }
            let entry = match found {
                Some(mut t) => {
                    let count = t
                        .inner()
                        .get("count")
                        .and_then(crate::value::int_value)
                        .unwrap_or(0);
                    t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
                    t
                }
                None => {
                    let mut t = info;
                    t.insert("count".into(), AMQPValue::LongLongInt(1));
                    t
                }
            };
            let mut all = vec![AMQPValue::FieldTable(entry)];
            all.extend(others);
            all
        }
        _ => {
            headers.insert("x-first-death-reason".into(), long_str(reason.as_str()));
            headers.insert("x-first-death-queue".into(), long_str(queue));
            headers.insert("x-first-death-exchange".into(), long_str(&msg.exchange));
            let mut t = info;
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            vec![AMQPValue::FieldTable(t)]
        }
    };
    let death_list = deaths
        .iter()
        .map(|d| match d {
            AMQPValue::FieldTable(t) => (
                text(t.inner().get("queue")).unwrap_or_default(),
                text(t.inner().get("reason")).unwrap_or_default(),
            ),
            _ => (String::new(), String::new()),
        })
        .collect();
    headers.insert(
        ShortString::from("x-death"),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if dlrk.is_some() && headers.contains_key("CC") {
        // With a dead-letter routing key the message goes by that key alone: RabbitMQ drops
        // the CC header (after recording its keys in x-death).
        let mut map = headers.inner().clone();
        map.remove("CC");
        headers = FieldTable::from(map);
    }

    let new_props = without_expiration(&props, headers.clone());
    let raw = Bytes::from(warren_codec::encode_properties(&new_props));
    let routing_key = dlrk.unwrap_or(&msg.routing_key);
    DeadLetter {
        message: Message {
            exchange: dlx.into(),
            routing_key: routing_key.into(),
            raw_properties: raw,
            body: msg.body.clone(),
            persistent: msg.persistent,
            priority: msg.priority,
            ttl: None,
        },
        headers,
        deaths: death_list,
    }
}

/// RabbitMQ's rule (`rabbit_dead_letter:is_cycle/2`): dead-lettering into `target` is a cycle
/// when `target` already appears in `x-death` and no death from the most recent one back to
/// that entry was a rejection. Such messages are dropped.
pub fn is_cycle(target: &str, deaths: &[(String, String)]) -> bool {
    match deaths.iter().position(|(q, _)| q == target) {
        None => false,
        Some(i) => deaths[..=i].iter().all(|(_, r)| r != "rejected"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_rule() {
        let d = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert!(is_cycle("q", &d(&[("q", "expired")])));
        assert!(!is_cycle("q", &d(&[("q", "rejected")])));
        assert!(!is_cycle(
            "work",
            &d(&[("retry", "expired"), ("work", "rejected")])
        ));
        assert!(is_cycle("a", &d(&[("b", "expired"), ("a", "maxlen")])));
        assert!(!is_cycle("z", &d(&[("b", "expired")])));
    }
}
