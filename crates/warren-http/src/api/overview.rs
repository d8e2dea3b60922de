//! `/api/overview` and `/api/whoami`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::AppState;

/// `GET /api/overview`: the broker at a glance.
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
    let connections: usize = names.iter().map(|n| b.connection_count(n)).sum();
    Ok(Json(json!({
        "management_version": b.config.amqp.product_version,
        "rabbitmq_version": b.config.amqp.product_version,
        "product_name": b.config.amqp.product,
        "product_version": b.config.amqp.product_version,
        "cluster_name": "warren",
        "node": "warren@localhost",
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "connections": connections,
            "queues": queues,
            "exchanges": exchanges,
            "consumers": consumers,
        },
    })))
}

/// `GET /api/whoami`.
pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({ "name": caller.user.def.name, "tags": caller.user.def.tags }))
}
