//! Users, their permissions and tags (RabbitMQ's internal authentication and authorisation
//! backend).
//!
//! The state changes only through metadata commands (`PutUser`, `SetPermissions`, ...), which
//! the broker checks and applies here. Every change bumps a generation counter, so that
//! connections can cache a user's compiled permissions and notice a change with one atomic
//! load (changes take effect for the next operation, as in RabbitMQ).
//!
//! Files: this one (the store), `password.rs` (hashing), `access.rs` (the per-operation checks
//! and their texts).

mod access;
pub mod password;

use parking_lot::RwLock;
use regex::Regex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use access::{Access, Perm};

use crate::error::{AmqpError, AmqpResult};
use crate::metadata::{Command, PermissionDef, TopicPermissionDef, UserDef};

/// A user.
#[derive(Debug)]
pub struct User {
    /// Its definition.
    pub def: UserDef,
}

impl User {
    /// Whether the user has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.def.tags.iter().any(|t| t == tag)
    }
}

/// RabbitMQ's regex semantics: an unanchored match; the empty expression matches nothing but
/// the empty name (RabbitMQ replaces `""` by `^$`).
pub(crate) fn compile(re: &str) -> AmqpResult<Regex> {
    let re = if re.is_empty() { "^$" } else { re };
    Regex::new(re).map_err(|e| {
        AmqpError::precondition_failed(format!("invalid regular expression '{re}': {e}"))
    })
}

#[derive(Debug)]
struct CompiledPerm {
    def: PermissionDef,
    configure: Regex,
    write: Regex,
    read: Regex,
}

#[derive(Debug)]
struct CompiledTopic {
    def: TopicPermissionDef,
    write: Regex,
    read: Regex,
}

/// RabbitMQ expands `{username}` and `{vhost}` in topic permission regexes.
fn expand(re: &str, user: &str, vhost: &str) -> String {
    re.replace("{username}", user).replace("{vhost}", vhost)
}

fn compile_topic(def: &TopicPermissionDef) -> AmqpResult<CompiledTopic> {
    Ok(CompiledTopic {
        write: compile(&expand(&def.write, &def.user, &def.vhost))?,
        read: compile(&expand(&def.read, &def.user, &def.vhost))?,
        def: def.clone(),
    })
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, Arc<User>>,
    /// By (user, vhost).
    perms: HashMap<(String, String), Arc<CompiledPerm>>,
    /// By (user, vhost).
    topics: HashMap<(String, String), Vec<Arc<CompiledTopic>>>,
}

/// Every user and permission.
#[derive(Debug, Default)]
pub struct Users {
    inner: RwLock<Inner>,
    generation: AtomicU64,
}

