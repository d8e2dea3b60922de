//! Protocol foundation: the protocol header, the frame layer, channel bookkeeping, the handshake
//! and shutdown, checked byte-for-byte against RabbitMQ 3.10.8's replies with a raw client. After
//! every failure a second, healthy lapin connection must still work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_codec::proto::{basic, channel, queue, AMQPClass};
use warren_codec::{FRAME_BODY, FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER};
use warren_core::broker::AuthFailure;
use warren_core::{Broker, Config};
use warren_tests::raw::{content_header_bytes, frame_bytes, method_bytes, RawClient, ReadEnd};
use warren_tests::TestBroker;

static QUEUE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh lapin connection can declare a queue, publish to it and get the message back.
async fn assert_healthy(b: &TestBroker) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let (c, ch) = b.channel().await;
        let q = format!("healthy-{}", QUEUE_SEQ.fetch_add(1, Ordering::Relaxed));
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare on a healthy connection");
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"still alive",
            BasicProperties::default(),
        )
        .await
        .expect("publish on a healthy connection");
        let got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("the message is there");
        assert_eq!(&got.delivery.data[..], b"still alive");
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
        c.close(200, "bye".into()).await.expect("close");
    })
    .await
    .expect("healthy connection round trip timed out");
}

fn declare(q: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: q.into(),
        ..Default::default()
    }))
}

/// Reads a `connection.close`, answers `close-ok`, and expects the socket to close.
async fn expect_close_and_finish(c: &mut RawClient) -> (u16, String, u16, u16) {
    let r = c.expect_connection_close().await;
    let _ = c.try_send_raw(&method_bytes(0, &close_ok())).await;
    c.expect_closed_socket().await;
    r
}

fn close_ok() -> AMQPClass {
    AMQPClass::Connection(warren_codec::proto::connection::AMQPMethod::CloseOk(
        warren_codec::proto::connection::CloseOk {},
    ))
}

async fn bad_header(b: &TestBroker, header: &[u8]) {
    let mut c = RawClient::tcp(b.addr).await;
    c.send_raw(header).await;
    let reply = c.read_raw(8, Duration::from_secs(5)).await;
    assert_eq!(
        reply, PROTOCOL_HEADER,
        "the server answers with its own header"
    );
    c.expect_closed_socket().await;
}

