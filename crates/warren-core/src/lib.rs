//! Warren's broker core: connections, channels, vhosts, exchanges, bindings, queues, consumers.
//!
//! See `docs/ARCHITECTURE.md` for the task layout, the publish -> route -> enqueue -> deliver -> ack
//! walk-through and the lock order.

pub mod config;
pub mod datadir;
pub mod server;

pub use config::Config;
