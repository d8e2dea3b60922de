//! `/api/queues...`: list, show, declare, delete, a queue's bindings, purge, and getting
//! messages for inspection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use warren_core::auth::Perm;
use warren_core::message::{amq_props, QueuedMessage};
use warren_core::metadata::{Command, QueueDef};
use warren_core::queue::{Delivery, Got, QueueRef, Settle, Sink, Waiter};
use warren_core::vhost::{new_store_dir, Pre, VHost};

use crate::api::common::{self, table_json};
use crate::api::{bindings, query};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::rates::{self, Rates};
use crate::AppState;

/// The node name every object reports (one node).
pub(crate) const NODE: &str = "warren@localhost";

/// How long a get or purge waits for paged messages before giving up.
const PAGER_WAIT: Duration = Duration::from_secs(10);

/// One queue as RabbitMQ shows it. Warren does not track unacknowledged bytes, idle time or
/// consumer utilisation over time: `message_bytes_unacknowledged` is 0, `idle_since` is left
/// out, `consumer_utilisation` is 1.0 while there are consumers (they are never blocked by
/// the queue) and 0 otherwise.
fn queue_json(s: &AppState, vhost: &str, q: &QueueRef) -> Value {
    let info = q.info();
    let rates = s.rates.queue(vhost, q.name());
    let rates = rates.as_ref();
    let applied = q.policy();
    let t = info.stats.totals();
    let ready = u64::from(q.message_count());
    let unacked = q.unacked_count();
    let ready_bytes = q.ready_bytes();
    let consumers = q.consumer_count();
    let utilisation = if consumers > 0 { 1.0 } else { 0.0 };
    let consumer_details: Vec<Value> = q
        .consumers()
        .iter()
        .map(|c| {
            json!({
                "consumer_tag": &*c.tag,
                "channel_details": {"number": c.channel, "connection_name": c.conn_id.to_string()},
                "ack_required": c.ack_required,
                "exclusive": c.exclusive,
                "prefetch_count": c.prefetch_count,
                "arguments": table_json(&c.arguments),
                "active": true,
                "activity_status": "up",
            })
        })
        .collect();
    json!({
        "name": &**q.name(),
        "vhost": vhost,
        "durable": info.options.durable,
        "auto_delete": info.options.auto_delete,
        "exclusive": info.options.exclusive_owner.is_some(),
        "arguments": table_json(&info.options.arguments),
        "type": info.args.kind.as_str(),
        "state": "running",
        "node": NODE,
        "messages": ready + unacked,
        "messages_details": rates::details(rates, "messages"),
        "messages_ready": ready,
        "messages_ready_details": rates::details(rates, "messages_ready"),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": rates::details(rates, "messages_unacknowledged"),
        "message_bytes": ready_bytes,
        "message_bytes_ready": ready_bytes,
        "message_bytes_unacknowledged": 0,
        "consumers": consumers,
        "consumer_utilisation": utilisation,
        "consumer_capacity": utilisation,
        "consumer_details": consumer_details,
        "policy": applied.policy.as_deref(),
        "operator_policy": applied.operator_policy.as_deref(),
        "effective_policy_definition": Value::Object(applied.definition.clone()),
        "exclusive_consumer_tag": Value::Null,
        "single_active_consumer_tag": Value::Null,
        "head_message_timestamp": Value::Null,
        "message_stats": message_stats(&t, rates),
    })
}

/// A queue's counters with RabbitMQ's names, each with its `_details: {"rate": r}`.
fn message_stats(t: &warren_core::stats::MessageTotals, rates: Option<&Rates>) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: u64| {
        m.insert(k.to_string(), json!(v));
        m.insert(format!("{k}_details"), rates::details(rates, k));
    };
    for (k, v) in t.fields() {
        if !matches!(
            k,
            "publish_in" | "publish_out" | "confirm" | "return_unroutable" | "drop_unroutable"
        ) {
            put(k, v);
        }
    }
    put("deliver_get", t.deliver_get());
    Value::Object(m)
}

fn queues_of(s: &AppState, vh: &VHost, vhost: &str) -> Vec<Value> {
    vh.queues()
        .iter()
        .map(|q| queue_json(s, vhost, q))
        .collect()
}

/// `GET /api/queues`.
pub async fn list_all(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let names = common::visible_vhosts(&s, &caller);
    common::off_loop(move || {
        let mut items = Vec::new();
        for name in names {
            if let Some(vh) = s.broker.vhost(&name) {
                items.extend(queues_of(&s, &vh, &name));
            }
        }
        query::apply(items, &q)
    })
    .await
    .map(Json)
}

