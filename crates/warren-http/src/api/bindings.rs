//! `/api/bindings...`: list, show, create and delete bindings, named by RabbitMQ's
//! `properties_key`.
//!
//! `properties_key` is RabbitMQ's: `~` for an empty routing key without arguments, else the
//! routing key quoted as `quote_plus` quotes it (with `~` as `%7E`), and with arguments `~` and
//! a hash of them. RabbitMQ hashes with `erlang:phash2`; Warren hashes the arguments' JSON with
//! 32-bit FNV-1a (same shape, six base64url characters, different value), so keys of bindings
//! with arguments differ between the two brokers but each is stable on its own.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};
use warren_core::auth::Perm;
use warren_core::metadata::{BindingDef, Command};
use warren_core::vhost::{Pre, VHost};

use crate::api::common::{self, table_json};
use crate::api::query::{self, Listing};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// `quote_plus` as RabbitMQ's management plugin quotes (alphanumerics and `-._` kept, space as
/// `+`, the rest `%XX`), and `~` as `%7E`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn args_hash(args: &Value) -> String {
    let text = args.to_string();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.to_be_bytes())
}

/// RabbitMQ's `properties_key` of a binding.
pub(crate) fn properties_key(routing_key: &str, args: &Value) -> String {
    let empty_args = args.as_object().is_none_or(|m| m.is_empty());
    match (routing_key.is_empty(), empty_args) {
        (true, true) => "~".to_string(),
        (_, true) => quote(routing_key),
        (_, false) => format!("{}~{}", quote(routing_key), quote(&args_hash(args))),
    }
}

/// One binding as RabbitMQ shows it, serialised straight from the view.
pub(crate) struct BindingJson<'a> {
    pub(crate) vhost: &'a str,
    pub(crate) source: Arc<str>,
    pub(crate) destination: Arc<str>,
    pub(crate) to_queue: bool,
    pub(crate) routing_key: String,
    /// The arguments as JSON (`{}` when none).
    pub(crate) arguments: Value,
}

impl BindingJson<'_> {
    /// RabbitMQ's `properties_key` of this binding.
    pub(crate) fn properties_key(&self) -> String {
        properties_key(&self.routing_key, &self.arguments)
    }
}

impl Serialize for BindingJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("source", &*self.source)?;
        m.serialize_entry("vhost", self.vhost)?;
        m.serialize_entry("destination", &*self.destination)?;
        m.serialize_entry(
            "destination_type",
            if self.to_queue { "queue" } else { "exchange" },
        )?;
        m.serialize_entry("routing_key", &self.routing_key)?;
        m.serialize_entry("properties_key", &self.properties_key())?;
        m.serialize_entry("arguments", &self.arguments)?;
        m.end()
    }
}

impl query::Item for BindingJson<'_> {
    fn name(&self) -> Option<&str> {
        None
    }
    fn vhost(&self) -> Option<&str> {
        Some(self.vhost)
    }
}

