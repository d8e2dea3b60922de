//! A full disk that the disk alarm did not prevent (issue 17): store writes fail with ENOSPC.
//! The broker stays up, confirms nothing it could not store, raises the disk alarm, keeps
//! serving consumers and other connections, stores and confirms the held publishes once space
//! returns, and restarts (and serves consumers) on a full disk. On a real tmpfs the test mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use lapin::{Confirmation, PublisherConfirm};
use warren_tests::TestBroker;

use super::flow::{mount_tmpfs, running_as_root, TmpfsGuard};

const BODY: usize = 32 * 1024;

fn body(id: u64) -> Vec<u8> {
    let mut b = format!("{id:08}").into_bytes();
    b.resize(BODY, b'x');
    b
}

fn id_of(data: &[u8]) -> u64 {
    std::str::from_utf8(&data[..8])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("message id")
}

type Pending = BTreeMap<u64, Pin<Box<PublisherConfirm>>>;

fn config() -> warren_core::Config {
    let mut c = warren_core::Config::default();
    // No disk alarm from free space: the writes themselves must hit ENOSPC.
    c.disk.free_limit_bytes = 0;
    c.storage.segment_size = 1 << 20;
    c
}

async fn publish(ch: &lapin::Channel, q: &str, id: u64) -> Option<Pin<Box<PublisherConfirm>>> {
    let payload = body(id);
    let p = ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        &payload,
        BasicProperties::default().with_delivery_mode(2),
    );
    match tokio::time::timeout(Duration::from_secs(2), p).await {
        Ok(r) => Some(Box::pin(r.expect("publish"))),
        Err(_) => None,
    }
}

/// Polls the pending confirms for `wait`; moves the resolved ones to `acked`/`nacked`.
async fn settle(
    pending: &mut Pending,
    acked: &mut BTreeSet<u64>,
    nacked: &mut BTreeSet<u64>,
    wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + wait;
    let ids: Vec<u64> = pending.keys().copied().collect();
    for id in ids {
        let Some(f) = pending.get_mut(&id) else {
            continue;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.max(Duration::from_millis(1)), f.as_mut()).await {
            Ok(Ok(Confirmation::Ack(_))) => {
                acked.insert(id);
                pending.remove(&id);
            }
            Ok(Ok(Confirmation::Nack(_))) => {
                nacked.insert(id);
                pending.remove(&id);
            }
            Ok(other) => panic!("confirm for {id}: {other:?}"),
            Err(_) => {}
        }
    }
}

/// What a publisher sent and what of it was confirmed.
struct Published {
    acked: BTreeSet<u64>,
    nacked: BTreeSet<u64>,
    pending: Pending,
    next: u64,
}

/// Publishes to `q` in windows of 8 until confirms stop coming: the disk is full.
async fn fill(ch: &lapin::Channel, q: &str) -> Published {
    let (mut acked, mut nacked) = (BTreeSet::new(), BTreeSet::new());
    let mut pending: Pending = BTreeMap::new();
    let mut next = 0u64;
    'fill: for _ in 0..200 {
        for _ in 0..8 {
            match publish(ch, q, next).await {
                Some(f) => {
                    pending.insert(next, f);
                    next += 1;
                }
                None => break 'fill,
            }
        }
        settle(
            &mut pending,
            &mut acked,
            &mut nacked,
            Duration::from_secs(2),
        )
        .await;
        if !pending.is_empty() {
            break;
        }
    }
    assert!(!pending.is_empty(), "the 8 MiB disk never filled up");
    assert!(
        acked.len() > 50,
        "most of the disk was used first: {} confirmed",
        acked.len()
    );
    Published {
        acked,
        nacked,
        pending,
        next,
    }
}

/// An 8 MiB tmpfs with the data dir's path in it and a 2 MiB file of another process
/// (`filler`; removing it is "space returns"). None where a tmpfs cannot be mounted (not root).
struct Disk {
    // Fields drop in order: unmount first, then remove the mount point.
    _guard: TmpfsGuard,
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    filler: std::path::PathBuf,
}

