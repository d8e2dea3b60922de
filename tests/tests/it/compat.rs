//! RabbitMQ behaviours that published clients' own test suites trip over (each checked against
//! RabbitMQ 3.10.8 with a raw client or pika): crossing closes, repeated `connection.close`,
//! the default exchange on passive declare, the server identity clients detect features by,
//! and sender-selected distribution (`CC` / `BCC`).

use std::time::Duration;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;
use warren_codec::proto::{basic, channel, connection, AMQPClass};
use warren_codec::Frame;
use warren_core::Config;
use warren_tests::raw::{content_header_bytes, frame_bytes, RawClient, ReadEnd};
use warren_tests::TestBroker;

use crate::errors::assert_amqp;

fn channel_close() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

fn connection_close() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

/// The broker closes channel 1 (404) while the client's own `channel.close` is on its way: the
/// client's close gets a close-ok, the client's close-ok for the broker's close is taken, and the
/// connection and its next channel keep working (RabbitMQ sends the same two frames).
#[tokio::test]
async fn crossing_channel_close_keeps_the_connection() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_publish(1, "no-such-exchange", "k").await;
    c.send_raw(&content_header_bytes(1, 1)).await;
    c.send_raw(&frame_bytes(warren_codec::FRAME_BODY, 1, b"x"))
        .await;
    let (code, text, _, _) = c.expect_channel_close(1).await;
    assert_eq!(code, 404);
    assert_eq!(
        text,
        "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"
    );
    // The client, not having seen that yet, closes the channel itself.
    c.send_method(1, channel_close()).await;
    match c.expect_method().await {
        (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected channel.close-ok, got {other:?}"),
    }
    // Its close-ok for the broker's close arrives after that.
    c.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    c.open_channel(2).await;
    // Channel 1 is free again too, and nothing else (no connection.close) came.
    c.open_channel(1).await;
    match c.try_read_frame(Duration::from_millis(300)).await {
        Err(ReadEnd::Timeout) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    c.close().await;
    b.stop().await;
}

/// Every `connection.close` gets its own close-ok, and the socket stays open for the client to
/// close (RabbitMQ 3.10.8 resets it 30 s later).
#[tokio::test]
async fn connection_close_twice_gets_two_close_oks_and_the_socket_is_left_to_the_client() {
    let b = TestBroker::start().await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_method(0, connection_close()).await;
    c.send_method(0, connection_close()).await;
    for _ in 0..2 {
        match c.expect_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
            other => panic!("expected connection.close-ok, got {other:?}"),
        }
    }
    // Frames after the close are ignored; the socket is still open.
    c.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    match c.try_read_frame(Duration::from_millis(500)).await {
        Err(ReadEnd::Timeout) => {}
        other => panic!("expected an open, silent socket, got {other:?}"),
    }
    // A third close still gets its close-ok.
    c.send_method(0, connection_close()).await;
    match c.expect_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    drop(c);
    // The broker keeps working for others.
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "after-close".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare after another client's close");
    b.stop().await;
}

/// A passive declare of the default exchange is refused like an active one (403), and
/// `amq.default` is not a name for it (404), as on RabbitMQ.
#[tokio::test]
async fn passive_declare_of_the_default_exchange_is_403() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    for (name, code, text) in [
        (
            "",
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
        ),
        (
            "amq.default",
            404,
            "NOT_FOUND - no exchange 'amq.default' in vhost '/'",
        ),
    ] {
        let ch = conn.create_channel().await.expect("channel");
        let err = ch
            .exchange_declare(
                name.into(),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("passive declare must fail");
        assert_amqp(&err, code, text);
    }
    // The connection is fine.
    let ch = conn
        .create_channel()
        .await
        .expect("channel after the refusals");
    ch.exchange_declare(
        "amq.direct".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare of amq.direct");
    b.stop().await;
}

fn long_string(props: &warren_codec::proto::FieldTable, key: &str) -> Option<String> {
    match props.inner().get(key) {
        Some(warren_codec::proto::AMQPValue::LongString(s)) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        _ => None,
    }
}

/// Clients that switch features on for `product = "RabbitMQ"` see RabbitMQ's identity; the other
/// fields name Warren. The identity is configurable.
#[tokio::test]
async fn server_properties_report_rabbitmq_identity_and_name_warren() {
    let b = TestBroker::start().await;
    let c = RawClient::connect(b.addr).await;
    let props = c
        .start
        .as_ref()
        .expect("connection.start")
        .server_properties
        .clone();
    assert_eq!(long_string(&props, "product").as_deref(), Some("RabbitMQ"));
    assert_eq!(long_string(&props, "version").as_deref(), Some("3.10.8"));
    let warren = env!("CARGO_PKG_VERSION");
    assert_eq!(
        long_string(&props, "warren_version").as_deref(),
        Some(warren)
    );
    let platform = long_string(&props, "platform").unwrap_or_default();
    assert!(platform.contains("Warren"), "platform {platform:?}");
    let info = long_string(&props, "information").unwrap_or_default();
    assert!(info.contains("Warren"), "information {info:?}");
    drop(c);
    b.stop().await;

    let mut config = Config::default();
    config.amqp.product = "Warren".into();
    config.amqp.product_version = warren.into();
    let b = TestBroker::start_with(config).await;
    let c = RawClient::connect(b.addr).await;
    let props = c
        .start
        .as_ref()
        .expect("connection.start")
        .server_properties
        .clone();
    assert_eq!(long_string(&props, "product").as_deref(), Some("Warren"));
    assert_eq!(long_string(&props, "version").as_deref(), Some(warren));
    drop(c);
    b.stop().await;
}

fn keys(list: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        list.iter()
            .map(|k| AMQPValue::LongString(LongString::from(k.as_bytes().to_vec())))
            .collect::<Vec<_>>(),
    ))
}

