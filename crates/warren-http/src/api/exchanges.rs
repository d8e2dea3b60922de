//! `/api/exchanges[/{vhost}]` (GET): RabbitMQ's exchange objects, through `query::apply`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Map, Value};
use warren_codec::proto::{AMQPValue, FieldTable};

use crate::api::query;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// An AMQP field value as RabbitMQ's management API shows it.
pub(crate) fn value_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        _ => Value::Null,
    }
}

/// A field table as a JSON object.
pub(crate) fn table_json(t: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in t.inner() {
        m.insert(k.as_str().to_string(), value_json(v));
    }
    Value::Object(m)
}

fn exchanges_of(s: &AppState, vhost: &str) -> Vec<Value> {
    let Some(vh) = s.broker.vhost(vhost) else {
        return Vec::new();
    };
    vh.exchanges()
        .into_iter()
        .map(|e| {
            let t = e.stats.totals();
            json!({
                "name": &*e.name,
                "vhost": vhost,
                "type": e.kind,
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": table_json(&e.arguments),
                "user_who_performed_action": "",
                "message_stats": {
                    "publish_in": t.publish_in,
                    "publish_out": t.publish_out,
                },
            })
        })
        .collect()
}

/// `GET /api/exchanges`.
pub async fn list_all(
    State(s): State<AppState>,
    _caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let mut items = Vec::new();
    for name in s.broker.vhost_names() {
        items.extend(exchanges_of(&s, &name));
    }
    query::apply(items, &q).map(Json)
}

/// `GET /api/exchanges/{vhost}`.
pub async fn list_vhost(
    State(s): State<AppState>,
    _caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if s.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    query::apply(exchanges_of(&s, &vhost), &q).map(Json)
}
