//! The routes, one module per resource family.

mod exchanges;
mod overview;
mod query;

use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Every `/api/...` route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/whoami", get(overview::whoami))
        .merge(topology())
}

/// The topology half: exchanges (more to come), behind RabbitMQ's list query parameters.
fn topology() -> Router<AppState> {
    Router::new()
        .route("/api/exchanges", get(exchanges::list_all))
        .route("/api/exchanges/{vhost}", get(exchanges::list_vhost))
}
