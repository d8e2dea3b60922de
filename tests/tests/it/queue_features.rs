//! Queue features with lapin over TCP, checked against RabbitMQ 3.10.8's documented behaviour:
//! message TTL and queue expiry, length limits and overflow modes, dead-lettering and `x-death`,
//! the delayed-retry pattern, priority queues, single active consumer, consumer priorities,
//! exclusive consumers, argument validation, and the same features across a restart.
//!
//! Timers are short (20–300 ms) and waits poll with timeouts. Queue depths are read from the
//! broker (`Queue::message_count`) rather than with passive declares where a passive declare
//! would change the outcome (it renews an `x-expires` lease, as RabbitMQ's `stat` does).

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, ExchangeKind};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::timeout;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is waited for.
const QUIET: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

async fn declare_x(ch: &Channel, name: &str, kind: ExchangeKind) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

/// Publishes on a channel in confirm mode and returns the broker's verdict.
async fn publish_c(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> Confirmation {
    timeout(
        WAIT,
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .expect("publish sent"),
    )
    .await
    .expect("confirm in time")
    .expect("confirm")
}

/// Publishes on a confirm-mode channel and requires an ack.
async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    let c = publish_c(ch, exchange, key, body, props).await;
    assert!(c.is_ack(), "publish of {body:?} acked, got {c:?}");
}

/// A connection with one channel in confirm mode.
async fn confirm_channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (c, ch)
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

fn prio(p: u8) -> BasicProperties {
    BasicProperties::default().with_priority(p)
}

async fn consume_with(ch: &Channel, queue: &str, tag: &str, args: FieldTable) -> Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .expect("basic.consume")
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    consume_with(ch, queue, tag, FieldTable::default()).await
}

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

fn body(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf8 body")
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(body).collect()
}

async fn get(ch: &Channel, queue: &str) -> Option<Delivery> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .map(|m| m.delivery)
}

/// Everything in `queue`, by no-ack basic.get.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = get(ch, queue).await {
        out.push(body(&d));
    }
    out
}

/// Waits for one message in `queue` (polling with basic.get).
async fn get_eventually(ch: &Channel, queue: &str) -> Delivery {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(d) = get(ch, queue).await {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a message in {queue} in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ready messages of `queue` as the broker counts them (no client interaction).
fn depth(b: &TestBroker, queue: &str) -> Option<u32> {
    b.broker
        .vhost("/")
        .expect("vhost /")
        .queue(queue)
        .map(|q| q.message_count())
}

async fn depth_becomes(b: &TestBroker, queue: &str, n: u32) -> bool {
    eventually(WAIT, || depth(b, queue) == Some(n)).await
}

fn protocol_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

fn headers(d: &Delivery) -> BTreeMap<String, AMQPValue> {
    d.properties
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn header_text(d: &Delivery, key: &str) -> String {
    text(
        headers(d)
            .get(key)
            .unwrap_or_else(|| panic!("header {key} present")),
    )
}

/// The `x-death` entries of a delivery, most recent first.
fn x_death(d: &Delivery) -> Vec<BTreeMap<String, AMQPValue>> {
    match headers(d).get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t
                    .inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                other => panic!("x-death entry is a table, got {other:?}"),
            })
            .collect(),
        other => panic!("x-death is an array, got {other:?}"),
    }
}

/// (queue, reason, count) of each `x-death` entry, in order.
fn deaths(d: &Delivery) -> Vec<(String, String, i64)> {
    x_death(d)
        .iter()
        .map(|e| {
            let count = match e.get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                other => panic!("x-death count is a long, got {other:?}"),
            };
            (text(&e["queue"]), text(&e["reason"]), count)
        })
        .collect()
}

fn d3(q: &str, r: &str, n: i64) -> (String, String, i64) {
    (q.to_string(), r.to_string(), n)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A fanout dead-letter exchange `dlx` with queue `dlq` bound to it.
async fn dlx_setup(ch: &Channel) {
    declare_x(ch, "dlx", ExchangeKind::Fanout).await;
    declare(ch, "dlq", FieldTable::default()).await;
    bind(ch, "dlq", "dlx", "").await;
}

// ---------------------------------------------------------------------------------------------
// Message TTL
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn queue_message_ttl_removes_messages_without_any_consumer() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(&ch, "ttl", table(&[("x-message-ttl", int(200))])).await;
    for i in 0..3 {
        publish(&ch, "", "ttl", &format!("m{i}"), BasicProperties::default()).await;
    }
    b.advance(Duration::from_millis(199)).await;
    assert_eq!(depth(&b, "ttl"), Some(3), "not expired yet");
    // Nothing consumes or polls the queue: its timer must remove them.
    b.advance(Duration::from_millis(2)).await;
    assert_eq!(depth(&b, "ttl"), Some(0), "expired messages removed");
    let q = ch
        .queue_declare(
            "ttl".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(q.message_count(), 0);
    assert!(get(&ch, "ttl").await.is_none(), "never delivered");
    let mut cons = consume(&ch, "ttl", "late").await;
    assert!(until_quiet(&mut cons).await.is_empty(), "never delivered");
    b.stop().await;
}

#[tokio::test]
async fn per_message_expiration_and_the_shorter_ttl_wins() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    // Per-message TTL on a queue without one.
    declare(&ch, "plain", FieldTable::default()).await;
    publish(&ch, "", "plain", "short", expiring("50")).await;
    // Message shorter than the queue's: the message's wins.
    declare(&ch, "long", table(&[("x-message-ttl", int(60_000))])).await;
    publish(&ch, "", "long", "short", expiring("50")).await;
    // Queue shorter than the message's: the queue's wins.
    declare(&ch, "short", table(&[("x-message-ttl", int(50))])).await;
    publish(&ch, "", "short", "long", expiring("60000")).await;
    b.advance(Duration::from_millis(49)).await;
    for q in ["plain", "long", "short"] {
        assert_eq!(depth(&b, q), Some(1), "{q}: not yet");
    }
    b.advance(Duration::from_millis(2)).await;
    assert_eq!(depth(&b, "plain"), Some(0), "per-message TTL applies");
    assert_eq!(depth(&b, "long"), Some(0), "message TTL (50) wins");
    assert_eq!(depth(&b, "short"), Some(0), "queue TTL (50) wins");
    // Without any TTL the message stays.
    publish(&ch, "", "plain", "stays", BasicProperties::default()).await;
    b.advance(Duration::from_secs(3600)).await;
    assert_eq!(drain(&ch, "plain").await, vec!["stays"]);
    b.stop().await;
}

