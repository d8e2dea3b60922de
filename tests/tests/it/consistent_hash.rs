//! The consistent-hash exchange (`x-consistent-hash`) with lapin over TCP, against the
//! behaviour and texts of RabbitMQ 3.10.8's `rabbitmq_consistent_hash_exchange` (checked on a
//! local 3.10.8 with the plugin enabled): weights as binding keys, hashing the routing key, a
//! header or a property, distribution, stability when a queue is added, the plugin's errors,
//! and the exchange across a restart.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::collections::HashMap;
use std::time::Duration;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(20);

fn chx() -> ExchangeKind {
    ExchangeKind::Custom("x-consistent-hash".into())
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn amqp(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

async fn declare_x(ch: &Channel, name: &str, durable: bool, a: FieldTable) {
    ch.exchange_declare(
        name.into(),
        chx(),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        a,
    )
    .await
    .expect("exchange.declare");
}

async fn queue(ch: &Channel, name: &str, durable: bool) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
}

async fn bind(ch: &Channel, q: &str, x: &str, weight: &str) -> Result<(), lapin::Error> {
    ch.queue_bind(
        q.into(),
        x.into(),
        weight.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Waits until the queues hold `total` messages between them; returns their depths.
async fn depths(b: &TestBroker, queues: &[String], total: u32) -> Vec<u32> {
    let vh = b.broker.vhost("/").expect("vhost");
    let count = || {
        queues
            .iter()
            .map(|q| vh.queue(q).map_or(0, |q| q.message_count()))
            .collect::<Vec<u32>>()
    };
    assert!(
        eventually(WAIT, || count().iter().sum::<u32>() == total).await,
        "{:?}",
        count()
    );
    count()
}

/// Publishes with confirms (so that everything is routed when this returns).
async fn publish_all(ch: &Channel, x: &str, msgs: impl Iterator<Item = (String, BasicProperties)>) {
    let mut pending = Vec::new();
    for (key, props) in msgs {
        pending.push(
            ch.basic_publish(
                x.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                b"m",
                props,
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        p.await.expect("confirm");
    }
}

/// Where each message's routing key went, read back with basic.get.
async fn placement(ch: &Channel, queues: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for q in queues {
        while let Some(m) = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            out.insert(m.delivery.routing_key.to_string(), q.clone());
        }
    }
    out
}

async fn confirm_channel(c: &Connection) -> Channel {
    let ch = c.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

#[tokio::test]
async fn routing_keys_spread_by_weight_across_ten_queues() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = confirm_channel(&c).await;
    declare_x(&ch, "chx", false, FieldTable::default()).await;
    let queues: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
    for (i, q) in queues.iter().enumerate() {
        queue(&ch, q, false).await;
        // q0 weighs 2, the others 1: q0 gets 2/11 of the keys, the others 1/11 each.
        bind(&ch, q, "chx", if i == 0 { "2" } else { "1" })
            .await
            .expect("bind");
    }
    let n = 22_000u32;
    publish_all(
        &ch,
        "chx",
        (0..n).map(|i| (format!("order-{i}"), BasicProperties::default())),
    )
    .await;
    let d = depths(&b, &queues, n).await;
    for (i, got) in d.iter().enumerate() {
        let want = if i == 0 { 4_000.0 } else { 2_000.0 };
        let off = (f64::from(*got) / want - 1.0).abs();
        assert!(off < 0.06, "q{i}: {got} messages, want ~{want}: {d:?}");
    }
    // The same key always goes to the same queue.
    for q in &queues {
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }
    publish_all(
        &ch,
        "chx",
        (0..50).map(|_| ("order-7".to_string(), BasicProperties::default())),
    )
    .await;
    let d = depths(&b, &queues, 50).await;
    assert_eq!(d.iter().filter(|n| **n > 0).count(), 1, "{d:?}");
    b.stop().await;
}

#[tokio::test]
async fn adding_a_queue_moves_only_its_share_and_removing_it_restores_placement() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = confirm_channel(&c).await;
    declare_x(&ch, "chx", false, FieldTable::default()).await;
    let mut queues: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
    for q in &queues {
        queue(&ch, q, false).await;
        bind(&ch, q, "chx", "1").await.expect("bind");
    }
    let keys = || (0..2_200).map(|i| (format!("k{i}"), BasicProperties::default()));
    publish_all(&ch, "chx", keys()).await;
    depths(&b, &queues, 2_200).await;
    let before = placement(&ch, &queues).await;
    assert_eq!(before.len(), 2_200);

    queue(&ch, "q10", false).await;
    bind(&ch, "q10", "chx", "1").await.expect("bind");
    queues.push("q10".into());
    publish_all(&ch, "chx", keys()).await;
    depths(&b, &queues, 2_200).await;
    let after = placement(&ch, &queues).await;
    let moved: Vec<&String> = before
        .keys()
        .filter(|k| after.get(*k) != before.get(*k))
        .collect();
    for k in &moved {
        assert_eq!(after[*k], "q10", "{k} moved between old queues");
    }
    // 1/11 of the keys (200) move.
    assert!((160..=240).contains(&moved.len()), "{} moved", moved.len());

    ch.queue_unbind(
        "q10".into(),
        "chx".into(),
        "1".into(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    publish_all(&ch, "chx", keys()).await;
    depths(&b, &queues, 2_200).await;
    assert_eq!(placement(&ch, &queues).await, before);
    b.stop().await;
}

#[tokio::test]
async fn hash_header_and_hash_property_pick_the_queue() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = confirm_channel(&c).await;
    declare_x(
        &ch,
        "by-header",
        false,
        args(&[("hash-header", s("customer"))]),
    )
    .await;
    declare_x(
        &ch,
        "by-id",
        false,
        args(&[("hash-property", s("message_id"))]),
    )
    .await;
    let hq: Vec<String> = (0..4).map(|i| format!("h{i}")).collect();
    let pq: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    for q in &hq {
        queue(&ch, q, false).await;
        bind(&ch, q, "by-header", "1").await.expect("bind");
    }
    for q in &pq {
        queue(&ch, q, false).await;
        bind(&ch, q, "by-id", "1").await.expect("bind");
    }
    let with_customer =
        |c: &str| BasicProperties::default().with_headers(args(&[("customer", s(c))]));
    // One header value, many routing keys: one queue.
    publish_all(
        &ch,
        "by-header",
        (0..40).map(|i| (format!("rk{i}"), with_customer("acme"))),
    )
    .await;
    let d = depths(&b, &hq, 40).await;
    assert_eq!(d.iter().filter(|n| **n > 0).count(), 1, "{d:?}");
    // Many header values, one routing key: spread over all queues.
    for q in &hq {
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }
    publish_all(
        &ch,
        "by-header",
        (0..400).map(|i| ("same".to_string(), with_customer(&format!("c{i}")))),
    )
    .await;
    let d = depths(&b, &hq, 400).await;
    assert!(d.iter().all(|n| (60..=140).contains(n)), "{d:?}");
    // A message without the header is still routed (the plugin hashes `undefined`).
    publish_all(
        &ch,
        "by-header",
        std::iter::once(("x".to_string(), BasicProperties::default())),
    )
    .await;
    depths(&b, &hq, 401).await;

    // message_id, one routing key and no headers: the channel must not reuse a cached route.
    publish_all(
        &ch,
        "by-id",
        (0..400).map(|i| {
            (
                "same".to_string(),
                BasicProperties::default().with_message_id(format!("id-{i}").into()),
            )
        }),
    )
    .await;
    let d = depths(&b, &pq, 400).await;
    assert!(d.iter().all(|n| (60..=140).contains(n)), "{d:?}");
    b.stop().await;
}

#[tokio::test]
async fn bad_arguments_and_weights_get_the_plugin_errors() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let cases = [
        (
            args(&[("hash-header", s("h")), ("hash-property", s("message_id"))]),
            "PRECONDITION_FAILED - hash-header and hash-property are mutually exclusive",
        ),
        (
            args(&[("hash-property", s("app_id"))]),
            "PRECONDITION_FAILED - Unsupported property: app_id",
        ),
    ];
    for (a, text) in cases {
        let ch = c.create_channel().await.expect("channel");
        let e = ch
            .exchange_declare("bad".into(), chx(), ExchangeDeclareOptions::default(), a)
            .await
            .expect_err("406");
        assert_eq!(amqp(&e), (406, text.to_string()));
    }
    let ch = c.create_channel().await.expect("channel");
    declare_x(&ch, "chx", false, FieldTable::default()).await;
    queue(&ch, "q", false).await;
    for (key, text) in [
        (
            "abc",
            "PRECONDITION_FAILED - The binding key must be an integer: <<\"abc\">>",
        ),
        (
            "",
            "PRECONDITION_FAILED - The binding key must be an integer: <<\"\">>",
        ),
        (
            "0",
            "PRECONDITION_FAILED - The binding key must be greater than 0",
        ),
        (
            "-3",
            "PRECONDITION_FAILED - The binding key must be greater than 0",
        ),
    ] {
        let ch = c.create_channel().await.expect("channel");
        let e = bind(&ch, "q", "chx", key).await.expect_err("406");
        assert_eq!(amqp(&e), (406, text.to_string()), "key {key:?}");
    }
    let ch = c.create_channel().await.expect("channel");
    bind(&ch, "q", "chx", "+5").await.expect("+5 is an integer");
    // A non-string hash-header crashes the plugin: RabbitMQ closes the connection with 541.
    let e = ch
        .exchange_declare(
            "bad".into(),
            chx(),
            ExchangeDeclareOptions::default(),
            args(&[("hash-header", AMQPValue::LongInt(5))]),
        )
        .await
        .expect_err("541");
    assert_eq!(amqp(&e), (541, "INTERNAL_ERROR".to_string()));
    assert!(eventually(WAIT, || !c.status().connected()).await);
    // The broker carries on.
    let (_c2, ch2) = b.channel().await;
    declare_x(&ch2, "chx", false, FieldTable::default()).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_exchange_routes_keys_the_same_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queues: Vec<String> = (0..5).map(|i| format!("dq{i}")).collect();
    let keys = || (0..300).map(|i| (format!("k{i}"), BasicProperties::default()));
    let before = {
        let b = TestBroker::start_durable(dir.path()).await;
        let c = b.connect().await;
        let ch = confirm_channel(&c).await;
        declare_x(&ch, "dchx", true, FieldTable::default()).await;
        for (i, q) in queues.iter().enumerate() {
            queue(&ch, q, true).await;
            bind(&ch, q, "dchx", &(i + 1).to_string())
                .await
                .expect("bind");
        }
        publish_all(&ch, "dchx", keys()).await;
        depths(&b, &queues, 300).await;
        let p = placement(&ch, &queues).await;
        c.close(200, "bye".into()).await.expect("close");
        b.stop().await;
        p
    };
    let b = TestBroker::start_durable(dir.path()).await;
    let c = b.connect().await;
    let ch = confirm_channel(&c).await;
    publish_all(&ch, "dchx", keys()).await;
    depths(&b, &queues, 300).await;
    assert_eq!(placement(&ch, &queues).await, before);
    b.stop().await;
}
