//! A client for the management HTTP API, for tests: HTTP basic as one user, JSON in and out.

use std::net::SocketAddr;

use serde_json::Value;

/// The management API of one broker, as one user.
#[derive(Clone)]
pub struct Api {
    base: String,
    user: String,
    pass: Option<String>,
    client: reqwest::Client,
}

/// A response: its status code and its body parsed as JSON (`Value::Null` when empty or not
/// JSON; the raw text is in `text`).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body as JSON, `Null` if it is not JSON.
    pub json: Value,
    /// The body as text.
    pub text: String,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Api {
    /// The API at `addr`, as `user` with `pass` (`None`: no credentials at all).
    pub fn new(addr: SocketAddr, user: &str, pass: Option<&str>) -> Self {
        Self {
            base: format!("http://{addr}"),
            user: user.to_string(),
            pass: pass.map(str::to_string),
            client: reqwest::Client::new(),
        }
    }

    /// `path` is everything after the host, e.g. `/api/queues/%2F/q`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `method path` with an optional JSON body.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self.client.request(method, self.url(path));
        if let Some(pass) = &self.pass {
            req = req.basic_auth(&self.user, Some(pass));
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        Self::reply(req).await
    }

    /// Sends `method path` with a raw body and content type (for bad-input tests).
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_string());
        if let Some(pass) = &self.pass {
            req = req.basic_auth(&self.user, Some(pass));
        }
        Self::reply(req).await
    }

    async fn reply(req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("HTTP request is answered");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("HTTP body is read");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            json,
            text,
            headers,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// `PUT path` with `body`.
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}
