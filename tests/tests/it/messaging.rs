//! Messaging semantics with lapin against Warren: work distribution, redelivery, prefetch,
//! queue lifecycles, routing extensions, returns, transactions and property pass-through.

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer, ExchangeKind};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::timeout;
use warren_tests::{eventually, message_count as count, TestBroker};

const WAIT: Duration = Duration::from_secs(10);
/// How long "no further delivery" is waited for.
const QUIET: Duration = Duration::from_millis(300);

async fn next(consumer: &mut Consumer) -> Delivery {
    timeout(WAIT, consumer.next())
        .await
        .expect("a delivery within the timeout")
        .expect("consumer stream open")
        .expect("delivery ok")
}

/// Deliveries until none arrives for [`QUIET`].
async fn until_quiet(consumer: &mut Consumer) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(Some(d)) = timeout(QUIET, consumer.next()).await {
        out.push(d.expect("delivery ok"));
    }
    out
}

/// Exactly `n` deliveries (waiting up to [`WAIT`] for each), then nothing more for [`QUIET`].
async fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next(consumer).await);
    }
    let extra = until_quiet(consumer).await;
    assert!(
        extra.is_empty(),
        "expected exactly {n} deliveries, got {} more",
        extra.len()
    );
    out
}

/// Exactly `n` deliveries from two consumers together, then nothing more from either.
async fn take_two(a: &mut Consumer, b: &mut Consumer, n: usize) -> (usize, usize) {
    let (mut na, mut nb) = (0, 0);
    while na + nb < n {
        tokio::select! {
            d = a.next() => { d.expect("stream open").expect("delivery ok"); na += 1; }
            d = b.next() => { d.expect("stream open").expect("delivery ok"); nb += 1; }
            _ = tokio::time::sleep(WAIT) => panic!("only {} of {n} deliveries", na + nb),
        }
    }
    let extra = until_quiet(a).await.len() + until_quiet(b).await.len();
    assert_eq!(extra, 0, "expected exactly {n} deliveries in all");
    (na, nb)
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf8 body")
}

async fn declare(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
}

async fn declare_x(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), args)
        .await
        .expect("exchange.declare");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .expect("queue.bind");
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
}

async fn consume(ch: &Channel, queue: &str, tag: &str, no_ack: bool) -> Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack })
        .await
        .expect("basic.get")
}

/// Bodies of everything in `queue`, drained with no-ack basic.get.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(body(&m.delivery));
    }
    out
}

fn protocol_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match r {
        Ok(_) => {
            let _ = ch.close(200, "OK".into()).await;
            true
        }
        Err(e) => {
            assert_eq!(
                protocol_error(&e),
                (404, format!("NOT_FOUND - no queue '{name}' in vhost '/'"))
            );
            false
        }
    }
}

