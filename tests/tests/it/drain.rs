//! Draining standing backlogs many times the per-connection output limit (`Flow::HIGH`, 8 MiB)
//! with consumers that read as fast as the socket allows (issue 11: a fast no-ack consumer
//! used to stop after exactly 8 MiB of bodies, with the rest of the queue stuck until it
//! reconnected). Every case ends with every message delivered exactly once and the queue
//! empty: no message ready, none unacknowledged.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use proptest::prelude::*;
use warren_core::Config;
use warren_tests::drain::{self, Consumers};
use warren_tests::{eventually, message_count, TestBroker};

/// Nothing for this long: the drain stalled.
const STALL: Duration = Duration::from_secs(5);

async fn declare(b: &TestBroker, queues: &[String], durable: bool) -> lapin::Connection {
    let (c, ch) = b.channel().await;
    for q in queues {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    c
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Publishes `count` messages of `size` bytes to `queues`, before the consumers attach (a
/// standing backlog) or while they consume; drains; checks the outcome and that the queues
/// end empty.
#[allow(clippy::too_many_arguments)]
async fn drain_case(
    b: &TestBroker,
    queues: &[String],
    count: u64,
    size: usize,
    spec: &Consumers,
    publish_while_consuming: bool,
    durable: bool,
    persistent: bool,
) {
    let conn = declare(b, queues, durable).await;
    let ch = conn.create_channel().await.expect("channel");
    let what = format!(
        "{count} x {size} B to {} queue(s), {spec:?}, publishing during the drain: {publish_while_consuming}",
        queues.len()
    );
    let d = if publish_while_consuming {
        let d = drain::start(b.addr, queues, spec, count).await;
        // Half before any delivery can have drained much, half while it runs.
        drain::publish(b.addr, queues, 0, count / 2, size, persistent).await;
        drain::publish(
            b.addr,
            queues,
            count / 2,
            count - count / 2,
            size,
            persistent,
        )
        .await;
        d
    } else {
        drain::publish(b.addr, queues, 0, count, size, persistent).await;
        let mut standing = 0u64;
        for q in queues {
            standing += u64::from(message_count(&ch, q).await);
        }
        assert_eq!(standing, count, "the whole backlog is standing: {what}");
        drain::start(b.addr, queues, spec, count).await
    };
    let o = d.wait(STALL, Duration::from_millis(100)).await;
    assert!(o.exact(), "{what}: {o:?}");
    assert_eq!(o.received, count, "{what}: {o:?}");
    let vh = b.broker.vhost("/").expect("vhost");
    for q in queues {
        assert_eq!(message_count(&ch, q).await, 0, "{q} empty: {what}");
        let queue = vh.queue(q).expect("queue");
        assert!(
            eventually(Duration::from_secs(5), || queue.unacked_count() == 0).await,
            "{q}: nothing left unacked ({} are): {what}",
            queue.unacked_count()
        );
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Standing backlogs of 16 B, 64 B, 1 KiB and 64 KiB messages, each at least four times the
/// output limit in wire bytes, drained by one no-ack consumer (the case of the issue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consumer_drains_standing_backlogs_of_every_size() {
    let b = TestBroker::start().await;
    for (size, count) in [(16, 600_000), (64, 400_000), (1024, 40_000), (65536, 600)] {
        let q = names(&format!("noack-{size}"), 1);
        drain_case(
            &b,
            &q,
            count,
            size,
            &Consumers::default(),
            false,
            false,
            false,
        )
        .await;
    }
}

/// The same with manual acks (single and multiple), and with an unlimited prefetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_consumer_drains_standing_backlogs() {
    let b = TestBroker::start().await;
    for (size, count, prefetch, ack_every) in [
        (16, 400_000, 1000, 1),
        (64, 300_000, 2000, 100),
        (1024, 40_000, 0, 1),
        (65536, 600, 50, 10),
    ] {
        let q = names(&format!("ack-{size}"), 1);
        let spec = Consumers {
            no_ack: false,
            prefetch,
            ack_every,
            ..Consumers::default()
        };
        drain_case(&b, &q, count, size, &spec, false, false, false).await;
    }
}

/// Several consumers per connection and per queue: two connections with three consuming
/// channels each, over two queues (each queue has three consumers, each connection consumes
/// both queues), no-ack and acking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_consumers_per_connection_and_per_queue() {
    let b = TestBroker::start().await;
    for no_ack in [true, false] {
        let q = names(&format!("multi-{no_ack}"), 2);
        let spec = Consumers {
            connections: 2,
            channels: 3,
            no_ack,
            prefetch: 500,
            ack_every: 25,
        };
        drain_case(&b, &q, 400_000, 16, &spec, false, false, false).await;
        drain_case(&b, &q, 20_000, 1024, &spec, false, false, false).await;
    }
}

/// Consumers attached first, the backlog published while they drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_while_publishing_continues() {
    let b = TestBroker::start().await;
    for (no_ack, size, count) in [
        (true, 16, 400_000),
        (false, 64, 200_000),
        (true, 4096, 20_000),
    ] {
        let q = names(&format!("live-{no_ack}-{size}"), 1);
        let spec = Consumers {
            no_ack,
            prefetch: 1000,
            ack_every: 10,
            ..Consumers::default()
        };
        drain_case(&b, &q, count, size, &spec, true, false, false).await;
    }
}

/// A durable queue whose backlog is mostly paged to disk (at most 2,000 messages in memory):
/// persistent and transient messages, no-ack and acking, standing and while publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_backlogs_drain_completely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.storage.queue_memory_messages = 2000;
    let b = TestBroker::start_durable_with(dir.path(), config).await;
    for (persistent, no_ack, during) in [
        (true, true, false),
        (true, false, false),
        (false, true, false),
        (true, false, true),
    ] {
        let q = names(&format!("paged-{persistent}-{no_ack}-{during}"), 1);
        let spec = Consumers {
            no_ack,
            prefetch: 1000,
            ack_every: 50,
            ..Consumers::default()
        };
        drain_case(&b, &q, 150_000, 64, &spec, during, true, persistent).await;
    }
}

fn consumers_strategy() -> impl Strategy<Value = Consumers> {
    (
        1usize..=2,
        1usize..=3,
        any::<bool>(),
        0u16..=3000,
        1u64..=200,
    )
        .prop_map(
            |(connections, channels, no_ack, prefetch, ack_every)| Consumers {
                connections,
                channels,
                no_ack,
                prefetch,
                ack_every,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 6,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Over message sizes, counts (up to about four times the output limit), queue counts and
    /// consumer kinds: every message is delivered exactly once and the queues end empty.
    #[test]
    fn any_backlog_drains_exactly_once(
        size in prop_oneof![8usize..=128, 129usize..=8192, 8193usize..=70_000],
        wire_mib in 1u64..=32,
        queues in 1usize..=2,
        spec in consumers_strategy(),
        during in any::<bool>(),
    ) {
        let count = (wire_mib << 20) / (size as u64 + 64);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let b = TestBroker::start().await;
            let q = names("prop", queues);
            let mut spec = spec.clone();
            spec.channels = spec.channels.max(queues.div_ceil(spec.connections));
            drain_case(&b, &q, count.max(1), size, &spec, during, false, false).await;
            b.stop().await;
        });
    }
}
