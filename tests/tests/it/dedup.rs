//! Exchange-level deduplication with lapin over TCP: the `rabbitmq-message-deduplication`
//! plugin's exchange type `x-message-deduplication` (texts from its source) and LavinMQ's
//! `x-message-deduplication: true` argument on another exchange type. Time is the broker's
//! manual clock (cache TTLs).

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::Duration;
use warren_tests::TestBroker;

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn dedup_type() -> ExchangeKind {
    ExchangeKind::Custom("x-message-deduplication".into())
}

fn keyed(key: &str) -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("x-deduplication-header", s(key))]))
}

fn amqp(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

async fn queue_bound(ch: &Channel, q: &str, x: &str, key: &str) {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.queue_bind(
        q.into(),
        x.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

/// Publishes with confirms; every publish is acked, duplicates included.
async fn publish(ch: &Channel, x: &str, key: &str, props: BasicProperties) {
    let c = ch
        .basic_publish(
            x.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"m",
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(c.is_ack(), "{c:?}");
}

fn depth(b: &TestBroker, q: &str) -> u32 {
    b.broker
        .vhost("/")
        .and_then(|v| v.queue(q))
        .map_or(0, |q| q.message_count())
}

async fn confirm_channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (c, ch)
}

#[tokio::test]
async fn plugin_exchange_drops_duplicates_within_the_ttl_and_acks_them() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    ch.exchange_declare(
        "dedup".into(),
        dedup_type(),
        ExchangeDeclareOptions::default(),
        table(&[
            ("x-cache-size", AMQPValue::LongInt(100)),
            ("x-cache-ttl", AMQPValue::LongInt(1_000)),
        ]),
    )
    .await
    .expect("exchange.declare");
    // Routes as fanout: both queues, whatever the key.
    queue_bound(&ch, "q1", "dedup", "").await;
    queue_bound(&ch, "q2", "dedup", "ignored").await;
    publish(&ch, "dedup", "k", keyed("order-1")).await;
    publish(&ch, "dedup", "k", keyed("order-1")).await;
    publish(&ch, "dedup", "k", keyed("order-2")).await;
    publish(&ch, "dedup", "k", BasicProperties::default()).await;
    publish(&ch, "dedup", "k", BasicProperties::default()).await;
    assert_eq!((depth(&b, "q1"), depth(&b, "q2")), (4, 4));
    b.advance(Duration::from_millis(999)).await;
    publish(&ch, "dedup", "k", keyed("order-1")).await;
    assert_eq!(depth(&b, "q1"), 4, "still within the TTL");
    b.advance(Duration::from_millis(1)).await;
    publish(&ch, "dedup", "k", keyed("order-1")).await;
    assert_eq!(depth(&b, "q1"), 5, "the TTL passed");
    // A per-message x-cache-ttl overrides the exchange's.
    let long = BasicProperties::default().with_headers(table(&[
        ("x-deduplication-header", s("order-3")),
        ("x-cache-ttl", AMQPValue::LongInt(5_000)),
    ]));
    publish(&ch, "dedup", "k", long).await;
    b.advance(Duration::from_millis(3_000)).await;
    publish(&ch, "dedup", "k", keyed("order-3")).await;
    assert_eq!(depth(&b, "q1"), 6);
    b.stop().await;
}

#[tokio::test]
async fn without_a_ttl_keys_stay_until_the_cache_is_full() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    ch.exchange_declare(
        "dedup".into(),
        dedup_type(),
        ExchangeDeclareOptions::default(),
        table(&[("x-cache-size", s("2"))]),
    )
    .await
    .expect("exchange.declare");
    queue_bound(&ch, "q", "dedup", "").await;
    publish(&ch, "dedup", "", keyed("a")).await;
    b.advance(Duration::from_secs(3_600)).await;
    publish(&ch, "dedup", "", keyed("a")).await;
    assert_eq!(depth(&b, "q"), 1, "no TTL: still a duplicate an hour later");
    publish(&ch, "dedup", "", keyed("b")).await;
    publish(&ch, "dedup", "", keyed("c")).await;
    assert_eq!(
        b.broker.vhost("/").and_then(|v| v.dedup_cache_len("dedup")),
        Some(2)
    );
    // "a" made room for "c".
    publish(&ch, "dedup", "", keyed("a")).await;
    assert_eq!(depth(&b, "q"), 4);
    b.stop().await;
}

#[tokio::test]
async fn duplicates_published_mandatory_are_returned() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = b.channel().await;
    ch.exchange_declare(
        "dedup".into(),
        dedup_type(),
        ExchangeDeclareOptions::default(),
        table(&[("x-cache-size", AMQPValue::LongInt(10))]),
    )
    .await
    .expect("exchange.declare");
    queue_bound(&ch, "q", "dedup", "").await;
    for _ in 0..2 {
        ch.basic_publish(
            "dedup".into(),
            "".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"m",
            keyed("once"),
        )
        .await
        .expect("publish");
    }
    ch.queue_declare(
        "sync".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("round trip");
    let returned = ch.wait_for_confirms().await.expect("returns");
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0].reply_text.as_str(), "NO_ROUTE");
    assert_eq!(depth(&b, "q"), 1);
    b.stop().await;
}

