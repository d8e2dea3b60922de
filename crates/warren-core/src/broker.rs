//! Broker-wide state (configuration, clock, vhosts, users, the background threads) and the
//! metadata path: [`Broker::submit`] is how every metadata change comes in, and
//! [`Broker::apply`] the one function that carries changes out.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tracing::{debug, error};

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{AmqpError, AmqpResult};
use crate::metadata::file::FileLog;
use crate::metadata::{legacy, Command, MemoryLog, MetaLog};
use crate::queue::timers::Timers;
use crate::queue::Services;
use crate::store::pager::Pager;
use crate::store::sync::Syncer;
use crate::vhost::{Applied, Check, MetaPath, Origin, Pre, Storage, VHost};

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password.
    BadCredentials,
    /// A loopback-only user (like `guest`) connecting from elsewhere.
    LoopbackOnly(String),
}

/// Receives the outcome of a submitted command that had to wait for the log.
pub type Done = Box<dyn FnOnce(AmqpResult<Applied>) + Send>;

/// The broker: everything connections share.
#[derive(Debug)]
pub struct Broker {
    /// Configuration in force.
    pub config: Config,
    /// The clock every part of the broker takes its time from.
    pub clock: Clock,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: HashMap<String, String>,
    next_conn_id: AtomicU64,
    /// The group-commit service, when durable state is kept on disk.
    pub syncer: Option<Arc<Syncer>>,
    pager: Option<Arc<Pager>>,
    log: Arc<dyn MetaLog>,
    /// The log makes commands durable at once (no data dir): apply them inline.
    immediate: bool,
    /// Queue timers (TTL, `x-expires`); started by the server's run loop.
    pub timers: Timers,
    /// The memory alarm: while true, publishing connections are blocked.
    pub alarm: tokio::sync::watch::Sender<bool>,
    /// The disk alarm (free space of the data dir below `disk.free_limit_bytes`): while
    /// true, publishing connections are blocked.
    pub disk_alarm: tokio::sync::watch::Sender<bool>,
    me: Weak<Broker>,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Broker {
    /// A broker that keeps nothing on disk (durable entities live as long as the process):
    /// for tests and embedding.
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_clock(config, Clock::System)
    }

    /// Like [`Broker::new`], on `clock` (tests pass a manual one).
    pub fn with_clock(config: Config, clock: Clock) -> Arc<Self> {
        let timers = Timers::new(clock.clone());
        let services = Services {
            timers: timers.clone(),
            pager: None,
            clock: clock.clone(),
        };
        let b = Self::assemble(config, clock, None, None, Arc::new(MemoryLog), true, timers);
        match VHost::new("/", None, services) {
            Ok(vh) => b.add_vhost(vh),
            Err(e) => error!(error = %e, "cannot create the default vhost"),
        }
        b
    }

    /// A broker that keeps durable entities and persistent messages under
    /// `config.storage.data_dir` (already opened and locked by the caller), recovering what a
    /// previous run left there. Blocking: call it off the event loop.
    pub fn open(config: Config) -> std::io::Result<Arc<Self>> {
        Self::open_with_clock(config, Clock::System)
    }

    /// Like [`Broker::open`], on `clock`.
    pub fn open_with_clock(config: Config, clock: Clock) -> std::io::Result<Arc<Self>> {
        let syncer = Syncer::start()?;
        let pager = Pager::start()?;
        let data = config.storage.data_dir.clone();
        let vhost_dir = data.join("vhosts").join(hex("/"));
        let converted = legacy::convert(&vhost_dir, "/")?;
        let was_converted = converted.is_some();
        let (log, replay) = FileLog::open(&data.join("metadata"), syncer.clone(), converted)?;
        if was_converted {
            legacy::retire(&vhost_dir)?;
        }
        let timers = Timers::new(clock.clone());
        let services = Services {
            timers: timers.clone(),
            pager: Some(pager.clone()),
            clock: clock.clone(),
        };
        let storage = Storage {
            dir: vhost_dir,
            syncer: syncer.clone(),
            segment_size: config.storage.segment_size,
            memory_limit: config.storage.queue_memory_messages,
        };
        let vh = VHost::new("/", Some(storage), services)?;
        let b = Self::assemble(
            config,
            clock,
            Some(syncer),
            Some(pager),
            log.clone(),
            false,
            timers,
        );
        b.add_vhost(vh);
        b.replay(replay);
        let weak = Arc::downgrade(&b);
        log.set_snapshot_source(Box::new(move || {
            weak.upgrade().map(|b| b.snapshot()).unwrap_or_default()
        }));
        Ok(b)
    }

    fn assemble(
        config: Config,
        clock: Clock,
        syncer: Option<Arc<Syncer>>,
        pager: Option<Arc<Pager>>,
        log: Arc<dyn MetaLog>,
        immediate: bool,
        timers: Timers,
    ) -> Arc<Self> {
        let mut users = HashMap::new();
        users.insert(
            config.auth.default_user.clone(),
            config.auth.default_pass.clone(),
        );
        Arc::new_cyclic(|me| Self {
            config,
            clock,
            vhosts: RwLock::new(HashMap::new()),
            users,
            next_conn_id: AtomicU64::new(1),
            syncer,
            pager,
            log,
            immediate,
            timers,
            alarm: tokio::sync::watch::Sender::new(false),
            disk_alarm: tokio::sync::watch::Sender::new(false),
            me: me.clone(),
        })
    }

