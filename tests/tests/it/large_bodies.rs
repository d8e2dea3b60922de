//! Large message bodies, which the broker reads straight into their body buffer ("direct body
//! reads", see `warren-core/src/connection/input.rs`): bodies around the size thresholds with
//! several frame sizes arrive byte for byte, and protocol errors and dropped clients in the
//! middle of a direct read are handled like anywhere else.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_codec::proto::{basic, AMQPClass};
use warren_codec::FRAME_BODY;
use warren_tests::raw::{content_header_bytes, frame_bytes, method_bytes, RawClient};
use warren_tests::{connect_uri, message_count, TestBroker};

const WAIT: Duration = Duration::from_secs(20);

/// Body sizes around the direct-read threshold (32 KiB payload), the default frame payload
/// (131064) and the assembler's preallocation bound (1 MiB).
const SIZES: [usize; 9] = [
    1,
    32 * 1024 - 1,
    32 * 1024,
    131_064,
    131_065,
    262_128,
    1024 * 1024,
    1024 * 1024 + 1,
    3 * 1024 * 1024 + 17,
];

/// A body whose bytes depend on their position and on `seed`, so a misplaced or repeated
/// chunk shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            (i.wrapping_mul(31)
                .wrapping_add(i >> 8)
                .wrapping_add(seed * 7)) as u8
        })
        .collect()
}

