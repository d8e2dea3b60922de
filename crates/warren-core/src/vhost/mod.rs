//! A virtual host: its exchanges, queues and bindings (the "topology"), and routing.
//!
//! The topology sits behind one `RwLock`: publishes take the read side to compute their target
//! queues and drop it before touching any queue; metadata commands take the write side
//! briefly. No guard is ever held across an `.await`. Texts of the errors mirror RabbitMQ
//! 3.10.8.
//!
//! Files: this one (the state and lookups), `topology.rs` (checking and applying metadata
//! commands: the only code that changes the topology), `route.rs` (routing and
//! dead-lettering), `equivalence.rs` (redeclaration rules), `storage.rs` (store directories,
//! recovery, snapshots), `events.rs` (the event exchange's events).

mod equivalence;
mod events;
mod inspect;
mod route;
mod storage;
mod topology;

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, Exchange, ExchangeKind};
use crate::metadata::{Command, VhostLimits};
use crate::queue::{QueueRef, Services};
use warren_codec::proto::FieldTable;

pub(crate) use equivalence::arg_display;
pub use events::channel_pid;
pub use inspect::{BindingInfo, ExchangeInfo};
pub use route::Routed;
pub use storage::{new_store_dir, Storage};

/// Exchanges RabbitMQ pre-declares in every vhost (`rabbit_vhost:declare_default_exchanges`).
const DEFAULT_EXCHANGES: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
    // The event exchange plugin's (built in: `crate::events`).
    (crate::events::EVENT_EXCHANGE, ExchangeKind::Topic, true),
];

fn is_default_exchange(name: &str) -> bool {
    DEFAULT_EXCHANGES.iter().any(|(n, _, _)| *n == name)
}

#[derive(Debug, Default)]
struct Topology {
    exchanges: HashMap<Arc<str>, Exchange>,
    queues: HashMap<Arc<str>, QueueRef>,
    /// For each destination, the exchanges with at least one binding to it, so that removing
    /// a queue or exchange costs its own bindings, not all of them.
    sources: HashMap<Destination, Vec<Arc<str>>>,
    /// Exclusive queues by owning connection.
    exclusive: HashMap<u64, Vec<Arc<str>>>,
}

/// The metadata path as a vhost sees it (the broker implements it): how the vhost submits
/// changes of its own that nobody waits for (auto-delete, `x-expires`, exclusive queues of a
/// closed connection, an auto-delete exchange that lost its last binding).
pub trait MetaPath: Send + Sync {
    /// Submits `cmd` through the metadata path.
    fn submit_detached(&self, cmd: Command);
}

/// Who is asking for a change (for the checks that depend on it).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The connection (exclusive queues belong to one).
    pub conn_id: Option<u64>,
    /// The user asking (`user_who_performed_action` of events; `None`: the broker).
    pub user: Option<Arc<str>>,
    /// The broker itself (may use reserved `amq.` names).
    pub internal: bool,
}

/// Preconditions of a delete (`if-unused`, `if-empty`), checked before it is logged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pre {
    /// Only if unused.
    pub if_unused: bool,
    /// Only if empty.
    pub if_empty: bool,
}

/// What `queue.declare-ok` reports.
#[derive(Debug, Clone)]
pub struct DeclaredQueue {
    /// The queue.
    pub queue: QueueRef,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// What applying a command did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// A queue was declared (or existed).
    Queue(DeclaredQueue),
    /// Something was deleted; for a queue, its ready messages.
    Deleted(u32),
    /// Done.
    Done,
}

/// What a command needs after its checks passed.
#[derive(Debug)]
pub enum Check {
    /// A change of durable state: log it, apply it once durable.
    Log,
    /// A change of non-durable state: apply it now.
    Apply,
    /// Nothing to change (an equivalent redeclaration, deleting what does not exist).
    Done(Applied),
}

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// Name, e.g. `/`.
    pub name: Arc<str>,
    topo: RwLock<Topology>,
    /// Bumped by every topology change, so that channels can cache routing results.
    version: AtomicU64,
    storage: Option<Storage>,
    services: Services,
    path: OnceLock<Weak<dyn MetaPath>>,
    me: Weak<VHost>,
    /// Store directories found at startup and not yet claimed by a replayed declaration.
    unclaimed: Mutex<Option<std::collections::HashSet<String>>>,
    /// Commands an apply gave rise to, submitted once the topology lock is released.
    followups: Mutex<Vec<Command>>,
    /// Events an apply gave rise to, published once the topology lock is released.
    events: Mutex<Vec<crate::events::Event>>,
    /// `max-connections`, `max-queues` (set by the broker's `SetVhostLimits`).
    limits: Mutex<VhostLimits>,
    /// What its closed channels counted.
    retired: Mutex<crate::stats::MessageTotals>,
    /// Its policies and operator policies (set by the broker's `PutRuntime`/`ClearRuntime`).
    policies: RwLock<Arc<crate::policy::PolicySet>>,
}

pub(crate) fn reserved(name: &str) -> bool {
    name.starts_with("amq.")
}

