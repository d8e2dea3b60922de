//! Listeners, the accept loop and broker-wide shutdown.
//!
//! The broker listens on a list of listeners (`amqp.bind`:`amqp.port` and `[[listeners]]`),
//! one accept task each. A TCP connection is served by `connection::serve_tcp`; any other byte
//! stream (TLS, a Unix socket) by [`serve_connection`].

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::connection;
use crate::Config;

/// Binds the AMQP listener configured in `config.amqp`.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind((config.amqp.bind.as_str(), config.amqp.port)).await
}

/// Binds every AMQP listener of `config` (`amqp` first); the error names the one that failed.
pub async fn bind_all(config: &Config) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    for l in config.amqp_listeners() {
        let listener = TcpListener::bind((l.bind.as_str(), l.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", l.bind, l.port))?;
        out.push(listener);
    }
    Ok(out)
}

/// Runs the broker on `listener` until `shutdown` is cancelled, then closes every client
/// connection with 320 CONNECTION_FORCED and returns once they are gone. Durable state lives in
/// `config.storage.data_dir`, which the caller has opened and locked.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_all(config, vec![listener], shutdown).await
}

/// Like [`run`], on several listeners.
pub async fn run_all(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .map_err(std::io::Error::other)??;
    import_configured_definitions(&broker).await?;
    let tls = bind_tls(&broker.config)
        .await
        .map_err(std::io::Error::other)?;
    run_broker_with(broker, listeners, tls, shutdown).await
}

/// Imports `definitions.load`, if set, before any client is served; a malformed file or a
/// refused entry is a startup error naming the place.
pub async fn import_configured_definitions(broker: &Arc<Broker>) -> std::io::Result<()> {
    let path = broker.config.definitions.load.clone();
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    let p = path.clone();
    let defs = tokio::task::spawn_blocking(move || crate::broker::definitions::load(&p))
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    broker
        .import_definitions(defs)
        .await
        .map_err(|e| std::io::Error::other(format!("definitions file {}: {e}", path.display())))?;
    Ok(())
}

/// Like [`run`], with a broker built by the caller (tests inspect it).
pub async fn run_broker(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_broker_on(broker, vec![listener], shutdown).await
}

/// Serves one AMQP connection over any byte stream (TLS, a Unix socket, a test pipe) until it
/// closes or `shutdown` is cancelled.
pub async fn serve_connection<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    connection::serve_stream(
        broker,
        stream,
        peer,
        shutdown,
        None,
        connection::Transport::default(),
    )
    .await
}

/// A TLS listener: its socket and the acceptor built from `[tls]`.
pub struct TlsListener {
    /// The bound socket.
    pub listener: TcpListener,
    /// The server configuration.
    pub acceptor: TlsAcceptorCell,
}

/// The TLS listener's acceptor, replaceable while it runs: a reload (SIGHUP) reads the
/// certificate and key again; new connections get the new ones, open ones keep theirs.
#[derive(Clone)]
pub struct TlsAcceptorCell(Arc<parking_lot::RwLock<tokio_rustls::TlsAcceptor>>);

impl TlsAcceptorCell {
    /// The acceptor new connections use.
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.0.read().clone()
    }

    /// Builds the acceptor from `cfg` again (reads files: call it off the event loop); on an
    /// error the old one stays in use.
    pub fn reload(&self, cfg: &crate::config::TlsConfig) -> Result<(), String> {
        let fresh = crate::tls::acceptor(cfg)?;
        *self.0.write() = fresh;
        Ok(())
    }
}

/// Binds the TLS listener when `tls.cert` is set; the error names the file or address.
pub async fn bind_tls(config: &Config) -> Result<Option<TlsListener>, String> {
    if !config.tls.enabled() {
        return Ok(None);
    }
    let acceptor = crate::tls::acceptor(&config.tls)?;
    let t = &config.tls;
    let listener = TcpListener::bind((t.bind.as_str(), t.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{} (TLS): {e}", t.bind, t.port))?;
    Ok(Some(TlsListener {
        listener,
        acceptor: TlsAcceptorCell(Arc::new(parking_lot::RwLock::new(acceptor))),
    }))
}

/// One TLS client: the handshake (bounded by `amqp.handshake_timeout`; a plain AMQP client,
/// garbage or a stall just ends here), then the connection over the TLS stream.
async fn serve_tls(
    broker: Arc<Broker>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let transport = connection::Transport {
        local: stream.local_addr().ok(),
        tls: true,
    };
    let limit = std::time::Duration::from_secs(broker.config.amqp.handshake_timeout.max(1));
    let tls = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limit, acceptor.accept(stream)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        }
    };
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::login_name(c, &broker.config.tls));
    connection::serve_stream(broker, tls, peer, shutdown, cn, transport).await
}

/// Runs `broker` on `listeners` until `shutdown`, then closes every connection.
pub async fn run_broker_on(
    broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_broker_with(broker, listeners, None, shutdown).await
}

/// Like [`run_broker_on`], with a TLS listener too.
pub async fn run_broker_with(
    broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
    tls: Option<TlsListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    broker.timers.start();
    let total_ram = proc_kb("/proc/meminfo", "MemTotal:");
    spawn_memory_monitor(broker.clone(), total_ram, shutdown.clone());
    let disk_limit = broker.config.disk.limit_bytes(total_ram.unwrap_or(0));
    crate::disk_monitor::spawn(broker.clone(), disk_limit, shutdown.clone());
    let tracker = TaskTracker::new();
    let mut accept_loops = Vec::new();
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            broker.add_listener("amqp", addr);
        }
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let tracker = tracker.clone();
        accept_loops.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => {
                            let broker = broker.clone();
                            let shutdown = shutdown.clone();
                            tracker.spawn(connection::serve_tcp(broker, stream, peer, shutdown));
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }
    if let Some(TlsListener { listener, acceptor }) = tls {
        if let Ok(addr) = listener.local_addr() {
            broker.add_listener("amqp/ssl", addr);
        }
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let tracker = tracker.clone();
        accept_loops.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => {
                            let conn = serve_tls(broker.clone(), acceptor.current(), stream, peer, shutdown.clone());
                            tracker.spawn(conn);
                        }
                        Err(e) => {
                            warn!(error = %e, "accept failed (TLS)");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }
    shutdown.cancelled().await;
    for a in accept_loops {
        let _ = a.await;
    }
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
fn spawn_memory_monitor(broker: Arc<Broker>, total: Option<u64>, shutdown: CancellationToken) {
    let Some(total) = total else {
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
