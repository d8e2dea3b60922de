//! The definitions importer (`warren_core::broker::definitions::parse` and
//! `Broker::import_definitions`, what `definitions.load` at startup and
//! `POST /api/definitions` run) on arbitrary bytes, against a fresh in-memory broker.
//!
//! No panic, whatever the input. When the import succeeds, the broker's export
//! (`GET /api/definitions` through the real router) must be JSON that parses and imports
//! cleanly into another fresh broker, whose export is the same again: what Warren exports, it
//! (and RabbitMQ) must take back.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use warren_core::broker::definitions;
use warren_fuzz::{runtime, send, EXEC_LIMIT, GUEST_AUTH};

/// The export, or `None` when guest may no longer read it (the input changed guest).
async fn export(app: &axum::Router) -> Option<Value> {
    let req = Request::get("/api/definitions")
        .header("authorization", GUEST_AUTH)
        .body(Body::empty())
        .expect("request");
    let (resp, body) = send(app, req).await;
    if resp.status() == 401 || resp.status() == 403 {
        return None;
    }
    assert_eq!(
        resp.status(),
        200,
        "export: {}",
        String::from_utf8_lossy(&body)
    );
    let mut v: Value = serde_json::from_slice(&body).expect("export is JSON");
    // The node's own fields, which differ between brokers.
    if let Some(o) = v.as_object_mut() {
        o.remove("rabbitmq_version");
        o.remove("rabbit_version");
        o.remove("product_version");
        o.remove("product_name");
        // Entries come in no set order (neither RabbitMQ's nor Warren's export promise one).
        for list in o.values_mut() {
            if let Value::Array(items) = list {
                items.sort_by_cached_key(|i| i.to_string());
            }
        }
    }
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(defs) = definitions::parse(&text) else {
        return;
    };
    runtime().block_on(async {
        let run = async {
            let broker = warren_fuzz::broker();
            if broker.import_definitions(defs).await.is_err() {
                return;
            }
            let app = warren_http::router(broker.clone());
            let Some(first) = export(&app).await else {
                return;
            };
            let text = first.to_string();
            let again = definitions::parse(&text)
                .unwrap_or_else(|e| panic!("the export does not parse: {e}\n{text}"));
            let other = warren_fuzz::broker();
            if let Err(e) = other.import_definitions(again).await {
                panic!("the export does not import: {e}\n{text}");
            }
            let second = export(&warren_http::router(other)).await;
            assert_eq!(Some(first), second, "export, import, export is not stable");
        };
        if tokio::time::timeout(EXEC_LIMIT, run).await.is_err() {
            panic!("import did not finish within {EXEC_LIMIT:?}");
        }
    });
});
