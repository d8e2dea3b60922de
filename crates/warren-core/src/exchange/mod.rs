//! Exchanges and their binding tables.
//!
//! An [`Exchange`] holds its declared properties, its bindings by destination, and a
//! [`Router`] for its type that indexes them for routing: a hash map for direct, a set for
//! fanout, a trie for topic ([`topic::TopicTrie`]) and a list of parsed `x-match` rules for
//! headers, weighted buckets for consistent-hash ([`consistent_hash`]); a delayed-message
//! exchange ([`delayed`]) routes with the router of its `x-delayed-type` and holds delayed
//! messages. Exchanges live in the vhost topology
//! (`crate::vhost`), which is read on every publish and written only by declare/bind/delete.

pub mod consistent_hash;
pub mod delayed;
mod direct;
mod fanout;
pub mod headers;
pub mod topic;

pub(crate) use warren_codec::proto;

use crate::dedup;
use proto::{AMQPProperties, AMQPValue, FieldTable};
use std::collections::HashMap;
use std::sync::Arc;

/// The built-in exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key equality.
    Direct,
    /// Every bound destination.
    Fanout,
    /// Dotted-word patterns with `*` and `#`.
    Topic,
    /// Header tables with `x-match`.
    Headers,
    /// Weighted consistent hashing (`x-consistent-hash`).
    ConsistentHash,
    /// Holds messages with an `x-delay`, routes as its `x-delayed-type` (`x-delayed-message`).
    Delayed,
    /// Fanout that drops duplicates (`x-message-deduplication`).
    Dedup,
}

impl ExchangeKind {
    /// Parses a type name from `exchange.declare`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            "x-consistent-hash" => Some(Self::ConsistentHash),
            "x-delayed-message" => Some(Self::Delayed),
            "x-message-deduplication" => Some(Self::Dedup),
            _ => None,
        }
    }
    /// The type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::ConsistentHash => "x-consistent-hash",
            Self::Delayed => "x-delayed-message",
            Self::Dedup => "x-message-deduplication",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A queue, by name.
    Queue(Arc<str>),
    /// An exchange, by name (exchange-to-exchange binding).
    Exchange(Arc<str>),
}

/// One binding as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Destination.
    pub destination: Destination,
    /// Routing key / pattern.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// What routing looks at in a message.
#[derive(Debug, Clone, Copy)]
pub struct Routable<'a> {
    /// The routing key.
    pub routing_key: &'a str,
    /// The headers table, if any.
    pub headers: Option<&'a FieldTable>,
    /// All properties, when known (a dead-lettered message is routed by key and headers).
    pub properties: Option<&'a AMQPProperties>,
}

/// The routing index of one exchange type: told about every binding added and removed (each
/// distinct `(destination, key, arguments)` once), asked for the destinations of a message.
/// One implementation per type, one file each (`direct.rs`, `fanout.rs`, `topic.rs`,
/// `headers.rs`, `consistent_hash.rs`).
pub trait Router: Send + Sync + std::fmt::Debug {
    /// A binding was added.
    fn add(&mut self, dest: &Destination, key: &str, args: &FieldTable);
    /// A binding was removed.
    fn remove(&mut self, dest: &Destination, key: &str, args: &FieldTable);
    /// Appends the destinations message `m` goes to (possibly with duplicates; the caller
    /// dedupes).
    fn route(&self, m: &Routable<'_>, out: &mut Vec<Destination>);
}

impl ExchangeKind {
    /// Checks the declare arguments this type reads, with the plugins' errors.
    pub fn validate_arguments(self, args: &FieldTable) -> crate::error::AmqpResult<()> {
        match self {
            Self::ConsistentHash => consistent_hash::parse_args(args).map(|_| ()),
            Self::Delayed => {
                let inner = delayed::delayed_type(args)?;
                inner.validate_arguments(args)
            }
            Self::Dedup => dedup::parse_type_args(args).map(|_| ()),
            _ => dedup::parse_flag_args(args).map(|_| ()),
        }
    }