#[tokio::test]
async fn expired_message_is_dead_lettered_with_x_death() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare_x(&ch, "src-x", ExchangeKind::Direct).await;
    declare(
        &ch,
        "src",
        table(&[
            ("x-dead-letter-exchange", s("dlx")),
            ("x-dead-letter-routing-key", s("dead")),
        ]),
    )
    .await;
    bind(&ch, "src", "src-x", "orig-key").await;
    let before = now_secs();
    let props = expiring("30")
        .with_content_type("text/plain".into())
        .with_headers(table(&[("app", s("kept"))]));
    publish(&ch, "src-x", "orig-key", "bye", props).await;
    b.advance(Duration::from_millis(29)).await;
    assert_eq!(depth(&b, "src"), Some(1), "not yet");
    b.advance(Duration::from_millis(2)).await;
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(depth(&b, "src"), Some(0));
    assert_eq!(body(&d), "bye");
    // Delivered from the DLX with the dead-letter routing key.
    assert_eq!(d.exchange.as_str(), "dlx");
    assert_eq!(d.routing_key.as_str(), "dead");
    // The expiration is gone (so it does not expire again), other properties are kept.
    assert_eq!(d.properties.expiration(), &None);
    assert_eq!(
        d.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("text/plain")
    );
    assert_eq!(header_text(&d, "app"), "kept");
    let xd = x_death(&d);
    assert_eq!(xd.len(), 1);
    let e = &xd[0];
    assert_eq!(e.get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(text(&e["reason"]), "expired");
    assert_eq!(text(&e["queue"]), "src");
    assert_eq!(text(&e["exchange"]), "src-x");
    assert_eq!(
        e.get("routing-keys"),
        Some(&AMQPValue::FieldArray(FieldArray::from(vec![s(
            "orig-key"
        )])))
    );
    assert_eq!(text(&e["original-expiration"]), "30");
    match e.get("time") {
        Some(AMQPValue::Timestamp(t)) => {
            assert!(
                *t >= before.saturating_sub(2) && *t <= now_secs() + 2,
                "time {t}"
            )
        }
        other => panic!("x-death time is a timestamp, got {other:?}"),
    }
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "count",
            "exchange",
            "original-expiration",
            "queue",
            "reason",
            "routing-keys",
            "time"
        ]
    );
    assert_eq!(header_text(&d, "x-first-death-reason"), "expired");
    assert_eq!(header_text(&d, "x-first-death-queue"), "src");
    assert_eq!(header_text(&d, "x-first-death-exchange"), "src-x");
    b.stop().await;
}

