//! Read-only views of a vhost's topology for the management API and metrics: plain copies
//! taken under the topology's read lock, which is released before the caller looks at them.

use std::sync::Arc;

use super::VHost;
use crate::exchange::Destination;
use crate::queue::QueueRef;
use warren_codec::proto::FieldTable;

/// An exchange as the management API shows it.
#[derive(Debug, Clone)]
pub struct ExchangeInfo {
    /// Name (`""`: the default exchange).
    pub name: Arc<str>,
    /// Type name (`direct`, `x-consistent-hash`, ...).
    pub kind: &'static str,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Clients cannot publish to it.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// Its counters (`publish_in`, `publish_out`).
    pub stats: Arc<crate::stats::MessageStats>,
    /// The policy it runs with (`policy`, `effective_policy_definition`), if one matches.
    pub policy: Option<Arc<crate::policy::Applied>>,
    /// Messages a delayed-message exchange holds (`None`: not a delayed exchange).
    pub delayed: Option<usize>,
}

/// A binding as the management API shows it.
#[derive(Debug, Clone)]
pub struct BindingInfo {
    /// Source exchange.
    pub source: Arc<str>,
    /// Destination name.
    pub destination: Arc<str>,
    /// Whether the destination is a queue (else an exchange).
    pub to_queue: bool,
    /// Routing key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

impl ExchangeInfo {
    fn of(x: &crate::exchange::Exchange) -> Self {
        Self {
            name: x.name.clone(),
            kind: x.kind.as_str(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: x.arguments.clone(),
            stats: x.stats.clone(),
            policy: x.policy.clone(),
            delayed: x.delayed().map(|d| d.len()),
        }
    }
}

impl VHost {
    /// What the vhost's closed channels counted.
    pub fn retired_totals(&self) -> crate::stats::MessageTotals {
        *self.retired.lock()
    }

    /// Keeps the counts of a channel that closed.
    pub fn retire(&self, t: &crate::stats::MessageTotals) {
        self.retired.lock().add(t);
    }

    /// Every queue (handles; reading their counts takes each queue's own lock later).
    pub fn queues(&self) -> Vec<QueueRef> {
        self.topo.read().queues.values().cloned().collect()
    }

    /// Every exchange.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        self.topo
            .read()
            .exchanges
            .values()
            .map(ExchangeInfo::of)
            .collect()
    }

    /// One exchange.
    pub fn exchange_info(&self, name: &str) -> Option<ExchangeInfo> {
        self.topo.read().exchanges.get(name).map(ExchangeInfo::of)
    }

    /// Every binding between exchanges and queues (not the default exchange's implicit ones).
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let topo = self.topo.read();
        let mut out = Vec::new();
        for x in topo.exchanges.values() {
            for b in x.bindings() {
                let (destination, to_queue) = match b.destination {
                    Destination::Queue(q) => (q, true),
                    Destination::Exchange(e) => (e, false),
                };
                out.push(BindingInfo {
                    source: x.name.clone(),
                    destination,
                    to_queue,
                    routing_key: b.routing_key,
                    arguments: b.arguments,
                });
            }
        }
        out
    }
}
