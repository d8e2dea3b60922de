//! Broker-wide state (configuration, clock, vhosts, users, the background threads) and the
//! metadata path: [`Broker::submit`] is how every metadata change comes in, and
//! [`Broker::apply`] the one function that carries changes out.

mod conns;
mod control;
pub mod definitions;
mod events;
pub(crate) use events::AuthAttempt;
mod inspect;
pub use inspect::{ChannelInfo, ConnInfo, IoStats};

use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tracing::{debug, error};

use crate::auth::{password, Users};
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
pub use conns::ConnControl;
use conns::Conns;

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password.
    BadCredentials,
    /// A user without a password (EXTERNAL only).
    NoPassword,
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
    /// Users and permissions.
    pub users: Users,
    /// Parameters and policies, kept for the features that apply them.
    runtime: RwLock<BTreeMap<(String, String, String, String), crate::metadata::RuntimeDef>>,
    /// Open connections (for limits and forced closes).
    conns: Conns,
    /// What new vhosts are built with.
    services: Services,
    /// Failed logins since start.
    failed_logins: AtomicU64,
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
    /// Connections, channels and queues opened and closed since start.
    pub churn: crate::stats::Churn,
    /// Message counters of deleted vhosts' channels (so that totals never go backwards).
    retired: parking_lot::Mutex<crate::stats::MessageTotals>,
    /// The sockets the servers (AMQP, HTTP API, Prometheus) listen on, as they bound them.
    bound: parking_lot::Mutex<Vec<BoundListener>>,
    me: Weak<Broker>,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A socket a server listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundListener {
    /// RabbitMQ's protocol name: `amqp`, `amqp/ssl`, `http`, `http/prometheus`.
    pub protocol: String,
    /// The bound address.
    pub addr: SocketAddr,
}

