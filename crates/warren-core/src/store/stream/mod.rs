//! [`StreamLog`]: the storage of one stream queue, an append-only log of messages numbered by
//! offset (0, 1, 2, ...).
//!
//! Files in the stream's directory: `<first offset, 20 digits>.seg` holds the records of one
//! segment (the record format of `record.rs`, kind `STREAM`: timestamp, then a MESSAGE payload
//! whose id is the offset), and `<first offset>.idx` its sparse index: one 28-byte entry
//! (offset, file position, timestamp, CRC32) for the first record and then for a record every
//! [`INDEX_EVERY`] bytes. The whole index is also in memory, so attaching at an offset or a
//! timestamp is one lookup there and one read from the entry's position on.
//!
//! Appends only copy bytes into a pending buffer and register the log with the
//! [`Syncer`]; the sync thread writes and fsyncs them (group commit), and only then are they
//! *committed*: readable by consumers, and confirmed to publishers. The log then tells its
//! [`CommitListener`] (the stream queue). Segments roll at the stream's maximum segment size;
//! a restart starts a new segment. Retention deletes whole segments from the head
//! ([`StreamLog::retain`]); the files go in the next sync round.
//!
//! A log without a directory (a broker without a data dir) keeps its segments in memory and
//! commits on append.
//!
//! Files: this one (state, append, flush, retention), `open.rs` (recovery: index load, tail
//! check, torn tail cut), `read.rs` (reading from an offset or a timestamp).

mod open;
mod read;

pub use read::{ReadBatch, StreamRecord};

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use super::record::{self, kind};
use super::sync::{write_refused, Flush, Syncer};
use crate::clock::Millis;
use crate::message::Message;

/// An index entry is written for the first record of a segment and then whenever this many
/// bytes were appended since the previous entry.
pub const INDEX_EVERY: u64 = 64 * 1024;
/// Bytes of one index entry on disk: offset, position, timestamp (u64 each), CRC32.
const IDX_ENTRY: usize = 28;
/// RabbitMQ's default `x-stream-max-segment-size-bytes`.
pub const DEFAULT_SEGMENT_SIZE: u64 = 500_000_000;

/// Told when appended messages are committed (on disk and fsynced).
pub trait CommitListener: Send + Sync {
    /// More messages are committed (see [`StreamLog::committed`]).
    fn committed(&self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    pub pos: u64,
    pub ts: u64,
}

impl IndexEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.pos.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; IDX_ENTRY] = b.try_into().ok()?;
        let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let crc = u32::from_be_bytes(b[24..28].try_into().unwrap_or_default());
        (crc32fast::hash(&b[..24]) == crc).then(|| Self {
            offset: u(0),
            pos: u(8),
            ts: u(16),
        })
    }
}

#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of its first record (and its file name).
    pub first: u64,
    /// Offset after its last record (pending ones included).
    pub end: u64,
    /// Bytes, pending ones included.
    pub size: u64,
    /// Bytes written and fsynced: readers read below this.
    pub committed_size: u64,
    /// Timestamp of its newest record.
    pub last_ts: u64,
    /// The sparse index (first record always).
    pub index: Vec<IndexEntry>,
    /// Takes no more records (a previous run's segment).
    pub sealed: bool,
    /// The bytes, for a log without a directory.
    pub mem: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Pending {
    seg: u64,
    data: Vec<u8>,
    index: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub segments: VecDeque<Segment>,
    /// Offset the next message gets.
    pub next: u64,
    /// Offsets below this are committed.
    pub committed: u64,
    /// First offset of the last committed chunk (what one sync round wrote): `last`.
    pub last_chunk: u64,
    last_ts: u64,
    /// Bytes of all segments.
    pub bytes: u64,
    pending: Vec<Pending>,
    /// First offset appended since the last flush.
    round_first: Option<u64>,
    queued_for: u64,
    to_delete: Vec<u64>,
    destroyed: bool,
    dir_exists: bool,
}

