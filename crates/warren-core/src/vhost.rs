//! A virtual host: its exchanges, queues and bindings (the "topology"), and routing.
//!
//! The topology sits behind one `RwLock`: publishes take the read side to compute their target
//! queues and drop it before touching any queue; declare/bind/delete take the write side
//! briefly. No guard is ever held across an `.await`. Texts of the errors mirror RabbitMQ 3.10.8.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use tracing::{error, info, warn};

use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::queue::deadletter::{is_cycle, DeadLetter};
use crate::queue::{Queue, QueueArgs, QueueOptions, Reason};
use crate::store::definitions::{BindingDef, Definitions, ExchangeDef, QueueDef};
use crate::store::segment::SegmentStore;
use crate::store::sync::Syncer;
use crate::store::StoreRef;
use crate::timer::Timers;
use crate::value::{int_value, str_value};
use warren_codec::proto::{AMQPValue, FieldTable};

/// Exchanges RabbitMQ pre-declares in every vhost (`rabbit_vhost:declare_default_exchanges`).
const DEFAULT_EXCHANGES: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

#[derive(Debug, Default)]
struct Topology {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Arc<Queue>>,
    /// Store directory of each durable queue.
    store_dirs: HashMap<String, String>,
}

/// Where a vhost keeps durable state.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// The vhost's directory.
    pub dir: PathBuf,
    /// The group-commit service.
    pub syncer: Arc<Syncer>,
    /// Size at which a queue's segment file is rotated.
    pub segment_size: u64,
    /// Ready messages a durable queue keeps in memory before paging the rest to disk
    /// (0 = never page).
    pub memory_limit: usize,
}

/// `exchange.declare` arguments.
#[derive(Debug, Clone)]
pub struct ExchangeDeclare {
    /// Name.
    pub name: String,
    /// Type name as sent.
    pub kind: String,
    /// Passive.
    pub passive: bool,
    /// Durable.
    pub durable: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Internal.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// `queue.declare` arguments (with the name already resolved).
#[derive(Debug, Clone)]
pub struct QueueDeclare {
    /// Name; empty means "server-named".
    pub name: String,
    /// Passive.
    pub passive: bool,
    /// Durable.
    pub durable: bool,
    /// Exclusive to the declaring connection.
    pub exclusive: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// What `queue.declare-ok` reports.
#[derive(Debug, Clone)]
pub struct DeclaredQueue {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// Name, e.g. `/`.
    pub name: Arc<str>,
    topo: RwLock<Topology>,
    /// Bumped by every topology change, so that channels can cache routing results.
    version: std::sync::atomic::AtomicU64,
    persistence: Option<Persistence>,
    timers: Timers,
    me: OnceLock<Weak<VHost>>,
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

fn reserved(name: &str) -> bool {
    name.starts_with("amq.")
}

impl VHost {
    /// A vhost with RabbitMQ's pre-declared exchanges, kept in memory only.
    pub fn new(name: &str, timers: Timers) -> Arc<Self> {
        let vh = Arc::new(Self::build(name, timers));
        vh.attach();
        vh
    }

    /// The topology for writing; every change invalidates cached routes.
    fn topo_mut(&self) -> parking_lot::RwLockWriteGuard<'_, Topology> {
        let guard = self.topo.write();
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        guard
    }

    /// The current topology version (see [`VHost::route_message`]).
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Lets the vhost and its queues refer to the vhost (dead-lettering, `x-expires`).
    fn attach(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        for q in self.topo.read().queues.values() {
            q.attach(Arc::downgrade(self));
        }
    }

    fn build(name: &str, timers: Timers) -> Self {
        let mut topo = Topology::default();
        for (n, kind, internal) in DEFAULT_EXCHANGES {
            topo.exchanges.insert(
                (*n).to_string(),
                Exchange::new(n, *kind, true, false, *internal, FieldTable::default()),
            );
        }
        Self {
            name: name.into(),
            topo: RwLock::new(topo),
            version: std::sync::atomic::AtomicU64::new(0),
            persistence: None,
            timers,
            me: OnceLock::new(),
        }
    }

