//! The Prometheus endpoint on 15692, with rabbitmq_prometheus 3.10.8's metric names, types,
//! HELP texts and labels, so Grafana's RabbitMQ dashboards work unchanged:
//!
//! - `/metrics`: every family, per-object families summed into one sample;
//! - `/metrics/per-object`: the same, one sample per queue, channel and connection;
//! - `/metrics/detailed?family=...&vhost=...`: the groups asked for, `rabbitmq_detailed_`.
//!
//! A scrape copies the broker's views into a [`snapshot::Snapshot`] on a blocking thread
//! (`/proc` and `statvfs` reads; no lock is held across an await), builds the families
//! ([`families`]) and encodes them with prometheus-client ([`model`]): OpenMetrics when the
//! scraper asks for it, else Prometheus text 0.0.4 as RabbitMQ serves. See docs/METRICS.md.

pub mod families;
pub mod model;
pub mod process;
pub mod snapshot;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use warren_core::Broker;

use families::Scope;
use snapshot::Want;

/// The content type of Prometheus text format 0.0.4 (what RabbitMQ serves).
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics text, served when the scraper's `Accept` asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics routes.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .route("/metrics/detailed", get(detailed))
        .fallback(not_found)
        .with_state(broker)
}

/// Serves the metrics on `listener` until `shutdown`.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        broker.add_listener("http/prometheus", addr);
    }
    axum::serve(listener, router(broker))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// What a scrape asks for.
enum Ask {
    Standard(Scope),
    Detailed {
        groups: Vec<String>,
        vhosts: Option<HashSet<String>>,
    },
}

async fn aggregated(State(broker): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    scrape(broker, Ask::Standard(Scope::Aggregated), &headers).await
}

async fn per_object(State(broker): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    scrape(broker, Ask::Standard(Scope::PerObject), &headers).await
}

async fn detailed(
    State(broker): State<Arc<Broker>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut groups = Vec::new();
    let mut vhosts: Option<HashSet<String>> = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "family" => groups.push(v.into_owned()),
            "vhost" => {
                vhosts
                    .get_or_insert_with(HashSet::new)
                    .insert(v.into_owned());
            }
            _ => {}
        }
    }
    scrape(broker, Ask::Detailed { groups, vhosts }, &headers).await
}

/// RabbitMQ's answer to any other path (cowboy's 404 with the management-style JSON body).
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"Object Not Found","reason":"Not Found"}"#,
    )
        .into_response()
}

fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn scrape(broker: Arc<Broker>, ask: Ask, headers: &HeaderMap) -> Response {
    let openmetrics = wants_openmetrics(headers);
    let work = tokio::task::spawn_blocking(move || render(&broker, &ask, openmetrics)).await;
    match work {
        Ok(Ok(body)) => {
            let ct = if openmetrics { OPENMETRICS } else { TEXT_004 };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Ok(Err(e)) => {
            warn!(error = %e, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            warn!(error = %e, "metrics scrape task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Reads the broker and encodes one scrape (blocking).
pub fn render_text(broker: &Broker, per_object: bool) -> Result<String, std::fmt::Error> {
    let scope = if per_object {
        Scope::PerObject
    } else {
        Scope::Aggregated
    };
    render(broker, &Ask::Standard(scope), false)
}

fn render(broker: &Broker, ask: &Ask, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let version = broker.config.amqp.product_version.as_str();
    let fams = match ask {
        Ask::Standard(scope) => {
            let s = snapshot::take(broker, Want::default());
            families::standard(&s, *scope, version)
        }
        Ask::Detailed { groups, vhosts } => {
            let want = Want {
                exchanges: families::needs_exchanges(groups),
            };
            let s = snapshot::take(broker, want);
            families::detailed(&s, groups, vhosts.as_ref(), version)
        }
    };
    let om = model::encode_openmetrics(fams)?;
    Ok(if openmetrics {
        om
    } else {
        model::to_text_004(&om)
    })
}