impl VHost {
    /// A vhost with RabbitMQ's pre-declared exchanges; with `storage`, durable queues keep
    /// their messages there (and what a previous run left is found for recovery).
    pub fn new(
        name: &str,
        storage: Option<Storage>,
        services: Services,
    ) -> std::io::Result<Arc<Self>> {
        let mut topo = Topology::default();
        for (n, kind, internal) in DEFAULT_EXCHANGES {
            topo.exchanges.insert(
                (*n).into(),
                Exchange::new(n, *kind, true, false, *internal, FieldTable::default()),
            );
        }
        let unclaimed = match &storage {
            Some(s) => Some(s.existing_dirs()?),
            None => None,
        };
        Ok(Arc::new_cyclic(|me| Self {
            name: name.into(),
            topo: RwLock::new(topo),
            version: AtomicU64::new(0),
            storage,
            services,
            path: OnceLock::new(),
            me: me.clone(),
            unclaimed: Mutex::new(unclaimed),
            followups: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            limits: Mutex::new(VhostLimits::default()),
            retired: Mutex::new(Default::default()),
            policies: RwLock::new(Default::default()),
        }))
    }

    /// The vhost's current policies.
    pub fn policies(&self) -> Arc<crate::policy::PolicySet> {
        self.policies.read().clone()
    }

    /// Replaces the vhost's policies and re-evaluates every queue and exchange: each one whose
    /// policy changed is given the new one, in place (no redeclaration). Depends only on
    /// metadata, so replay at startup gives the same result.
    pub fn set_policies(&self, set: crate::policy::PolicySet, now: crate::clock::Millis) {
        use crate::policy::Applied;
        let set = Arc::new(set);
        // Written before the topology lock is taken: a queue declared meanwhile either sees
        // the new set or is in the snapshot below.
        *self.policies.write() = set.clone();
        let queues: Vec<QueueRef> = {
            let mut topo = self.topo_mut();
            for (name, x) in topo.exchanges.iter_mut() {
                let p = Applied::for_exchange(&set, name);
                if p != x.policy {
                    x.policy = p;
                }
            }
            topo.queues.values().cloned().collect()
        };
        for q in queues {
            let a = Applied::for_queue(&set, q.name(), &q.info().args);
            if *q.policy() != a {
                q.set_policy(a, now);
            }
        }
    }

    /// Connects the vhost to the broker's metadata path.
    pub fn set_path(&self, path: Weak<dyn MetaPath>) {
        let _ = self.path.set(path);
    }

    fn submit_detached(&self, cmd: Command) {
        if let Some(p) = self.path.get().and_then(Weak::upgrade) {
            p.submit_detached(cmd);
        }
    }

    /// The topology for writing; every change invalidates cached routes.
    fn topo_mut(&self) -> parking_lot::RwLockWriteGuard<'_, Topology> {
        let guard = self.topo.write();
        self.version.fetch_add(1, Ordering::AcqRel);
        guard
    }

    /// The current topology version (see `route_message`).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The vhost's limits.
    pub fn limits(&self) -> VhostLimits {
        *self.limits.lock()
    }

    /// Sets the vhost's limits (the broker applies `SetVhostLimits`).
    pub fn set_limits(&self, limits: VhostLimits) {
        *self.limits.lock() = limits;
    }

    /// Looks up a queue.
    pub fn queue(&self, name: &str) -> Option<QueueRef> {
        self.topo.read().queues.get(name).cloned()
    }

    /// Looks up a queue that `conn_id` may use: 404 if missing, 405 if someone else's exclusive.
    pub fn usable_queue(&self, conn_id: u64, name: &str) -> AmqpResult<QueueRef> {
        let q = self
            .queue(name)
            .ok_or_else(|| AmqpError::no_queue(name, &self.name))?;
        q.check_access(conn_id)?;
        Ok(q)
    }

    /// Whether exchange `name` exists and is a topic exchange (topic permissions apply).
    pub fn is_topic_exchange(&self, name: &str) -> bool {
        self.topo
            .read()
            .exchanges
            .get(name)
            .is_some_and(|x| x.kind == crate::exchange::ExchangeKind::Topic)
    }

    /// Whether an exchange exists.
    pub fn has_exchange(&self, name: &str) -> bool {
        self.topo.read().exchanges.contains_key(name)
    }

    /// The number of messages a delayed-message exchange holds (`None`: no such exchange,
    /// or not a delayed one).
    pub fn delayed_count(&self, exchange: &str) -> Option<usize> {
        self.topo
            .read()
            .exchanges
            .get(exchange)
            .and_then(|x| x.delayed().map(|d| d.len()))
    }

    /// The number of keys an exchange's deduplication cache holds (`None`: no such exchange,
    /// or it does not deduplicate).
    pub fn dedup_cache_len(&self, exchange: &str) -> Option<usize> {
        self.topo
            .read()
            .exchanges
            .get(exchange)
            .and_then(Exchange::dedup_cache_len)
    }

    /// Names of all exchanges (for tests and introspection).
    pub fn exchange_names(&self) -> Vec<String> {
        self.topo
            .read()
            .exchanges
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.topo.read().queues.len()
    }

    /// Number of bindings (all exchanges).
    pub fn binding_count(&self) -> usize {
        self.topo
            .read()
            .exchanges
            .values()
            .map(Exchange::binding_count)
            .sum()
    }

    /// The exclusive queues owned by `conn_id` (the connection closes: they go).
    pub fn exclusive_queues(&self, conn_id: u64) -> Vec<Arc<str>> {
        self.topo
            .read()
            .exclusive
            .get(&conn_id)
            .cloned()
            .unwrap_or_default()
    }
}

/// A server-generated queue name like RabbitMQ's `amq.gen-eFzZ1Yk8TMaZc-hwoXyfiA`.
pub fn server_named() -> String {
    format!("amq.gen-{}", random_suffix())
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
