//! Quorum queues (`x-queue-type: quorum`, served by the classic queue on one node) as RabbitMQ
//! 3.10.8 shows them to a client, each case settled against a local RabbitMQ 3.10.8: the
//! `x-delivery-count` header, `x-delivery-limit` and the `delivery-limit` policy
//! dead-lettering with reason `delivery_limit`, the declare rules and their texts; and the
//! `consumer-timeout` policy key.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::timeout;
use warren_core::metadata::{Command, RuntimeDef};
use warren_tests::raw::RawClient;
use warren_tests::{eventually, TestBroker};

use crate::compat::{expect_deliver, raw_consume};
use crate::errors::assert_amqp;

const WAIT: Duration = Duration::from_secs(10);

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = table(extra);
    t.insert("x-queue-type".into(), s("quorum"));
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn declare(ch: &Channel, name: &str, opts: QueueDeclareOptions, args: FieldTable) {
    ch.queue_declare(name.into(), opts, args)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

async fn publish(ch: &Channel, queue: &str, headers: Option<FieldTable>) {
    let mut props = BasicProperties::default();
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"m",
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

async fn confirming(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, ch)
}

async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack })
        .await
        .expect("basic.get")
}

fn header(props: &BasicProperties, key: &str) -> Option<AMQPValue> {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
}

fn delivery_count(props: &BasicProperties) -> Option<i64> {
    match header(props, "x-delivery-count") {
        None => None,
        Some(AMQPValue::LongLongInt(n)) => Some(n),
        Some(other) => panic!("x-delivery-count is a long, got {other:?}"),
    }
}

fn text_field(t: &FieldTable, key: &str) -> String {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(v)) => v.to_string(),
        other => panic!("{key}: expected a longstr, got {other:?}"),
    }
}

