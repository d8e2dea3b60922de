//! Times `/metrics/per-object` rendering for many queues (no HTTP, no assertions): creates a
//! broker (no data dir), declares `N` transient queues (default 10,000; `scrape_bench 50000`),
//! publishes nothing, and prints the render time and body size of several scrapes.
//!
//! `cargo run -p warren-metrics --example scrape_bench [--release] [N]`

use std::io::Write;
use std::time::Instant;
use warren_core::metadata::{Command, QueueDef};
use warren_core::{Broker, Config};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let broker = Broker::new(Config::default());
    for i in 0..n {
        let name = format!("bench-{i}");
        let def = QueueDef {
            vhost: "/".into(),
            name: name.clone(),
            durable: false,
            auto_delete: false,
            arguments: Default::default(),
            store_dir: warren_core::vhost::new_store_dir(&name),
            exclusive_owner: None,
        };
        if let Err(e) = broker.admin(Command::DeclareQueue(def)).await {
            let _ = writeln!(std::io::stderr(), "declare {name}: {e:?}");
            return;
        }
    }
    for per_object in [false, true, true, true, true, true] {
        let b = broker.clone();
        let t = Instant::now();
        let body = tokio::task::spawn_blocking(move || warren_metrics::render_text(&b, per_object))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let took = t.elapsed();
        let _ = writeln!(
            std::io::stderr(),
            "{} queues, {}: {:.1} ms, {} bytes",
            n,
            if per_object {
                "per-object"
            } else {
                "aggregated"
            },
            took.as_secs_f64() * 1000.0,
            body.len()
        );
    }
}
