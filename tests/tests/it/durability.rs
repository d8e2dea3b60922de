//! Restart tests: what survives a broker restart is exactly what RabbitMQ keeps.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use warren_tests::TestBroker;

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn get_all(ch: &lapin::Channel, q: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        out.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topology_and_persistent_messages_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    {
        let (c, ch) = b.channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut args = FieldTable::default();
        args.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        ch.queue_declare("dq".into(), durable, args)
            .await
            .expect("dq");
        ch.queue_declare(
            "tq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("tq");
        let xd = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare("dx".into(), ExchangeKind::Topic, xd, FieldTable::default())
            .await
            .expect("dx");
        ch.exchange_declare(
            "dx2".into(),
            ExchangeKind::Fanout,
            xd,
            FieldTable::default(),
        )
        .await
        .expect("dx2");
        ch.exchange_declare(
            "tx".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("tx");
        ch.exchange_bind(
            "dx2".into(),
            "dx".into(),
            "a.#".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("e2e bind");
        ch.queue_bind(
            "dq".into(),
            "dx2".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for i in 0..10 {
            let props = if i % 2 == 0 {
                persistent()
            } else {
                BasicProperties::default()
            };
            ch.basic_publish(
                "dx".into(),
                "a.b".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        }
        ch.basic_publish(
            "".into(),
            "tq".into(),
            BasicPublishOptions::default(),
            b"t",
            persistent(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
        // Deliver m0 (only: prefetch 1) without acking it: after the restart it comes back
        // redelivered, the others not.
        ch.basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                "dq".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let d = consumer.next().await.expect("delivery").expect("ok");
        assert_eq!(&d.data[..], b"m0");
        c.close(200, "bye".into()).await.ok();
    }
    b.stop().await;

    let b = TestBroker::start_durable(dir.path()).await;
    let (_c, ch) = b.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare("dq".into(), passive, FieldTable::default())
        .await
        .expect("dq survives");
    assert_eq!(q.message_count(), 5, "only the persistent messages survive");
    ch.queue_declare("tq".into(), passive, FieldTable::default())
        .await
        .expect_err("a non-durable queue is gone");
    let (_c, ch) = b.channel().await;
    let got = get_all(&ch, "dq").await;
    let expected: Vec<(String, bool)> = (0..10)
        .step_by(2)
        .map(|i| (format!("m{i}"), i == 0))
        .collect();
    assert_eq!(
        got, expected,
        "persistent messages in order; the delivered one redelivered"
    );
    // The durable exchanges and the e2e binding still route.
    ch.basic_publish(
        "dx".into(),
        "a.z".into(),
        BasicPublishOptions::default(),
        b"again",
        persistent(),
    )
    .await
    .expect("publish");
    let got = get_all(&ch, "dq").await;
    assert_eq!(got, vec![("again".to_string(), false)]);
    let xp = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.exchange_declare("tx".into(), ExchangeKind::Direct, xp, FieldTable::default())
        .await
        .expect_err("a non-durable exchange is gone");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_and_deleted_queues_stay_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    {
        let (_c, ch) = b.channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for q in ["keep", "drop"] {
            ch.queue_declare(q.into(), durable, FieldTable::default())
                .await
                .expect("declare");
        }
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for i in 0..100 {
            for q in ["keep", "drop"] {
                ch.basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    format!("{i}").as_bytes(),
                    persistent(),
                )
                .await
                .expect("publish");
            }
        }
        assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
        for _ in 0..60 {
            let m = ch
                .basic_get("keep".into(), BasicGetOptions::default())
                .await
                .expect("get")
                .expect("a message");
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        ch.queue_delete("drop".into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
        // Declared again empty: the old messages must not come back into it.
        ch.queue_declare("drop".into(), durable, FieldTable::default())
            .await
            .expect("declare");
    }
    b.stop().await;
    let b = TestBroker::start_durable(dir.path()).await;
    let (_c, ch) = b.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let keep = ch
        .queue_declare("keep".into(), passive, FieldTable::default())
        .await
        .expect("keep");
    assert_eq!(keep.message_count(), 40);
    let drop = ch
        .queue_declare("drop".into(), passive, FieldTable::default())
        .await
        .expect("drop");
    assert_eq!(drop.message_count(), 0);
    let first = get_all(&ch, "keep").await;
    assert_eq!(first.first().map(|m| m.0.as_str()), Some("60"));
    b.stop().await;
}

/// A data dir written before the metadata log (durable topology in
/// `vhosts/2f/definitions.json`, messages in the queue's segment store) is converted at the
/// first start: the queue keeps its messages, the exchange and binding route, the old file is
/// renamed, and the second start reads the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_with_definitions_json_is_converted_once() {
    use warren_core::message::Message;
    use warren_core::metadata::legacy::{Definitions, LegacyBinding, LegacyExchange, LegacyQueue};
    use warren_core::store::segment::SegmentStore;
    use warren_core::store::sync::{Flush, Syncer};
    use warren_core::store::MessageStore;

    let dir = tempfile::tempdir().expect("tempdir");
    let vhost_dir = dir.path().join("vhosts").join("2f");
    let store_dir = "00000000000000aa-legacy";
    let defs = Definitions {
        exchanges: vec![LegacyExchange {
            name: "old-x".into(),
            kind: "direct".into(),
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        }],
        queues: vec![LegacyQueue {
            name: "old-q".into(),
            auto_delete: false,
            arguments: Default::default(),
            store_dir: store_dir.into(),
        }],
        bindings: vec![LegacyBinding {
            source: "old-x".into(),
            destination: "old-q".into(),
            destination_type: "queue".into(),
            routing_key: "k".into(),
            arguments: Default::default(),
        }],
    };
    defs.save(&vhost_dir).expect("write definitions.json");
    {
        let syncer = Syncer::start().expect("syncer");
        let store = SegmentStore::open(
            &vhost_dir.join("queues").join(store_dir),
            syncer.clone(),
            1 << 20,
            0,
        )
        .expect("store");
        for (i, body) in ["one", "two"].iter().enumerate() {
            let m = Message::recovered(
                "old-x",
                "k",
                bytes::Bytes::from_static(&[0x10, 0, 2]),
                bytes::Bytes::from_static(body.as_bytes()),
            );
            store.append(i as u64, &m, 0);
        }
        store.flush().expect("flush");
        syncer.stop();
    }
    for start in 0..2 {
        let b = TestBroker::start_durable(dir.path()).await;
        let (c, ch) = b.channel().await;
        assert!(
            !vhost_dir.join("definitions.json").exists(),
            "start {start}: renamed"
        );
        assert!(vhost_dir.join("definitions.json.converted").exists());
        let got = get_all(&ch, "old-q").await;
        if start == 0 {
            assert_eq!(
                got,
                vec![("one".into(), false), ("two".into(), false)],
                "messages kept"
            );
        } else {
            assert!(got.is_empty(), "consumed at the first start");
        }
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        ch.basic_publish(
            "old-x".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"routed",
            persistent(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        assert_eq!(get_all(&ch, "old-q").await, vec![("routed".into(), false)]);
        let _ = c.close(200, "bye".into()).await;
        b.stop().await;
    }
}

/// A channel waiting for its durable declaration to be durable holds the frames that follow
/// (a publish to the new queue, a passive declare of it), handles them in order once it
/// resumes, and the client's `connection.close` sent right behind them waits for that: the
/// publish is not lost and every reply comes in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_behind_a_durable_declaration_are_held_in_order_and_close_waits() {
    use warren_codec::proto::{basic, connection, queue, AMQPClass, FieldTable as Ft};
    use warren_tests::raw::{content_header_bytes, frame_bytes, method_bytes, RawClient};
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    let mut c = RawClient::open(b.addr).await;
    c.open_channel(1).await;
    let mut burst = method_bytes(
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "held".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Ft::default(),
        })),
    );
    burst.extend(method_bytes(
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "held".into(),
            mandatory: true,
            immediate: false,
        })),
    ));
    burst.extend(content_header_bytes(1, 4));
    burst.extend(frame_bytes(warren_codec::FRAME_BODY, 1, b"kept"));
    burst.extend(method_bytes(
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "held".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Ft::default(),
        })),
    ));
    burst.extend(method_bytes(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ));
    c.send_raw(&burst).await;
    match c.expect_method().await {
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            assert_eq!(ok.queue.as_str(), "held");
            assert_eq!(ok.message_count, 0);
        }
        other => panic!("expected declare-ok first, got {other:?}"),
    }
    // The publish was handled after the declaration (it routed: no basic.return), then the
    // passive declare, which counts it.
    match c.expect_method().await {
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            assert_eq!(ok.message_count, 1, "the held publish came first");
        }
        other => panic!("expected the passive declare-ok, got {other:?}"),
    }
    match c.expect_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected close-ok last, got {other:?}"),
    }
    let vh = b.broker.vhost("/").expect("vhost");
    assert_eq!(vh.queue("held").expect("queue").message_count(), 1);
    b.stop().await;
}

