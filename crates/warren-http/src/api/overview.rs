//! `/api/overview` and `/api/whoami`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::nodes;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::rates::{details, message_stats, Kind};
use crate::AppState;

/// `GET /api/overview`: the broker at a glance, with RabbitMQ 3.10's fields.
pub async fn overview(State(s): State<AppState>, _caller: Caller) -> ApiResult<Json<Value>> {
    let b = &s.broker;
    let names = b.vhost_names();
    let mut queues = 0usize;
    let mut exchanges = 0usize;
    let mut ready = 0u64;
    let mut unacked = 0u64;
    let mut consumers = 0u64;
    for name in &names {
        let Some(vh) = b.vhost(name) else { continue };
        exchanges += vh.exchange_names().len();
        for q in vh.queues() {
            queues += 1;
            ready += u64::from(q.message_count());
            unacked += q.unacked_count();
            consumers += u64::from(q.consumer_count());
        }
    }
    let conns = b.connections();
    let channels: usize = conns.iter().map(|c| c.channels().len()).sum();
    let rates = s.rates.broker();
    let r = Some(&rates);
    let version = &b.config.amqp.product_version;
    let node = nodes::node_name();
    let port = b
        .bound_listeners()
        .iter()
        .find(|l| l.protocol == "http")
        .map(|l| l.addr.port());
    Ok(Json(json!({
        "management_version": version,
        "rates_mode": "basic",
        "sample_retention_policies": {
            "global": [600, 3600, 28800, 86400],
            "basic": [600, 3600],
            "detailed": [600],
        },
        "exchange_types": nodes::exchange_types(),
        "product_version": version,
        "product_name": b.config.amqp.product,
        "rabbitmq_version": version,
        "cluster_name": nodes::current_cluster_name(b),
        "erlang_version": "n/a",
        "erlang_full_version": "n/a (Warren is written in Rust)",
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": message_stats(&b.message_totals(), r, Kind::Messages),
        "churn_rates": {
            "connection_created": b.churn.connections_opened.get(),
            "connection_created_details": details(None, ""),
            "connection_closed": b.churn.connections_closed.get(),
            "connection_closed_details": details(None, ""),
            "channel_created": b.churn.channels_opened.get(),
            "channel_created_details": details(None, ""),
            "channel_closed": b.churn.channels_closed.get(),
            "channel_closed_details": details(None, ""),
            "queue_declared": b.churn.queues_declared.get(),
            "queue_declared_details": details(None, ""),
            "queue_created": b.churn.queues_created.get(),
            "queue_created_details": details(None, ""),
            "queue_deleted": b.churn.queues_deleted.get(),
            "queue_deleted_details": details(None, ""),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": details(r, "messages"),
            "messages_ready": ready,
            "messages_ready_details": details(r, "messages_ready"),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": details(r, "messages_unacknowledged"),
        },
        "object_totals": {
            "channels": channels,
            "connections": conns.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": node,
        "listeners": nodes::listeners(b),
        "contexts": [{
            "ssl_opts": [],
            "node": node,
            "description": "RabbitMQ Management",
            "path": "/",
            "cowboy_opts": "[{sendfile,false}]",
            "port": port.map_or_else(|| b.config.management.port.to_string(), |p| p.to_string()),
        }],
    })))
}

/// `GET /api/whoami`.
pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({ "name": caller.user.def.name, "tags": caller.user.def.tags }))
}
