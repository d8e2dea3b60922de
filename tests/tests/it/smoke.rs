use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_tests::TestBroker;

#[tokio::test]
async fn publish_consume_ack_round_trip() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare(
            "hello".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    assert_eq!(q.message_count(), 0);
    ch.basic_publish(
        "".into(),
        "hello".into(),
        BasicPublishOptions::default(),
        b"Hello World!",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let mut consumer = ch
        .basic_consume(
            "hello".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let d = consumer
        .next()
        .await
        .expect("a delivery")
        .expect("ok delivery");
    assert_eq!(&d.data[..], b"Hello World!");
    d.ack(BasicAckOptions::default()).await.expect("ack");
    b.stop().await;
}
