//! Broker-wide metadata commands: vhosts, users, permissions, limits, parameters. Checked by
//! [`Broker::check_broker`] and carried out by [`Broker::apply_broker`], the broker-level half
//! of the one metadata path (the vhost-level half is `vhost/topology.rs`).

use tracing::{error, info};

use super::{Broker, BrokerCheck};
use crate::error::{AmqpError, AmqpResult};
use crate::metadata::Command;

impl Broker {
    fn require_vhost(&self, name: &str) -> AmqpResult<std::sync::Arc<crate::vhost::VHost>> {
        self.vhost(name)
            .ok_or_else(|| AmqpError::not_found(format!("no vhost '{name}'")))
    }

    /// Checks a broker-wide command against the current state.
    pub(super) fn check_broker(&self, cmd: &Command) -> AmqpResult<BrokerCheck> {
        let changes = match cmd {
            Command::AddVhost { name } => {
                if name.is_empty() || name.len() > 255 {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid vhost name '{name}'"
                    )));
                }
                self.vhost(name).is_none()
            }
            Command::DeleteVhost { name } => {
                self.require_vhost(name)?;
                true
            }
            Command::SetPermissions(p) => {
                self.require_vhost(&p.vhost)?;
                self.users.check(cmd)?
            }
            Command::SetTopicPermissions(p) => {
                self.require_vhost(&p.vhost)?;
                self.users.check(cmd)?
            }
            Command::PutUser(_)
            | Command::DeleteUser { .. }
            | Command::ClearPermissions { .. }
            | Command::ClearTopicPermissions { .. } => self.users.check(cmd)?,
            Command::SetVhostLimits { vhost, limits } => {
                self.require_vhost(vhost)?.limits() != *limits
            }
            Command::PutRuntime(r) => {
                if is_policy(&r.kind) {
                    self.require_vhost(&r.vhost)?;
                    crate::policy::Policy::parse(&r.kind, &r.name, &r.value)?;
                }
                let key = runtime_key(&r.kind, &r.vhost, &r.component, &r.name);
                self.runtime.read().get(&key) != Some(r)
            }
            Command::ClearRuntime {
                kind,
                vhost,
                component,
                name,
            } => {
                let key = runtime_key(kind, vhost, component, name);
                if !self.runtime.read().contains_key(&key) {
                    return Err(AmqpError::not_found(format!(
                        "no {} '{name}' in vhost '{vhost}'",
                        kind.replace('_', " ")
                    )));
                }
                true
            }
            // Topology commands are the vhost's.
            _ => true,
        };
        Ok(if changes {
            BrokerCheck::Log
        } else {
            BrokerCheck::Nothing
        })
    }

    /// Carries out a broker-wide command. `replay`: at startup, from the log (nothing to
    /// close, files are tidied once replay is done).
    pub(super) fn apply_broker(&self, cmd: &Command, replay: bool) -> std::io::Result<()> {
        match cmd {
            Command::AddVhost { name } => {
                if self.vhost(name).is_some() {
                    return Ok(());
                }
                let Some(me) = self.me.upgrade() else {
                    return Ok(());
                };
                let vh = self.make_vhost(name)?;
                if !replay {
                    vh.finish_recovery();
                }
                me.add_vhost(vh);
                info!(vhost = %name, "vhost added");
            }
            Command::DeleteVhost { name } => {
                let Some(vh) = self.vhosts.write().remove(name) else {
                    return Ok(());
                };
                self.retired.lock().add(&vh.retired_totals());
                self.users.remove_vhost(name);
                self.runtime.write().retain(|(_, v, _, _), _| v != name);
                if !replay {
                    self.force_close_where(
                        |v, _| v == name.as_str(),
                        &format!("vhost '{name}' is deleted"),
                    );
                    vh.destroy(self.clock.now());
                    if self.syncer.is_some() {
                        // The queues' stores were told to go with their next flush; the rest
                        // of the directory goes now (this runs on the log's thread).
                        let dir = self.vhost_dir(name);
                        if let Err(e) = std::fs::remove_dir_all(&dir) {
                            if e.kind() != std::io::ErrorKind::NotFound {
                                error!(dir = %dir.display(), error = %e, "cannot remove a deleted vhost's files");
                            }
                        }
                    }
                }
                info!(vhost = %name, "vhost deleted");
            }
            Command::DeleteUser { name } => {
                self.users
                    .apply(cmd)
                    .map_err(|e| std::io::Error::other(e.text))?;
                if !replay {
                    self.force_close_where(
                        |_, u| u == name.as_str(),
                        &format!("user '{name}' is deleted"),
                    );
                }
            }
            Command::PutUser(_)
            | Command::SetPermissions(_)
            | Command::ClearPermissions { .. }
            | Command::SetTopicPermissions(_)
            | Command::ClearTopicPermissions { .. } => {
                self.users
                    .apply(cmd)
                    .map_err(|e| std::io::Error::other(e.text))?;
            }
            Command::SetVhostLimits { vhost, limits } => {
                if let Some(vh) = self.vhost(vhost) {
                    vh.set_limits(*limits);
                }
            }
            Command::PutRuntime(r) => {
                let key = runtime_key(&r.kind, &r.vhost, &r.component, &r.name);
                self.runtime.write().insert(key, r.clone());
                if is_policy(&r.kind) {
                    self.refresh_policies(&r.vhost);
                }
            }
            Command::ClearRuntime {
                kind,
                vhost,
                component,
                name,
            } => {
                let key = runtime_key(kind, vhost, component, name);
                self.runtime.write().remove(&key);
                if is_policy(kind) {
                    self.refresh_policies(vhost);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Broker {
    /// Rebuilds `vhost`'s policy set from the stored policies and re-evaluates its queues and
    /// exchanges (on every policy change, also in replay).
    fn refresh_policies(&self, vhost: &str) {
        let Some(vh) = self.vhost(vhost) else { return };
        let parsed: Vec<crate::policy::Policy> = self
            .runtime
            .read()
            .values()
            .filter(|r| r.vhost == vhost && is_policy(&r.kind))
            .filter_map(|r| match crate::policy::Policy::parse(&r.kind, &r.name, &r.value) {
                Ok(p) => Some(p),
                Err(e) => {
                    // Checked before it was logged; only a log from another version can get here.
                    error!(vhost = %vhost, policy = %r.name, error = %e.text, "stored policy is invalid, ignored");
                    None
                }
            })
            .collect();
        let started = std::time::Instant::now();
        vh.set_policies(crate::policy::PolicySet::new(parsed), self.clock.now());
        tracing::debug!(vhost = %vhost, elapsed = ?started.elapsed(), "policies re-evaluated");
    }
}

fn is_policy(kind: &str) -> bool {
    kind == "policy" || kind == "operator_policy"
}

/// The key a stored parameter or policy is kept under: (kind, vhost, component, name).
pub(super) fn runtime_key(
    kind: &str,
    vhost: &str,
    component: &str,
    name: &str,
) -> (String, String, String, String) {
    (kind.into(), vhost.into(), component.into(), name.into())
}