    fn add_vhost(self: &Arc<Self>, vh: Arc<VHost>) {
        let me: Weak<dyn MetaPath> = Arc::downgrade(self) as Weak<dyn MetaPath>;
        vh.set_path(me);
        self.vhosts.write().insert(vh.name.to_string(), vh);
    }

    /// Applies the commands of the metadata log at startup, in order.
    fn replay(&self, cmds: Vec<Command>) {
        let now = self.clock.now();
        let total = cmds.len();
        let mut refused = 0usize;
        for cmd in cmds {
            let Some(vh) = self.vhost(cmd.vhost()) else {
                refused += 1;
                continue;
            };
            // A command the broker refused when it was applied is refused again: fine.
            if let Err(e) = vh.apply(&cmd, now, true) {
                debug!(error = %e.text, "replayed command refused, as it was then");
                refused += 1;
            }
        }
        for vh in self.vhosts.read().values() {
            vh.finish_recovery();
        }
        debug!(commands = total, refused, "metadata replayed");
    }

    /// The commands that rebuild every vhost's durable metadata.
    pub fn snapshot(&self) -> Vec<Command> {
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        vhosts.iter().flat_map(|v| v.snapshot()).collect()
    }

    /// Flushes pending writes and stops background threads.
    pub fn shutdown(&self) {
        if let Some(p) = &self.pager {
            p.stop();
        }
        if let Some(s) = &self.syncer {
            s.stop();
        }
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Submits a metadata command. It is checked now; a change of non-durable state is applied
    /// at once, a change of durable state is appended to the metadata log and applied once it
    /// is durable. Returns the outcome when it is known now; otherwise `done` receives it
    /// later (on the log's thread).
    pub fn submit(
        self: &Arc<Self>,
        mut cmd: Command,
        origin: Origin,
        pre: Pre,
        done: Done,
    ) -> Option<AmqpResult<Applied>> {
        let now = self.clock.now();
        let Some(vh) = self.vhost(cmd.vhost()) else {
            return Some(Err(AmqpError::not_found(format!(
                "no vhost '{}'",
                cmd.vhost()
            ))));
        };
        let user = origin.user.clone();
        match vh.check(&mut cmd, origin, pre, now) {
            Err(e) => Some(Err(e)),
            Ok(Check::Done(a)) => Some(Ok(a)),
            Ok(Check::Apply) => Some(vh.apply_as(&cmd, now, false, user.as_deref())),
            Ok(Check::Log) if self.immediate => Some(self.apply_as(&cmd, user.as_deref())),
            Ok(Check::Log) => {
                let me = Arc::downgrade(self);
                let logged = cmd.clone();
                self.log.append(
                    &cmd,
                    Box::new(move |r| {
                        let outcome = match (r, me.upgrade()) {
                            (Ok(()), Some(b)) => b.apply_as(&logged, user.as_deref()),
                            (Ok(()), None) => Err(AmqpError::internal("the broker is stopping")),
                            (Err(e), _) => Err(AmqpError::internal(format!(
                                "cannot write the metadata log: {e}"
                            ))),
                        };
                        done(outcome);
                    }),
                );
                None
            }
        }
    }

    /// [`Broker::submit`], waiting for the outcome.
    pub async fn execute(
        self: &Arc<Self>,
        cmd: Command,
        origin: Origin,
        pre: Pre,
    ) -> AmqpResult<Applied> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        if let Some(r) = self.submit(cmd, origin, pre, done) {
            return r;
        }
        rx.await
            .unwrap_or_else(|_| Err(AmqpError::internal("the metadata log stopped")))
    }

    /// Carries out a command (checked, and durable if it had to be): the one function every
    /// metadata change goes through, whichever way it came in.
    pub fn apply(&self, cmd: &Command) -> AmqpResult<Applied> {
        self.apply_as(cmd, None)
    }

    /// [`Broker::apply`] on behalf of `user` (named in the events it gives rise to).
    pub fn apply_as(&self, cmd: &Command, user: Option<&str>) -> AmqpResult<Applied> {
        let Some(vh) = self.vhost(cmd.vhost()) else {
            return Err(AmqpError::not_found(format!("no vhost '{}'", cmd.vhost())));
        };
        vh.apply_as(cmd, self.clock.now(), false, user)
    }

    /// Checks a login (RabbitMQ's internal backend plus `loopback_users`).
    pub fn authenticate(
        &self,
        user: &str,
        pass: &str,
        peer: SocketAddr,
    ) -> Result<(), AuthFailure> {
        match self.users.get(user) {
            Some(p) if p == pass => {}
            _ => return Err(AuthFailure::BadCredentials),
        }
        let loopback = peer.ip().is_loopback()
            || matches!(peer.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        if !loopback && self.config.auth.loopback_users.iter().any(|u| u == user) {
            return Err(AuthFailure::LoopbackOnly(user.to_string()));
        }
        Ok(())
    }
}

impl MetaPath for Broker {
    fn submit_detached(&self, cmd: Command) {
        let Some(me) = self.me.upgrade() else { return };
        let what = format!("{cmd:?}");
        let done: Done = Box::new(move |r| {
            if let Err(e) = r {
                debug!(command = %what, error = %e.text, "background metadata change refused");
            }
        });
        if let Some(Err(e)) = me.submit(
            cmd,
            Origin {
                conn_id: None,
                user: None,
                internal: true,
            },
            Pre::default(),
            done,
        ) {
            debug!(error = %e.text, "background metadata change refused");
        }
    }
}