    /// A vhost that keeps durable entities and persistent messages in `p.dir`, recovering
    /// whatever a previous run left there.
    pub fn open(name: &str, p: Persistence, timers: Timers) -> std::io::Result<Arc<Self>> {
        let mut vh = Self::build(name, timers);
        let defs = Definitions::load(&p.dir)?;
        let queues_dir = p.dir.join("queues");
        std::fs::create_dir_all(&queues_dir)?;
        {
            let topo = vh.topo.get_mut();
            for x in &defs.exchanges {
                let Some(kind) = ExchangeKind::parse(&x.kind) else {
                    warn!(exchange = %x.name, kind = %x.kind, "skipping exchange of unknown type");
                    continue;
                };
                topo.exchanges.insert(
                    x.name.clone(),
                    Exchange::new(
                        &x.name,
                        kind,
                        true,
                        x.auto_delete,
                        x.internal,
                        x.arguments.clone(),
                    ),
                );
            }
            for q in &defs.queues {
                let store = SegmentStore::open(
                    &queues_dir.join(&q.store_dir),
                    p.syncer.clone(),
                    p.segment_size,
                    p.memory_limit,
                )?;
                let args = QueueArgs::parse(&q.arguments, &q.name, &vh.name).unwrap_or_default();
                let queue = Queue::create(
                    q.name.as_str().into(),
                    vh.name.clone(),
                    QueueOptions {
                        durable: true,
                        exclusive_owner: None,
                        auto_delete: q.auto_delete,
                        arguments: q.arguments.clone(),
                    },
                    args,
                    Some(store as StoreRef),
                    vh.timers.clone(),
                );
                topo.queues.insert(q.name.clone(), queue);
                topo.store_dirs.insert(q.name.clone(), q.store_dir.clone());
            }
            for b in &defs.bindings {
                let dest = match b.destination_type.as_str() {
                    "queue" => Destination::Queue(b.destination.as_str().into()),
                    _ => Destination::Exchange(b.destination.as_str().into()),
                };
                if let Some(x) = topo.exchanges.get_mut(&b.source) {
                    x.bind(Binding {
                        destination: dest,
                        routing_key: b.routing_key.clone(),
                        arguments: b.arguments.clone(),
                    });
                }
            }
            // Stores of queues that are no longer declared (deleted before a crash finished
            // removing them) are garbage.
            let live: std::collections::HashSet<&String> = topo.store_dirs.values().collect();
            for e in std::fs::read_dir(&queues_dir)?.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !live.contains(&n) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            info!(
                vhost = name,
                exchanges = defs.exchanges.len(),
                queues = defs.queues.len(),
                bindings = defs.bindings.len(),
                "recovered durable definitions"
            );
        }
        vh.persistence = Some(p);
        let vh = Arc::new(vh);
        vh.attach();
        Ok(vh)
    }

    /// Writes the durable topology, if this vhost persists anything. Called with the write lock
    /// held so that saves are ordered like the changes.
    fn save(&self, topo: &Topology) {
        let Some(p) = &self.persistence else { return };
        let mut defs = Definitions::default();
        let default_names: Vec<&str> = DEFAULT_EXCHANGES.iter().map(|(n, _, _)| *n).collect();
        let durable_queue = |n: &str| topo.store_dirs.contains_key(n);
        let durable_exchange = |n: &str| topo.exchanges.get(n).is_some_and(|x| x.durable);
        for x in topo.exchanges.values() {
            if x.durable && !default_names.contains(&&*x.name) {
                defs.exchanges.push(ExchangeDef {
                    name: x.name.to_string(),
                    kind: x.kind.as_str().into(),
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                });
            }
            if !x.durable {
                continue;
            }
            for b in x.bindings() {
                let (dest, ty, durable) = match &b.destination {
                    Destination::Queue(q) => (q, "queue", durable_queue(q)),
                    Destination::Exchange(e) => (e, "exchange", durable_exchange(e)),
                };
                if durable {
                    defs.bindings.push(BindingDef {
                        source: x.name.to_string(),
                        destination: dest.to_string(),
                        destination_type: ty.into(),
                        routing_key: b.routing_key.clone(),
                        arguments: b.arguments.clone(),
                    });
                }
            }
        }
        for (name, dir) in &topo.store_dirs {
            if let Some(q) = topo.queues.get(name) {
                defs.queues.push(QueueDef {
                    name: name.clone(),
                    auto_delete: q.options.auto_delete,
                    arguments: q.options.arguments.clone(),
                    store_dir: dir.clone(),
                });
            }
        }
        defs.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        defs.queues.sort_by(|a, b| a.name.cmp(&b.name));
        if let Err(e) = defs.save(&p.dir) {
            error!(error = %e, dir = %p.dir.display(), "cannot save durable definitions");
        }
    }

