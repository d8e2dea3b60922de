//! The admin half of the management API: connections, channels, consumers, vhosts, users,
//! permissions, limits, policies and parameters (RabbitMQ 3.10's paths, JSON and codes).
//!
//! Reads go through the core's views; every change is one `Broker::admin(Command)`.

mod conns;
mod params;
mod users;
mod vhosts;

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::{Json, Router};
use serde_json::{Map, Value};
use warren_core::Broker;

pub(crate) use crate::api::common::table_json;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// Every admin route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(conns::routes())
        .merge(vhosts::routes())
        .merge(users::routes())
        .merge(params::routes())
}

/// Whether `caller` sees objects of `vhost`: monitors see all, others their permitted vhosts.
pub(crate) fn sees_vhost(b: &Broker, caller: &Caller, vhost: &str) -> bool {
    caller.is_monitor() || b.users.access(&caller.user.def.name, vhost).is_some()
}

/// RabbitMQ's 401 for a vhost the caller has no access to.
pub(crate) fn require_vhost_access(
    b: &Broker,
    caller: &Caller,
    vhost: &str,
) -> Result<(), ApiError> {
    if sees_vhost(b, caller, vhost) {
        Ok(())
    } else {
        Err(ApiError::unauthorised(
            "User not authorised to access virtual host",
        ))
    }
}

/// 404 unless `vhost` exists.
pub(crate) fn require_vhost(b: &Broker, vhost: &str) -> Result<(), ApiError> {
    if b.vhost(vhost).is_some() {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// A request body as a JSON object (an empty body is `{}`); RabbitMQ's 400 otherwise.
pub(crate) fn body_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("Not a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("Invalid JSON: {e}"))),
    }
}

/// A string field of a body (absent: `None`; not a string: 400).
pub(crate) fn str_field(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

/// A list answer with RabbitMQ's list query parameters (`page`, `sort`, `name`, `columns`, ...)
/// applied, as RabbitMQ does for every list.
pub(crate) fn listed(
    items: impl Into<Value>,
    q: &HashMap<String, String>,
) -> Result<Json<Value>, ApiError> {
    match items.into() {
        Value::Array(v) => crate::api::query::apply(v, q).map(Json),
        other => Ok(Json(other)),
    }
}

/// 201 for a created object, 204 for a changed one.
pub(crate) fn created(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}
