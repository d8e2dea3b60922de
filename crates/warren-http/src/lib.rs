//! The management HTTP API on 15672: RabbitMQ's paths, methods, JSON field names and status
//! codes, so rabbitmqadmin, Terraform, KEDA and dashboards work unchanged.
//!
//! It reads broker state through `warren_core`'s introspection functions and changes it only
//! through the metadata path (`Broker::admin`); no lock is held across an await.
//!
//! Layout: [`auth`] (HTTP basic against the broker's users, tag rules), [`error`] (RabbitMQ's
//! error JSON), one module per resource family under `api/`.

pub mod auth;
pub mod error;

mod api;

use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_core::Broker;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The broker.
    pub broker: Arc<Broker>,
}

/// The whole API (and, later, the UI) as one router.
pub fn router(broker: Arc<Broker>) -> Router {
    let max_body = broker.config.management.max_body_bytes;
    let state = AppState { broker };
    api::routes()
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(broker).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
