//! `/api/health/checks/...`: RabbitMQ 3.10's health checks. Each answers 200
//! `{"status":"ok"}` or 503 `{"status":"failed","reason":...}` with the check's own fields.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use std::sync::Arc;
use warren_codec::proto::{AMQPProperties, FieldTable};
use warren_core::message::Message;
use warren_core::metadata::{Command, QueueDef};
use warren_core::queue::{Delivery, Got, Settle, Sink, Waiter};

use super::nodes::node_name;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(local_alarms))
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(certificate_expiration),
        )
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/health/checks/virtual-hosts", get(virtual_hosts))
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(quorum_critical),
        )
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(ok_check),
        )
        .route("/api/health/checks/ready-to-serve-clients", get(ready))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
}

/// A waiter for `basic.get` that no connection stands behind: the aliveness test asks again
/// itself when told to wait.
#[derive(Debug)]
struct NoSink;

impl Sink for NoSink {
    fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
        Err(d)
    }
    fn writable(&self) -> bool {
        false
    }
    fn cancelled(&self, _channel: u16, _tag: Arc<str>) {}
    fn wake(&self, _channel: u16) {}
}

const ALIVENESS_QUEUE: &str = "aliveness-test";
const ALIVENESS_BODY: &[u8] = b"test_message";

/// `GET /api/aliveness-test/{vhost}`: as RabbitMQ, declares the non-durable queue
/// `aliveness-test`, publishes `test_message` to it through the default exchange and gets it
/// back (acknowledged). 200 `{"status":"ok"}`, 404 for a missing vhost, 503 on failure.
async fn aliveness(
    State(s): State<AppState>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Response {
    let b = &s.broker;
    let Some(vh) = b.vhost(&vhost) else {
        return ApiError::not_found().into_response();
    };
    if b.users.access(&caller.user.def.name, &vhost).is_none() {
        return ApiError::unauthorised("Not authorised to access virtual host").into_response();
    }
    let declare = Command::DeclareQueue(QueueDef {
        vhost: vhost.clone(),
        name: ALIVENESS_QUEUE.into(),
        durable: false,
        auto_delete: false,
        arguments: FieldTable::default(),
        store_dir: String::new(),
        exclusive_owner: None,
    });
    if let Err(e) = b.admin(declare).await {
        return failed(&e.text, json!({}));
    }
    let now = b.clock.now();
    let props = AMQPProperties::default();
    let routed = match vh.route_message("", ALIVENESS_QUEUE, &props, now) {
        Ok(r) => r,
        Err(e) => return failed(&e.text, json!({})),
    };
    let Some(q) = routed.queues.first().cloned() else {
        return failed("aliveness-test queue not routable", json!({}));
    };
    let raw = bytes::Bytes::from(warren_codec::encode_properties(&props));
    let msg = Arc::new(Message::new(
        routed.exchange,
        ALIVENESS_QUEUE,
        &props,
        raw,
        bytes::Bytes::from_static(ALIVENESS_BODY),
    ));
    q.publish(msg, now);
    let waiter = Waiter {
        sink: Arc::new(NoSink),
        channel: 0,
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = b.clock.now();
        match q.get(false, now, &waiter) {
            Got::Message(m, _) => {
                let ok_body = m.msg.body.as_ref() == ALIVENESS_BODY;
                q.settle(vec![m], Settle::Ack, now);
                if ok_body {
                    return ok(json!({}));
                }
                // Someone else's message was in the queue: try for ours.
            }
            Got::Wait => {}
            Got::Empty => return failed("aliveness-test message was not received", json!({})),
            Got::Refused(e) => return failed(&e.text, json!({})),
        }
        if tokio::time::Instant::now() >= deadline {
            return failed("aliveness-test timed out", json!({}));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn ok(extra: Value) -> Response {
    let mut body = json!({ "status": "ok" });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    (StatusCode::OK, Json(body)).into_response()
}

fn failed(reason: &str, extra: Value) -> Response {
    let mut body = json!({ "status": "failed", "reason": reason });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

fn alarms_in_effect(s: &AppState) -> Vec<Value> {
    let node = node_name();
    let mut v = Vec::new();
    if *s.broker.alarm.borrow() {
        v.push(json!({ "node": node, "resource": "memory" }));
    }
    if *s.broker.disk_alarm.borrow() {
        v.push(json!({ "node": node, "resource": "disk" }));
    }
    v
}

/// `GET /api/health/checks/alarms`.
async fn alarms(State(s): State<AppState>, _caller: Caller) -> Response {
    let a = alarms_in_effect(&s);
    if a.is_empty() {
        ok(json!({}))
    } else {
        failed(
            "There are alarms in effect in the cluster",
            json!({ "alarms": a }),
        )
    }
}

/// `GET /api/health/checks/local-alarms`.
async fn local_alarms(State(s): State<AppState>, _caller: Caller) -> Response {
    let a = alarms_in_effect(&s);
    if a.is_empty() {
        ok(json!({}))
    } else {
        failed(
            "There are alarms in effect on the node",
            json!({ "alarms": a }),
        )
    }
}

/// Seconds in `within` `unit`s (RabbitMQ's units: days, weeks, months, years).
fn seconds(within: &str, unit: &str) -> Result<u64, ApiError> {
    let n: u64 = within.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid value '{within}', expected a positive integer"
        ))
    })?;
    let per = match unit {
        "days" | "day" => 86_400,
        "weeks" | "week" => 7 * 86_400,
        "months" | "month" => 30 * 86_400,
        "years" | "year" => 365 * 86_400,
        _ => {
            return Err(ApiError::bad_request(format!(
                "Invalid unit '{unit}', expected days, weeks, months or years"
            )))
        }
    };
    Ok(n.saturating_mul(per))
}

/// The `notAfter` of the first certificate in a PEM file, in seconds since the Unix epoch.
fn not_after(path: &std::path::Path) -> Result<i64, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("{}: bad certificate: {e}", path.display()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// `GET /api/health/checks/certificate-expiration/{within}/{unit}`: fails when the TLS
/// listener's certificate expires within that time.
async fn certificate_expiration(
    State(s): State<AppState>,
    _caller: Caller,
    Path((within, unit)): Path<(String, String)>,
) -> Response {
    let secs = match seconds(&within, &unit) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let tls = &s.broker.config.tls;
    if tls.cert.as_os_str().is_empty() {
        return ok(json!({}));
    }
    let cert = tls.cert.clone();
    let path = cert.clone();
    let read = tokio::task::spawn_blocking(move || not_after(&path)).await;
    let expires = match read {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return failed(&e, json!({})),
        Err(_) => return failed("certificate check failed", json!({})),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if expires > now.saturating_add(secs as i64) {
        return ok(json!({}));
    }
    let port = s
        .broker
        .bound_listeners()
        .into_iter()
        .find(|l| l.protocol == "amqp/ssl")
        .map_or(0, |l| l.addr.port());
    failed(
        "Certificates expiring",
        json!({ "expired": [{
            "node": node_name(),
            "protocol": "amqp/ssl",
            "interface": tls.bind,
            "port": port,
            "certfile": cert.display().to_string(),
            "cacertfile": tls.ca.display().to_string(),
            "expired_certificate": format!("notAfter {expires}"),
        }] }),
    )
}

/// `GET /api/health/checks/port-listener/{port}`.
async fn port_listener(
    State(s): State<AppState>,
    _caller: Caller,
    Path(port): Path<String>,
) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return ApiError::bad_request(format!("Invalid port '{port}'")).into_response();
    };
    let ports: Vec<u16> = s
        .broker
        .bound_listeners()
        .iter()
        .map(|l| l.addr.port())
        .collect();
    if ports.contains(&port) {
        ok(json!({ "port": port }))
    } else {
        failed(
            "No active listener",
            json!({ "missing": port, "ports": ports }),
        )
    }
}

/// `GET /api/health/checks/protocol-listener/{protocol}`.
async fn protocol_listener(
    State(s): State<AppState>,
    _caller: Caller,
    Path(protocol): Path<String>,
) -> Response {
    let mut protocols: Vec<String> = s
        .broker
        .bound_listeners()
        .into_iter()
        .map(|l| l.protocol)
        .collect();
    protocols.sort();
    protocols.dedup();
    // RabbitMQ accepts its aliases: amqp091/amqp0-9-1 for amqp, https for http/ssl.
    let wanted = match protocol.to_ascii_lowercase().as_str() {
        "amqp091" | "amqp0-9-1" | "amqp0.9.1" | "amqp" => "amqp".to_string(),
        "amqps" => "amqp/ssl".to_string(),
        "prometheus" => "http/prometheus".to_string(),
        other => other.to_string(),
    };
    if protocols.contains(&wanted) {
        ok(json!({ "protocol": protocol }))
    } else {
        failed(
            "No active listener",
            json!({ "missing": protocol, "protocols": protocols }),
        )
    }
}

/// `GET /api/health/checks/virtual-hosts`: every vhost is running (Warren's vhosts have no
/// separate supervisor that could be down).
async fn virtual_hosts(State(s): State<AppState>, _caller: Caller) -> Response {
    let down: Vec<String> = s
        .broker
        .vhost_names()
        .into_iter()
        .filter(|n| s.broker.vhost(n).is_none())
        .collect();
    if down.is_empty() {
        ok(json!({}))
    } else {
        failed(
            "Some virtual hosts are down",
            json!({ "virtual-hosts": down }),
        )
    }
}

/// `GET /api/health/checks/node-is-quorum-critical`: a single node is never what keeps a
/// quorum queue's majority on other nodes.
async fn quorum_critical(_caller: Caller) -> Response {
    ok(json!({}))
}

async fn ok_check(_caller: Caller) -> Response {
    ok(json!({}))
}

/// `GET /api/health/checks/ready-to-serve-clients`: an AMQP listener is up and no alarm
/// blocks publishers.
async fn ready(State(s): State<AppState>, _caller: Caller) -> Response {
    let listening = s
        .broker
        .bound_listeners()
        .iter()
        .any(|l| l.protocol.starts_with("amqp"));
    if !listening {
        return failed("no AMQP listener", json!({}));
    }
    ok(json!({}))
}
