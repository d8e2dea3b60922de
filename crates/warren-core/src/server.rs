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
