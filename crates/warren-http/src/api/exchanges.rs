//! `/api/exchanges...`: list, show, declare, delete, the bindings from and to one, and
//! publishing through one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};
use warren_codec::proto::{AMQPProperties, ShortString};
use warren_core::auth::Perm;
use warren_core::message::Message;
use warren_core::metadata::{Command, ExchangeDef};
use warren_core::queue::Enqueued;
use warren_core::vhost::{new_store_dir, ExchangeInfo, Pre};

use crate::api::bindings;
use crate::api::common::{self, table_json};
use crate::api::query::{self, Listing};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::rates;
use crate::AppState;

/// One exchange as RabbitMQ shows it, serialised straight from the view (`stats: false`:
/// `disable_stats=true`, no `message_stats`).
pub(crate) struct ExchangeJson<'a> {
    vhost: &'a str,
    e: ExchangeInfo,
    rates: Option<&'a rates::Rates>,
    stats: bool,
}

impl Serialize for ExchangeJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = &self.e;
        let who = if e.name.is_empty() || e.name.starts_with("amq.") {
            "rmq-internal"
        } else {
            ""
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &*e.name)?;
        m.serialize_entry("vhost", self.vhost)?;
        m.serialize_entry("type", e.kind)?;
        m.serialize_entry("durable", &e.durable)?;
        m.serialize_entry("auto_delete", &e.auto_delete)?;
        m.serialize_entry("internal", &e.internal)?;
        m.serialize_entry("arguments", &table_json(&e.arguments))?;
        m.serialize_entry("user_who_performed_action", who)?;
        if self.stats {
            let totals = e.stats.totals();
            let stats = rates::MessageStatsJson {
                totals: &totals,
                rates: self.rates,
                kind: rates::Kind::Exchange,
            };
            m.serialize_entry("message_stats", &stats)?;
        }
        // The delayed-message plugin's info item: what the exchange holds until due.
        if let Some(n) = e.delayed {
            m.serialize_entry("messages_delayed", &n)?;
        }
        // RabbitMQ shows `policy` on an exchange only when one applies.
        if let Some(p) = e.policy.as_ref().and_then(|a| a.policy.as_deref()) {
            m.serialize_entry("policy", p)?;
        }
        m.end()
    }
}

impl query::Item for ExchangeJson<'_> {
    fn name(&self) -> Option<&str> {
        Some(&self.e.name)
    }
    fn vhost(&self) -> Option<&str> {
        Some(self.vhost)
    }
}

fn exchanges_of<'a>(
    s: &AppState,
    rates: &'a rates::Snapshot,
    vhosts: &'a [String],
    q: &HashMap<String, String>,
) -> Vec<ExchangeJson<'a>> {
    let stats = !common::query_flag(q, "disable_stats");
    let mut items = Vec::new();
    for vhost in vhosts {
        if let Some(vh) = s.broker.vhost(vhost) {
            for e in vh.exchanges() {
                let r = rates.exchange(vhost, &e.name);
                items.push(ExchangeJson {
                    vhost,
                    e,
                    rates: r,
                    stats,
                });
            }
        }
    }
    items
}

/// `GET /api/exchanges`.
pub async fn list_all(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let names = common::visible_vhosts(&s, &caller);
    common::off_loop(move || {
        let rates = s.rates.snapshot();
        query::list(exchanges_of(&s, &rates, &names, &q), &q)
    })
    .await
}

/// `GET /api/exchanges/{vhost}`.
pub async fn list_vhost(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    common::vhost(&s, &caller, &vhost)?;
    common::off_loop(move || {
        let rates = s.rates.snapshot();
        let names = [vhost];
        query::list(exchanges_of(&s, &rates, &names, &q), &q)
    })
    .await
}

/// `GET /api/exchanges/{vhost}/{name}`.
pub async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    let e = vh
        .exchange_info(common::exchange_name(&name))
        .ok_or_else(ApiError::not_found)?;
    let rates = s.rates.snapshot();
    Listing::of(&ExchangeJson {
        vhost: &vhost,
        rates: rates.exchange(&vhost, &e.name),
        e,
        stats: !common::query_flag(&q, "disable_stats"),
    })
}

