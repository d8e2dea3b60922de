use super::*;
use bytes::Bytes;

fn msg(body: &str) -> Message {
    Message::recovered("x", "rk", Bytes::new(), Bytes::from(body.to_string()))
}

fn bodies(b: &ReadBatch) -> Vec<String> {
    b.records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.message.body).into_owned())
        .collect()
}

fn offsets(b: &ReadBatch) -> Vec<u64> {
    b.records.iter().map(|r| r.offset).collect()
}

fn seg_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn memory_log_appends_reads_by_offset_and_timestamp_and_retains() {
    let log = StreamLog::memory(200);
    for i in 0..20u64 {
        let (o, epoch) = log.append(&msg(&format!("m{i}")), 1000 + i * 10);
        assert_eq!((o, epoch), (i, 0));
    }
    assert_eq!(log.committed(), 20);
    let all = log.read(0, 0, 100, 1 << 20).expect("read");
    assert_eq!(offsets(&all), (0..20).collect::<Vec<_>>());
    assert_eq!(all.next, 20);
    let mid = log.read(7, 0, 3, 1 << 20).expect("read");
    assert_eq!(bodies(&mid), vec!["m7", "m8", "m9"]);
    assert_eq!(mid.next, 10);
    // The first message at or after 1055 is offset 6 (ts 1060).
    let ts = log.read(0, 1055, 2, 1 << 20).expect("read");
    assert_eq!(offsets(&ts), vec![6, 7]);
    assert!(log.stats().segments > 2, "small segments roll");
    // Over 300 bytes: head segments go, the newest stays.
    let before = log.stats();
    let (removed, _) = log.retain(Some(300), None, 0);
    let after = log.stats();
    assert!(removed > 0 && after.bytes <= 300 && after.first_offset > 0);
    assert_eq!(after.next_offset, before.next_offset);
    // A read from before the head starts at the head.
    let head = log.read(0, 0, 1, 1 << 20).expect("read");
    assert_eq!(offsets(&head), vec![after.first_offset]);
    // By age: everything but the newest segment is old.
    let (_, _) = log.retain(None, Some(10), 10_000);
    assert_eq!(log.stats().segments, 1);
}

#[test]
fn durable_log_commits_on_flush_survives_reopen_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let syncer = Syncer::start().expect("syncer");
    let log = StreamLog::create(&path, syncer.clone(), 4096);
    let big = "x".repeat(300);
    for i in 0..100u64 {
        let (o, epoch) = log.append(&msg(&format!("{i}:{big}")), 5000 + i);
        assert_eq!(o, i);
        assert!(epoch > 0);
    }
    syncer.barrier();
    assert_eq!(log.committed(), 100);
    let stats = log.stats();
    assert!(stats.segments > 5, "{stats:?}");
    assert_eq!(seg_files(&path), stats.segments);
    let r = log.read(42, 0, 2, 1 << 20).expect("read");
    assert_eq!(offsets(&r), vec![42, 43]);
    assert!(bodies(&r)[0].starts_with("42:"));
    drop(log);

    // Tear the newest segment's last record.
    let newest = fs::read_dir(&path)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a segment");
    let len = fs::metadata(&newest).expect("meta").len();
    let f = OpenOptions::new().write(true).open(&newest).expect("open");
    f.set_len(len - 10).expect("cut");
    drop(f);

    let log = StreamLog::open(&path, syncer.clone(), 4096).expect("reopen");
    let s = log.stats();
    assert_eq!((s.first_offset, s.next_offset, s.committed), (0, 99, 99));
    assert!(fs::metadata(&newest).expect("meta").len() < len - 10, "cut");
    let all = log.read(0, 0, 1000, 1 << 30).expect("read");
    // One segment at a time.
    assert!(!all.records.is_empty());
    let mut next = 0;
    let mut seen = Vec::new();
    while next < 99 {
        let b = log.read(next, 0, 1000, 1 << 30).expect("read");
        seen.extend(offsets(&b));
        next = b.next;
    }
    assert_eq!(seen, (0..99).collect::<Vec<_>>());
    // By timestamp after a reopen (from the index and the segments' timestamps).
    let t = log.read(0, 5050, 1, 1 << 20).expect("read");
    assert_eq!(offsets(&t), vec![50]);
    // New appends continue the offsets in a new segment.
    let (o, _) = log.append(&msg("after"), 9000);
    assert_eq!(o, 99);
    syncer.barrier();
    let b = log.read(99, 0, 10, 1 << 20).expect("read");
    assert_eq!(bodies(&b), vec!["after"]);
    // Retention deletes files in the next round.
    let files_before = seg_files(&path);
    let (removed, _) = log.retain(Some(8000), None, 0);
    assert!(removed > 0);
    syncer.barrier();
    assert_eq!(seg_files(&path), files_before - removed);
    log.destroy();
    syncer.barrier();
    assert!(!path.exists());
    syncer.stop();
}

#[test]
fn a_damaged_index_is_rebuilt_from_the_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let syncer = Syncer::start().expect("syncer");
    let log = StreamLog::create(&path, syncer.clone(), 1 << 30);
    let body = "y".repeat(1000);
    for i in 0..300u64 {
        log.append(&msg(&body), i);
    }
    syncer.barrier();
    let entries = log.inner.lock().segments[0].index.len();
    assert!(entries > 3, "sparse index: {entries}");
    drop(log);
    let idx = path.join(idx_name(0));
    let mut bytes = fs::read(&idx).expect("idx");
    bytes[IDX_ENTRY * 2 + 3] ^= 0xff;
    fs::write(&idx, bytes).expect("write");
    let log = StreamLog::open(&path, syncer.clone(), 1 << 30).expect("reopen");
    assert_eq!(log.stats().next_offset, 300);
    assert!(log.inner.lock().segments[0].index.len() >= entries - 1);
    let r = log.read(250, 0, 1, 1 << 20).expect("read");
    assert_eq!(offsets(&r), vec![250]);
    syncer.stop();
}

#[test]
fn records_larger_than_the_read_window_are_read_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let syncer = Syncer::start().expect("syncer");
    let log = StreamLog::create(&path, syncer.clone(), 1 << 30);
    let big = "b".repeat(300 * 1024);
    log.append(&msg("small"), 1);
    log.append(&msg(&big), 2);
    log.append(&msg("after"), 3);
    syncer.barrier();
    let r = log.read(0, 0, 10, 1 << 20).expect("read");
    assert_eq!(offsets(&r), vec![0, 1, 2]);
    assert_eq!(r.records[1].message.body.len(), big.len());
    let r = log.read(1, 0, 1, 1 << 20).expect("read");
    assert_eq!((offsets(&r), r.next), (vec![1], 2));
    syncer.stop();
}