#[tokio::test]
async fn queue_ttl_dead_letters_without_original_expiration() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "qttl",
        table(&[
            ("x-message-ttl", int(30)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "qttl", "a", BasicProperties::default()).await;
    b.advance(Duration::from_millis(31)).await;
    let d = get_eventually(&ch, "dlq").await;
    // No dead-letter routing key: the original one is kept.
    assert_eq!(d.routing_key.as_str(), "qttl");
    assert_eq!(deaths(&d), vec![d3("qttl", "expired", 1)]);
    assert!(
        !x_death(&d)[0].contains_key("original-expiration"),
        "only messages with an expiration property get original-expiration"
    );
    assert_eq!(text(&x_death(&d)[0]["exchange"]), "");
    b.stop().await;
}

#[tokio::test]
async fn ttl_zero_delivers_to_a_ready_consumer_and_drops_otherwise() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "now",
        table(&[
            ("x-message-ttl", int(0)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    // No consumer: dropped at once (dead-lettered as expired).
    publish(&ch, "", "now", "nobody", BasicProperties::default()).await;
    assert_eq!(depth(&b, "now"), Some(0), "TTL 0 without a consumer: gone");
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(body(&d), "nobody");
    assert_eq!(deaths(&d), vec![d3("now", "expired", 1)]);

    // A ready consumer gets it.
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut cons = consume(&cch, "now", "c").await;
    publish(&ch, "", "now", "ready", BasicProperties::default()).await;
    let first = next(&mut cons).await;
    assert_eq!(body(&first), "ready");
    // The consumer is now full (prefetch 1, unacked): the next message cannot be delivered
    // now, so it is dropped rather than kept for later.
    publish(&ch, "", "now", "busy", BasicProperties::default()).await;
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(body(&d), "busy");
    first.ack(BasicAckOptions::default()).await.expect("ack");
    assert!(
        until_quiet(&mut cons).await.is_empty(),
        "busy never arrives"
    );
    assert_eq!(depth(&b, "now"), Some(0));
    // Per-message expiration 0 behaves the same on a queue without TTL.
    declare(&ch, "plain", FieldTable::default()).await;
    publish(&ch, "", "plain", "zero", expiring("0")).await;
    assert_eq!(depth(&b, "plain"), Some(0));
    b.stop().await;
}

#[tokio::test]
async fn invalid_expiration_closes_the_channel_with_406() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    for (exp, why) in [
        ("foo", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("10x", "{leftover_string,\"x\"}"),
    ] {
        let ch = c.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let r = ch
            .basic_publish(
                "".into(),
                "anywhere".into(),
                BasicPublishOptions::default(),
                b"x",
                expiring(exp),
            )
            .await
            .expect("sent")
            .await;
        let e = r.expect_err("406");
        assert_eq!(
            protocol_error(&e),
            (
                406,
                format!("PRECONDITION_FAILED - invalid expiration '{exp}': {why}")
            )
        );
        assert!(
            eventually(WAIT, || !ch.status().connected()).await,
            "channel closed"
        );
    }
    assert!(c.status().connected(), "the connection stays open");
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Queue expiry
// ---------------------------------------------------------------------------------------------

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn unused_queue_expires() {
    let b = TestBroker::start_manual().await;
    let (c, ch) = confirm_channel(&b).await;
    declare(&ch, "temp", table(&[("x-expires", int(100))])).await;
    // Messages do not count as use.
    publish(&ch, "", "temp", "m", BasicProperties::default()).await;
    b.advance(Duration::from_millis(99)).await;
    assert!(depth(&b, "temp").is_some(), "not yet");
    b.advance(Duration::from_millis(2)).await;
    assert!(
        eventually(WAIT, || depth(&b, "temp").is_none()).await,
        "queue deleted after x-expires"
    );
    let ch2 = c.create_channel().await.expect("channel");
    let e = ch2
        .queue_declare("temp".into(), passive(), FieldTable::default())
        .await
        .expect_err("404");
    assert_eq!(
        protocol_error(&e),
        (404, "NOT_FOUND - no queue 'temp' in vhost '/'".into())
    );
    b.stop().await;
}

#[tokio::test]
async fn queue_with_a_consumer_does_not_expire_and_expires_after_it_leaves() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "used", table(&[("x-expires", int(80))])).await;
    let _cons = consume(&ch, "used", "c").await;
    b.advance(Duration::from_millis(300)).await;
    assert!(depth(&b, "used").is_some(), "a consumed queue stays");
    ch.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    b.advance(Duration::from_millis(79)).await;
    assert!(
        depth(&b, "used").is_some(),
        "80 ms after the cancel, not before"
    );
    b.advance(Duration::from_millis(2)).await;
    assert!(
        eventually(WAIT, || depth(&b, "used").is_none()).await,
        "expires once unused"
    );
    b.stop().await;
}

#[tokio::test]
async fn redeclaring_renews_the_expiry_lease() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = b.channel().await;
    let args = || table(&[("x-expires", int(200))]);
    declare(&ch, "lease", args()).await;
    // Redeclare every 150 ms for 1.8 s (nine times x-expires): it stays.
    for _ in 0..12 {
        b.advance(Duration::from_millis(150)).await;
        declare(&ch, "lease", args()).await;
    }
    assert!(depth(&b, "lease").is_some(), "renewed by redeclaring");
    // Passive declares (RabbitMQ's stat) renew it too.
    for _ in 0..12 {
        b.advance(Duration::from_millis(150)).await;
        ch.queue_declare("lease".into(), passive(), FieldTable::default())
            .await
            .expect("passive");
    }
    assert!(depth(&b, "lease").is_some(), "renewed by passive declares");
    // basic.get counts as use as well.
    for _ in 0..12 {
        b.advance(Duration::from_millis(150)).await;
        assert!(get(&ch, "lease").await.is_none());
    }
    assert!(depth(&b, "lease").is_some(), "renewed by basic.get");
    b.advance(Duration::from_millis(201)).await;
    assert!(
        eventually(WAIT, || depth(&b, "lease").is_none()).await,
        "expires when left alone"
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Length limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn max_length_drop_head_dead_letters_the_oldest_as_maxlen() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "cap",
        table(&[
            ("x-max-length", int(3)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    for i in 1..=5 {
        publish(&ch, "", "cap", &format!("m{i}"), BasicProperties::default()).await;
    }
    assert_eq!(depth(&b, "cap"), Some(3));
    assert!(depth_becomes(&b, "dlq", 2).await);
    let d1 = get(&ch, "dlq").await.expect("m1");
    let d2 = get(&ch, "dlq").await.expect("m2");
    assert_eq!((body(&d1), body(&d2)), ("m1".into(), "m2".into()));
    assert_eq!(deaths(&d1), vec![d3("cap", "maxlen", 1)]);
    assert_eq!(header_text(&d1, "x-first-death-reason"), "maxlen");
    assert_eq!(drain(&ch, "cap").await, vec!["m3", "m4", "m5"]);

    // Without a DLX the oldest are simply dropped.
    declare(&ch, "cap0", table(&[("x-max-length", int(0))])).await;
    publish(&ch, "", "cap0", "x", BasicProperties::default()).await;
    assert_eq!(depth(&b, "cap0"), Some(0), "x-max-length 0 keeps nothing");
    b.stop().await;
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(&ch, "bytes", table(&[("x-max-length-bytes", int(10))])).await;
    for m in ["aaaa", "bbbb", "cccc"] {
        publish(&ch, "", "bytes", m, BasicProperties::default()).await;
    }
    // 12 bytes > 10: the oldest goes.
    assert_eq!(drain(&ch, "bytes").await, vec!["bbbb", "cccc"]);
    publish(&ch, "", "bytes", "0123456789", BasicProperties::default()).await;
    publish(&ch, "", "bytes", "z", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "bytes").await, vec!["z"]);
    b.stop().await;
}

#[tokio::test]
async fn reject_publish_nacks_and_keeps_the_first_n() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "full",
        table(&[
            ("x-max-length", int(2)),
            ("x-overflow", s("reject-publish")),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    let mut verdicts = Vec::new();
    for i in 1..=4 {
        verdicts.push(
            publish_c(
                &ch,
                "",
                "full",
                &format!("m{i}"),
                BasicProperties::default(),
            )
            .await,
        );
    }
    let acks: Vec<bool> = verdicts.iter().map(Confirmation::is_ack).collect();
    assert_eq!(acks, vec![true, true, false, false]);
    assert!(verdicts[2].is_nack() && verdicts[3].is_nack());
    // reject-publish does not dead-letter the refused messages.
    tokio::time::sleep(QUIET).await;
    assert_eq!(depth(&b, "dlq"), Some(0));
    assert_eq!(drain(&ch, "full").await, vec!["m1", "m2"]);
    // Room again: accepted.
    assert!(publish_c(&ch, "", "full", "m5", BasicProperties::default())
        .await
        .is_ack());
    assert_eq!(drain(&ch, "full").await, vec!["m5"]);
    b.stop().await;
}

/// A message routed to several queues is nacked when any of them refuses it; the others
/// keep their copy.
#[tokio::test]
async fn reject_publish_by_one_of_several_queues_nacks() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_x(&ch, "fan", ExchangeKind::Fanout).await;
    declare(
        &ch,
        "small",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    declare(&ch, "big", FieldTable::default()).await;
    bind(&ch, "small", "fan", "").await;
    bind(&ch, "big", "fan", "").await;
    assert!(publish_c(&ch, "fan", "", "m1", BasicProperties::default())
        .await
        .is_ack());
    assert!(publish_c(&ch, "fan", "", "m2", BasicProperties::default())
        .await
        .is_nack());
    assert_eq!(drain(&ch, "small").await, vec!["m1"]);
    assert_eq!(drain(&ch, "big").await, vec!["m1", "m2"]);
    b.stop().await;
}

#[tokio::test]
async fn reject_publish_only_counts_ready_messages() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(
        &ch,
        "full",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    publish(&ch, "", "full", "m1", BasicProperties::default()).await;
    let m = ch
        .basic_get("full".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("m1");
    // m1 is unacked, not ready: there is room for one more.
    publish(&ch, "", "full", "m2", BasicProperties::default()).await;
    assert!(publish_c(&ch, "", "full", "m3", BasicProperties::default())
        .await
        .is_nack());
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    assert_eq!(drain(&ch, "full").await, vec!["m2"]);
    b.stop().await;
}

#[tokio::test]
async fn reject_publish_dlx_nacks_and_dead_letters() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "full",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    assert!(publish_c(&ch, "", "full", "m1", BasicProperties::default())
        .await
        .is_ack());
    assert!(publish_c(&ch, "", "full", "m2", BasicProperties::default())
        .await
        .is_nack());
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(body(&d), "m2");
    assert_eq!(deaths(&d), vec![d3("full", "maxlen", 1)]);
    assert_eq!(drain(&ch, "full").await, vec!["m1"]);
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Dead-lettering
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rejected_and_nacked_messages_are_dead_lettered_as_rejected() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_x(&ch, "dlx", ExchangeKind::Direct).await;
    declare(&ch, "dlq", FieldTable::default()).await;
    bind(&ch, "dlq", "dlx", "to-dlq").await;
    declare(
        &ch,
        "work",
        table(&[
            ("x-dead-letter-exchange", s("dlx")),
            ("x-dead-letter-routing-key", s("to-dlq")),
        ]),
    )
    .await;
    for m in ["rej", "nack", "nack-multi-1", "nack-multi-2", "requeued"] {
        publish(&ch, "", "work", m, BasicProperties::default()).await;
    }
    let (_c2, cch) = b.channel().await;
    let mut cons = consume(&cch, "work", "c").await;
    let ds: Vec<Delivery> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next(&mut cons).await);
        }
        v
    };
    assert_eq!(
        bodies(&ds),
        vec!["rej", "nack", "nack-multi-1", "nack-multi-2", "requeued"]
    );
    ds[0]
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    ds[1]
        .nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        })
        .await
        .expect("nack");
    ds[3]
        .nack(BasicNackOptions {
            multiple: true,
            requeue: false,
        })
        .await
        .expect("nack multiple");
    ds[4]
        .reject(BasicRejectOptions { requeue: true })
        .await
        .expect("requeue");
    assert!(depth_becomes(&b, "dlq", 4).await, "four dead-lettered");
    let mut got = Vec::new();
    while let Some(d) = get(&ch, "dlq").await {
        assert_eq!(d.exchange.as_str(), "dlx");
        assert_eq!(d.routing_key.as_str(), "to-dlq");
        assert_eq!(deaths(&d), vec![d3("work", "rejected", 1)]);
        let e = &x_death(&d)[0];
        assert_eq!(text(&e["exchange"]), "");
        assert_eq!(
            e.get("routing-keys"),
            Some(&AMQPValue::FieldArray(FieldArray::from(vec![s("work")])))
        );
        assert_eq!(header_text(&d, "x-first-death-reason"), "rejected");
        assert_eq!(header_text(&d, "x-first-death-queue"), "work");
        assert_eq!(header_text(&d, "x-first-death-exchange"), "");
        got.push(body(&d));
    }
    assert_eq!(got, vec!["rej", "nack", "nack-multi-1", "nack-multi-2"]);
    // The requeued one came back (redelivered), not dead-lettered.
    let again = next(&mut cons).await;
    assert_eq!(body(&again), "requeued");
    assert!(again.redelivered);
    b.stop().await;
}