async fn declare(ch: &lapin::Channel, q: &str) {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

async fn consume(ch: &lapin::Channel, q: &str) -> lapin::Consumer {
    ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

async fn next_body(consumer: &mut lapin::Consumer) -> Vec<u8> {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery ok")
        .data
}

/// Asserts `got` is `want`, reporting the first difference rather than megabytes of bytes.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// Ready messages of `q`, on a connection of its own.
async fn ready_count(b: &TestBroker, q: &str) -> u32 {
    let (conn, ch) = b.channel().await;
    let n = message_count(&ch, q).await;
    conn.close(200, "bye".into()).await.expect("close");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_around_the_thresholds_arrive_intact() {
    let b = TestBroker::start().await;
    for frame_max in [131_072u32, 40_000, 4096] {
        let conn = connect_uri(&format!("{}?frame_max={frame_max}", b.uri())).await;
        assert_eq!(conn.configuration().frame_max(), frame_max);
        let ch = conn.create_channel().await.expect("channel");
        let q = format!("large-{frame_max}");
        declare(&ch, &q).await;
        let mut consumer = consume(&ch, &q).await;
        let bodies: Vec<Vec<u8>> = SIZES
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i as u32 + frame_max))
            .collect();
        // Back to back, so frames of consecutive messages share reads.
        for body in &bodies {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
        for (body, n) in bodies.iter().zip(SIZES) {
            let got = next_body(&mut consumer).await;
            assert_same(&got, body, &format!("{n} bytes, frame_max {frame_max}"));
        }
        conn.close(200, "bye".into()).await.expect("close");
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_on_two_channels_at_once() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let consumer_ch = conn.create_channel().await.expect("channel");
    let mut consumers = Vec::new();
    for q in ["two-a", "two-b"] {
        declare(&consumer_ch, q).await;
        consumers.push(consume(&consumer_ch, q).await);
    }
    let mut publishers = Vec::new();
    for (k, q) in ["two-a", "two-b"].into_iter().enumerate() {
        let ch = conn.create_channel().await.expect("channel");
        publishers.push(tokio::spawn(async move {
            for (i, &n) in SIZES.iter().enumerate().rev() {
                let body = pattern(n, (k * 100 + i) as u32);
                ch.basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    for (k, consumer) in consumers.iter_mut().enumerate() {
        for (i, &n) in SIZES.iter().enumerate().rev() {
            let got = next_body(consumer).await;
            assert_same(&got, &pattern(n, (k * 100 + i) as u32), "two channels");
        }
    }
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

/// The frames of a publish of `body` on channel 1 to queue `q`, with body frames of at most
/// `frame_payload` bytes.
fn publish_bytes(q: &str, body: &[u8], frame_payload: usize) -> Vec<u8> {
    let mut out = method_bytes(
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: q.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    out.extend(content_header_bytes(1, body.len() as u64));
    for chunk in body.chunks(frame_payload) {
        out.extend(frame_bytes(FRAME_BODY, 1, chunk));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_written_in_odd_pieces_arrive_intact() {
    // The broker sees frame headers, payloads and frame-end octets cut at every kind of place.
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    declare(&ch, "pieces").await;
    let mut consumer = consume(&ch, "pieces").await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    let bodies: Vec<Vec<u8>> = [300_000usize, 131_064, 40_000, 1024 * 1024 + 3]
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, i as u32 + 5))
        .collect();
    let mut wire = Vec::new();
    for body in &bodies {
        wire.extend(publish_bytes("pieces", body, 131_064));
    }
    let mut at = 0;
    for step in [
        1usize, 6, 7, 8, 9, 4000, 65_536, 131_071, 131_072, 131_073, 99_999,
    ]
    .into_iter()
    .cycle()
    {
        if at >= wire.len() {
            break;
        }
        let end = (at + step).min(wire.len());
        c.send_raw(&wire[at..end]).await;
        at = end;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for body in &bodies {
        let got = next_body(&mut consumer).await;
        assert_same(&got, body, "odd pieces");
    }
    c.close().await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

/// Opens a raw client with channel 1 and sends a publish to `q` announcing `body_size`.
async fn raw_publisher(b: &TestBroker, q: &str, body_size: u64) -> RawClient {
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_publish(1, "", q).await;
    c.send_raw(&content_header_bytes(1, body_size)).await;
    c
}

/// Checks the broker still serves other connections: a 1 MiB round trip on `q`.
async fn assert_healthy(b: &TestBroker, q: &str) {
    let (conn, ch) = b.channel().await;
    let mut consumer = consume(&ch, q).await;
    let body = pattern(1024 * 1024, 99);
    ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    assert_same(&next_body(&mut consumer).await, &body, "healthy round trip");
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_after_a_direct_payload_is_frame_error() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    declare(&ch, "bad-end").await;
    let mut c = raw_publisher(&b, "bad-end", 300_000).await;
    // A good first frame, then one whose end octet is wrong.
    c.send_raw(&frame_bytes(FRAME_BODY, 1, &pattern(131_064, 1)))
        .await;
    let mut f = frame_bytes(
        FRAME_BODY,
        1,
        b"0123456789abcdefXYZ".repeat(5000).as_slice(),
    );
    *f.last_mut().expect("a frame") = 0xCD;
    // The header and some payload first, so that the broker reads the rest directly.
    c.send_raw(&f[..20_000]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send_raw(&f[20_000..]).await;
    let (code, text, class, method) = c.expect_connection_close().await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - type 3, first 16 octets = <<\"0123456789abcdef\">>: {invalid_frame_end_marker,205}"
    );
    assert_eq!((class, method), (0, 0));
    c.send_close_ok().await;
    c.expect_closed_socket().await;
    assert_eq!(ready_count(&b, "bad-end").await, 0);
    assert_healthy(&b, "bad-end").await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_still_apply_to_large_body_frames() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    declare(&ch, "checks").await;

    // More body than announced: the same error as for any body frame.
    let mut c = raw_publisher(&b, "checks", 200_000).await;
    c.send_raw(&frame_bytes(FRAME_BODY, 1, &pattern(131_064, 2)))
        .await;
    c.send_raw(&frame_bytes(FRAME_BODY, 1, &pattern(131_064, 3)))
        .await;
    let (code, text, _, _) = c.expect_connection_close().await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - received 262128 bytes of content, more than the announced body size 200000"
    );

    // A method interleaved after a directly read body frame: 505.
    let mut c = raw_publisher(&b, "checks", 300_000).await;
    c.send_raw(&frame_bytes(FRAME_BODY, 1, &pattern(131_064, 4)))
        .await;
    c.send_publish(1, "", "checks").await;
    let (code, text, class, method) = c.expect_connection_close().await;
    assert_eq!(code, 505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
    );
    assert_eq!((class, method), (60, 40));

    // A body frame over frame_max: refused from its header.
    let mut c = raw_publisher(&b, "checks", 300_000).await;
    let mut f = frame_bytes(FRAME_BODY, 1, &[]);
    f[3..7].copy_from_slice(&131_073u32.to_be_bytes());
    c.send_raw(&f[..7]).await;
    let (code, _, _, _) = c.expect_connection_close().await;
    assert_eq!(code, 501);

    assert_eq!(ready_count(&b, "checks").await, 0);
    assert_healthy(&b, "checks").await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_dropping_mid_body_does_not_disturb_the_broker() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    declare(&ch, "dropped").await;
    // Cut inside a payload being read directly, right after a payload (before its frame-end
    // octet), and inside the next frame's header.
    for cut in [131_064 + 8 + 50_000, 2 * (131_064 + 8) - 1, 131_064 + 8 + 3] {
        let mut c = raw_publisher(&b, "dropped", 1024 * 1024).await;
        let mut wire = Vec::new();
        for chunk in pattern(1024 * 1024, 7).chunks(131_064) {
            wire.extend(frame_bytes(FRAME_BODY, 1, chunk));
        }
        c.send_raw(&wire[..cut]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(c);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ready_count(&b, "dropped").await, 0);
    assert_healthy(&b, "dropped").await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}