#[tokio::test]
async fn bad_protocol_header_http_get() {
    let b = TestBroker::start().await;
    bad_header(&b, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn bad_protocol_header_wrong_revision() {
    let b = TestBroker::start().await;
    bad_header(&b, b"AMQP\x00\x00\x09\x02").await;
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_from_its_header() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    // Only the 7-byte header announcing 200000 bytes: the payload is never sent, so the
    // server must answer without waiting for it.
    c.send_raw(&[FRAME_METHOD, 0, 1, 0x00, 0x03, 0x0d, 0x40])
        .await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,200000,131064}"
    );
    assert_eq!((class, method), (0, 0));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn bad_frame_end_octet() {
    let b = TestBroker::start().await;
    // An empty heartbeat frame with a wrong end octet.
    let mut c = RawClient::open(b.addr).await;
    c.send_raw(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0x00]).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - type 8, all octets = <<>>: {invalid_frame_end_marker,0}"
    );
    assert_eq!((class, method), (0, 0));

    // A channel.open whose end octet is wrong: RabbitMQ prints the payload (`payload_snippet`).
    let mut c = RawClient::open(b.addr).await;
    let mut f = method_bytes(
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    *f.last_mut().expect("a frame") = 0x00;
    c.send_raw(&f).await;
    let (code, text, _, _) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - type 1, all octets = <<0,20,0,10,0>>: {invalid_frame_end_marker,0}"
    );
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn garbage_after_handshake() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    // 64 pseudo-random bytes whose first octet is not a frame type.
    let mut x: u32 = 0x9E37_79B9;
    let mut garbage: Vec<u8> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    garbage[0] = 0x41;
    c.send_raw(&garbage).await;
    let (code, text, _, _) = c.expect_connection_close().await;
    assert_eq!(code, 501, "{text}");
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    // The server has lost sync with us: it closes the socket even without close-ok.
    assert!(
        c.wait_closed(Duration::from_secs(8)).await,
        "socket not closed after a fatal frame error"
    );
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn method_on_unopened_channel() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.send_method(5, declare("q-unopened")).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 504);
    assert_eq!(text, "CHANNEL_ERROR - expected 'channel.open'");
    assert_eq!((class, method), (50, 10));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn second_channel_open() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 504);
    assert_eq!(text, "CHANNEL_ERROR - second 'channel.open' seen");
    assert_eq!((class, method), (20, 10));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn heartbeat_on_a_channel() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_raw(&[FRAME_HEARTBEAT, 0, 1, 0, 0, 0, 0, 0xCE]).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 505);
    assert_eq!(text, "UNEXPECTED_FRAME - type 8, all octets = <<>>");
    assert_eq!((class, method), (0, 0));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn content_header_without_method() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_raw(&content_header_bytes(1, 5)).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    );
    assert_eq!((class, method), (0, 0));

    // A stray body frame: same reply.
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_raw(&frame_bytes(FRAME_BODY, 1, b"hello")).await;
    let (code, text, _, _) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    );
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn method_between_publish_and_its_header() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_publish(1, "", "q").await;
    c.send_method(1, declare("q")).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    );
    // RabbitMQ names the method whose content was expected (basic.publish).
    assert_eq!((class, method), (60, 40));

    // A method between the header and the last body frame.
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_publish(1, "", "q").await;
    c.send_raw(&content_header_bytes(1, 10)).await;
    c.send_raw(&frame_bytes(FRAME_BODY, 1, b"12345")).await;
    c.send_method(1, declare("q")).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
    );
    assert_eq!((class, method), (60, 40));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn truncated_method_arguments() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    // queue.declare whose arguments stop after one octet of the reserved short.
    c.send_frame(FRAME_METHOD, 1, &[0, 50, 0, 10, 0]).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 501);
    assert_eq!(text, "FRAME_ERROR - cannot decode <<0>>");
    // rabbit_misc:frame_error/2 names the method it could not decode.
    assert_eq!((class, method), (50, 10));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn wrong_credentials_with_auth_failure_close() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    c.start_ok("guest", "wrong", true).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 403);
    assert!(
        text.starts_with("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN"),
        "{text}"
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    assert_eq!((class, method), (10, 11));
    // Unknown user: same reply.
    let mut c = RawClient::connect(b.addr).await;
    c.start_ok("nobody", "guest", true).await;
    let (code, _, _, _) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 403);
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn wrong_credentials_without_capability_just_close() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    c.start_ok("guest", "wrong", false).await;
    match c.try_read_frame(Duration::from_secs(8)).await {
        Err(ReadEnd::Closed) => {}
        other => panic!("expected the socket to close without a frame, got {other:?}"),
    }
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn lapin_with_wrong_password_fails() {
    let b = TestBroker::start().await;
    let uri = format!("amqp://guest:nope@{}/%2f", b.addr);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("lapin gets an answer");
    assert!(r.is_err(), "lapin connected with a wrong password");
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn guest_is_loopback_only() {
    let broker = Broker::new(Config::default());
    let remote = "10.0.0.1:1234".parse().expect("addr");
    match broker.authenticate("guest", Some("guest"), remote) {
        Err(AuthFailure::LoopbackOnly(u)) => assert_eq!(u, "guest"),
        other => panic!("expected LoopbackOnly, got {other:?}"),
    }
    let remote6 = "[2001:db8::1]:1234".parse().expect("addr");
    assert!(matches!(
        broker.authenticate("guest", Some("guest"), remote6),
        Err(AuthFailure::LoopbackOnly(_))
    ));
    assert!(matches!(
        broker.authenticate("guest", Some("bad"), remote),
        Err(AuthFailure::BadCredentials)
    ));
    for local in ["127.0.0.1:5", "[::1]:5", "[::ffff:127.0.0.1]:5"] {
        assert!(
            broker
                .authenticate("guest", Some("guest"), local.parse().expect("addr"))
                .is_ok(),
            "{local}"
        );
    }
}

#[tokio::test]
async fn tune_ok_frame_max_out_of_range() {
    let b = TestBroker::start().await;
    for (fm, expected) in [
        (
            131_073u32,
            "NOT_ALLOWED - negotiated frame_max = 131073 is higher than the maximum allowed value (131072)",
        ),
        (
            4095,
            "NOT_ALLOWED - negotiated frame_max = 4095 is lower than the minimum allowed value (4096)",
        ),
    ] {
        let mut c = RawClient::connect(b.addr).await;
        c.start_ok("guest", "guest", true).await;
        let t = c.expect_tune().await;
        assert_eq!((t.channel_max, t.frame_max, t.heartbeat), (2047, 131072, 60));
        c.tune_ok(2047, fm, 60).await;
        c.connection_open("/").await;
        let (code, text, class, method) = expect_close_and_finish(&mut c).await;
        assert_eq!(code, 530, "frame_max {fm}");
        assert_eq!(text, expected);
        // rabbit_reader:fail_negotiation/4 names connection.tune.
        assert_eq!((class, method), (10, 30));
    }
    // 4096 itself is accepted (as by RabbitMQ 3.10.8).
    let mut c = RawClient::open_with(
        b.addr,
        warren_tests::raw::Handshake {
            tune: Some((2047, 4096, 0)),
            ..Default::default()
        },
    )
    .await;
    c.open_channel(1).await;
    c.close().await;
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn open_unknown_vhost() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    c.start_ok("guest", "guest", true).await;
    let t = c.expect_tune().await;
    c.tune_ok(t.channel_max, t.frame_max, t.heartbeat).await;
    c.connection_open("nosuch").await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 530);
    assert_eq!(text, "NOT_ALLOWED - vhost nosuch not found");
    assert_eq!((class, method), (10, 40));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn qos_with_prefetch_size() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    // prefetch_size = 0 is fine.
    c.send_qos_raw(1, 0, 10).await;
    match c.expect_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))) => {}
        other => panic!("expected basic.qos-ok, got {other:?}"),
    }
    c.send_qos_raw(1, 10, 0).await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 540);
    assert_eq!(text, "NOT_IMPLEMENTED - prefetch_size!=0 (10)");
    assert_eq!((class, method), (60, 10));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn channel_flow_inactive_is_not_implemented() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
    )
    .await;
    match c.expect_method().await {
        (1, AMQPClass::Channel(channel::AMQPMethod::FlowOk(ok))) => assert!(ok.active),
        other => panic!("expected channel.flow-ok, got {other:?}"),
    }
    c.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
    )
    .await;
    let (code, text, class, method) = expect_close_and_finish(&mut c).await;
    assert_eq!(code, 540);
    assert_eq!(text, "NOT_IMPLEMENTED - active=false");
    assert_eq!((class, method), (20, 20));
    assert_healthy(&b).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_frame_does_not_disturb_others() {
    let b = TestBroker::start().await;
    // A healthy connection that stays open throughout.
    let (keep, keep_ch) = b.channel().await;
    keep_ch
        .queue_declare(
            "survivor".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    for cut in [3usize, 7, 12] {
        let mut c = RawClient::open(b.addr).await;
        c.open_channel(1).await;
        let mut frames = method_bytes(
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "survivor".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        frames.extend_from_slice(&content_header_bytes(1, 100));
        frames.extend_from_slice(&frame_bytes(FRAME_BODY, 1, &[7u8; 100]));
        // Send a full publish and then part of the next frame, and vanish.
        let whole = frames.len();
        frames.extend_from_slice(&frame_bytes(FRAME_BODY, 1, &[7u8; 100])[..cut]);
        c.send_raw(&frames[..whole + cut]).await;
        drop(c);
    }
    assert_healthy(&b).await;
    // The survivor connection still works, and the complete publishes arrived.
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        keep_ch.basic_get("survivor".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get in time")
    .expect("basic.get")
    .expect("a message");
    assert_eq!(got.delivery.data.len(), 100);
    assert!(keep.status().connected());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_connection_forced() {
    let b = TestBroker::start().await;
    let mut raw = RawClient::open(b.addr).await;
    raw.open_channel(1).await;
    let (conn, _ch) = b.channel().await;
    let stopper = tokio::spawn(b.stop());
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!(code, 320);
    assert!(text.starts_with("CONNECTION_FORCED"), "{text}");
    assert_eq!(
        text,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    assert_eq!((class, method), (0, 0));
    let _ = raw.try_send_raw(&method_bytes(0, &close_ok())).await;
    raw.expect_closed_socket().await;
    let closed =
        warren_tests::eventually(Duration::from_secs(5), || !conn.status().connected()).await;
    assert!(closed, "lapin still thinks it is connected");
    tokio::time::timeout(Duration::from_secs(10), stopper)
        .await
        .expect("broker stops")
        .expect("stop task");
}