/// `rabbit_dead_letter:make_msg/5`: `routing-keys` lists the publish routing key and the CC
/// keys; with `x-dead-letter-routing-key` the `CC` header is removed (the message is routed by
/// that key alone), without one it is kept.
#[tokio::test]
async fn cc_keys_in_x_death_and_cc_header_dropped_with_a_dead_letter_routing_key() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "with-rk",
        table(&[
            ("x-dead-letter-exchange", s("dlx")),
            ("x-dead-letter-routing-key", s("dead")),
        ]),
    )
    .await;
    declare(&ch, "no-rk", table(&[("x-dead-letter-exchange", s("dlx"))])).await;
    let cc = || {
        BasicProperties::default().with_headers(table(&[(
            "CC",
            AMQPValue::FieldArray(FieldArray::from(vec![s("nobody")])),
        )]))
    };
    for q in ["with-rk", "no-rk"] {
        publish(&ch, "", q, q, cc()).await;
        let m = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get")
            .expect("message");
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
        let d = get_eventually(&ch, "dlq").await;
        assert_eq!(body(&d), q);
        assert_eq!(
            x_death(&d)[0].get("routing-keys"),
            Some(&AMQPValue::FieldArray(FieldArray::from(vec![
                s(q),
                s("nobody")
            ]))),
            "{q}"
        );
        assert_eq!(
            headers(&d).contains_key("CC"),
            q == "no-rk",
            "{q}: CC header kept only without a dead-letter routing key"
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn missing_dead_letter_exchange_drops_silently() {
    let b = TestBroker::start().await;
    let (c, ch) = confirm_channel(&b).await;
    declare(
        &ch,
        "q",
        table(&[
            ("x-dead-letter-exchange", s("nowhere")),
            ("x-message-ttl", int(20)),
        ]),
    )
    .await;
    publish(&ch, "", "q", "gone", BasicProperties::default()).await;
    assert!(depth_becomes(&b, "q", 0).await);
    publish(&ch, "", "q", "rejected", BasicProperties::default()).await;
    let m = ch
        .basic_get("q".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get");
    if let Some(m) = m {
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
    }
    tokio::time::sleep(QUIET).await;
    assert!(ch.status().connected(), "no error for the channel");
    assert!(c.status().connected(), "no error for the connection");
    assert_eq!(depth(&b, "q"), Some(0));
    declare(&ch, "after", FieldTable::default()).await;
    b.stop().await;
}

#[tokio::test]
async fn delivery_limit_dead_letters_after_n_requeues() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "limited",
        table(&[
            ("x-delivery-limit", int(2)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "limited", "poison", BasicProperties::default()).await;
    let (_c2, cch) = b.channel().await;
    let mut cons = consume(&cch, "limited", "c").await;
    // Delivered, requeued more than twice: three deliveries, then dead-lettered.
    for i in 0..3 {
        let d = next(&mut cons).await;
        assert_eq!(body(&d), "poison");
        assert_eq!(d.redelivered, i > 0);
        d.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("nack requeue");
    }
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(body(&d), "poison");
    assert_eq!(deaths(&d), vec![d3("limited", "delivery_limit", 1)]);
    assert!(
        until_quiet(&mut cons).await.is_empty(),
        "not delivered again"
    );
    assert_eq!(depth(&b, "limited"), Some(0));
    b.stop().await;
}

#[tokio::test]
async fn dead_letter_cycle_without_rejection_drops_the_message() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    // Expired messages are dead-lettered (default exchange, same routing key) into the queue
    // itself: RabbitMQ drops them instead of looping.
    declare(
        &ch,
        "loop",
        table(&[
            ("x-message-ttl", int(30)),
            ("x-dead-letter-exchange", s("")),
        ]),
    )
    .await;
    publish(&ch, "", "loop", "m", BasicProperties::default()).await;
    b.advance(Duration::from_millis(31)).await;
    assert_eq!(depth(&b, "loop"), Some(0), "expired");
    b.advance(Duration::from_millis(150)).await;
    assert_eq!(depth(&b, "loop"), Some(0), "not re-enqueued");

    // A rejection in the cycle makes it legitimate: the message comes back.
    declare(&ch, "self", table(&[("x-dead-letter-exchange", s(""))])).await;
    publish(&ch, "", "self", "again", BasicProperties::default()).await;
    let m = ch
        .basic_get("self".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let d = get_eventually(&ch, "self").await;
    assert_eq!(body(&d), "again");
    assert_eq!(deaths(&d), vec![d3("self", "rejected", 1)]);
    b.stop().await;
}

/// Work queue dead-letters rejections to a retry exchange; the retry queue holds them for
/// 50 ms and dead-letters them back to the work exchange. RabbitMQ keeps one `x-death` entry
/// per (queue, reason), increments its count, and moves the updated entry to the front.
#[tokio::test]
async fn retry_pattern_counts_deaths_per_queue_and_reason() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_x(&ch, "work-x", ExchangeKind::Direct).await;
    declare_x(&ch, "retry-x", ExchangeKind::Direct).await;
    declare(
        &ch,
        "work",
        table(&[("x-dead-letter-exchange", s("retry-x"))]),
    )
    .await;
    bind(&ch, "work", "work-x", "task").await;
    declare(
        &ch,
        "retry",
        table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", s("work-x")),
        ]),
    )
    .await;
    bind(&ch, "retry", "retry-x", "task").await;
    publish(&ch, "work-x", "task", "job", BasicProperties::default()).await;

    let (_c2, cch) = b.channel().await;
    let mut cons = consume(&cch, "work", "worker").await;
    let first = next(&mut cons).await;
    assert!(first.properties.headers().is_none() || !headers(&first).contains_key("x-death"));
    first
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    for round in 1..=3i64 {
        // The retry queue holds it for its TTL.
        assert!(
            depth_becomes(&b, "retry", 1).await,
            "round {round}: in retry"
        );
        b.advance(Duration::from_millis(49)).await;
        assert_eq!(depth(&b, "retry"), Some(1), "round {round}: held 50 ms");
        b.advance(Duration::from_millis(2)).await;
        let d = next(&mut cons).await;
        assert_eq!(body(&d), "job");
        assert_eq!(d.exchange.as_str(), "work-x");
        assert_eq!(d.routing_key.as_str(), "task");
        assert!(!d.redelivered, "a dead-lettered message is a new message");
        assert_eq!(
            deaths(&d),
            vec![d3("retry", "expired", round), d3("work", "rejected", round)],
            "after {round} round(s)"
        );
        let xd = x_death(&d);
        assert_eq!(text(&xd[0]["exchange"]), "retry-x");
        assert_eq!(text(&xd[1]["exchange"]), "work-x");
        // The first death stays the first.
        assert_eq!(header_text(&d, "x-first-death-reason"), "rejected");
        assert_eq!(header_text(&d, "x-first-death-queue"), "work");
        assert_eq!(header_text(&d, "x-first-death-exchange"), "work-x");
        if round < 3 {
            d.reject(BasicRejectOptions { requeue: false })
                .await
                .expect("reject");
        } else {
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    }
    assert!(until_quiet(&mut cons).await.is_empty());
    assert_eq!(depth(&b, "retry"), Some(0));
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Priorities
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn priority_queue_orders_by_priority_then_fifo() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(&ch, "pq", table(&[("x-max-priority", int(10))])).await;
    let msgs: [(&str, Option<u8>); 9] = [
        ("p1-a", Some(1)),
        ("none-a", None),
        ("p5-a", Some(5)),
        ("p10-a", Some(10)),
        ("p200", Some(200)),
        ("p5-b", Some(5)),
        ("p1-b", Some(1)),
        ("p9", Some(9)),
        ("none-b", None),
    ];
    for (m, p) in msgs {
        let props = p.map_or_else(BasicProperties::default, prio);
        publish(&ch, "", "pq", m, props).await;
    }
    // 200 is above the maximum: it counts as 10, after the earlier 10 (FIFO within a level).
    assert_eq!(
        drain(&ch, "pq").await,
        vec!["p10-a", "p200", "p9", "p5-a", "p5-b", "p1-a", "p1-b", "none-a", "none-b"]
    );
    // The same order for a consumer.
    for (m, p) in msgs {
        let props = p.map_or_else(BasicProperties::default, prio);
        publish(&ch, "", "pq", m, props).await;
    }
    let (_c2, cch) = b.channel().await;
    let mut cons = consume(&cch, "pq", "c").await;
    let mut got = Vec::new();
    for _ in 0..9 {
        let d = next(&mut cons).await;
        got.push(body(&d));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(
        got,
        vec!["p10-a", "p200", "p9", "p5-a", "p5-b", "p1-a", "p1-b", "none-a", "none-b"]
    );
    b.stop().await;
}

#[tokio::test]
async fn requeued_message_keeps_its_place_within_its_priority() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(&ch, "pq", table(&[("x-max-priority", int(10))])).await;
    for (m, p) in [("a", 5), ("b", 5), ("c", 5), ("d", 1)] {
        publish(&ch, "", "pq", m, prio(p)).await;
    }
    let take = || async {
        ch.basic_get("pq".into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get")
            .expect("message")
            .delivery
    };
    let a = take().await;
    let bm = take().await;
    assert_eq!((body(&a), body(&bm)), ("a".into(), "b".into()));
    publish(&ch, "", "pq", "e", prio(9)).await;
    for d in [bm, a] {
        d.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("requeue");
    }
    let mut got = Vec::new();
    while let Some(d) = get(&ch, "pq").await {
        got.push((body(&d), d.redelivered));
    }
    let want: Vec<(String, bool)> = [
        ("e", false),
        ("a", true),
        ("b", true),
        ("c", false),
        ("d", false),
    ]
    .iter()
    .map(|(m, r)| (m.to_string(), *r))
    .collect();
    assert_eq!(got, want);
    b.stop().await;
}

/// RabbitMQ's priority backing queue drops from the same end it delivers from
/// (`rabbit_priority_queue:drop/2` walks the levels highest first, like `fetch/2`): with
/// `drop-head`, the head of the highest non-empty priority goes.
#[tokio::test]
async fn priority_queue_drop_head_drops_the_next_to_be_delivered() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "pcap",
        table(&[
            ("x-max-priority", int(10)),
            ("x-max-length", int(2)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    for (m, p) in [("low", 1), ("high", 9), ("mid", 5)] {
        publish(&ch, "", "pcap", m, prio(p)).await;
    }
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(body(&d), "high");
    assert_eq!(deaths(&d), vec![d3("pcap", "maxlen", 1)]);
    assert_eq!(drain(&ch, "pcap").await, vec!["mid", "low"]);
    b.stop().await;
}

#[tokio::test]
async fn message_requeued_after_its_ttl_is_dead_lettered_as_expired() {
    let b = TestBroker::start_manual().await;
    let (_c, ch) = confirm_channel(&b).await;
    dlx_setup(&ch).await;
    declare(
        &ch,
        "late",
        table(&[
            ("x-message-ttl", int(100)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "late", "slow", BasicProperties::default()).await;
    let m = ch
        .basic_get("late".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("message");
    // Unacked messages do not expire; once requeued past their TTL they do.
    b.advance(Duration::from_millis(250)).await;
    assert_eq!(depth(&b, "dlq"), Some(0), "unacked: not expired");
    m.delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("requeue");
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(body(&d), "slow");
    assert_eq!(deaths(&d), vec![d3("late", "expired", 1)]);
    assert_eq!(depth(&b, "late"), Some(0));
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn single_active_consumer_takes_over_on_cancel() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(
        &ch,
        "sac",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let (_ca, cha) = b.channel().await;
    let (_cb, chb) = b.channel().await;
    // A has prefetch 1: even while A is full, B gets nothing.
    cha.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut a = consume(&cha, "sac", "a").await;
    let mut bc = consume(&chb, "sac", "b").await;
    for i in 1..=3 {
        publish(&ch, "", "sac", &format!("m{i}"), BasicProperties::default()).await;
    }
    let d1 = next(&mut a).await;
    assert_eq!(body(&d1), "m1");
    assert!(until_quiet(&mut bc).await.is_empty(), "B is not active");
    d1.ack(BasicAckOptions::default()).await.expect("ack");
    let d2 = next(&mut a).await;
    assert_eq!(body(&d2), "m2");
    d2.ack(BasicAckOptions::default()).await.expect("ack");
    let d3m = next(&mut a).await;
    assert_eq!(body(&d3m), "m3");
    // A cancels with m3 unacked: B becomes active for what comes next; m3 stays A's to settle.
    cha.basic_cancel("a".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    publish(&ch, "", "sac", "m4", BasicProperties::default()).await;
    let d4 = next(&mut bc).await;
    assert_eq!(body(&d4), "m4");
    assert!(!d4.redelivered);
    d4.ack(BasicAckOptions::default()).await.expect("ack");
    // A rejects m3 with requeue: it goes to B, redelivered.
    d3m.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    })
    .await
    .expect("requeue");
    let again = next(&mut bc).await;
    assert_eq!(body(&again), "m3");
    assert!(again.redelivered);
    b.stop().await;
}

#[tokio::test]
async fn single_active_consumer_takes_over_unacked_when_the_channel_closes() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(
        &ch,
        "sac",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let (_ca, cha) = b.channel().await;
    let (_cb, chb) = b.channel().await;
    let mut a = consume(&cha, "sac", "a").await;
    let mut bc = consume(&chb, "sac", "b").await;
    for i in 1..=4 {
        publish(&ch, "", "sac", &format!("m{i}"), BasicProperties::default()).await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&mut a).await);
    }
    assert_eq!(bodies(&got), vec!["m1", "m2", "m3", "m4"]);
    assert!(until_quiet(&mut bc).await.is_empty(), "only A is active");
    got[0].ack(BasicAckOptions::default()).await.expect("ack");
    cha.close(200, "bye".into()).await.expect("close");
    let mut rest = Vec::new();
    for _ in 0..3 {
        let d = next(&mut bc).await;
        assert!(d.redelivered, "{} was delivered to A", body(&d));
        rest.push(body(&d));
    }
    assert_eq!(rest, vec!["m2", "m3", "m4"]);
    publish(&ch, "", "sac", "m5", BasicProperties::default()).await;
    assert_eq!(body(&next(&mut bc).await), "m5");
    b.stop().await;
}

#[tokio::test]
async fn consumer_priorities_prefer_the_higher_while_it_has_credit() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(&ch, "cp", FieldTable::default()).await;
    let (_ch_, chh) = b.channel().await;
    let (_cl, chl) = b.channel().await;
    chh.basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut lo = consume_with(&chl, "cp", "lo", table(&[("x-priority", int(1))])).await;
    let mut hi = consume_with(&chh, "cp", "hi", table(&[("x-priority", int(10))])).await;
    for i in 1..=5 {
        publish(&ch, "", "cp", &format!("m{i}"), BasicProperties::default()).await;
    }
    let h = vec![next(&mut hi).await, next(&mut hi).await];
    assert_eq!(bodies(&h), vec!["m1", "m2"]);
    let l = vec![
        next(&mut lo).await,
        next(&mut lo).await,
        next(&mut lo).await,
    ];
    assert_eq!(bodies(&l), vec!["m3", "m4", "m5"]);
    assert!(until_quiet(&mut hi).await.is_empty(), "hi is full");
    for d in h {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // hi has credit again: it gets the next ones, lo (unlimited) none.
    for i in 6..=7 {
        publish(&ch, "", "cp", &format!("m{i}"), BasicProperties::default()).await;
    }
    assert_eq!(
        bodies(&[next(&mut hi).await, next(&mut hi).await]),
        vec!["m6", "m7"]
    );
    assert!(
        until_quiet(&mut lo).await.is_empty(),
        "lo waits while hi has credit"
    );
    b.stop().await;
}

#[tokio::test]
async fn consumers_of_equal_priority_share_round_robin() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare(&ch, "rr", FieldTable::default()).await;
    let (_c1, ch1) = b.channel().await;
    let mut x = consume_with(&ch1, "rr", "x", table(&[("x-priority", int(5))])).await;
    let mut y = consume_with(&ch1, "rr", "y", table(&[("x-priority", int(5))])).await;
    let mut z = consume(&ch1, "rr", "z").await;
    for i in 1..=4 {
        publish(&ch, "", "rr", &format!("m{i}"), BasicProperties::default()).await;
    }
    let nx = until_quiet(&mut x).await.len();
    let ny = until_quiet(&mut y).await.len();
    assert_eq!((nx, ny), (2, 2));
    assert!(until_quiet(&mut z).await.is_empty(), "lower priority idle");
    b.stop().await;
}

#[tokio::test]
async fn second_consumer_on_an_exclusively_consumed_queue_is_403() {
    let b = TestBroker::start().await;
    let (_c1, ch1) = b.channel().await;
    declare(&ch1, "ex", FieldTable::default()).await;
    let _excl = ch1
        .basic_consume(
            "ex".into(),
            "excl".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exclusive consume");
    let (c2, ch2) = b.channel().await;
    let e = ch2
        .basic_consume(
            "ex".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_eq!(
        protocol_error(&e),
        (
            403,
            "ACCESS_REFUSED - queue 'ex' in vhost '/' in exclusive use".into()
        )
    );
    assert!(
        eventually(WAIT, || !ch2.status().connected()).await,
        "channel closed"
    );
    assert!(c2.status().connected());
    // Once the exclusive consumer is gone, others may consume.
    ch1.basic_cancel("excl".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    let ch3 = c2.create_channel().await.expect("channel");
    consume(&ch3, "ex", "after").await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Argument validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_queue_arguments_are_406_with_rabbitmq_texts() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let cases: Vec<(FieldTable, &str)> = vec![
        (
            table(&[("x-max-length", s("10"))]),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\"",
        ),
        (
            table(&[("x-max-length", int(-1))]),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}",
        ),
        (
            table(&[("x-message-ttl", int(-1))]),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}",
        ),
        (
            table(&[("x-overflow", s("bogus"))]),
            "invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow",
        ),
        (
            table(&[("x-expires", int(0))]),
            "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}",
        ),
        (
            table(&[("x-queue-type", s("bogus"))]),
            "invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'bogus'\"",
        ),
        (
            table(&[("x-max-priority", int(256))]),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}",
        ),
        (
            table(&[("x-dead-letter-routing-key", s("k"))]),
            "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined",
        ),
    ];
    for (args, text) in cases {
        let ch = c.create_channel().await.expect("channel");
        let e = ch
            .queue_declare("q".into(), QueueDeclareOptions::default(), args)
            .await
            .expect_err("406");
        assert_eq!(
            protocol_error(&e),
            (406, format!("PRECONDITION_FAILED - {text}"))
        );
        assert!(
            eventually(WAIT, || !ch.status().connected()).await,
            "channel closed"
        );
    }
    assert!(c.status().connected(), "soft errors only");
    let ch = c.create_channel().await.expect("channel");
    // None of the failed declares created the queue.
    let e = ch
        .queue_declare("q".into(), passive(), FieldTable::default())
        .await
        .expect_err("404");
    assert_eq!(protocol_error(&e).0, 404);
    b.stop().await;
}

#[tokio::test]
async fn redeclare_with_other_arguments_is_406_and_unknown_arguments_are_accepted() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let ch = c.create_channel().await.expect("channel");
    let args = table(&[("x-message-ttl", int(100)), ("x-whatever", s("anything"))]);
    declare(&ch, "q", args).await;
    // Same value with another integer type: equivalent. Unknown arguments are not compared.
    declare(
        &ch,
        "q",
        table(&[
            ("x-message-ttl", AMQPValue::LongLongInt(100)),
            ("x-whatever", s("else")),
        ]),
    )
    .await;
    let e = ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            table(&[("x-message-ttl", int(200))]),
        )
        .await
        .expect_err("406");
    assert_eq!(
        protocol_error(&e),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '200' but current is '100'"
                .into()
        )
    );
    b.stop().await;
}

#[tokio::test]
async fn consume_with_non_integer_x_priority_is_refused() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "q", FieldTable::default()).await;
    let e = ch
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            table(&[("x-priority", s("high"))]),
        )
        .await
        .expect_err("refused");
    assert_eq!(protocol_error(&e).0, 406);
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Across a restart
// ---------------------------------------------------------------------------------------------

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_priority_and_ttl_queues_keep_behaving_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    {
        let (c, ch) = confirm_channel(&b).await;
        ch.queue_declare(
            "dpq".into(),
            durable(),
            table(&[("x-max-priority", int(10))]),
        )
        .await
        .expect("dpq");
        ch.queue_declare(
            "dttl".into(),
            durable(),
            table(&[
                ("x-message-ttl", int(400)),
                ("x-dead-letter-exchange", s("ddlx")),
            ]),
        )
        .await
        .expect("dttl");
        ch.exchange_declare(
            "ddlx".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("ddlx");
        ch.queue_declare("ddlq".into(), durable(), FieldTable::default())
            .await
            .expect("ddlq");
        bind(&ch, "ddlq", "ddlx", "").await;
        for (m, p) in [("low", 1), ("high", 8), ("mid", 4), ("high2", 8)] {
            publish(&ch, "", "dpq", m, persistent().with_priority(p)).await;
        }
        for i in 0..3 {
            publish(&ch, "", "dttl", &format!("t{i}"), persistent()).await;
        }
        c.close(200, "bye".into()).await.ok();
    }
    b.stop().await;

    let b = TestBroker::start_durable(dir.path()).await;
    let (_c, ch) = confirm_channel(&b).await;
    // The TTL queue's recovered messages still expire (and are dead-lettered) by themselves.
    assert!(
        depth_becomes(&b, "dttl", 0).await,
        "recovered messages expire"
    );
    assert!(depth_becomes(&b, "ddlq", 3).await, "and are dead-lettered");
    let d = get(&ch, "ddlq").await.expect("dead letter");
    assert_eq!(deaths(&d), vec![d3("dttl", "expired", 1)]);
    // New messages too.
    publish(&ch, "", "dttl", "new", persistent()).await;
    assert!(depth_becomes(&b, "dttl", 0).await, "new messages expire");
    // The priority queue still orders by priority, also for new messages.
    publish(&ch, "", "dpq", "top", persistent().with_priority(9)).await;
    publish(&ch, "", "dpq", "zero", persistent()).await;
    assert_eq!(
        drain(&ch, "dpq").await,
        vec!["top", "high", "high2", "mid", "low", "zero"]
    );
    // Arguments survived: redeclaring with other ones is refused.
    let e = ch
        .queue_declare(
            "dpq".into(),
            durable(),
            table(&[("x-max-priority", int(5))]),
        )
        .await
        .expect_err("406");
    assert_eq!(protocol_error(&e).0, 406);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queue_with_x_expires_still_expires_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_manual(dir.path()).await;
    {
        let (c, ch) = b.channel().await;
        ch.queue_declare("dexp".into(), durable(), table(&[("x-expires", int(300))]))
            .await
            .expect("dexp");
        c.close(200, "bye".into()).await.ok();
    }
    b.stop().await;
    let b = TestBroker::start_durable_manual(dir.path()).await;
    assert!(depth(&b, "dexp").is_some(), "recovered");
    b.advance(Duration::from_millis(299)).await;
    assert!(
        depth(&b, "dexp").is_some(),
        "x-expires counts from the restart"
    );
    b.advance(Duration::from_millis(2)).await;
    assert!(
        eventually(WAIT, || depth(&b, "dexp").is_none()).await,
        "expires after the restart"
    );
    b.stop().await;
    let b = TestBroker::start_durable(dir.path()).await;
    assert!(depth(&b, "dexp").is_none(), "its deletion was durable");
    b.stop().await;
}