#[tokio::test]
async fn lavinmq_argument_on_a_direct_exchange_with_a_named_header() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    ch.exchange_declare(
        "orders".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        table(&[
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-deduplication-header", s("order-id")),
            ("x-cache-ttl", AMQPValue::LongInt(500)),
        ]),
    )
    .await
    .expect("exchange.declare");
    queue_bound(&ch, "eu", "orders", "eu").await;
    queue_bound(&ch, "us", "orders", "us").await;
    let order = |id: &str| BasicProperties::default().with_headers(table(&[("order-id", s(id))]));
    publish(&ch, "orders", "eu", order("1")).await;
    publish(&ch, "orders", "eu", order("1")).await;
    // Deduplication is across the exchange, before routing.
    publish(&ch, "orders", "us", order("1")).await;
    publish(&ch, "orders", "us", order("2")).await;
    // The plugin's header name is not the one this exchange reads.
    publish(&ch, "orders", "us", keyed("2")).await;
    publish(&ch, "orders", "us", keyed("2")).await;
    assert_eq!((depth(&b, "eu"), depth(&b, "us")), (1, 3));
    b.advance(Duration::from_millis(500)).await;
    publish(&ch, "orders", "us", order("1")).await;
    assert_eq!(depth(&b, "us"), 4);
    b.stop().await;
}

#[tokio::test]
async fn bad_arguments_get_the_plugin_errors() {
    let b = TestBroker::start_manual().await;
    let c = b.connect().await;
    for (args, text) in [
        (
            FieldTable::default(),
            "PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
        ),
        (
            table(&[("x-cache-size", AMQPValue::LongInt(0))]),
            "PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
        ),
        (
            table(&[("x-cache-size", AMQPValue::LongInt(5)), ("x-cache-ttl", s("soon"))]),
            "PRECONDITION_FAILED - Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
        ),
        (
            table(&[
                ("x-cache-size", AMQPValue::LongInt(5)),
                ("x-cache-persistence", s("tape")),
            ]),
            "PRECONDITION_FAILED - Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'",
        ),
    ] {
        let ch = c.create_channel().await.expect("channel");
        let e = ch
            .exchange_declare("bad".into(), dedup_type(), ExchangeDeclareOptions::default(), args)
            .await
            .expect_err("406");
        assert_eq!(amqp(&e), (406, text.to_string()));
    }
    b.stop().await;
}

async fn dedup_queue(ch: &Channel, q: &str, durable: bool, extra: &[(&str, AMQPValue)]) {
    let mut args = vec![("x-message-deduplication", AMQPValue::Boolean(true))];
    args.extend_from_slice(extra);
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        table(&args),
    )
    .await
    .expect("queue.declare");
}

async fn persistent(ch: &Channel, q: &str, key: &str) {
    publish(ch, "", q, keyed(key).with_delivery_mode(2)).await;
}

async fn get(ch: &Channel, q: &str, no_ack: bool) -> lapin::message::BasicGetMessage {
    ch.basic_get(q.into(), BasicGetOptions { no_ack })
        .await
        .expect("basic.get")
        .expect("a message")
}

