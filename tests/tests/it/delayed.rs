//! The delayed-message exchange (`x-delayed-message`) with lapin over TCP, against the
//! community `rabbitmq_delayed_message_exchange` plugin's behaviour and texts (from its
//! source: `rabbit_exchange_type_delayed_message.erl`, `rabbit_delayed_message_utils.erl`).
//! Time is the broker's manual clock: messages fall due when a test advances it.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::Duration;
use tokio::time::timeout;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

fn delayed() -> ExchangeKind {
    ExchangeKind::Custom("x-delayed-message".into())
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

fn delay(ms: AMQPValue) -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("x-delay", ms)]))
}

fn amqp(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

async fn declare_delayed(ch: &Channel, name: &str, kind: &str) {
    ch.exchange_declare(
        name.into(),
        delayed(),
        ExchangeDeclareOptions::default(),
        table(&[("x-delayed-type", s(kind))]),
    )
    .await
    .expect("exchange.declare");
}

async fn queue_bound(ch: &Channel, q: &str, x: &str, key: &str, args: FieldTable) {
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
        args,
    )
    .await
    .expect("queue.bind");
}

async fn publish(ch: &Channel, x: &str, key: &str, body: &str, props: BasicProperties) {
    ch.basic_publish(
        x.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

fn depth(b: &TestBroker, q: &str) -> u32 {
    b.broker
        .vhost("/")
        .and_then(|v| v.queue(q))
        .map_or(0, |q| q.message_count())
}

fn held(b: &TestBroker, x: &str) -> Option<usize> {
    b.broker.vhost("/").and_then(|v| v.delayed_count(x))
}

async fn get_all(ch: &Channel, q: &str) -> Vec<(String, Option<AMQPValue>)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        let d = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delay").cloned());
        out.push((String::from_utf8_lossy(&m.delivery.data).into_owned(), d));
    }
    out
}

async fn confirm_channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (c, ch)
}

#[tokio::test]
async fn messages_wait_for_their_delay_and_come_out_in_due_order() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_delayed(&ch, "dx", "direct").await;
    queue_bound(&ch, "q", "dx", "k", FieldTable::default()).await;
    publish(&ch, "dx", "k", "late", delay(AMQPValue::LongInt(3000))).await;
    publish(&ch, "dx", "k", "early", delay(AMQPValue::LongInt(1000))).await;
    publish(&ch, "dx", "k", "middle", delay(s("2000"))).await;
    publish(&ch, "dx", "k", "now", BasicProperties::default()).await;
    publish(&ch, "dx", "k", "negative", delay(AMQPValue::LongInt(-500))).await;
    publish(
        &ch,
        "dx",
        "other-key",
        "unroutable",
        delay(AMQPValue::LongInt(10)),
    )
    .await;
    assert_eq!(depth(&b, "q"), 2);
    assert_eq!(held(&b, "dx"), Some(4));
    // The management API shows the count as the plugin's `messages_delayed`; other exchanges
    // have no such field.
    let x = b.api().get("/api/exchanges/%2F/dx").await;
    assert_eq!(x.status, 200, "{}", x.text);
    assert_eq!(x.json["messages_delayed"], 4, "{}", x.text);
    let direct = b.api().get("/api/exchanges/%2F/amq.direct").await;
    assert!(
        direct.json.get("messages_delayed").is_none(),
        "{}",
        direct.text
    );
    // And Prometheus, under Warren's own name: per exchange on /metrics/per-object, summed on
    // /metrics.
    let metrics = warren_tests::api::Api::new(b.metrics, "guest", Some("guest"));
    let per = metrics.get("/metrics/per-object").await;
    assert!(
        per.text
            .contains("warren_exchange_messages_delayed{vhost=\"/\",exchange=\"dx\"} 4"),
        "{}",
        per.text
    );
    assert!(
        per.text
            .contains("# TYPE warren_exchange_messages_delayed gauge"),
        "{}",
        per.text
    );
    let agg = metrics.get("/metrics").await;
    assert!(
        agg.text
            .lines()
            .any(|l| l == "warren_exchange_messages_delayed 4"),
        "{}",
        agg.text
    );
    b.advance(Duration::from_millis(999)).await;
    assert_eq!(depth(&b, "q"), 2);
    b.advance(Duration::from_millis(1)).await;
    assert_eq!(depth(&b, "q"), 3);
    b.advance(Duration::from_millis(2000)).await;
    assert_eq!(depth(&b, "q"), 5);
    assert_eq!(held(&b, "dx"), Some(0));
    let list = b.api().get("/api/exchanges/%2F").await;
    let dx = list
        .json
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "dx"));
    assert_eq!(
        dx.map(|x| x["messages_delayed"].clone()),
        Some(0.into()),
        "{}",
        list.text
    );
    let got = get_all(&ch, "q").await;
    assert_eq!(
        got,
        vec![
            ("now".to_string(), None),
            ("negative".to_string(), Some(AMQPValue::LongInt(-500))),
            // Routed when due with x-delay negated, as the plugin does.
            ("early".to_string(), Some(AMQPValue::LongInt(-1000))),
            ("middle".to_string(), Some(AMQPValue::LongInt(-2000))),
            ("late".to_string(), Some(AMQPValue::LongInt(-3000))),
        ]
    );
    b.stop().await;
}

