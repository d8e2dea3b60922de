//! The Prometheus endpoint on 15692: `/metrics` with rabbitmq_prometheus's metric names, types,
//! help texts and labels, so Grafana's RabbitMQ dashboards work unchanged. Exposition is
//! prometheus-client's text encoder; values are read from the broker at scrape time.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_core::Broker;

/// The content type Prometheus expects for the text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics routes.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
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

async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    let mut registry = Registry::default();
    let names = broker.vhost_names();
    let connections = Gauge::<i64>::default();
    connections.set(
        names
            .iter()
            .map(|n| broker.connection_count(n))
            .sum::<usize>() as i64,
    );
    registry.register(
        "rabbitmq_connections",
        "Connections currently open",
        connections,
    );
    let queues = Gauge::<i64>::default();
    queues.set(
        names
            .iter()
            .filter_map(|n| broker.vhost(n))
            .map(|v| v.queue_count())
            .sum::<usize>() as i64,
    );
    registry.register("rabbitmq_queues", "Queues available", queues);
    let mut body = String::new();
    if encode(&mut body, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