#[tokio::test]
async fn ten_thousand_tasks_one_worker_prefetch_3_exactly_once() {
    const N: usize = 10_000;
    let b = TestBroker::start().await;
    let (_pc, producer) = b.channel().await;
    declare(&producer, "tasks").await;
    producer
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..N {
        publish(&producer, "", "tasks", i.to_string().as_bytes()).await;
    }
    timeout(WAIT, producer.wait_for_confirms())
        .await
        .expect("confirms in time")
        .expect("confirms");
    assert_eq!(count(&producer, "tasks").await as usize, N);

    let (_wc, worker) = b.channel().await;
    worker
        .basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&worker, "tasks", "worker", false).await;
    let q = b
        .broker
        .vhost("/")
        .expect("default vhost")
        .queue("tasks")
        .expect("queue exists");
    let mut seen = vec![false; N];
    for expected in 0..N {
        let d = next(&mut c).await;
        let i: usize = body(&d).parse().expect("sequence number");
        assert_eq!(i, expected, "single consumer gets FIFO order");
        assert!(!seen[i], "task {i} delivered twice");
        assert!(!d.redelivered);
        seen[i] = true;
        assert!(q.unacked_count() <= 3, "prefetch 3 respected");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(seen.iter().all(|s| *s));
    assert!(until_quiet(&mut c).await.is_empty(), "nothing extra");
    assert!(eventually(WAIT, || q.unacked_count() == 0).await);
    assert_eq!(count(&producer, "tasks").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn closed_worker_unacked_tasks_redelivered_to_second_worker() {
    const N: usize = 20;
    let b = TestBroker::start().await;
    let (_pc, producer) = b.channel().await;
    declare(&producer, "jobs").await;
    for i in 0..N {
        publish(&producer, "", "jobs", i.to_string().as_bytes()).await;
    }
    let mut done = vec![0u32; N];

    // Worker 1: prefetch 5; it acks two tasks (so two more arrive), then its connection goes
    // away with five unacked.
    let (c1, w1) = b.channel().await;
    w1.basic_qos(5, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut cons1 = consume(&w1, "jobs", "w1", false).await;
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(next(&mut cons1).await);
    }
    assert!(until_quiet(&mut cons1).await.is_empty(), "prefetch 5");
    let mut held = Vec::new();
    for (k, d) in first.iter().enumerate() {
        let i: usize = body(d).parse().expect("numeric body");
        if k < 2 {
            d.ack(BasicAckOptions::default()).await.expect("ack");
            done[i] += 1;
        } else {
            held.push(i);
        }
    }
    let refill = take(&mut cons1, 2).await; // two acks free two slots
    held.extend(
        refill
            .iter()
            .map(|d| body(d).parse::<usize>().expect("numeric body")),
    );
    assert_eq!(held, vec![2, 3, 4, 5, 6]);
    c1.close(200, "worker 1 stops".into())
        .await
        .expect("close worker 1");

    // Worker 2 gets everything else, the three unfinished tasks flagged redelivered.
    let (_c2, w2) = b.channel().await;
    let mut cons2 = consume(&w2, "jobs", "w2", false).await;
    for _ in 0..N - 2 {
        let d = next(&mut cons2).await;
        let i: usize = body(&d).parse().expect("numeric body");
        assert_eq!(
            d.redelivered,
            held.contains(&i),
            "redelivered flag of task {i}"
        );
        done[i] += 1;
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(until_quiet(&mut cons2).await.is_empty());
    assert!(
        done.iter().all(|n| *n == 1),
        "each task done once: {done:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn dropped_worker_connection_requeues_unacked() {
    let b = TestBroker::start().await;
    let (_pc, producer) = b.channel().await;
    declare(&producer, "jobs").await;
    for i in 0..4 {
        publish(&producer, "", "jobs", i.to_string().as_bytes()).await;
    }
    {
        let (c1, w1) = b.channel().await;
        let mut cons1 = consume(&w1, "jobs", "w1", false).await;
        for _ in 0..4 {
            next(&mut cons1).await;
        }
        // Dropped without closing: lapin closes it when the last handle goes.
        drop(cons1);
        drop(w1);
        drop(c1);
    }
    let (_c2, w2) = b.channel().await;
    let mut cons2 = consume(&w2, "jobs", "w2", false).await;
    for i in 0..4 {
        let d = next(&mut cons2).await;
        assert_eq!(body(&d), i.to_string(), "original order");
        assert!(d.redelivered);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    b.stop().await;
}

#[tokio::test]
async fn fanout_to_ten_queues_delivers_ten_copies() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_x(&ch, "fan", ExchangeKind::Fanout, FieldTable::default()).await;
    for i in 0..10 {
        let q = format!("fan-{i}");
        declare(&ch, &q).await;
        bind(&ch, &q, "fan", "ignored", FieldTable::default()).await;
    }
    publish(&ch, "fan", "any-key", b"copy").await;
    for i in 0..10 {
        assert_eq!(drain(&ch, &format!("fan-{i}")).await, vec!["copy"]);
    }
    b.stop().await;
}

#[tokio::test]
async fn requeue_via_nack_and_reject_keeps_position_and_sets_redelivered() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "rq").await;
    for i in 0..5 {
        publish(&ch, "", "rq", format!("m{i}").as_bytes()).await;
    }
    let m0 = get(&ch, "rq", false)
        .await
        .expect("AMQP operation succeeds");
    let m1 = get(&ch, "rq", false)
        .await
        .expect("AMQP operation succeeds");
    let m2 = get(&ch, "rq", false)
        .await
        .expect("AMQP operation succeeds");
    assert_eq!(
        [&m0, &m1, &m2].map(|m| body(&m.delivery)),
        ["m0", "m1", "m2"]
    );
    m1.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .expect("reject");
    m0.delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .expect("nack");
    m2.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let mut got = Vec::new();
    while let Some(m) = get(&ch, "rq", true).await {
        got.push((body(&m.delivery), m.delivery.redelivered));
    }
    assert_eq!(
        got,
        vec![
            ("m0".into(), true),
            ("m1".into(), true),
            ("m3".into(), false),
            ("m4".into(), false)
        ]
    );

    // With a consumer: nack(requeue) brings the message straight back, redelivered, ahead of
    // later ones.
    for i in 0..3 {
        publish(&ch, "", "rq", format!("n{i}").as_bytes()).await;
    }
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = consume(&ch, "rq", "c", false).await;
    let d = next(&mut c).await;
    assert_eq!((body(&d), d.redelivered), ("n0".into(), false));
    d.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    })
    .await
    .expect("nack");
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = next(&mut c).await;
        order.push((body(&d), d.redelivered));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(
        order,
        vec![
            ("n0".into(), true),
            ("n1".into(), false),
            ("n2".into(), false)
        ]
    );
    b.stop().await;
}

