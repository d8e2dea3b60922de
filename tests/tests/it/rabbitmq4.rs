//! `amqp.compat = "4"`: the defaults RabbitMQ 4.0-4.3 changed, each tested beside the 3.10.8
//! behaviour that stays the default. (The quorum delivery limit of 20 is in `quorum.rs`.)

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{json, Value};
use tokio::time::timeout;
use warren_core::config::Compat;
use warren_core::Config;
use warren_tests::TestBroker;

use crate::errors::{amqp, assert_amqp};

const WAIT: Duration = Duration::from_secs(10);

/// Durable: under "4" the tests' queues must not be transient non-exclusive ones.
fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn broker(compat: Compat) -> TestBroker {
    let mut config = Config::default();
    config.amqp.compat = compat;
    TestBroker::start_with(config).await
}

async fn publish_body(ch: &Channel, queue: &str, len: usize) -> lapin::Result<()> {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        &vec![b'x'; len],
        BasicProperties::default(),
    )
    .await?
    .await
    .map(|_| ())
}

/// `max_message_size = 0` (the default) is 128 MiB under "3.10" and 16 MiB under "4"; an
/// explicit value wins under either.
#[tokio::test]
async fn default_max_message_size_is_16_mib_under_compat_4() {
    const MIB16: usize = 16 * 1024 * 1024;
    for compat in [Compat::V3_10, Compat::V4] {
        let b = broker(compat).await;
        let (_c, ch) = b.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        ch.queue_declare("big".into(), durable(), FieldTable::default())
            .await
            .expect("declare");
        publish_body(&ch, "big", MIB16).await.expect("16 MiB fits");
        let over = publish_body(&ch, "big", MIB16 + 1).await;
        match compat {
            Compat::V3_10 => over.expect("128 MiB limit"),
            Compat::V4 => {
                let e = over.expect_err("over 16 MiB");
                assert_amqp(
                    &e,
                    406,
                    "PRECONDITION_FAILED - message size 16777217 is larger than configured max size 16777216",
                );
            }
        }
        b.stop().await;
    }
    let mut config = Config::default();
    config.amqp.compat = Compat::V4;
    config.amqp.max_message_size = 1000;
    let b = TestBroker::start_with(config).await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let e = publish_body(&ch, "nowhere", 1001)
        .await
        .expect_err("explicit limit");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000",
    );
    b.stop().await;
}

async fn channel_prefetch(b: &TestBroker) -> (u64, u64) {
    let rows = b.api().get("/api/channels").await;
    let row = &rows.json.as_array().expect("a list")[0];
    (
        row["prefetch_count"].as_u64().expect("prefetch_count"),
        row["global_prefetch_count"]
            .as_u64()
            .expect("global_prefetch_count"),
    )
}

