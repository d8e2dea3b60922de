//! The black-box tests: one integration binary (lapin, pika, raw sockets, against an
//! in-process broker over TCP), one module per area. One binary links lapin and the broker
//! once instead of once per file.

mod access;
mod compat;
mod connections;
mod consistent_hash;
mod ctl;
mod dedup;
mod delayed;
mod direct_reply_to;
mod disk_full;
mod drain;
mod durability;
mod errors;
mod events;
mod flow;
mod foundation;
mod http_admin;
mod http_api;
mod http_lists;
mod http_more;
mod http_node;
mod http_topology;
mod interop;
mod large_bodies;
mod messaging;
mod metrics;
mod model;
mod paging;
mod policies;
mod queue_features;
mod quorum;
mod rabbitmq4;
mod smoke;
mod stats;
mod streams;
mod tls;
mod tutorials;
