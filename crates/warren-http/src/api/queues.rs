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
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use warren_core::auth::Perm;
use warren_core::message::{amq_props, QueuedMessage};
use warren_core::metadata::{Command, QueueDef};
use warren_core::queue::stream::StreamStats;
use warren_core::queue::{Delivery, Got, QueueRef, Settle, Sink, Waiter};
use warren_core::vhost::{new_store_dir, Pre, VHost};

use crate::api::bindings;
use crate::api::common::{self, table_json};
use crate::api::query::{self, Listing};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::rates::{self, Details, Rates};
use crate::AppState;

/// The node name every object reports (one node).
pub(crate) const NODE: &str = "warren@localhost";

/// How long a get or purge waits for paged messages before giving up.
const PAGER_WAIT: Duration = Duration::from_secs(10);

/// How much of a queue a list shows (RabbitMQ's `disable_stats` and `enable_queue_totals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Everything, with statistics.
    Full,
    /// `disable_stats=true`: the queue's definition, state and node (and `policy` when one
    /// applies), as RabbitMQ's `rabbit_mgmt_format:queue/1`.
    Basic,
    /// `disable_stats=true&enable_queue_totals=true`: that with `policy` (`""` when none) and
    /// the three message counts, as RabbitMQ's `queue_info` with `totals`.
    Totals,
}

impl Detail {
    fn of(q: &HashMap<String, String>) -> Self {
        match (
            common::query_flag(q, "disable_stats"),
            common::query_flag(q, "enable_queue_totals"),
        ) {
            (false, _) => Detail::Full,
            (true, false) => Detail::Basic,
            (true, true) => Detail::Totals,
        }
    }
}

/// One queue as RabbitMQ shows it, serialised straight from the queue (the one place queue
/// JSON is made). Warren does not track unacknowledged bytes, idle time or consumer
/// utilisation over time: `message_bytes_unacknowledged` is 0, `idle_since` is left out,
/// `consumer_utilisation` is 1.0 while there are consumers (they are never blocked by the
/// queue) and 0 otherwise.
pub(crate) struct QueueJson<'a> {
    q: QueueRef,
    rates: Option<&'a Rates>,
    detail: Detail,
}

impl QueueJson<'_> {
    fn consumer_details(&self, stream: Option<&StreamStats>) -> Vec<Value> {
        self.q
            .consumers()
            .iter()
            .map(|c| {
                let mut v = json!({
                    "consumer_tag": &*c.tag,
                    "channel_details": {"number": c.channel, "connection_name": c.conn_id.to_string()},
                    "ack_required": c.ack_required,
                    "exclusive": c.exclusive,
                    "prefetch_count": c.prefetch_count,
                    "arguments": table_json(&c.arguments),
                    "active": true,
                    "activity_status": "up",
                });
                // A stream consumer's position, as RabbitMQ's stream plugin lists its
                // consumers: the next offset it will be sent, and how far behind the end.
                if let Some(st) = stream {
                    if let Some((_, at)) = st.consumers.iter().find(|(t, _)| **t == *c.tag) {
                        v["offset"] = json!(at);
                        v["offset_lag"] = json!(st.log.next_offset.saturating_sub(*at));
                    }
                }
                v
            })
            .collect()
    }
}

/// What a stream adds to its queue JSON: `members`, `online` and `readers` as RabbitMQ 3.10.8
/// shows them (one node), `leader` (not in 3.10.8's answer), and Warren's view of the log
/// (size, segments, offsets).
fn stream_entries<M: SerializeMap>(m: &mut M, st: &StreamStats) -> Result<(), M::Error> {
    m.serialize_entry("leader", NODE)?;
    m.serialize_entry("members", &[NODE])?;
    m.serialize_entry("online", &[NODE])?;
    m.serialize_entry("readers", &json!({ NODE: st.consumers.len() }))?;
    m.serialize_entry("segments", &st.log.segments)?;
    m.serialize_entry("stream_bytes", &st.log.bytes)?;
    m.serialize_entry("first_offset", &st.log.first_offset)?;
    // The last message's offset; null while the stream is empty.
    let last = (st.log.next_offset > st.log.first_offset).then(|| st.log.next_offset - 1);
    m.serialize_entry("last_offset", &last)?;
    Ok(())
}

