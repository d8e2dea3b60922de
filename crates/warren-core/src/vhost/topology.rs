//! Checking and applying metadata commands: the only code that changes a vhost's topology.
//!
//! [`VHost::check`] runs before a command is logged: everything [`VHost::apply`] would refuse
//! given the current metadata, plus what depends on the moment (exclusive ownership,
//! `if-unused`/`if-empty`, reserved names), and whether the change is durable. [`VHost::apply`]
//! carries a command out. Its result depends only on the metadata and the command, never on
//! consumers, connections or the clock, so replaying the log at startup rebuilds exactly the
//! state the commands built. (That is why an auto-delete exchange that loses its last binding
//! is deleted by a command of its own when it is durable, rather than as a side effect that a
//! replay might or might not repeat.)

use std::sync::Arc;

use super::equivalence::{bool_str, check_queue_args, inequivalent};
use super::events;
use super::{reserved, Applied, Check, DeclaredQueue, Origin, Pre, Topology, VHost};
use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::delayed::{DelayedMessages, DelayedOwner, DelayedStore};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::metadata::{BindingDef, Command, ExchangeDef, QueueDef};
use crate::queue::{
    self, Backing, QueueArgs, QueueInfo, QueueKind, QueueOptions, QueueOwner, QueueRef,
};
use crate::vhost::arg_display;

/// What RabbitMQ 4.3 answers (541, connection closed) to a new non-durable, non-exclusive queue:
/// `rabbit_deprecated_features`' text for a feature denied by default (the reply text is cut to
/// 255 bytes as RabbitMQ cuts it).
const TRANSIENT_NONEXCL_DENIED: &str = "Feature `transient_nonexcl_queues` is deprecated.\n\
    By default, this feature is not permitted anymore.\n\
    The feature will be removed from a future major RabbitMQ version, regardless of the \
    configuration; actual version to be determined.\n\
    To continue using this feature when it is not permitted by default, set the following \
    parameter in your configuration:\n    \
    \"deprecated_features.permit.transient_nonexcl_queues = true\"";

fn declared(q: &QueueRef) -> DeclaredQueue {
    DeclaredQueue {
        queue: q.clone(),
        message_count: q.message_count(),
        consumer_count: q.consumer_count(),
    }
}

fn destination(b: &BindingDef) -> Destination {
    match b.destination_type.as_str() {
        "queue" => Destination::Queue(b.destination.as_str().into()),
        _ => Destination::Exchange(b.destination.as_str().into()),
    }
}

fn binding(b: &BindingDef) -> Binding {
    Binding {
        destination: destination(b),
        routing_key: b.routing_key.clone(),
        arguments: b.arguments.clone(),
    }
}

impl VHost {
    /// Checks `cmd` before it is logged or applied (and fills in what it resolves: the
    /// incarnation a delete is about). See the module docs.
    pub fn check(
        &self,
        cmd: &mut Command,
        origin: Origin,
        pre: Pre,
        now: Millis,
    ) -> AmqpResult<Check> {
        let topo = self.topo.read();
        match cmd {
            Command::DeclareExchange(d) => self.check_declare_exchange(&topo, d, origin),
            Command::DeleteExchange { name, .. } => {
                if name.is_empty() {
                    return Err(AmqpError::default_exchange_refused());
                }
                if reserved(name) && !origin.internal {
                    return Err(AmqpError::access_refused(format!(
                        "deletion of system exchange '{name}' in vhost '{}' not allowed",
                        self.name
                    )));
                }
                let Some(x) = topo.exchanges.get(name.as_str()) else {
                    return Ok(Check::Done(Applied::Done));
                };
                if pre.if_unused && x.binding_count() > 0 {
                    return Err(AmqpError::precondition_failed(format!(
                        "exchange '{name}' in vhost '{}' in use",
                        self.name
                    )));
                }
                Ok(if x.durable { Check::Log } else { Check::Apply })
            }
            Command::DeclareQueue(d) => self.check_declare_queue(&topo, d, origin, now),
            Command::DeleteQueue {
                name, store_dir, ..
            } => {
                let Some(q) = topo.queues.get(name.as_str()) else {
                    return Ok(Check::Done(Applied::Deleted(0)));
                };
                if let Some(c) = origin.conn_id {
                    q.check_access(c)?;
                }
                q.check_delete(pre.if_unused, pre.if_empty)?;
                *store_dir = q.info().store_dir.clone();
                Ok(if Self::durable_queue(q) {
                    Check::Log
                } else {
                    Check::Apply
                })
            }
            Command::Bind(b) => self.check_binding(&topo, b, origin, true),
            Command::Unbind(b) => self.check_binding(&topo, b, origin, false),
            // Broker-wide commands are the broker's (`Command::vhost` is `None` for them).
            _ => Ok(Check::Done(Applied::Done)),
        }
    }

