//! Warren's broker core: connections, channels, vhosts, exchanges, bindings, queues, consumers,
//! storage and the metadata log.
//!
//! # Layout (lower layers first; each depends only on the ones before it)
//! - [`clock`], [`message`], [`error`], [`config`], `value`: plain types.
//! - [`exchange`]: exchange types and binding tables (topic trie, headers matching).
//! - [`store`]: message storage (trait, memory and segment-file stores), group commit, pager.
//! - [`metadata`]: metadata commands and the log that makes them durable.
//! - [`auth`]: users, password hashes, permissions and their checks.
//! - [`queue`]: queues behind one handle, and the interfaces (`Sink`, `QueueOwner`) the upper
//!   layers implement.
//! - [`vhost`]: exchanges, queues and bindings of one virtual host, routing, and applying
//!   metadata commands.
//! - [`broker`]: broker-wide state and the metadata path.
//! - `connection` (module): one task per client connection (handshake, heartbeats, channels)
//!   plus a writer task.
//! - [`server`]: listeners, the accept loop and shutdown. [`datadir`]: the data dir lock.
//!
//! See `docs/ARCHITECTURE.md` for the task layout, the publish -> route -> enqueue -> deliver ->
//! ack walk-through and the lock order.

pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
mod connection;
pub mod datadir;
pub mod dedup;
pub mod disk_monitor;
pub mod error;
pub mod events;
pub mod exchange;
pub mod message;
pub mod metadata;
pub mod policy;
pub mod queue;
pub mod server;
pub mod stats;
pub mod store;
pub mod tls;
mod value;
pub mod vhost;

pub use broker::Broker;
pub use config::Config;
