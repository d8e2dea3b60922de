//! Crash test for the delayed-message exchange: persistent messages held by a durable
//! `x-delayed-message` exchange and confirmed survive SIGKILL of the `warren` binary, and are
//! routed after the restart, in due order, when due.

mod common;
use common::{connect, free_port, start};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use rand::seq::SliceRandom;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_delayed_messages_survive_kill_9_and_come_out_in_due_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = start(dir.path(), port);
    // Delays 1.5 s to 3.4 s, 100 ms apart, published in random order.
    let mut delays: Vec<u32> = (0..20).map(|i| 1_500 + i * 100).collect();
    delays.shuffle(&mut rand::thread_rng());
    {
        let c = connect(port).await;
        let ch = c.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let mut args = FieldTable::default();
        args.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("direct".into()),
        );
        ch.exchange_declare(
            "delayed".into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("exchange.declare");
        ch.queue_declare(
            "due".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.queue_bind(
            "due".into(),
            "delayed".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        for d in &delays {
            let mut h = FieldTable::default();
            h.insert("x-delay".into(), AMQPValue::LongInt(*d as i32));
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(h);
            let conf = ch
                .basic_publish(
                    "delayed".into(),
                    "k".into(),
                    BasicPublishOptions::default(),
                    d.to_string().as_bytes(),
                    props,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(conf.is_ack());
        }
    }
    // Everything is confirmed, so on disk: kill -9 before anything is due.
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let mut child = start(dir.path(), port);
    let c = connect(port).await;
    let ch = c.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            "due".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    while got.len() < delays.len() {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("delivered in time")
            .expect("delivery")
            .expect("ok");
        got.push(
            String::from_utf8_lossy(&d.data)
                .parse::<u32>()
                .expect("a delay"),
        );
    }
    let mut want = delays.clone();
    want.sort_unstable();
    assert_eq!(got, want, "due order after the crash");
    let _ = c.close(200, "ok".into()).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}
