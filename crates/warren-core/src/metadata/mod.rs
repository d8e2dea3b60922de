//! Durable metadata: the commands that change it, and the log that makes them durable.
//!
//! Every change of durable state (today exchanges, queues and bindings; vhosts, users,
//! permissions, policies and parameters as they arrive) is a [`Command`]. Whichever way it
//! comes in (an AMQP method, the HTTP API, a definitions import, recovery at startup), it is
//! applied by one function, `Broker::apply`, and a durable one is applied only once the
//! [`MetaLog`] has made it durable: the log calls back, in log order, and the callback applies
//! it (the Raft model: propose, commit, apply). So the log's order is the apply order, replay
//! at startup reproduces the state exactly, and a write that fails leaves the state unchanged
//! and gives the caller an error. An openraft-backed log can replace [`file::FileLog`] behind
//! the same trait: commit through consensus, then call the same callback.
//!
//! This module knows nothing of vhosts, queues or connections: commands are plain data.

pub mod file;
pub mod legacy;

use serde::{Deserialize, Serialize};
use warren_codec::proto::FieldTable;

/// A durable exchange's declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Durable (a logged declaration always is; non-durable ones are applied without the log).
    pub durable: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Internal.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
    /// A durable delayed-message exchange's store directory (named at declare, like a
    /// queue's: each incarnation has its own). Empty otherwise, and in logs of older versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store_dir: String,
}

/// A queue's declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Vhost.
    pub vhost: String,
    /// Name (server-named queues get their name before the command is made).
    pub name: String,
    /// Durable.
    pub durable: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
    /// Directory of its message store under the vhost's `queues/` (durable queues; one per
    /// incarnation, so it also tells two incarnations of one name apart).
    #[serde(default)]
    pub store_dir: String,
    /// Owning connection of an exclusive queue (never logged: exclusive queues are not
    /// durable).
    #[serde(skip)]
    pub exclusive_owner: Option<u64>,
}

/// A binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// Vhost.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// Routing key.
    pub routing_key: String,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A user (RabbitMQ's internal backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    /// Name.
    pub name: String,
    /// `base64(salt ++ hash(salt ++ password))`; empty: the user can only log in with EXTERNAL.
    pub password_hash: String,
    /// `rabbit_password_hashing_sha256` (default), `_sha512` or `_md5`.
    pub hashing_algorithm: String,
    /// Tags (`administrator`, `monitoring`, `policymaker`, `management`, `impersonator`).
    pub tags: Vec<String>,
    /// `max-connections` (None: no limit).
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// `max-channels` per connection (None: no limit).
    #[serde(default)]
    pub max_channels: Option<u64>,
}

/// A user's permissions in a vhost: three regular expressions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionDef {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Configure regex.
    pub configure: String,
    /// Write regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// A user's topic permissions for one topic exchange in a vhost (regexes on routing keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Topic exchange.
    pub exchange: String,
    /// Write regex (publish).
    pub write: String,
    /// Read regex (bind).
    pub read: String,
}

/// A vhost's limits (RabbitMQ's `vhost-limits` runtime parameter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostLimits {
    /// `max-connections` (None: no limit).
    pub max_connections: Option<u64>,
    /// `max-queues` (None: no limit).
    pub max_queues: Option<u64>,
}

/// A runtime parameter, global parameter or policy, kept as RabbitMQ's JSON (applied by the
/// features that read them; `vhost-limits` is [`Command::SetVhostLimits`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeDef {
    /// `parameter`, `global_parameter`, `policy` or `operator_policy`.
    pub kind: String,
    /// Vhost (empty for global parameters).
    pub vhost: String,
    /// Component (parameters; empty otherwise).
    pub component: String,
    /// Name.
    pub name: String,
    /// The whole definition as RabbitMQ exports it.
    pub value: serde_json::Value,
}

