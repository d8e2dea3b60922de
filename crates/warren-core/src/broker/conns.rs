//! The registry of open connections: connection limits (per vhost and per user) and the
//! forced closes of a deleted vhost's or user's connections.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tracing::info;

use super::Broker;
use crate::auth::User;
use crate::error::{AmqpError, AmqpResult};
use crate::vhost::VHost;

/// How the broker closes a connection (the connection layer implements it).
pub trait ConnControl: Send + Sync {
    /// Closes the connection with `320 CONNECTION_FORCED` and `explanation`.
    fn force_close(&self, explanation: String);
}

pub(super) struct Entry {
    vhost: String,
    user: String,
    pub(super) control: Arc<dyn ConnControl>,
    /// Channels open on the connection (kept by the connection).
    channels: Arc<AtomicUsize>,
    /// What the management API shows of it.
    pub(super) info: Option<Arc<super::ConnInfo>>,
}

/// Open connections by id.
#[derive(Default)]
pub(super) struct Conns {
    pub(super) inner: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("open", &self.inner.lock().len())
            .finish()
    }
}

impl Broker {
    /// Registers a connection opening `vhost` as `user`, unless that would exceed the vhost's
    /// or the user's `max-connections` (RabbitMQ 3.10.8's `530 NOT_ALLOWED` texts). The
    /// connection keeps its number of open channels in `channels` (for `max-channels`).
    pub fn register_connection(
        &self,
        id: u64,
        vhost: &VHost,
        user: &User,
        control: Arc<dyn ConnControl>,
        channels: Arc<AtomicUsize>,
        info: Option<Arc<super::ConnInfo>>,
    ) -> AmqpResult<()> {
        let mut inner = self.conns.inner.lock();
        if let Some(max) = vhost.limits().max_connections {
            let n = inner.values().filter(|e| *e.vhost == *vhost.name).count() as u64;
            if n >= max {
                return Err(AmqpError::not_allowed(format!(
                    "access to vhost '{}' refused for user '{}': connection limit ({max}) is reached",
                    vhost.name, user.def.name
                )));
            }
        }
        if let Some(max) = user.def.max_connections {
            let n = inner.values().filter(|e| e.user == user.def.name).count() as u64;
            if n >= max {
                return Err(AmqpError::not_allowed(format!(
                    "Connection refused for user '{}': user connection limit ({max}) is reached",
                    user.def.name
                )));
            }
        }
        inner.insert(
            id,
            Entry {
                vhost: vhost.name.to_string(),
                user: user.def.name.clone(),
                control,
                channels,
                info,
            },
        );
        self.churn.connections_opened.inc();
        Ok(())
    }

    /// Refuses a new channel when `user` has `max` open over all its connections
    /// (RabbitMQ 3.10.8's text).
    pub fn check_user_channels(&self, user: &str, max: u64) -> AmqpResult<()> {
        let open: usize = self
            .conns
            .inner
            .lock()
            .values()
            .filter(|e| e.user == user)
            .map(|e| e.channels.load(Ordering::Relaxed))
            .sum();
        if open as u64 >= max {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
            )));
        }
        Ok(())
    }

    /// Forgets a closed connection.
    pub fn unregister_connection(&self, id: u64) {
        if self.conns.inner.lock().remove(&id).is_some() {
            self.churn.connections_closed.inc();
        }
    }

    /// Open connections to `vhost`.
    pub fn connection_count(&self, vhost: &str) -> usize {
        self.conns
            .inner
            .lock()
            .values()
            .filter(|e| e.vhost == vhost)
            .count()
    }

    /// Closes every connection `pick` selects with 320 and `explanation`.
    pub(super) fn force_close_where(&self, pick: impl Fn(&str, &str) -> bool, explanation: &str) {
        let picked: Vec<Arc<dyn ConnControl>> = self
            .conns
            .inner
            .lock()
            .values()
            .filter(|e| pick(&e.vhost, &e.user))
            .map(|e| e.control.clone())
            .collect();
        if !picked.is_empty() {
            info!(
                connections = picked.len(),
                reason = explanation,
                "closing connections"
            );
        }
        for c in picked {
            c.force_close(explanation.to_string());
        }
    }
}