/// Open files of the segment being written (sync thread only).
#[derive(Default)]
struct Files {
    open: HashMap<u64, (File, File)>,
}

/// What the log holds, for the queue's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Offset of the oldest message still in the stream.
    pub first_offset: u64,
    /// Offset the next message will get (last offset + 1).
    pub next_offset: u64,
    /// Offsets below this are committed.
    pub committed: u64,
    /// Segment files (or in-memory segments).
    pub segments: usize,
    /// Bytes stored.
    pub bytes: u64,
}

/// One stream's log.
pub struct StreamLog {
    dir: Option<PathBuf>,
    max_segment: u64,
    syncer: Option<Arc<Syncer>>,
    pub(crate) inner: Mutex<Inner>,
    files: Mutex<Files>,
    me: Weak<StreamLog>,
    listener: Mutex<Option<Weak<dyn CommitListener>>>,
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

pub(crate) fn seg_name(first: u64) -> String {
    format!("{first:020}.seg")
}

pub(crate) fn idx_name(first: u64) -> String {
    format!("{first:020}.idx")
}

/// Serialises one stream record.
pub(crate) fn encode_record(offset: u64, ts: u64, m: &Message, out: &mut Vec<u8>) {
    let meta = super::message_meta(offset, m);
    record::put_record(out, kind::STREAM, &[&ts.to_be_bytes(), &meta, &m.body]);
}

impl StreamLog {
    fn build(
        dir: Option<PathBuf>,
        syncer: Option<Arc<Syncer>>,
        max_segment: u64,
        inner: Inner,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            dir,
            max_segment: max_segment.max(1),
            syncer,
            inner: Mutex::new(inner),
            files: Mutex::new(Files::default()),
            me: me.clone(),
            listener: Mutex::new(None),
        })
    }

    /// A new, empty log in `dir`, which must not exist yet. Nothing touches the disk now: the
    /// directory and files are created by the first flush (in the sync thread).
    pub fn create(dir: &Path, syncer: Arc<Syncer>, max_segment: u64) -> Arc<Self> {
        Self::build(
            Some(dir.to_path_buf()),
            Some(syncer),
            max_segment,
            Inner::default(),
        )
    }

    /// A log kept in memory (a broker without a data dir).
    pub fn memory(max_segment: u64) -> Arc<Self> {
        Self::build(None, None, max_segment, Inner::default())
    }

    /// Who is told about commits.
    pub fn set_listener(&self, l: Weak<dyn CommitListener>) {
        *self.listener.lock() = Some(l);
    }

    /// Whether the log lives in memory only.
    pub fn in_memory(&self) -> bool {
        self.dir.is_none()
    }

    /// Offsets below this are committed (readable).
    pub fn committed(&self) -> u64 {
        self.inner.lock().committed
    }

    /// Sizes and offsets.
    pub fn stats(&self) -> LogStats {
        let inner = self.inner.lock();
        LogStats {
            first_offset: inner.segments.front().map_or(inner.next, |s| s.first),
            next_offset: inner.next,
            committed: inner.committed,
            segments: inner.segments.iter().filter(|s| s.size > 0).count(),
            bytes: inner.bytes,
        }
    }

    /// Where `first`, `last` and `next` start: (first, start of the last chunk, next committed).
    pub fn bounds(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock();
        let first = inner.segments.front().map_or(inner.committed, |s| s.first);
        (
            first,
            inner.last_chunk.max(first).min(inner.committed),
            inner.committed,
        )
    }

    /// Appends a message stamped `now`; returns its offset and the sync epoch that commits it
    /// (0: committed already).
    pub fn append(&self, m: &Message, now: Millis) -> (u64, u64) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let offset = inner.next;
        let ts = now.max(inner.last_ts);
        let mut rec = Vec::with_capacity(m.body.len() + 64);
        encode_record(offset, ts, m, &mut rec);
        let len = rec.len() as u64;
        let roll = match inner.segments.back() {
            None => true,
            Some(s) => s.sealed || (s.size > 0 && s.size + len > self.max_segment),
        };
        if roll {
            inner.segments.push_back(Segment {
                first: offset,
                end: offset,
                size: 0,
                committed_size: 0,
                last_ts: ts,
                index: Vec::new(),
                sealed: false,
                mem: self.dir.is_none().then(Vec::new),
            });
        }
        let Some(seg) = inner.segments.back_mut() else {
            return (offset, 0);
        };
        let pos = seg.size;
        let entry = seg
            .index
            .last()
            .is_none_or(|e| pos - e.pos >= INDEX_EVERY)
            .then_some(IndexEntry { offset, pos, ts });
        if let Some(e) = entry {
            seg.index.push(e);
        }
        seg.size += len;
        seg.end = offset + 1;
        seg.last_ts = ts;
        inner.next = offset + 1;
        inner.last_ts = ts;
        inner.bytes += len;
        if let Some(mem) = &mut seg.mem {
            mem.extend_from_slice(&rec);
            seg.committed_size = seg.size;
            inner.committed = inner.next;
            inner.last_chunk = offset;
            return (offset, 0);
        }
        let seg_first = seg.first;
        let p = match inner.pending.last_mut() {
            Some(p) if p.seg == seg_first => p,
            _ => {
                inner.pending.push(Pending {
                    seg: seg_first,
                    data: Vec::new(),
                    index: Vec::new(),
                });
                let last = inner.pending.len() - 1;
                &mut inner.pending[last]
            }
        };
        p.data.extend_from_slice(&rec);
        if let Some(e) = entry {
            e.encode(&mut p.index);
        }
        inner.round_first.get_or_insert(offset);
        let epoch = self.register(inner);
        (offset, epoch)
    }

    fn register(&self, inner: &mut Inner) -> u64 {
        match (self.me.upgrade(), &self.syncer) {
            (Some(me), Some(syncer)) => {
                let me: Arc<dyn Flush> = me;
                syncer.register(&me, &mut inner.queued_for)
            }
            _ => 0,
        }
    }

    /// Deletes whole segments from the head while the stream holds more than `max_bytes` or
    /// the head segment's newest message is `max_age` old at `now`. Only committed segments
    /// with a later committed segment go (the newest data always stays, so offsets continue
    /// after a restart). Returns how many went and when the head would next be due by age.
    pub fn retain(
        &self,
        max_bytes: Option<u64>,
        max_age: Option<u64>,
        now: Millis,
    ) -> (usize, Option<Millis>) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let mut removed = 0;
        loop {
            let deletable = inner.segments.len() > 1
                && inner.segments[1].committed_size > 0
                && inner.segments[0].end <= inner.committed;
            if !deletable {
                break;
            }
            let head = &inner.segments[0];
            let too_big = max_bytes.is_some_and(|m| inner.bytes > m);
            let too_old = max_age.is_some_and(|a| head.last_ts.saturating_add(a) <= now);
            if !(too_big || too_old) {
                break;
            }
            let Some(seg) = inner.segments.pop_front() else {
                break;
            };
            inner.bytes -= seg.size;
            if self.dir.is_some() {
                inner.to_delete.push(seg.first);
            }
            removed += 1;
        }
        if removed > 0 && self.dir.is_some() {
            self.register(inner);
        }
        let due = max_age.and_then(|a| {
            (inner.segments.len() > 1).then(|| inner.segments[0].last_ts.saturating_add(a))
        });
        (removed, due)
    }

    /// Deletes the stream's files (the queue was deleted); the next sync round removes them.
    pub fn destroy(&self) {
        let mut inner = self.inner.lock();
        inner.destroyed = true;
        inner.pending.clear();
        inner.segments.clear();
        inner.bytes = 0;
        if self.dir.is_some() {
            self.register(&mut inner);
        }
    }

    fn notify(&self) {
        let l = self.listener.lock().as_ref().and_then(Weak::upgrade);
        if let Some(l) = l {
            l.committed();
        }
    }
}