/// Every binding of a vhost as RabbitMQ lists them: the default exchange's implicit binding
/// to each queue first, then the declared ones.
pub(crate) fn of_vhost<'a>(vh: &VHost, vhost: &'a str) -> Vec<BindingJson<'a>> {
    let mut queues: Vec<Arc<str>> = vh.queues().iter().map(|q| q.name().clone()).collect();
    queues.sort();
    let empty: Arc<str> = Arc::from("");
    let mut out: Vec<BindingJson<'a>> = queues
        .into_iter()
        .map(|q| BindingJson {
            vhost,
            source: empty.clone(),
            routing_key: q.to_string(),
            destination: q,
            to_queue: true,
            arguments: json!({}),
        })
        .collect();
    let mut declared = vh.bindings();
    declared.sort_by(|a, b| {
        (&a.source, &a.destination, &a.routing_key).cmp(&(
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    out.extend(declared.into_iter().map(|b| BindingJson {
        vhost,
        arguments: table_json(&b.arguments),
        source: b.source,
        destination: b.destination,
        to_queue: b.to_queue,
        routing_key: b.routing_key,
    }));
    out
}

/// `GET /api/bindings`.
pub async fn list_all(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let names = common::visible_vhosts(&s, &caller);
    common::off_loop(move || {
        let mut items = Vec::new();
        for name in &names {
            if let Some(vh) = s.broker.vhost(name) {
                items.extend(of_vhost(&vh, name));
            }
        }
        query::list(items, &q)
    })
    .await
}

/// `GET /api/bindings/{vhost}`.
pub async fn list_vhost(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let vh = common::vhost(&s, &caller, &vhost)?;
    common::off_loop(move || query::list(of_vhost(&vh, &vhost), &q)).await
}

/// `q` or `e` in a binding path.
fn to_queue(kind: &str) -> ApiResult<bool> {
    match kind {
        "q" => Ok(true),
        "e" => Ok(false),
        _ => Err(ApiError::not_found()),
    }
}

/// Checks that both ends exist (404 otherwise) and lists the bindings between them.
fn between<'a>(
    vh: &VHost,
    vhost: &'a str,
    source: &str,
    dest: &str,
    to_q: bool,
) -> ApiResult<Vec<BindingJson<'a>>> {
    if vh.exchange_info(source).is_none() {
        return Err(ApiError::not_found());
    }
    let dest_exists = if to_q {
        vh.queue(dest).is_some()
    } else {
        vh.exchange_info(dest).is_some()
    };
    if !dest_exists {
        return Err(ApiError::not_found());
    }
    Ok(of_vhost(vh, vhost)
        .into_iter()
        .filter(|b| *b.source == *source && *b.destination == *dest && b.to_queue == to_q)
        .collect())
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
pub async fn list_between(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Listing> {
    let to_q = to_queue(&kind)?;
    let vh = common::vhost(&s, &caller, &vhost)?;
    let items = between(&vh, &vhost, common::exchange_name(&source), &dest, to_q)?;
    query::list(items, &q)
}

fn check_bind(
    s: &AppState,
    caller: &Caller,
    vhost: &str,
    source: &str,
    dest: &str,
    to_q: bool,
) -> ApiResult<()> {
    let access = common::access(s, caller, vhost)?;
    if to_q {
        common::permit(access.queue(Perm::Write, dest))?;
    } else {
        common::permit(access.exchange(Perm::Write, dest))?;
    }
    common::permit(access.exchange(Perm::Read, source))
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`: 201 with the new binding's
/// `Location` (relative, `{destination}/{properties_key}`, as RabbitMQ).
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let to_q = to_queue(&kind)?;
    let m = common::body(&body)?;
    common::vhost(&s, &caller, &vhost)?;
    let source = common::exchange_name(&source).to_string();
    check_bind(&s, &caller, &vhost, &source, &dest, to_q)?;
    let routing_key = common::string(&m, "routing_key")?.unwrap_or_default();
    let arguments = common::arguments(&m)?;
    let key = properties_key(&routing_key, &table_json(&arguments));
    let def = BindingDef {
        vhost: vhost.clone(),
        source,
        destination: dest.clone(),
        destination_type: if to_q { "queue" } else { "exchange" }.to_string(),
        routing_key,
        arguments,
    };
    common::run(&s, &caller, Command::Bind(def), Pre::default()).await?;
    // RabbitMQ quotes the key once more for the Location, keeping its `~` separator.
    let location = format!("{}/{}", quote(&dest), quote(&key).replace("%7E", "~"));
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

fn find<'a>(
    vh: &VHost,
    vhost: &'a str,
    source: &str,
    dest: &str,
    to_q: bool,
    props: &str,
) -> ApiResult<BindingJson<'a>> {
    between(vh, vhost, source, dest, to_q)?
        .into_iter()
        .find(|b| b.properties_key() == props)
        .ok_or_else(ApiError::not_found)
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Listing> {
    let to_q = to_queue(&kind)?;
    let vh = common::vhost(&s, &caller, &vhost)?;
    let b = find(
        &vh,
        &vhost,
        common::exchange_name(&source),
        &dest,
        to_q,
        &props,
    )?;
    Listing::of(&b)
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let to_q = to_queue(&kind)?;
    let vh = common::vhost(&s, &caller, &vhost)?;
    let source = common::exchange_name(&source).to_string();
    let b = find(&vh, &vhost, &source, &dest, to_q, &props)?;
    check_bind(&s, &caller, &vhost, &source, &dest, to_q)?;
    let routing_key = b.routing_key.clone();
    let arguments = match &b.arguments {
        Value::Object(o) => common::table(o),
        _ => Default::default(),
    };
    // The arguments as the core holds them (the JSON round trip may retype numbers).
    let arguments = vh
        .bindings()
        .into_iter()
        .find(|x| {
            *x.source == *source
                && *x.destination == *dest
                && x.to_queue == to_q
                && x.routing_key == routing_key
                && table_json(&x.arguments) == b.arguments
        })
        .map(|x| x.arguments)
        .unwrap_or(arguments);
    let def = BindingDef {
        vhost: vhost.clone(),
        source,
        destination: dest,
        destination_type: if to_q { "queue" } else { "exchange" }.to_string(),
        routing_key,
        arguments,
    };
    common::run(&s, &caller, Command::Unbind(def), Pre::default()).await?;
    Ok(StatusCode::NO_CONTENT)
}