    /// Opens a message store for a new durable queue.
    fn new_store(
        &self,
        topo: &mut Topology,
        name: &str,
        durable: bool,
        exclusive: bool,
    ) -> AmqpResult<Option<StoreRef>> {
        let Some(p) = &self.persistence else {
            return Ok(None);
        };
        if !durable || exclusive {
            return Ok(None);
        }
        // A fresh directory per queue incarnation: a queue deleted and declared again never
        // sees its predecessor's files, even before the syncer has removed them.
        let dir = format!(
            "{:016x}-{}",
            fnv1a(name.as_bytes()),
            server_named().trim_start_matches("amq.gen-")
        );
        let store = SegmentStore::open(
            &p.dir.join("queues").join(&dir),
            p.syncer.clone(),
            p.segment_size,
            p.memory_limit,
        )
        .map_err(|e| AmqpError::internal(format!("cannot create queue store: {e}")))?;
        topo.store_dirs.insert(name.to_string(), dir);
        Ok(Some(store as StoreRef))
    }

    fn inequivalent(
        &self,
        what: &str,
        arg: &str,
        name: &str,
        received: &str,
        current: &str,
    ) -> AmqpError {
        AmqpError::precondition_failed(format!(
            "inequivalent arg '{arg}' for {what} '{name}' in vhost '{}': received '{received}' but current is '{current}'",
            self.name
        ))
    }

    /// `exchange.declare`.
    pub fn declare_exchange(&self, d: &ExchangeDeclare) -> AmqpResult<()> {
        if d.passive {
            let topo = self.topo.read();
            return if topo.exchanges.contains_key(&d.name) {
                Ok(())
            } else {
                Err(AmqpError::no_exchange(&d.name, &self.name))
            };
        }
        let Some(kind) = ExchangeKind::parse(&d.kind) else {
            // RabbitMQ 3.10.8 closes the connection here (4.x: channel 406).
            return Err(AmqpError::command_invalid(format!(
                "invalid exchange type '{}'",
                d.kind
            )));
        };
        if d.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let mut topo = self.topo_mut();
        if let Some(x) = topo.exchanges.get(&d.name) {
            if x.kind != kind {
                return Err(self.inequivalent(
                    "exchange",
                    "type",
                    &d.name,
                    kind.as_str(),
                    x.kind.as_str(),
                ));
            }
            for (arg, new, old) in [
                ("durable", d.durable, x.durable),
                ("auto_delete", d.auto_delete, x.auto_delete),
                ("internal", d.internal, x.internal),
            ] {
                if new != old {
                    return Err(self.inequivalent(
                        "exchange",
                        arg,
                        &d.name,
                        bool_str(new),
                        bool_str(old),
                    ));
                }
            }
            let new_ae = arg_display(d.arguments.inner().get("alternate-exchange"));
            let old_ae = arg_display(x.arguments.inner().get("alternate-exchange"));
            if new_ae != old_ae {
                return Err(self.inequivalent(
                    "exchange",
                    "alternate-exchange",
                    &d.name,
                    &new_ae,
                    &old_ae,
                ));
            }
            return Ok(());
        }
        if reserved(&d.name) {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        topo.exchanges.insert(
            d.name.clone(),
            Exchange::new(
                &d.name,
                kind,
                d.durable,
                d.auto_delete,
                d.internal,
                d.arguments.clone(),
            ),
        );
        if d.durable {
            self.save(&topo);
        }
        Ok(())
    }

    /// `exchange.delete`. Deleting a missing exchange succeeds, as on RabbitMQ 3.10.8.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if reserved(name) {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let mut topo = self.topo_mut();
        let Some(x) = topo.exchanges.get(name) else {
            return Ok(());
        };
        if if_unused && !x.bindings().is_empty() {
            return Err(AmqpError::precondition_failed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        Self::remove_exchange(&mut topo, name);
        self.save(&topo);
        Ok(())
    }

    /// Removes an exchange and every binding to it, then auto-deletes exchanges left unbound.
    fn remove_exchange(topo: &mut Topology, name: &str) {
        topo.exchanges.remove(name);
        Self::remove_destination(topo, &Destination::Exchange(name.into()));
    }

    /// Removes every binding to `dest`; auto-delete exchanges that lose their last binding go too.
    fn remove_destination(topo: &mut Topology, dest: &Destination) {
        let mut emptied = Vec::new();
        for x in topo.exchanges.values_mut() {
            if x.unbind_destination(dest) > 0 && x.auto_delete && x.bindings().is_empty() {
                emptied.push(x.name.to_string());
            }
        }
        for name in emptied {
            Self::remove_exchange(topo, &name);
        }
    }

    /// `exchange.bind` / `exchange.unbind` (destination <- source).
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
        bind: bool,
    ) -> AmqpResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let mut topo = self.topo_mut();
        for n in [source, destination] {
            if !topo.exchanges.contains_key(n) {
                if !bind {
                    return Ok(());
                }
                return Err(AmqpError::no_exchange(n, &self.name));
            }
        }
        let b = Binding {
            destination: Destination::Exchange(destination.into()),
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        };
        self.apply_binding(&mut topo, source, b, bind)?;
        self.save(&topo);
        Ok(())
    }