/// A persistent message's TTL (its `expiration`, or the queue's `x-message-ttl`) keeps counting
/// from its publish across a restart: restarted 50 s into a 60 s TTL, it has 10 s left, not a
/// fresh 60 s. The broker runs on a manual clock; the second one starts 50 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_counts_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_manual(dir.path()).await;
    {
        let (_c, ch) = b.channel().await;
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
        for (q, args) in [("ttl-msg", FieldTable::default()), ("ttl-queue", args)] {
            ch.queue_declare(
                q.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .expect("declare");
        }
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for (q, props) in [
            ("ttl-msg", persistent().with_expiration("60000".into())),
            ("ttl-queue", persistent()),
            // No TTL at all: stays.
            ("ttl-msg", persistent()),
        ] {
            ch.basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                b"m",
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
    }
    b.advance(std::time::Duration::from_secs(50)).await;
    b.stop().await;

    let b =
        TestBroker::start_durable_manual_at(dir.path(), std::time::Duration::from_secs(50)).await;
    let (_c, ch) = b.channel().await;
    assert_eq!(warren_tests::message_count(&ch, "ttl-msg").await, 2);
    assert_eq!(warren_tests::message_count(&ch, "ttl-queue").await, 1);
    b.advance(std::time::Duration::from_secs(11)).await;
    assert_eq!(
        warren_tests::message_count(&ch, "ttl-msg").await,
        1,
        "the 60 s message expired 60 s after its publish"
    );
    assert_eq!(warren_tests::message_count(&ch, "ttl-queue").await, 0);
    b.stop().await;
}