impl Users {
    /// Bumped by every change: a cached [`Access`] older than this must be fetched again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.inner.read().users.get(name).cloned()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.inner.read().users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What `user` may do in `vhost`; `None` if the user has no permissions there (or is gone).
    pub fn access(&self, user: &str, vhost: &str) -> Option<Arc<Access>> {
        let key = (user.to_string(), vhost.to_string());
        let inner = self.inner.read();
        let u = inner.users.get(user)?.clone();
        let p = inner.perms.get(&key)?;
        Some(Arc::new(Access {
            user: u,
            vhost: vhost.to_string(),
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
            topics: inner
                .topics
                .get(&key)
                .map(|v| {
                    v.iter()
                        .map(|t| (t.def.exchange.clone(), t.write.clone(), t.read.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }))
    }

    /// Checks a user command against the current state: `Ok(false)` if it would change
    /// nothing.
    pub fn check(&self, cmd: &Command) -> AmqpResult<bool> {
        let inner = self.inner.read();
        match cmd {
            Command::PutUser(u) => {
                if !u.password_hash.is_empty() && !password::known_algorithm(&u.hashing_algorithm) {
                    return Err(AmqpError::precondition_failed(format!(
                        "unknown hashing algorithm '{}' for user '{}'",
                        u.hashing_algorithm, u.name
                    )));
                }
                Ok(inner.users.get(&u.name).is_none_or(|cur| cur.def != *u))
            }
            Command::DeleteUser { name } => Ok(inner.users.contains_key(name)),
            Command::SetPermissions(p) => {
                if !inner.users.contains_key(&p.user) {
                    return Err(AmqpError::not_found(format!("no user '{}'", p.user)));
                }
                for re in [&p.configure, &p.write, &p.read] {
                    compile(re)?;
                }
                let key = (p.user.clone(), p.vhost.clone());
                Ok(inner.perms.get(&key).is_none_or(|cur| cur.def != *p))
            }
            Command::ClearPermissions { user, vhost } => {
                Ok(inner.perms.contains_key(&(user.clone(), vhost.clone())))
            }
            Command::SetTopicPermissions(t) => {
                if !inner.users.contains_key(&t.user) {
                    return Err(AmqpError::not_found(format!("no user '{}'", t.user)));
                }
                compile_topic(t)?;
                let key = (t.user.clone(), t.vhost.clone());
                Ok(!inner
                    .topics
                    .get(&key)
                    .is_some_and(|v| v.iter().any(|c| c.def == *t)))
            }
            Command::ClearTopicPermissions {
                user,
                vhost,
                exchange,
            } => Ok(inner
                .topics
                .get(&(user.clone(), vhost.clone()))
                .is_some_and(|v| {
                    v.iter()
                        .any(|t| exchange.as_ref().is_none_or(|x| *x == t.def.exchange))
                })),
            _ => Ok(true),
        }
    }

    /// Applies a (checked) user command.
    pub fn apply(&self, cmd: &Command) -> AmqpResult<()> {
        let mut inner = self.inner.write();
        match cmd {
            Command::PutUser(u) => {
                inner
                    .users
                    .insert(u.name.clone(), Arc::new(User { def: u.clone() }));
            }
            Command::DeleteUser { name } => {
                inner.users.remove(name);
                inner.perms.retain(|(u, _), _| u != name);
                inner.topics.retain(|(u, _), _| u != name);
            }
            Command::SetPermissions(p) => {
                let c = CompiledPerm {
                    configure: compile(&p.configure)?,
                    write: compile(&p.write)?,
                    read: compile(&p.read)?,
                    def: p.clone(),
                };
                inner
                    .perms
                    .insert((p.user.clone(), p.vhost.clone()), Arc::new(c));
            }
            Command::ClearPermissions { user, vhost } => {
                inner.perms.remove(&(user.clone(), vhost.clone()));
                inner.topics.remove(&(user.clone(), vhost.clone()));
            }
            Command::SetTopicPermissions(t) => {
                let c = Arc::new(compile_topic(t)?);
                let v = inner
                    .topics
                    .entry((t.user.clone(), t.vhost.clone()))
                    .or_default();
                v.retain(|x| x.def.exchange != t.exchange);
                v.push(c);
            }
            Command::ClearTopicPermissions {
                user,
                vhost,
                exchange,
            } => {
                let key = (user.clone(), vhost.clone());
                match exchange {
                    None => {
                        inner.topics.remove(&key);
                    }
                    Some(x) => {
                        if let Some(v) = inner.topics.get_mut(&key) {
                            v.retain(|t| t.def.exchange != *x);
                            if v.is_empty() {
                                inner.topics.remove(&key);
                            }
                        }
                    }
                }
            }
            _ => return Ok(()),
        }
        drop(inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Forgets every permission in a deleted vhost.
    pub fn remove_vhost(&self, vhost: &str) {
        let mut inner = self.inner.write();
        inner.perms.retain(|(_, v), _| v != vhost);
        inner.topics.retain(|(_, v), _| v != vhost);
        drop(inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The commands that rebuild every user and permission.
    pub fn snapshot(&self) -> Vec<Command> {
        let inner = self.inner.read();
        let mut out: Vec<Command> = inner
            .users
            .values()
            .map(|u| Command::PutUser(u.def.clone()))
            .collect();
        out.extend(
            inner
                .perms
                .values()
                .map(|p| Command::SetPermissions(p.def.clone())),
        );
        out.extend(
            inner
                .topics
                .values()
                .flatten()
                .map(|t| Command::SetTopicPermissions(t.def.clone())),
        );
        out
    }
}
