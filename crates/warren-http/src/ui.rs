//! The web UI: static files from `crates/warren-http/ui/`, embedded in the binary by rust-embed
//! (also in debug builds, `debug-embed`), served at `/` on the management port. The UI is a plain
//! HTML + vanilla JS client of the JSON API under `/api/` (HTTP basic from a login form), so the
//! API stays the one truth. Nothing is fetched from elsewhere at run time.

use crate::error::ApiError;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Assets;

/// The router's fallback: an unknown `/api/...` path gets RabbitMQ's 404 JSON; anything else
/// is a UI file (`/` is `index.html`), 404 when there is no such file.
pub async fn fallback(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return ApiError::not_found().into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "Method Not Allowed",
        )
        .into_response();
    }
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    match Assets::get(name) {
        Some(file) => {
            let mime = HeaderValue::from_str(file.metadata.mimetype())
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                file.data.into_owned(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}
