//! Errors in RabbitMQ's JSON shape: `{"error": "...", "reason": "..."}` with its status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use warren_core::error::AmqpError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// RabbitMQ's `error` field (`not_authorised`, `Object Not Found`, `bad_request`, ...).
    pub error: String,
    /// RabbitMQ's `reason` field.
    pub reason: String,
}

impl ApiError {
    /// Any status with RabbitMQ's two fields.
    pub fn new(status: StatusCode, error: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            reason: reason.into(),
        }
    }
    /// 401, as RabbitMQ words a failed login.
    pub fn unauthorised(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }
    /// 404 for a missing object (RabbitMQ: `Object Not Found` / `Not Found`).
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }
    /// 400 with a reason.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
}

impl From<AmqpError> for ApiError {
    /// A refused metadata command: RabbitMQ answers most with 400 and the AMQP text, 404 for a
    /// missing object.
    fn from(e: AmqpError) -> Self {
        let code = e.code.code();
        let status = match code {
            404 => StatusCode::NOT_FOUND,
            403 => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        let error = match code {
            404 => "not_found",
            _ => "bad_request",
        };
        Self::new(status, error, e.text)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "reason": self.reason });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
