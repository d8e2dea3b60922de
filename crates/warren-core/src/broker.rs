//! Broker-wide state: configuration, vhosts, users, connection ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::store::sync::Syncer;
use crate::timer::Timers;
use crate::vhost::{Persistence, VHost};

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password.
    BadCredentials,
    /// A loopback-only user (like `guest`) connecting from elsewhere.
    LoopbackOnly(String),
}

/// The broker: everything connections share.
#[derive(Debug)]
pub struct Broker {
    /// Configuration in force.
    pub config: Config,
    vhosts: HashMap<String, Arc<VHost>>,
    users: HashMap<String, String>,
    next_conn_id: AtomicU64,
    /// The group-commit service, when durable state is kept on disk.
    pub syncer: Option<Arc<Syncer>>,
    /// Queue timers (TTL, `x-expires`); started by the server's run loop.
    pub timers: Timers,
    /// The memory alarm: while true, publishing connections are blocked.
    pub alarm: tokio::sync::watch::Sender<bool>,
}

impl Broker {
    /// A broker that keeps nothing on disk (durable entities live as long as the process):
    /// for tests and embedding.
    pub fn new(config: Config) -> Arc<Self> {
        let timers = Timers::new();
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_string(), VHost::new("/", timers.clone()));
        Self::assemble(config, vhosts, None, timers)
    }

    /// A broker that keeps durable entities and persistent messages under
    /// `config.storage.data_dir` (already opened and locked by the caller), recovering what a
    /// previous run left there.
    pub fn open(config: Config) -> std::io::Result<Arc<Self>> {
        let syncer = Syncer::start();
        let dir = config.storage.data_dir.join("vhosts").join(hex("/"));
        let timers = Timers::new();
        let vh = VHost::open(
            "/",
            Persistence {
                dir,
                syncer: syncer.clone(),
                segment_size: config.storage.segment_size,
                memory_limit: config.storage.queue_memory_messages,
            },
            timers.clone(),
        )?;
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_string(), vh);
        Ok(Self::assemble(config, vhosts, Some(syncer), timers))
    }

    fn assemble(
        config: Config,
        vhosts: HashMap<String, Arc<VHost>>,
        syncer: Option<Arc<Syncer>>,
        timers: Timers,
    ) -> Arc<Self> {
        let mut users = HashMap::new();
        users.insert(
            config.auth.default_user.clone(),
            config.auth.default_pass.clone(),
        );
        Arc::new(Self {
            config,
            vhosts,
            users,
            next_conn_id: AtomicU64::new(1),
            syncer,
            timers,
            alarm: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Flushes pending writes and stops background threads.
    pub fn shutdown(&self) {
        if let Some(s) = &self.syncer {
            s.stop();
        }
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
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

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
