//! Runs warren-perf's library entry point against an in-process Warren broker.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_core::{Broker, Config};

async fn broker() -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = CancellationToken::new();
    let task = tokio::spawn(warren_core::server::run_broker(
        Broker::new(Config::default()),
        listener,
        token.clone(),
    ));
    (format!("amqp://guest:guest@{addr}/%2f"), token, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_producer_one_consumer_loses_nothing() {
    let started = Instant::now();
    let (uri, token, task) = broker().await;
    let opts = warren_perf::Options::from_args([
        "warren-perf",
        "--uri",
        &uri,
        "-x",
        "1",
        "-y",
        "1",
        "-s",
        "100",
        "-q",
        "500",
        "-A",
        "50",
        "-c",
        "500",
        "-z",
        "1",
    ])
    .expect("flags parse");
    let mut out = Vec::new();
    let s = warren_perf::run(&opts, &mut out)
        .await
        .expect("run succeeds");
    assert!(s.sent > 0, "{s:?}");
    assert!(s.received_total > 0, "{s:?}");
    assert_eq!(s.received_total, s.sent, "{s:?}");
    assert_eq!(s.confirmed, s.sent, "{s:?}");
    assert_eq!(
        (s.missing, s.duplicates, s.out_of_order, s.foreign),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert!(s.latency.count > 0 && s.latency.p50_us > 0, "{s:?}");

    let rtt = warren_perf::Options::from_args(["warren-perf", "rtt", "--uri", &uri, "-z", "0.3"])
        .expect("flags parse");
    let r = warren_perf::run(&rtt, &mut out).await.expect("rtt runs");
    assert!(r.latency.count > 0 && r.out_of_order == 0, "{r:?}");

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Large bodies take the tool's zero-copy paths (writev from a shared pad; the consumer drops
/// payload in the kernel after reading the stamp): every message must still be counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_counted_exactly() {
    let (uri, token, task) = broker().await;
    for size in ["65536", "300001", "1048576"] {
        let opts = warren_perf::Options::from_args([
            "warren-perf",
            "--uri",
            &uri,
            "-s",
            size,
            "-a",
            "-x",
            "2",
            "-y",
            "2",
            "-z",
            "0.5",
        ])
        .expect("flags parse");
        let mut out = Vec::new();
        let s = warren_perf::run(&opts, &mut out)
            .await
            .expect("run succeeds");
        assert!(s.sent > 0, "{size}: {s:?}");
        assert_eq!(s.received_total, s.sent, "{size}: {s:?}");
        assert_eq!(
            (s.missing, s.duplicates, s.out_of_order, s.foreign),
            (0, 0, 0, 0),
            "{size}: {s:?}"
        );
    }
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

/// Drain mode: the backlog is published with no consumer attached, then drained; every
/// message must arrive exactly once, and the drain rate is reported. The tool runs on its own
/// runtime thread, as a separate client process would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_mode_publishes_then_drains_everything() {
    let (uri, token, task) = broker().await;
    let opts = warren_perf::Options::from_args([
        "warren-perf",
        "drain",
        "--uri",
        &uri,
        "-C",
        "600000",
        "-a",
        "-q",
        "1000",
        "-z",
        "120",
        "--drain",
        "5",
    ])
    .expect("flags parse");
    let s = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut out = Vec::new();
        rt.block_on(warren_perf::run(&opts, &mut out))
    })
    .join()
    .expect("client thread")
    .expect("run succeeds");
    assert_eq!(s.mode, warren_perf::Mode::Drain);
    assert_eq!(s.sent, 600_000, "{s:?}");
    assert_eq!(s.received, 0, "nothing consumed while publishing: {s:?}");
    assert_eq!(s.received_total, s.sent, "{s:?}");
    assert_eq!((s.missing, s.duplicates), (0, 0), "{s:?}");
    assert!(s.drain_rate > 0.0, "{s:?}");
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}
