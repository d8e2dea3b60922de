//! What the topology handlers share: vhost lookup with RabbitMQ's access rules, JSON bodies,
//! JSON <-> AMQP field tables, running a metadata command as the caller.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{Map, Value};
use warren_codec::proto::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use warren_core::auth::Access;
use warren_core::error::AmqpError;
use warren_core::metadata::Command;
use warren_core::vhost::{Applied, Origin, Pre, VHost};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The vhost `name`: 404 if it does not exist, 401 if the caller may not see it (monitors
/// and administrators see every vhost, other users those they have permissions in).
pub(crate) fn vhost(s: &AppState, caller: &Caller, name: &str) -> ApiResult<Arc<VHost>> {
    let vh = s.broker.vhost(name).ok_or_else(ApiError::not_found)?;
    if !caller.is_monitor() && s.broker.users.access(&caller.user.def.name, name).is_none() {
        return Err(ApiError::unauthorised(
            "User not authorised to access virtual host",
        ));
    }
    Ok(vh)
}

/// The vhosts whose objects a list shows the caller.
pub(crate) fn visible_vhosts(s: &AppState, caller: &Caller) -> Vec<String> {
    let mut names = s.broker.vhost_names();
    if !caller.is_monitor() {
        names.retain(|v| s.broker.users.access(&caller.user.def.name, v).is_some());
    }
    names.sort();
    names
}

/// The caller's permissions in `vhost`, for a change (as RabbitMQ, which changes objects over
/// an AMQP channel as the user, administrators need permissions too).
pub(crate) fn access(s: &AppState, caller: &Caller, vhost: &str) -> ApiResult<Arc<Access>> {
    s.broker
        .users
        .access(&caller.user.def.name, vhost)
        .ok_or_else(|| ApiError::unauthorised("User not authorised to access virtual host"))
}

/// A permission check's refusal as RabbitMQ's API answers it.
pub(crate) fn permit(r: Result<(), AmqpError>) -> ApiResult<()> {
    r.map_err(|e| ApiError::unauthorised(strip(&e.text)))
}

/// `NAME - explanation` -> `explanation` (RabbitMQ's API shows the explanation only).
fn strip(text: &str) -> String {
    match text.split_once(" - ") {
        Some((name, rest)) if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
            rest.to_string()
        }
        _ => text.to_string(),
    }
}

/// A refused command as RabbitMQ's API answers it: 404 `not_found` for a missing object, 401
/// for refused access, 400 `bad_request` otherwise, with the explanation as the reason.
pub(crate) fn amqp(e: AmqpError) -> ApiError {
    let reason = strip(&e.text);
    match e.code.code() {
        404 => ApiError::new(StatusCode::NOT_FOUND, "not_found", reason),
        403 => ApiError::unauthorised(reason),
        _ => ApiError::bad_request(reason),
    }
}

/// Runs `cmd` on behalf of the caller with delete preconditions `pre`.
pub(crate) async fn run(
    s: &AppState,
    caller: &Caller,
    cmd: Command,
    pre: Pre,
) -> ApiResult<Applied> {
    let origin = Origin {
        conn_id: None,
        user: Some(Arc::from(caller.user.def.name.as_str())),
        internal: false,
    };
    s.broker.execute(cmd, origin, pre).await.map_err(amqp)
}

/// A request body as a JSON object (empty: `{}`); anything else is RabbitMQ's `not_json`.
pub(crate) fn body(bytes: &Bytes) -> ApiResult<Map<String, Value>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

/// A boolean field of a body; RabbitMQ also takes the strings `"true"`/`"false"`.
pub(crate) fn flag(m: &Map<String, Value>, key: &str, default: bool) -> ApiResult<bool> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a boolean"))),
    }
}

/// A string field of a body.
pub(crate) fn string(m: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

/// The `arguments` field as an AMQP table (absent: empty).
pub(crate) fn arguments(m: &Map<String, Value>) -> ApiResult<FieldTable> {
    match m.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(Value::Object(o)) => checked_table(o, "arguments"),
        // RabbitMQ's forms send an empty list for no arguments.
        Some(Value::Array(a)) if a.is_empty() => Ok(FieldTable::default()),
        Some(_) => Err(ApiError::bad_request("arguments must be an object")),
    }
}

/// [`table`] of a request's `field`, refused (400) when a key is longer than an AMQP short
/// string can be.
pub(crate) fn checked_table(o: &Map<String, Value>, field: &str) -> ApiResult<FieldTable> {
    match warren_core::broker::definitions::overlong_key(o) {
        Some(k) => Err(ApiError::bad_request(format!(
            "{field}: key longer than 255 bytes ({} bytes)",
            k.len()
        ))),
        None => Ok(table(o)),
    }
}

/// A JSON object as an AMQP table, typed as RabbitMQ's management plugin types them. Keys
/// must be at most 255 bytes ([`checked_table`] for request bodies).
pub(crate) fn table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        t.insert(ShortString::from(k.as_str()), amqp_value(v));
    }
    t
}

fn amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => {
            let mut arr = FieldArray::default();
            for x in a {
                arr.push(amqp_value(x));
            }
            AMQPValue::FieldArray(arr)
        }
        Value::Object(o) => AMQPValue::FieldTable(table(o)),
    }
}

/// An AMQP field value as RabbitMQ's management API (and its definitions) show it: the one
/// AMQP-to-JSON conversion of the API.
pub(crate) fn value_json(v: &AMQPValue) -> Value {
    use serde_json::json;
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
        AMQPValue::DecimalValue(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::Void => Value::Null,
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

/// An exchange name in a path: `amq.default` is the default exchange (`""`).
pub(crate) fn exchange_name(path: &str) -> &str {
    if path == "amq.default" {
        ""
    } else {
        path
    }
}

/// A `true` query parameter (`if-unused=true`).
pub(crate) fn query_flag(q: &std::collections::HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true")
}

/// Runs `f` (building, sorting and writing out a whole list: ~4-8 ms per 1,000 queues) on the
/// management thread (`crate::background`: one thread at a lower CPU priority), so a big
/// listing never holds up the tokio workers that also serve AMQP connections.
pub(crate) async fn off_loop<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    crate::background::run(f).await.unwrap_or_else(|| {
        Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "listing failed".to_string(),
        ))
    })
}