    fn apply_binding(
        &self,
        topo: &mut Topology,
        source: &str,
        b: Binding,
        bind: bool,
    ) -> AmqpResult<()> {
        let Some(x) = topo.exchanges.get_mut(source) else {
            return Err(AmqpError::no_exchange(source, &self.name));
        };
        if bind {
            x.validate_binding(&b.arguments)
                .map_err(AmqpError::precondition_failed)?;
            x.bind(b);
        } else if x.unbind(&b) && x.auto_delete && x.bindings().is_empty() {
            let name = x.name.to_string();
            Self::remove_exchange(topo, &name);
        }
        Ok(())
    }

    /// `queue.declare`. `conn_id` owns the queue when it is exclusive.
    pub fn declare_queue(&self, conn_id: u64, d: &QueueDeclare) -> AmqpResult<DeclaredQueue> {
        if d.passive {
            let topo = self.topo.read();
            let q = topo
                .queues
                .get(&d.name)
                .ok_or_else(|| AmqpError::no_queue(&d.name, &self.name))?;
            q.check_access(conn_id)?;
            // RabbitMQ answers a passive declare with the queue's `stat`, which restarts its
            // x-expires timer (`rabbit_amqqueue_process:handle_call(stat, ...)`).
            q.touch();
            return Ok(Self::declared(q));
        }
        let name = if d.name.is_empty() {
            server_named()
        } else if reserved(&d.name) {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        } else {
            d.name.clone()
        };
        let owner = d.exclusive.then_some(conn_id);
        let mut topo = self.topo_mut();
        if let Some(q) = topo.queues.get(&name) {
            if q.options.exclusive_owner != owner {
                return Err(AmqpError::queue_locked(&name, &self.name));
            }
            if q.options.durable != d.durable {
                return Err(self.inequivalent(
                    "queue",
                    "durable",
                    &name,
                    bool_str(d.durable),
                    bool_str(q.options.durable),
                ));
            }
            if q.options.auto_delete != d.auto_delete {
                return Err(self.inequivalent(
                    "queue",
                    "auto_delete",
                    &name,
                    bool_str(d.auto_delete),
                    bool_str(q.options.auto_delete),
                ));
            }
            self.check_queue_args_equivalent(&name, &q.options.arguments, &d.arguments)?;
            q.touch();
            return Ok(Self::declared(q));
        }
        let args = QueueArgs::parse(&d.arguments, &name, &self.name)?;
        let store = self.new_store(&mut topo, &name, d.durable, d.exclusive)?;
        let q = Queue::create(
            name.as_str().into(),
            self.name.clone(),
            QueueOptions {
                durable: d.durable,
                exclusive_owner: owner,
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            },
            args,
            store,
            self.timers.clone(),
        );
        if let Some(me) = self.me.get() {
            q.attach(me.clone());
        }
        topo.queues.insert(name, q.clone());
        if d.durable {
            self.save(&topo);
        }
        Ok(DeclaredQueue {
            queue: q,
            message_count: 0,
            consumer_count: 0,
        })
    }

    fn declared(q: &Arc<Queue>) -> DeclaredQueue {
        DeclaredQueue {
            queue: q.clone(),
            message_count: q.message_count(),
            consumer_count: q.consumer_count(),
        }
    }

