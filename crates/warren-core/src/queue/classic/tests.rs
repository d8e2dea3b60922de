//! The classic queue driven directly, without a connection: a [`MemorySink`] consumer and
//! time passed in as an argument (no clock is read, nothing sleeps).

use std::sync::Arc;

use bytes::Bytes;
use warren_codec::proto::{AMQPProperties, AMQPValue, FieldTable};

use crate::clock::{Clock, Millis};
use crate::message::Message;
use crate::queue::memory_sink::MemorySink;
use crate::queue::timers::Timers;
use crate::queue::{
    create, Consumer, Credit, DeadLetter, Got, QueueArgs, QueueInfo, QueueOptions, QueueOwner,
    QueueRef, Reason, Services, Settle, Sink, Waiter,
};

fn queue(args: &[(&str, AMQPValue)]) -> QueueRef {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    let info = QueueInfo {
        name: "q".into(),
        vhost: "/".into(),
        options: QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: t.clone(),
        },
        args: QueueArgs::parse(&t, "q", "/").expect("valid arguments"),
        policy: crate::queue::PolicyCell::new(crate::policy::Applied::none(
            QueueArgs::parse(&t, "q", "/").expect("valid arguments"),
        )),
        store_dir: None,
        stats: Default::default(),
    };
    let services = Services {
        timers: Timers::new(Clock::System),
        pager: None,
        clock: Clock::System,
        compat: Default::default(),
    };
    create(info, crate::queue::Backing::None, &services, 1)
}

fn msg(body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        "".into(),
        "q",
        &AMQPProperties::default(),
        Bytes::from_static(&[0, 0]),
        Bytes::from(body.to_string()),
    ))
}

fn consumer(sink: &Arc<MemorySink>, prefetch: u16, no_ack: bool) -> Consumer {
    let s: Arc<dyn Sink> = sink.clone();
    Consumer {
        tag: "c".into(),
        conn_id: 1,
        channel: 1,
        no_ack,
        exclusive: false,
        priority: 0,
        credit: Credit::new(prefetch),
        channel_credit: Credit::new(0),
        sink: s,
        arguments: Default::default(),
    }
}

fn bodies(sink: &MemorySink) -> Vec<String> {
    sink.take()
        .into_iter()
        .map(|d| String::from_utf8_lossy(&d.message.msg.body).into_owned())
        .collect()
}

#[test]
fn message_ttl_counts_in_the_time_the_caller_passes() {
    let q = queue(&[("x-message-ttl", AMQPValue::LongInt(100))]);
    q.publish(msg("a"), 1_000);
    q.publish(msg("b"), 1_050);
    let w = Waiter {
        sink: MemorySink::new(),
        channel: 1,
    };
    // At 1,100 "a" (published at 1,000) is due, "b" not yet.
    match q.get(true, 1_101, &w) {
        Got::Message(m, left) => {
            assert_eq!(&m.msg.body[..], b"b");
            assert_eq!(left, 0);
        }
        other => panic!("expected b, got {other:?}"),
    }
    q.publish(msg("c"), 2_000);
    assert!(matches!(q.get(true, 2_200, &w), Got::Empty), "c expired");
}

/// Records what a queue asks of its vhost.
#[derive(Default)]
struct Owner {
    expired: parking_lot::Mutex<Vec<String>>,
}

impl QueueOwner for Owner {
    fn dead_letter(&self, _dl: DeadLetter, _reason: Reason, _now: Millis) {}
    fn expired(&self, q: &QueueRef) {
        self.expired.lock().push(q.name().to_string());
    }
}

#[test]
fn x_expires_is_decided_by_the_time_of_the_timer_call() {
    let q = queue(&[("x-expires", AMQPValue::LongInt(500))]);
    let owner = Arc::new(Owner::default());
    let weak: std::sync::Weak<dyn QueueOwner> = Arc::downgrade(&owner) as _;
    q.attach(weak);
    q.on_timer(400);
    assert!(owner.expired.lock().is_empty(), "unused for 399 ms only");
    q.touch(1_000);
    q.on_timer(1_499);
    assert!(
        owner.expired.lock().is_empty(),
        "the lease restarted at 1,000"
    );
    q.on_timer(1_500);
    assert_eq!(*owner.expired.lock(), vec!["q".to_string()]);
}

#[test]
fn prefetch_window_parks_and_released_credit_resumes() {
    let q = queue(&[]);
    let sink = MemorySink::new();
    let c = consumer(&sink, 2, false);
    let credit = c.credit.clone();
    q.consume(c, 1).expect("consume");
    for b in ["1", "2", "3"] {
        q.publish(msg(b), 1);
    }
    let got = sink.take();
    assert_eq!(got.len(), 2, "window of 2");
    assert_eq!(q.message_count(), 1);
    // The channel releases credit before settling (as the AMQP channel does); settling
    // dispatches again.
    credit.release();
    q.settle(
        vec![got.into_iter().next().expect("one").message],
        Settle::Ack,
        2,
    );
    assert_eq!(bodies(&sink), vec!["3"]);
    assert_eq!(q.unacked_count(), 2);
}

#[test]
fn a_sink_that_is_not_writable_parks_its_consumer_until_kicked() {
    let q = queue(&[]);
    let sink = MemorySink::new();
    sink.set_writable(false);
    q.consume(consumer(&sink, 0, true), 1).expect("consume");
    q.publish(msg("x"), 1);
    assert!(sink.take().is_empty(), "parked");
    assert_eq!(q.message_count(), 1);
    sink.set_writable(true);
    q.kick(2);
    assert_eq!(bodies(&sink), vec!["x"]);
    assert_eq!(q.message_count(), 0);
}

#[test]
fn delivery_limit_drops_a_message_requeued_too_often() {
    let q = queue(&[("x-delivery-limit", AMQPValue::LongInt(1))]);
    let sink = MemorySink::new();
    q.publish(msg("m"), 1);
    q.consume(consumer(&sink, 0, false), 1).expect("consume");
    for round in 0..2 {
        let got = sink.take();
        assert_eq!(got.len(), 1, "round {round}: delivered");
        q.requeue(got.into_iter().map(|d| d.message).collect(), 2);
    }
    // Delivered twice (limit 1): the second requeue dead-letters it (no DLX: dropped).
    assert!(sink.take().is_empty());
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.unacked_count(), 0);
}

#[test]
fn deleting_cancels_consumers_through_their_sink() {
    let q = queue(&[]);
    let sink = MemorySink::new();
    q.consume(consumer(&sink, 0, true), 1).expect("consume");
    q.publish(msg("gone"), 1);
    let _ = sink.take();
    q.publish(msg("dropped"), 1);
    assert_eq!(q.mark_deleted(), 0, "the consumer took it");
    assert_eq!(sink.cancelled(), vec![(1u16, Arc::<str>::from("c"))]);
    assert!(q.is_deleted());
}