/// What a broker-wide command needs after its checks.
enum BrokerCheck {
    Nothing,
    Log,
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
            compat: config.amqp.compat,
        };
        let b = Self::assemble(
            config,
            clock,
            None,
            None,
            Arc::new(MemoryLog),
            true,
            timers,
            services,
        );
        for cmd in b.bootstrap_commands() {
            if let Err(e) = b.apply(&cmd) {
                error!(error = %e, "cannot create the default vhost and user");
            }
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
        let default_vhost = config.auth.default_vhost.clone();
        let vhost_dir = data.join("vhosts").join(hex(&default_vhost));
        // A data dir from before the log held the default vhost implicitly: its converted
        // snapshot creates it first.
        let converted = legacy::convert(&vhost_dir, &default_vhost)?.map(|mut cmds| {
            cmds.insert(
                0,
                Command::AddVhost {
                    name: default_vhost.clone(),
                },
            );
            cmds
        });
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
            compat: config.amqp.compat,
        };
        let full_syncer = syncer.clone();
        let b = Self::assemble(
            config,
            clock,
            Some(syncer),
            Some(pager),
            log.clone(),
            false,
            timers,
            services,
        );
        // A store write that fails (a full disk) raises the disk alarm until writes succeed.
        let weak = Arc::downgrade(&b);
        full_syncer.on_full(move |on| {
            if let Some(b) = weak.upgrade() {
                b.disk_alarm.send_replace(on);
            }
        });
        // A log without vhost commands comes from a first start or from before vhosts were
        // logged: its default vhost existed implicitly.
        let knows_vhosts = replay
            .iter()
            .any(|c| matches!(c, Command::AddVhost { .. } | Command::DeleteVhost { .. }));
        let knows_users = replay.iter().any(|c| {
            matches!(
                c,
                Command::PutUser(_) | Command::DeleteUser { .. } | Command::SetPermissions(_)
            )
        });
        if !knows_vhosts {
            b.apply_broker(
                &Command::AddVhost {
                    name: default_vhost.clone(),
                },
                true,
            )?;
        }
        b.replay(replay);
        b.remove_unknown_vhost_dirs();
        let weak = Arc::downgrade(&b);
        log.set_snapshot_source(Box::new(move || {
            weak.upgrade().map(|b| b.snapshot()).unwrap_or_default()
        }));
        // First start: the default vhost and user, through the log like any change.
        let mut first = Vec::new();
        if !knows_vhosts {
            first.push(Command::AddVhost {
                name: default_vhost,
            });
        }
        if !knows_users {
            first.extend(
                b.bootstrap_commands()
                    .into_iter()
                    .filter(|c| !matches!(c, Command::AddVhost { .. })),
            );
        }
        for cmd in first {
            b.log_blocking(cmd)?;
        }
        Ok(b)
    }

    /// Appends `cmd` to the log and applies it once durable, waiting (startup only).
    fn log_blocking(self: &Arc<Self>, cmd: Command) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let me = Arc::downgrade(self);
        let logged = cmd.clone();
        self.log.append(
            &cmd,
            Box::new(move |r| {
                let out = r.and_then(|()| match me.upgrade() {
                    Some(b) => b
                        .apply(&logged)
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.text)),
                    None => Ok(()),
                });
                let _ = tx.send(out);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the metadata log stopped")))
    }

    /// The default vhost, the default user (administrator) and its full permissions there.
    fn bootstrap_commands(&self) -> Vec<Command> {
        let a = &self.config.auth;
        vec![
            Command::AddVhost {
                name: a.default_vhost.clone(),
            },
            Command::PutUser(crate::metadata::UserDef {
                name: a.default_user.clone(),
                password_hash: password::hash(&a.default_pass),
                hashing_algorithm: password::SHA256.into(),
                tags: vec!["administrator".into()],
                max_connections: None,
                max_channels: None,
            }),
            Command::SetPermissions(crate::metadata::PermissionDef {
                user: a.default_user.clone(),
                vhost: a.default_vhost.clone(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }),
        ]
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: Config,
        clock: Clock,
        syncer: Option<Arc<Syncer>>,
        pager: Option<Arc<Pager>>,
        log: Arc<dyn MetaLog>,
        immediate: bool,
        timers: Timers,
        services: Services,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            config,
            clock,
            vhosts: RwLock::new(HashMap::new()),
            users: Users::default(),
            runtime: RwLock::new(BTreeMap::new()),
            churn: Default::default(),
            retired: Default::default(),
            bound: Default::default(),
            conns: Conns::default(),
            services,
            failed_logins: AtomicU64::new(0),
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

    /// A vhost's directory (durable brokers).
    fn vhost_dir(&self, name: &str) -> std::path::PathBuf {
        self.config.storage.data_dir.join("vhosts").join(hex(name))
    }

    /// A new vhost object (with its store directory on a durable broker; blocking then).
    fn make_vhost(&self, name: &str) -> std::io::Result<Arc<VHost>> {
        let storage = self.syncer.as_ref().map(|syncer| Storage {
            dir: self.vhost_dir(name),
            syncer: syncer.clone(),
            segment_size: self.config.storage.segment_size,
            memory_limit: self.config.storage.queue_memory_messages,
        });
        VHost::new(name, storage, self.services.clone())
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
            let Some(name) = cmd.vhost() else {
                if let Err(e) = self.apply_broker(&cmd, true) {
                    debug!(error = %e, "replayed command refused, as it was then");
                    refused += 1;
                }
                continue;
            };
            let Some(vh) = self.vhost(name) else {
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

    /// Startup: directories of vhosts that no longer exist (deleted before a crash finished
    /// removing their files) are removed.
    fn remove_unknown_vhost_dirs(&self) {
        let root = self.config.storage.data_dir.join("vhosts");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        let live: std::collections::HashSet<String> =
            self.vhosts.read().keys().map(|n| hex(n)).collect();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) && e.path().is_dir() {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    error!(dir = %e.path().display(), error = %err, "cannot remove a deleted vhost's files");
                }
            }
        }
    }

    /// The commands that rebuild the broker's durable metadata: vhosts and their limits,
    /// users and permissions, parameters, then every vhost's topology.
    pub fn snapshot(&self) -> Vec<Command> {
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        let mut out: Vec<Command> = Vec::new();
        for v in &vhosts {
            out.push(Command::AddVhost {
                name: v.name.to_string(),
            });
            let limits = v.limits();
            if limits != crate::metadata::VhostLimits::default() {
                out.push(Command::SetVhostLimits {
                    vhost: v.name.to_string(),
                    limits,
                });
            }
        }
        out.extend(self.users.snapshot());
        out.extend(
            self.runtime
                .read()
                .values()
                .cloned()
                .map(Command::PutRuntime),
        );
        out.extend(vhosts.iter().flat_map(|v| v.snapshot()));
        out
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

    /// Names of every vhost.
    pub fn vhost_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vhosts.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// A stored parameter or policy.
    pub fn runtime(
        &self,
        kind: &str,
        vhost: &str,
        component: &str,
        name: &str,
    ) -> Option<crate::metadata::RuntimeDef> {
        self.runtime
            .read()
            .get(&control::runtime_key(kind, vhost, component, name))
            .cloned()
    }

    /// Every stored parameter or policy of `kind` (all vhosts when `vhost` is `None`), in
    /// (vhost, component, name) order.
    pub fn runtimes(&self, kind: &str, vhost: Option<&str>) -> Vec<crate::metadata::RuntimeDef> {
        self.runtime
            .read()
            .values()
            .filter(|r| r.kind == kind && vhost.is_none_or(|v| r.vhost == v))
            .cloned()
            .collect()
    }

    /// Records a socket a server listens on (`protocol`: RabbitMQ's `amqp`, `amqp/ssl`,
    /// `http`, `http/prometheus`), for the management API's listeners and health checks.
    pub fn add_listener(&self, protocol: &str, addr: SocketAddr) {
        self.bound.lock().push(BoundListener {
            protocol: protocol.to_string(),
            addr,
        });
    }

    /// The sockets the servers listen on, in the order they were bound.
    pub fn bound_listeners(&self) -> Vec<BoundListener> {
        self.bound.lock().clone()
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
        let user = origin.user.clone();
        match cmd.vhost() {
            None => match self.check_broker(&cmd) {
                Err(e) => return Some(Err(e)),
                Ok(BrokerCheck::Nothing) => return Some(Ok(Applied::Done)),
                Ok(BrokerCheck::Log) if self.immediate => {
                    return Some(self.apply_as(&cmd, user.as_deref()))
                }
                Ok(BrokerCheck::Log) => {}
            },
            Some(name) => {
                let Some(vh) = self.vhost(name) else {
                    return Some(Err(AmqpError::not_found(format!("no vhost '{name}'"))));
                };
                if matches!(cmd, Command::DeclareQueue(_)) {
                    self.churn.queues_declared.inc();
                }
                match vh.check(&mut cmd, origin, pre, now) {
                    Err(e) => return Some(Err(e)),
                    Ok(Check::Done(a)) => return Some(Ok(a)),
                    Ok(Check::Apply) => return Some(self.apply_as(&cmd, user.as_deref())),
                    Ok(Check::Log) if self.immediate => {
                        return Some(self.apply_as(&cmd, user.as_deref()))
                    }
                    Ok(Check::Log) => {}
                }
            }
        }
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

    /// [`Broker::execute`] for a change the broker's operator asks for (the definitions
    /// import, later the HTTP API and `warren ctl`): internal origin, no preconditions.
    pub async fn admin(self: &Arc<Self>, cmd: Command) -> AmqpResult<Applied> {
        let origin = Origin {
            conn_id: None,
            internal: false,
            user: None,
        };
        self.execute(cmd, origin, Pre::default()).await
    }

    /// [`Broker::admin`] on behalf of `user` (an HTTP API caller; named in the events).
    pub async fn admin_as(self: &Arc<Self>, cmd: Command, user: &str) -> AmqpResult<Applied> {
        let origin = Origin {
            conn_id: None,
            internal: false,
            user: Some(Arc::from(user)),
        };
        self.execute(cmd, origin, Pre::default()).await
    }

    /// Carries out a command (checked, and durable if it had to be): the one function every
    /// metadata change goes through, whichever way it came in.
    pub fn apply(&self, cmd: &Command) -> AmqpResult<Applied> {
        self.apply_as(cmd, None)
    }

    /// [`Broker::apply`] on behalf of `user` (named in the events it gives rise to).
    pub fn apply_as(&self, cmd: &Command, user: Option<&str>) -> AmqpResult<Applied> {
        let Some(name) = cmd.vhost() else {
            let before = self.before_events(cmd);
            self.apply_broker(cmd, false)
                .map_err(|e| AmqpError::internal(e.to_string()))?;
            self.command_events(cmd, before, user);
            return Ok(Applied::Done);
        };
        let Some(vh) = self.vhost(name) else {
            return Err(AmqpError::not_found(format!("no vhost '{name}'")));
        };
        let r = vh.apply_as(cmd, self.clock.now(), false, user);
        match (&r, cmd) {
            (Ok(Applied::Queue(_)), _) => self.churn.queues_created.inc(),
            (Ok(Applied::Deleted(_)), Command::DeleteQueue { .. }) => {
                self.churn.queues_deleted.inc()
            }
            _ => {}
        }
        r
    }

    /// Checks a login (RabbitMQ's internal backend plus `loopback_users`); `pass` `None` is
    /// EXTERNAL (the user exists and the transport vouched for it).
    pub fn authenticate(
        &self,
        user: &str,
        pass: Option<&str>,
        peer: SocketAddr,
    ) -> Result<(), AuthFailure> {
        let Some(u) = self.users.user(user) else {
            return Err(self.login_failed(AuthFailure::BadCredentials));
        };
        if let Some(pass) = pass {
            if u.def.password_hash.is_empty() {
                return Err(self.login_failed(AuthFailure::NoPassword));
            }
            if !password::verify(&u.def.hashing_algorithm, &u.def.password_hash, pass) {
                return Err(self.login_failed(AuthFailure::BadCredentials));
            }
        }
        let loopback = peer.ip().is_loopback()
            || matches!(peer.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        if !loopback && self.config.auth.loopback_users.iter().any(|u| u == user) {
            return Err(self.login_failed(AuthFailure::LoopbackOnly(user.to_string())));
        }
        Ok(())
    }

    fn login_failed(&self, why: AuthFailure) -> AuthFailure {
        self.count_failed_login();
        why
    }

    /// Counts a failed login (also those refused before the backend was asked).
    pub fn count_failed_login(&self) {
        self.failed_logins.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed logins since the broker started.
    pub fn failed_logins(&self) -> u64 {
        self.failed_logins.load(Ordering::Relaxed)
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
