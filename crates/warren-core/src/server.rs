//! Accept loop and broker-wide shutdown.

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::connection;
use crate::Config;

/// Binds the AMQP listener configured in `config.amqp`.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind((config.amqp.bind.as_str(), config.amqp.port)).await
}

/// Runs the broker on `listener` until `shutdown` is cancelled, then closes every client
/// connection with 320 CONNECTION_FORCED and returns once they are gone. Durable state lives in
/// `config.storage.data_dir`, which the caller has opened and locked.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .map_err(std::io::Error::other)??;
    run_broker(broker, listener, shutdown).await
}

/// Like [`run`], with a broker built by the caller (tests inspect it).
pub async fn run_broker(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    broker.timers.start();
    spawn_memory_monitor(broker.clone(), shutdown.clone());
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let broker = broker.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(connection::serve(broker, stream, peer, shutdown));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    info!(
        connections = tracker.len(),
        "shutting down: closing client connections"
    );
    tracker.wait().await;
    let b = broker.clone();
    let _ = tokio::task::spawn_blocking(move || b.shutdown()).await;
    Ok(())
}

/// A `/proc` value in kB (e.g. `VmRSS:` of `/proc/self/status`, `MemTotal:` of `/proc/meminfo`),
/// in bytes.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Samples the broker's resident memory twice a second and raises or clears the memory alarm
/// (`Broker::alarm`) against `memory.high_watermark`, as RabbitMQ's `vm_memory_monitor` does.
fn spawn_memory_monitor(broker: Arc<Broker>, shutdown: CancellationToken) {
    let Some(total) = proc_kb("/proc/meminfo", "MemTotal:") else {
        warn!("cannot read the machine's memory size: memory alarm disabled");
        return;
    };
    let limit = broker.config.memory.limit_bytes(total);
    info!(limit_mb = limit / (1024 * 1024), "memory alarm threshold");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        // Only changes of the measured state are published, so the alarm can also be set by
        // hand (tests) without the monitor undoing it at once.
        let mut last = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(rss) = proc_kb("/proc/self/status", "VmRSS:") else {
                continue;
            };
            let on = rss > limit;
            if last != on {
                last = on;
                if on {
                    warn!(
                        rss_mb = rss / (1024 * 1024),
                        limit_mb = limit / (1024 * 1024),
                        "memory alarm set: blocking publishers"
                    );
                } else {
                    info!(rss_mb = rss / (1024 * 1024), "memory alarm cleared");
                }
                broker.alarm.send_replace(on);
            }
        }
    });
}
