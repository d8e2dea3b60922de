//! `/api/vhosts`, their permissions and topic permissions, and `/api/vhost-limits`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use warren_core::metadata::{Command, VhostLimits};
use warren_core::Broker;

use super::users::{permission_json, topic_permission_json};
use super::{body_object, created, require_vhost, require_vhost_access, sees_vhost};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::rates::{details, message_stats, Kind};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/vhosts", get(list))
        .route(
            "/api/vhosts/{vhost}",
            get(get_one).put(put_one).delete(delete_one),
        )
        .route("/api/vhosts/{vhost}/permissions", get(permissions))
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(topic_permissions),
        )
        .route("/api/vhost-limits", get(limits_all))
        .route("/api/vhost-limits/{vhost}", get(limits_one))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(put_limit).delete(delete_limit),
        )
}

fn vhost_json(s: &AppState, name: &str) -> Value {
    let b = &s.broker;
    let rates = s.rates.vhost(name);
    let r = rates.as_ref();
    let (mut ready, mut unacked) = (0u64, 0u64);
    if let Some(vh) = b.vhost(name) {
        for q in vh.queues() {
            ready += u64::from(q.message_count());
            unacked += q.unacked_count();
        }
    }
    let totals = b.vhost_message_totals(name).unwrap_or_default();
    json!({
        "name": name,
        "description": "",
        "tags": [],
        "metadata": { "description": "", "tags": [] },
        "default_queue_type": "classic",
        "tracing": false,
        "messages": ready + unacked,
        "messages_details": details(r, "messages"),
        "messages_ready": ready,
        "messages_ready_details": details(r, "messages_ready"),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": details(r, "messages_unacknowledged"),
        "message_stats": message_stats(&totals, r, Kind::Messages),
        "cluster_state": { super::conns::NODE: "running" },
    })
}

async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let b = &s.broker;
    let v: Vec<Value> = b
        .vhost_names()
        .iter()
        .filter(|n| sees_vhost(b, &caller, n))
        .map(|n| vhost_json(&s, n))
        .collect();
    super::listed(v, &q)
}

async fn get_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    require_vhost_access(&s.broker, &caller, &vhost)?;
    require_vhost(&s.broker, &vhost)?;
    Ok(Json(vhost_json(&s, &vhost)))
}

async fn put_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    body_object(&body)?;
    let new = s.broker.vhost(&vhost).is_none();
    s.broker
        .admin_as(Command::AddVhost { name: vhost }, &caller.user.def.name)
        .await?;
    Ok(created(new))
}

async fn delete_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    require_vhost(&s.broker, &vhost)?;
    s.broker
        .admin_as(Command::DeleteVhost { name: vhost }, &caller.user.def.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn permissions(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    require_vhost(&s.broker, &vhost)?;
    let v: Vec<Value> = super::users::all_permissions(&s.broker)
        .iter()
        .filter(|p| p.vhost == vhost)
        .map(permission_json)
        .collect();
    super::listed(v, &q)
}

async fn topic_permissions(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    require_vhost(&s.broker, &vhost)?;
    let v: Vec<Value> = super::users::all_topic_permissions(&s.broker)
        .iter()
        .filter(|p| p.vhost == vhost)
        .map(topic_permission_json)
        .collect();
    super::listed(v, &q)
}

fn limits_value(l: &VhostLimits) -> Option<Value> {
    let mut m = Map::new();
    if let Some(n) = l.max_connections {
        m.insert("max-connections".into(), json!(n));
    }
    if let Some(n) = l.max_queues {
        m.insert("max-queues".into(), json!(n));
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn limits_list(b: &Broker, caller: &Caller, only: Option<&str>) -> Value {
    let mut v = Vec::new();
    for name in b.vhost_names() {
        if only.is_some_and(|o| o != name) || !sees_vhost(b, caller, &name) {
            continue;
        }
        let Some(vh) = b.vhost(&name) else { continue };
        if let Some(value) = limits_value(&vh.limits()) {
            v.push(json!({ "vhost": name, "value": value }));
        }
    }
    Value::Array(v)
}

async fn limits_all(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    super::listed(limits_list(&s.broker, &caller, None), &q)
}

async fn limits_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    require_vhost_access(&s.broker, &caller, &vhost)?;
    require_vhost(&s.broker, &vhost)?;
    Ok(Json(limits_list(&s.broker, &caller, Some(&vhost))))
}

/// RabbitMQ's validation error for a limit.
fn validation(reason: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("Validation failed\n\n{}\n", reason.into()))
}

/// Sets (`Some`) or clears (`None`) limit `name` of `vhost`.
async fn set_limit(
    b: &std::sync::Arc<Broker>,
    vhost: &str,
    name: &str,
    v: Option<u64>,
) -> ApiResult<()> {
    let Some(vh) = b.vhost(vhost) else {
        return Err(ApiError::not_found());
    };
    let mut limits = vh.limits();
    match name {
        "max-connections" => limits.max_connections = v,
        "max-queues" => limits.max_queues = v,
        _ => {
            return Err(validation(format!(
                "Unrecognised terms [{{<<\"{name}\">>,...}}] in limits"
            )))
        }
    }
    b.admin(Command::SetVhostLimits {
        vhost: vhost.to_string(),
        limits,
    })
    .await?;
    Ok(())
}

async fn put_limit(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let m = body_object(&body)?;
    let value = match m.get("value") {
        None => return Err(ApiError::bad_request("value is mandatory")),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| validation(format!("{v} is not a valid value for {name}")))?,
    };
    // RabbitMQ: a negative limit means no limit.
    let value = u64::try_from(value).ok();
    set_limit(&s.broker, &vhost, &name, value).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_limit(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    set_limit(&s.broker, &vhost, &name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
