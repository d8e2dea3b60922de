//! Message deduplication. On exchanges ([`Dedup`]), in two dialects:
//!
//! - the community `rabbitmq-message-deduplication` plugin's exchange type
//!   `x-message-deduplication` (routes as fanout; `x-cache-size` required, `x-cache-ttl`,
//!   `x-cache-persistence`), and
//! - LavinMQ's `x-message-deduplication: true` argument on an exchange of any type (then
//!   `x-deduplication-header` names the header that holds the key).
//!
//! A message whose key (the value of its `x-deduplication-header` header, or of the header the
//! exchange names) was seen within the cache is routed nowhere; a message without it is not
//! checked. A per-message `x-cache-ttl` header overrides the exchange's TTL. When the cache is
//! full the oldest entry makes room. Time is the caller's `now`.
//!
//! On queues ([`Present`]), as the plugin's queue mode: a queue declared with
//! `x-message-deduplication: true` does not enqueue a message whose key is carried by a message
//! already in it (ready or unacknowledged); the key is free again once that message has left
//! (acknowledged, delivered without ack, dropped, expired, dead-lettered, purged).

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::value::{int_value, str_value};
use warren_codec::proto::{AMQPValue, FieldTable};

/// The header that holds the key (and, by default, the one LavinMQ reads).
pub const DEDUP_HEADER: &str = "x-deduplication-header";
/// Cache size when a LavinMQ-style declaration gives none.
pub const DEFAULT_CACHE_SIZE: usize = 100_000;

/// What the declare arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupArgs {
    /// Entries kept.
    pub size: usize,
    /// How long an entry counts (None: until evicted).
    pub ttl: Option<u64>,
    /// The header holding the key.
    pub header: String,
}

/// The plugin's reading of a numeric argument: a positive integer, or a string starting with
/// an integer (Elixir's `Integer.parse`).
fn positive(v: &AMQPValue) -> Option<Option<u64>> {
    if let Some(i) = int_value(v) {
        return (i > 0).then_some(Some(i as u64));
    }
    let s = str_value(v)?;
    let sign = usize::from(s.starts_with(['+', '-']));
    let digits = s[sign..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: i64 = s[..sign + digits].parse().unwrap_or(i64::MAX);
    Some((n > 0).then_some(n as u64))
}

/// The plugin exchange type's `validate/1`, with its texts.
pub fn parse_type_args(args: &FieldTable) -> AmqpResult<DedupArgs> {
    let size = args
        .inner()
        .get("x-cache-size")
        .and_then(positive)
        .ok_or_else(|| {
            AmqpError::precondition_failed(
                "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
            )
        })?;
    let ttl = match args.inner().get("x-cache-ttl") {
        None => None,
        Some(v) => positive(v).ok_or_else(|| {
            AmqpError::precondition_failed(
                "Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
            )
        })?,
    };
    match args.inner().get("x-cache-persistence") {
        None => {}
        Some(AMQPValue::LongString(s)) if matches!(s.as_bytes(), b"disk" | b"memory") => {}
        Some(_) => {
            return Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'",
            ))
        }
    }
    Ok(DedupArgs {
        size: size.map_or(DEFAULT_CACHE_SIZE, |n| n.min(usize::MAX as u64) as usize),
        ttl,
        header: DEDUP_HEADER.into(),
    })
}

/// LavinMQ's `x-message-deduplication: true` on another exchange type: `None` when absent or
/// false. Sizes and TTLs are read as the plugin reads them.
pub fn parse_flag_args(args: &FieldTable) -> AmqpResult<Option<DedupArgs>> {
    if !matches!(
        args.inner().get("x-message-deduplication"),
        Some(AMQPValue::Boolean(true))
    ) {
        return Ok(None);
    }
    let size = match args.inner().get("x-cache-size") {
        None => DEFAULT_CACHE_SIZE,
        Some(v) => match positive(v) {
            Some(Some(n)) => n.min(usize::MAX as u64) as usize,
            _ => {
                return Err(AmqpError::precondition_failed(
                    "Invalid argument, 'x-cache-size' must be an integer greater than 0",
                ))
            }
        },
    };
    let ttl = match args.inner().get("x-cache-ttl") {
        None => None,
        Some(v) => match positive(v) {
            Some(Some(n)) => Some(n),
            _ => {
                return Err(AmqpError::precondition_failed(
                    "Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
                ))
            }
        },
    };
    let header = match args.inner().get(DEDUP_HEADER) {
        None => DEDUP_HEADER.to_string(),
        Some(v) => str_value(v).ok_or_else(|| {
            AmqpError::precondition_failed(
                "Invalid argument, 'x-deduplication-header' must be a string",
            )
        })?,
    };
    Ok(Some(DedupArgs { size, ttl, header }))
}

/// A header value as a cache key.
fn key_of(v: &AMQPValue) -> String {
    if let Some(i) = int_value(v) {
        i.to_string()
    } else if let Some(s) = str_value(v) {
        s
    } else {
        format!("{v:?}")
    }
}

#[derive(Debug, Default)]
struct Cache {
    /// Key -> (expiry, 0 = never; insertion number).
    entries: HashMap<String, (Millis, u64)>,
    /// Keys in insertion order, with their insertion number (stale ones are skipped).
    order: VecDeque<(String, u64)>,
    counter: u64,
}

/// One exchange's deduplication cache.
#[derive(Debug)]
pub struct Dedup {
    args: DedupArgs,
    cache: Mutex<Cache>,
}

