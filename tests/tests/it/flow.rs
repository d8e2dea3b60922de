//! Flow control: the memory alarm blocks publishing connections (with `connection.blocked` /
//! `connection.unblocked` for clients that ask for them) while consumers go on; a client that
//! stops reading does not make the broker buffer its deliveries without bound.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;
use warren_codec::proto::{basic, connection, AMQPClass};
use warren_codec::{Frame, FRAME_BODY};
use warren_tests::raw::{content_header_bytes, frame_bytes, RawClient};
use warren_tests::{message_count as count, TestBroker};

async fn publish_raw(c: &mut RawClient, queue: &str, body: &[u8]) {
    c.send_publish(1, "", queue).await;
    c.send_raw(&content_header_bytes(1, body.len() as u64))
        .await;
    c.send_raw(&frame_bytes(FRAME_BODY, 1, body)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_publishers_not_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "alarm".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    {
        // Another connection publishes (and so is blocked by the alarm too, as on RabbitMQ);
        // `ch` only declares, counts and gets, so it is never blocked.
        let (_pc, pch) = b.channel().await;
        for i in 0..3 {
            pch.basic_publish(
                "".into(),
                "alarm".into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        }
        while count(&ch, "alarm").await < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut p = RawClient::open(b.addr).await;
    p.open_channel(1).await;
    publish_raw(&mut p, "alarm", b"before").await;
    while count(&ch, "alarm").await < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    b.broker.alarm.send_replace(true);
    // The publisher is told, and what it publishes now is not taken in.
    let (ch0, m) = p.expect_method().await;
    assert_eq!(ch0, 0);
    match m {
        AMQPClass::Connection(connection::AMQPMethod::Blocked(bl)) => {
            assert_eq!(bl.reason.as_str(), "low on memory")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    for _ in 0..10 {
        publish_raw(&mut p, "alarm", b"during").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&ch, "alarm").await,
        4,
        "nothing published during the alarm was enqueued"
    );
    // Consumers are not blocked.
    let got = ch
        .basic_get("alarm".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(
        got.is_some(),
        "a consumer still gets messages during the alarm"
    );

    b.broker.alarm.send_replace(false);
    let (_, m) = p.expect_method().await;
    assert!(
        matches!(
            m,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
        ),
        "got {m:?}"
    );
    let mut n = 0;
    for _ in 0..200 {
        n = count(&ch, "alarm").await;
        if n == 13 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        n, 13,
        "the held-back publishes are taken in once the alarm clears"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_not_buffered_without_bound() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "big".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let body = vec![7u8; 1024 * 1024];
    for _ in 0..100 {
        ch.basic_publish(
            "".into(),
            "big".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    while count(&ch, "big").await < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A no-ack consumer with unlimited prefetch that never reads its socket.
    let mut slow = RawClient::open(b.addr).await;
    slow.open_channel(1).await;
    slow.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "big".into(),
            consumer_tag: "slow".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = count(&ch, "big").await;
    // About 8 MiB of output buffer plus the kernel's socket buffers, not 100 MiB.
    assert!(
        left >= 60,
        "the broker stopped handing messages to a client that is not reading ({left} left)"
    );
    // Once it reads, everything arrives.
    let mut bytes = 0usize;
    while bytes < 100 * body.len() {
        if let Frame::Body { payload, .. } = slow.read_frame().await {
            bytes += payload.len();
        }
    }
    assert_eq!(count(&ch, "big").await, 0);
    b.stop().await;
}

/// Mounts a tmpfs of `mib` MiB on a fresh directory (the tests run as root in CI); `None` when
/// this machine does not allow it.
pub(crate) fn mount_tmpfs(mib: u64) -> Option<(tempfile::TempDir, TmpfsGuard)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| {
        let guard = TmpfsGuard(dir.path().to_path_buf());
        (dir, guard)
    })
}

pub(crate) fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Unmounts the tmpfs when the test ends (also when it fails).
pub(crate) struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The disk alarm on a real filesystem: a 32 MiB tmpfs holds the data dir, the limit is 16 MB;
/// another process fills the disk, the publisher is blocked with "low on disk" while consumers
/// go on; when the file is removed, the publisher is unblocked and its held publishes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_alarm_blocks_publishers_until_space_returns() {
    let Some((dir, _guard)) = mount_tmpfs(32) else {
        // CI runs as root, where this must work; elsewhere the test cannot set up its disk.
        assert!(!running_as_root(), "root could not mount a tmpfs");
        tracing::warn!("skipped: mounting a tmpfs needs root (as in CI)");
        return;
    };
    let data = dir.path().join("data");
    let mut config = warren_core::Config::default();
    config.disk.free_limit_bytes = 16_000_000;
    let b = TestBroker::start_durable_with(&data, config).await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "disk".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let mut p = RawClient::open(b.addr).await;
    p.open_channel(1).await;
    publish_raw(&mut p, "disk", b"before").await;
    publish_raw(&mut p, "disk", b"before-2").await;
    while count(&ch, "disk").await < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Someone else fills the filesystem: 20 MiB of 32 leaves about 12 MiB free.
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![7u8; 20 << 20]).expect("fill the tmpfs");
    let (ch0, m) = tokio::time::timeout(Duration::from_secs(10), p.expect_method())
        .await
        .expect("connection.blocked within the monitor's period");
    assert_eq!(ch0, 0);
    match m {
        AMQPClass::Connection(connection::AMQPMethod::Blocked(bl)) => {
            assert_eq!(bl.reason.as_str(), "low on disk")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    assert!(*b.broker.disk_alarm.borrow());
    for _ in 0..5 {
        publish_raw(&mut p, "disk", b"during").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&ch, "disk").await,
        2,
        "nothing taken in during the alarm"
    );
    let got = ch
        .basic_get("disk".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(got.is_some(), "a consumer still gets messages");

    std::fs::remove_file(&filler).expect("free the space");
    let (_, m) = tokio::time::timeout(Duration::from_secs(10), p.expect_method())
        .await
        .expect("connection.unblocked once space returns");
    assert!(
        matches!(
            m,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
        ),
        "got {m:?}"
    );
    let mut n = 0;
    for _ in 0..200 {
        n = count(&ch, "disk").await;
        if n == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 6, "the held-back publishes are taken in");
    b.stop().await;
}
