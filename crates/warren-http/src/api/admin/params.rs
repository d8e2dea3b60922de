//! `/api/policies`, `/api/operator-policies`, `/api/parameters` and `/api/global-parameters`:
//! stored as runtime definitions (`Command::PutRuntime` / `ClearRuntime`) in the JSON RabbitMQ
//! shows and exports; the features that use them read them from the broker.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::metadata::{Command, RuntimeDef};
use warren_core::Broker;

use super::{body_object, created, sees_vhost, str_field};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

const POLICY: &str = "policy";
const OPERATOR_POLICY: &str = "operator_policy";
const PARAMETER: &str = "parameter";
const GLOBAL: &str = "global_parameter";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/policies", get(list_policies))
        .route("/api/policies/{vhost}", get(vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(get_pol).put(put_pol).delete(delete_pol),
        )
        .route("/api/operator-policies", get(list_op_policies))
        .route("/api/operator-policies/{vhost}", get(vhost_op_policies))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(get_op).put(put_op).delete(delete_op),
        )
        .route("/api/parameters", get(list_parameters))
        .route("/api/parameters/{component}", get(component_parameters))
        .route("/api/parameters/{component}/{vhost}", get(vhost_parameters))
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(get_parameter)
                .put(put_parameter)
                .delete(delete_parameter),
        )
        .route("/api/global-parameters", get(list_global))
        .route(
            "/api/global-parameters/{name}",
            get(get_global).put(put_global).delete(delete_global),
        )
}

type VhostName = Path<(String, String)>;

async fn list_policies(s: State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    list(s, c, POLICY, None).await
}
async fn vhost_policies(
    s: State<AppState>,
    c: Caller,
    Path(v): Path<String>,
) -> ApiResult<Json<Value>> {
    list(s, c, POLICY, Some(v)).await
}
async fn get_pol(s: State<AppState>, c: Caller, p: VhostName) -> ApiResult<Json<Value>> {
    get_policy(s, c, p, POLICY).await
}
async fn put_pol(s: State<AppState>, c: Caller, p: VhostName, b: Bytes) -> ApiResult<StatusCode> {
    put_policy(s, c, p, b, POLICY).await
}
async fn delete_pol(s: State<AppState>, c: Caller, p: VhostName) -> ApiResult<StatusCode> {
    delete_policy(s, c, p, POLICY).await
}
async fn list_op_policies(s: State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    list(s, c, OPERATOR_POLICY, None).await
}
async fn vhost_op_policies(
    s: State<AppState>,
    c: Caller,
    Path(v): Path<String>,
) -> ApiResult<Json<Value>> {
    list(s, c, OPERATOR_POLICY, Some(v)).await
}
async fn get_op(s: State<AppState>, c: Caller, p: VhostName) -> ApiResult<Json<Value>> {
    get_policy(s, c, p, OPERATOR_POLICY).await
}
async fn put_op(s: State<AppState>, c: Caller, p: VhostName, b: Bytes) -> ApiResult<StatusCode> {
    put_policy(s, c, p, b, OPERATOR_POLICY).await
}
async fn delete_op(s: State<AppState>, c: Caller, p: VhostName) -> ApiResult<StatusCode> {
    delete_policy(s, c, p, OPERATOR_POLICY).await
}

/// RabbitMQ's 401 for policies and parameters.
fn not_authorised() -> ApiError {
    ApiError::unauthorised("User not authorised to access object")
}

/// Policymakers (and administrators) manage policies and parameters in the vhosts they have
/// permissions in.
fn require_policymaker(b: &Broker, caller: &Caller, vhost: Option<&str>) -> ApiResult<()> {
    if caller.is_admin() {
        return Ok(());
    }
    if !caller.is_policymaker() {
        return Err(not_authorised());
    }
    match vhost {
        Some(v) if b.users.access(&caller.user.def.name, v).is_none() => Err(not_authorised()),
        _ => Ok(()),
    }
}

fn sorted(mut v: Vec<RuntimeDef>) -> Vec<RuntimeDef> {
    v.sort_by(|a, b| (&a.vhost, &a.component, &a.name).cmp(&(&b.vhost, &b.component, &b.name)));
    v
}

async fn list(
    State(s): State<AppState>,
    caller: Caller,
    kind: &'static str,
    vhost: Option<String>,
) -> ApiResult<Json<Value>> {
    let b = &s.broker;
    require_policymaker(b, &caller, vhost.as_deref())?;
    if let Some(v) = &vhost {
        super::require_vhost(b, v)?;
    }
    let v: Vec<Value> = sorted(b.runtimes(kind, vhost.as_deref()))
        .into_iter()
        .filter(|r| sees_vhost(b, &caller, &r.vhost))
        .map(|r| r.value)
        .collect();
    Ok(Json(Value::Array(v)))
}

async fn get_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    kind: &'static str,
) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, Some(&vhost))?;
    s.broker
        .runtime(kind, &vhost, "", &name)
        .map(|r| Json(r.value))
        .ok_or_else(ApiError::not_found)
}

/// RabbitMQ's validation error.
fn validation(reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Validation failed\n\n{reason}\n"))
}

