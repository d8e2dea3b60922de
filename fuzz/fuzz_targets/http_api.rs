//! The management HTTP API's request handling: the real axum router of `warren_http::router`
//! for a fresh in-memory broker, called in process with `tower::ServiceExt::oneshot`.
//!
//! The input is up to 8 requests separated by a line `===`, each written like HTTP/1.1:
//!
//! ```text
//! PUT /api/queues/%2F/q?x=1
//! content-type: application/json
//!
//! {"durable": true}
//! ```
//!
//! An unknown method is taken as it is when it is a valid token (else GET); bytes a URI may not
//! hold are percent-encoded; header lines that are not valid are skipped. A request without an
//! `authorization` header gets guest/guest's (a line `authorization: none` sends none). Every
//! response must come back (no panic, no hang) with a status below 600 and not 500, and a body
//! that says it is JSON must parse.
#![no_main]

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use warren_fuzz::{runtime, send, EXEC_LIMIT, GUEST_AUTH};

fn split_once<'a>(s: &'a [u8], sep: &[u8]) -> (&'a [u8], Option<&'a [u8]>) {
    match s.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&s[..i], Some(&s[i + sep.len()..])),
        None => (s, None),
    }
}

fn uri(raw: &[u8]) -> Uri {
    let mut s = String::new();
    if raw.first() != Some(&b'/') {
        s.push('/');
    }
    for &c in raw {
        let keep = c.is_ascii_alphanumeric() || b"/?&=%-._~!$'()*+,;:@".contains(&c);
        if keep {
            s.push(char::from(c));
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s.parse()
        .unwrap_or_else(|_| Uri::from_static("/api/overview"))
}

fn request(raw: &[u8]) -> Option<Request<Body>> {
    let (head, body) = split_once(raw, b"\n\n");
    let mut lines = head.split(|&c| c == b'\n');
    let first = lines.next()?;
    let (method, target) = split_once(first, b" ");
    let method = Method::from_bytes(method).unwrap_or(Method::GET);
    let mut req = Request::builder()
        .method(method)
        .uri(uri(target.unwrap_or(b"/")));
    let mut auth = false;
    for line in lines {
        let (name, value) = split_once(line, b":");
        let Some(value) = value else { continue };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if name == axum::http::header::AUTHORIZATION {
            auth = true;
            if value.as_bytes() == b"none" {
                continue;
            }
        }
        req = req.header(name, value);
    }
    if !auth {
        req = req.header(axum::http::header::AUTHORIZATION, GUEST_AUTH);
    }
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    req = req.extension(axum::extract::ConnectInfo(peer));
    req.body(Body::from(body.unwrap_or(b"").to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let run = async {
            let broker = warren_fuzz::broker();
            let app = warren_http::router(broker);
            let mut rest = Some(data);
            for _ in 0..8 {
                let Some(r) = rest else { break };
                let (one, next) = split_once(r, b"\n===\n");
                rest = next;
                if let Some(req) = request(one) {
                    send(&app, req).await;
                }
            }
        };
        if tokio::time::timeout(EXEC_LIMIT, run).await.is_err() {
            panic!("requests did not finish within {EXEC_LIMIT:?}");
        }
    });
});