fn with_headers(entries: Vec<(&str, AMQPValue)>) -> BasicProperties {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    BasicProperties::default().with_headers(t)
}

/// Bodies and headers in `queue`, drained with basic.get.
async fn drain(ch: &lapin::Channel, queue: &str) -> Vec<(String, Option<FieldTable>)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.properties.headers().clone(),
        ));
    }
    out
}

/// `CC` and `BCC` route to their keys' queues as well, each queue once; `BCC` is removed before
/// delivery, `CC` kept; on the default exchange the keys are queue names; a `CC` that is not an
/// array is RabbitMQ's 406. Expected results are those RabbitMQ 3.10.8 gave for the same script.
#[tokio::test]
async fn cc_and_bcc_route_to_extra_keys() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    for q in ["cc1", "cc2", "cc3"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    for (x, kind) in [
        ("ccx", lapin::ExchangeKind::Direct),
        ("cct", lapin::ExchangeKind::Topic),
    ] {
        ch.exchange_declare(
            x.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    }
    for (q, x, k) in [
        ("cc1", "ccx", "a"),
        ("cc2", "ccx", "b"),
        ("cc3", "ccx", "c"),
        ("cc1", "cct", "t.*"),
        ("cc2", "cct", "u.#"),
    ] {
        ch.queue_bind(
            q.into(),
            x.into(),
            k.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let publishes = [
        (
            "ccx",
            "a",
            "m1",
            vec![("CC", keys(&["b", "a"])), ("BCC", keys(&["c"]))],
        ),
        ("", "cc1", "m2", vec![("CC", keys(&["cc2"]))]),
        ("cct", "t.x", "m3", vec![("CC", keys(&["u.y.z", "t.q"]))]),
        ("ccx", "zz", "m4", vec![("BCC", keys(&["c"]))]),
    ];
    for (x, k, body, headers) in publishes {
        ch.basic_publish(
            x.into(),
            k.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let bodies = |v: &[(String, Option<FieldTable>)]| -> Vec<String> {
        v.iter().map(|(b, _)| b.clone()).collect()
    };
    let q1 = drain(&ch, "cc1").await;
    let q2 = drain(&ch, "cc2").await;
    let q3 = drain(&ch, "cc3").await;
    assert_eq!(bodies(&q1), ["m1", "m2", "m3"]);
    assert_eq!(bodies(&q2), ["m1", "m2", "m3"]);
    assert_eq!(bodies(&q3), ["m1", "m4"]);
    for (body, headers) in q1.iter().chain(&q2).chain(&q3) {
        let h = headers.clone().unwrap_or_default();
        assert!(!h.inner().contains_key("BCC"), "{body} still has BCC");
        if body != "m4" {
            assert!(h.inner().contains_key("CC"), "{body} lost its CC");
        }
    }

    let err = ch
        .basic_publish(
            "ccx".into(),
            "a".into(),
            BasicPublishOptions::default(),
            b"bad",
            with_headers(vec![(
                "CC",
                AMQPValue::LongString(LongString::from(b"b".to_vec())),
            )]),
        )
        .await
        .expect("publish")
        .await
        .expect_err("a CC that is not an array closes the channel");
    assert_amqp(
        &err,
        406,
        "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}",
    );
    // Elements that are not strings are skipped.
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.basic_publish(
        "ccx".into(),
        "a".into(),
        BasicPublishOptions::default(),
        b"m5",
        with_headers(vec![(
            "CC",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongString(LongString::from(b"b".to_vec())),
                AMQPValue::LongInt(5),
            ])),
        )]),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    assert_eq!(bodies(&drain(&ch, "cc1").await), ["m5"]);
    assert_eq!(bodies(&drain(&ch, "cc2").await), ["m5"]);
    b.stop().await;
}

/// Sends `basic.consume` (manual ack) for `queue` on channel `ch` and waits for consume-ok.
pub(crate) async fn raw_consume(c: &mut RawClient, ch: u16, queue: &str) {
    c.send_method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: Default::default(),
        })),
    )
    .await;
    match c.expect_method().await {
        (_, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => {}
        other => panic!("expected consume-ok, got {other:?}"),
    }
}