/// One change of metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Declare an exchange (a no-op if an equivalent one exists).
    DeclareExchange(ExchangeDef),
    /// Delete an exchange and every binding to and from it.
    DeleteExchange {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
    },
    /// Declare a queue (a no-op if an equivalent one exists).
    DeclareQueue(QueueDef),
    /// Delete a queue, its bindings and its messages.
    DeleteQueue {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
        /// Only this incarnation (its store directory); `None`: whichever exists.
        #[serde(default)]
        store_dir: Option<String>,
    },
    /// Add a binding.
    Bind(BindingDef),
    /// Remove a binding.
    Unbind(BindingDef),
    /// Create a vhost (a no-op if it exists).
    AddVhost {
        /// Name.
        name: String,
    },
    /// Delete a vhost with everything in it (its connections are closed).
    DeleteVhost {
        /// Name.
        name: String,
    },
    /// Create or replace a user.
    PutUser(UserDef),
    /// Delete a user, its permissions (its connections are closed).
    DeleteUser {
        /// Name.
        name: String,
    },
    /// Set a user's permissions in a vhost.
    SetPermissions(PermissionDef),
    /// Remove a user's permissions in a vhost.
    ClearPermissions {
        /// User.
        user: String,
        /// Vhost.
        vhost: String,
    },
    /// Set a user's topic permissions for one exchange.
    SetTopicPermissions(TopicPermissionDef),
    /// Remove a user's topic permissions in a vhost: for one exchange, or (`None`) for all.
    ClearTopicPermissions {
        /// User.
        user: String,
        /// Vhost.
        vhost: String,
        /// Only this exchange's (`None`: every exchange's).
        #[serde(default)]
        exchange: Option<String>,
    },
    /// Set (or, with both `None`, clear) a vhost's limits.
    SetVhostLimits {
        /// Vhost.
        vhost: String,
        /// The limits.
        limits: VhostLimits,
    },
    /// Store a parameter or policy.
    PutRuntime(RuntimeDef),
    /// Remove a stored parameter or policy (the key fields of a [`RuntimeDef`]).
    ClearRuntime {
        /// `parameter`, `global_parameter`, `policy` or `operator_policy`.
        kind: String,
        /// Vhost (empty for global parameters).
        vhost: String,
        /// Component (parameters; empty otherwise).
        component: String,
        /// Name.
        name: String,
    },
}

impl Command {
    /// The vhost whose topology the command changes; `None` for broker-wide commands (vhosts,
    /// users, permissions, limits, parameters), which the broker applies itself.
    pub fn vhost(&self) -> Option<&str> {
        match self {
            Command::DeclareExchange(x) => Some(&x.vhost),
            Command::DeclareQueue(q) => Some(&q.vhost),
            Command::Bind(b) | Command::Unbind(b) => Some(&b.vhost),
            Command::DeleteExchange { vhost, .. } | Command::DeleteQueue { vhost, .. } => {
                Some(vhost)
            }
            _ => None,
        }
    }

    /// Encodes for the log.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a logged command.
    pub fn decode(bytes: &[u8]) -> Result<Command, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Called once a command appended to the log is durable (`Ok`) or could not be written
/// (`Err`), in log order, on the log's thread. It applies the command; it must not block.
pub type Committed = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// Where durable commands go before they are applied.
pub trait MetaLog: Send + Sync + std::fmt::Debug {
    /// Appends `cmd`; `committed` runs when it is durable or failed. Never blocks on disk.
    fn append(&self, cmd: &Command, committed: Committed);
    /// Tells the log how to produce a snapshot of the current state (the commands that
    /// rebuild it), for compaction. Called once, after recovery.
    fn set_snapshot_source(&self, _source: SnapshotSource) {}
}

/// Produces the commands that rebuild the current state (called on the log's thread, when
/// every command written so far has been applied and none after it).
pub type SnapshotSource = Box<dyn Fn() -> Vec<Command> + Send + Sync>;

/// A log that keeps nothing: a command is "durable" at once (brokers without a data dir).
#[derive(Debug, Default)]
pub struct MemoryLog;

impl MetaLog for MemoryLog {
    fn append(&self, _cmd: &Command, committed: Committed) {
        committed(Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_codec::proto::AMQPValue;

    #[test]
    fn commands_round_trip_through_their_encoding() {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
        let cmds = vec![
            Command::DeclareQueue(QueueDef {
                vhost: "/".into(),
                name: "q".into(),
                durable: true,
                auto_delete: false,
                arguments: args.clone(),
                store_dir: "00ff-01".into(),
                exclusive_owner: None,
            }),
            Command::Bind(BindingDef {
                vhost: "/".into(),
                source: "amq.direct".into(),
                destination: "q".into(),
                destination_type: "queue".into(),
                routing_key: "k".into(),
                arguments: args,
            }),
            Command::DeleteQueue {
                vhost: "/".into(),
                name: "q".into(),
                store_dir: Some("00ff-01".into()),
            },
        ];
        for c in cmds {
            assert_eq!(Command::decode(&c.encode()).expect("decodes"), c);
        }
    }
}
