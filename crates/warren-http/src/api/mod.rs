//! The routes, one module per resource family.

mod overview;

// Node, health, rates and definitions (issue 14).
mod definitions;
mod health;
mod nodes;

use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Every `/api/...` route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/whoami", get(overview::whoami))
        // Node, health and definitions (issue 14).
        .merge(nodes::routes())
        .merge(health::routes())
        .merge(definitions::routes())
}
