//! Stream queues (`x-queue-type: stream`) over AMQP 0-9-1 with lapin: RabbitMQ 3.10.8's declare
//! rules and errors, offsets (`x-stream-offset` first/last/next/numeric/timestamp/interval) with
//! the `x-stream-offset` header on each delivery, credit from acks, several consumers, restart
//! and crash recovery, retention by size and age, and a corrupted tail cut at open.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Consumer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::timeout;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

fn amqp(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected an AMQP protocol error, got {other:?}"),
    }
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = table(extra);
    t.insert("x-queue-type".into(), s("stream"));
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    ch.queue_declare(name.into(), durable(), stream_args(extra))
        .await
        .expect("stream declared");
}

/// Publishes `n` messages `prefix{i}` and waits for each confirm (so each is a chunk of its
/// own).
async fn publish_confirmed(ch: &Channel, q: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let c = ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                format!("{prefix}{i}").as_bytes(),
                BasicProperties::default().with_headers(table(&[("h", AMQPValue::LongInt(7))])),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(c.is_ack(), "confirmed");
    }
}

async fn confirm_channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (c, ch)
}

async fn consume_at(ch: &Channel, q: &str, tag: &str, offset: Option<AMQPValue>) -> Consumer {
    let args = match offset {
        Some(v) => table(&[("x-stream-offset", v)]),
        None => FieldTable::default(),
    };
    ch.basic_consume(q.into(), tag.into(), BasicConsumeOptions::default(), args)
        .await
        .expect("basic.consume")
}

/// The next `n` deliveries: (x-stream-offset header, body, delivery tag, redelivered); acks
/// each if `ack`.
async fn take(c: &mut Consumer, n: usize, ack: bool) -> Vec<(i64, String, u64, bool)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = timeout(WAIT, c.next())
            .await
            .expect("a delivery in time")
            .expect("consumer open")
            .expect("delivery");
        let headers = d.properties.headers().clone().expect("headers");
        let offset = match headers.inner().get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(o)) => *o,
            other => panic!("x-stream-offset header is a long, got {other:?}"),
        };
        assert_eq!(
            headers.inner().get("h"),
            Some(&AMQPValue::LongInt(7)),
            "publisher headers kept"
        );
        out.push((
            offset,
            String::from_utf8_lossy(&d.data).into_owned(),
            d.delivery_tag,
            d.redelivered,
        ));
        if ack {
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    }
    out
}

fn offsets(v: &[(i64, String, u64, bool)]) -> Vec<i64> {
    v.iter().map(|x| x.0).collect()
}

