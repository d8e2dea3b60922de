//! Error replies: each mistake gets RabbitMQ 3.10.8's reply code and text, closes the channel
//! (soft errors) or the connection (hard errors), and leaves the rest usable.
//!
//! lapin surfaces a `channel.close` / `connection.close` as
//! `lapin::ErrorKind::ProtocolError(AMQPError)` (`get_id()` = reply code, `get_message()` = reply
//! text): on the pending synchronous method, and for asynchronous methods (publish, ack) as an
//! `Event::Error` on the connection's events listener.

use futures_lite::{Stream, StreamExt};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Event, ExchangeKind};
use std::time::Duration;
use tokio::time::timeout;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn amqp(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

pub(crate) fn assert_amqp(e: &lapin::Error, code: u16, text: &str) {
    assert_eq!(amqp(e), (code, text.to_string()));
}

/// Waits for the connection's next `Event::Error` (how lapin reports a close caused by an
/// asynchronous method).
async fn next_error(events: &mut (impl Stream<Item = Event> + Unpin)) -> lapin::Error {
    timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(Event::Error(e)) => return e,
                Some(_) => continue,
                None => panic!("events stream ended"),
            }
        }
    })
    .await
    .expect("an error event in time")
}

/// After a soft error: the channel is closed, the connection and a new channel still work.
async fn assert_channel_closed_connection_ok(b: &TestBroker, conn: &Connection, ch: &Channel) {
    assert!(
        eventually(WAIT, || !ch.status().connected()).await,
        "channel closed"
    );
    assert!(conn.status().connected(), "connection still open");
    let ch2 = conn.create_channel().await.expect("new channel");
    let q = ch2
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("new channel works");
    ch2.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"ok",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let m = ch2
        .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("message");
    assert_eq!(&m.delivery.data[..], b"ok");
    let _ = b;
}

