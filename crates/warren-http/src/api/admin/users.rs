//! `/api/users`, `/api/user-limits`, `/api/permissions` and `/api/topic-permissions`
//! (administrator only, as in RabbitMQ).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use warren_core::auth::password;
use warren_core::metadata::{Command, PermissionDef, TopicPermissionDef, UserDef};
use warren_core::Broker;

use super::{body_object, created, str_field};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// RabbitMQ's default hashing algorithm.
const DEFAULT_ALGORITHM: &str = "rabbit_password_hashing_sha256";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list_users))
        .route("/api/users/bulk-delete", post(bulk_delete))
        .route("/api/users/without-permissions", get(without_permissions))
        .route(
            "/api/users/{user}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route(
            "/api/users/{user}/topic-permissions",
            get(user_topic_permissions),
        )
        .route("/api/user-limits", get(limits_all))
        .route("/api/user-limits/{user}", get(limits_one))
        .route(
            "/api/user-limits/{user}/{name}",
            put(put_limit).delete(delete_limit),
        )
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(get_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/topic-permissions", get(list_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(get_topic_permission)
                .put(put_topic_permission)
                .delete(delete_topic_permission),
        )
}

/// Every user, by name.
fn all_users(b: &Broker) -> Vec<UserDef> {
    let mut v: Vec<UserDef> = b
        .users
        .snapshot()
        .into_iter()
        .filter_map(|c| match c {
            Command::PutUser(u) => Some(u),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Every permission, by (vhost, user).
pub(super) fn all_permissions(b: &Broker) -> Vec<PermissionDef> {
    let mut v: Vec<PermissionDef> = b
        .users
        .snapshot()
        .into_iter()
        .filter_map(|c| match c {
            Command::SetPermissions(p) => Some(p),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
    v
}

/// Every topic permission, by (vhost, user, exchange).
pub(super) fn all_topic_permissions(b: &Broker) -> Vec<TopicPermissionDef> {
    let mut v: Vec<TopicPermissionDef> = b
        .users
        .snapshot()
        .into_iter()
        .filter_map(|c| match c {
            Command::SetTopicPermissions(p) => Some(p),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| (&a.vhost, &a.user, &a.exchange).cmp(&(&b.vhost, &b.user, &b.exchange)));
    v
}

fn limits_value(u: &UserDef) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(n) = u.max_connections {
        m.insert("max-connections".into(), json!(n));
    }
    if let Some(n) = u.max_channels {
        m.insert("max-channels".into(), json!(n));
    }
    m
}

fn user_json(u: &UserDef) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": limits_value(u),
    })
}

pub(super) fn permission_json(p: &PermissionDef) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

pub(super) fn topic_permission_json(p: &TopicPermissionDef) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "exchange": p.exchange,
        "write": p.write,
        "read": p.read,
    })
}

fn find_user(b: &Broker, name: &str) -> ApiResult<UserDef> {
    b.users
        .user(name)
        .map(|u| u.def.clone())
        .ok_or_else(ApiError::not_found)
}

async fn list_users(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let v: Vec<Value> = all_users(&s.broker).iter().map(user_json).collect();
    super::listed(v, &q)
}

async fn without_permissions(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let perms = all_permissions(&s.broker);
    let v: Vec<Value> = all_users(&s.broker)
        .iter()
        .filter(|u| !perms.iter().any(|p| p.user == u.name))
        .map(user_json)
        .collect();
    super::listed(v, &q)
}

async fn get_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(user_json(&find_user(&s.broker, &user)?)))
}

/// `tags` as RabbitMQ takes it: a comma-separated string or a list of strings.
fn parse_tags(v: Option<&Value>) -> ApiResult<Vec<String>> {
    let tags: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split(',').map(|t| t.trim().to_string()).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => return Err(ApiError::bad_request("tags must be a string or a list")),
    };
    Ok(tags.into_iter().filter(|t| !t.is_empty()).collect())
}

async fn put_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let m = body_object(&body)?;
    let tags = parse_tags(m.get("tags"))?;
    let pass = str_field(&m, "password")?;
    let hash = str_field(&m, "password_hash")?;
    let algorithm =
        str_field(&m, "hashing_algorithm")?.unwrap_or_else(|| DEFAULT_ALGORITHM.to_string());
    let (password_hash, hashing_algorithm) = match (pass, hash) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "both_password_and_password_hash_are_provided",
            ))
        }
        (Some(p), None) => (password::hash(&p), DEFAULT_ALGORITHM.to_string()),
        (None, Some(h)) => {
            if !password::known_algorithm(&algorithm) {
                return Err(ApiError::bad_request(format!(
                    "unknown hashing algorithm '{algorithm}'"
                )));
            }
            (h, algorithm)
        }
        (None, None) => (String::new(), DEFAULT_ALGORITHM.to_string()),
    };
    let old = s.broker.users.user(&user);
    let def = UserDef {
        name: user,
        password_hash,
        hashing_algorithm,
        tags,
        max_connections: old.as_ref().and_then(|u| u.def.max_connections),
        max_channels: old.as_ref().and_then(|u| u.def.max_channels),
    };
    s.broker
        .admin_as(Command::PutUser(def), &caller.user.def.name)
        .await?;
    Ok(created(old.is_none()))
}

