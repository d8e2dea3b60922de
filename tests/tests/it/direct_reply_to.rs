//! Direct reply-to (`amq.rabbitmq.reply-to`), as RabbitMQ documents it: an RPC client consumes
//! the pseudo-queue in no-ack mode and publishes with `reply_to = amq.rabbitmq.reply-to`; the
//! server sees a routable name there and its reply reaches the client's consumer.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;
use warren_tests::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_over_direct_reply_to() {
    let b = TestBroker::start().await;
    let (_sc, server) = b.channel().await;
    server
        .queue_declare(
            "rpc".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut requests = server
        .basic_consume(
            "rpc".into(),
            "srv".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let (_cc, client) = b.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    client
        .queue_declare(
            "amq.rabbitmq.reply-to".into(),
            passive,
            FieldTable::default(),
        )
        .await
        .expect("the pseudo-queue can be declared passively");
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "cli".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .expect("consume reply-to");
    for i in 0..3 {
        let props = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id(format!("c{i}").into());
        client
            .basic_publish(
                "".into(),
                "rpc".into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                props,
            )
            .await
            .expect("request");
        let req = tokio::time::timeout(Duration::from_secs(5), requests.next())
            .await
            .expect("request in time")
            .expect("stream")
            .expect("delivery");
        let reply_to = req
            .properties
            .reply_to()
            .clone()
            .expect("reply_to")
            .to_string();
        assert!(
            reply_to.starts_with("amq.rabbitmq.reply-to."),
            "rewritten: {reply_to}"
        );
        let corr = req
            .properties
            .correlation_id()
            .clone()
            .expect("correlation id");
        let answer = format!("{}!", String::from_utf8_lossy(&req.data));
        server
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                answer.as_bytes(),
                BasicProperties::default().with_correlation_id(corr),
            )
            .await
            .expect("reply");
        req.ack(BasicAckOptions::default()).await.expect("ack");
        let rep = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("reply in time")
            .expect("stream")
            .expect("delivery");
        assert_eq!(rep.data, format!("{i}!").into_bytes());
        assert_eq!(
            rep.properties
                .correlation_id()
                .clone()
                .map(|c| c.to_string()),
            Some(format!("c{i}"))
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn reply_to_without_a_reply_consumer_is_refused() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let props = BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
    let r = ch
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions::default(),
            b"x",
            props,
        )
        .await
        .expect("sent")
        .await;
    let err = r.expect_err("the channel is closed");
    let text = format!("{err}");
    assert!(
        text.contains("PRECONDITION_FAILED - fast reply consumer does not exist"),
        "got {text}"
    );
    // Acknowledging consumers are refused too.
    let (_c2, ch2) = b.channel().await;
    let err = ch2
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "x".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert!(
        format!("{err}").contains("reply consumer cannot acknowledge"),
        "got {err}"
    );
    b.stop().await;
}