/// `basic.qos(global = true)` limits the whole channel under "3.10"; under "4" (RabbitMQ 4.3
/// denies `global_qos`) it is accepted and sets the per-consumer prefetch: two consumers with a
/// "global" prefetch of 1 get one message each.
#[tokio::test]
async fn global_qos_is_per_consumer_under_compat_4() {
    for compat in [Compat::V3_10, Compat::V4] {
        let b = broker(compat).await;
        let (_c, ch) = b.channel().await;
        ch.queue_declare("gq".into(), durable(), FieldTable::default())
            .await
            .expect("declare");
        for _ in 0..4 {
            publish_body(&ch, "gq", 3).await.expect("publish");
        }
        ch.basic_qos(1, BasicQosOptions { global: true })
            .await
            .expect("qos-ok under both");
        let prefetch = channel_prefetch(&b).await;
        match compat {
            Compat::V3_10 => assert_eq!(prefetch, (0, 1)),
            Compat::V4 => assert_eq!(prefetch, (1, 0)),
        }
        if compat == Compat::V4 {
            let mut a = ch
                .basic_consume(
                    "gq".into(),
                    "a".into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume a");
            let mut c = ch
                .basic_consume(
                    "gq".into(),
                    "c".into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume c");
            for consumer in [&mut a, &mut c] {
                timeout(WAIT, consumer.next())
                    .await
                    .expect("each consumer gets its own window of 1")
                    .expect("stream open")
                    .expect("delivery");
            }
        }
        b.stop().await;
    }
}

/// Under "4" a new non-durable, non-exclusive queue is refused as RabbitMQ 4.3 refuses it (541,
/// the connection closes, the text is the deprecated-feature warning cut to 255 bytes);
/// exclusive and durable queues are declared as before, and "3.10" allows all three.
#[tokio::test]
async fn transient_non_exclusive_queues_are_refused_under_compat_4() {
    let b = broker(Compat::V4).await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "excl".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exclusive transient is fine");
    ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("server-named exclusive is fine");
    ch.queue_declare(
        "dur".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("durable is fine");
    let e = ch
        .queue_declare(
            "transient".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    let (code, text) = amqp(&e);
    assert_eq!(code, 541);
    assert!(
        text.starts_with(
            "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\nBy default, this feature is not permitted anymore."
        ),
        "{text}"
    );
    assert_eq!(text.len(), 255, "{text}");
    assert!(text.ends_with("..."), "{text}");
    assert!(
        warren_tests::eventually(WAIT, || !c.status().connected()).await,
        "541 closes the connection"
    );
    // Nothing was created, and the broker serves the next connection.
    let (_c2, ch2) = b.channel().await;
    let e = ch2
        .queue_declare(
            "transient".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("not created");
    assert_eq!(amqp(&e).0, 404);
    b.stop().await;

    let b = broker(Compat::V3_10).await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "transient".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("3.10 allows it");
    b.stop().await;
}

async fn limited_user(b: &TestBroker) -> (Connection, Channel) {
    let api = b.api();
    let r = api
        .put("/api/users/app", &json!({"password": "pw", "tags": ""}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let perms: Value = json!({"configure": "^own\\.", "write": ".*", "read": ".*"});
    let r = api.put("/api/permissions/%2F/app", &perms).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let c = Connection::connect(
        &format!("amqp://app:pw@{}/%2f", b.addr),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("app logs in");
    let ch = c.create_channel().await.expect("channel");
    (c, ch)
}

/// Passive declares need no permission under "3.10"; under "4" (as RabbitMQ 4.3) they need
/// `configure` on the name, with the usual 403 text, and keep working where it is granted.
#[tokio::test]
async fn passive_declares_check_configure_under_compat_4() {
    for compat in [Compat::V3_10, Compat::V4] {
        let b = broker(compat).await;
        let (_g, admin) = b.channel().await;
        for q in ["theirs.q", "own.q"] {
            admin
                .queue_declare(q.into(), durable(), FieldTable::default())
                .await
                .expect("declare");
        }
        for x in ["theirs.x", "own.x"] {
            admin
                .exchange_declare(
                    x.into(),
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("declare");
        }
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let xpassive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let (c, ch) = limited_user(&b).await;
        ch.queue_declare("own.q".into(), passive, FieldTable::default())
            .await
            .expect("configure granted on own.*");
        ch.exchange_declare(
            "own.x".into(),
            lapin::ExchangeKind::Fanout,
            xpassive,
            FieldTable::default(),
        )
        .await
        .expect("configure granted on own.*");
        let q = ch
            .queue_declare("theirs.q".into(), passive, FieldTable::default())
            .await;
        match compat {
            Compat::V3_10 => {
                q.expect("3.10 does not check");
                ch.exchange_declare(
                    "theirs.x".into(),
                    lapin::ExchangeKind::Fanout,
                    xpassive,
                    FieldTable::default(),
                )
                .await
                .expect("3.10 does not check");
            }
            Compat::V4 => {
                assert_amqp(
                    &q.expect_err("refused"),
                    403,
                    "ACCESS_REFUSED - access to queue 'theirs.q' in vhost '/' refused for user 'app'",
                );
                let ch = c.create_channel().await.expect("connection still open");
                let e = ch
                    .exchange_declare(
                        "theirs.x".into(),
                        lapin::ExchangeKind::Fanout,
                        xpassive,
                        FieldTable::default(),
                    )
                    .await
                    .expect_err("refused");
                assert_amqp(
                    &e,
                    403,
                    "ACCESS_REFUSED - access to exchange 'theirs.x' in vhost '/' refused for user 'app'",
                );
            }
        }
        b.stop().await;
    }
}
