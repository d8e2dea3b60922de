//! `/api/nodes`, `/api/nodes/{node}`, `/api/extensions`, `/api/cluster-name`: the single node
//! as RabbitMQ describes a cluster member.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use warren_core::metadata::{Command, RuntimeDef};
use warren_core::Broker;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/nodes", get(list))
        .route("/api/nodes/{node}", get(one))
        .route("/api/extensions", get(extensions))
        .route("/api/cluster-name", get(cluster_name).put(set_cluster_name))
}

/// The node's name, `rabbit@<host>` as RabbitMQ names it (clients and dashboards match on
/// the `rabbit@` prefix).
pub fn node_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        let short = host.split('.').next().unwrap_or("localhost").to_string();
        format!("rabbit@{short}")
    })
    .clone()
}

/// The cluster name: the `cluster_name` global parameter, else the node name (RabbitMQ's
/// default).
pub fn current_cluster_name(b: &Broker) -> String {
    b.runtime("global_parameter", "", "", "cluster_name")
        .and_then(|r| {
            r.value
                .get("value")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(node_name)
}

/// `listeners` as RabbitMQ lists them: node, protocol, ip_address, port.
pub fn listeners(b: &Broker) -> Vec<Value> {
    let node = node_name();
    b.bound_listeners()
        .into_iter()
        .map(|l| {
            json!({
                "node": node,
                "protocol": l.protocol,
                "ip_address": l.addr.ip().to_string(),
                "port": l.addr.port(),
                "socket_opts": [],
            })
        })
        .collect()
}

/// What `/proc` and `statvfs` tell about the process and its data dir.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resources {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Machine memory, bytes.
    pub total_ram: u64,
    /// Open file descriptors.
    pub fd_used: u64,
    /// File descriptor limit.
    pub fd_total: u64,
    /// Free bytes on the data dir's filesystem.
    pub disk_free: u64,
    /// Threads of the process (RabbitMQ's `proc_used` counts Erlang processes).
    pub threads: u64,
    /// Logical CPUs.
    pub processors: u64,
}

fn proc_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Reads [`Resources`] (blocking: file system reads).
fn read_resources(data_dir: &std::path::Path) -> Resources {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let fd_used = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let fd_total = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let threads = status
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dir = if data_dir.exists() {
        data_dir.to_path_buf()
    } else {
        std::path::PathBuf::from(".")
    };
    Resources {
        rss: proc_kb(&status, "VmRSS:").unwrap_or(0),
        total_ram: proc_kb(&meminfo, "MemTotal:").unwrap_or(0),
        fd_used,
        fd_total,
        disk_free: warren_core::disk_monitor::free_bytes(&dir).unwrap_or(0),
        threads,
        processors: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    }
}

/// [`Resources`], read on a blocking thread.
pub async fn resources(b: &Broker) -> Resources {
    let dir = b.config.storage.data_dir.clone();
    tokio::task::spawn_blocking(move || read_resources(&dir))
        .await
        .unwrap_or_default()
}

async fn describe(s: &AppState) -> Value {
    let b = &s.broker;
    let r = resources(b).await;
    let mem_limit = b.config.memory.limit_bytes(r.total_ram);
    let disk_limit = b.config.disk.limit_bytes(r.total_ram);
    let sockets = b.connections().len() as u64;
    let uptime = s.started.elapsed().as_millis() as u64;
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "os_pid": std::process::id().to_string(),
        "mem_used": r.rss,
        "mem_used_details": { "rate": 0.0 },
        "mem_limit": mem_limit,
        "mem_alarm": *b.alarm.borrow(),
        "mem_calculation_strategy": "rss",
        "disk_free": r.disk_free,
        "disk_free_details": { "rate": 0.0 },
        "disk_free_limit": disk_limit,
        "disk_free_alarm": *b.disk_alarm.borrow(),
        "fd_used": r.fd_used,
        "fd_used_details": { "rate": 0.0 },
        "fd_total": r.fd_total,
        "sockets_used": sockets,
        "sockets_used_details": { "rate": 0.0 },
        "sockets_total": r.fd_total,
        "proc_used": r.threads,
        "proc_used_details": { "rate": 0.0 },
        "proc_total": 1_048_576,
        "run_queue": 0,
        "processors": r.processors,
        "uptime": uptime,
        "rates_mode": "basic",
        "net_ticktime": 60,
        "partitions": [],
        "cluster_links": [],
        "applications": [
            { "name": "rabbit", "description": "RabbitMQ", "version": b.config.amqp.product_version },
            { "name": "rabbitmq_management", "description": "RabbitMQ Management Console", "version": b.config.amqp.product_version },
            { "name": "rabbitmq_prometheus", "description": "Prometheus metrics for RabbitMQ", "version": b.config.amqp.product_version },
        ],
        "auth_mechanisms": [
            { "name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true },
            { "name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true },
        ],
        "exchange_types": exchange_types(),
        "listeners": listeners(b),
        "log_files": [],
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
    })
}

/// The exchange types Warren implements, as RabbitMQ lists them.
pub fn exchange_types() -> Value {
    json!([
        { "name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true },
        { "name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true },
        { "name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true },
        { "name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true },
        { "name": "x-consistent-hash", "description": "Consistent Hashing Exchange", "enabled": true },
        { "name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true },
        { "name": "x-message-deduplication", "description": "Message Deduplication Exchange", "enabled": true },
    ])
}

/// `GET /api/nodes` (monitoring or administrator, as RabbitMQ).
async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    Ok(Json(json!([describe(&s).await])))
}

/// `GET /api/nodes/{node}`.
async fn one(
    State(s): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    if node != node_name() {
        return Err(ApiError::not_found());
    }
    Ok(Json(describe(&s).await))
}

/// `GET /api/extensions`: the UI plugins (none beyond the core UI).
async fn extensions(_caller: Caller) -> Json<Value> {
    Json(json!([]))
}

/// `GET /api/cluster-name`.
async fn cluster_name(State(s): State<AppState>, _caller: Caller) -> Json<Value> {
    Json(json!({ "name": current_cluster_name(&s.broker) }))
}

/// `PUT /api/cluster-name` `{"name": "..."}` (administrator): stored as the `cluster_name`
/// global parameter, through the metadata path.
async fn set_cluster_name(
    State(s): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("{e}")))?;
    let Some(name) = v.get("name").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("[{key_missing,name}]"));
    };
    if name.is_empty() {
        return Err(ApiError::bad_request("cluster name must not be empty"));
    }
    let cmd = Command::PutRuntime(RuntimeDef {
        kind: "global_parameter".into(),
        vhost: String::new(),
        component: String::new(),
        name: "cluster_name".into(),
        value: json!({ "name": "cluster_name", "value": name }),
    });
    s.broker.admin(cmd).await?;
    Ok(StatusCode::NO_CONTENT)
}