/// After a hard error: the connection is closed; a new connection works.
async fn assert_connection_closed(b: &TestBroker, conn: &Connection) {
    assert!(
        eventually(WAIT, || !conn.status().connected()).await,
        "connection closed"
    );
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "after-hard-error".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("a new connection works");
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .queue_declare("missing".into(), passive(), FieldTable::default())
        .await
        .expect_err("404");
    assert_amqp(&e, 404, "NOT_FOUND - no queue 'missing' in vhost '/'");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn redeclare_queue_with_other_durable_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let e = ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

const LOCKED: &str = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";

#[tokio::test]
async fn exclusive_queue_from_another_connection_is_405() {
    let b = TestBroker::start().await;
    let (_owner, och) = b.channel().await;
    och.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let (c, ch) = b.channel().await;
    let e = ch
        .queue_declare("q".into(), passive(), FieldTable::default())
        .await
        .expect_err("405");
    assert_amqp(&e, 405, LOCKED);
    assert_channel_closed_connection_ok(&b, &c, &ch).await;

    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    let e = ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("405");
    assert_amqp(&e, 405, LOCKED);

    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    let e = ch
        .basic_consume(
            "q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("405");
    assert_amqp(&e, 405, LOCKED);
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn queue_name_with_amq_prefix_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .queue_declare(
            "amq.foo".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn exchange_name_with_amq_prefix_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .exchange_declare(
            "amq.foo".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn redeclare_exchange_with_other_type_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let e = ch
        .exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn unknown_exchange_type_closes_connection_503() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .exchange_declare(
            "x".into(),
            ExchangeKind::Custom("foo".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("503");
    assert_amqp(&e, 503, "COMMAND_INVALID - invalid exchange type 'foo'");
    assert!(e.is_amqp_hard_error());
    assert_connection_closed(&b, &c).await;
    b.stop().await;
}

#[tokio::test]
async fn publish_to_missing_exchange_is_404_and_closes_channel() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let mut events = Box::pin(c.events_listener());
    ch.basic_publish(
        "nox".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("the publish itself is sent");
    let e = next_error(&mut events).await;
    assert_amqp(&e, 404, "NOT_FOUND - no exchange 'nox' in vhost '/'");
    assert!(e.is_amqp_soft_error());
    assert_channel_closed_connection_ok(&b, &c, &ch).await;

    // In confirm mode the pending confirm fails with the same error.
    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("AMQP operation succeeds");
    let r = ch
        .basic_publish(
            "nox".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("sent")
        .await;
    let e = r.expect_err("confirm fails");
    assert_amqp(&e, 404, "NOT_FOUND - no exchange 'nox' in vhost '/'");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn bind_to_default_exchange_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let e = ch
        .queue_bind(
            "q".into(),
            "".into(),
            "q".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn delete_amq_direct_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
        .await
        .expect_err("403");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn ack_of_unknown_delivery_tag_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let mut events = Box::pin(c.events_listener());
    ch.basic_ack(99, BasicAckOptions::default())
        .await
        .expect("the ack itself is sent");
    let e = next_error(&mut events).await;
    assert_amqp(&e, 406, "PRECONDITION_FAILED - unknown delivery tag 99");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn duplicate_consumer_tag_is_530_and_closes_connection() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let _first = ch
        .basic_consume(
            "q".into(),
            "tag1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("AMQP operation succeeds");
    let e = ch
        .basic_consume(
            "q".into(),
            "tag1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("530");
    assert_amqp(
        &e,
        530,
        "NOT_ALLOWED - attempt to reuse consumer tag 'tag1'",
    );
    assert_connection_closed(&b, &c).await;
    b.stop().await;
}

#[tokio::test]
async fn consume_from_missing_queue_is_404() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .basic_consume(
            "nq".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_amqp(&e, 404, "NOT_FOUND - no queue 'nq' in vhost '/'");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn tx_commit_without_select_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch.tx_commit().await.expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    let e = ch.tx_rollback().await.expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    );
    b.stop().await;
}

#[tokio::test]
async fn confirm_select_after_tx_select_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.tx_select().await.expect("AMQP operation succeeds");
    let e = ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    // And the other way round.
    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("AMQP operation succeeds");
    let e = ch.tx_select().await.expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn basic_recover_without_requeue_is_540() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await
        .expect_err("540");
    assert_amqp(&e, 540, "NOT_IMPLEMENTED - requeue=false");
    assert!(e.is_amqp_hard_error());
    assert_connection_closed(&b, &c).await;
    b.stop().await;
}

#[tokio::test]
async fn publish_immediate_is_540() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    ch.basic_publish(
        "".into(),
        "q".into(),
        BasicPublishOptions {
            immediate: true,
            ..Default::default()
        },
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("the publish itself is sent");
    // The next synchronous method fails with the connection error.
    let e = ch
        .queue_declare("q".into(), passive(), FieldTable::default())
        .await
        .expect_err("540");
    assert_amqp(&e, 540, "NOT_IMPLEMENTED - immediate=true");
    assert_connection_closed(&b, &c).await;
    b.stop().await;
}

#[tokio::test]
async fn second_consumer_on_exclusively_consumed_queue_is_403() {
    let b = TestBroker::start().await;
    let (_c1, ch1) = b.channel().await;
    ch1.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let _excl = ch1
        .basic_consume(
            "q".into(),
            "excl".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("AMQP operation succeeds");
    let (c, ch) = b.channel().await;
    let e = ch
        .basic_consume(
            "q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    // An exclusive consumer on a queue that already has a consumer is refused too.
    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    ch.queue_declare(
        "q2".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let _plain = ch1
        .basic_consume(
            "q2".into(),
            "plain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("AMQP operation succeeds");
    let e = ch
        .basic_consume(
            "q2".into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - queue 'q2' in vhost '/' in exclusive use",
    );
    b.stop().await;
}

#[tokio::test]
async fn exchange_delete_if_unused_on_bound_exchange_is_406() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    ch.queue_bind(
        "q".into(),
        "x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let e = ch
        .exchange_delete(
            "x".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    // The exchange is still there and deletable without if-unused.
    let ch = c.create_channel().await.expect("AMQP operation succeeds");
    ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("still exists");
    ch.exchange_delete("x".into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    b.stop().await;
}

#[tokio::test]
async fn queue_delete_if_unused_with_consumer_is_406() {
    let b = TestBroker::start().await;
    let (_c1, ch1) = b.channel().await;
    ch1.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("AMQP operation succeeds");
    let _cons = ch1
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("AMQP operation succeeds");
    let (c, ch) = b.channel().await;
    let e = ch
        .queue_delete(
            "q".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("406");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - queue 'q' in vhost '/' in use",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn passive_declare_of_missing_exchange_is_404() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .exchange_declare(
            "nox".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_amqp(&e, 404, "NOT_FOUND - no exchange 'nox' in vhost '/'");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn bind_with_missing_queue_or_exchange_is_404() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let e = ch
        .queue_bind(
            "q".into(),
            "nox".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_amqp(&e, 404, "NOT_FOUND - no exchange 'nox' in vhost '/'");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;

    let ch = c.create_channel().await.expect("channel");
    let e = ch
        .queue_bind(
            "nq".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_amqp(&e, 404, "NOT_FOUND - no queue 'nq' in vhost '/'");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;

    let ch = c.create_channel().await.expect("channel");
    let e = ch
        .exchange_bind(
            "nox".into(),
            "amq.direct".into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_amqp(&e, 404, "NOT_FOUND - no exchange 'nox' in vhost '/'");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn publish_to_internal_exchange_is_403() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    ch.exchange_declare(
        "ix".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare internal");
    let mut events = Box::pin(c.events_listener());
    ch.basic_publish(
        "ix".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("sent");
    let e = next_error(&mut events).await;
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'ix' in vhost '/'",
    );
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}

#[tokio::test]
async fn empty_queue_name_without_previous_declare_is_404() {
    let b = TestBroker::start().await;
    let (c, ch) = b.channel().await;
    let e = ch
        .basic_get("".into(), BasicGetOptions::default())
        .await
        .expect_err("404");
    assert_amqp(&e, 404, "NOT_FOUND - no previously declared queue");
    assert_channel_closed_connection_ok(&b, &c, &ch).await;
    b.stop().await;
}
