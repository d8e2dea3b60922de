//! `/api/definitions` and `/api/definitions/{vhost}`: export in RabbitMQ's format (what
//! `rabbitmqctl export_definitions` writes; it re-imports into Warren and RabbitMQ) and import
//! through the broker's definitions importer. Administrator only.
//!
//! The export takes users, permissions, vhosts, vhost limits, parameters and policies from
//! `Broker::snapshot()`, and the topology from the vhosts' read-only views: durable exchanges
//! (not the default exchange nor `amq.*`), durable non-exclusive queues, and bindings between
//! durable ends, as RabbitMQ exports them.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use warren_core::metadata::Command;
use warren_core::Broker;

use crate::api::common::table_json;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

fn is_builtin_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// The export, whole (`vhost: None`) or of one vhost.
fn export(b: &Broker, only: Option<&str>) -> Value {
    let version = &b.config.amqp.product_version;
    let mine = |v: &str| only.is_none_or(|o| o == v);
    let (mut users, mut vhosts, mut perms, mut topics) = (vec![], vec![], vec![], vec![]);
    let (mut params, mut globals, mut policies) = (vec![], vec![], vec![]);
    let (mut queues, mut exchanges, mut bindings) = (vec![], vec![], vec![]);
    for cmd in b.snapshot() {
        match cmd {
            Command::AddVhost { name } => vhosts.push(json!({
                "name": name,
                "limits": [],
                "metadata": { "description": "", "tags": [] },
            })),
            Command::SetVhostLimits { vhost, limits } if mine(&vhost) => {
                let mut value = Map::new();
                if let Some(n) = limits.max_connections {
                    value.insert("max-connections".into(), json!(n));
                }
                if let Some(n) = limits.max_queues {
                    value.insert("max-queues".into(), json!(n));
                }
                params.push(json!({
                    "vhost": vhost,
                    "component": "vhost-limits",
                    "name": "limits",
                    "value": value,
                }));
            }
            Command::PutUser(u) => {
                let mut limits = Map::new();
                if let Some(n) = u.max_connections {
                    limits.insert("max-connections".into(), json!(n));
                }
                if let Some(n) = u.max_channels {
                    limits.insert("max-channels".into(), json!(n));
                }
                users.push(json!({
                    "name": u.name,
                    "password_hash": u.password_hash,
                    "hashing_algorithm": u.hashing_algorithm,
                    "tags": u.tags,
                    "limits": limits,
                }));
            }
            Command::SetPermissions(p) => perms.push(json!({
                "user": p.user,
                "vhost": p.vhost,
                "configure": p.configure,
                "write": p.write,
                "read": p.read,
            })),
            Command::SetTopicPermissions(t) => topics.push(json!({
                "user": t.user,
                "vhost": t.vhost,
                "exchange": t.exchange,
                "write": t.write,
                "read": t.read,
            })),
            Command::PutRuntime(r) => match r.kind.as_str() {
                "parameter" if mine(&r.vhost) => params.push(r.value),
                "global_parameter" => globals.push(r.value),
                "policy" if mine(&r.vhost) => policies.push(r.value),
                _ => {}
            },
            _ => {}
        }
    }
    for name in b.vhost_names() {
        if !mine(&name) {
            continue;
        }
        let Some(vh) = b.vhost(&name) else { continue };
        let mut durable_queues = std::collections::HashSet::new();
        for q in vh.queues() {
            let i = q.info();
            if !i.options.durable || i.options.exclusive_owner.is_some() {
                continue;
            }
            durable_queues.insert(i.name.clone());
            queues.push(json!({
                "name": &*i.name,
                "vhost": name,
                "durable": true,
                "auto_delete": i.options.auto_delete,
                "arguments": table_json(&i.options.arguments),
            }));
        }
        let mut durable_exchanges = std::collections::HashSet::new();
        for x in vh.exchanges() {
            if !x.durable {
                continue;
            }
            durable_exchanges.insert(x.name.clone());
            if is_builtin_exchange(&x.name) {
                continue;
            }
            exchanges.push(json!({
                "name": &*x.name,
                "vhost": name,
                "type": x.kind,
                "durable": true,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": table_json(&x.arguments),
            }));
        }
        for bd in vh.bindings() {
            let dest_durable = if bd.to_queue {
                durable_queues.contains(&bd.destination)
            } else {
                durable_exchanges.contains(&bd.destination)
            };
            if bd.source.is_empty() || !durable_exchanges.contains(&bd.source) || !dest_durable {
                continue;
            }
            bindings.push(json!({
                "source": &*bd.source,
                "vhost": name,
                "destination": &*bd.destination,
                "destination_type": if bd.to_queue { "queue" } else { "exchange" },
                "routing_key": bd.routing_key,
                "arguments": table_json(&bd.arguments),
            }));
        }
    }
    let mut out = json!({
        "rabbit_version": version,
        "rabbitmq_version": version,
        "product_name": b.config.amqp.product,
        "product_version": version,
    });
    let Some(o) = out.as_object_mut() else {
        return out;
    };
    if only.is_none() {
        o.insert("users".into(), Value::Array(users));
        o.insert("vhosts".into(), Value::Array(vhosts));
        o.insert("permissions".into(), Value::Array(perms));
        o.insert("topic_permissions".into(), Value::Array(topics));
    }
    o.insert("parameters".into(), Value::Array(params));
    if only.is_none() {
        o.insert("global_parameters".into(), Value::Array(globals));
    }
    o.insert("policies".into(), Value::Array(policies));
    o.insert("queues".into(), Value::Array(queues));
    o.insert("exchanges".into(), Value::Array(exchanges));
    o.insert("bindings".into(), Value::Array(bindings));
    out
}

/// `GET /api/definitions`.
async fn export_all(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let b = s.broker.clone();
    let v = tokio::task::spawn_blocking(move || export(&b, None))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "export failed",
            )
        })?;
    Ok(Json(v))
}

/// `GET /api/definitions/{vhost}`.
async fn export_vhost(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    if s.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    let b = s.broker.clone();
    let v = tokio::task::spawn_blocking(move || export(&b, Some(&vhost)))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "export failed",
            )
        })?;
    Ok(Json(v))
}

async fn import(b: &std::sync::Arc<Broker>, text: &str) -> ApiResult<StatusCode> {
    let defs = warren_core::broker::definitions::parse(text).map_err(ApiError::bad_request)?;
    b.import_definitions(defs)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

fn body_text(body: &Bytes) -> ApiResult<&str> {
    std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))
}

/// `POST /api/definitions`: imports a definitions file (204; 400 with the place at fault).
async fn import_all(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    import(&s.broker, body_text(&body)?).await
}

/// `POST /api/definitions/{vhost}`: imports a vhost's definitions into `vhost` (each entry's
/// own `vhost` is replaced, as RabbitMQ does); users, vhosts and permissions are ignored.
async fn import_vhost(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if s.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    let mut root: Value = serde_json::from_str(body_text(&body)?).map_err(|e| {
        ApiError::bad_request(format!("line {} column {}: {e}", e.line(), e.column()))
    })?;
    let Some(o) = root.as_object_mut() else {
        return Err(ApiError::bad_request("the top level must be an object"));
    };
    for k in [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "global_parameters",
    ] {
        o.remove(k);
    }
    for k in ["parameters", "policies", "queues", "exchanges", "bindings"] {
        if let Some(Value::Array(items)) = o.get_mut(k) {
            for item in items {
                if let Some(i) = item.as_object_mut() {
                    i.insert("vhost".into(), json!(vhost));
                }
            }
        }
    }
    import(&s.broker, &root.to_string()).await
}