impl Serialize for QueueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let q = &self.q;
        let info = q.info();
        let applied = q.policy();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &**q.name())?;
        m.serialize_entry("vhost", &*info.vhost)?;
        m.serialize_entry("durable", &info.options.durable)?;
        m.serialize_entry("auto_delete", &info.options.auto_delete)?;
        m.serialize_entry("exclusive", &info.options.exclusive_owner.is_some())?;
        m.serialize_entry("arguments", &table_json(&info.options.arguments))?;
        m.serialize_entry("type", info.args.kind.as_str())?;
        m.serialize_entry("state", "running")?;
        m.serialize_entry("node", NODE)?;
        let ready = u64::from(q.message_count());
        let unacked = q.unacked_count();
        match self.detail {
            Detail::Basic => {
                if let Some(p) = applied.policy.as_deref() {
                    m.serialize_entry("policy", p)?;
                }
                return m.end();
            }
            Detail::Totals => {
                m.serialize_entry("policy", applied.policy.as_deref().unwrap_or(""))?;
                m.serialize_entry("messages", &(ready + unacked))?;
                m.serialize_entry("messages_ready", &ready)?;
                m.serialize_entry("messages_unacknowledged", &unacked)?;
                return m.end();
            }
            Detail::Full => {}
        }
        let rates = self.rates;
        let ready_bytes = q.ready_bytes();
        let consumers = q.consumer_count();
        let utilisation = if consumers > 0 { 1.0 } else { 0.0 };
        m.serialize_entry("messages", &(ready + unacked))?;
        m.serialize_entry("messages_details", &Details::of(rates, "messages"))?;
        m.serialize_entry("messages_ready", &ready)?;
        m.serialize_entry(
            "messages_ready_details",
            &Details::of(rates, "messages_ready"),
        )?;
        m.serialize_entry("messages_unacknowledged", &unacked)?;
        m.serialize_entry(
            "messages_unacknowledged_details",
            &Details::of(rates, "messages_unacknowledged"),
        )?;
        m.serialize_entry("message_bytes", &ready_bytes)?;
        m.serialize_entry("message_bytes_ready", &ready_bytes)?;
        m.serialize_entry("message_bytes_unacknowledged", &0)?;
        // RabbitMQ's split of the backlog between memory and disk (classic queues page).
        let (paged, paged_bytes) = q.paged_out();
        m.serialize_entry("messages_paged_out", &paged)?;
        m.serialize_entry("message_bytes_paged_out", &paged_bytes)?;
        m.serialize_entry("messages_ram", &(ready + unacked).saturating_sub(paged))?;
        m.serialize_entry(
            "message_bytes_ram",
            &ready_bytes.saturating_sub(paged_bytes),
        )?;
        m.serialize_entry("consumers", &consumers)?;
        m.serialize_entry("consumer_utilisation", &utilisation)?;
        m.serialize_entry("consumer_capacity", &utilisation)?;
        let stream = q.stream_stats();
        if let Some(st) = &stream {
            stream_entries(&mut m, st)?;
        }
        if consumers > 0 {
            m.serialize_entry("consumer_details", &self.consumer_details(stream.as_ref()))?;
        } else {
            m.serialize_entry("consumer_details", &[(); 0])?;
        }
        m.serialize_entry("policy", &applied.policy.as_deref())?;
        m.serialize_entry("operator_policy", &applied.operator_policy.as_deref())?;
        m.serialize_entry("effective_policy_definition", &applied.definition)?;
        m.serialize_entry("exclusive_consumer_tag", &())?;
        m.serialize_entry("single_active_consumer_tag", &())?;
        m.serialize_entry("head_message_timestamp", &())?;
        let totals = info.stats.totals();
        let stats = rates::MessageStatsJson {
            totals: &totals,
            rates,
            kind: rates::Kind::Queue,
        };
        m.serialize_entry("message_stats", &stats)?;
        m.end()
    }
}

impl query::Item for QueueJson<'_> {
    fn name(&self) -> Option<&str> {
        Some(self.q.name())
    }
    fn vhost(&self) -> Option<&str> {
        Some(&self.q.info().vhost)
    }
}

/// The queues of `vhosts` (those the caller may see), as list items.
fn queues_of<'a>(
    s: &AppState,
    rates: &'a rates::Snapshot,
    vhosts: &[String],
    detail: Detail,
) -> Vec<QueueJson<'a>> {
    let mut items = Vec::new();
    for name in vhosts {
        if let Some(vh) = s.broker.vhost(name) {
            for q in vh.queues() {
                let r = rates.queue(name, q.name());
                items.push(QueueJson {
                    q,
                    rates: r,
                    detail,
                });
            }
        }
    }
    items
}

/// `GET /api/queues`: built, sorted and written out on the blocking pool.
pub async fn list_all(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let names = common::visible_vhosts(&s, &caller);
    common::off_loop(move || {
        let rates = s.rates.snapshot();
        query::list(queues_of(&s, &rates, &names, Detail::of(&q)), &q)
    })
    .await
}

/// `GET /api/queues/{vhost}`.
pub async fn list_vhost(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    common::vhost(&s, &caller, &vhost)?;
    common::off_loop(move || {
        let rates = s.rates.snapshot();
        query::list(queues_of(&s, &rates, &[vhost], Detail::of(&q)), &q)
    })
    .await
}

fn find(vh: &VHost, name: &str) -> ApiResult<QueueRef> {
    vh.queue(name).ok_or_else(ApiError::not_found)
}

/// `GET /api/queues/{vhost}/{name}` (`disable_stats` and `enable_queue_totals` as for lists).
pub async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    let rates = s.rates.snapshot();
    Listing::of(&QueueJson {
        q: find(&vh, &name)?,
        rates: rates.queue(&vhost, &name),
        detail: Detail::of(&q),
    })
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
) -> ApiResult<Listing> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    find(&vh, &name)?;
    let items = bindings::of_vhost(&vh, &vhost)
        .into_iter()
        .filter(|b| b.to_queue && *b.destination == *name)
        .collect();
    query::list(items, &q)
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