async fn admin(b: &TestBroker, cmd: Command) {
    b.broker
        .admin(cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
}

fn policy(name: &str, pattern: &str, apply_to: &str, definition: Value) -> Command {
    Command::PutRuntime(RuntimeDef {
        kind: "policy".into(),
        vhost: "/".into(),
        component: String::new(),
        name: name.into(),
        value: json!({"pattern": pattern, "apply-to": apply_to, "priority": 0, "definition": definition}),
    })
}

/// `basic.get` from a quorum queue always carries `x-delivery-count` (0 the first time, as
/// RabbitMQ 3.10.8's dequeue); each return to the queue (nack, reject, recover, channel close)
/// counts one; the publisher's other headers stay.
#[tokio::test]
async fn delivery_count_grows_with_each_return() {
    let b = TestBroker::start().await;
    let (_conn, ch) = confirming(&b).await;
    declare(&ch, "qq-count", durable(), quorum(&[])).await;
    publish(
        &ch,
        "qq-count",
        Some(table(&[("h", AMQPValue::LongInt(1))])),
    )
    .await;

    let m = get(&ch, "qq-count", false).await.expect("a message");
    assert!(!m.delivery.redelivered);
    assert_eq!(delivery_count(&m.delivery.properties), Some(0));
    assert_eq!(
        header(&m.delivery.properties, "h"),
        Some(AMQPValue::LongInt(1))
    );
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .expect("nack");

    let m = get(&ch, "qq-count", false).await.expect("a message");
    assert!(m.delivery.redelivered);
    assert_eq!(delivery_count(&m.delivery.properties), Some(1));
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .expect("reject");

    let m = get(&ch, "qq-count", false).await.expect("a message");
    assert_eq!(delivery_count(&m.delivery.properties), Some(2));
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("recover");

    let m = get(&ch, "qq-count", false).await.expect("a message");
    assert_eq!(delivery_count(&m.delivery.properties), Some(3));
    ch.close(200, "bye".into()).await.expect("close");

    let ch = b.connect().await.create_channel().await.expect("channel");
    let m = get(&ch, "qq-count", true).await.expect("a message");
    assert_eq!(delivery_count(&m.delivery.properties), Some(4));
    assert_eq!(
        header(&m.delivery.properties, "h"),
        Some(AMQPValue::LongInt(1))
    );
    b.stop().await;
}

/// A consumer's first delivery carries no `x-delivery-count` (a publisher's own header passes
/// unchanged); once returned the header says how often, replacing the publisher's. Classic
/// queues never add it.
#[tokio::test]
async fn consumer_sees_the_count_only_after_a_return() {
    let b = TestBroker::start().await;
    let (_conn, ch) = confirming(&b).await;
    declare(&ch, "qq-consume", durable(), quorum(&[])).await;
    declare(
        &ch,
        "classic-consume",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&ch, "qq-consume", None).await;
    publish(
        &ch,
        "qq-consume",
        Some(table(&[("x-delivery-count", AMQPValue::LongInt(7))])),
    )
    .await;
    publish(&ch, "classic-consume", None).await;

    let (conn, c1) = b.channel().await;
    c1.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = c1
        .basic_consume(
            "qq-consume".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut first = Vec::new();
    for _ in 0..2 {
        let d = timeout(WAIT, consumer.next())
            .await
            .expect("delivery")
            .expect("open")
            .expect("ok");
        first.push((d.redelivered, header(&d.properties, "x-delivery-count")));
    }
    assert_eq!(
        first,
        vec![(false, None), (false, Some(AMQPValue::LongInt(7)))]
    );
    c1.close(200, "bye".into()).await.expect("close");
    drop(conn);

    let (_conn2, c2) = b.channel().await;
    let mut consumer = c2
        .basic_consume(
            "qq-consume".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..2 {
        let d = timeout(WAIT, consumer.next())
            .await
            .expect("delivery")
            .expect("open")
            .expect("ok");
        assert!(d.redelivered);
        assert_eq!(delivery_count(&d.properties), Some(1));
    }

    // A classic queue's redelivery has no count.
    let m = get(&c2, "classic-consume", false).await.expect("a message");
    c2.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .expect("nack");
    let m = get(&c2, "classic-consume", true).await.expect("a message");
    assert!(m.delivery.redelivered);
    assert_eq!(delivery_count(&m.delivery.properties), None);
    b.stop().await;
}

/// `x-delivery-limit: 2`: delivered with counts 0, 1, 2; the third return dead-letters it with
/// reason `delivery_limit` (x-death and x-first-death-*), without `x-delivery-count`.
#[tokio::test]
async fn delivery_limit_dead_letters_with_reason() {
    let b = TestBroker::start().await;
    let (_conn, ch) = confirming(&b).await;
    declare(&ch, "qq-dlq", durable(), FieldTable::default()).await;
    let args = quorum(&[
        ("x-delivery-limit", AMQPValue::LongInt(2)),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("qq-dlq")),
    ]);
    declare(&ch, "qq-limited", durable(), args).await;
    publish(
        &ch,
        "qq-limited",
        Some(table(&[("h", AMQPValue::LongInt(1))])),
    )
    .await;

    for expected in 0..=2 {
        let m = get(&ch, "qq-limited", false)
            .await
            .expect("still in the queue");
        assert_eq!(delivery_count(&m.delivery.properties), Some(expected));
        ch.basic_nack(
            m.delivery.delivery_tag,
            BasicNackOptions {
                requeue: true,
                multiple: false,
            },
        )
        .await
        .expect("nack");
    }
    assert!(
        get(&ch, "qq-limited", true).await.is_none(),
        "dead-lettered after the third return"
    );

    let m = get(&ch, "qq-dlq", true)
        .await
        .expect("the dead-lettered message");
    let props = &m.delivery.properties;
    assert_eq!(delivery_count(props), None);
    assert_eq!(header(props, "h"), Some(AMQPValue::LongInt(1)));
    let Some(AMQPValue::FieldArray(deaths)) = header(props, "x-death") else {
        panic!("x-death missing: {props:?}");
    };
    let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
        panic!("x-death entry is a table");
    };
    assert_eq!(text_field(death, "reason"), "delivery_limit");
    assert_eq!(text_field(death, "queue"), "qq-limited");
    assert_eq!(death.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(
        header(props, "x-first-death-reason"),
        Some(s("delivery_limit"))
    );
    b.stop().await;
}

/// The `delivery-limit` policy key (apply-to `quorum_queues`) on a queue declared without the
/// argument: with a `dead-letter-exchange` the message is dead-lettered, without one dropped.
#[tokio::test]
async fn delivery_limit_policy_dead_letters_or_drops() {
    let b = TestBroker::start().await;
    let (_conn, ch) = confirming(&b).await;
    declare(&ch, "plain-dlq", durable(), FieldTable::default()).await;
    declare(&ch, "pl-dlx", durable(), quorum(&[])).await;
    declare(&ch, "pl-drop", durable(), quorum(&[])).await;
    admin(
        &b,
        policy(
            "limit-dlx",
            "^pl-dlx$",
            "quorum_queues",
            json!({"delivery-limit": 0, "dead-letter-exchange": "", "dead-letter-routing-key": "plain-dlq"}),
        ),
    )
    .await;
    admin(
        &b,
        policy(
            "limit-drop",
            "^pl-drop$",
            "quorum_queues",
            json!({"delivery-limit": 1}),
        ),
    )
    .await;
    publish(&ch, "pl-dlx", None).await;
    publish(&ch, "pl-drop", None).await;

    let m = get(&ch, "pl-dlx", false).await.expect("a message");
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .expect("nack");
    let dead = get(&ch, "plain-dlq", true)
        .await
        .expect("dead-lettered at the first return");
    assert_eq!(
        header(&dead.delivery.properties, "x-first-death-reason"),
        Some(s("delivery_limit"))
    );
    assert!(get(&ch, "pl-dlx", true).await.is_none());

    for expected in 0..=1 {
        let m = get(&ch, "pl-drop", false).await.expect("a message");
        assert_eq!(delivery_count(&m.delivery.properties), Some(expected));
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        )
        .await
        .expect("reject");
    }
    let q = b
        .broker
        .vhost("/")
        .and_then(|v| v.queue("pl-drop"))
        .expect("queue");
    assert!(eventually(WAIT, || q.message_count() == 0 && q.unacked_count() == 0).await);
    assert!(get(&ch, "pl-drop", true).await.is_none());
    b.stop().await;
}

/// RabbitMQ 3.10.8's declare rules for quorum queues: refused arguments first (before any value
/// check), then argument values, then the properties (auto-delete, exclusive, non-durable in
/// that order); each a 406 that closes the channel only.
#[tokio::test]
async fn quorum_declare_refusals() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let excl = QueueDeclareOptions {
        exclusive: true,
        ..durable()
    };
    let autodel = QueueDeclareOptions {
        auto_delete: true,
        ..durable()
    };
    let transient = QueueDeclareOptions::default();
    let refused = |k: &str| {
        format!("PRECONDITION_FAILED - invalid arg '{k}' for queue 'qq' in vhost '/' of queue type rabbit_quorum_queue")
    };
    let prop = |p: &str| {
        format!("PRECONDITION_FAILED - invalid property '{p}' for queue 'qq' in vhost '/'")
    };
    let value = |k: &str, why: &str| {
        format!("PRECONDITION_FAILED - invalid arg '{k}' for queue 'qq' in vhost '/': {why}")
    };
    let cases: Vec<(QueueDeclareOptions, FieldTable, String)> = vec![
        (transient, quorum(&[]), prop("non-durable")),
        (excl, quorum(&[]), prop("exclusive-owner")),
        (autodel, quorum(&[]), prop("auto-delete")),
        (
            QueueDeclareOptions {
                exclusive: true,
                ..transient
            },
            quorum(&[]),
            prop("exclusive-owner"),
        ),
        (
            QueueDeclareOptions {
                exclusive: true,
                ..autodel
            },
            quorum(&[]),
            prop("auto-delete"),
        ),
        (
            durable(),
            quorum(&[("x-max-priority", AMQPValue::LongInt(5))]),
            refused("x-max-priority"),
        ),
        // Refused before its value is checked, and before the properties.
        (
            transient,
            quorum(&[("x-max-priority", AMQPValue::LongInt(500))]),
            refused("x-max-priority"),
        ),
        (
            durable(),
            quorum(&[("x-queue-mode", s("lazy"))]),
            refused("x-queue-mode"),
        ),
        (
            durable(),
            quorum(&[("x-queue-version", AMQPValue::LongInt(2))]),
            refused("x-queue-version"),
        ),
        (
            durable(),
            quorum(&[("x-queue-master-locator", s("random"))]),
            refused("x-queue-master-locator"),
        ),
        (
            durable(),
            quorum(&[("x-max-age", s("1D"))]),
            refused("x-max-age"),
        ),
        (
            durable(),
            quorum(&[("x-initial-cluster-size", AMQPValue::LongInt(1))]),
            refused("x-initial-cluster-size"),
        ),
        (
            durable(),
            quorum(&[("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1000))]),
            refused("x-stream-max-segment-size-bytes"),
        ),
        // Values before properties.
        (
            transient,
            quorum(&[("x-overflow", s("bad"))]),
            value("x-overflow", "invalid_overflow"),
        ),
        (
            durable(),
            quorum(&[("x-quorum-initial-group-size", AMQPValue::LongInt(0))]),
            value("x-quorum-initial-group-size", "{value_zero,0}"),
        ),
        (
            durable(),
            quorum(&[("x-quorum-initial-group-size", s("x"))]),
            value(
                "x-quorum-initial-group-size",
                "\"expected integer, got longstr\"",
            ),
        ),
        (
            durable(),
            quorum(&[("x-dead-letter-strategy", s("bad"))]),
            value("x-dead-letter-strategy", "invalid_dlx_strategy"),
        ),
        (
            durable(),
            quorum(&[("x-queue-leader-locator", s("bad"))]),
            value("x-queue-leader-locator", "invalid_queue_locator_arg"),
        ),
        (
            durable(),
            quorum(&[("x-max-in-memory-length", s("x"))]),
            value(
                "x-max-in-memory-length",
                "\"expected integer, got longstr\"",
            ),
        ),
    ];
    for (opts, args, text) in cases {
        let ch = conn.create_channel().await.expect("channel");
        let e = ch
            .queue_declare("qq".into(), opts, args.clone())
            .await
            .expect_err(&format!("{opts:?} {args:?} is refused"));
        assert_amqp(&e, 406, &text);
    }
    assert!(b.broker.vhost("/").and_then(|v| v.queue("qq")).is_none());

    // What a quorum queue accepts; the connection is still usable.
    let ch = conn.create_channel().await.expect("channel");
    let ok = quorum(&[
        ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
        ("x-delivery-limit", AMQPValue::LongInt(3)),
        ("x-dead-letter-strategy", s("at-least-once")),
        ("x-max-in-memory-length", AMQPValue::LongInt(10)),
        ("x-max-in-memory-bytes", AMQPValue::LongInt(1000)),
        ("x-queue-leader-locator", s("balanced")),
        ("x-overflow", s("reject-publish")),
        ("x-message-ttl", AMQPValue::LongInt(60_000)),
        ("x-expires", AMQPValue::LongInt(600_000)),
        ("x-max-length", AMQPValue::LongInt(100)),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ("x-unknown", AMQPValue::LongInt(1)),
    ]);
    declare(&ch, "qq", durable(), ok.clone()).await;
    // Redeclaring with the same arguments is fine; passive too.
    declare(&ch, "qq", durable(), ok).await;
    declare(
        &ch,
        "qq",
        QueueDeclareOptions {
            passive: true,
            ..transient
        },
        FieldTable::default(),
    )
    .await;
    b.stop().await;
}

/// The `consumer-timeout` policy key sets the timeout of a queue's consumers (RabbitMQ 3.12+),
/// with its value in the 406 text; with a queue's own `x-consumer-timeout` too, the smaller wins.
#[tokio::test]
async fn consumer_timeout_from_a_policy() {
    let b = TestBroker::start_manual().await;
    admin(
        &b,
        policy("ct", "^ct-", "queues", json!({"consumer-timeout": 5000})),
    )
    .await;
    let queues = [
        ("ct-policy", None),
        ("ct-longer", Some(20_000)),
        ("ct-shorter", Some(3000)),
    ];
    {
        let (_conn, ch) = confirming(&b).await;
        for (name, own) in queues {
            let args = match own {
                Some(ms) => table(&[("x-consumer-timeout", AMQPValue::LongInt(ms))]),
                None => FieldTable::default(),
            };
            declare(&ch, name, QueueDeclareOptions::default(), args).await;
            publish(&ch, name, None).await;
        }
    }
    let mut clients = Vec::new();
    for (name, _) in queues {
        let mut c = RawClient::open(b.addr).await;
        c.open_channel(1).await;
        raw_consume(&mut c, 1, name).await;
        let _ = expect_deliver(&mut c).await;
        clients.push(c);
    }
    let text = |ms: u64| {
        format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value \
             used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
        )
    };
    b.advance(Duration::from_secs(4)).await;
    let (code, t, _, _) = clients[2].expect_channel_close(1).await;
    assert_eq!((code, t), (406, text(3000)));
    b.advance(Duration::from_secs(2)).await;
    for c in &mut clients[..2] {
        let (code, t, _, _) = c.expect_channel_close(1).await;
        assert_eq!((code, t), (406, text(5000)));
    }
    b.stop().await;
}

/// `amqp.compat = "4"`: a quorum queue without a delivery limit gets RabbitMQ 4.0's default of
/// 20 (dead-lettered at the 21st return); its own `x-delivery-limit` still wins,
/// classic queues keep none. Under the default ("3.10") a quorum queue has no limit.
#[tokio::test]
async fn compat_4_gives_quorum_queues_a_delivery_limit_of_20() {
    let mut config = warren_core::Config::default();
    config.amqp.compat = warren_core::config::Compat::V4;
    let b4 = TestBroker::start_with(config).await;
    let b3 = TestBroker::start().await;
    for (b, v4) in [(&b4, true), (&b3, false)] {
        let (_conn, ch) = confirming(b).await;
        declare(&ch, "c4-dlq", durable(), FieldTable::default()).await;
        let dlx = [
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("c4-dlq")),
        ];
        declare(&ch, "c4-default", durable(), quorum(&dlx)).await;
        let mut own = dlx.to_vec();
        own.push(("x-delivery-limit", AMQPValue::LongInt(30)));
        declare(&ch, "c4-own", durable(), quorum(&own)).await;
        declare(&ch, "c4-classic", durable(), table(&dlx)).await;
        for q in ["c4-default", "c4-own", "c4-classic"] {
            publish(&ch, q, None).await;
            for _ in 0..=20 {
                let m = get(&ch, q, false).await.expect("still in the queue");
                ch.basic_nack(
                    m.delivery.delivery_tag,
                    BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    },
                )
                .await
                .expect("nack");
            }
        }
        assert_eq!(
            get(&ch, "c4-default", true).await.is_some(),
            !v4,
            "compat 4: {v4}"
        );
        assert!(get(&ch, "c4-own", true).await.is_some());
        assert!(get(&ch, "c4-classic", true).await.is_some());
        let dead = get(&ch, "c4-dlq", true).await;
        assert_eq!(dead.is_some(), v4);
        if let Some(d) = dead {
            assert_eq!(
                header(&d.delivery.properties, "x-first-death-reason"),
                Some(s("delivery_limit"))
            );
        }
    }
    b4.stop().await;
    b3.stop().await;
}