async fn delete_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    find_user(&s.broker, &user)?;
    s.broker
        .admin_as(Command::DeleteUser { name: user }, &caller.user.def.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bulk_delete(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let m = body_object(&body)?;
    let Some(Value::Array(names)) = m.get("users") else {
        return Err(ApiError::bad_request("users must be a list of user names"));
    };
    let names: Vec<String> = names
        .iter()
        .map(|n| {
            n.as_str()
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request("users must be a list of user names"))
        })
        .collect::<ApiResult<_>>()?;
    for name in names {
        if s.broker.users.user(&name).is_some() {
            s.broker
                .admin_as(Command::DeleteUser { name }, &caller.user.def.name)
                .await?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn user_permissions(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    find_user(&s.broker, &user)?;
    let v: Vec<Value> = all_permissions(&s.broker)
        .iter()
        .filter(|p| p.user == user)
        .map(permission_json)
        .collect();
    super::listed(v, &q)
}

async fn user_topic_permissions(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    find_user(&s.broker, &user)?;
    let v: Vec<Value> = all_topic_permissions(&s.broker)
        .iter()
        .filter(|p| p.user == user)
        .map(topic_permission_json)
        .collect();
    super::listed(v, &q)
}

fn user_limits_list(b: &Broker, only: Option<&str>) -> Value {
    let v: Vec<Value> = all_users(b)
        .iter()
        .filter(|u| only.is_none_or(|o| o == u.name))
        .filter_map(|u| {
            let l = limits_value(u);
            (!l.is_empty()).then(|| json!({ "user": u.name, "value": l }))
        })
        .collect();
    Value::Array(v)
}

async fn limits_all(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    super::listed(user_limits_list(&s.broker, None), &q)
}

async fn limits_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    find_user(&s.broker, &user)?;
    Ok(Json(user_limits_list(&s.broker, Some(&user))))
}

async fn set_user_limit(
    b: &Arc<Broker>,
    user: &str,
    name: &str,
    value: Option<u64>,
) -> ApiResult<()> {
    let mut def = find_user(b, user)?;
    match name {
        "max-connections" => def.max_connections = value,
        "max-channels" => def.max_channels = value,
        _ => {
            return Err(ApiError::bad_request(format!(
                "Validation failed\n\nUnrecognised terms [{{<<\"{name}\">>,...}}] in limits\n"
            )))
        }
    }
    b.admin(Command::PutUser(def)).await?;
    Ok(())
}

async fn put_limit(
    State(s): State<AppState>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let m = body_object(&body)?;
    let value = match m.get("value") {
        None => return Err(ApiError::bad_request("value is mandatory")),
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("Validation failed\n\n{v} is not a valid value\n"))
        })?,
    };
    set_user_limit(&s.broker, &user, &name, u64::try_from(value).ok()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_limit(
    State(s): State<AppState>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    set_user_limit(&s.broker, &user, &name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_permissions(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let v: Vec<Value> = all_permissions(&s.broker)
        .iter()
        .map(permission_json)
        .collect();
    super::listed(v, &q)
}

/// 404 unless both the vhost and the user exist (RabbitMQ's reasons).
fn require_vhost_and_user(b: &Broker, vhost: &str, user: &str) -> ApiResult<()> {
    if b.vhost(vhost).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Object Not Found",
            "vhost_not_found",
        ));
    }
    if b.users.user(user).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Object Not Found",
            "user_not_found",
        ));
    }
    Ok(())
}

async fn get_permission(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    all_permissions(&s.broker)
        .iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .map(|p| Json(permission_json(p)))
        .ok_or_else(ApiError::not_found)
}

/// A mandatory string field (RabbitMQ: 400 `key_missing`).
fn required(m: &Map<String, Value>, key: &str) -> ApiResult<String> {
    str_field(m, key)?.ok_or_else(|| ApiError::bad_request(format!("[{key}] key_missing")))
}

async fn put_permission(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let m = body_object(&body)?;
    let def = PermissionDef {
        configure: required(&m, "configure")?,
        write: required(&m, "write")?,
        read: required(&m, "read")?,
        user,
        vhost,
    };
    require_vhost_and_user(&s.broker, &def.vhost, &def.user)?;
    let new = s.broker.users.access(&def.user, &def.vhost).is_none();
    s.broker
        .admin_as(Command::SetPermissions(def), &caller.user.def.name)
        .await?;
    Ok(created(new))
}

async fn delete_permission(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if s.broker.users.access(&user, &vhost).is_none() {
        return Err(ApiError::not_found());
    }
    s.broker
        .admin_as(
            Command::ClearPermissions { user, vhost },
            &caller.user.def.name,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_topic_permissions(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let v: Vec<Value> = all_topic_permissions(&s.broker)
        .iter()
        .map(topic_permission_json)
        .collect();
    super::listed(v, &q)
}

fn topic_permissions_of(b: &Broker, vhost: &str, user: &str) -> Vec<TopicPermissionDef> {
    all_topic_permissions(b)
        .into_iter()
        .filter(|p| p.vhost == vhost && p.user == user)
        .collect()
}

async fn get_topic_permission(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let v = topic_permissions_of(&s.broker, &vhost, &user);
    if v.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(Value::Array(
        v.iter().map(topic_permission_json).collect(),
    )))
}

async fn put_topic_permission(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let m = body_object(&body)?;
    let def = TopicPermissionDef {
        exchange: required(&m, "exchange")?,
        write: required(&m, "write")?,
        read: required(&m, "read")?,
        user,
        vhost,
    };
    require_vhost_and_user(&s.broker, &def.vhost, &def.user)?;
    let new = !topic_permissions_of(&s.broker, &def.vhost, &def.user)
        .iter()
        .any(|p| p.exchange == def.exchange);
    s.broker
        .admin_as(Command::SetTopicPermissions(def), &caller.user.def.name)
        .await?;
    Ok(created(new))
}

async fn delete_topic_permission(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if topic_permissions_of(&s.broker, &vhost, &user).is_empty() {
        return Err(ApiError::not_found());
    }
    s.broker
        .admin_as(
            Command::ClearTopicPermissions {
                user,
                vhost,
                exchange: None,
            },
            &caller.user.def.name,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
