//! The management HTTP API on 15672: RabbitMQ's paths, methods, JSON field names and status
//! codes, so rabbitmqadmin, Terraform, KEDA and dashboards work unchanged.
//!
//! It reads broker state through `warren_core`'s introspection functions and changes it only
//! through the metadata path (`Broker::admin`); no lock is held across an await.
//!
//! Layout: [`auth`] (HTTP basic against the broker's users, tag rules), [`error`] (RabbitMQ's
//! error JSON), one module per resource family under `api/`, [`tls`] (the HTTPS listener).

pub mod auth;
mod background;
pub mod error;
pub mod rates;
pub mod tls;
pub mod ui;

pub(crate) mod api;

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
    /// Message rates, refreshed by the sampler task (see [`rates`]).
    pub rates: Arc<rates::RateTable>,
    /// When the API started (the node's `uptime`).
    pub started: std::time::Instant,
}

/// The whole API and the web UI ([`ui`]) as one router. Starts the rate sampler, which stops
/// when the router is dropped; call it inside a tokio runtime.
pub fn router(broker: Arc<Broker>) -> Router {
    let max_body = broker.config.management.max_body_bytes;
    let rates = Arc::new(rates::RateTable::default());
    rates::spawn_sampler(broker.clone(), &rates);
    let state = AppState {
        broker,
        rates,
        started: std::time::Instant::now(),
    };
    let api = api::routes()
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state);
    Router::new()
        .fallback_service(api)
        .layer(axum::middleware::from_fn(api::methods))
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(broker.clone());
    serve_router(&broker, app, listener, shutdown).await
}

/// Serves `app` (from [`router`]; one router can serve both listeners) on `listener` until
/// `shutdown`.
pub async fn serve_router(
    broker: &Broker,
    app: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        broker.add_listener("http", addr);
    }
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Serves `app` over HTTPS on `listener` (RabbitMQ's `management.ssl.port`) until `shutdown`;
/// `acceptor` from [`tls::acceptor`].
pub async fn serve_router_tls(
    broker: &Broker,
    app: Router,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_https(broker, "https", app, listener, acceptor, shutdown).await
}

/// Serves any `app` over HTTPS on `listener` until `shutdown`, listed in the broker's
/// listeners as `protocol` (`https` for the management API, `https/prometheus` for metrics).
pub async fn serve_https(
    broker: &Broker,
    protocol: &'static str,
    app: Router,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    if let Ok(addr) = listener.local_addr() {
        broker.add_listener(protocol, addr);
    }
    // `tap_io` only so that axum hands the peer's address to the handlers (`ConnectInfo`).
    let listener = tls::HttpsListener::new(listener, acceptor, shutdown.clone())?.tap_io(|_| {});
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