impl Dedup {
    /// An empty cache.
    pub fn new(args: DedupArgs) -> Self {
        Self {
            args,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Number of keys cached (expired ones included until they are looked at).
    pub fn len(&self) -> usize {
        self.cache.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a message with `headers` is a duplicate at `now`; if not and it has a key, the
    /// key is remembered.
    pub fn is_duplicate(&self, headers: Option<&FieldTable>, now: Millis) -> bool {
        let Some(h) = headers else { return false };
        let Some(v) = h.inner().get(self.args.header.as_str()) else {
            return false;
        };
        let key = key_of(v);
        let ttl = h
            .inner()
            .get("x-cache-ttl")
            .and_then(positive)
            .flatten()
            .or(self.args.ttl);
        let mut c = self.cache.lock();
        if let Some((expires, _)) = c.entries.get(&key) {
            if *expires == 0 || *expires > now {
                return true;
            }
        }
        c.counter += 1;
        let n = c.counter;
        let expires = ttl.map_or(0, |t| now.saturating_add(t).max(1));
        c.entries.insert(key.clone(), (expires, n));
        c.order.push_back((key, n));
        while c.entries.len() > self.args.size {
            let Some((k, n)) = c.order.pop_front() else {
                break;
            };
            if c.entries.get(&k).is_some_and(|(_, m)| *m == n) {
                c.entries.remove(&k);
            }
        }
        // Keep the order queue from growing with stale entries of re-inserted keys.
        if c.order.len() > 2 * c.entries.len() + 16 {
            let Cache { entries, order, .. } = &mut *c;
            order.retain(|(k, n)| entries.get(k).is_some_and(|(_, m)| m == n));
        }
        false
    }
}

/// The keys of the messages in one deduplicating queue.
#[derive(Debug)]
pub struct Present {
    header: String,
    /// Key -> messages in the queue carrying it (1 but for a restart's recovered duplicates).
    keys: Mutex<HashMap<String, u32>>,
}

impl Present {
    /// The queue's set, when its arguments ask for deduplication.
    pub fn of(args: &DedupArgs) -> Self {
        Self {
            header: args.header.clone(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, headers: Option<&FieldTable>) -> Option<String> {
        headers?.inner().get(self.header.as_str()).map(key_of)
    }

    /// Whether a message with `headers` may be enqueued (its key, if any, is then held).
    pub fn admit(&self, headers: Option<&FieldTable>) -> bool {
        let Some(key) = self.key(headers) else {
            return true;
        };
        let mut keys = self.keys.lock();
        if keys.contains_key(&key) {
            return false;
        }
        keys.insert(key, 1);
        true
    }

    /// Holds the key of a message already in the queue (recovered after a restart).
    pub fn hold(&self, headers: Option<&FieldTable>) {
        if let Some(key) = self.key(headers) {
            *self.keys.lock().entry(key).or_insert(0) += 1;
        }
    }

    /// A message with `headers` has left the queue.
    pub fn release(&self, headers: Option<&FieldTable>) {
        let Some(key) = self.key(headers) else { return };
        let mut keys = self.keys.lock();
        if let Some(n) = keys.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(&key);
            }
        }
    }

    /// Every message has left (purge).
    pub fn clear(&self) {
        self.keys.lock().clear();
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(DEDUP_HEADER.into(), AMQPValue::LongString(key.into()));
        t
    }

    #[test]
    fn ttl_size_and_per_message_ttl() {
        let d = Dedup::new(DedupArgs {
            size: 2,
            ttl: Some(100),
            header: DEDUP_HEADER.into(),
        });
        assert!(!d.is_duplicate(Some(&h("a")), 10));
        assert!(d.is_duplicate(Some(&h("a")), 109));
        assert!(!d.is_duplicate(Some(&h("a")), 110), "expired");
        assert!(!d.is_duplicate(Some(&h("b")), 111));
        assert!(!d.is_duplicate(Some(&h("c")), 112), "evicts a");
        assert!(!d.is_duplicate(Some(&h("a")), 113));
        assert!(!d.is_duplicate(None, 113));
        let mut long = h("z");
        long.insert("x-cache-ttl".into(), AMQPValue::LongInt(1000));
        assert!(!d.is_duplicate(Some(&long), 200));
        assert!(d.is_duplicate(Some(&h("z")), 900));
    }

    #[test]
    fn present_keys_are_held_while_queued() {
        let p = Present::of(&DedupArgs {
            size: DEFAULT_CACHE_SIZE,
            ttl: None,
            header: DEDUP_HEADER.into(),
        });
        assert!(p.admit(Some(&h("a"))));
        assert!(!p.admit(Some(&h("a"))), "a is queued");
        assert!(p.admit(Some(&h("b"))));
        assert!(p.admit(None), "no key: not checked");
        p.release(Some(&h("a")));
        assert!(p.admit(Some(&h("a"))), "a left");
        p.hold(Some(&h("a")));
        p.release(Some(&h("a")));
        assert!(!p.admit(Some(&h("a"))), "one of two recovered copies left");
        p.clear();
        assert!(p.is_empty());
    }

    #[test]
    fn plugin_argument_texts() {
        let err = |a: &FieldTable| parse_type_args(a).map_err(|e| e.text).err();
        let mut a = FieldTable::default();
        assert_eq!(
            err(&a).as_deref(),
            Some("PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' must be an integer greater than 0")
        );
        a.insert("x-cache-size".into(), AMQPValue::LongString("10".into()));
        assert!(err(&a).is_none());
        a.insert("x-cache-ttl".into(), AMQPValue::LongInt(0));
        assert_eq!(
            err(&a).as_deref(),
            Some("PRECONDITION_FAILED - Invalid argument, 'x-cache-ttl' must be an integer greater than 0")
        );
        a.insert("x-cache-ttl".into(), AMQPValue::LongInt(5));
        a.insert(
            "x-cache-persistence".into(),
            AMQPValue::LongString("tape".into()),
        );
        assert_eq!(
            err(&a).as_deref(),
            Some("PRECONDITION_FAILED - Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'")
        );
    }
}