#[tokio::test]
async fn basic_get_message_count_and_get_empty() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "g").await;
    assert!(get(&ch, "g", false).await.is_none(), "get-empty");
    for i in 0..3 {
        publish(&ch, "", "g", format!("{i}").as_bytes()).await;
    }
    for left in [2u32, 1, 0] {
        let m = get(&ch, "g", false).await.expect("get-ok");
        assert_eq!(m.message_count, left);
        assert_eq!(m.delivery.routing_key.as_str(), "g");
        assert_eq!(m.delivery.exchange.as_str(), "");
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    assert!(get(&ch, "g", true).await.is_none(), "get-empty again");
    b.stop().await;
}

#[tokio::test]
async fn basic_recover_requeues_unacked() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "rec").await;
    for i in 0..3 {
        publish(&ch, "", "rec", format!("r{i}").as_bytes()).await;
    }
    let mut c = consume(&ch, "rec", "c", false).await;
    for i in 0..3 {
        let d = next(&mut c).await;
        assert_eq!((body(&d), d.redelivered), (format!("r{i}"), false));
    }
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("basic.recover");
    for i in 0..3 {
        let d = next(&mut c).await;
        assert_eq!((body(&d), d.redelivered), (format!("r{i}"), true));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(until_quiet(&mut c).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn qos_per_consumer_applies_to_new_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    for q in ["qa", "qb"] {
        declare(&ch, q).await;
        for i in 0..10 {
            publish(&ch, "", q, format!("{i}").as_bytes()).await;
        }
    }
    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .expect("qos 2");
    let mut a = consume(&ch, "qa", "a", false).await;
    ch.basic_qos(5, BasicQosOptions { global: false })
        .await
        .expect("qos 5");
    let mut bb = consume(&ch, "qb", "b", false).await;
    // The consumer created under qos 2 keeps it; the one created under qos 5 gets 5.
    let got_a = take(&mut a, 2).await;
    take(&mut bb, 5).await;
    // Acking one frees exactly one slot for that consumer.
    got_a[0].ack(BasicAckOptions::default()).await.expect("ack");
    take(&mut a, 1).await;
    take(&mut bb, 0).await;
    b.stop().await;
}

#[tokio::test]
async fn qos_global_is_shared_across_channel_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    for q in ["ga", "gb"] {
        declare(&ch, q).await;
        for i in 0..10 {
            publish(&ch, "", q, format!("{i}").as_bytes()).await;
        }
    }
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .expect("qos global");
    let mut a = consume(&ch, "ga", "a", false).await;
    let mut bb = consume(&ch, "gb", "b", false).await;
    // A channel-wide window of 3 shared by both consumers.
    take_two(&mut a, &mut bb, 3).await;
    // Acking everything refills the shared window to 3 again.
    ch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .expect("ack all");
    take_two(&mut a, &mut bb, 3).await;

    // Both limits at once: global 4 and per-consumer 1.
    let (_c2, ch2) = b.channel().await;
    declare(&ch2, "gc").await;
    for i in 0..10 {
        publish(&ch2, "", "gc", format!("{i}").as_bytes()).await;
    }
    ch2.basic_qos(4, BasicQosOptions { global: true })
        .await
        .expect("qos global");
    ch2.basic_qos(1, BasicQosOptions { global: false })
        .await
        .expect("qos per consumer");
    let mut c1 = consume(&ch2, "gc", "c1", false).await;
    let mut c2 = consume(&ch2, "gc", "c2", false).await;
    take(&mut c1, 1).await;
    take(&mut c2, 1).await;
    b.stop().await;
}

#[tokio::test]
async fn round_robin_across_three_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "rr").await;
    let mut consumers = Vec::new();
    let mut conns = Vec::new();
    for i in 0..3 {
        let (c, cch) = b.channel().await;
        consumers.push(consume(&cch, "rr", &format!("c{i}"), true).await);
        conns.push((c, cch));
    }
    for i in 0..9 {
        publish(&ch, "", "rr", i.to_string().as_bytes()).await;
    }
    let mut firsts = Vec::new();
    for c in &mut consumers {
        let got: Vec<usize> = take(c, 3)
            .await
            .iter()
            .map(|d| body(d).parse().expect("numeric body"))
            .collect();
        assert_eq!(got.len(), 3, "each consumer gets a third: {got:?}");
        assert_eq!(got, vec![got[0], got[0] + 3, got[0] + 6], "strict rotation");
        firsts.push(got[0]);
    }
    firsts.sort_unstable();
    assert_eq!(firsts, vec![0, 1, 2]);
    b.stop().await;
}