#[tokio::test]
async fn delayed_types_route_as_topic_fanout_headers_and_consistent_hash() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_delayed(&ch, "dtopic", "topic").await;
    declare_delayed(&ch, "dfanout", "fanout").await;
    declare_delayed(&ch, "dheaders", "headers").await;
    declare_delayed(&ch, "dhash", "x-consistent-hash").await;
    queue_bound(&ch, "t", "dtopic", "orders.*", FieldTable::default()).await;
    queue_bound(&ch, "f", "dfanout", "", FieldTable::default()).await;
    queue_bound(
        &ch,
        "h",
        "dheaders",
        "",
        table(&[("x-match", s("all")), ("kind", s("audit"))]),
    )
    .await;
    queue_bound(&ch, "c", "dhash", "1", FieldTable::default()).await;
    let d = AMQPValue::LongInt(500);
    publish(&ch, "dtopic", "orders.eu", "t1", delay(d.clone())).await;
    publish(&ch, "dtopic", "invoices.eu", "t2", delay(d.clone())).await;
    publish(&ch, "dfanout", "any", "f1", delay(d.clone())).await;
    let hdrs = |kind: &str| {
        BasicProperties::default().with_headers(table(&[("x-delay", d.clone()), ("kind", s(kind))]))
    };
    publish(&ch, "dheaders", "", "h1", hdrs("audit")).await;
    publish(&ch, "dheaders", "", "h2", hdrs("other")).await;
    publish(&ch, "dhash", "anything", "c1", delay(d.clone())).await;
    for q in ["t", "f", "h", "c"] {
        assert_eq!(depth(&b, q), 0, "{q} before due");
    }
    b.advance(Duration::from_millis(500)).await;
    for q in ["t", "f", "h", "c"] {
        assert_eq!(depth(&b, q), 1, "{q} after due");
    }
    assert_eq!(get_all(&ch, "t").await[0].0, "t1");
    assert_eq!(get_all(&ch, "h").await[0].0, "h1");
    b.stop().await;
}

#[tokio::test]
async fn mandatory_is_returned_at_publish_and_the_message_still_delivered_when_due() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "direct").await;
    queue_bound(&ch, "q", "dx", "k", FieldTable::default()).await;
    ch.basic_publish(
        "dx".into(),
        "k".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"held",
        delay(AMQPValue::LongInt(100)),
    )
    .await
    .expect("publish");
    // The plugin routes a delayed message nowhere at publish: a mandatory one comes back.
    ch.queue_declare(
        "sync".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("round trip");
    let returned = ch.wait_for_confirms().await.expect("returns");
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(returned[0].reply_code, 312);
    assert_eq!(returned[0].reply_text.as_str(), "NO_ROUTE");
    assert_eq!(held(&b, "dx"), Some(1));
    b.advance(Duration::from_millis(100)).await;
    assert_eq!(depth(&b, "q"), 1);
    b.stop().await;
}