async fn put_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
    kind: &'static str,
) -> ApiResult<StatusCode> {
    let b = &s.broker;
    require_policymaker(b, &caller, Some(&vhost))?;
    super::require_vhost(b, &vhost)?;
    let m = body_object(&body)?;
    let pattern = str_field(&m, "pattern")?.ok_or_else(|| validation("pattern not set"))?;
    if let Err(e) = regex_lite_check(&pattern) {
        return Err(validation(format!(
            "<<\"{pattern}\">> is not a valid regular expression: {e}"
        )));
    }
    let definition = match m.get("definition") {
        Some(Value::Object(d)) => Value::Object(d.clone()),
        Some(_) => return Err(validation("definition must be a dictionary")),
        None => return Err(validation("definition not set")),
    };
    let priority = match m.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| validation(format!("priority should be a number, actually was {v}")))?,
    };
    let apply_to = str_field(&m, "apply-to")?.unwrap_or_else(|| "all".to_string());
    let allowed: &[&str] = if kind == POLICY {
        &[
            "all",
            "exchanges",
            "queues",
            "classic_queues",
            "quorum_queues",
            "streams",
        ]
    } else {
        &["queues", "classic_queues", "quorum_queues", "streams"]
    };
    if !allowed.contains(&apply_to.as_str()) {
        return Err(validation(format!(
            "<<\"{apply_to}\">> is not a valid apply-to value"
        )));
    }
    let new = b.runtime(kind, &vhost, "", &name).is_none();
    let value = json!({
        "vhost": vhost,
        "name": name,
        "pattern": pattern,
        "apply-to": apply_to,
        "definition": definition,
        "priority": priority,
    });
    b.admin_as(
        Command::PutRuntime(RuntimeDef {
            kind: kind.to_string(),
            vhost,
            component: String::new(),
            name,
            value,
        }),
        &caller.user.def.name,
    )
    .await?;
    Ok(created(new))
}

/// Whether `pattern` compiles (RabbitMQ validates the pattern as a regex).
fn regex_lite_check(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn delete_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    kind: &'static str,
) -> ApiResult<StatusCode> {
    require_policymaker(&s.broker, &caller, Some(&vhost))?;
    if s.broker.runtime(kind, &vhost, "", &name).is_none() {
        return Err(ApiError::not_found());
    }
    s.broker
        .admin_as(
            Command::ClearRuntime {
                kind: kind.to_string(),
                vhost,
                component: String::new(),
                name,
            },
            &caller.user.def.name,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parameters(b: &Broker, caller: &Caller, component: Option<&str>, vhost: Option<&str>) -> Value {
    let v: Vec<Value> = sorted(b.runtimes(PARAMETER, vhost))
        .into_iter()
        .filter(|r| component.is_none_or(|c| c == r.component))
        .filter(|r| sees_vhost(b, caller, &r.vhost))
        .map(|r| r.value)
        .collect();
    Value::Array(v)
}

async fn list_parameters(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, None)?;
    Ok(Json(parameters(&s.broker, &caller, None, None)))
}

async fn component_parameters(
    State(s): State<AppState>,
    caller: Caller,
    Path(component): Path<String>,
) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, None)?;
    Ok(Json(parameters(&s.broker, &caller, Some(&component), None)))
}

async fn vhost_parameters(
    State(s): State<AppState>,
    caller: Caller,
    Path((component, vhost)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, Some(&vhost))?;
    super::require_vhost(&s.broker, &vhost)?;
    Ok(Json(parameters(
        &s.broker,
        &caller,
        Some(&component),
        Some(&vhost),
    )))
}

async fn get_parameter(
    State(s): State<AppState>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, Some(&vhost))?;
    s.broker
        .runtime(PARAMETER, &vhost, &component, &name)
        .map(|r| Json(r.value))
        .ok_or_else(ApiError::not_found)
}

async fn put_parameter(
    State(s): State<AppState>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let b = &s.broker;
    require_policymaker(b, &caller, Some(&vhost))?;
    super::require_vhost(b, &vhost)?;
    let m = body_object(&body)?;
    let Some(value) = m.get("value").cloned() else {
        return Err(validation("value not set"));
    };
    let new = b.runtime(PARAMETER, &vhost, &component, &name).is_none();
    let stored = json!({
        "vhost": vhost,
        "component": component,
        "name": name,
        "value": value,
    });
    b.admin_as(
        Command::PutRuntime(RuntimeDef {
            kind: PARAMETER.to_string(),
            vhost,
            component,
            name,
            value: stored,
        }),
        &caller.user.def.name,
    )
    .await?;
    Ok(created(new))
}

async fn delete_parameter(
    State(s): State<AppState>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    require_policymaker(&s.broker, &caller, Some(&vhost))?;
    if s.broker
        .runtime(PARAMETER, &vhost, &component, &name)
        .is_none()
    {
        return Err(ApiError::not_found());
    }
    s.broker
        .admin_as(
            Command::ClearRuntime {
                kind: PARAMETER.to_string(),
                vhost,
                component,
                name,
            },
            &caller.user.def.name,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_global(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let v: Vec<Value> = sorted(s.broker.runtimes(GLOBAL, None))
        .into_iter()
        .map(|r| r.value)
        .collect();
    Ok(Json(Value::Array(v)))
}

async fn get_global(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    s.broker
        .runtime(GLOBAL, "", "", &name)
        .map(|r| Json(r.value))
        .ok_or_else(ApiError::not_found)
}

async fn put_global(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let m = body_object(&body)?;
    let Some(value) = m.get("value").cloned() else {
        return Err(validation("value not set"));
    };
    let new = s.broker.runtime(GLOBAL, "", "", &name).is_none();
    let stored = json!({ "name": name, "value": value });
    s.broker
        .admin_as(
            Command::PutRuntime(RuntimeDef {
                kind: GLOBAL.to_string(),
                vhost: String::new(),
                component: String::new(),
                name,
                value: stored,
            }),
            &caller.user.def.name,
        )
        .await?;
    Ok(created(new))
}

async fn delete_global(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if s.broker.runtime(GLOBAL, "", "", &name).is_none() {
        return Err(ApiError::not_found());
    }
    s.broker
        .admin_as(
            Command::ClearRuntime {
                kind: GLOBAL.to_string(),
                vhost: String::new(),
                component: String::new(),
                name,
            },
            &caller.user.def.name,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
