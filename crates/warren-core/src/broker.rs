//! Broker-wide state: configuration, vhosts, users, connection ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::vhost::VHost;

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
}

impl Broker {
    /// A broker with the default vhost `/` and the configured default user.
    pub fn new(config: Config) -> Arc<Self> {
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_string(), Arc::new(VHost::new("/")));
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
        })
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
