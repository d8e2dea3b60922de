//! The event exchange (`amq.rabbitmq.event`) with lapin over TCP: the events of queue,
//! exchange, binding and consumer operations with the headers RabbitMQ 3.10.8's
//! `rabbitmq_event_exchange` sends (captured from a local 3.10.8 with the plugin enabled).

use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::Duration;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

async fn events(ch: &Channel, q: &str) -> Vec<(String, FieldTable)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        assert!(m.delivery.data.is_empty());
        assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
        assert!(m.delivery.properties.timestamp().is_some());
        let h = m.delivery.properties.headers().clone().unwrap_or_default();
        out.push((m.delivery.routing_key.to_string(), h));
    }
    out
}

fn get<'a>(h: &'a FieldTable, k: &str) -> &'a AMQPValue {
    h.inner()
        .get(k)
        .unwrap_or_else(|| panic!("header {k} in {h:?}"))
}

#[tokio::test]
async fn topology_and_consumer_operations_publish_the_plugin_events() {
    let b = TestBroker::start().await;
    let (_c, ev) = b.channel().await;
    ev.queue_declare(
        "events".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ev.queue_bind(
        "events".into(),
        "amq.rabbitmq.event".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind to the event exchange");

    let (_c2, ch) = b.channel().await;
    let mut qargs = FieldTable::default();
    qargs.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    ch.queue_declare("evq".into(), QueueDeclareOptions::default(), qargs)
        .await
        .expect("queue");
    ch.exchange_declare(
        "evx".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    ch.queue_bind(
        "evq".into(),
        "evx".into(),
        "a.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    ch.basic_consume(
        "evq".into(),
        "ctag1".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("consume");
    ch.basic_cancel("ctag1".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    ch.queue_unbind(
        "evq".into(),
        "evx".into(),
        "a.#".into(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    ch.exchange_delete("evx".into(), ExchangeDeleteOptions::default())
        .await
        .expect("exchange.delete");
    ch.queue_delete("evq".into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");

    let vh = b.broker.vhost("/").expect("vhost");
    assert!(
        eventually(WAIT, || vh
            .queue("events")
            .is_some_and(|q| q.message_count() >= 9))
        .await
    );
    let got = events(&ev, "events").await;
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "binding.created",
            "queue.created",
            "exchange.created",
            "binding.created",
            "consumer.created",
            "consumer.deleted",
            "binding.deleted",
            "exchange.deleted",
            "queue.deleted",
        ]
    );
    for (_, h) in &got {
        assert_eq!(get(h, "user_who_performed_action"), &s("guest"));
        assert_eq!(get(h, "vhost"), &s("/"));
        assert!(matches!(
            get(h, "timestamp_in_ms"),
            AMQPValue::LongLongInt(_)
        ));
    }
    // The first: the event queue's own binding.
    let own = &got[0].1;
    assert_eq!(get(own, "source_name"), &s("amq.rabbitmq.event"));
    assert_eq!(get(own, "source_kind"), &s("exchange"));
    assert_eq!(get(own, "destination_name"), &s("events"));
    assert_eq!(get(own, "destination_kind"), &s("queue"));
    assert_eq!(get(own, "routing_key"), &s("#"));
    let q = &got[1].1;
    assert_eq!(get(q, "name"), &s("evq"));
    assert_eq!(get(q, "durable"), &AMQPValue::Boolean(false));
    assert_eq!(get(q, "auto_delete"), &AMQPValue::Boolean(false));
    assert_eq!(get(q, "exclusive"), &AMQPValue::Boolean(false));
    let mut args = FieldArray::default();
    args.push(s("{<<\"x-message-ttl\">>,signedint,1000}"));
    assert_eq!(get(q, "arguments"), &AMQPValue::FieldArray(args));
    let x = &got[2].1;
    assert_eq!(get(x, "name"), &s("evx"));
    assert_eq!(get(x, "type"), &s("topic"));
    assert_eq!(get(x, "internal"), &AMQPValue::Boolean(false));
    let c = &got[4].1;
    assert_eq!(get(c, "queue"), &s("evq"));
    assert_eq!(get(c, "consumer_tag"), &s("ctag1"));
    assert_eq!(get(c, "ack_required"), &AMQPValue::Boolean(true));
    assert_eq!(get(c, "exclusive"), &AMQPValue::Boolean(false));
    assert_eq!(get(&got[8].1, "name"), &s("evq"));

    // Clients may not publish to it: it is internal.
    let e = ev
        .basic_publish(
            "amq.rabbitmq.event".into(),
            "queue.created".into(),
            BasicPublishOptions::default(),
            b"fake",
            BasicProperties::default(),
        )
        .await
        .expect("publish is asynchronous");
    drop(e);
    assert!(eventually(WAIT, || !ev.status().connected()).await);
    b.stop().await;
}

#[tokio::test]
async fn nothing_bound_nothing_built() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let vh = b.broker.vhost("/").expect("vhost");
    assert!(!vh.wants_events());
    assert!(vh
        .exchange_names()
        .iter()
        .any(|n| n == "amq.rabbitmq.event"));
    b.stop().await;
}
