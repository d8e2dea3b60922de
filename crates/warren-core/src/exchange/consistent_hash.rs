//! The consistent-hash exchange (`x-consistent-hash`), as RabbitMQ's
//! `rabbitmq_consistent_hash_exchange` plugin: each binding's key is a weight (a positive
//! integer) that gives its destination that many buckets, appended after the buckets of the
//! bindings before it; a message goes to the destination of the bucket that jump consistent
//! hashing (Lamping & Veach) picks for its routing key, or for a header (`hash-header`) or a
//! property (`hash-property`: `message_id`, `correlation_id` or `timestamp`) when the exchange
//! says so. Adding a binding appends buckets, so only the keys that jump to them move.
//!
//! Buckets are not materialised: the router keeps each binding's weight and the running sums,
//! and finds the bucket's binding by binary search, so a weight of a billion costs nothing.

use super::proto::{AMQPValue, FieldTable};
use super::{Destination, Routable, Router};
use crate::error::{AmqpError, AmqpResult};
use crate::value::{int_value, str_value};

/// The properties the plugin can hash (`?PROPERTIES`).
const PROPERTIES: &[&str] = &["correlation_id", "message_id", "timestamp"];

/// What the exchange hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashOn {
    /// The routing key.
    #[default]
    RoutingKey,
    /// A header's value (`hash-header`).
    Header(String),
    /// A property (`hash-property`).
    Property(String),
}

/// The plugin's `hash_args/1` for one argument: a long string, or (anything else) the crash
/// RabbitMQ answers with (541 INTERNAL_ERROR, closing the connection).
fn string_arg(args: &FieldTable, name: &str) -> AmqpResult<Option<String>> {
    match args.inner().get(name) {
        None => Ok(None),
        Some(AMQPValue::LongString(s)) => Ok(Some(String::from_utf8_lossy(s.as_bytes()).into())),
        Some(_) => Err(AmqpError::internal_crash()),
    }
}

/// Validates the declare arguments (`validate/1`) and says what to hash.
pub fn parse_args(args: &FieldTable) -> AmqpResult<HashOn> {
    let header = string_arg(args, "hash-header")?;
    let property = string_arg(args, "hash-property")?;
    match (header, property) {
        (None, None) => Ok(HashOn::RoutingKey),
        (Some(h), None) => Ok(HashOn::Header(h)),
        (None, Some(p)) if PROPERTIES.contains(&p.as_str()) => Ok(HashOn::Property(p)),
        (None, Some(p)) => Err(AmqpError::precondition_failed(format!(
            "Unsupported property: {p}"
        ))),
        (Some(_), Some(_)) => Err(AmqpError::precondition_failed(
            "hash-header and hash-property are mutually exclusive",
        )),
    }
}

/// A binding key as a weight (`validate_binding/2`: Erlang's `list_to_integer`, then `>= 1`),
/// with the plugin's texts.
pub fn weight(key: &str) -> Result<u64, String> {
    let digits = key.strip_prefix(['+', '-']).unwrap_or(key);
    let bad = || format!("The binding key must be an integer: <<\"{key}\">>");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if key.starts_with('-') || digits.bytes().all(|b| b == b'0') {
        return Err("The binding key must be greater than 0".into());
    }
    // Larger than any sensible weight: the plugin would allocate that many buckets.
    digits.parse::<u64>().map_err(|_| bad())
}

/// The router: bindings in the order they were added, with their weights and running sums.
#[derive(Debug, Default)]
pub(super) struct ConsistentHashRouter {
    on: HashOn,
    bindings: Vec<(Destination, u64, Box<str>)>,
    /// `ends[i]`: the first bucket after binding `i`'s (a running sum of weights).
    ends: Vec<u64>,
}

impl ConsistentHashRouter {
    pub(super) fn new(on: HashOn) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }

    fn rebuild(&mut self) {
        self.ends.clear();
        let mut total = 0u64;
        for (_, w, _) in &self.bindings {
            total = total.saturating_add(*w);
            self.ends.push(total);
        }
    }

    /// The bytes hashed for a message (a missing header or property hashes as such, and so
    /// goes to one bucket consistently, as the plugin's `undefined` does).
    fn hash_input(&self, m: &Routable<'_>) -> u64 {
        let mut h = crc32fast::Hasher::new();
        match &self.on {
            HashOn::RoutingKey => h.update(m.routing_key.as_bytes()),
            HashOn::Header(name) => match m.headers.and_then(|t| t.inner().get(name.as_str())) {
                Some(v) => hash_value(&mut h, v),
                None => h.update(b"\0undefined"),
            },
            HashOn::Property(p) => {
                let v = m.properties.and_then(|props| match p.as_str() {
                    "message_id" => props.message_id().as_ref().map(|s| s.to_string()),
                    "correlation_id" => props.correlation_id().as_ref().map(|s| s.to_string()),
                    _ => props.timestamp().map(|t| t.to_string()),
                });
                match v {
                    Some(s) => h.update(s.as_bytes()),
                    None => h.update(b"\0undefined"),
                }
            }
        }
        splitmix64(u64::from(h.finalize()))
    }
}