/// Waits for a `basic.deliver` of a one-frame body, reads its content, returns its tag.
pub(crate) async fn expect_deliver(c: &mut RawClient) -> u64 {
    let tag = loop {
        match c.read_frame().await {
            Frame::Method {
                method: AMQPClass::Basic(basic::AMQPMethod::Deliver(d)),
                ..
            } => break d.delivery_tag,
            Frame::Heartbeat => continue,
            other => panic!("expected basic.deliver, got {other:?}"),
        }
    };
    assert!(matches!(c.read_frame().await, Frame::Header { .. }));
    assert!(matches!(c.read_frame().await, Frame::Body { .. }));
    tag
}

async fn publish_one(b: &TestBroker, queue: &str, args: FieldTable) {
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), args)
        .await
        .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"task",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

/// A delivery not acknowledged within `consumer_timeout` (default 30 min) closes its channel with
/// RabbitMQ's 406 text, and the message goes back to the queue; one acked in time does not. The
/// broker runs on a manual clock: time is moved, not waited for.
#[tokio::test]
async fn consumer_timeout_closes_the_channel_and_requeues() {
    let b = TestBroker::start_manual().await;
    publish_one(&b, "slow-worker", FieldTable::default()).await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    raw_consume(&mut c, 1, "slow-worker").await;
    let _tag = expect_deliver(&mut c).await;
    // 29 minutes: nothing happens.
    b.advance(Duration::from_secs(29 * 60)).await;
    match c.try_read_frame(Duration::from_millis(1500)).await {
        Err(ReadEnd::Timeout) => {}
        Ok(Frame::Heartbeat) => {}
        other => panic!("expected nothing before the timeout, got {other:?}"),
    }
    b.advance(Duration::from_secs(61)).await;
    let (code, text, _, _) = c.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: \
         1800000 ms. This timeout value can be configured, see consumers doc guide to learn more"
    );
    // The message is back in the queue, redelivered to the next consumer.
    let (_conn, ch) = b.channel().await;
    let got = ch
        .basic_get("slow-worker".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the timed-out message was requeued");
    assert!(got.delivery.redelivered);
    b.stop().await;
}

/// `x-consumer-timeout` on the queue overrides the broker's setting, and its value is in the
/// text; a delivery acked in time keeps the channel open.
#[tokio::test]
async fn per_queue_consumer_timeout() {
    let b = TestBroker::start_manual().await;
    let mut args = FieldTable::default();
    args.insert("x-consumer-timeout".into(), AMQPValue::LongInt(5000));
    publish_one(&b, "short-timeout", args.clone()).await;
    publish_one(&b, "short-timeout", args).await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    c.send_qos_raw(1, 0, 1).await;
    match c.expect_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))) => {}
        other => panic!("expected qos-ok, got {other:?}"),
    }
    raw_consume(&mut c, 1, "short-timeout").await;
    let tag = expect_deliver(&mut c).await;
    b.advance(Duration::from_secs(4)).await;
    c.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: false,
        })),
    )
    .await;
    // The second message arrives after the ack; it is not acked.
    let _ = expect_deliver(&mut c).await;
    b.advance(Duration::from_secs(4)).await;
    match c.try_read_frame(Duration::from_millis(1500)).await {
        Err(ReadEnd::Timeout) | Ok(Frame::Heartbeat) => {}
        other => panic!("expected nothing 4 s after the second delivery, got {other:?}"),
    }
    b.advance(Duration::from_secs(2)).await;
    let (code, text, _, _) = c.expect_channel_close(1).await;
    assert_eq!(code, 406);
    assert!(
        text.contains("Timeout value used: 5000 ms."),
        "unexpected text {text:?}"
    );
    b.stop().await;
}
