//! `/api/connections`, `/api/channels`, `/api/consumers` and their per-vhost forms.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use warren_core::broker::{ChannelInfo, ConnInfo};
use warren_core::Broker;

use super::{require_vhost, require_vhost_access, sees_vhost, table_json};
use crate::api::query::{self, Item, Listing};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use serde::Serialize;

/// RabbitMQ's node name for this broker.
pub(crate) const NODE: &str = "warren@localhost";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/connections", get(list_connections))
        .route(
            "/api/connections/{name}",
            get(get_connection).delete(delete_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/channels", get(list_channels))
        .route("/api/channels/{name}", get(get_channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// Whether `caller` sees connection `c`: monitors see all, others their own user's.
fn sees_conn(caller: &Caller, c: &ConnInfo) -> bool {
    caller.is_monitor() || c.user == caller.user.def.name
}

fn visible(b: &Broker, caller: &Caller, vhost: Option<&str>) -> Vec<Arc<ConnInfo>> {
    let mut v: Vec<Arc<ConnInfo>> = b
        .connections()
        .into_iter()
        .filter(|c| sees_conn(caller, c) && vhost.is_none_or(|x| c.vhost == x))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn message_stats(t: &warren_core::stats::MessageTotals) -> Value {
    let mut m = Map::new();
    for (k, v) in t.fields() {
        m.insert(k.to_string(), json!(v));
    }
    m.insert("deliver_get".into(), json!(t.deliver_get()));
    Value::Object(m)
}

/// One connection as RabbitMQ shows it, serialised straight from the view.
#[derive(Serialize)]
struct ConnJson<'a> {
    name: &'a str,
    node: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    user: &'a str,
    user_who_performed_action: &'a str,
    vhost: &'a str,
    host: Option<String>,
    port: Option<u16>,
    peer_host: String,
    peer_port: u16,
    protocol: &'static str,
    auth_mechanism: &'a str,
    ssl: bool,
    ssl_protocol: (),
    ssl_key_exchange: (),
    ssl_cipher: (),
    ssl_hash: (),
    peer_cert_subject: (),
    peer_cert_issuer: (),
    peer_cert_validity: (),
    channels: usize,
    channel_max: u16,
    frame_max: u32,
    timeout: u16,
    client_properties: Value,
    recv_oct: u64,
    recv_cnt: u64,
    send_oct: u64,
    send_cnt: u64,
    send_pend: u64,
    state: &'static str,
    connected_at: u64,
}

impl<'a> ConnJson<'a> {
    fn of(c: &'a ConnInfo) -> Self {
        let state = if c.blocked.load(std::sync::atomic::Ordering::Relaxed) {
            "blocked"
        } else {
            "running"
        };
        Self {
            name: &c.name,
            node: NODE,
            kind: "network",
            user: &c.user,
            user_who_performed_action: &c.user,
            vhost: &c.vhost,
            host: c.local.map(|l| l.ip().to_string()),
            port: c.local.map(|l| l.port()),
            peer_host: c.peer.ip().to_string(),
            peer_port: c.peer.port(),
            protocol: "AMQP 0-9-1",
            auth_mechanism: &c.auth_mechanism,
            ssl: c.tls,
            ssl_protocol: (),
            ssl_key_exchange: (),
            ssl_cipher: (),
            ssl_hash: (),
            peer_cert_subject: (),
            peer_cert_issuer: (),
            peer_cert_validity: (),
            channels: c.channels().len(),
            channel_max: c.channel_max,
            frame_max: c.frame_max,
            timeout: c.heartbeat,
            client_properties: table_json(&c.client_properties),
            recv_oct: c.io.recv_oct.get(),
            recv_cnt: c.io.recv_cnt.get(),
            send_oct: c.io.send_oct.get(),
            send_cnt: c.io.send_cnt.get(),
            send_pend: 0,
            state,
            connected_at: c.connected_at,
        }
    }
}

impl Item for ConnJson<'_> {
    fn name(&self) -> Option<&str> {
        Some(self.name)
    }
    fn vhost(&self) -> Option<&str> {
        Some(self.vhost)
    }
}

/// The connections of `conns` as a list answer (on the blocking pool: 10,000 connections are
/// a big list).
async fn conn_list(conns: Vec<Arc<ConnInfo>>, q: HashMap<String, String>) -> ApiResult<Listing> {
    crate::api::common::off_loop(move || {
        query::list(conns.iter().map(|c| ConnJson::of(c)).collect(), &q)
    })
    .await
}

fn conn_details(c: &ConnInfo) -> Value {
    json!({
        "name": c.name,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
    })
}

fn channel_name(c: &ConnInfo, number: u16) -> String {
    format!("{} ({number})", c.name)
}

fn channel_json(c: &ConnInfo, ch: &ChannelInfo) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "name": channel_name(c, ch.number),
        "number": ch.number,
        "node": NODE,
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "connection_details": conn_details(c),
        "prefetch_count": ch.prefetch_count.load(Relaxed),
        "global_prefetch_count": ch.global_prefetch_count.load(Relaxed),
        "confirm": ch.confirm.load(Relaxed),
        "transactional": ch.transactional.load(Relaxed),
        "messages_unacknowledged": ch.messages_unacknowledged.load(Relaxed),
        "messages_unconfirmed": ch.messages_unconfirmed.load(Relaxed),
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "consumer_count": ch.consumer_count.load(Relaxed),
        "state": "running",
        "message_stats": message_stats(&ch.stats.totals()),
    })
}

