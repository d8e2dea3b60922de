//! Exchanges and their binding tables.
//!
//! An [`Exchange`] holds its declared properties and a [`BindingTable`] indexed for its type:
//! a hash map for direct, a list for fanout, a trie for topic ([`topic::TopicTrie`]) and a list
//! of parsed `x-match` rules for headers. Exchanges live in the vhost topology
//! (`crate::vhost`), which is read on every publish and written only by declare/bind/delete.

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

/// An exchange's bindings, indexed for its type.
#[derive(Debug)]
pub struct BindingTable {
    all: Vec<Binding>,
    direct: HashMap<String, Vec<Destination>>,
    fanout: Vec<Destination>,
    topic: topic::TopicTrie<Destination>,
    headers: Vec<(headers::XMatch, FieldTable, Destination)>,
}

impl BindingTable {
    fn new() -> Self {
        Self {
            all: Vec::new(),
            direct: HashMap::new(),
            fanout: Vec::new(),
            topic: topic::TopicTrie::new(),
            headers: Vec::new(),
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
    bindings: BindingTable,
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
            bindings: BindingTable::new(),
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

    /// All bindings with this exchange as source.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings.all
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
        if self.bindings.all.contains(&b) {
            return false;
        }
        let t = &mut self.bindings;
        match self.kind {
            ExchangeKind::Direct => t
                .direct
                .entry(b.routing_key.clone())
                .or_default()
                .push(b.destination.clone()),
            ExchangeKind::Fanout => t.fanout.push(b.destination.clone()),
            ExchangeKind::Topic => {
                t.topic.insert(&b.routing_key, b.destination.clone());
            }
            ExchangeKind::Headers => {
                let xm = headers::parse_x_match(&b.arguments).unwrap_or(headers::XMatch::All);
                t.headers
                    .push((xm, b.arguments.clone(), b.destination.clone()));
            }
        }
        t.all.push(b);
        true
    }

    /// Removes a binding; false if it did not exist.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let t = &mut self.bindings;
        let Some(pos) = t.all.iter().position(|x| x == b) else {
            return false;
        };
        t.all.remove(pos);
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(v) = t.direct.get_mut(&b.routing_key) {
                    if let Some(i) = v.iter().position(|d| *d == b.destination) {
                        v.remove(i);
                    }
                    if v.is_empty() {
                        t.direct.remove(&b.routing_key);
                    }
                }
            }
            ExchangeKind::Fanout => {
                if let Some(i) = t.fanout.iter().position(|d| *d == b.destination) {
                    t.fanout.remove(i);
                }
            }
            ExchangeKind::Topic => {
                // The trie holds (pattern, destination) once; keep it while another binding
                // with the same pair (other arguments) remains.
                let still = t
                    .all
                    .iter()
                    .any(|x| x.routing_key == b.routing_key && x.destination == b.destination);
                if !still {
                    t.topic.remove(&b.routing_key, &b.destination);
                }
            }
            ExchangeKind::Headers => {
                if let Some(i) = t
                    .headers
                    .iter()
                    .position(|(_, args, d)| *d == b.destination && *args == b.arguments)
                {
                    t.headers.remove(i);
                }
            }
        }
        true
    }

    /// Removes every binding to `dest`; returns how many were removed.
    pub fn unbind_destination(&mut self, dest: &Destination) -> usize {
        let doomed: Vec<Binding> = self
            .bindings
            .all
            .iter()
            .filter(|b| b.destination == *dest)
            .cloned()
            .collect();
        for b in &doomed {
            self.unbind(b);
        }
        doomed.len()
    }

    /// Appends the destinations a message with `routing_key` and `headers` goes to (possibly
    /// with duplicates; the caller dedupes across exchanges).
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let t = &self.bindings;
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(v) = t.direct.get(routing_key) {
                    out.extend(v.iter().cloned());
                }
            }
            ExchangeKind::Fanout => out.extend(t.fanout.iter().cloned()),
            ExchangeKind::Topic => t.topic.route(routing_key, out),
            ExchangeKind::Headers => {
                for (xm, args, d) in &t.headers {
                    if headers::headers_match(*xm, args, headers) {
                        out.push(d.clone());
                    }
                }
            }
        }
    }
}
