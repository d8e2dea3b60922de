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

/// A stream replayed: 20,000 messages published with confirms into a stream, then a consumer
/// reads all of them from `first` (`--queue-arg`, `--consumer-arg`). (Several replaying
/// consumers would each count as duplicates: the tool's tracking assumes competing
/// consumers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_mode_replays_a_stream() {
    let (uri, token, task) = broker().await;
    let opts = warren_perf::Options::from_args([
        "warren-perf",
        "drain",
        "--uri",
        &uri,
        "-u",
        "perf-stream",
        "-f",
        "persistent",
        "--queue-arg",
        "x-queue-type=stream",
        "--consumer-arg",
        "x-stream-offset=first",
        "-C",
        "20000",
        "-c",
        "1000",
        "-q",
        "1000",
        "-A",
        "100",
        "-z",
        "60",
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
    assert_eq!(s.sent, 20_000, "{s:?}");
    assert_eq!(s.confirmed, s.sent, "{s:?}");
    assert_eq!(s.received, 0, "nothing consumed while publishing: {s:?}");
    assert_eq!(s.received_total, s.sent, "{s:?}");
    assert_eq!((s.missing, s.duplicates), (0, 0), "{s:?}");
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

/// Topology mode: 200 durable queues declared and bound by 4 clients one at a time, then
/// deleted; afterwards they are gone. With --keep-queues they stay, and --await-queue finds
/// one at the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_mode_declares_binds_and_deletes() {
    let (uri, token, task) = broker().await;
    let opts = warren_perf::Options::from_args([
        "warren-perf",
        "topology",
        "--uri",
        &uri,
        "--queues",
        "200",
        "--clients",
        "4",
        "--bind",
        "-u",
        "smoke-topo",
    ])
    .expect("flags parse");
    let mut out = Vec::new();
    let s = warren_perf::run(&opts, &mut out)
        .await
        .expect("topology runs");
    assert_eq!(s.mode, warren_perf::Mode::Topology);
    assert_eq!(
        (s.clients, s.declared, s.bound, s.deleted),
        (4, 200, 200, 200),
        "{s:?}"
    );
    assert_eq!(s.declare_quarters_s.len(), 4, "{s:?}");
    assert!(s.declare_quarters_s.iter().all(|q| *q > 0.0), "{s:?}");
    assert!(s.declare_s > 0.0 && s.declare_rate > 0.0, "{s:?}");
    assert!(
        (s.declare_ops_rate / s.declare_rate - 2.0).abs() < 1e-9,
        "{s:?}"
    );
    assert!(s.delete_s > 0.0 && s.delete_rate > 0.0, "{s:?}");
    assert_eq!(
        (s.latency.count, s.delete_latency.count),
        (200, 200),
        "{s:?}"
    );
    assert_eq!(s.window, 100, "{s:?}");
    // The summary round-trips through JSON (as side-by-side.sh reads it).
    let js = serde_json::to_string(&s).expect("serialises");
    let back: warren_perf::Summary = serde_json::from_str(&js).expect("parses");
    assert_eq!((back.declared, back.bound, back.deleted), (200, 200, 200));

    let target = warren_perf::conn::AmqpUri::parse(&uri).expect("uri");
    for name in ["smoke-topo-0-0", "smoke-topo-3-49"] {
        let mut conn = warren_perf::conn::Conn::connect(&target, "smoke check")
            .await
            .expect("connects");
        let err = conn
            .declare_queue_passive(name)
            .await
            .expect_err("the queue was deleted");
        assert!(err.to_string().contains("404"), "{name}: {err}");
    }

    let keep = warren_perf::Options::from_args([
        "warren-perf",
        "topology",
        "--uri",
        &uri,
        "--queues",
        "10",
        "--clients",
        "3",
        "--keep-queues",
        "-u",
        "smoke-kept",
    ])
    .expect("flags parse");
    let k = warren_perf::run(&keep, &mut out).await.expect("runs");
    assert_eq!((k.declared, k.bound, k.deleted), (10, 0, 0), "{k:?}");
    let probe = warren_perf::Options::from_args([
        "warren-perf",
        "topology",
        "--uri",
        &uri,
        "--await-queue",
        "smoke-kept-2-2",
        "--await-timeout",
        "5",
    ])
    .expect("flags parse");
    let p = warren_perf::run(&probe, &mut out)
        .await
        .expect("queue found");
    assert_eq!(p.await_attempts, 1, "{p:?}");
    let missing = warren_perf::Options::from_args([
        "warren-perf",
        "topology",
        "--uri",
        &uri,
        "--await-queue",
        "smoke-kept-2-3",
        "--await-timeout",
        "0.2",
    ])
    .expect("flags parse");
    let e = warren_perf::run(&missing, &mut out)
        .await
        .expect_err("clients 0 and 1 got 4 and 3 queues, client 2 got 3");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

/// A TLS front (self-signed rcgen certificate for `localhost`) relaying to the plain broker.
async fn tls_front(plain: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_over_tls_loses_nothing() {
    let (uri, token, task) = broker().await;
    let plain: std::net::SocketAddr = uri
        .trim_start_matches("amqp://guest:guest@")
        .trim_end_matches("/%2f")
        .parse()
        .expect("addr");
    let front = tls_front(plain).await;
    let tls_uri = format!("amqps://guest:guest@localhost:{}/%2f", front.port());
    let opts = warren_perf::Options::from_args([
        "warren-perf",
        "--uri",
        &tls_uri,
        "--tls-insecure",
        "-x",
        "1",
        "-y",
        "1",
        "-s",
        "16",
        "-a",
        "-z",
        "1",
    ])
    .expect("flags parse");
    let mut out = Vec::new();
    let s = warren_perf::run(&opts, &mut out)
        .await
        .expect("run over TLS succeeds");
    assert!(s.sent > 0, "{s:?}");
    assert_eq!(s.received_total, s.sent, "{s:?}");
    assert_eq!((s.missing, s.duplicates), (0, 0), "{s:?}");
    token.cancel();
    let _ = task.await;
}

fn run_blocking(opts: warren_perf::Options) -> warren_perf::Summary {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut out = Vec::new();
        rt.block_on(warren_perf::run(&opts, &mut out))
    })
    .join()
    .expect("client thread")
    .expect("run succeeds")
}

/// Replay mode: a stream filled with confirms by one run (kept), then three consumers replay
/// it from `first` at once, each getting all 5,000 messages in order; then one attaches at
/// offset 2,500 and gets 2,500.. (the stamps' sequence numbers are the offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_mode_reads_a_kept_stream_from_first_and_from_an_offset() {
    let (uri, token, task) = broker().await;
    let args = |extra: &[&str]| {
        let mut a = vec!["warren-perf", "--uri", uri.as_str(), "-u", "perf-replay"];
        a.extend_from_slice(extra);
        warren_perf::Options::from_args(a).expect("flags parse")
    };
    let fill = run_blocking(args(&[
        "-y",
        "0",
        "-f",
        "persistent",
        "--queue-arg",
        "x-queue-type=stream",
        "-C",
        "5000",
        "-c",
        "500",
        "-z",
        "60",
        "--keep-queues",
    ]));
    assert_eq!((fill.sent, fill.confirmed), (5000, 5000), "{fill:?}");

    let all = run_blocking(args(&[
        "replay",
        "-y",
        "3",
        "-q",
        "500",
        "-A",
        "50",
        "-C",
        "5000",
        "--consumer-arg",
        "x-stream-offset=first",
        "-z",
        "60",
    ]));
    assert_eq!(all.received_total, 15_000, "{all:?}");
    assert_eq!((all.first_seq, all.last_seq), (0, 4999), "{all:?}");
    assert_eq!(
        (all.missing, all.duplicates, all.out_of_order, all.foreign),
        (0, 0, 0, 0),
        "{all:?}"
    );
    assert_eq!(all.attach.count, 3, "{all:?}");

    let mid = run_blocking(args(&[
        "replay",
        "-q",
        "10",
        "-C",
        "10",
        "--consumer-arg",
        "x-stream-offset=2500",
    ]));
    assert_eq!(mid.received_total, 10, "{mid:?}");
    assert_eq!((mid.first_seq, mid.last_seq), (2500, 2509), "{mid:?}");
    assert_eq!((mid.missing, mid.duplicates), (0, 0), "{mid:?}");
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}
