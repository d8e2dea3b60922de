//! Warren's broker core: connections, channels, vhosts, exchanges, bindings, queues, consumers.
//!
//! # Layout
//! - [`server`]: accept loop and shutdown.
//! - `connection` (module): one task per client connection (handshake, heartbeats, channels)
//!   plus a writer task.
//! - [`vhost`]: exchanges, queues and bindings of one virtual host, and routing.
//! - [`exchange`]: exchange types and binding tables (topic trie, headers matching).
//! - [`queue`]: a queue's messages, consumers and delivery loop.
//! - [`message`], [`error`], [`config`], [`broker`], [`datadir`].
//!
//! See `docs/ARCHITECTURE.md` for the task layout, the publish -> route -> enqueue -> deliver ->
//! ack walk-through and the lock order.

pub mod broker;
pub mod config;
mod connection;
pub mod datadir;
pub mod error;
pub mod exchange;
pub mod message;
pub mod queue;
pub mod server;
pub mod store;
pub mod timer;
mod value;
pub mod vhost;

pub use broker::Broker;
pub use config::Config;
pub use connection::{ConnEvent, ConnSender, Flow};
