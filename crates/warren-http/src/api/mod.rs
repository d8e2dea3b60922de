//! The routes, one module per resource family.

mod admin;
mod bindings;
mod common;
mod exchanges;
mod overview;
mod pick;
pub(crate) mod query;
mod queues;

// Node, health, rates and definitions (issue 14).
mod definitions;
mod health;
mod nodes;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

/// RabbitMQ's order of methods in an `allow` header (it always adds OPTIONS).
const METHOD_ORDER: [&str; 5] = ["HEAD", "GET", "POST", "PUT", "DELETE"];

/// A path no route knows: outside `/api` the web UI's files; inside, RabbitMQ answers GET with
/// its JSON 404 and other methods with a
/// bodiless 405 allowing `HEAD, GET, OPTIONS`.
async fn unknown(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path != "/api" && !path.starts_with("/api/") {
        // Everything outside `/api` is the web UI's.
        return crate::ui::fallback(method, uri).await;
    }
    match method {
        Method::GET | Method::HEAD => ApiError::not_found().into_response(),
        m => allow_answer(&m, "HEAD, GET, OPTIONS"),
    }
}

/// OPTIONS: 200; anything else: 405. Both with `allow` and no body, as RabbitMQ (cowboy).
fn allow_answer(method: &Method, allow: &str) -> Response {
    let status = if method == Method::OPTIONS {
        StatusCode::OK
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// A known path with a method it does not take: axum's 405 with RabbitMQ's `allow` (its
/// order, OPTIONS added), and OPTIONS answered 200. Wraps the whole router (axum adds `allow`
/// outside the per-route layers).
pub(crate) async fn methods(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let r = next.run(req).await;
    if r.status() != StatusCode::METHOD_NOT_ALLOWED {
        return r;
    }
    let given = r
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_uppercase();
    let given: Vec<&str> = given.split(',').map(str::trim).collect();
    let mut allow: Vec<&str> = METHOD_ORDER
        .into_iter()
        .filter(|m| given.contains(m))
        .collect();
    allow.push("OPTIONS");
    allow_answer(&method, &allow.join(", "))
}

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
        .fallback(unknown)
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