impl Flush for StreamLog {
    fn flush(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut files = self.files.lock();
        let (pending, to_delete, destroyed, dir_exists, end, chunk) = {
            let mut inner = self.inner.lock();
            let dir_exists = inner.dir_exists;
            if !inner.pending.is_empty() {
                inner.dir_exists = true;
            }
            (
                std::mem::take(&mut inner.pending),
                std::mem::take(&mut inner.to_delete),
                inner.destroyed,
                dir_exists,
                inner.next,
                inner.round_first.take(),
            )
        };
        if destroyed {
            files.open.clear();
            return match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        // Lengths of the files before this batch, to cut a failed batch off again.
        let mut before: Vec<(u64, u64, u64)> = Vec::new();
        let mut created = false;
        let mut written: Vec<(u64, u64)> = Vec::new();
        let mut write = || -> std::io::Result<()> {
            if !dir_exists && !pending.is_empty() {
                fs::create_dir_all(dir)?;
                if let Some(parent) = dir.parent() {
                    File::open(parent)?.sync_all()?;
                }
            }
            for p in &pending {
                let (seg, idx) = match files.open.entry(p.seg) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let open = |name: String| {
                            OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(dir.join(name))
                        };
                        created |= !dir.join(seg_name(p.seg)).exists();
                        e.insert((open(seg_name(p.seg))?, open(idx_name(p.seg))?))
                    }
                };
                if !before.iter().any(|(s, _, _)| *s == p.seg) {
                    before.push((p.seg, seg.metadata()?.len(), idx.metadata()?.len()));
                }
                seg.write_all(&p.data)?;
                idx.write_all(&p.index)?;
                written.push((p.seg, p.data.len() as u64));
            }
            Ok(())
        };
        if let Err(e) = write() {
            // A full disk (or another failed write): cut off what reached the files, keep the
            // batch in front of what was appended since, for the syncer's retry.
            for (seg, seg_len, idx_len) in &before {
                if let Some((s, i)) = files.open.get(seg) {
                    s.set_len(*seg_len)?;
                    i.set_len(*idx_len)?;
                }
            }
            let mut inner = self.inner.lock();
            if !inner.destroyed {
                let newer = std::mem::replace(&mut inner.pending, pending);
                inner.pending.extend(newer);
                inner.dir_exists = dir_exists;
                if chunk.is_some() {
                    inner.round_first = chunk;
                }
            }
            drop(inner);
            // Retention's deletions still happen: they are what frees space.
            delete_segments(&mut files, dir, &to_delete)?;
            return Err(write_refused(e));
        }
        for (seg, _) in &written {
            if let Some((s, i)) = files.open.get(seg) {
                s.sync_data()?;
                i.sync_data()?;
            }
        }
        if created {
            File::open(dir)?.sync_all()?;
        }
        // Only the newest segment is written to again.
        if let Some(newest) = files.open.keys().max().copied() {
            files.open.retain(|k, _| *k == newest);
        }
        delete_segments(&mut files, dir, &to_delete)?;
        drop(files);
        if !written.is_empty() {
            {
                let mut inner = self.inner.lock();
                for (first, n) in &written {
                    if let Some(s) = inner.segments.iter_mut().find(|s| s.first == *first) {
                        s.committed_size += n;
                    }
                }
                inner.committed = inner.committed.max(end);
                if let Some(c) = chunk {
                    inner.last_chunk = c;
                }
            }
            self.notify();
        }
        Ok(())
    }
}

/// Removes the files of the segments retention dropped.
fn delete_segments(files: &mut Files, dir: &Path, segs: &[u64]) -> std::io::Result<()> {
    for seg in segs {
        files.open.remove(seg);
        for name in [seg_name(*seg), idx_name(*seg)] {
            match fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
