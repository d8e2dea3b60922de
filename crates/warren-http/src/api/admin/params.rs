//! `/api/policies`, `/api/operator-policies`, `/api/parameters` and `/api/global-parameters`:
//! stored as runtime definitions (`Command::PutRuntime` / `ClearRuntime`) in the JSON RabbitMQ
//! shows and exports; the features that use them read them from the broker.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::metadata::{Command, RuntimeDef};
use warren_core::Broker;

use super::{body_object, created, sees_vhost};
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
type ListQuery = Query<HashMap<String, String>>;

async fn list_policies(s: State<AppState>, c: Caller, q: ListQuery) -> ApiResult<Json<Value>> {
    list(s, c, POLICY, None, q).await
}
async fn vhost_policies(
    s: State<AppState>,
    c: Caller,
    Path(v): Path<String>,
    q: ListQuery,
) -> ApiResult<Json<Value>> {
    list(s, c, POLICY, Some(v), q).await
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
async fn list_op_policies(s: State<AppState>, c: Caller, q: ListQuery) -> ApiResult<Json<Value>> {
    list(s, c, OPERATOR_POLICY, None, q).await
}
async fn vhost_op_policies(
    s: State<AppState>,
    c: Caller,
    Path(v): Path<String>,
    q: ListQuery,
) -> ApiResult<Json<Value>> {
    list(s, c, OPERATOR_POLICY, Some(v), q).await
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
    Query(q): ListQuery,
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
    super::listed(v, &q)
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
    ApiError::bad_request(escape_html(&format!("Validation failed\n\n{reason}\n")))
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
    // The core validates the policy (`Policy::parse`, RabbitMQ's texts); here only the
    // defaults the HTTP API gives and what operator policies may apply to.
    let field = |k: &str| m.get(k).cloned();
    let apply_to = field("apply-to")
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| json!("all"));
    if kind == OPERATOR_POLICY {
        let allowed = ["queues", "classic_queues", "quorum_queues", "streams"];
        if !apply_to.as_str().is_some_and(|a| allowed.contains(&a)) {
            let shown = apply_to
                .as_str()
                .map_or_else(|| apply_to.to_string(), str::to_owned);
            return Err(validation(format!(
                "<<\"{shown}\">> is not a valid apply-to value"
            )));
        }
    }
    let mut value = serde_json::Map::new();
    value.insert("vhost".into(), json!(vhost));
    value.insert("name".into(), json!(name));
    for k in ["pattern", "definition"] {
        if let Some(v) = field(k) {
            value.insert(k.into(), v);
        }
    }
    value.insert("apply-to".into(), apply_to);
    value.insert(
        "priority".into(),
        field("priority")
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!(0)),
    );
    let value = Value::Object(value);
    let new = b.runtime(kind, &vhost, "", &name).is_none();
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
    .await
    .map_err(|e| match e.text.strip_prefix("PRECONDITION_FAILED - ") {
        // The core's `Validation failed ...`: RabbitMQ's 400 with the text HTML-escaped.
        Some(t) => ApiError::bad_request(escape_html(t)),
        None => ApiError::from(e),
    })?;
    Ok(created(new))
}

/// RabbitMQ HTML-escapes the reason of an error answer (`<<"x">>` is `&lt;&lt;"x"&gt;&gt;`).
fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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

async fn list_parameters(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, None)?;
    super::listed(parameters(&s.broker, &caller, None, None), &q)
}

async fn component_parameters(
    State(s): State<AppState>,
    caller: Caller,
    Path(component): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, None)?;
    super::listed(parameters(&s.broker, &caller, Some(&component), None), &q)
}

async fn vhost_parameters(
    State(s): State<AppState>,
    caller: Caller,
    Path((component, vhost)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    require_policymaker(&s.broker, &caller, Some(&vhost))?;
    super::require_vhost(&s.broker, &vhost)?;
    super::listed(
        parameters(&s.broker, &caller, Some(&component), Some(&vhost)),
        &q,
    )
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

async fn list_global(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let v: Vec<Value> = sorted(s.broker.runtimes(GLOBAL, None))
        .into_iter()
        .map(|r| r.value)
        .collect();
    super::listed(v, &q)
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