/// Nothing more arrives within a short while.
async fn quiet(c: &mut Consumer) {
    if let Ok(Some(d)) = timeout(Duration::from_millis(200), c.next()).await {
        panic!("unexpected delivery {:?}", d.map(|d| d.data));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_declare_rules_and_errors_are_rabbitmqs() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let cases: Vec<(QueueDeclareOptions, FieldTable, &str)> = vec![
        (
            QueueDeclareOptions::default(),
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 's' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 's' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 's' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 's' in vhost '/'",
        ),
        (
            durable(),
            stream_args(&[("x-max-priority", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 's' in vhost '/' of queue type rabbit_stream_queue",
        ),
        (
            durable(),
            stream_args(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 's' in vhost '/' of queue type rabbit_stream_queue",
        ),
        (
            durable(),
            stream_args(&[("x-max-age", s("7X"))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 's' in vhost '/': invalid_max_age",
        ),
        (
            durable(),
            stream_args(&[("x-max-age", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 's' in vhost '/': {unacceptable_type,signedint}",
        ),
        (
            durable(),
            stream_args(&[("x-max-length-bytes", AMQPValue::LongInt(-1))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-length-bytes' for queue 's' in vhost '/': {value_negative,-1}",
        ),
        (
            durable(),
            stream_args(&[("x-initial-cluster-size", AMQPValue::LongInt(0))]),
            "PRECONDITION_FAILED - invalid arg 'x-initial-cluster-size' for queue 's' in vhost '/': {value_zero,0}",
        ),
    ];
    for (opts, args, text) in cases {
        let ch = c.create_channel().await.expect("channel");
        let e = ch
            .queue_declare("s".into(), opts, args)
            .await
            .expect_err("refused");
        assert_eq!(amqp(&e), (406, text.to_string()));
        assert!(eventually(WAIT, || !ch.status().connected()).await);
    }
    let ch = c.create_channel().await.expect("channel");
    let ok = ch
        .queue_declare(
            "s".into(),
            durable(),
            stream_args(&[
                ("x-max-age", s("7D")),
                ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 30)),
                (
                    "x-stream-max-segment-size-bytes",
                    AMQPValue::LongInt(1 << 20),
                ),
                ("x-initial-cluster-size", AMQPValue::LongInt(3)),
                ("x-custom", s("kept")),
            ]),
        )
        .await
        .expect("a stream with its arguments");
    assert_eq!((ok.message_count(), ok.consumer_count()), (0, 0));
    declare_stream(&ch, "s2", &[]).await;
    let e = ch
        .queue_declare("s2".into(), durable(), FieldTable::default())
        .await
        .expect_err("redeclared as classic");
    assert_eq!(
        amqp(&e),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 's2' in vhost '/': received none but current is the value 'stream' of type 'longstr'".into()
        )
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consumers_need_prefetch_and_acks_and_get_and_purge_are_refused() {
    let b = TestBroker::start().await;
    let (_c0, ch0) = b.channel().await;
    declare_stream(&ch0, "s", &[]).await;

    let c = b.connect().await;
    // No basic.qos.
    let ch = c.create_channel().await.expect("channel");
    let e = ch
        .basic_consume(
            "s".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_eq!(
        amqp(&e),
        (
            406,
            "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue 's' in vhost '/''"
                .into()
        )
    );
    // A bad x-stream-offset.
    let ch = c.create_channel().await.expect("channel");
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let e = ch
        .basic_consume(
            "s".into(),
            "".into(),
            BasicConsumeOptions::default(),
            table(&[("x-stream-offset", s("10x"))]),
        )
        .await
        .expect_err("refused");
    assert_eq!(
        amqp(&e),
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 's' in vhost '/': {invalid_stream_offset_arg,{longstr,<<\"10x\">>}}".into()
        )
    );
    // no-ack: a hard error.
    let ch = c.create_channel().await.expect("channel");
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let e = ch
        .basic_consume(
            "s".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_eq!(
        amqp(&e),
        (
            540,
            "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue 's' in vhost '/'".into()
        )
    );
    assert!(eventually(WAIT, || !c.status().connected()).await);

    let (c, ch) = b.channel().await;
    let e = ch
        .basic_get("s".into(), BasicGetOptions::default())
        .await
        .expect_err("refused");
    assert_eq!(
        amqp(&e),
        (
            540,
            "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 's' in vhost '/'"
                .into()
        )
    );
    assert!(eventually(WAIT, || !c.status().connected()).await);
    let (c, ch) = b.channel().await;
    let e = ch
        .queue_purge("s".into(), QueuePurgeOptions::default())
        .await
        .expect_err("refused");
    assert_eq!(
        amqp(&e),
        (
            540,
            "NOT_IMPLEMENTED - queue.purge not supported by stream queues queue 's' in vhost '/'"
                .into()
        )
    );
    assert!(eventually(WAIT, || !c.status().connected()).await);
    // The stream is still fine.
    let (_c, ch) = confirm_channel(&b).await;
    publish_confirmed(&ch, "s", "m", 2).await;
    ch.basic_qos(5, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k = consume_at(&ch, "s", "k", Some(s("first"))).await;
    assert_eq!(offsets(&take(&mut k, 2, true).await), vec![0, 1]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_first_last_next_numeric_timestamp_and_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_manual(dir.path()).await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_stream(&ch, "s", &[]).await;
    let t0 = b.clock.as_ref().expect("manual").now();
    publish_confirmed(&ch, "s", "a", 10).await;
    // To a whole second (AMQP timestamps are seconds): the clock starts at 1 ms.
    b.advance(Duration::from_millis(599_999)).await;
    let t1 = b.clock.as_ref().expect("manual").now();
    publish_confirmed(&ch, "s", "b", 10).await;
    b.advance(Duration::from_secs(1)).await;

    let cases: Vec<(&str, AMQPValue, Vec<i64>)> = vec![
        ("first", s("first"), (0..20).collect()),
        ("last", s("last"), vec![19]),
        ("numeric", AMQPValue::LongLongInt(5), (5..20).collect()),
        (
            "small-int",
            AMQPValue::ShortShortUInt(17),
            (17..20).collect(),
        ),
        ("negative", AMQPValue::LongInt(-1), (0..20).collect()),
        (
            "timestamp",
            AMQPValue::Timestamp(t1 / 1000),
            (10..20).collect(),
        ),
        ("timestamp-old", AMQPValue::Timestamp(0), (0..20).collect()),
        ("interval", s("5m"), (10..20).collect()),
        ("interval-long", s("1h"), (0..20).collect()),
    ];
    assert!(t0 < t1);
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    for (name, v, want) in cases {
        let mut k = consume_at(&cch, "s", name, Some(v)).await;
        let got = take(&mut k, want.len(), true).await;
        assert_eq!(offsets(&got), want, "{name}");
        let first = want[0];
        let prefix = if first < 10 { "a" } else { "b" };
        assert_eq!(got[0].1, format!("{prefix}{}", first % 10), "{name}");
        assert!(got.iter().all(|g| !g.3), "not redelivered");
        quiet(&mut k).await;
        cch.basic_cancel(name.into(), BasicCancelOptions::default())
            .await
            .expect("cancel");
    }
    // next (also the default): only what comes after.
    let mut next = consume_at(&cch, "s", "next", Some(s("next"))).await;
    let mut default = consume_at(&cch, "s", "default", None).await;
    let mut beyond = consume_at(&cch, "s", "beyond", Some(AMQPValue::LongLongInt(1000))).await;
    quiet(&mut next).await;
    publish_confirmed(&ch, "s", "c", 1).await;
    for k in [&mut next, &mut default, &mut beyond] {
        let got = take(k, 1, true).await;
        assert_eq!((got[0].0, got[0].1.as_str()), (20, "c0"));
    }
    // Stats through the queue handle (no HTTP API yet).
    let q = b
        .broker
        .vhost("/")
        .expect("vhost")
        .usable_queue(0, "s")
        .expect("queue");
    let st = q.stream_stats().expect("a stream");
    assert_eq!((st.log.first_offset, st.log.next_offset), (0, 21));
    assert!(st.log.segments >= 1 && st.log.bytes > 0);
    assert_eq!(st.consumers.len(), 3);
    assert!(
        st.consumers.iter().all(|(_, o)| *o == 21),
        "{:?}",
        st.consumers
    );
    let declared = ch
        .queue_declare(
            "s".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(declared.message_count(), 21);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_give_credit_nacks_change_nothing_and_consumers_read_independently() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_stream(&ch, "s", &[]).await;
    publish_confirmed(&ch, "s", "m", 10).await;

    let (c1, ch1) = b.channel().await;
    ch1.basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k1 = consume_at(&ch1, "s", "k1", Some(s("first"))).await;
    let got = take(&mut k1, 2, false).await;
    assert_eq!(offsets(&got), vec![0, 1]);
    // At its prefetch: nothing more until credit comes back.
    quiet(&mut k1).await;
    // nack with requeue: credit back, the message is not delivered again.
    ch1.basic_nack(
        got[0].2,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await
    .expect("nack");
    let got2 = take(&mut k1, 1, false).await;
    assert_eq!(offsets(&got2), vec![2]);
    assert!(!got2[0].3);
    // reject without requeue: credit back, nothing changes in the stream.
    ch1.basic_reject(got[1].2, BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let got3 = take(&mut k1, 1, false).await;
    assert_eq!(offsets(&got3), vec![3]);
    ch1.basic_ack(got3[0].2, BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    assert_eq!(offsets(&take(&mut k1, 2, true).await), vec![4, 5]);

    // A second consumer at another offset, at the same time, on another connection.
    let (_c2, ch2) = b.channel().await;
    ch2.basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k2 = consume_at(&ch2, "s", "k2", Some(AMQPValue::LongInt(7))).await;
    assert_eq!(offsets(&take(&mut k2, 3, true).await), vec![7, 8, 9]);
    assert_eq!(offsets(&take(&mut k1, 4, true).await), vec![6, 7, 8, 9]);

    // Disconnect, then read again from an offset: everything is still there.
    c1.close(200, "bye".into()).await.expect("close");
    let (_c3, ch3) = b.channel().await;
    ch3.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k3 = consume_at(&ch3, "s", "k3", Some(AMQPValue::LongInt(2))).await;
    assert_eq!(
        offsets(&take(&mut k3, 8, true).await),
        (2..10).collect::<Vec<_>>()
    );
    // Publishing continues to reach live consumers.
    publish_confirmed(&ch, "s", "n", 1).await;
    assert_eq!(offsets(&take(&mut k3, 1, true).await), vec![10]);
    assert_eq!(offsets(&take(&mut k2, 1, true).await), vec![10]);
    b.stop().await;
}

/// Every `.seg` file under `dir`.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else if e.file_name() != "lock" {
            std::fs::copy(&p, &dest).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_restart_and_a_crash_with_every_confirmed_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crash = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_stream(
            &ch,
            "s",
            &[("x-stream-max-segment-size-bytes", AMQPValue::LongInt(500))],
        )
        .await;
        publish_confirmed(&ch, "s", "m", 40).await;
        // A crash image: the files as they are while the broker runs, after the confirms
        // (what kill -9 leaves; nothing is flushed at shutdown for it).
        copy_dir(dir.path(), crash.path());
        publish_confirmed(&ch, "s", "late", 5).await;
    }
    b.stop().await;
    let segs = segments(dir.path());
    assert!(segs.len() > 3, "segments rolled: {segs:?}");

    for (data, n) in [(dir.path(), 45), (crash.path(), 40)] {
        let b = TestBroker::start_durable(data).await;
        let (_c, ch) = confirm_channel(&b).await;
        ch.basic_qos(100, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut k = consume_at(&ch, "s", "k", Some(s("first"))).await;
        let got = take(&mut k, n, true).await;
        assert_eq!(offsets(&got), (0..n as i64).collect::<Vec<_>>());
        assert_eq!(got[39].1, "m39");
        quiet(&mut k).await;
        // Offsets continue after the restart.
        publish_confirmed(&ch, "s", "after", 1).await;
        let got = take(&mut k, 1, true).await;
        assert_eq!((got[0].0, got[0].1.as_str()), (n as i64, "after0"));
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_segment_tail_is_cut_and_the_rest_is_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    {
        let (_c, ch) = confirm_channel(&b).await;
        declare_stream(&ch, "s", &[]).await;
        publish_confirmed(&ch, "s", "m", 20).await;
    }
    b.stop().await;
    let segs = segments(dir.path());
    let last = segs.last().expect("a segment");
    // Flip a byte inside the last record and append half a record of garbage.
    let mut bytes = std::fs::read(last).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    bytes.extend_from_slice(&[0x57, 0x52, 0x4e, 0x31, 0, 0, 1]);
    std::fs::write(last, &bytes).expect("write");

    let b = TestBroker::start_durable(dir.path()).await;
    assert!(
        std::fs::metadata(last).expect("meta").len() < n as u64,
        "tail cut"
    );
    let (_c, ch) = confirm_channel(&b).await;
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k = consume_at(&ch, "s", "k", Some(s("first"))).await;
    let got = take(&mut k, 19, true).await;
    assert_eq!(offsets(&got), (0..19).collect::<Vec<_>>());
    quiet(&mut k).await;
    publish_confirmed(&ch, "s", "new", 1).await;
    let got = take(&mut k, 1, true).await;
    assert_eq!((got[0].0, got[0].1.as_str()), (19, "new0"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_and_age_deletes_whole_segments_from_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_manual(dir.path()).await;
    let (_c, ch) = confirm_channel(&b).await;
    let seg = ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1000));
    declare_stream(
        &ch,
        "by-size",
        &[
            seg.clone(),
            ("x-max-length-bytes", AMQPValue::LongInt(3000)),
        ],
    )
    .await;
    declare_stream(
        &ch,
        "by-age",
        &[
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(400)),
            ("x-max-age", s("10s")),
        ],
    )
    .await;
    let before = segments(dir.path()).len();
    assert_eq!(before, 0);
    publish_confirmed(&ch, "by-size", "m", 100).await;
    publish_confirmed(&ch, "by-age", "m", 30).await;
    let q = |name: &str| {
        b.broker
            .vhost("/")
            .expect("vhost")
            .usable_queue(0, name)
            .expect("queue")
    };
    let size = q("by-size").stream_stats().expect("stream").log;
    assert!(size.bytes <= 3000, "{size:?}");
    assert!(size.first_offset > 50, "{size:?}");
    assert_eq!(size.next_offset, 100);

    // A consumer that asks for offset 0 (before the head) starts at the head.
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(200, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k = consume_at(&cch, "by-size", "k", Some(AMQPValue::LongInt(0))).await;
    let n = (100 - size.first_offset) as usize;
    let got = take(&mut k, n, true).await;
    assert_eq!(
        offsets(&got),
        (size.first_offset as i64..100).collect::<Vec<_>>()
    );
    quiet(&mut k).await;

    let age = q("by-age").stream_stats().expect("stream").log;
    assert_eq!(age.first_offset, 0);
    assert!(age.segments > 2, "{age:?}");
    b.advance(Duration::from_secs(11)).await;
    // Everything is older than 10 s: all segments but the newest went, by the timer.
    assert!(
        eventually(WAIT, || q("by-age")
            .stream_stats()
            .expect("stream")
            .log
            .segments
            == 1)
        .await
    );
    let age = q("by-age").stream_stats().expect("stream").log;
    assert!(age.first_offset > 0 && age.next_offset == 30, "{age:?}");
    let mut k = consume_at(&cch, "by-age", "k2", Some(s("first"))).await;
    let n = (30 - age.first_offset) as usize;
    let got = take(&mut k, n, true).await;
    assert_eq!(
        offsets(&got),
        (age.first_offset as i64..30).collect::<Vec<_>>()
    );
    // The deleted segments' files are gone from the disk too.
    let (_c3, ch3) = confirm_channel(&b).await;
    publish_confirmed(&ch3, "by-age", "x", 1).await;
    let files = segments(dir.path()).len();
    let total = q("by-size").stream_stats().expect("s").log.segments
        + q("by-age").stream_stats().expect("s").log.segments;
    assert_eq!(files, total);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtering_delivers_only_the_asked_values() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_stream(
        &ch,
        "s",
        &[("x-stream-filter-size-bytes", AMQPValue::LongInt(32))],
    )
    .await;
    let values = ["red", "blue", "", "green", "red", "", "blue"];
    for (i, v) in values.iter().enumerate() {
        let mut h = table(&[("h", AMQPValue::LongInt(7))]);
        if !v.is_empty() {
            h.insert("x-stream-filter-value".into(), s(v));
        }
        ch.basic_publish(
            "".into(),
            "s".into(),
            BasicPublishOptions::default(),
            format!("{i}:{v}").as_bytes(),
            BasicProperties::default().with_headers(h),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let red = table(&[
        ("x-stream-offset", s("first")),
        ("x-stream-filter", s("red")),
    ]);
    let mut k = cch
        .basic_consume(
            "s".into(),
            "red".into(),
            BasicConsumeOptions::default(),
            red,
        )
        .await
        .expect("consume");
    assert_eq!(offsets(&take(&mut k, 2, true).await), vec![0, 4]);
    quiet(&mut k).await;
    let list = AMQPValue::FieldArray(vec![s("blue"), s("green")].into());
    let blue_green = table(&[
        ("x-stream-offset", s("first")),
        ("x-stream-filter", list),
        ("x-stream-match-unfiltered", AMQPValue::Boolean(true)),
    ]);
    let mut k = cch
        .basic_consume(
            "s".into(),
            "bg".into(),
            BasicConsumeOptions::default(),
            blue_green,
        )
        .await
        .expect("consume");
    assert_eq!(offsets(&take(&mut k, 5, true).await), vec![1, 2, 3, 5, 6]);
    quiet(&mut k).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_stream_cancels_its_consumers_and_removes_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_stream(&ch, "s", &[]).await;
    publish_confirmed(&ch, "s", "m", 3).await;
    assert_eq!(segments(dir.path()).len(), 1);
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k = consume_at(&cch, "s", "k", Some(s("first"))).await;
    assert_eq!(offsets(&take(&mut k, 3, true).await), vec![0, 1, 2]);
    // As RabbitMQ 3.10.8: if-unused and if-empty do not hold a stream back.
    let ok = ch
        .queue_delete(
            "s".into(),
            QueueDeleteOptions {
                if_unused: true,
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .expect("deleted");
    assert_eq!(ok, 0);
    let end = timeout(WAIT, k.next()).await.expect("cancelled in time");
    assert!(end.is_none(), "the consumer is cancelled");
    // Its files go with the next sync round.
    assert!(eventually(WAIT, || segments(dir.path()).is_empty()).await);
    // A new stream of the same name starts empty, at offset 0.
    declare_stream(&ch, "s", &[]).await;
    publish_confirmed(&ch, "s", "new", 1).await;
    let mut k = consume_at(&cch, "s", "k2", Some(s("first"))).await;
    let got = take(&mut k, 1, true).await;
    assert_eq!((got[0].0, got[0].1.as_str()), (0, "new0"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_unix_time_on_the_system_clock() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirm_channel(&b).await;
    declare_stream(&ch, "s", &[]).await;
    publish_confirmed(&ch, "s", "m", 3).await;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (_c2, cch) = b.channel().await;
    cch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut hour_ago = consume_at(&cch, "s", "a", Some(AMQPValue::Timestamp(unix - 3600))).await;
    assert_eq!(offsets(&take(&mut hour_ago, 3, true).await), vec![0, 1, 2]);
    let mut interval = consume_at(&cch, "s", "b", Some(s("1h"))).await;
    assert_eq!(offsets(&take(&mut interval, 3, true).await), vec![0, 1, 2]);
    let mut later = consume_at(&cch, "s", "c", Some(AMQPValue::Timestamp(unix + 3600))).await;
    quiet(&mut later).await;
    b.stop().await;
}

/// The management API shows a stream as RabbitMQ 3.10 does (`type`, `members`, `online`,
/// `leader`, `readers`) plus its log (segments, bytes, first and last offset) and each
/// consumer's `offset` (the next it will be sent) and `offset_lag`.
#[tokio::test]
async fn management_shows_a_streams_log_and_its_consumers_offsets() {
    let b = TestBroker::start().await;
    let api = b.api();
    let (_c, ch) = confirm_channel(&b).await;
    declare_stream(&ch, "ms", &[]).await;
    let r = api.get("/api/queues/%2F/ms").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["type"], "stream");
    assert_eq!(r.json["first_offset"], 0);
    assert!(r.json["last_offset"].is_null(), "empty: {}", r.text);
    publish_confirmed(&ch, "ms", "m", 5).await;
    let (_c1, ch1) = b.channel().await;
    ch1.basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut k = consume_at(&ch1, "ms", "reader1", Some(s("first"))).await;
    assert_eq!(offsets(&take(&mut k, 2, false).await), vec![0, 1]);
    let r = api.get("/api/queues/%2F/ms").await;
    let q = &r.json;
    assert_eq!(q["type"], "stream", "{}", r.text);
    assert_eq!(q["members"], serde_json::json!([q["node"].clone()]));
    assert_eq!(q["online"], q["members"]);
    assert_eq!(q["leader"], q["node"]);
    assert_eq!(q["readers"][q["node"].as_str().expect("node")], 1);
    assert_eq!(
        (q["first_offset"].clone(), q["last_offset"].clone()),
        (0.into(), 4.into())
    );
    assert!(q["segments"].as_u64().is_some_and(|n| n >= 1), "{}", r.text);
    assert!(
        q["stream_bytes"].as_u64().is_some_and(|n| n > 0),
        "{}",
        r.text
    );
    let c = &q["consumer_details"][0];
    assert_eq!(c["consumer_tag"], "reader1");
    assert_eq!(
        (c["offset"].clone(), c["offset_lag"].clone()),
        (2.into(), 3.into())
    );
    // Prometheus, under Warren's own names: per stream on /metrics/per-object; sizes summed on
    // /metrics, offsets not there (they do not add up).
    let metrics = warren_tests::api::Api::new(b.metrics, "guest", Some("guest"));
    let per = metrics.get("/metrics/per-object").await.text;
    let labels = "{vhost=\"/\",queue=\"ms\"}";
    for line in [
        format!("warren_stream_segments{labels} {}", q["segments"]),
        format!("warren_stream_bytes{labels} {}", q["stream_bytes"]),
        format!("warren_stream_first_offset{labels} 0"),
        format!("warren_stream_next_offset{labels} 5"),
    ] {
        assert!(per.lines().any(|l| l == line), "{line} in\n{per}");
    }
    let agg = metrics.get("/metrics").await.text;
    assert!(
        agg.lines()
            .any(|l| l == format!("warren_stream_bytes {}", q["stream_bytes"])),
        "{agg}"
    );
    assert!(!agg.contains("warren_stream_first_offset"), "{agg}");
    // The same fields in the list; a classic queue has none of them.
    let (_c2, ch2) = b.channel().await;
    ch2.queue_declare(
        "plain".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let r = api
        .get("/api/queues/%2F?columns=name,last_offset,segments")
        .await;
    assert_eq!(
        r.json,
        serde_json::json!([{"name": "ms", "last_offset": 4, "segments": q["segments"].clone()}, {"name": "plain"}]),
        "{}",
        r.text
    );
    b.stop().await;
}

/// Policies `max-length-bytes` and `max-age` apply to streams (RabbitMQ's stream retention
/// policies): set after the messages are in, they delete whole segments from the head at once
/// (size) or when the head is old enough (age), and the API shows the policy.
#[tokio::test]
async fn retention_policies_apply_to_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_manual(dir.path()).await;
    let api = b.api();
    let (_c, ch) = confirm_channel(&b).await;
    let seg = ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1000));
    declare_stream(&ch, "pol.size", std::slice::from_ref(&seg)).await;
    declare_stream(&ch, "pol.age", &[seg]).await;
    publish_confirmed(&ch, "pol.size", "m", 100).await;
    publish_confirmed(&ch, "pol.age", "m", 100).await;
    let log = |name: &str| {
        b.broker
            .vhost("/")
            .expect("vhost")
            .usable_queue(0, name)
            .expect("queue")
            .stream_stats()
            .expect("stream")
            .log
    };
    assert_eq!(log("pol.size").first_offset, 0, "no retention yet");
    let r = api
        .put(
            "/api/policies/%2F/by-size",
            &serde_json::json!({"pattern": "^pol\\.size$", "definition": {"max-length-bytes": 3000}, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        eventually(WAIT, || log("pol.size").bytes <= 3000).await,
        "{:?}",
        log("pol.size")
    );
    let size = log("pol.size");
    assert!(
        size.first_offset > 50 && size.next_offset == 100,
        "{size:?}"
    );
    let r = api.get("/api/queues/%2F/pol.size").await;
    assert_eq!(r.json["policy"], "by-size", "{}", r.text);

    let r = api
        .put(
            "/api/policies/%2F/by-age",
            &serde_json::json!({"pattern": "^pol\\.age$", "definition": {"max-age": "10s"}, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(log("pol.age").first_offset, 0, "nothing is 10 s old yet");
    b.advance(Duration::from_secs(11)).await;
    assert!(
        eventually(WAIT, || log("pol.age").segments == 1).await,
        "{:?}",
        log("pol.age")
    );
    assert_eq!(log("pol.age").next_offset, 100);

    // `stream-max-segment-size-bytes` from a policy sizes the segments of a stream declared
    // after it (the default, 500 MB, would keep these 100 messages in one).
    let r = api
        .put(
            "/api/policies/%2F/seg",
            &serde_json::json!({"pattern": "^seg\\.", "definition": {"stream-max-segment-size-bytes": 1000}, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    declare_stream(&ch, "seg.s", &[]).await;
    publish_confirmed(&ch, "seg.s", "m", 100).await;
    assert!(log("seg.s").segments > 2, "{:?}", log("seg.s"));
    b.stop().await;
}