#[tokio::test]
async fn exclusive_queue_deleted_when_its_connection_closes() {
    let b = TestBroker::start().await;
    let (owner, och) = b.channel().await;
    och.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare exclusive");
    publish(&och, "", "mine", b"x").await;
    let other = b.connect().await;
    let ch = other
        .create_channel()
        .await
        .expect("AMQP operation succeeds");
    let e = ch
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("locked");
    assert_eq!(protocol_error(&e).0, 405);
    owner.close(200, "bye".into()).await.expect("close");
    let vh = b.broker.vhost("/").expect("default vhost");
    assert!(eventually(WAIT, || vh.queue("mine").is_none()).await);
    assert!(!queue_exists(&other, "mine").await);
    b.stop().await;
}

#[tokio::test]
async fn auto_delete_queue_deleted_after_last_consumer_cancels() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "ad".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare auto-delete");
    // Never consumed: stays.
    assert!(queue_exists(&c, "ad").await);
    let _c1 = consume(&ch, "ad", "one", false).await;
    let _c2 = consume(&ch, "ad", "two", false).await;
    ch.basic_cancel("one".into(), BasicCancelOptions::default())
        .await
        .expect("cancel one");
    assert!(queue_exists(&c, "ad").await, "one consumer left");
    ch.basic_cancel("two".into(), BasicCancelOptions::default())
        .await
        .expect("cancel two");
    assert!(!queue_exists(&c, "ad").await, "last consumer gone");

    // Also when the consumer's channel closes.
    ch.queue_declare(
        "ad2".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare auto-delete");
    let ch2 = c.create_channel().await.expect("AMQP operation succeeds");
    let _c3 = consume(&ch2, "ad2", "three", false).await;
    ch2.close(200, "bye".into()).await.expect("close channel");
    assert!(!queue_exists(&c, "ad2").await);
    b.stop().await;
}

#[tokio::test]
async fn server_cancels_consumer_when_queue_deleted() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "doomed").await;
    let mut cons = consume(&ch, "doomed", "watcher", false).await;
    publish(&ch, "", "doomed", b"before").await;
    let d = next(&mut cons).await;
    assert_eq!(body(&d), "before");
    let (_c2, other) = b.channel().await;
    let deleted = other
        .queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(deleted, 0, "no ready messages (one unacked)");
    // lapin ends the consumer stream on a server-sent basic.cancel.
    let end = timeout(WAIT, cons.next())
        .await
        .expect("stream ends in time");
    assert!(end.is_none(), "consumer stream ended: {end:?}");
    // The channel itself stays open.
    assert!(ch.status().connected());
    declare(&ch, "still-works").await;
    b.stop().await;
}

