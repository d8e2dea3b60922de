//! Shared pieces of Warren's whole-broker fuzz targets: one tokio runtime per fuzzing process,
//! an in-memory broker (nothing on disk) started the way the black-box tests start one, a
//! bounded HTTP request helper over the real axum router, and a small byte reader the
//! structured targets draw their choices from.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use tokio::runtime::Runtime;
use tower::ServiceExt;
use warren_core::{Broker, Config};

/// The process's runtime: current-thread, so that an execution is (nearly) deterministic and
/// costs no thread hand-offs. Every target drives its execution with `runtime().block_on`.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A fresh in-memory broker with default settings (vhost `/`, user guest/guest), its queue
/// timers running. Must be called inside the runtime.
pub fn broker() -> Arc<Broker> {
    let b = Broker::new(Config::default());
    b.timers.start();
    b
}

/// How long one execution may take before the target calls it a hang.
pub const EXEC_LIMIT: Duration = Duration::from_secs(10);

/// Sends `req` to `app` and reads the whole response body (at most 64 MiB). Panics when the
/// router errors (it is infallible) or the response is not well formed: a 500, or a body that
/// says it is JSON and does not parse.
pub async fn send(app: &axum::Router, req: Request<Body>) -> (Response<()>, bytes::Bytes) {
    let what = format!("{} {}", req.method(), req.uri());
    let resp = match app.clone().oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, 64 << 20)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_else(|e| panic!("{what}: response body failed: {e}"));
    let status = parts.status.as_u16();
    assert!((100..600).contains(&status), "{what}: status {status}");
    assert_ne!(
        status,
        500,
        "{what}: internal error: {}",
        String::from_utf8_lossy(&body)
    );
    let json = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json && !body.is_empty() {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&body) {
            panic!(
                "{what}: {status} says JSON but is not ({e}): {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    (Response::from_parts(parts, ()), body)
}

/// `Authorization` for guest/guest.
pub const GUEST_AUTH: &str = "Basic Z3Vlc3Q6Z3Vlc3Q=";

/// Draws choices from the fuzz input; yields zeros once it is used up (callers check
/// [`Bytes::is_empty`] to stop).
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 when used up).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// The next eight bytes, big-endian.
    pub fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for _ in 0..8 {
            v = (v << 8) | u64::from(self.u8());
        }
        v
    }

    /// A flag from the next byte's low bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Up to `n` raw bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    /// One of `choices`, or (for an index past them) a string of up to 255 raw bytes from the
    /// input, made UTF-8.
    pub fn pick_str(&mut self, choices: &[&str]) -> String {
        let i = usize::from(self.u8());
        match choices.get(i % (choices.len() + 1)) {
            Some(s) => (*s).to_string(),
            None => {
                let n = usize::from(self.u8());
                let mut s = String::from_utf8_lossy(self.take(n)).into_owned();
                while s.len() > 255 {
                    s.pop();
                }
                s
            }
        }
    }
}
