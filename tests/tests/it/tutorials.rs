//! RabbitMQ's tutorials 1-7 (https://www.rabbitmq.com/getstarted.html), written with lapin against
//! Warren, each asserting the outcome the tutorial describes.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, ExchangeKind};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::timeout;
use warren_tests::TestBroker;

const WAIT: Duration = Duration::from_secs(10);

async fn next(consumer: &mut Consumer) -> lapin::message::Delivery {
    timeout(WAIT, consumer.next())
        .await
        .expect("a delivery within the timeout")
        .expect("consumer stream open")
        .expect("delivery ok")
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
    .expect("publish")
    .await
    .expect("publish confirm");
}

async fn declare_exclusive(ch: &Channel) -> String {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare server-named queue");
    q.name().as_str().to_string()
}

/// Drains a queue with basic.get (no-ack) and returns the bodies in order.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(String::from_utf8(m.delivery.data.clone()).expect("utf8"));
    }
    out
}

/// Tutorial 1: "Hello World!" — a producer sends one message to a named queue, a consumer on
/// another connection receives it.
#[tokio::test]
async fn tutorial_1_hello_world() {
    let b = TestBroker::start().await;
    let (_pc, producer) = b.channel().await;
    let (_cc, consumer_ch) = b.channel().await;
    producer
        .queue_declare(
            "hello".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    publish(&producer, "", "hello", b"Hello World!").await;
    // The consumer declares it too (idempotent), as in the tutorial.
    let q = consumer_ch
        .queue_declare(
            "hello".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("redeclare");
    assert_eq!(q.message_count(), 1);
    let mut c = consumer_ch
        .basic_consume(
            "hello".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    assert!(c.tag().as_str().starts_with("amq.ctag-"), "{}", c.tag());
    let d = next(&mut c).await;
    assert_eq!(&d.data[..], b"Hello World!");
    assert_eq!(d.routing_key.as_str(), "hello");
    assert_eq!(d.exchange.as_str(), "");
    assert!(!d.redelivered);
    b.stop().await;
}

/// Tutorial 2: work queues — durable queue, persistent messages, prefetch 1 gives fair dispatch
/// (a busy worker gets nothing more until it acks), manual acks.
#[tokio::test]
async fn tutorial_2_work_queues() {
    let b = TestBroker::start().await;
    let (_pc, producer) = b.channel().await;
    let q = producer
        .queue_declare(
            "task_queue".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare durable");
    assert_eq!(q.name().as_str(), "task_queue");

    // Two workers, each on its own connection with prefetch 1.
    let (_sc, slow_ch) = b.channel().await;
    let (_fc, fast_ch) = b.channel().await;
    for ch in [&slow_ch, &fast_ch] {
        ch.queue_declare(
            "task_queue".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("worker declares");
        ch.basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
    }
    let mut slow = slow_ch
        .basic_consume(
            "task_queue".into(),
            "slow".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume slow");
    let mut fast = fast_ch
        .basic_consume(
            "task_queue".into(),
            "fast".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume fast");

    const N: usize = 10;
    for i in 0..N {
        producer
            .basic_publish(
                "".into(),
                "task_queue".into(),
                BasicPublishOptions::default(),
                format!("task {i}.....").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
    }

    // The slow worker takes its first task and sits on it; everything else must go to the
    // fast worker, which acks each task as it finishes.
    let held = next(&mut slow).await;
    assert_eq!(held.properties.delivery_mode(), &Some(2), "persistent");
    let mut fast_got = Vec::new();
    while fast_got.len() < N - 1 {
        let d = next(&mut fast).await;
        assert_eq!(d.properties.delivery_mode(), &Some(2), "persistent");
        assert!(!d.redelivered);
        fast_got.push(String::from_utf8(d.data.clone()).expect("utf8 body"));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // Nothing more arrives at the slow worker while it holds its unacked task.
    assert!(
        timeout(Duration::from_millis(200), slow.next())
            .await
            .is_err(),
        "prefetch 1: no second task for a worker with an unacked one"
    );
    held.ack(BasicAckOptions::default()).await.expect("ack");
    let mut all: BTreeSet<String> = fast_got.into_iter().collect();
    all.insert(String::from_utf8(held.data.clone()).expect("utf8 body"));
    let expected: BTreeSet<String> = (0..N).map(|i| format!("task {i}.....")).collect();
    assert_eq!(all, expected, "every task processed exactly once");

    // All acked: the queue is empty with two consumers.
    let q = producer
        .queue_declare(
            "task_queue".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.consumer_count(), 2);
    let tq = b
        .broker
        .vhost("/")
        .expect("default vhost")
        .queue("task_queue")
        .expect("queue exists");
    assert!(warren_tests::eventually(WAIT, || tq.unacked_count() == 0).await);
    b.stop().await;
}

/// Tutorial 3: publish/subscribe — a fanout exchange, each subscriber with a server-named
/// exclusive queue; every subscriber receives every log line.
#[tokio::test]
async fn tutorial_3_publish_subscribe() {
    let b = TestBroker::start().await;
    let (_pc, producer) = b.channel().await;
    producer
        .exchange_declare(
            "logs".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare fanout");
    let mut subs = Vec::new();
    let mut conns = Vec::new();
    let mut names = BTreeSet::new();
    for _ in 0..2 {
        let (c, ch) = b.channel().await;
        ch.exchange_declare(
            "logs".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("redeclare fanout");
        let q = declare_exclusive(&ch).await;
        assert!(q.starts_with("amq.gen-"), "server-named: {q}");
        assert_eq!(q.len(), "amq.gen-".len() + 22, "{q}");
        names.insert(q.clone());
        ch.queue_bind(
            q.as_str().into(),
            "logs".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        subs.push(consumer);
        conns.push((c, ch, q));
    }
    assert_eq!(names.len(), 2, "distinct server-generated names");
    for i in 0..5 {
        publish(&producer, "logs", "", format!("log {i}").as_bytes()).await;
    }
    for s in &mut subs {
        for i in 0..5 {
            let d = next(s).await;
            assert_eq!(
                String::from_utf8(d.data.clone()).expect("utf8 body"),
                format!("log {i}")
            );
            assert_eq!(d.exchange.as_str(), "logs");
        }
    }
    // Exclusive queues go away with their connection.
    let vh = b.broker.vhost("/").expect("vhost");
    for (c, _ch, q) in conns {
        c.close(200, "bye".into()).await.expect("close");
        assert!(
            warren_tests::eventually(WAIT, || vh.queue(&q).is_none()).await,
            "exclusive queue {q} deleted with its connection"
        );
    }
    b.stop().await;
}

/// Tutorial 4: routing — a direct exchange, one queue bound to `error`, another to `info`,
/// `warning` and `error` (multiple bindings, and one key bound by both queues).
#[tokio::test]
async fn tutorial_4_routing() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.exchange_declare(
        "direct_logs".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare direct");
    let errors_q = declare_exclusive(&ch).await;
    let all_q = declare_exclusive(&ch).await;
    for (q, key) in [
        (&errors_q, "error"),
        (&all_q, "info"),
        (&all_q, "warning"),
        (&all_q, "error"),
    ] {
        ch.queue_bind(
            q.as_str().into(),
            "direct_logs".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    for sev in ["info", "warning", "error", "debug"] {
        publish(&ch, "direct_logs", sev, format!("{sev}: msg").as_bytes()).await;
    }
    assert_eq!(drain(&ch, &errors_q).await, vec!["error: msg"]);
    assert_eq!(
        drain(&ch, &all_q).await,
        vec!["info: msg", "warning: msg", "error: msg"]
    );
    b.stop().await;
}

/// Tutorial 5: topics — Q1 bound to `*.orange.*`, Q2 to `*.*.rabbit` and `lazy.#`, with the
/// tutorial's routing keys and the deliveries it predicts.
#[tokio::test]
async fn tutorial_5_topics() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.exchange_declare(
        "topic_logs".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare topic");
    let q1 = declare_exclusive(&ch).await;
    let q2 = declare_exclusive(&ch).await;
    for (q, pattern) in [(&q1, "*.orange.*"), (&q2, "*.*.rabbit"), (&q2, "lazy.#")] {
        ch.queue_bind(
            q.as_str().into(),
            "topic_logs".into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    let keys = [
        "quick.orange.rabbit",      // Q1, Q2
        "lazy.orange.elephant",     // Q1, Q2
        "quick.orange.fox",         // Q1
        "lazy.brown.fox",           // Q2
        "lazy.pink.rabbit",         // Q2 once, though it matches both of Q2's bindings
        "quick.brown.fox",          // nowhere
        "orange",                   // nowhere
        "quick.orange.new.rabbit",  // nowhere
        "lazy.orange.new.rabbit",   // Q2
        "quick.orange.male.rabbit", // nowhere
    ];
    for k in keys {
        publish(&ch, "topic_logs", k, k.as_bytes()).await;
    }
    assert_eq!(
        drain(&ch, &q1).await,
        vec![
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox"
        ]
    );
    assert_eq!(
        drain(&ch, &q2).await,
        vec![
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.new.rabbit"
        ]
    );
    // `#` alone matches everything, `lazy.#` matches `lazy` itself (zero words).
    let q3 = declare_exclusive(&ch).await;
    ch.queue_bind(
        q3.as_str().into(),
        "topic_logs".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind #");
    publish(&ch, "topic_logs", "lazy", b"lazy").await;
    publish(&ch, "topic_logs", "", b"empty").await;
    assert_eq!(drain(&ch, &q2).await, vec!["lazy"]);
    assert_eq!(drain(&ch, &q3).await, vec!["lazy", "empty"]);
    b.stop().await;
}

fn fib(n: u64) -> u64 {
    match n {
        0 => 0,
        1 => 1,
        _ => {
            let (mut a, mut b) = (0u64, 1u64);
            for _ in 1..n {
                let c = a + b;
                a = b;
                b = c;
            }
            b
        }
    }
}

/// Tutorial 6: RPC — the server consumes `rpc_queue` with prefetch 1 and replies to `reply_to`
/// with the request's `correlation_id`; the client matches replies by correlation id.
#[tokio::test]
async fn tutorial_6_rpc() {
    let b = TestBroker::start().await;
    let (_sc, server_ch) = b.channel().await;
    server_ch
        .queue_declare(
            "rpc_queue".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare rpc_queue");
    server_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut requests = server_ch
        .basic_consume(
            "rpc_queue".into(),
            "rpc-server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume requests");
    let server = tokio::spawn(async move {
        let mut served = 0;
        while let Some(Ok(d)) = requests.next().await {
            let n: u64 = std::str::from_utf8(&d.data)
                .expect("utf8 body")
                .parse()
                .expect("numeric body");
            let reply_to = d.properties.reply_to().clone().expect("reply_to");
            let corr = d
                .properties
                .correlation_id()
                .clone()
                .expect("correlation_id");
            server_ch
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    fib(n).to_string().as_bytes(),
                    BasicProperties::default().with_correlation_id(corr),
                )
                .await
                .expect("reply");
            d.ack(BasicAckOptions::default()).await.expect("ack");
            served += 1;
        }
        served
    });

    let (_cc, client) = b.channel().await;
    let callback = declare_exclusive(&client).await;
    let mut replies = client
        .basic_consume(
            callback.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    let inputs = [30u64, 0, 1, 10, 20, 50];
    let mut expected = HashMap::new();
    for (i, n) in inputs.iter().enumerate() {
        let corr = format!("corr-{i}-{n}");
        expected.insert(corr.clone(), fib(*n));
        client
            .basic_publish(
                "".into(),
                "rpc_queue".into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default()
                    .with_reply_to(ShortString::from(callback.clone()))
                    .with_correlation_id(corr.into()),
            )
            .await
            .expect("request");
    }
    let mut answered = HashMap::new();
    while answered.len() < inputs.len() {
        let d = next(&mut replies).await;
        let corr = d
            .properties
            .correlation_id()
            .clone()
            .expect("reply carries the correlation id")
            .to_string();
        let v: u64 = std::str::from_utf8(&d.data)
            .expect("utf8 body")
            .parse()
            .expect("numeric body");
        assert!(answered.insert(corr, v).is_none(), "one reply per request");
    }
    assert_eq!(answered, expected);
    assert_eq!(expected["corr-0-30"], 832_040);
    drop(server);
    b.stop().await;
}

/// Tutorial 7: publisher confirms — individually, in batches, and handled asynchronously; every
/// confirm is an ack and the counts match.
#[tokio::test]
async fn tutorial_7_publisher_confirms() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    assert!(ch.status().confirm());
    ch.queue_declare(
        "confirms".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let props = BasicProperties::default().with_delivery_mode(2);

    // Strategy 1: one at a time, waiting for each confirm.
    const INDIVIDUAL: usize = 200;
    for i in 0..INDIVIDUAL {
        let confirm = ch
            .basic_publish(
                "".into(),
                "confirms".into(),
                BasicPublishOptions::default(),
                format!("individual {i}").as_bytes(),
                props.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert_eq!(confirm, Confirmation::Ack(None));
    }

    // Strategy 2: batches, waiting for the whole batch.
    const BATCH: usize = 50;
    const BATCHES: usize = 10;
    let mut batch_acks = 0;
    for batch in 0..BATCHES {
        let mut pending = Vec::new();
        for i in 0..BATCH {
            pending.push(
                ch.basic_publish(
                    "".into(),
                    "confirms".into(),
                    BasicPublishOptions::default(),
                    format!("batch {batch} {i}").as_bytes(),
                    props.clone(),
                )
                .await
                .expect("publish"),
            );
        }
        let returned = timeout(WAIT, ch.wait_for_confirms())
            .await
            .expect("confirms in time")
            .expect("wait_for_confirms");
        assert!(returned.is_empty(), "nothing returned");
        for p in pending {
            let c = p.await.expect("confirm");
            assert!(c.is_ack(), "{c:?}");
            batch_acks += 1;
        }
    }
    assert_eq!(batch_acks, BATCH * BATCHES);

    // Strategy 3: asynchronous handling — publish everything, count confirms as they come.
    const ASYNC: usize = 2000;
    let mut confirms = Vec::with_capacity(ASYNC);
    for i in 0..ASYNC {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "confirms".into(),
                BasicPublishOptions::default(),
                format!("async {i}").as_bytes(),
                props.clone(),
            )
            .await
            .expect("publish"),
        );
    }
    let handler = tokio::spawn(async move {
        let mut acks = 0usize;
        let mut others = Vec::new();
        for c in confirms {
            match c.await.expect("confirm") {
                Confirmation::Ack(None) => acks += 1,
                other => others.push(other),
            }
        }
        (acks, others)
    });
    let (acks, others) = timeout(WAIT, handler)
        .await
        .expect("all confirms in time")
        .expect("handler");
    assert!(others.is_empty(), "only plain acks: {others:?}");
    assert_eq!(acks, ASYNC);

    let q = ch
        .queue_declare(
            "confirms".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(
        q.message_count() as usize,
        INDIVIDUAL + BATCH * BATCHES + ASYNC
    );
    b.stop().await;
}