#[tokio::test]
async fn queue_purge_reports_count() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "p").await;
    for _ in 0..7 {
        publish(&ch, "", "p", b"x").await;
    }
    let n = ch
        .queue_purge("p".into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(n, 7);
    assert_eq!(count(&ch, "p").await, 0);
    let n = ch
        .queue_purge("p".into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(n, 0);
    b.stop().await;
}

#[tokio::test]
async fn queue_delete_if_empty_and_if_unused() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    declare(&ch, "d").await;
    publish(&ch, "", "d", b"x").await;
    let e = ch
        .queue_delete(
            "d".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("not empty");
    assert_eq!(
        protocol_error(&e),
        (
            406,
            "PRECONDITION_FAILED - queue 'd' in vhost '/' not empty".into()
        )
    );
    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    // if-unused without consumers succeeds and reports the messages dropped.
    let n = ch
        .queue_delete(
            "d".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect("delete if-unused");
    assert_eq!(n, 1);
    declare(&ch, "e").await;
    let n = ch
        .queue_delete(
            "e".into(),
            QueueDeleteOptions {
                if_empty: true,
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect("delete if-empty");
    assert_eq!(n, 0);
    assert!(!queue_exists(&c, "d").await);
    assert!(!queue_exists(&c, "e").await);
    b.stop().await;
}

#[tokio::test]
async fn exchange_to_exchange_bindings_and_loops() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("AMQP operation succeeds");
    declare_x(&ch, "x1", ExchangeKind::Direct, FieldTable::default()).await;
    declare_x(&ch, "x2", ExchangeKind::Fanout, FieldTable::default()).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    // x1 --k--> x2 --> q2; x1 --k--> q1.
    ch.exchange_bind(
        "x2".into(),
        "x1".into(),
        "k".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.bind");
    bind(&ch, "q2", "x2", "", FieldTable::default()).await;
    bind(&ch, "q1", "x1", "k", FieldTable::default()).await;
    publish(&ch, "x1", "k", b"a").await;
    publish(&ch, "x1", "other", b"b").await;
    ch.wait_for_confirms()
        .await
        .expect("AMQP operation succeeds");
    assert_eq!(drain(&ch, "q1").await, vec!["a"]);
    assert_eq!(drain(&ch, "q2").await, vec!["a"]);

    // Close the loop: x2 --> x1. Nothing is duplicated and routing terminates.
    ch.exchange_bind(
        "x1".into(),
        "x2".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.bind loop");
    let c = timeout(WAIT, async {
        ch.basic_publish(
            "x1".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"loop-1",
            BasicProperties::default(),
        )
        .await
        .expect("AMQP operation succeeds")
        .await
        .expect("AMQP operation succeeds")
    })
    .await
    .expect("no hang");
    assert!(c.is_ack());
    publish(&ch, "x2", "k", b"loop-2").await;
    publish(&ch, "x2", "zzz", b"loop-3").await;
    timeout(WAIT, ch.wait_for_confirms())
        .await
        .expect("no hang")
        .expect("AMQP operation succeeds");
    assert_eq!(drain(&ch, "q1").await, vec!["loop-1", "loop-2"]);
    assert_eq!(drain(&ch, "q2").await, vec!["loop-1", "loop-2", "loop-3"]);

    // Unbinding x1 -> x2 stops the flow to q2 from x1.
    ch.exchange_unbind(
        "x2".into(),
        "x1".into(),
        "k".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, "x1", "k", b"after").await;
    ch.wait_for_confirms()
        .await
        .expect("AMQP operation succeeds");
    assert_eq!(drain(&ch, "q1").await, vec!["after"]);
    assert!(drain(&ch, "q2").await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn alternate_exchange_receives_unroutable() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_x(&ch, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae".into()),
    );
    declare_x(&ch, "main", ExchangeKind::Direct, args).await;
    declare(&ch, "routed").await;
    declare(&ch, "unrouted").await;
    bind(&ch, "routed", "main", "k", FieldTable::default()).await;
    bind(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    publish(&ch, "main", "k", b"1").await;
    publish(&ch, "main", "nope", b"2").await;
    // Mandatory: routed through the AE, so not returned.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("AMQP operation succeeds");
    let c = ch
        .basic_publish(
            "main".into(),
            "nope".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"3",
            BasicProperties::default(),
        )
        .await
        .expect("AMQP operation succeeds")
        .await
        .expect("AMQP operation succeeds");
    assert_eq!(c, Confirmation::Ack(None));
    assert_eq!(drain(&ch, "routed").await, vec!["1"]);
    assert_eq!(drain(&ch, "unrouted").await, vec!["2", "3"]);
    b.stop().await;
}

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

#[tokio::test]
async fn headers_exchange_x_match_all_and_any() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_x(&ch, "hx", ExchangeKind::Headers, FieldTable::default()).await;
    declare(&ch, "all").await;
    declare(&ch, "any").await;
    bind(
        &ch,
        "all",
        "hx",
        "",
        table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await;
    bind(
        &ch,
        "any",
        "hx",
        "",
        table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("log")),
        ]),
    )
    .await;
    let cases: [(&str, FieldTable); 5] = [
        (
            "pdf-report",
            table(&[("format", s("pdf")), ("type", s("report"))]),
        ),
        (
            "pdf-report-extra",
            table(&[
                ("format", s("pdf")),
                ("type", s("report")),
                ("extra", AMQPValue::LongInt(1)),
            ]),
        ),
        ("pdf", table(&[("format", s("pdf"))])),
        ("log", table(&[("type", s("log"))])),
        (
            "zip-report",
            table(&[("format", s("zip")), ("type", s("report"))]),
        ),
    ];
    for (name, headers) in cases {
        ch.basic_publish(
            "hx".into(),
            "".into(),
            BasicPublishOptions::default(),
            name.as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("AMQP operation succeeds");
    }
    publish(&ch, "hx", "", b"no-headers").await;
    assert_eq!(
        drain(&ch, "all").await,
        vec!["pdf-report", "pdf-report-extra"]
    );
    assert_eq!(
        drain(&ch, "any").await,
        vec!["pdf-report", "pdf-report-extra", "pdf", "log"]
    );
    b.stop().await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_with_312_no_route() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    // Without confirms: the return is kept by lapin and handed out by wait_for_confirms.
    ch.basic_publish(
        "amq.direct".into(),
        "nowhere".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"lost?",
        BasicProperties::default().with_message_id("m-1".into()),
    )
    .await
    .expect("AMQP operation succeeds");
    // A round trip makes sure the return has been read.
    declare(&ch, "sync").await;
    let returned = ch.wait_for_confirms().await.expect("returns");
    assert_eq!(returned.len(), 1, "{returned:?}");
    let r = &returned[0];
    assert_eq!(r.reply_code, 312);
    assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(r.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(r.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(&r.delivery.data[..], b"lost?");
    assert_eq!(
        r.delivery.properties.message_id(),
        &Some(ShortString::from("m-1"))
    );
    // Not mandatory: silently dropped.
    publish(&ch, "amq.direct", "nowhere", b"dropped").await;
    declare(&ch, "sync").await;
    assert!(ch
        .wait_for_confirms()
        .await
        .expect("AMQP operation succeeds")
        .is_empty());

    // In confirm mode the return precedes the ack: lapin attaches a return that arrived
    // before the ack to that ack's confirmation.
    let (_c2, cch) = b.channel().await;
    cch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("AMQP operation succeeds");
    for i in 0..3 {
        let conf = cch
            .basic_publish(
                "amq.direct".into(),
                "nowhere".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("ret-{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("AMQP operation succeeds")
            .await
            .expect("AMQP operation succeeds");
        let Confirmation::Ack(Some(msg)) = conf else {
            panic!("expected an ack carrying the returned message, got {conf:?}");
        };
        assert_eq!(msg.reply_code, 312);
        assert_eq!(msg.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(body(&msg.delivery), format!("ret-{i}"));
    }
    // A routable mandatory publish is acked without a return.
    let conf = cch
        .basic_publish(
            "".into(),
            "sync".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"fine",
            BasicProperties::default(),
        )
        .await
        .expect("AMQP operation succeeds")
        .await
        .expect("AMQP operation succeeds");
    assert_eq!(conf, Confirmation::Ack(None));
    b.stop().await;
}

#[tokio::test]
async fn transactions_commit_and_rollback_publishes() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (_oc, observer) = b.channel().await;
    declare(&ch, "txq").await;
    ch.tx_select().await.expect("tx.select");
    publish(&ch, "", "txq", b"r1").await;
    publish(&ch, "", "txq", b"r2").await;
    assert_eq!(count(&observer, "txq").await, 0, "uncommitted invisible");
    ch.tx_rollback().await.expect("tx.rollback");
    assert_eq!(count(&observer, "txq").await, 0, "rolled back");
    for i in 0..3 {
        publish(&ch, "", "txq", format!("c{i}").as_bytes()).await;
    }
    assert_eq!(count(&observer, "txq").await, 0);
    ch.tx_commit().await.expect("tx.commit");
    assert_eq!(count(&observer, "txq").await, 3, "committed");
    assert_eq!(drain(&observer, "txq").await, vec!["c0", "c1", "c2"]);
    // The channel stays transactional: a second commit works and publishes again wait.
    publish(&ch, "", "txq", b"c3").await;
    assert_eq!(count(&observer, "txq").await, 0);
    ch.tx_commit().await.expect("tx.commit");
    assert_eq!(count(&observer, "txq").await, 1);
    b.stop().await;
}

#[tokio::test]
async fn transactions_acks_apply_only_on_commit() {
    let b = TestBroker::start().await;
    let (_c, setup) = b.channel().await;
    declare(&setup, "txa").await;
    for i in 0..3 {
        publish(&setup, "", "txa", format!("{i}").as_bytes()).await;
    }
    let q = b
        .broker
        .vhost("/")
        .expect("default vhost")
        .queue("txa")
        .expect("queue exists");

    let (c2, ch) = b.channel().await;
    ch.tx_select().await.expect("tx.select");
    let mut tags = Vec::new();
    for _ in 0..3 {
        tags.push(
            get(&ch, "txa", false)
                .await
                .expect("get-ok")
                .delivery
                .delivery_tag,
        );
    }
    assert_eq!(q.unacked_count(), 3);
    ch.basic_ack(tags[2], BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    assert_eq!(count(&setup, "txa").await, 0);
    assert_eq!(q.unacked_count(), 3, "acks wait for commit");
    ch.tx_rollback().await.expect("rollback");
    assert_eq!(q.unacked_count(), 3, "rolled-back acks are forgotten");
    // Ack two of them again and commit.
    ch.basic_ack(tags[1], BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    assert_eq!(q.unacked_count(), 3);
    ch.tx_commit().await.expect("commit");
    assert_eq!(q.unacked_count(), 1, "committed acks settle");
    // Closing the channel returns the last (never acked) message, redelivered.
    c2.close(200, "bye".into()).await.expect("close");
    assert!(eventually(WAIT, || q.unacked_count() == 0).await);
    let m = get(&setup, "txa", true).await.expect("requeued");
    assert_eq!(body(&m.delivery), "2");
    assert!(m.delivery.redelivered);
    assert!(get(&setup, "txa", true).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn content_properties_and_every_header_type_pass_through() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "props").await;

    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongInt(-7));
    nested.insert(
        "deeper".into(),
        AMQPValue::FieldTable(table(&[("z", s("zz"))])),
    );
    let headers: BTreeMap<&str, AMQPValue> = [
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-1600)),
        ("u16", AMQPValue::ShortUInt(60_000)),
        ("i32", AMQPValue::LongInt(-3_200_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(-6_400_000_000_000)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25e100)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12_345,
            }),
        ),
        (
            "longstr",
            AMQPValue::LongString(LongString::from("héllo wörld".as_bytes())),
        ),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                s("two"),
                AMQPValue::Boolean(false),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        ("void", AMQPValue::Void),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 255])),
        ),
    ]
    .into_iter()
    .collect();
    let mut ft = FieldTable::default();
    for (k, v) in &headers {
        ft.insert((*k).into(), v.clone());
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(ft.clone())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_650_000_000)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("warren-tests".into())
        .with_cluster_id("cluster-x".into());
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    ch.basic_publish(
        "".into(),
        "props".into(),
        BasicPublishOptions::default(),
        &payload,
        props.clone(),
    )
    .await
    .expect("AMQP operation succeeds");
    ch.basic_publish(
        "".into(),
        "props".into(),
        BasicPublishOptions::default(),
        b"",
        BasicProperties::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let mut c = consume(&ch, "props", "c", true).await;
    let d = next(&mut c).await;
    assert_eq!(d.data, payload, "multi-frame body intact");
    assert_eq!(d.properties, props, "all properties unchanged");
    let got = d.properties.headers().clone().expect("headers");
    for (k, v) in &headers {
        assert_eq!(
            got.inner().get(&ShortString::from(*k)),
            Some(v),
            "header {k}"
        );
    }
    assert_eq!(got.inner().len(), headers.len());
    let empty = next(&mut c).await;
    assert!(empty.data.is_empty());
    assert_eq!(empty.properties, BasicProperties::default());

    // Also through basic.get.
    ch.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .expect("AMQP operation succeeds");
    ch.basic_publish(
        "".into(),
        "props".into(),
        BasicPublishOptions::default(),
        b"via-get",
        props.clone(),
    )
    .await
    .expect("AMQP operation succeeds");
    let mut found = false;
    while let Some(m) = get(&ch, "props", true).await {
        assert_eq!(m.delivery.properties, props);
        found |= m.delivery.data == b"via-get";
    }
    assert!(found);
    b.stop().await;
}

#[tokio::test]
async fn reject_and_nack_without_requeue_drop_and_nack_multiple_requeues_in_order() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "nk").await;
    for i in 0..6 {
        publish(&ch, "", "nk", format!("m{i}").as_bytes()).await;
    }
    let mut c = consume(&ch, "nk", "c", false).await;
    let ds: Vec<Delivery> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(next(&mut c).await);
        }
        v
    };
    // m0 rejected and m1 nacked without requeue: gone.
    ds[0]
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    ds[1]
        .nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
        .expect("nack");
    // nack multiple up to m4 (tag 5) with requeue: m2, m3, m4 come back in order; m5 stays
    // unacked.
    ch.basic_nack(
        ds[4].delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: true,
        },
    )
    .await
    .expect("nack multiple");
    let again: Vec<(String, bool)> = take(&mut c, 3)
        .await
        .iter()
        .map(|d| (body(d), d.redelivered))
        .collect();
    assert_eq!(
        again,
        vec![
            ("m2".into(), true),
            ("m3".into(), true),
            ("m4".into(), true)
        ]
    );
    let q = b
        .broker
        .vhost("/")
        .expect("default vhost")
        .queue("nk")
        .expect("queue exists");
    assert_eq!(q.unacked_count(), 4, "m5 and the three redeliveries");
    ch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .expect("ack all");
    assert!(eventually(WAIT, || q.unacked_count() == 0).await);
    assert_eq!(count(&ch, "nk").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn deliveries_stay_ackable_after_consumer_cancel() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "ca").await;
    for i in 0..2 {
        publish(&ch, "", "ca", format!("{i}").as_bytes()).await;
    }
    let mut c = consume(&ch, "ca", "c", false).await;
    let d0 = next(&mut c).await;
    let d1 = next(&mut c).await;
    ch.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    d0.ack(BasicAckOptions::default()).await.expect("ack");
    d1.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    })
    .await
    .expect("nack");
    // The channel is fine (no unknown-tag error) and the nacked one is back, redelivered.
    let m = get(&ch, "ca", true).await.expect("requeued message");
    assert_eq!(body(&m.delivery), "1");
    assert!(m.delivery.redelivered);
    assert!(ch.status().connected());
    b.stop().await;
}