#[tokio::test]
async fn deleting_the_exchange_drops_what_it_holds_and_tx_holds_at_commit() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "fanout").await;
    queue_bound(&ch, "q", "dx", "", FieldTable::default()).await;
    ch.tx_select().await.expect("tx.select");
    ch.basic_publish(
        "dx".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"tx",
        delay(AMQPValue::LongInt(50)),
    )
    .await
    .expect("publish");
    ch.queue_declare(
        "sync".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("round trip");
    assert_eq!(held(&b, "dx"), Some(0), "held only at commit");
    ch.tx_commit().await.expect("commit");
    assert_eq!(held(&b, "dx"), Some(1));
    b.advance(Duration::from_millis(50)).await;
    assert_eq!(depth(&b, "q"), 1);

    ch.basic_publish(
        "dx".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"dropped",
        delay(AMQPValue::LongInt(50)),
    )
    .await
    .expect("publish");
    ch.tx_commit().await.expect("commit");
    assert_eq!(held(&b, "dx"), Some(1));
    ch.exchange_delete("dx".into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    declare_delayed(&ch, "dx", "fanout").await;
    ch.queue_bind(
        "q".into(),
        "dx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    ch.tx_commit().await.expect("commit");
    b.advance(Duration::from_millis(100)).await;
    assert_eq!(depth(&b, "q"), 1, "the deleted exchange's message is gone");
    b.stop().await;
}

#[tokio::test]
async fn consumers_get_delayed_messages_when_due() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_delayed(&ch, "dx", "direct").await;
    queue_bound(&ch, "q", "dx", "k", FieldTable::default()).await;
    let mut consumer = ch
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for (body, ms) in [("b", 200), ("a", 100), ("c", 300)] {
        publish(&ch, "dx", "k", body, delay(AMQPValue::LongLongInt(ms))).await;
    }
    b.advance(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = timeout(WAIT, consumer.next())
            .await
            .expect("in time")
            .expect("delivery")
            .expect("ok");
        got.push(String::from_utf8_lossy(&d.data).into_owned());
    }
    assert_eq!(got, ["a", "b", "c"]);
    b.stop().await;
}

#[tokio::test]
async fn bad_arguments_get_the_plugin_errors() {
    let b = TestBroker::start_manual().await;
    // No x-delayed-type: 406 with the plugin's text (typos and all).
    let (c, ch) = b.channel().await;
    let e = ch
        .exchange_declare(
            "bad".into(),
            delayed(),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_eq!(
        amqp(&e),
        (
            406,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must bean existing exchnage type"
                .to_string()
        )
    );
    // An unknown delayed type: rabbit_exchange:check_type's 503, closing the connection.
    let ch = c.create_channel().await.expect("channel");
    let e = ch
        .exchange_declare(
            "bad".into(),
            delayed(),
            ExchangeDeclareOptions::default(),
            table(&[("x-delayed-type", s("nope"))]),
        )
        .await
        .expect_err("503");
    assert_eq!(
        amqp(&e),
        (
            503,
            "COMMAND_INVALID - invalid exchange type 'nope'".to_string()
        )
    );
    assert!(eventually(WAIT, || !c.status().connected()).await);

    // Redeclaring as another type is the usual inequivalent arg.
    let (c, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "direct").await;
    let e = ch
        .exchange_declare(
            "dx".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_eq!(
        amqp(&e),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'dx' in vhost '/': received 'direct' but current is 'x-delayed-message'"
                .to_string()
        )
    );
    // An x-delay that is a string but not an integer crashes the plugin's routing: a bare
    // 541 closing the connection. Other non-integer types route at once.
    let ch = c.create_channel().await.expect("channel");
    queue_bound(&ch, "q", "dx", "k", FieldTable::default()).await;
    ch.basic_publish(
        "dx".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"now",
        delay(AMQPValue::Boolean(true)),
    )
    .await
    .expect("publish");
    assert!(eventually(WAIT, || depth(&b, "q") == 1).await);
    ch.basic_publish(
        "dx".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"bad",
        delay(s("soon")),
    )
    .await
    .expect("publish is asynchronous");
    assert!(eventually(WAIT, || !c.status().connected()).await);
    assert_eq!(depth(&b, "q"), 1);
    // The broker carries on.
    let (_c, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "direct").await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_of_a_durable_delayed_exchange_survive_a_restart_in_due_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    {
        let b = TestBroker::start_durable_manual(dir.path()).await;
        let (c, ch) = confirm_channel(&b).await;
        ch.exchange_declare(
            "ddx".into(),
            delayed(),
            durable,
            table(&[("x-delayed-type", s("direct"))]),
        )
        .await
        .expect("exchange.declare");
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.queue_bind(
            "dq".into(),
            "ddx".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let persistent = |ms: i32| delay(AMQPValue::LongInt(ms)).with_delivery_mode(2);
        // Confirmed only once on disk.
        publish(&ch, "ddx", "k", "sixty", persistent(60_000)).await;
        publish(&ch, "ddx", "k", "thirty", persistent(30_000)).await;
        publish(
            &ch,
            "ddx",
            "k",
            "transient",
            delay(AMQPValue::LongInt(10_000)),
        )
        .await;
        publish(&ch, "ddx", "k", "forty", persistent(40_000)).await;
        assert_eq!(held(&b, "ddx"), Some(4));
        // The transient one falls due before the restart (and, transient, does not outlive
        // it in the queue either).
        b.advance(Duration::from_millis(10_000)).await;
        assert_eq!(depth(&b, "dq"), 1);
        assert_eq!(held(&b, "ddx"), Some(3));
        c.close(200, "bye".into()).await.expect("close");
        b.stop().await;
    }
    let b = TestBroker::start_durable_manual(dir.path()).await;
    assert_eq!(held(&b, "ddx"), Some(3));
    let (_c, ch) = b.channel().await;
    b.advance(Duration::from_millis(15_000)).await;
    assert_eq!(
        depth(&b, "dq"),
        0,
        "nothing is due yet (about 20 s left for the first)"
    );
    b.advance(Duration::from_millis(45_000)).await;
    assert_eq!(depth(&b, "dq"), 3);
    assert_eq!(held(&b, "ddx"), Some(0));
    let got: Vec<String> = get_all(&ch, "dq")
        .await
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(got, ["thirty", "forty", "sixty"]);
    b.stop().await;

    // Routed and durable in the queue: not held again after another restart.
    let b = TestBroker::start_durable_manual(dir.path()).await;
    assert_eq!(held(&b, "ddx"), Some(0));
    b.stop().await;
}
