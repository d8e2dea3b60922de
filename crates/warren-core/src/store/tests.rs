//! The store conformance suite: the same scenarios against every [`MessageStore`]
//! implementation, plus segment-file specifics (rotation, reclamation, corruption).

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::memory::MemoryStore;
use super::segment::{segment_count, SegmentStore};
use super::sync::Syncer;
use super::{MessageStore, StoreRef};
use crate::message::Message;

/// Opens "the same" store again, as a restart would.
trait Reopen {
    fn open(&self) -> StoreRef;
    /// Waits until everything written is durable.
    fn settle(&self);
}

struct Mem(MemoryStore);
impl Reopen for Mem {
    fn open(&self) -> StoreRef {
        Arc::new(self.0.clone())
    }
    fn settle(&self) {}
}

struct Seg {
    dir: PathBuf,
    syncer: Arc<Syncer>,
    segment_size: u64,
}
impl Reopen for Seg {
    fn open(&self) -> StoreRef {
        SegmentStore::open(&self.dir, self.syncer.clone(), self.segment_size, 0).expect("opens")
    }
    fn settle(&self) {
        self.syncer.barrier();
    }
}

fn seg(dir: &Path, segment_size: u64) -> Seg {
    Seg {
        dir: dir.to_path_buf(),
        syncer: Syncer::start().expect("sync thread"),
        segment_size,
    }
}

fn msg(i: u64) -> Message {
    // Properties: flags 0x9000 = content-type + delivery-mode, "t" then mode 2.
    let props = Bytes::from_static(&[0x90, 0x00, 1, b't', 2]);
    Message::recovered(
        "amq.direct",
        &format!("key.{i}"),
        props,
        Bytes::from(format!("body {i}").into_bytes()),
    )
}

fn check_same(a: &Message, b: &Message) {
    assert_eq!(a.exchange, b.exchange);
    assert_eq!(a.routing_key, b.routing_key);
    assert_eq!(a.raw_properties, b.raw_properties);
    assert_eq!(a.body, b.body);
    assert!(b.persistent);
}

/// The absolute expiry recorded for message `i` in these tests (0: none, every third one).
fn expiry(i: u64) -> u64 {
    if i.is_multiple_of(3) {
        0
    } else {
        1_800_000_000_000 + i
    }
}

fn recover_unacked_in_order(h: &dyn Reopen) {
    let s = h.open();
    for i in 0..100 {
        s.append(i, &msg(i), expiry(i));
    }
    for i in (0..100).step_by(2) {
        s.ack(i);
    }
    s.delivered(1);
    s.delivered(3);
    h.settle();
    drop(s);
    let s = h.open();
    let r = s.take_recovered();
    let ids: Vec<u64> = r.iter().map(|r| r.id).collect();
    assert_eq!(ids, (1..100).step_by(2).collect::<Vec<_>>());
    for rec in &r {
        check_same(&msg(rec.id), &rec.message);
        assert_eq!(rec.delivered, rec.id == 1 || rec.id == 3, "id {}", rec.id);
        assert_eq!(rec.expires, expiry(rec.id), "expiry of id {}", rec.id);
    }
    // Acking recovered messages sticks across another restart.
    for rec in &r {
        if rec.id < 50 {
            s.ack(rec.id);
        }
    }
    s.append(1000, &msg(1000), 0);
    h.settle();
    drop(s);
    let s = h.open();
    let ids: Vec<u64> = s.take_recovered().iter().map(|r| r.id).collect();
    let mut expected: Vec<u64> = (51..100).step_by(2).collect();
    expected.push(1000);
    assert_eq!(ids, expected);
}

fn destroy_forgets_everything(h: &dyn Reopen) {
    let s = h.open();
    for i in 0..10 {
        s.append(i, &msg(i), 0);
    }
    h.settle();
    s.destroy();
    h.settle();
    drop(s);
    assert!(h.open().take_recovered().is_empty());
}

fn all_implementations(f: fn(&dyn Reopen)) {
    f(&Mem(MemoryStore::new()));
    let dir = tempfile::tempdir().expect("tempdir");
    f(&seg(dir.path(), 1024));
    let dir = tempfile::tempdir().expect("tempdir");
    f(&seg(dir.path(), 16 * 1024 * 1024));
}

#[test]
fn conformance_recover_unacked_in_order() {
    all_implementations(recover_unacked_in_order);
}

#[test]
fn conformance_destroy() {
    all_implementations(destroy_forgets_everything);
}

#[test]
fn segments_rotate_and_fully_acked_ones_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = seg(dir.path(), 4096);
    let s = h.open();
    for i in 0..2000 {
        s.append(i, &msg(i), 0);
    }
    h.settle();
    assert!(
        segment_count(dir.path()) > 5,
        "rotated into several segments"
    );
    for i in 0..1990 {
        s.ack(i);
    }
    // One more append moves the head on so that old segments are all retired.
    s.append(5000, &msg(5000), 0);
    h.settle();
    assert!(
        segment_count(dir.path()) <= 2,
        "reclaimed: {}",
        segment_count(dir.path())
    );
    drop(s);
    let ids: Vec<u64> = h.open().take_recovered().iter().map(|r| r.id).collect();
    let mut expected: Vec<u64> = (1990..2000).collect();
    expected.push(5000);
    assert_eq!(ids, expected);
}