#[tokio::test]
async fn purge_leaves_unacked_messages_alone() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "pu").await;
    for i in 0..4 {
        publish(&ch, "", "pu", format!("{i}").as_bytes()).await;
    }
    let held = get(&ch, "pu", false).await.expect("get-ok");
    let n = ch
        .queue_purge("pu".into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(n, 3, "only ready messages are purged");
    held.delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .expect("nack");
    let m = get(&ch, "pu", true)
        .await
        .expect("the unacked one survives");
    assert_eq!(body(&m.delivery), "0");
    assert!(m.delivery.redelivered);
    b.stop().await;
}

#[tokio::test]
async fn mandatory_publish_in_transaction_is_returned_on_commit() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "txm").await;
    ch.tx_select().await.expect("tx.select");
    for (key, body) in [("txm", "routed"), ("nowhere", "unroutable")] {
        ch.basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    ch.tx_rollback().await.expect("rollback");
    declare(&ch, "sync").await;
    assert!(
        ch.wait_for_confirms().await.expect("returns").is_empty(),
        "a rolled-back publish is never returned"
    );
    ch.basic_publish(
        "".into(),
        "nowhere".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"unroutable",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    ch.tx_commit().await.expect("commit");
    let returned = ch.wait_for_confirms().await.expect("returns");
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0].reply_code, 312);
    assert_eq!(returned[0].reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned[0].delivery.routing_key.as_str(), "nowhere");
    assert_eq!(count(&ch, "txm").await, 0);
    b.stop().await;
}

