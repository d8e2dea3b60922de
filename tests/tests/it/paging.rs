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

/// Publishes `n` messages to `q` with confirms, every `every`-th one transient, the rest
/// persistent; waits until all are confirmed.
async fn publish_mixed(ch: &lapin::Channel, q: &str, n: u32, every: u32) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..n {
        let mode = if i % every == 0 { 1 } else { 2 };
        ch.basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            &body(i),
            BasicProperties::default().with_delivery_mode(mode),
        )
        .await
        .expect("publish");
    }
    assert!(
        ch.wait_for_confirms().await.expect("confirms").is_empty(),
        "all acked"
    );
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
    // Persistent and transient messages mixed: both page, and keep their order.
    publish_mixed(&ch, "long", 2000, 3).await;
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

async fn fill(ch: &lapin::Channel, q: &str, from: u32, to: u32) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut pending = Vec::new();
    for i in from..to {
        let props = BasicProperties::default().with_delivery_mode(2);
        pending.push(
            ch.basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                &body(i),
                props,
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        assert!(p.await.expect("confirm").is_ack());
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// `basic.get` faster than the pager: when the in-memory part is empty while a batch is being
/// read, the get waits for it (the channel pauses) instead of answering get-empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_drains_a_paged_backlog_in_order_without_false_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare("gets".into(), durable(), FieldTable::default())
        .await
        .expect("declare");
    fill(&ch, "gets", 0, 3000).await;
    let (_c2, gch) = b.channel().await;
    for i in 0..3000 {
        let m = gch
            .basic_get("gets".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("get-empty at {i} of 3000"));
        assert_eq!(m.delivery.data, body(i), "in order");
        assert_eq!(m.message_count, 2999 - i, "count left");
    }
    assert!(gch
        .basic_get("gets".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .is_none());
    b.stop().await;
}

/// Purging a queue whose backlog is mostly on disk drops the paged part on the pager thread;
/// purge-ok counts everything and comes once that is durable: after a restart only what was
/// published after the purge is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_of_a_paged_backlog_counts_everything_and_stays_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let b = TestBroker::start_durable_with(dir.path(), config()).await;
        let (_c, ch) = b.channel().await;
        ch.queue_declare("purged".into(), durable(), FieldTable::default())
            .await
            .expect("declare");
        fill(&ch, "purged", 0, 2000).await;
        let n = ch
            .queue_purge("purged".into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
        assert_eq!(n, 2000, "purge-ok counts the paged messages too");
        fill(&ch, "purged", 5000, 5005).await;
        b.stop().await;
    }
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare(
            "purged".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(q.message_count(), 5, "nothing purged came back");
    let got = consume_all(&ch, "purged", 5).await;
    assert_eq!(got, (5000..5005).map(body).collect::<Vec<_>>());
    b.stop().await;
}

/// The paged part of a backlog cannot be read back (its segment files vanished under the
/// broker): the error is counted and the queue keeps what it has and its count; the broker
/// and other queues go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_page_read_is_counted_and_loses_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare("broken".into(), durable(), FieldTable::default())
        .await
        .expect("declare");
    fill(&ch, "broken", 0, 6000).await;
    // Remove the segment files holding the paged part (every segment but the first).
    let queues = dir.path().join("vhosts").join("2f").join("queues");
    let store = std::fs::read_dir(&queues)
        .expect("queues dir")
        .flatten()
        .next()
        .expect("the queue's store")
        .path();
    let mut segs: Vec<_> = std::fs::read_dir(&store)
        .expect("store dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("msgs."))
        })
        .collect();
    segs.sort();
    assert!(segs.len() > 1, "the backlog spans several segments");
    for s in &segs[1..] {
        std::fs::remove_file(s).expect("remove a segment");
    }
    let (_c2, gch) = b.channel().await;
    let mut got = 0u32;
    // Once the read failed, basic.get answers get-empty (nothing readable now), not a hang.
    while tokio::time::timeout(
        std::time::Duration::from_secs(5),
        gch.basic_get("broken".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get answered in time")
    .expect("get")
    .is_some()
    {
        got += 1;
    }
    assert!(
        (100..6000).contains(&got),
        "the readable part was served ({got})"
    );
    let q = b
        .broker
        .vhost("/")
        .expect("vhost")
        .queue("broken")
        .expect("queue");
    assert!(
        warren_tests::eventually(std::time::Duration::from_secs(5), || q.paging_read_errors()
            > 0)
        .await,
        "the failed read is counted"
    );
    assert!(
        q.message_count() > 0,
        "the unreadable part is still counted, not dropped"
    );
    // Another queue of the same broker works.
    let (_c3, och) = b.channel().await;
    och.queue_declare("other".into(), durable(), FieldTable::default())
        .await
        .expect("declare other");
    fill(&och, "other", 0, 10).await;
    assert_eq!(consume_all(&och, "other", 10).await.len(), 10);
    b.stop().await;
}

/// Spill stores (`<data>/vhosts/<vhost>/transient/`) with segment files in them, recursively.
fn spill_segments(data: &std::path::Path) -> usize {
    fn walk(p: &std::path::Path, in_spill: bool, n: &mut usize) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, in_spill || name == "transient", n);
            } else if in_spill && name.starts_with("msgs.") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(data, false, &mut n);
    n
}

/// A non-durable queue pages its backlog too (to a spill store that nothing recovers):
/// beyond `storage.queue_memory_messages` the messages are on disk only (the management API's
/// `messages_paged_out`), they come back in order, persistent ones are confirmed without
/// waiting for disk, and after a restart the queue and its spill files are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_durable_queue_pages_its_backlog_and_forgets_it_at_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare("burst".into(), Default::default(), FieldTable::default())
        .await
        .expect("declare");
    publish_mixed(&ch, "burst", 3000, 2).await;
    let q = b.api().get("/api/queues/%2F/burst").await.json;
    assert_eq!(q["messages"], serde_json::json!(3000), "{q}");
    let paged = q["messages_paged_out"]
        .as_u64()
        .expect("messages_paged_out");
    assert!(
        paged >= 2800,
        "all but the in-memory limit (100) are on disk only: {paged} paged out"
    );
    assert_eq!(
        q["messages_ram"].as_u64(),
        Some(3000 - paged),
        "the rest is in memory"
    );
    assert!(
        warren_tests::eventually(std::time::Duration::from_secs(5), || spill_segments(
            dir.path()
        ) > 0)
        .await,
        "the backlog is in spill files"
    );
    let got = consume_all(&ch, "burst", 3000).await;
    let expected: Vec<Vec<u8>> = (0..3000).map(body).collect();
    assert!(got == expected, "every message once, in publish order");
    let q = b.api().get("/api/queues/%2F/burst").await.json;
    assert_eq!(q["messages_paged_out"], serde_json::json!(0), "{q}");

    // A second backlog, then a restart: a non-durable queue and its spill files are gone.
    fill(&ch, "burst", 0, 1000).await;
    assert!(
        warren_tests::eventually(std::time::Duration::from_secs(5), || spill_segments(
            dir.path()
        ) > 0)
        .await,
        "the second backlog is in spill files"
    );
    drop((_c, ch));
    b.stop().await;
    let b = TestBroker::start_durable_with(dir.path(), config()).await;
    assert_eq!(
        spill_segments(dir.path()),
        0,
        "spill files removed at startup"
    );
    let (_c, ch) = b.channel().await;
    let err = ch
        .queue_declare(
            "burst".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a non-durable queue does not survive a restart");
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    b.stop().await;
}
