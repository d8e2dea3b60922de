//! Helpers for black-box tests: start a Warren broker in-process on an ephemeral loopback port
//! and connect real AMQP clients to it over TCP.

pub mod api;
pub mod drain;
pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_core::clock::{Clock, ManualClock};
use warren_core::{Broker, Config};

/// Connects lapin to `uri`, failing the test if that takes more than 10 s.
pub async fn connect_uri(uri: &str) -> lapin::Connection {
    tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("connect in time")
    .expect("lapin connects")
}

/// Ready messages of `queue`, via a passive declare on `ch`.
pub async fn message_count(ch: &lapin::Channel, queue: &str) -> u32 {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .expect("passive declare")
        .message_count()
}

/// A running broker; shut down when dropped.
pub struct TestBroker {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Address of its management HTTP API (`http://{http}/api/...`).
    pub http: SocketAddr,
    /// Address of its Prometheus endpoint (`http://{metrics}/metrics`).
    pub metrics: SocketAddr,
    /// The broker state (for white-box checks).
    pub broker: Arc<Broker>,
    /// The broker's clock, when it runs on a manual one ([`TestBroker::advance`]).
    pub clock: Option<Arc<ManualClock>>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestBroker {
    /// Its management API as `guest`.
    pub fn api(&self) -> api::Api {
        api::Api::new(self.http, "guest", Some("guest"))
    }

    /// Its management API as `user` with `pass` (`None`: no credentials).
    pub fn api_as(&self, user: &str, pass: Option<&str>) -> api::Api {
        api::Api::new(self.http, user, pass)
    }

    /// Starts a broker with default settings.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    /// Starts a broker with `config` (its bind address and port are replaced by 127.0.0.1:0).
    /// Nothing is kept on disk.
    pub async fn start_with(config: Config) -> Self {
        Self::launch(Broker::new(config)).await
    }

    /// Starts a broker with default settings on a manual clock: time moves only with
    /// [`TestBroker::advance`].
    pub async fn start_manual() -> Self {
        let (clock, handle) = Clock::manual();
        let mut b = Self::launch(Broker::with_clock(Config::default(), clock)).await;
        b.clock = Some(handle);
        b
    }

    /// Starts a broker that keeps durable state in `data_dir` (recovering what is there).
    pub async fn start_durable(data_dir: &std::path::Path) -> Self {
        Self::start_durable_with(data_dir, Config::default()).await
    }

    /// Like [`Self::start_durable`] with other settings.
    pub async fn start_durable_with(data_dir: &std::path::Path, config: Config) -> Self {
        Self::start_durable_on(data_dir, config, Clock::System).await
    }

    /// Like [`Self::start_durable`], on a manual clock.
    pub async fn start_durable_manual(data_dir: &std::path::Path) -> Self {
        Self::start_durable_manual_at(data_dir, Duration::ZERO).await
    }

    /// Like [`Self::start_durable_manual`], on a manual clock that starts `start` later (as a
    /// restart after that much time sees it).
    pub async fn start_durable_manual_at(data_dir: &std::path::Path, start: Duration) -> Self {
        let (clock, handle) = Clock::manual_at(start);
        let mut b = Self::start_durable_on(data_dir, Config::default(), clock).await;
        b.clock = Some(handle);
        b
    }

    async fn start_durable_on(
        data_dir: &std::path::Path,
        mut config: Config,
        clock: Clock,
    ) -> Self {
        config.storage.data_dir = data_dir.to_path_buf();
        let broker = tokio::task::spawn_blocking(move || Broker::open_with_clock(config, clock))
            .await
            .expect("join")
            .expect("broker opens its data dir");
        Self::launch(broker).await
    }

    /// Moves the manual clock forward by `by`, and waits until every queue timer due by then
    /// has fired.
    pub async fn advance(&self, by: Duration) {
        let clock = self.clock.as_ref().expect("started on a manual clock");
        clock.advance(by);
        let now = clock.now();
        tokio::time::timeout(Duration::from_secs(10), self.broker.timers.settled(now))
            .await
            .expect("queue timers settled");
    }

    async fn launch(broker: Arc<Broker>) -> Self {
        init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = http_listener.local_addr().expect("addr");
        tokio::spawn(warren_http::serve(
            broker.clone(),
            http_listener,
            shutdown.clone(),
        ));
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = metrics_listener.local_addr().expect("addr");
        tokio::spawn(warren_metrics::serve(
            broker.clone(),
            metrics_listener,
            shutdown.clone(),
        ));
        let task = tokio::spawn(warren_core::server::run_broker(
            broker.clone(),
            listener,
            shutdown.clone(),
        ));
        Self {
            addr,
            http,
            metrics,
            broker,
            clock: None,
            shutdown,
            task: Some(task),
        }
    }

    /// An `amqp://` URI for this broker.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Connects lapin.
    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.uri(), lapin::ConnectionProperties::default())
            .await
            .expect("lapin connects")
    }

    /// Connects lapin and opens one channel.
    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let c = self.connect().await;
        let ch = c.create_channel().await.expect("channel opens");
        (c, ch)
    }

    /// Stops the broker and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Waits until `f` is true or `timeout` passes; returns the last value of `f`.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
