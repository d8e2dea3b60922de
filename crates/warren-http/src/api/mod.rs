//! The routes, one module per resource family.

mod admin;
mod bindings;
mod common;
mod exchanges;
mod overview;
pub(crate) mod query;
mod queues;

// Node, health, rates and definitions (issue 14).
mod definitions;
mod health;
mod nodes;

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

/// Every `/api/...` route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/whoami", get(overview::whoami))
        .merge(topology())
        .merge(admin::routes())
        // Node, health and definitions (issue 14).
        .merge(nodes::routes())
        .merge(health::routes())
        .merge(definitions::routes())
}

/// The topology half: exchanges, queues and bindings, behind RabbitMQ's list query parameters.
fn topology() -> Router<AppState> {
    Router::new()
        .route("/api/exchanges", get(exchanges::list_all))
        .route("/api/exchanges/{vhost}", get(exchanges::list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchanges::show)
                .put(exchanges::put)
                .delete(exchanges::delete),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(exchanges::bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(exchanges::bindings_destination),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(exchanges::publish),
        )
        .route("/api/queues", get(queues::list_all))
        .route("/api/queues/{vhost}", get(queues::list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queues::show).put(queues::put).delete(queues::delete),
        )
        .route("/api/queues/{vhost}/{name}/bindings", get(queues::bindings))
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(queues::purge),
        )
        .route("/api/queues/{vhost}/{name}/get", post(queues::get))
        .route("/api/bindings", get(bindings::list_all))
        .route("/api/bindings/{vhost}", get(bindings::list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(bindings::list_between).post(bindings::create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(bindings::show).delete(bindings::delete),
        )
}
