//! HTTP basic authentication against the broker's users, and RabbitMQ's tag rules:
//! `management` sees its own vhosts' objects, `policymaker` also manages policies and
//! parameters there, `monitoring` reads everything, `administrator` may do anything.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use warren_core::auth::User;

use crate::error::ApiError;
use crate::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: Arc<User>,
}

impl Caller {
    /// Tag `administrator`.
    pub fn is_admin(&self) -> bool {
        self.user.has_tag("administrator")
    }
    /// Reads every object (`monitoring` or `administrator`).
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.user.has_tag("monitoring")
    }
    /// Manages policies and parameters in its vhosts (`policymaker` or `administrator`).
    pub fn is_policymaker(&self) -> bool {
        self.is_admin() || self.user.has_tag("policymaker")
    }
    /// May use the management API at all (any of the management tags).
    pub fn may_manage(&self) -> bool {
        self.is_monitor() || self.is_policymaker() || self.user.has_tag("management")
    }
    /// Refuses unless administrator (RabbitMQ's 401 for a lacking tag).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::unauthorised("Not administrator user"))
        }
    }
    /// Refuses unless monitoring or administrator.
    pub fn require_monitor(&self) -> Result<(), ApiError> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::unauthorised("Not monitor user"))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (user, pass) =
            basic_credentials(parts).ok_or_else(|| ApiError::unauthorised("Login failed"))?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        state
            .broker
            .authenticate(&user, Some(&pass), peer)
            .map_err(|_| ApiError::unauthorised("Login failed"))?;
        let user = state
            .broker
            .users
            .user(&user)
            .ok_or_else(|| ApiError::unauthorised("Login failed"))?;
        let caller = Caller { user };
        if !caller.may_manage() {
            return Err(ApiError::unauthorised("Not management user"));
        }
        Ok(caller)
    }
}

/// `Authorization: Basic base64(user:pass)`.
fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}