    /// The deduplication an exchange of this type with `args` does, if any.
    fn dedup(self, args: &FieldTable) -> Option<dedup::Dedup> {
        let a = match self.routing_kind(args) {
            Self::Dedup => dedup::parse_type_args(args).ok(),
            _ => dedup::parse_flag_args(args).ok().flatten(),
        };
        a.map(dedup::Dedup::new)
    }

    /// The router for this type (arguments already validated; a delayed exchange gets its
    /// delayed type's).
    fn router(self, args: &FieldTable) -> Box<dyn Router> {
        match self {
            Self::Direct => Box::<direct::DirectRouter>::default(),
            Self::Fanout => Box::<fanout::FanoutRouter>::default(),
            Self::Topic => Box::<topic::TopicRouter>::default(),
            Self::Headers => Box::<headers::HeadersRouter>::default(),
            Self::Dedup => Box::<fanout::FanoutRouter>::default(),
            Self::ConsistentHash => Box::new(consistent_hash::ConsistentHashRouter::new(
                consistent_hash::parse_args(args).unwrap_or_default(),
            )),
            Self::Delayed => match delayed::delayed_type(args) {
                Ok(inner) => inner.router(args),
                Err(_) => Box::<direct::DirectRouter>::default(),
            },
        }
    }

    /// The type that routes: a delayed exchange's `x-delayed-type`, else the type itself.
    fn routing_kind(self, args: &FieldTable) -> Self {
        match self {
            Self::Delayed => delayed::delayed_type(args).unwrap_or(Self::Direct),
            k => k,
        }
    }
}

/// A declared exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Name (`""` for the default exchange).
    pub name: Arc<str>,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding (as a source) goes.
    pub auto_delete: bool,
    /// Cannot be published to by clients.
    pub internal: bool,
    /// Declare arguments as given.
    pub arguments: FieldTable,
    /// Every binding, by destination: `(key, arguments)` pairs (usually one). Adding,
    /// removing and dropping a destination cost O(its own bindings), whatever the total.
    by_dest: HashMap<Destination, Vec<(Box<str>, FieldTable)>>,
    count: usize,
    router: Box<dyn Router>,
    /// The type `router` routes as.
    routing_kind: ExchangeKind,
    /// Whether routing reads message properties (consistent-hash on `hash-property`).
    uses_properties: bool,
    /// A delayed exchange's held messages (set by the vhost that owns it).
    delayed: Option<Arc<delayed::DelayedMessages>>,
    /// A durable delayed exchange's store directory.
    pub store_dir: Option<String>,
    /// The deduplication cache, when the exchange deduplicates.
    dedup: Option<dedup::Dedup>,
    /// The policy it runs with (its `alternate-exchange` applies when the argument is not
    /// given).
    pub policy: Option<Arc<crate::policy::Applied>>,
    /// Its message counters (`publish_in`, `publish_out`).
    pub stats: std::sync::Arc<crate::stats::MessageStats>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            by_dest: HashMap::new(),
            count: 0,
            router: kind.router(&arguments),
            routing_kind: kind.routing_kind(&arguments),
            uses_properties: kind.routing_kind(&arguments) == ExchangeKind::ConsistentHash
                && matches!(
                    consistent_hash::parse_args(&arguments),
                    Ok(consistent_hash::HashOn::Property(_))
                ),
            delayed: None,
            store_dir: None,
            dedup: kind.dedup(&arguments),
            policy: None,
            stats: Default::default(),
            arguments,
        }
    }

    /// Gives a delayed exchange the holder of its delayed messages.
    pub fn with_delayed(mut self, held: Arc<delayed::DelayedMessages>) -> Self {
        self.delayed = Some(held);
        self
    }

    /// A delayed exchange's held messages.
    pub fn delayed(&self) -> Option<&Arc<delayed::DelayedMessages>> {
        self.delayed.as_ref()
    }

    /// Whether a message with `headers` is a duplicate the exchange drops (remembering its key
    /// if not).
    pub fn is_duplicate(&self, headers: Option<&FieldTable>, now: crate::clock::Millis) -> bool {
        self.dedup
            .as_ref()
            .is_some_and(|d| d.is_duplicate(headers, now))
    }

    /// Number of keys in the deduplication cache (`None`: the exchange does not deduplicate).
    pub fn dedup_cache_len(&self) -> Option<usize> {
        self.dedup.as_ref().map(dedup::Dedup::len)
    }

    /// Whether routing reads message properties (so a route cannot be cached by key alone).
    pub fn uses_properties(&self) -> bool {
        self.uses_properties
    }

    /// The `alternate-exchange` argument, if any.
    pub fn alternate_exchange(&self) -> Option<String> {
        match self.arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => self
                .policy
                .as_ref()
                .and_then(|p| p.alternate_exchange())
                .map(str::to_owned),
        }
    }

    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.count
    }

    /// All bindings with this exchange as source (in no particular order).
    pub fn bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        self.by_dest.iter().flat_map(|(d, v)| {
            v.iter().map(move |(k, a)| Binding {
                destination: d.clone(),
                routing_key: k.to_string(),
                arguments: a.clone(),
            })
        })
    }

    /// Whether exactly this binding exists (costs the destination's own bindings).
    pub fn has_binding(&self, b: &Binding) -> bool {
        self.by_dest.get(&b.destination).is_some_and(|v| {
            v.iter()
                .any(|(k, a)| **k == *b.routing_key && *a == b.arguments)
        })
    }

    /// Whether this exchange has a binding to `dest`.
    pub fn binds_to(&self, dest: &Destination) -> bool {
        self.by_dest.contains_key(dest)
    }

    /// Validates a binding for this exchange type (headers: `x-match`; consistent-hash: the
    /// key is a weight).
    pub fn validate_binding(&self, key: &str, arguments: &FieldTable) -> Result<(), String> {
        match self.routing_kind {
            ExchangeKind::Headers => headers::parse_x_match(arguments).map(|_| ()),
            ExchangeKind::ConsistentHash => consistent_hash::weight(key).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Adds a binding; false if an identical one exists. Call [`Self::validate_binding`] first.
    pub fn bind(&mut self, b: Binding) -> bool {
        let v = self.by_dest.entry(b.destination.clone()).or_default();
        if v.iter()
            .any(|(k, a)| **k == *b.routing_key && *a == b.arguments)
        {
            return false;
        }
        self.router
            .add(&b.destination, &b.routing_key, &b.arguments);
        v.push((b.routing_key.into_boxed_str(), b.arguments));
        self.count += 1;
        true
    }

    /// Removes a binding; false if it did not exist.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let Some(v) = self.by_dest.get_mut(&b.destination) else {
            return false;
        };
        let Some(i) = v
            .iter()
            .position(|(k, a)| **k == *b.routing_key && *a == b.arguments)
        else {
            return false;
        };
        let (key, args) = v.swap_remove(i);
        if v.is_empty() {
            self.by_dest.remove(&b.destination);
        }
        self.router.remove(&b.destination, &key, &args);
        self.count -= 1;
        true
    }

    /// Removes every binding to `dest`; returns how many were removed.
    pub fn unbind_destination(&mut self, dest: &Destination) -> usize {
        let Some(v) = self.by_dest.remove(dest) else {
            return 0;
        };
        for (k, a) in &v {
            self.router.remove(dest, k, a);
        }
        self.count -= v.len();
        v.len()
    }

    /// Appends the destinations message `m` goes to (possibly with duplicates; the caller
    /// dedupes across exchanges).
    pub fn route(&self, m: &Routable<'_>, out: &mut Vec<Destination>) {
        self.router.route(m, out);
    }
}