/// `GET /api/queues/{vhost}`.
pub async fn list_vhost(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    common::off_loop(move || query::apply(queues_of(&s, &vh, &vhost), &q))
        .await
        .map(Json)
}

fn find(vh: &VHost, name: &str) -> ApiResult<QueueRef> {
    vh.queue(name).ok_or_else(ApiError::not_found)
}

/// `GET /api/queues/{vhost}/{name}`.
pub async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    Ok(Json(queue_json(&s, &vhost, &find(&vh, &name)?)))
}

/// `PUT /api/queues/{vhost}/{name}`: 201 when created, 204 when an equivalent one existed.
pub async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let m = common::body(&body)?;
    let vh = common::vhost(&s, &caller, &vhost)?;
    let access = common::access(&s, &caller, &vhost)?;
    common::permit(access.queue(Perm::Configure, &name))?;
    let durable = common::flag(&m, "durable", false)?;
    let existed = vh.queue(&name).is_some();
    let def = QueueDef {
        vhost: vhost.clone(),
        name: name.clone(),
        durable,
        auto_delete: common::flag(&m, "auto_delete", false)?,
        arguments: common::arguments(&m)?,
        store_dir: if durable && vh.persistent() {
            new_store_dir(&name)
        } else {
            String::new()
        },
        exclusive_owner: None,
    };
    common::run(&s, &caller, Command::DeclareQueue(def), Pre::default()).await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// `DELETE /api/queues/{vhost}/{name}[?if-unused=true][&if-empty=true]`.
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    find(&vh, &name)?;
    let access = common::access(&s, &caller, &vhost)?;
    common::permit(access.queue(Perm::Configure, &name))?;
    let pre = Pre {
        if_unused: common::query_flag(&q, "if-unused"),
        if_empty: common::query_flag(&q, "if-empty"),
    };
    let cmd = Command::DeleteQueue {
        vhost: vhost.clone(),
        name,
        store_dir: None,
    };
    common::run(&s, &caller, cmd, pre).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/queues/{vhost}/{name}/bindings`.
pub async fn bindings(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    find(&vh, &name)?;
    let items = bindings::of_vhost(&vh, &vhost)
        .into_iter()
        .filter(|b| b["destination_type"] == "queue" && b["destination"] == name.as_str())
        .collect();
    query::apply(items, &q).map(Json)
}

/// Where the pager's wake-up for a get or purge on behalf of the API goes.
#[derive(Debug, Default)]
struct ApiWaiter {
    woken: Notify,
}

impl Sink for ApiWaiter {
    fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
        Err(d)
    }
    fn writable(&self) -> bool {
        true
    }
    fn cancelled(&self, _channel: u16, _tag: Arc<str>) {}
    fn wake(&self, _channel: u16) {
        self.woken.notify_one();
    }
}

fn waiter() -> (Arc<ApiWaiter>, Waiter) {
    let w = Arc::new(ApiWaiter::default());
    let waiter = Waiter {
        sink: w.clone(),
        channel: 0,
    };
    (w, waiter)
}

/// A queue the API may read: not another connection's exclusive queue.
fn usable(vh: &VHost, name: &str) -> ApiResult<QueueRef> {
    let q = find(vh, name)?;
    if q.info().options.exclusive_owner.is_some() {
        return Err(ApiError::bad_request(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration.",
            name,
            q.info().vhost
        )));
    }
    Ok(q)
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purge.
pub async fn purge(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    let q = usable(&vh, &name)?;
    let access = common::access(&s, &caller, &vhost)?;
    common::permit(access.queue(Perm::Read, &name))?;
    q.check_purge().map_err(common::amqp)?;
    let (w, waiter) = waiter();
    let (_, wait) = q.purge(s.broker.clock.now(), &waiter);
    if wait
        && tokio::time::timeout(PAGER_WAIT, w.woken.notified())
            .await
            .is_err()
    {
        tracing::warn!(queue = %name, "purge over the HTTP API: no word from the pager");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// What `POST .../get` does with the messages it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Requeue,
    Ack,
    Reject,
}

fn ack_mode(s: &str) -> ApiResult<AckMode> {
    match s {
        "ack_requeue_true" | "reject_requeue_true" => Ok(AckMode::Requeue),
        "ack_requeue_false" => Ok(AckMode::Ack),
        "reject_requeue_false" => Ok(AckMode::Reject),
        _ => Err(ApiError::bad_request(format!(
            "ackmode must be one of ack_requeue_true, ack_requeue_false, reject_requeue_true, \
             reject_requeue_false; got '{s}'"
        ))),
    }
}

/// Message properties as the API shows them (RabbitMQ shows `[]` when there are none).
fn properties_json(raw: &[u8]) -> Value {
    let Some(p) = amq_props(raw) else {
        return json!([]);
    };
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    if let Some(v) = p.content_type() {
        put("content_type", json!(v.as_str()));
    }
    if let Some(v) = p.content_encoding() {
        put("content_encoding", json!(v.as_str()));
    }
    if let Some(v) = p.headers() {
        put("headers", table_json(v));
    }
    if let Some(v) = p.delivery_mode() {
        put("delivery_mode", json!(v));
    }
    if let Some(v) = p.priority() {
        put("priority", json!(v));
    }
    if let Some(v) = p.correlation_id() {
        put("correlation_id", json!(v.as_str()));
    }
    if let Some(v) = p.reply_to() {
        put("reply_to", json!(v.as_str()));
    }
    if let Some(v) = p.expiration() {
        put("expiration", json!(v.as_str()));
    }
    if let Some(v) = p.message_id() {
        put("message_id", json!(v.as_str()));
    }
    if let Some(v) = p.timestamp() {
        put("timestamp", json!(v));
    }
    if let Some(v) = p.kind() {
        put("type", json!(v.as_str()));
    }
    if let Some(v) = p.user_id() {
        put("user_id", json!(v.as_str()));
    }
    if let Some(v) = p.app_id() {
        put("app_id", json!(v.as_str()));
    }
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

fn message_json(m: &QueuedMessage, left: u32, base64_only: bool, truncate: Option<usize>) -> Value {
    let body = &m.msg.body[..];
    let shown = match truncate {
        Some(n) if n < body.len() => &body[..n],
        _ => body,
    };
    let (payload, encoding) = match std::str::from_utf8(shown) {
        Ok(text) if !base64_only => (text.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    json!({
        "payload_bytes": body.len(),
        "redelivered": m.redelivered,
        "exchange": &*m.msg.exchange,
        "routing_key": &*m.msg.routing_key,
        "message_count": left,
        "properties": properties_json(&m.msg.raw_properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// `POST /api/queues/{vhost}/{name}/get`: takes up to `count` messages, then requeues, acks
/// or rejects them all (as RabbitMQ, so a requeueing get of N shows N distinct messages).
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = common::body(&body)?;
    let vh = common::vhost(&s, &caller, &vhost)?;
    let q = usable(&vh, &name)?;
    let access = common::access(&s, &caller, &vhost)?;
    common::permit(access.queue(Perm::Read, &name))?;
    let mut missing = Vec::new();
    for k in ["count", "ackmode", "encoding"] {
        if !m.contains_key(k) {
            missing.push(format!("{{key_missing,{k}}}"));
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let count = match &m["count"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad_request("count must be a non-negative integer"))?;
    let mode = ack_mode(common::string(&m, "ackmode")?.as_deref().unwrap_or(""))?;
    let base64_only = match common::string(&m, "encoding")?.as_deref() {
        Some("auto") => false,
        Some("base64") => true,
        _ => return Err(ApiError::bad_request("encoding must be auto or base64")),
    };
    let truncate = match m.get("truncate") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_u64().map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    let (w, waiter) = waiter();
    let mut taken: Vec<QueuedMessage> = Vec::new();
    let mut out = Vec::new();
    while (taken.len() as u64) < count {
        let now = s.broker.clock.now();
        match q.get(false, now, &waiter) {
            Got::Message(msg, left) => {
                let st = &q.info().stats;
                st.get.inc();
                if msg.redelivered {
                    st.redeliver.inc();
                }
                out.push(message_json(&msg, left, base64_only, truncate));
                taken.push(msg);
            }
            Got::Empty => {
                if taken.is_empty() {
                    q.info().stats.get_empty.inc();
                }
                break;
            }
            Got::Wait => {
                if tokio::time::timeout(PAGER_WAIT, w.woken.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Got::Refused(e) => {
                q.requeue(taken, s.broker.clock.now());
                return Err(common::amqp(e));
            }
        }
    }
    let now = s.broker.clock.now();
    if !taken.is_empty() {
        match mode {
            AckMode::Requeue => q.requeue(taken, now),
            AckMode::Ack => {
                q.info().stats.ack.add(taken.len() as u64);
                q.settle(taken, Settle::Ack, now);
            }
            AckMode::Reject => q.settle(taken, Settle::Reject, now),
        }
    }
    Ok(Json(Value::Array(out)))
}