    /// Arguments RabbitMQ compares on redeclare (`rabbit_amqqueue:declare_args/0`); others are
    /// stored and ignored.
    fn check_queue_args_equivalent(
        &self,
        name: &str,
        old: &FieldTable,
        new: &FieldTable,
    ) -> AmqpResult<()> {
        const COMPARED: &[&str] = &[
            "x-expires",
            "x-message-ttl",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-dead-letter-strategy",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
            "x-max-priority",
            "x-overflow",
            "x-queue-mode",
            "x-queue-version",
            "x-single-active-consumer",
            "x-queue-type",
            "x-quorum-initial-group-size",
            "x-max-age",
            "x-initial-cluster-size",
            "x-queue-leader-locator",
        ];
        for key in COMPARED {
            let a = old.inner().get(*key);
            let b = new.inner().get(*key);
            let same = match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => values_equivalent(a, b),
                // A missing x-queue-type means classic.
                (None, Some(v)) | (Some(v), None) if *key == "x-queue-type" => {
                    arg_display(Some(v)) == "classic"
                }
                _ => false,
            };
            if !same {
                return Err(self.inequivalent(
                    "queue",
                    key,
                    name,
                    &arg_display(b),
                    &arg_display(a),
                ));
            }
        }
        Ok(())
    }

    /// Creates the hidden queue behind a channel's direct reply-to consumer: exclusive to
    /// `conn_id`, auto-delete, named `amq.rabbitmq.reply-to.<random>` (the reserved prefix is
    /// the broker's to use).
    pub fn declare_reply_queue(&self, conn_id: u64) -> Arc<Queue> {
        let name = format!(
            "amq.rabbitmq.reply-to.{}",
            server_named().trim_start_matches("amq.gen-")
        );
        let q = Queue::create(
            name.as_str().into(),
            self.name.clone(),
            QueueOptions {
                durable: false,
                exclusive_owner: Some(conn_id),
                auto_delete: true,
                arguments: FieldTable::default(),
            },
            QueueArgs::default(),
            None,
            self.timers.clone(),
        );
        if let Some(me) = self.me.get() {
            q.attach(me.clone());
        }
        self.topo_mut().queues.insert(name, q.clone());
        q
    }

    /// Looks up a queue.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.topo.read().queues.get(name).cloned()
    }

    /// Looks up a queue that `conn_id` may use: 404 if missing, 405 if someone else's exclusive.
    pub fn usable_queue(&self, conn_id: u64, name: &str) -> AmqpResult<Arc<Queue>> {
        let q = self
            .queue(name)
            .ok_or_else(|| AmqpError::no_queue(name, &self.name))?;
        q.check_access(conn_id)?;
        Ok(q)
    }

    /// `queue.bind` / `queue.unbind`.
    pub fn bind_queue(
        &self,
        conn_id: u64,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        bind: bool,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let mut topo = self.topo_mut();
        match topo.queues.get(queue) {
            Some(q) => q.check_access(conn_id)?,
            None if bind => return Err(AmqpError::no_queue(queue, &self.name)),
            None => return Ok(()),
        }
        if !topo.exchanges.contains_key(exchange) {
            if !bind {
                return Ok(());
            }
            return Err(AmqpError::no_exchange(exchange, &self.name));
        }
        let b = Binding {
            destination: Destination::Queue(queue.into()),
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        };
        self.apply_binding(&mut topo, exchange, b, bind)?;
        self.save(&topo);
        Ok(())
    }

    /// `queue.delete`. Deleting a missing queue succeeds with 0 messages, as on RabbitMQ 3.10.8.
    pub fn delete_queue(
        &self,
        conn_id: u64,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> AmqpResult<u32> {
        let mut topo = self.topo_mut();
        let Some(q) = topo.queues.get(name).cloned() else {
            return Ok(0);
        };
        q.check_access(conn_id)?;
        q.check_delete(if_unused, if_empty)?;
        let n = self.remove_queue(&mut topo, &q);
        Ok(n)
    }

    fn remove_queue(&self, topo: &mut Topology, q: &Arc<Queue>) -> u32 {
        match topo.queues.get(&*q.name) {
            Some(cur) if Arc::ptr_eq(cur, q) => {
                topo.queues.remove(&*q.name);
            }
            _ => return 0,
        }
        let was_durable = topo.store_dirs.remove(&*q.name).is_some();
        Self::remove_destination(topo, &Destination::Queue(q.name.clone()));
        if was_durable {
            self.save(topo);
        }
        q.mark_deleted()
    }

    /// Deletes `q` if it is still the queue of that name (auto-delete, exclusive cleanup).
    pub fn delete_queue_instance(&self, q: &Arc<Queue>) {
        let mut topo = self.topo_mut();
        self.remove_queue(&mut topo, q);
    }

    /// Deletes every exclusive queue owned by `conn_id` (the connection closed).
    pub fn delete_exclusive_queues(&self, conn_id: u64) {
        let mut topo = self.topo_mut();
        let owned: Vec<Arc<Queue>> = topo
            .queues
            .values()
            .filter(|q| q.options.exclusive_owner == Some(conn_id))
            .cloned()
            .collect();
        for q in owned {
            self.remove_queue(&mut topo, &q);
        }
    }

    /// Finds the queues a message published to `exchange` with `routing_key` goes to, following
    /// exchange-to-exchange bindings (each exchange visited once, so loops terminate) and
    /// alternate exchanges (used by an exchange that routes nowhere).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> AmqpResult<Vec<Arc<Queue>>> {
        self.route_from(exchange, routing_key, headers, true)
            .map(|(q, _)| q)
    }