#[test]
fn corrupt_records_are_skipped_and_torn_tail_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = seg(dir.path(), 16 * 1024 * 1024);
    let s = h.open();
    for i in 0..50 {
        s.append(i, &msg(i), 0);
    }
    h.settle();
    drop(s);
    let file = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("msgs."))
        .expect("a segment")
        .path();
    let mut data = std::fs::read(&file).expect("read");
    let len = data.len();
    // Flip a byte in the middle (inside some record) and tear the last record.
    data[len / 2] ^= 0x5A;
    data.truncate(len - 3);
    std::fs::write(&file, &data).expect("write");
    let ids: Vec<u64> = h.open().take_recovered().iter().map(|r| r.id).collect();
    assert_eq!(
        ids.len(),
        48,
        "two records lost, every intact one kept: {ids:?}"
    );
    assert!(!ids.contains(&49), "the torn last record is gone");
    assert_eq!(ids[0], 0);
    // The torn tail was cut off on disk: a second recovery sees the same.
    let again: Vec<u64> = h.open().take_recovered().iter().map(|r| r.id).collect();
    assert_eq!(again, ids);
}

#[test]
fn recovery_keeps_a_bounded_prefix_and_pages_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = seg(dir.path(), 8192);
    let s = h.open();
    for i in 0..500 {
        s.append(i, &msg(i), 0);
    }
    s.ack(3);
    s.ack(300);
    s.delivered(400);
    h.settle();
    drop(s);
    let s = SegmentStore::open(dir.path(), h.syncer.clone(), 8192, 100).expect("opens");
    let first: Vec<u64> = s.take_recovered().iter().map(|r| r.id).collect();
    assert_eq!(first.len(), 100);
    assert_eq!(first[..4], [0, 1, 2, 4]);
    let (mut cursor, count, _) = s.take_recovered_tail().expect("a paged backlog");
    assert_eq!(count, 398);
    let mut rest = Vec::new();
    loop {
        let batch = s.read_tail(&mut cursor, 37).expect("reads");
        if batch.is_empty() {
            break;
        }
        for r in batch {
            assert_eq!(r.delivered, r.id == 400);
            check_same(&msg(r.id), &r.message);
            rest.push(r.id);
        }
    }
    let expected: Vec<u64> = (first[99] + 1..500).filter(|i| *i != 300).collect();
    assert_eq!(rest, expected);
    assert!(s.next_id() >= 500);
}

#[test]
fn live_paged_backlog_reads_back_unflushed_and_transient_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = seg(dir.path(), 4096);
    let s = SegmentStore::open(dir.path(), h.syncer.clone(), 4096, 10).expect("opens");
    let mut cursor = s.append_position();
    for i in 0..200 {
        if i % 2 == 0 {
            s.append(i, &msg(i), 0);
        } else {
            s.append_transient(i, &msg(i), 0);
        }
    }
    // No settle: part of it may still be in memory, not yet written.
    let mut got = Vec::new();
    loop {
        let batch = s.read_tail(&mut cursor, 64).expect("reads");
        if batch.is_empty() {
            break;
        }
        for r in batch {
            assert_eq!(r.message.persistent, r.id % 2 == 0);
            got.push(r.id);
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    h.settle();
    drop(s);
    // After a restart only the persistent ones exist.
    let s = SegmentStore::open(dir.path(), h.syncer.clone(), 4096, 0).expect("opens");
    let ids: Vec<u64> = s.take_recovered().iter().map(|r| r.id).collect();
    assert_eq!(ids, (0..200).step_by(2).collect::<Vec<_>>());
}

fn msgs_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("msgs."))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn mostly_acked_segments_are_compacted_and_recover_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = seg(dir.path(), 8192);
    let s = h.open();
    for i in 0..3000 {
        s.append(i, &msg(i), 0);
    }
    h.settle();
    let full = msgs_bytes(dir.path());
    // Keep every 10th message (a long-lived backlog), ack the rest; mark some kept ones
    // delivered.
    for i in 0..3000u64 {
        if i % 10 != 0 {
            s.ack(i);
        } else if i % 20 == 0 {
            s.delivered(i);
        }
    }
    h.settle();
    let compacted = msgs_bytes(dir.path());
    assert!(
        compacted * 5 < full,
        "segments shrank: {full} -> {compacted} bytes"
    );
    // New acks after compaction land in the rewritten segments' ack files.
    s.ack(10);
    h.settle();
    // Stray files of an interrupted compaction are ignored and removed at the next open.
    std::fs::write(dir.path().join("msgs.0000000001.compact"), b"garbage").expect("write");
    drop(s);
    let s = h.open();
    let r = s.take_recovered();
    let ids: Vec<u64> = r.iter().map(|r| r.id).collect();
    let expected: Vec<u64> = (0..3000).filter(|i| i % 10 == 0 && *i != 10).collect();
    assert_eq!(ids, expected);
    for rec in &r {
        check_same(&msg(rec.id), &rec.message);
        assert_eq!(rec.delivered, rec.id % 20 == 0, "id {}", rec.id);
    }
    assert!(!dir.path().join("msgs.0000000001.compact").exists());
}
