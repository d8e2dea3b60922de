//! A durable queue longer than `storage.queue_memory_messages` keeps the rest of its backlog on
//! disk only and reads it back in order as consumers catch up, across restarts too.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_core::Config;
use warren_tests::TestBroker;

fn config() -> Config {
    let mut c = Config::default();
    c.storage.queue_memory_messages = 100;
    c.storage.segment_size = 64 * 1024;
    c
}

fn body(i: u32) -> Vec<u8> {
    format!("message {i:05}").into_bytes()
}

async fn consume_all(ch: &lapin::Channel, q: &str, n: u32) -> Vec<Vec<u8>> {
    ch.basic_qos(50, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = ch
        .basic_consume(
            q.into(),
            "pager".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    while got.len() < n as usize {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), c.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .expect("delivery");
        got.push(d.data.clone());
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    ch.basic_cancel("pager".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    ch.basic_cancel("pager".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_backlog_pages_to_disk_and_comes_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    let (_c, ch) = b.channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("long".into(), durable, FieldTable::default())
        .await
        .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..2000 {
        // Persistent and transient messages mixed: both page, and keep their order.
        let props = BasicProperties::default().with_delivery_mode(if i % 3 == 0 { 1 } else { 2 });
        ch.basic_publish(
            "".into(),
            "long".into(),
            BasicPublishOptions::default(),
            &body(i),
            props,
        )
        .await
        .expect("publish");
    }
    assert!(
        ch.wait_for_confirms().await.expect("confirms").is_empty(),
        "all acked"
    );
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare("long".into(), passive, FieldTable::default())
        .await
        .expect("passive");
    assert_eq!(q.message_count(), 2000, "paged messages count as ready");
    let got = consume_all(&ch, "long", 2000).await;
    let expected: Vec<Vec<u8>> = (0..2000).map(body).collect();
    assert!(got == expected, "every message once, in publish order");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_backlog_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    {
        let (_c, ch) = b.channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("long".into(), durable, FieldTable::default())
            .await
            .expect("declare");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for i in 0..1500 {
            let props = BasicProperties::default().with_delivery_mode(2);
            ch.basic_publish(
                "".into(),
                "long".into(),
                BasicPublishOptions::default(),
                &body(i),
                props,
            )
            .await
            .expect("publish");
        }
        assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
        // Take and ack the first 10, purge nothing: 1490 remain.
        for _ in 0..10 {
            let m = ch
                .basic_get("long".into(), BasicGetOptions::default())
                .await
                .expect("get")
                .expect("message");
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        // A round trip, so that the acks are processed before the broker stops.
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare("long".into(), passive, FieldTable::default())
            .await
            .expect("sync");
    }
    b.stop().await;
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    let (_c, ch) = b.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare("long".into(), passive, FieldTable::default())
        .await
        .expect("passive");
    assert_eq!(q.message_count(), 1490);
    let got = consume_all(&ch, "long", 1490).await;
    let expected: Vec<Vec<u8>> = (10..1500).map(body).collect();
    assert!(
        got == expected,
        "the recovered backlog comes back whole and in order"
    );
    // Purge of a paged queue counts the paged part.
    for i in 0..500 {
        ch.basic_publish(
            "".into(),
            "long".into(),
            BasicPublishOptions::default(),
            &body(i),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let purged = ch
        .queue_purge("long".into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged, 500);
    b.stop().await;
}
