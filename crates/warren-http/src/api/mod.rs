//! The routes, one module per resource family.

mod admin;
mod overview;

use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Every `/api/...` route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/whoami", get(overview::whoami))
        .merge(admin::routes())
}
