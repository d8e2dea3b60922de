//! Connection-level behaviour with real clients: many channels, negotiated frame size and
//! heartbeats, heartbeat timeouts, and many concurrent connections.

use std::time::{Duration, Instant};

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_codec::proto::{basic, AMQPClass};
use warren_codec::{Frame, FRAME_BODY};
use warren_tests::raw::{content_header_bytes, frame_bytes, Handshake, RawClient};
use warren_tests::{connect_uri, TestBroker};

/// Declares `q`, publishes `body` to it and gets it back on `ch`.
async fn round_trip(ch: &lapin::Channel, q: &str, body: &[u8]) {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let got = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a message");
    assert_eq!(got.delivery.data.len(), body.len());
    assert!(got.delivery.data == body, "body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_channels_on_one_connection() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let mut chans = Vec::new();
    for _ in 0..100 {
        chans.push(conn.create_channel().await.expect("channel opens"));
    }
    let mut ids: Vec<u16> = chans.iter().map(|c| c.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 100, "distinct channel ids");
    // Each channel works on its own.
    for (i, ch) in chans.iter().enumerate().step_by(25) {
        ch.queue_declare(
            format!("hc-{i}").as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare on a channel");
    }
    for ch in &chans {
        ch.close(200, "bye".into()).await.expect("channel closes");
    }
    assert!(conn.status().connected());
    let ch = conn.create_channel().await.expect("one more channel");
    round_trip(&ch, "hc-after", b"after 100 channels").await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_frame_max_splits_large_messages() {
    let b = TestBroker::start().await;
    let conn = connect_uri(&format!("{}?frame_max=8192", b.uri())).await;
    assert_eq!(conn.configuration().frame_max(), 8192);
    let ch = conn.create_channel().await.expect("channel");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    round_trip(&ch, "big-8192", &body).await;
    // And through a consumer.
    ch.basic_publish(
        "".into(),
        "big-8192".into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let mut consumer = ch
        .basic_consume(
            "big-8192".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let d = tokio::time::timeout(
        Duration::from_secs(5),
        futures_lite::StreamExt::next(&mut consumer),
    )
    .await
    .expect("delivery in time")
    .expect("a delivery")
    .expect("ok delivery");
    assert!(d.data == body);
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

#[tokio::test]
async fn deliveries_respect_negotiated_frame_max_on_the_wire() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open_with(
        b.addr,
        Handshake {
            tune: Some((2047, 8192, 0)),
            ..Default::default()
        },
    )
    .await;
    c.open_channel(1).await;
    c.send_method(
        1,
        AMQPClass::Queue(warren_codec::proto::queue::AMQPMethod::Declare(
            warren_codec::proto::queue::Declare {
                queue: "wire".into(),
                ..Default::default()
            },
        )),
    )
    .await;
    let _declare_ok = c.expect_method().await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    c.send_publish(1, "", "wire").await;
    let mut frames = content_header_bytes(1, body.len() as u64);
    for part in body.chunks(8192 - 8) {
        frames.extend_from_slice(&frame_bytes(FRAME_BODY, 1, part));
    }
    c.send_raw(&frames).await;
    c.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "wire".into(),
            no_ack: true,
        })),
    )
    .await;
    match c.expect_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => {}
        other => panic!("expected basic.get-ok, got {other:?}"),
    }
    match c.read_frame().await {
        Frame::Header { channel: 1, header } => assert_eq!(header.body_size, 100_000),
        other => panic!("expected a content header, got {other:?}"),
    }
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    while got.len() < body.len() {
        match c.read_frame().await {
            Frame::Body {
                channel: 1,
                payload,
            } => {
                sizes.push(payload.len());
                got.extend_from_slice(&payload);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert!(got == body);
    assert!(sizes.iter().all(|s| *s <= 8192 - 8), "{sizes:?}");
    assert_eq!(sizes.len(), 100_000usize.div_ceil(8184));
    c.close().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_heartbeat() {
    let b = TestBroker::start().await;
    // Client asks for 5 s, server proposes 60 s: the smaller wins.
    let conn = connect_uri(&format!("{}?heartbeat=5", b.uri())).await;
    assert_eq!(conn.configuration().heartbeat(), 5);
    conn.close(200, "bye".into()).await.expect("close");
    // Client asks for nothing: it takes the server's 60 s.
    let conn = b.connect().await;
    assert_eq!(conn.configuration().heartbeat(), 60);
    assert_eq!(conn.configuration().frame_max(), 131_072);
    assert_eq!(conn.configuration().channel_max(), 2047);
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_with_heartbeats_stays_connected() {
    let b = TestBroker::start().await;
    let conn = connect_uri(&format!("{}?heartbeat=1", b.uri())).await;
    assert_eq!(conn.configuration().heartbeat(), 1);
    let ch = conn.create_channel().await.expect("channel");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(conn.status().connected(), "dropped while idle");
    round_trip(&ch, "idle-hb", b"after idling").await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

#[tokio::test]
async fn silent_client_is_dropped_after_missed_heartbeats() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open_with(
        b.addr,
        Handshake {
            tune: Some((2047, 131_072, 1)),
            ..Default::default()
        },
    )
    .await;
    let t0 = Instant::now();
    // Read (and ignore) the server's heartbeats; send nothing.
    let mut heartbeats = 0;
    let closed = loop {
        match c.try_read_frame(Duration::from_secs(6)).await {
            Ok(Frame::Heartbeat) => heartbeats += 1,
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(warren_tests::raw::ReadEnd::Closed) => break true,
            Err(warren_tests::raw::ReadEnd::Timeout) => break false,
        }
    };
    let waited = t0.elapsed();
    assert!(closed, "the server did not drop a silent client");
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_millis(4500),
        "dropped after {waited:?}"
    );
    assert!(heartbeats >= 1, "the server sent no heartbeats");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections() {
    const N: usize = 1000;
    let b = TestBroker::start().await;
    let addr = b.addr;
    let t0 = Instant::now();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::with_capacity(N);
    for _ in 0..N {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::open(addr).await;
            c.open_channel(1).await;
            // Everyone is open at the same time before anyone closes.
            barrier.wait().await;
            c.close().await;
            // The client closes the socket after close-ok (the broker leaves it to the client).
            drop(c);
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(20), async {
        for t in tasks {
            t.await.expect("client task");
        }
    })
    .await;
    assert!(all.is_ok(), "1000 connections did not finish in time");
    tracing::info!(elapsed = ?t0.elapsed(), "1000 connections opened and closed");
    let (conn, ch) = b.channel().await;
    round_trip(&ch, "after-1000", b"still serving").await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

/// A connection over a byte stream that is not a bare TCP socket (the path TLS and Unix
/// sockets take: the writer task owns the write half, no direct writes): lapin publishes,
/// consumes and gets, with small and multi-frame bodies, and closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_any_byte_stream_works() {
    use futures_lite::StreamExt;
    let broker = warren_core::Broker::new(warren_core::Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    {
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while let Ok((s, peer)) = listener.accept().await {
                // BufStream hides the TcpStream: the generic stream path serves it.
                let stream = tokio::io::BufStream::new(s);
                tokio::spawn(warren_core::server::serve_connection(
                    broker.clone(),
                    stream,
                    peer,
                    shutdown.clone(),
                ));
            }
        });
    }
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    let conn = connect_uri(&uri).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "stream-q".into(),
        lapin::options::QueueDeclareOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("declare");
    let big = vec![b'z'; 300_000];
    for body in [&b"small"[..], &big[..]] {
        ch.basic_publish(
            "".into(),
            "stream-q".into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let mut consumer = ch
        .basic_consume(
            "stream-q".into(),
            "c".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume");
    for expected in [&b"small"[..], &big[..]] {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
            .await
            .expect("delivery in time")
            .expect("a delivery")
            .expect("ok");
        assert_eq!(&d.data[..], expected);
    }
    conn.close(200, "bye".into()).await.expect("clean close");
    shutdown.cancel();
}
