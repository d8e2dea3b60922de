//! The counters the management API and metrics read (`warren_core::stats`,
//! `Broker::connections`): checked here against what a lapin client did; the HTTP and
//! Prometheus tests check the same numbers through their endpoints.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;
use warren_tests::{eventually, TestBroker};

#[tokio::test]
async fn channel_queue_exchange_and_broker_counters_follow_the_traffic() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    ch.queue_declare(
        "st".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    for _ in 0..5 {
        ch.basic_publish(
            "".into(),
            "st".into(),
            BasicPublishOptions::default(),
            b"12345678",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    // One unroutable publish, not mandatory: dropped.
    ch.basic_publish(
        "amq.direct".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let got = ch
        .basic_get("st".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message");
    got.ack(BasicAckOptions::default()).await.expect("ack");
    ch.basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            "st".into(),
            "ctag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..4 {
        let d = consumer.next().await.expect("delivery").expect("ok");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }

    let vh = b.broker.vhost("/").expect("vhost /");
    let q = vh.queue("st").expect("queue st");
    assert!(
        eventually(Duration::from_secs(5), || q.info().stats.ack.get() == 5).await,
        "the queue counted 5 acks: {:?}",
        q.info().stats.totals()
    );
    let qt = q.info().stats.totals();
    assert_eq!((qt.publish, qt.get, qt.deliver), (5, 1, 4), "{qt:?}");
    let consumers = q.consumers();
    assert_eq!(consumers.len(), 1);
    assert_eq!(&*consumers[0].tag, "ctag");
    assert_eq!(consumers[0].prefetch_count, 3);
    assert!(consumers[0].ack_required);

    let x = vh.exchange_info("amq.direct").expect("amq.direct");
    assert_eq!(x.stats.publish_in.get(), 1);
    assert_eq!(x.stats.publish_out.get(), 0);
    let d = vh.exchange_info("").expect("default exchange");
    assert_eq!(
        (d.stats.publish_in.get(), d.stats.publish_out.get()),
        (5, 5)
    );

    let conns = b.broker.connections();
    assert_eq!(conns.len(), 1);
    let info = &conns[0];
    assert_eq!(info.user, "guest");
    assert_eq!(info.vhost, "/");
    assert!(info.name.contains(" -> "), "{}", info.name);
    assert!(info.io.recv_oct.get() > 0 && info.io.send_oct.get() > 0);
    let chans = info.channels();
    assert_eq!(chans.len(), 1);
    let t = chans[0].stats.totals();
    assert_eq!(
        (
            t.publish,
            t.confirm,
            t.drop_unroutable,
            t.get,
            t.deliver,
            t.ack
        ),
        (6, 6, 1, 1, 4, 5),
        "{t:?}"
    );
    assert!(chans[0].confirm.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(
        chans[0]
            .prefetch_count
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert_eq!(
        chans[0]
            .consumer_count
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Closing the channel keeps its counts in the vhost's and the broker's totals.
    ch.close(200, "bye".into()).await.expect("close");
    assert!(
        eventually(Duration::from_secs(5), || b
            .broker
            .connections()
            .first()
            .is_some_and(|c| c.channels().is_empty()))
        .await
    );
    let total = b.broker.message_totals();
    assert_eq!((total.publish, total.ack), (6, 5), "{total:?}");
    let vt = b.broker.vhost_message_totals("/").expect("vhost totals");
    assert_eq!(vt, total);
    assert_eq!(b.broker.churn.channels_opened.get(), 1);
    assert_eq!(b.broker.churn.channels_closed.get(), 1);
    c.close(200, "bye".into()).await.expect("close");
    assert!(eventually(Duration::from_secs(5), || b.broker.connections().is_empty()).await);
    assert_eq!(b.broker.churn.connections_closed.get(), 1);
    assert_eq!(b.broker.message_totals(), total);
}