    /// Like [`VHost::route`], also giving the exchange's shared name, so that messages do not
    /// each allocate their own copy of it.
    pub fn route_message(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> AmqpResult<(Vec<Arc<Queue>>, Arc<str>)> {
        self.route_from(exchange, routing_key, headers, true)
    }

    /// Publishes a dead-lettered message to its dead-letter exchange (dropped if that exchange
    /// is missing), skipping target queues where it would cycle, as RabbitMQ does.
    pub fn publish_dead_letter(&self, dl: DeadLetter, reason: Reason) {
        let Ok((queues, _)) = self.route_from(
            &dl.message.exchange,
            &dl.message.routing_key,
            Some(&dl.headers),
            false,
        ) else {
            return;
        };
        let msg = Arc::new(dl.message);
        for q in queues {
            if reason != Reason::Rejected && is_cycle(&q.name, &dl.deaths) {
                warn!(queue = %q.name, "dead-letter cycle without a rejection: message dropped");
                continue;
            }
            let _ = q.publish(msg.clone());
        }
    }

    fn route_from(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        from_client: bool,
    ) -> AmqpResult<(Vec<Arc<Queue>>, Arc<str>)> {
        let topo = self.topo.read();
        let x = topo
            .exchanges
            .get(exchange)
            .ok_or_else(|| AmqpError::no_exchange(exchange, &self.name))?;
        if exchange.is_empty() {
            let q = topo.queues.get(routing_key).cloned().into_iter().collect();
            return Ok((q, x.name.clone()));
        }
        if x.internal && from_client {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        let mut visited: Vec<&str> = Vec::new();
        let mut pending: Vec<&Exchange> = vec![x];
        let mut dests: Vec<Destination> = Vec::new();
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        while let Some(x) = pending.pop() {
            if visited.contains(&&*x.name) {
                continue;
            }
            visited.push(&x.name);
            dests.clear();
            x.route(routing_key, headers, &mut dests);
            if dests.is_empty() {
                if let Some(ae) = x.alternate_exchange().and_then(|n| topo.exchanges.get(&n)) {
                    pending.push(ae);
                }
                continue;
            }
            for d in &dests {
                match d {
                    Destination::Queue(n) => {
                        if let Some(q) = topo.queues.get(&**n) {
                            queues.push(q.clone());
                        }
                    }
                    Destination::Exchange(n) => {
                        if let Some(x) = topo.exchanges.get(&**n) {
                            pending.push(x);
                        }
                    }
                }
            }
        }
        if queues.len() > 1 {
            queues.sort_by_key(|q| Arc::as_ptr(q) as usize);
            queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        Ok((queues, x.name.clone()))
    }

    /// Names of all exchanges (for tests and introspection).
    pub fn exchange_names(&self) -> Vec<String> {
        self.topo.read().exchanges.keys().cloned().collect()
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.topo.read().queues.len()
    }
}

/// FNV-1a, for short stable directory names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A server-generated queue name like RabbitMQ's `amq.gen-eFzZ1Yk8TMaZc-hwoXyfiA`.
fn server_named() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("amq.gen-{suffix}")
}

/// Argument equivalence as RabbitMQ judges it: integers by value, strings by content.
pub(crate) fn values_equivalent(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (int_value(a), int_value(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (str_value(a), str_value(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// How an argument value appears in an "inequivalent arg" text.
pub(crate) fn arg_display(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => {
            if let Some(i) = int_value(v) {
                i.to_string()
            } else if let Some(s) = str_value(v) {
                s
            } else {
                match v {
                    AMQPValue::Boolean(b) => bool_str(*b).into(),
                    other => format!("{other:?}"),
                }
            }
        }
    }
}