/// `PUT /api/exchanges/{vhost}/{name}`: 201 when created, 204 when an equivalent one existed.
pub async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let m = common::body(&body)?;
    let vh = common::vhost(&s, &caller, &vhost)?;
    let name = common::exchange_name(&name).to_string();
    if name.is_empty() {
        return Err(ApiError::unauthorised("Access refused."));
    }
    let access = common::access(&s, &caller, &vhost)?;
    common::permit(access.exchange(Perm::Configure, &name))?;
    let kind = common::string(&m, "type")?.unwrap_or_else(|| "direct".to_string());
    let durable = common::flag(&m, "durable", false)?;
    // A durable delayed exchange keeps persistent held messages in a store (as over AMQP).
    let store_dir = if durable && kind == "x-delayed-message" && vh.persistent() {
        format!("dx-{}", new_store_dir(&name))
    } else {
        String::new()
    };
    let def = ExchangeDef {
        vhost: vhost.clone(),
        name: name.clone(),
        kind,
        durable,
        auto_delete: common::flag(&m, "auto_delete", false)?,
        internal: common::flag(&m, "internal", false)?,
        arguments: common::arguments(&m)?,
        store_dir,
    };
    let existed = vh.exchange_info(&name).is_some();
    common::run(&s, &caller, Command::DeclareExchange(def), Pre::default()).await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// `DELETE /api/exchanges/{vhost}/{name}[?if-unused=true]`.
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    let name = common::exchange_name(&name).to_string();
    if name.is_empty() {
        return Err(ApiError::unauthorised("Access refused."));
    }
    if vh.exchange_info(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let access = common::access(&s, &caller, &vhost)?;
    common::permit(access.exchange(Perm::Configure, &name))?;
    let pre = Pre {
        if_unused: common::query_flag(&q, "if-unused"),
        if_empty: false,
    };
    let cmd = Command::DeleteExchange {
        vhost: vhost.clone(),
        name,
    };
    common::run(&s, &caller, cmd, pre).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/source`.
pub async fn bindings_source(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    let name = common::exchange_name(&name);
    if vh.exchange_info(name).is_none() {
        return Err(ApiError::not_found());
    }
    let items = bindings::of_vhost(&vh, &vhost)
        .into_iter()
        .filter(|b| *b.source == *name)
        .collect();
    query::list(items, &q)
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/destination`.
pub async fn bindings_destination(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    let name = common::exchange_name(&name);
    if vh.exchange_info(name).is_none() {
        return Err(ApiError::not_found());
    }
    let items = bindings::of_vhost(&vh, &vhost)
        .into_iter()
        .filter(|b| !b.to_queue && *b.destination == *name)
        .collect();
    query::list(items, &q)
}

/// Message properties from the API's JSON (`delivery_mode`, `headers`, ...).
fn properties(m: &Map<String, Value>) -> ApiResult<AMQPProperties> {
    let p = match m.get("properties") {
        None | Some(Value::Null) => return Ok(AMQPProperties::default()),
        Some(Value::Object(p)) => p,
        Some(Value::Array(a)) if a.is_empty() => return Ok(AMQPProperties::default()),
        Some(_) => return Err(ApiError::bad_request("properties must be an object")),
    };
    let mut props = AMQPProperties::default();
    let text = |k: &str| -> ApiResult<Option<ShortString>> {
        Ok(common::string(p, k)?.map(|s| ShortString::from(s.as_str())))
    };
    let int = |k: &str| -> ApiResult<Option<u64>> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("{k} must be an integer"))),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{k} must be an integer"))),
            Some(_) => Err(ApiError::bad_request(format!("{k} must be an integer"))),
        }
    };
    if let Some(v) = text("content_type")? {
        props = props.with_content_type(v);
    }
    if let Some(v) = text("content_encoding")? {
        props = props.with_content_encoding(v);
    }
    if let Some(Value::Object(h)) = p.get("headers") {
        props = props.with_headers(common::checked_table(h, "headers")?);
    }
    if let Some(v) = int("delivery_mode")? {
        props = props.with_delivery_mode(u8::try_from(v).unwrap_or(1));
    }
    if let Some(v) = int("priority")? {
        props = props.with_priority(u8::try_from(v).unwrap_or(u8::MAX));
    }
    if let Some(v) = text("correlation_id")? {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = text("reply_to")? {
        props = props.with_reply_to(v);
    }
    if let Some(v) = text("expiration")? {
        props = props.with_expiration(v);
    }
    if let Some(v) = text("message_id")? {
        props = props.with_message_id(v);
    }
    if let Some(v) = int("timestamp")? {
        props = props.with_timestamp(v);
    }
    if let Some(v) = text("type")? {
        props = props.with_type(v);
    }
    if let Some(v) = text("user_id")? {
        props = props.with_user_id(v);
    }
    if let Some(v) = text("app_id")? {
        props = props.with_app_id(v);
    }
    Ok(props)
}

/// `POST /api/exchanges/{vhost}/{name}/publish`: `{"routed": bool}`.
pub async fn publish(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let m = common::body(&body)?;
    let vh = common::vhost(&s, &caller, &vhost)?;
    let name = common::exchange_name(&name).to_string();
    if vh.exchange_info(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let access = common::access(&s, &caller, &vhost)?;
    common::permit(access.exchange(Perm::Write, &name))?;
    let mut missing = Vec::new();
    for k in ["routing_key", "payload", "payload_encoding", "properties"] {
        if !m.contains_key(k) {
            missing.push(format!("{{key_missing,{k}}}"));
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let routing_key = common::string(&m, "routing_key")?.unwrap_or_default();
    let payload = common::string(&m, "payload")?.unwrap_or_default();
    let payload = match common::string(&m, "payload_encoding")?.as_deref() {
        Some("string") => payload.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload.as_bytes())
            .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        _ => {
            return Err(ApiError::bad_request(
                "payload_encoding must be string or base64",
            ))
        }
    };
    let props = properties(&m)?;
    if props
        .user_id()
        .as_ref()
        .is_some_and(|u| u.as_str() != caller.user.def.name)
    {
        return Err(ApiError::bad_request(format!(
            "user_id property set to '{}' but authenticated user was '{}'",
            props.user_id().as_ref().map(|u| u.as_str()).unwrap_or(""),
            caller.user.def.name
        )));
    }
    let now = s.broker.clock.now();
    let routed = vh
        .route_message(&name, &routing_key, &props, now)
        .map_err(common::amqp)?;
    let raw = warren_codec::encode_properties(&props);
    let msg = Arc::new(Message::new(
        routed.exchange.clone(),
        &routing_key,
        &props,
        raw.into(),
        payload.into(),
    ));
    routed.stats.publish_in.inc();
    let mut any = false;
    for q in &routed.queues {
        if let Enqueued::Yes(_) = q.publish(msg.clone(), now) {
            any = true;
            q.info().stats.publish.inc();
        }
    }
    if any {
        routed.stats.publish_out.inc();
    }
    // A delayed exchange that would hold the message: not supported through the API yet.
    if routed.delayed.is_some() && !any {
        return Err(ApiError::bad_request(
            "publishing to a delayed-message exchange over the HTTP API is not supported",
        ));
    }
    Ok(Json(json!({ "routed": any })).into_response())
}
