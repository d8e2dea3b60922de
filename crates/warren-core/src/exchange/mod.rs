//! Exchanges and their binding tables.
//!
//! An [`Exchange`] holds its declared properties, its bindings by destination, and a
//! [`Router`] for its type that indexes them for routing: a hash map for direct, a set for
//! fanout, a trie for topic ([`topic::TopicTrie`]) and a list of parsed `x-match` rules for
//! headers. Exchanges live in the vhost topology
//! (`crate::vhost`), which is read on every publish and written only by declare/bind/delete.

mod direct;
mod fanout;
pub mod headers;
pub mod topic;

pub(crate) use warren_codec::proto;

use proto::{AMQPValue, FieldTable};
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
}

impl ExchangeKind {
    /// Parses a type name from `exchange.declare`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
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

/// The routing index of one exchange type: told about every binding added and removed (each
/// distinct `(destination, key, arguments)` once), asked for the destinations of a message.
/// One implementation per type, one file each (`direct.rs`, `fanout.rs`, `topic.rs`,
/// `headers.rs`); new types (delayed, consistent-hash) plug in here.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// A binding was added.
    fn add(&mut self, dest: &Destination, key: &str, args: &FieldTable);
    /// A binding was removed.
    fn remove(&mut self, dest: &Destination, key: &str, args: &FieldTable);
    /// Appends the destinations a message with `routing_key` and `headers` goes to (possibly
    /// with duplicates; the caller dedupes).
    fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>);
}

impl ExchangeKind {
    fn router(self) -> Box<dyn Router> {
        match self {
            Self::Direct => Box::<direct::DirectRouter>::default(),
            Self::Fanout => Box::<fanout::FanoutRouter>::default(),
            Self::Topic => Box::<topic::TopicRouter>::default(),
            Self::Headers => Box::<headers::HeadersRouter>::default(),
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
            arguments,
            by_dest: HashMap::new(),
            count: 0,
            router: kind.router(),
        }
    }

    /// The `alternate-exchange` argument, if any.
    pub fn alternate_exchange(&self) -> Option<String> {
        match self.arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
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

    /// Validates binding arguments for this exchange type (headers: `x-match`).
    pub fn validate_binding(&self, arguments: &FieldTable) -> Result<(), String> {
        if self.kind == ExchangeKind::Headers {
            headers::parse_x_match(arguments).map(|_| ())
        } else {
            Ok(())
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

    /// Appends the destinations a message with `routing_key` and `headers` goes to (possibly
    /// with duplicates; the caller dedupes across exchanges).
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        self.router.route(routing_key, headers, out);
    }
}