fn find_conn(b: &Broker, caller: &Caller, name: &str) -> ApiResult<Arc<ConnInfo>> {
    let c = b
        .connections()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(ApiError::not_found)?;
    if !sees_conn(caller, &c) {
        return Err(ApiError::unauthorised(
            "User not authorised to access object",
        ));
    }
    Ok(c)
}

async fn list_connections(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    conn_list(visible(&s.broker, &caller, None), q).await
}

async fn vhost_connections(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    require_vhost_access(&s.broker, &caller, &vhost)?;
    require_vhost(&s.broker, &vhost)?;
    conn_list(visible(&s.broker, &caller, Some(&vhost)), q).await
}

async fn get_connection(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Listing> {
    let c = find_conn(&s.broker, &caller, &name)?;
    Listing::of(&ConnJson::of(&c))
}

/// RabbitMQ's default reason for a connection closed over HTTP.
const DEFAULT_REASON: &str = "Closed via management plugin";

async fn delete_connection(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let c = find_conn(&s.broker, &caller, &name)?;
    if !caller.is_admin() && c.user != caller.user.def.name {
        return Err(ApiError::unauthorised(
            "User not authorised to access object",
        ));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_REASON)
        .to_string();
    if s.broker.close_connection(&name, &reason) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

async fn connection_channels(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let c = find_conn(&s.broker, &caller, &name)?;
    let v: Vec<Value> = c.channels().iter().map(|ch| channel_json(&c, ch)).collect();
    super::listed(v, &q)
}

fn channels_of(conns: &[Arc<ConnInfo>]) -> Value {
    let mut v = Vec::new();
    for c in conns {
        for ch in c.channels() {
            v.push(channel_json(c, &ch));
        }
    }
    Value::Array(v)
}

async fn list_channels(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    super::listed(channels_of(&visible(&s.broker, &caller, None)), &q)
}

async fn vhost_channels(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    require_vhost_access(&s.broker, &caller, &vhost)?;
    require_vhost(&s.broker, &vhost)?;
    super::listed(channels_of(&visible(&s.broker, &caller, Some(&vhost))), &q)
}

async fn get_channel(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    for c in visible(&s.broker, &caller, None) {
        for ch in c.channels() {
            if channel_name(&c, ch.number) == name {
                return Ok(Json(channel_json(&c, &ch)));
            }
        }
    }
    Err(ApiError::not_found())
}

fn consumers_in(b: &Broker, caller: &Caller, vhosts: &[String]) -> Value {
    let conns = b.connections();
    let mut out = Vec::new();
    for name in vhosts {
        if !sees_vhost(b, caller, name) {
            continue;
        }
        let Some(vh) = b.vhost(name) else { continue };
        let mut queues = vh.queues();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        for q in queues {
            for c in q.consumers() {
                let conn = conns.iter().find(|x| x.id == c.conn_id);
                let channel_details = match conn {
                    Some(conn) => json!({
                        "name": channel_name(conn, c.channel),
                        "number": c.channel,
                        "connection_name": conn.name,
                        "peer_host": conn.peer.ip().to_string(),
                        "peer_port": conn.peer.port(),
                        "user": conn.user,
                        "node": NODE,
                    }),
                    None => json!({}),
                };
                out.push(json!({
                    "consumer_tag": &*c.tag,
                    "queue": { "name": &**q.name(), "vhost": name },
                    "channel_details": channel_details,
                    "ack_required": c.ack_required,
                    "prefetch_count": c.prefetch_count,
                    "exclusive": c.exclusive,
                    "arguments": table_json(&c.arguments),
                    "active": true,
                    "activity_status": "up",
                    "consumer_timeout": 1_800_000,
                }));
            }
        }
    }
    Value::Array(out)
}

async fn list_consumers(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    super::listed(
        consumers_in(&s.broker, &caller, &s.broker.vhost_names()),
        &q,
    )
}

async fn vhost_consumers(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    require_vhost_access(&s.broker, &caller, &vhost)?;
    require_vhost(&s.broker, &vhost)?;
    super::listed(consumers_in(&s.broker, &caller, &[vhost]), &q)
}