    fn durable_queue(q: &QueueRef) -> bool {
        q.options().durable && q.options().exclusive_owner.is_none()
    }

    fn check_declare_exchange(
        &self,
        topo: &Topology,
        d: &ExchangeDef,
        origin: Origin,
    ) -> AmqpResult<Check> {
        let kind = Self::exchange_kind(d)?;
        if d.name.is_empty() {
            return Err(AmqpError::default_exchange_refused());
        }
        if let Some(x) = topo.exchanges.get(d.name.as_str()) {
            self.check_exchange_equivalent(x, kind, d)?;
            return Ok(Check::Done(Applied::Done));
        }
        if reserved(&d.name) && !origin.internal {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        kind.validate_arguments(&d.arguments)?;
        Ok(if d.durable { Check::Log } else { Check::Apply })
    }

    fn exchange_kind(d: &ExchangeDef) -> AmqpResult<ExchangeKind> {
        // RabbitMQ 3.10.8 closes the connection here (4.x: channel 406).
        ExchangeKind::parse(&d.kind).ok_or_else(|| {
            AmqpError::command_invalid(format!("invalid exchange type '{}'", d.kind))
        })
    }

    fn check_exchange_equivalent(
        &self,
        x: &Exchange,
        kind: ExchangeKind,
        d: &ExchangeDef,
    ) -> AmqpResult<()> {
        let ineq = |arg: &str, new: &str, old: &str| {
            inequivalent(&self.name, "exchange", arg, &d.name, new, old)
        };
        if x.kind != kind {
            return Err(ineq("type", kind.as_str(), x.kind.as_str()));
        }
        for (arg, new, old) in [
            ("durable", d.durable, x.durable),
            ("auto_delete", d.auto_delete, x.auto_delete),
            ("internal", d.internal, x.internal),
        ] {
            if new != old {
                return Err(ineq(arg, bool_str(new), bool_str(old)));
            }
        }
        let new_ae = arg_display(d.arguments.inner().get("alternate-exchange"));
        let old_ae = arg_display(x.arguments.inner().get("alternate-exchange"));
        if new_ae != old_ae {
            return Err(ineq("alternate-exchange", &new_ae, &old_ae));
        }
        Ok(())
    }

    /// The redeclaration rules of `queue.declare` against an existing queue.
    fn check_queue_equivalent(&self, q: &QueueRef, d: &QueueDef) -> AmqpResult<()> {
        let o = q.options();
        let ineq = |arg: &str, new: bool, old: bool| {
            inequivalent(
                &self.name,
                "queue",
                arg,
                &d.name,
                bool_str(new),
                bool_str(old),
            )
        };
        if o.durable != d.durable {
            return Err(ineq("durable", d.durable, o.durable));
        }
        if o.auto_delete != d.auto_delete {
            return Err(ineq("auto_delete", d.auto_delete, o.auto_delete));
        }
        check_queue_args(&self.name, &d.name, &o.arguments, &d.arguments)
    }

    fn check_declare_queue(
        &self,
        topo: &Topology,
        d: &QueueDef,
        origin: Origin,
        now: Millis,
    ) -> AmqpResult<Check> {
        if reserved(&d.name) && !origin.internal {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        if let Some(q) = topo.queues.get(d.name.as_str()) {
            if q.options().exclusive_owner != d.exclusive_owner {
                return Err(AmqpError::queue_locked(&d.name, &self.name));
            }
            self.check_queue_equivalent(q, d)?;
            q.touch(now);
            return Ok(Check::Done(Applied::Queue(declared(q))));
        }
        let mut args = QueueArgs::parse(&d.arguments, &d.name, &self.name)?;
        if args.kind == QueueKind::Quorum {
            args.default_delivery_limit = self.services.compat.default_quorum_delivery_limit();
        }
        if args.kind != QueueKind::Classic {
            check_replicated_properties(d, &self.name)?;
        }
        if !d.durable
            && d.exclusive_owner.is_none()
            && !origin.internal
            && !self.services.compat.transient_nonexclusive_queues()
        {
            return Err(AmqpError::internal(TRANSIENT_NONEXCL_DENIED));
        }
        if let Some(max) = self.limits().max_queues {
            if topo.queues.len() as u64 >= max {
                return Err(AmqpError::precondition_failed(format!(
                    "cannot declare queue '{}': queue limit in vhost '{}' ({max}) is reached",
                    d.name, self.name
                )));
            }
        }
        Ok(if d.durable && d.exclusive_owner.is_none() {
            Check::Log
        } else {
            Check::Apply
        })
    }

    fn check_binding(
        &self,
        topo: &Topology,
        b: &BindingDef,
        origin: Origin,
        bind: bool,
    ) -> AmqpResult<Check> {
        let dest = destination(b);
        if b.source.is_empty()
            || (matches!(dest, Destination::Exchange(_)) && b.destination.is_empty())
        {
            return Err(AmqpError::default_exchange_refused());
        }
        let dest_durable = match &dest {
            Destination::Queue(n) => match topo.queues.get(&**n) {
                Some(q) => {
                    if let Some(c) = origin.conn_id {
                        q.check_access(c)?;
                    }
                    Self::durable_queue(q)
                }
                None if bind => return Err(AmqpError::no_queue(n, &self.name)),
                None => return Ok(Check::Done(Applied::Done)),
            },
            Destination::Exchange(_) => {
                // Source first, as RabbitMQ reports it.
                if !topo.exchanges.contains_key(b.source.as_str()) {
                    return if bind {
                        Err(AmqpError::no_exchange(&b.source, &self.name))
                    } else {
                        Ok(Check::Done(Applied::Done))
                    };
                }
                match topo.exchanges.get(b.destination.as_str()) {
                    Some(x) => x.durable,
                    None if bind => return Err(AmqpError::no_exchange(&b.destination, &self.name)),
                    None => return Ok(Check::Done(Applied::Done)),
                }
            }
        };
        let Some(src) = topo.exchanges.get(b.source.as_str()) else {
            return if bind {
                Err(AmqpError::no_exchange(&b.source, &self.name))
            } else {
                Ok(Check::Done(Applied::Done))
            };
        };
        let exists = src.has_binding(&binding(b));
        if bind {
            src.validate_binding(&b.routing_key, &b.arguments)
                .map_err(AmqpError::precondition_failed)?;
            if exists {
                return Ok(Check::Done(Applied::Done));
            }
        } else if !exists {
            return Ok(Check::Done(Applied::Done));
        }
        Ok(if src.durable && dest_durable {
            Check::Log
        } else {
            Check::Apply
        })
    }

    /// Carries out `cmd` (see the module docs). `replay`: the command comes from the log at
    /// startup.
    pub fn apply(&self, cmd: &Command, now: Millis, replay: bool) -> AmqpResult<Applied> {
        self.apply_as(cmd, now, replay, None)
    }

    /// [`Self::apply`] on behalf of `user` (`None`: the broker itself), who is named in the
    /// events the change gives rise to.
    pub fn apply_as(
        &self,
        cmd: &Command,
        now: Millis,
        replay: bool,
        user: Option<&str>,
    ) -> AmqpResult<Applied> {
        let r = self.apply_locked(cmd, now, replay, user);
        // Follow-up commands and events were collected under the topology lock; the metadata
        // path and routing take it again.
        let followups = std::mem::take(&mut *self.followups.lock());
        for c in followups {
            self.submit_detached(c);
        }
        self.publish_events(now);
        r
    }

    fn apply_locked(
        &self,
        cmd: &Command,
        now: Millis,
        replay: bool,
        user: Option<&str>,
    ) -> AmqpResult<Applied> {
        match cmd {
            Command::DeclareExchange(d) => {
                let kind = Self::exchange_kind(d)?;
                let mut topo = self.topo_mut();
                if let Some(x) = topo.exchanges.get(d.name.as_str()) {
                    self.check_exchange_equivalent(x, kind, d)?;
                    return Ok(Applied::Done);
                }
                kind.validate_arguments(&d.arguments)?;
                let mut x = Exchange::new(
                    &d.name,
                    kind,
                    d.durable,
                    d.auto_delete,
                    d.internal,
                    d.arguments.clone(),
                );
                x.policy = crate::policy::Applied::for_exchange(&self.policies(), &d.name);
                if kind == ExchangeKind::Delayed {
                    let store = self.delayed_store(d)?;
                    x.store_dir = store.as_ref().map(|_| d.store_dir.clone());
                    let owner: std::sync::Weak<dyn DelayedOwner> = self.me.clone();
                    let name = x.name.clone();
                    x = x.with_delayed(DelayedMessages::new(
                        name,
                        self.services.timers.clone(),
                        owner,
                        store,
                        now,
                    ));
                }
                topo.exchanges.insert(d.name.as_str().into(), x);
                if !replay {
                    self.queue_event(&topo, || events::exchange_created(d, user));
                }
                Ok(Applied::Done)
            }
            Command::DeleteExchange { name, .. } => {
                let mut topo = self.topo_mut();
                if topo.exchanges.contains_key(name.as_str()) {
                    self.remove_exchange(&mut topo, name, replay);
                    if !replay {
                        self.queue_event(&topo, || {
                            events::deleted("exchange.deleted", &self.name, name, user)
                        });
                    }
                }
                Ok(Applied::Done)
            }
            Command::DeclareQueue(d) => self.apply_declare_queue(d, now, replay, user),
            Command::DeleteQueue {
                name, store_dir, ..
            } => {
                let mut topo = self.topo_mut();
                let Some(q) = topo.queues.get(name.as_str()).cloned() else {
                    return Ok(Applied::Deleted(0));
                };
                if store_dir.is_some() && *store_dir != q.info().store_dir {
                    return Ok(Applied::Deleted(0));
                }
                let n = self.remove_queue(&mut topo, &q, replay);
                if !replay {
                    self.queue_event(&topo, || {
                        events::deleted("queue.deleted", &self.name, name, user)
                    });
                }
                Ok(Applied::Deleted(n))
            }
            Command::Bind(b) => {
                let mut topo = self.topo_mut();
                let dest = destination(b);
                let dest_exists = match &dest {
                    Destination::Queue(n) => topo.queues.contains_key(&**n),
                    Destination::Exchange(n) => topo.exchanges.contains_key(&**n),
                };
                let Some(src) = topo.exchanges.get_mut(b.source.as_str()) else {
                    return Err(AmqpError::no_exchange(&b.source, &self.name));
                };
                if !dest_exists {
                    return Err(match &dest {
                        Destination::Queue(n) => AmqpError::no_queue(n, &self.name),
                        Destination::Exchange(n) => AmqpError::no_exchange(n, &self.name),
                    });
                }
                src.validate_binding(&b.routing_key, &b.arguments)
                    .map_err(AmqpError::precondition_failed)?;
                if src.bind(binding(b)) {
                    let sources = topo.sources.entry(dest).or_default();
                    if !sources.iter().any(|s| **s == *b.source) {
                        sources.push(b.source.as_str().into());
                    }
                    if !replay {
                        self.queue_event(&topo, || events::binding("binding.created", b, user));
                    }
                }
                Ok(Applied::Done)
            }
            Command::Unbind(b) => {
                let mut topo = self.topo_mut();
                let dest = destination(b);
                let Some(src) = topo.exchanges.get_mut(b.source.as_str()) else {
                    return Ok(Applied::Done);
                };
                if !src.unbind(&binding(b)) {
                    return Ok(Applied::Done);
                }
                let still = src.binds_to(&dest);
                let emptied = src.auto_delete && src.binding_count() == 0;
                if !still {
                    Self::forget_source(&mut topo, &dest, &b.source);
                }
                if !replay {
                    self.queue_event(&topo, || events::binding("binding.deleted", b, user));
                }
                if emptied {
                    self.exchange_emptied(&mut topo, &b.source, replay);
                }
                Ok(Applied::Done)
            }
            _ => Ok(Applied::Done),
        }
    }

    /// The store of a durable delayed exchange's persistent messages (none without a data
    /// dir or for a non-durable exchange).
    fn delayed_store(&self, d: &ExchangeDef) -> AmqpResult<Option<DelayedStore>> {
        let (true, false, Some(s)) = (d.durable, d.store_dir.is_empty(), &self.storage) else {
            return Ok(None);
        };
        let store = self
            .store_with_limit(&d.store_dir, 0)
            .map_err(|e| AmqpError::internal(format!("cannot open delayed message store: {e}")))?;
        Ok(store.map(|store| DelayedStore {
            store,
            syncer: s.syncer.clone(),
        }))
    }

    fn apply_declare_queue(
        &self,
        d: &QueueDef,
        now: Millis,
        replay: bool,
        user: Option<&str>,
    ) -> AmqpResult<Applied> {
        let mut topo = self.topo_mut();
        if let Some(q) = topo.queues.get(d.name.as_str()) {
            self.check_queue_equivalent(q, d)?;
            return Ok(Applied::Queue(declared(q)));
        }
        let mut args = QueueArgs::parse(&d.arguments, &d.name, &self.name)?;
        if args.kind == QueueKind::Quorum {
            args.default_delivery_limit = self.services.compat.default_quorum_delivery_limit();
        }
        let durable = d.durable && d.exclusive_owner.is_none();
        if args.kind != QueueKind::Classic {
            check_replicated_properties(d, &self.name)?;
        }
        let applied = crate::policy::Applied::for_queue(&self.policies(), &d.name, &args);
        let backing = if durable && !d.store_dir.is_empty() {
            // The effective arguments: a stream's segment size may come from its policy
            // (`stream-max-segment-size-bytes`), as it is set when the stream is made.
            self.backing_for(&d.store_dir, &applied.args)
                .map_err(|e| AmqpError::internal(format!("cannot open queue store: {e}")))?
        } else if args.kind == QueueKind::Classic && !replay {
            self.spill_for(&d.name)
        } else {
            Backing::None
        };
        let on_disk = matches!(backing, Backing::Store(_) | Backing::Stream(_));
        let name: Arc<str> = d.name.as_str().into();
        let info = QueueInfo {
            name: name.clone(),
            vhost: self.name.clone(),
            options: QueueOptions {
                durable: d.durable,
                exclusive_owner: d.exclusive_owner,
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            },
            policy: crate::queue::PolicyCell::new(applied),
            args,
            store_dir: on_disk.then(|| d.store_dir.clone()),
            stats: Default::default(),
        };
        let q = queue::create(info, backing, &self.services, now);
        let owner: std::sync::Weak<dyn QueueOwner> = self.me.clone();
        q.attach(owner);
        if let Some(c) = d.exclusive_owner {
            topo.exclusive.entry(c).or_default().push(name.clone());
        }
        topo.queues.insert(name, q.clone());
        if !replay {
            self.queue_event(&topo, || events::queue_created(d, user));
        }
        Ok(Applied::Queue(DeclaredQueue {
            queue: q,
            message_count: 0,
            consumer_count: 0,
        }))
    }

    /// Deletes `q` if it is still the queue of its name (auto-delete, `x-expires`, exclusive
    /// queues of a closed connection). A durable one goes through the metadata log (its
    /// incarnation named by its store directory); a non-durable one is removed at once.
    pub fn delete_queue_instance(&self, q: &QueueRef) {
        if Self::durable_queue(q) {
            self.submit_detached(Command::DeleteQueue {
                vhost: self.name.to_string(),
                name: q.name().to_string(),
                store_dir: q.info().store_dir.clone(),
            });
            return;
        }
        {
            let mut topo = self.topo_mut();
            self.remove_queue(&mut topo, q, false);
        }
        let followups = std::mem::take(&mut *self.followups.lock());
        for c in followups {
            self.submit_detached(c);
        }
    }

    /// Deletes the exclusive queues of connection `conn_id` (it closed).
    pub fn delete_exclusive_queues(&self, conn_id: u64) {
        let owned: Vec<QueueRef> = {
            let topo = self.topo.read();
            topo.exclusive
                .get(&conn_id)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| topo.queues.get(n).cloned())
                        .collect()
                })
                .unwrap_or_default()
        };
        for q in owned {
            self.delete_queue_instance(&q);
        }
    }

    /// The vhost is deleted: every queue goes with its messages (their stores are destroyed)
    /// and consumers (cancelled), every exchange with its bindings.
    pub fn destroy(&self, _now: Millis) {
        let queues: Vec<QueueRef> = {
            let mut topo = self.topo_mut();
            topo.exchanges.clear();
            topo.sources.clear();
            topo.exclusive.clear();
            topo.queues.drain().map(|(_, q)| q).collect()
        };
        for q in queues {
            q.mark_deleted();
        }
    }

    /// Removes a queue and every binding to it; returns its ready messages.
    fn remove_queue(&self, topo: &mut Topology, q: &QueueRef, replay: bool) -> u32 {
        let name = q.name().clone();
        match topo.queues.get(&*name) {
            Some(cur) if queue::same(cur, q) => {
                topo.queues.remove(&*name);
            }
            _ => return 0,
        }
        if let Some(c) = q.options().exclusive_owner {
            if let Some(v) = topo.exclusive.get_mut(&c) {
                v.retain(|n| *n != name);
                if v.is_empty() {
                    topo.exclusive.remove(&c);
                }
            }
        }
        self.remove_destination(topo, &Destination::Queue(name), replay);
        q.mark_deleted()
    }

    /// Removes an exchange, every binding from it and to it.
    fn remove_exchange(&self, topo: &mut Topology, name: &str, replay: bool) {
        let Some(x) = topo.exchanges.remove(name) else {
            return;
        };
        if let Some(held) = x.delayed() {
            held.destroy();
        }
        for b in x.bindings() {
            Self::forget_source(topo, &b.destination, name);
        }
        self.remove_destination(topo, &Destination::Exchange(name.into()), replay);
    }

    fn forget_source(topo: &mut Topology, dest: &Destination, source: &str) {
        if let Some(v) = topo.sources.get_mut(dest) {
            v.retain(|s| **s != *source);
            if v.is_empty() {
                topo.sources.remove(dest);
            }
        }
    }

    /// Removes every binding to `dest`.
    fn remove_destination(&self, topo: &mut Topology, dest: &Destination, replay: bool) {
        let Some(sources) = topo.sources.remove(dest) else {
            return;
        };
        for s in sources {
            let emptied = match topo.exchanges.get_mut(&s) {
                Some(x) => {
                    x.unbind_destination(dest) > 0 && x.auto_delete && x.binding_count() == 0
                }
                None => false,
            };
            if emptied {
                self.exchange_emptied(topo, &s, replay);
            }
        }
    }

    /// An auto-delete exchange lost its last binding: a non-durable one goes now; a durable one
    /// by a command of its own (and not at all during replay, where that command follows).
    fn exchange_emptied(&self, topo: &mut Topology, name: &str, replay: bool) {
        let Some(x) = topo.exchanges.get(name) else {
            return;
        };
        if !x.durable {
            self.remove_exchange(topo, name, replay);
        } else if !replay {
            self.followups.lock().push(Command::DeleteExchange {
                vhost: self.name.to_string(),
                name: name.to_string(),
            });
        }
    }
}

/// RabbitMQ 3.10.8's property checks for a stream or a quorum queue
/// (`rabbit_queue_type_util:check_auto_delete/check_exclusive/check_non_durable`), in its order.
fn check_replicated_properties(d: &QueueDef, vhost: &str) -> AmqpResult<()> {
    let bad = |what: &str| {
        Err(AmqpError::precondition_failed(format!(
            "invalid property '{what}' for queue '{}' in vhost '{vhost}'",
            d.name
        )))
    };
    if d.auto_delete {
        return bad("auto-delete");
    }
    if d.exclusive_owner.is_some() {
        return bad("exclusive-owner");
    }
    if !d.durable {
        return bad("non-durable");
    }
    Ok(())
}