#[tokio::test]
async fn default_exchange_to_missing_queue_drops_or_returns() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let plain = ch
        .basic_publish(
            "".into(),
            "no-such-queue".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert_eq!(plain, Confirmation::Ack(None), "unroutable is still acked");
    let mandatory = ch
        .basic_publish(
            "".into(),
            "no-such-queue".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"y",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let Confirmation::Ack(Some(r)) = mandatory else {
        panic!("expected a return before the ack, got {mandatory:?}");
    };
    assert_eq!((r.reply_code, r.reply_text.as_str()), (312, "NO_ROUTE"));
    assert_eq!(r.delivery.exchange.as_str(), "");
    assert_eq!(r.delivery.routing_key.as_str(), "no-such-queue");
    b.stop().await;
}

#[tokio::test]
async fn headers_exchange_ignores_x_keys_and_matches_values_exactly() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare_x(&ch, "hx2", ExchangeKind::Headers, FieldTable::default()).await;
    declare(&ch, "h-all").await;
    declare(&ch, "h-any").await;
    declare(&ch, "h-int").await;
    // `x-` keys in the binding are not matched against (plain all/any).
    bind(
        &ch,
        "h-all",
        "hx2",
        "",
        table(&[("x-match", s("all")), ("x-foo", s("bar")), ("a", s("1"))]),
    )
    .await;
    bind(
        &ch,
        "h-any",
        "hx2",
        "",
        table(&[("x-match", s("any")), ("x-foo", s("bar"))]),
    )
    .await;
    // No x-match means all.
    bind(
        &ch,
        "h-int",
        "hx2",
        "",
        table(&[("n", AMQPValue::LongInt(5))]),
    )
    .await;
    let send = |name: &'static str, headers: FieldTable| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "hx2".into(),
                "".into(),
                BasicPublishOptions::default(),
                name.as_bytes(),
                BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("publish");
        }
    };
    send("a1", table(&[("a", s("1"))])).await;
    send("a1-xfoo", table(&[("a", s("1")), ("x-foo", s("bar"))])).await;
    send("a2", table(&[("a", s("2"))])).await;
    send("n5", table(&[("n", AMQPValue::LongInt(5))])).await;
    send("n6", table(&[("n", AMQPValue::LongInt(6))])).await;
    assert_eq!(drain(&ch, "h-all").await, vec!["a1", "a1-xfoo"]);
    assert!(
        drain(&ch, "h-any").await.is_empty(),
        "an any-binding with only x- keys matches nothing"
    );
    assert_eq!(drain(&ch, "h-int").await, vec!["n5"]);
    b.stop().await;
}