fn small_disk() -> Option<Disk> {
    let Some((dir, guard)) = mount_tmpfs(8) else {
        assert!(!running_as_root(), "root could not mount a tmpfs");
        tracing::warn!("skipped: mounting a tmpfs needs root (as in CI)");
        return None;
    };
    let data = dir.path().join("data");
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![7u8; 2 << 20]).expect("filler");
    Some(Disk {
        _dir: dir,
        _guard: guard,
        data,
        filler,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_confirms_only_what_is_stored_and_loses_nothing() {
    let Some(disk) = small_disk() else {
        return;
    };
    let (data, filler) = (disk.data.clone(), disk.filler.clone());

    let b = TestBroker::start_durable_with(&data, config()).await;
    let (pc, ch) = b.channel().await;
    ch.queue_declare(
        "full".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");

    let Published {
        mut acked,
        mut nacked,
        mut pending,
        mut next,
    } = fill(&ch, "full").await;
    assert!(
        warren_tests::eventually(Duration::from_secs(5), || *b.broker.disk_alarm.borrow()).await,
        "a failed store write raises the disk alarm"
    );

    // The broker goes on: a consumer gets (and acks) a confirmed message, another connection
    // uses a transient queue.
    let cc = b.connect().await;
    let cch = cc.create_channel().await.expect("channel");
    let got = cch
        .basic_get("full".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message while the disk is full");
    let consumed = id_of(&got.delivery.data);
    got.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    cch.queue_declare(
        "side".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare a transient queue");
    // Publishing on it would block it too (RabbitMQ blocks every connection that publishes
    // while an alarm is up), so it only consumes and declares.
    let ok = cch
        .queue_declare(
            "side".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(ok.message_count(), 0, "the transient queue is there");

    // Nothing that could not be stored is confirmed while the disk stays full.
    let held = pending.len();
    settle(
        &mut pending,
        &mut acked,
        &mut nacked,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        pending.len(),
        held,
        "confirmed while the disk was still full"
    );
    assert!(nacked.is_empty(), "nacked: {nacked:?}");

    // Space returns: the held publishes are stored and confirmed, the alarm clears.
    std::fs::remove_file(&filler).expect("free space");
    settle(
        &mut pending,
        &mut acked,
        &mut nacked,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        pending.is_empty(),
        "still unconfirmed: {:?}",
        pending.keys()
    );
    assert!(
        warren_tests::eventually(Duration::from_secs(5), || !*b.broker.disk_alarm.borrow()).await,
        "the alarm clears once writes succeed"
    );
    // Room for a few more (the confirmed ones fill most of the disk).
    let before = next;
    for _ in 0..4 {
        let f = publish(&ch, "full", next)
            .await
            .expect("publish after recovery");
        pending.insert(next, f);
        next += 1;
    }
    settle(
        &mut pending,
        &mut acked,
        &mut nacked,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        (before..next).all(|id| acked.contains(&id)),
        "publishes after recovery are confirmed"
    );
    tracing::info!(
        confirmed = acked.len(),
        nacked = nacked.len(),
        "disk-full run before restart"
    );
    drop((pc, cc));
    b.stop().await;

    // Fill the disk to the last byte, then restart on it: it serves consumers.
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![1u8; 64 * 1024];
    loop {
        use std::io::Write;
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(f);
    let b = TestBroker::start_durable_with(&data, config()).await;
    let (_c, ch) = b.channel().await;
    let mut seen = BTreeSet::new();
    while let Some(m) = ch
        .basic_get("full".into(), BasicGetOptions::default())
        .await
        .expect("get after restart")
    {
        let id = id_of(&m.delivery.data);
        assert!(seen.insert(id), "message {id} came back twice");
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    assert!(!seen.contains(&consumed), "the acked message came back");
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| *id != consumed && !seen.contains(id))
        .collect();
    assert!(lost.is_empty(), "confirmed messages lost: {lost:?}");
    assert!(
        seen.iter().all(|id| *id < next),
        "only published messages come back"
    );
    tracing::info!(
        confirmed = acked.len(),
        recovered = seen.len(),
        lost = 0,
        "disk-full run"
    );
    drop(ch);
    b.stop().await;
    let _ = std::fs::remove_file(&filler);
}

/// The same for a stream: the failed chunk writes are cut off and retried, so once space
/// returns every message is in the stream exactly once, at consecutive offsets in publish
/// order, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_stream_keeps_offsets_consecutive() {
    let Some(disk) = small_disk() else {
        return;
    };
    let (data, filler) = (disk.data.clone(), disk.filler.clone());
    let b = TestBroker::start_durable_with(&data, config()).await;
    let (pc, ch) = b.channel().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(1 << 20),
    );
    ch.queue_declare(
        "log".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("declare stream");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let Published {
        mut acked,
        mut nacked,
        mut pending,
        next,
    } = fill(&ch, "log").await;
    assert!(
        warren_tests::eventually(Duration::from_secs(5), || *b.broker.disk_alarm.borrow()).await,
        "a failed stream write raises the disk alarm"
    );
    std::fs::remove_file(&filler).expect("free space");
    settle(
        &mut pending,
        &mut acked,
        &mut nacked,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        pending.is_empty(),
        "still unconfirmed: {:?}",
        pending.keys()
    );
    assert!(nacked.is_empty(), "nacked: {nacked:?}");
    assert_eq!(acked.len() as u64, next, "every publish confirmed");
    drop(pc);
    b.stop().await;

    let b = TestBroker::start_durable_with(&data, config()).await;
    let (_c, ch) = b.channel().await;
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut offset = FieldTable::default();
    offset.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            "log".into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            offset,
        )
        .await
        .expect("consume");
    for want in 0..next {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("message {want} of {next} in time"))
            .expect("consumer open")
            .expect("delivery");
        let at = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned());
        assert_eq!(
            at,
            Some(AMQPValue::LongLongInt(want as i64)),
            "offset of {want}"
        );
        assert_eq!(id_of(&d.data), want, "message at offset {want}");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "nothing after the last published message"
    );
    tracing::info!(
        confirmed = next,
        "disk-full stream run: all at consecutive offsets"
    );
    drop(ch);
    b.stop().await;
}