/// The plugin's queue mode: a message is not enqueued while one with the same
/// `x-deduplication-header` is in the queue, ready or unacknowledged (it is still confirmed);
/// the key is free again once that message is acked, taken without ack, dead-lettered or
/// purged; a nack with requeue keeps it.
#[tokio::test]
async fn queue_refuses_a_key_while_a_message_with_it_is_queued() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    dedup_queue(&ch, "dq", false, &[]).await;
    publish(&ch, "", "dq", keyed("a")).await;
    publish(&ch, "", "dq", keyed("a")).await;
    publish(&ch, "", "dq", keyed("b")).await;
    publish(&ch, "", "dq", BasicProperties::default()).await;
    publish(&ch, "", "dq", BasicProperties::default()).await;
    assert_eq!(depth(&b, "dq"), 4, "a, b and the two unkeyed");

    // Unacknowledged still counts; a requeue keeps the key; the ack frees it.
    let m = get(&ch, "dq", false).await;
    assert_eq!(header(&m, "x-deduplication-header"), Some(s("a")));
    publish(&ch, "", "dq", keyed("a")).await;
    assert_eq!(depth(&b, "dq"), 3, "a is unacked, the copy is dropped");
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .expect("nack");
    publish(&ch, "", "dq", keyed("a")).await;
    assert_eq!(depth(&b, "dq"), 4, "requeued a still holds the key");
    let m = get(&ch, "dq", false).await;
    assert_eq!(header(&m, "x-deduplication-header"), Some(s("a")));
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .expect("ack");
    publish(&ch, "", "dq", keyed("a")).await;
    assert_eq!(depth(&b, "dq"), 4, "after the ack a is enqueued again");

    // Taken without ack (b is next), the key is free at once.
    let m = get(&ch, "dq", true).await;
    assert_eq!(header(&m, "x-deduplication-header"), Some(s("b")));
    publish(&ch, "", "dq", keyed("b")).await;
    assert_eq!(depth(&b, "dq"), 4);

    // A purge frees every key.
    ch.queue_purge("dq".into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    publish(&ch, "", "dq", keyed("a")).await;
    publish(&ch, "", "dq", keyed("b")).await;
    assert_eq!(depth(&b, "dq"), 2);

    // Rejected without requeue (no DLX: dropped) frees it too; so does a message TTL.
    let m = get(&ch, "dq", false).await;
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .expect("reject");
    publish(&ch, "", "dq", keyed("a")).await;
    assert_eq!(depth(&b, "dq"), 2, "a again, after b");
    dedup_queue(
        &ch,
        "dq-ttl",
        false,
        &[("x-message-ttl", AMQPValue::LongInt(100))],
    )
    .await;
    publish(&ch, "", "dq-ttl", keyed("t")).await;
    b.advance(Duration::from_millis(100)).await;
    publish(&ch, "", "dq-ttl", keyed("t")).await;
    assert_eq!(
        depth(&b, "dq-ttl"),
        1,
        "the first expired; the second is queued"
    );

    // LavinMQ's x-deduplication-header argument names another header.
    dedup_queue(
        &ch,
        "dq-named",
        false,
        &[("x-deduplication-header", s("order"))],
    )
    .await;
    let order = |v: &str| BasicProperties::default().with_headers(table(&[("order", s(v))]));
    publish(&ch, "", "dq-named", order("1")).await;
    publish(&ch, "", "dq-named", order("1")).await;
    publish(&ch, "", "dq-named", keyed("1")).await;
    assert_eq!(depth(&b, "dq-named"), 2);
    // A plain queue does not deduplicate.
    ch.queue_declare(
        "plain".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    publish(&ch, "", "plain", keyed("a")).await;
    publish(&ch, "", "plain", keyed("a")).await;
    assert_eq!(depth(&b, "plain"), 2);
    b.stop().await;
}

fn header(m: &lapin::message::BasicGetMessage, key: &str) -> Option<AMQPValue> {
    m.delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
}

/// A durable deduplicating queue's persistent messages hold their keys across a restart.
#[tokio::test]
async fn queue_keys_survive_a_restart_with_their_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let b = TestBroker::start_durable_manual(dir.path()).await;
        let (_c, ch) = confirm_channel(&b).await;
        dedup_queue(&ch, "ddq", true, &[]).await;
        persistent(&ch, "ddq", "a").await;
        persistent(&ch, "ddq", "b").await;
        persistent(&ch, "ddq", "a").await;
        assert_eq!(depth(&b, "ddq"), 2);
        b.stop().await;
    }
    let b = TestBroker::start_durable_manual(dir.path()).await;
    let (_c, ch) = confirm_channel(&b).await;
    assert_eq!(depth(&b, "ddq"), 2, "recovered");
    persistent(&ch, "ddq", "a").await;
    assert_eq!(depth(&b, "ddq"), 2, "a is still queued after the restart");
    let m = get(&ch, "ddq", true).await;
    assert_eq!(header(&m, "x-deduplication-header"), Some(s("a")));
    persistent(&ch, "ddq", "a").await;
    assert_eq!(depth(&b, "ddq"), 2, "b and the new a");
    b.stop().await;
}

/// Bad queue arguments get the plugin's texts (LavinMQ's form of the arguments).
#[tokio::test]
async fn queue_dedup_bad_arguments_are_refused() {
    let b = TestBroker::start().await;
    let (c, _ch) = b.channel().await;
    for (args, text) in [
        (
            vec![
                ("x-message-deduplication", AMQPValue::Boolean(true)),
                ("x-cache-size", AMQPValue::LongInt(0)),
            ],
            "PRECONDITION_FAILED - Invalid argument, 'x-cache-size' must be an integer greater than 0",
        ),
        (
            vec![
                ("x-message-deduplication", AMQPValue::Boolean(true)),
                ("x-deduplication-header", AMQPValue::LongInt(1)),
            ],
            "PRECONDITION_FAILED - Invalid argument, 'x-deduplication-header' must be a string",
        ),
    ] {
        let ch = c.create_channel().await.expect("channel");
        let e = ch
            .queue_declare("bad".into(), QueueDeclareOptions::default(), table(&args))
            .await
            .expect_err("refused");
        assert_eq!(amqp(&e), (406, text.to_string()));
    }
    let ch = c
        .create_channel()
        .await
        .expect("the connection still works");
    ch.queue_declare(
        "good".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    b.stop().await;
}