fn hash_value(h: &mut crc32fast::Hasher, v: &AMQPValue) {
    if let Some(i) = int_value(v) {
        h.update(i.to_string().as_bytes());
    } else if let Some(s) = str_value(v) {
        h.update(s.as_bytes());
    } else {
        h.update(format!("{v:?}").as_bytes());
    }
}

/// Spreads a 32-bit checksum over 64 bits (SplitMix64's finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Jump consistent hash (Lamping & Veach, 2014): a bucket in `0..n` for `key`; growing `n`
/// moves a key only to one of the new buckets.
fn jump(mut key: u64, n: u64) -> u64 {
    let (mut b, mut j) = (0u64, 0u64);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as u64;
    }
    b
}

impl Router for ConsistentHashRouter {
    fn add(&mut self, dest: &Destination, key: &str, _args: &FieldTable) {
        let Ok(w) = weight(key) else {
            return;
        };
        self.bindings.push((dest.clone(), w, key.into()));
        self.rebuild();
    }

    fn remove(&mut self, dest: &Destination, key: &str, _args: &FieldTable) {
        if let Some(i) = self
            .bindings
            .iter()
            .position(|(d, _, k)| d == dest && **k == *key)
        {
            self.bindings.remove(i);
            self.rebuild();
        }
    }

    fn route(&self, m: &Routable<'_>, out: &mut Vec<Destination>) {
        let Some(&total) = self.ends.last() else {
            return;
        };
        let bucket = jump(self.hash_input(m), total);
        let i = self.ends.partition_point(|&end| end <= bucket);
        if let Some((d, _, _)) = self.bindings.get(i) {
            out.push(d.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: &str) -> Destination {
        Destination::Queue(n.into())
    }

    fn route_key(r: &ConsistentHashRouter, key: &str) -> Destination {
        let mut out = Vec::new();
        r.route(
            &Routable {
                routing_key: key,
                headers: None,
                properties: None,
            },
            &mut out,
        );
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn weights_follow_erlang_list_to_integer() {
        assert_eq!(weight("3"), Ok(3));
        assert_eq!(weight("+5"), Ok(5));
        assert_eq!(
            weight("0"),
            Err("The binding key must be greater than 0".into())
        );
        assert_eq!(
            weight("-3"),
            Err("The binding key must be greater than 0".into())
        );
        assert_eq!(
            weight("abc"),
            Err("The binding key must be an integer: <<\"abc\">>".into())
        );
        assert_eq!(
            weight(""),
            Err("The binding key must be an integer: <<\"\">>".into())
        );
        assert_eq!(
            weight(" 5"),
            Err("The binding key must be an integer: <<\" 5\">>".into())
        );
    }

    #[test]
    fn distribution_follows_weights_and_growth_moves_only_the_new_share() {
        let mut r = ConsistentHashRouter::new(HashOn::RoutingKey);
        for i in 0..10 {
            r.add(
                &q(&format!("q{i}")),
                if i == 0 { "2" } else { "1" },
                &FieldTable::default(),
            );
        }
        let n = 110_000;
        let before: Vec<Destination> = (0..n).map(|k| route_key(&r, &k.to_string())).collect();
        let q0 = before.iter().filter(|d| **d == q("q0")).count();
        let q1 = before.iter().filter(|d| **d == q("q1")).count();
        // Expected 2/11 and 1/11 of the keys.
        assert!((q0 as f64 / 20_000.0 - 1.0).abs() < 0.05, "{q0}");
        assert!((q1 as f64 / 10_000.0 - 1.0).abs() < 0.05, "{q1}");
        r.add(&q("new"), "1", &FieldTable::default());
        let mut moved = 0;
        for (k, old) in before.iter().enumerate() {
            let now = route_key(&r, &k.to_string());
            if now != *old {
                assert_eq!(now, q("new"), "a key moved between old queues");
                moved += 1;
            }
        }
        // 1/12 of the keys move, all to the new queue.
        assert!(
            (moved as f64 / (n as f64 / 12.0) - 1.0).abs() < 0.05,
            "{moved}"
        );
        r.remove(&q("new"), "1", &FieldTable::default());
        for (k, old) in before.iter().enumerate() {
            assert_eq!(route_key(&r, &k.to_string()), *old);
        }
    }

    #[test]
    fn header_and_property_arguments() {
        let mut args = FieldTable::default();
        args.insert("hash-header".into(), AMQPValue::LongString("h".into()));
        assert_eq!(parse_args(&args).ok(), Some(HashOn::Header("h".into())));
        args.insert(
            "hash-property".into(),
            AMQPValue::LongString("message_id".into()),
        );
        assert!(parse_args(&args).is_err());
        let mut args = FieldTable::default();
        args.insert(
            "hash-property".into(),
            AMQPValue::LongString("app_id".into()),
        );
        assert_eq!(
            parse_args(&args).map_err(|e| e.text),
            Err("PRECONDITION_FAILED - Unsupported property: app_id".into())
        );
    }
}
