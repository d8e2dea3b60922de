//! [`SegmentStore`]: one durable queue's messages in append-only segment files.
//!
//! Files in the queue's directory: `msgs.NNNNNNNNNN` hold MESSAGE records in id order;
//! `acks.NNNNNNNNNN` hold the ACK and DELIVERED records for the messages of the segment with the
//! same number, so a segment and its acks are deleted together once every message in it is
//! acked (an ack never outlives its message's file, so nothing acked can come back). A restart
//! always starts a new segment. At open, every file is scanned: corrupt records are skipped,
//! a torn tail is cut off, and the number of damaged spans is logged.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use tracing::{info, warn};

use super::record::{self, kind};
use super::sync::{is_write_refused, write_refused, Flush, Syncer};
use super::{decode_id, decode_message, encode_message, MessageStore, Recovered, TailCursor};
use crate::message::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FileKind {
    Msgs,
    Acks,
}

fn file_name(seg: u32, k: FileKind) -> String {
    match k {
        FileKind::Msgs => format!("msgs.{seg:010}"),
        FileKind::Acks => format!("acks.{seg:010}"),
    }
}

#[derive(Debug, Default)]
struct Inner {
    head: u32,
    head_size: u64,
    /// segment -> live (unacked) messages
    live: BTreeMap<u32, u64>,
    /// first id -> segment
    first_ids: BTreeMap<u64, u32>,
    /// segment -> last id appended to it
    last_ids: HashMap<u32, u64>,
    pending: Vec<(u32, FileKind, Vec<u8>)>,
    to_delete: Vec<u32>,
    queued_for: u64,
    destroyed: bool,
    /// Ids below this were written by a previous run (their transient records are dead).
    live_from: u64,
    /// For the recovered backlog beyond the in-memory limit: its acked and delivered ids.
    tail_acked: HashSet<u64>,
    tail_delivered: HashSet<u64>,
    /// segment -> message records in its file (live or not), for compaction decisions.
    records: HashMap<u32, u64>,
    /// Segments to rewrite without their acked messages at the next flush.
    to_compact: Vec<u32>,
    /// Segments from this one on may hold a paged backlog being read by offset: never
    /// compacted (offsets must not move under a reader).
    tail_floor: Option<u32>,
    /// The directory exists on disk (a new queue's is created by its first flush, so that
    /// declaring a durable queue touches no disk on the event loop).
    dir_exists: bool,
}

/// A segment is compacted when at most a quarter of its messages are still live.
const COMPACT_LIVE_RATIO: u64 = 4;
/// ... and it has at least this many message records (small files are not worth it).
const COMPACT_MIN_RECORDS: u64 = 64;

/// Segment-file message store of one queue.
pub struct SegmentStore {
    dir: PathBuf,
    segment_size: u64,
    inner: Mutex<Inner>,
    files: Mutex<HashMap<(u32, FileKind), File>>,
    syncer: Arc<Syncer>,
    me: Weak<SegmentStore>,
    recovered: Mutex<Vec<Recovered>>,
    recovered_tail: Mutex<Option<(TailCursor, u64, u64)>>,
    /// Most messages a recovered queue keeps in memory (0 = all); the rest stay on disk.
    memory_limit: usize,
    /// A spill store ([`SegmentStore::spill`]).
    volatile: bool,
}

impl std::fmt::Debug for SegmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentStore")
            .field("dir", &self.dir)
            .finish()
    }
}

fn read_all(path: &Path) -> std::io::Result<Bytes> {
    Ok(Bytes::from(fs::read(path)?))
}

/// Scans one file; cuts a torn tail off on disk. Returns the intact records.
fn scan_file(path: &Path, dropped: &mut usize) -> std::io::Result<Vec<(u8, Bytes, usize)>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let data = read_all(path)?;
    let len = data.len();
    let s = record::scan(data);
    if s.bad_spans > 0 {
        warn!(file = %path.display(), damaged_spans = s.bad_spans, kept = s.records.len(),
            "damaged records skipped during recovery");
        *dropped += s.bad_spans;
    }
    if s.valid_end < len {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(s.valid_end as u64)?;
        f.sync_all()?;
    }
    Ok(s.records)
}

impl SegmentStore {
    /// A new, empty store in `dir`, which must not exist yet. Nothing touches the disk now:
    /// the directory and files are created by the first flush (in the sync thread).
    pub fn create(
        dir: &Path,
        syncer: Arc<Syncer>,
        segment_size: u64,
        memory_limit: usize,
    ) -> Arc<Self> {
        Self::empty(dir, syncer, segment_size, memory_limit, false)
    }

    /// A spill store in `dir` for a non-durable queue's backlog beyond its in-memory limit:
    /// every message is recorded as transient, nothing is fsynced, acks and deliveries are
    /// counted in memory only (whole segments are still deleted once all their messages are
    /// gone), and it does not persist ([`MessageStore::persists`]). Its directory is removed
    /// at the next start.
    pub fn spill(
        dir: &Path,
        syncer: Arc<Syncer>,
        segment_size: u64,
        memory_limit: usize,
    ) -> Arc<Self> {
        Self::empty(dir, syncer, segment_size, memory_limit, true)
    }

    fn empty(
        dir: &Path,
        syncer: Arc<Syncer>,
        segment_size: u64,
        memory_limit: usize,
        volatile: bool,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            dir: dir.to_path_buf(),
            segment_size,
            inner: Mutex::new(Inner::default()),
            files: Mutex::new(HashMap::new()),
            syncer,
            me: me.clone(),
            recovered: Mutex::new(Vec::new()),
            recovered_tail: Mutex::new(None),
            memory_limit,
            volatile,
        })
    }

    /// Opens (creating if needed) the store in `dir` and recovers its messages: at most
    /// `memory_limit` of them (0 = all) are loaded, the rest stay on disk as a paged backlog.
    pub fn open(
        dir: &Path,
        syncer: Arc<Syncer>,
        segment_size: u64,
        memory_limit: usize,
    ) -> std::io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        let mut segs: Vec<u32> = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".compact") {
                // A compaction that did not finish: the originals are still complete.
                let _ = fs::remove_file(e.path());
                continue;
            }
            if let Some(n) = name
                .strip_prefix("msgs.")
                .and_then(|n| n.parse::<u32>().ok())
            {
                segs.push(n);
            }
        }
        segs.sort_unstable();
        let mut inner = Inner::default();
        let mut recovered = Vec::new();
        let mut tail: Option<(TailCursor, u64, u64)> = None;
        let mut max_id: Option<u64> = None;
        let mut damaged = 0usize;
        for &seg in &segs {
            let msgs = scan_file(&dir.join(file_name(seg, FileKind::Msgs)), &mut damaged)?;
            let acks = scan_file(&dir.join(file_name(seg, FileKind::Acks)), &mut damaged)?;
            let mut acked = HashSet::new();
            let mut delivered = HashSet::new();
            for (k, p, _) in acks {
                match (k, decode_id(p)) {
                    (kind::ACK, Some(id)) => {
                        acked.insert(id);
                    }
                    (kind::DELIVERED, Some(id)) => {
                        delivered.insert(id);
                    }
                    _ => damaged += 1,
                }
            }
            let mut live = 0u64;
            let mut first: Option<u64> = None;
            let mut last = 0u64;
            let in_file = msgs.len() as u64;
            for (k, p, offset) in msgs {
                if kind::is_transient(k) {
                    // Paged transient messages do not survive a restart.
                    continue;
                }
                let Some((id, message, expires)) =
                    kind::is_message(k).then(|| decode_message(k, p)).flatten()
                else {
                    damaged += 1;
                    continue;
                };
                first = Some(first.map_or(id, |f: u64| f.min(id)));
                last = last.max(id);
                max_id = Some(max_id.map_or(id, |m: u64| m.max(id)));
                if acked.contains(&id) {
                    continue;
                }
                live += 1;
                if memory_limit == 0 || recovered.len() < memory_limit {
                    recovered.push(Recovered {
                        id,
                        message,
                        delivered: delivered.contains(&id),
                        expires,
                    });
                } else {
                    // Beyond the limit: only remember where the backlog starts and its size.
                    let size = message.size() as u64;
                    match &mut tail {
                        None => {
                            let cursor = TailCursor {
                                segment: seg,
                                offset: offset as u64,
                                live_from: 0,
                            };
                            tail = Some((cursor, 1, size));
                        }
                        Some((_, n, b)) => {
                            *n += 1;
                            *b += size;
                        }
                    }
                    if delivered.contains(&id) {
                        inner.tail_delivered.insert(id);
                    }
                }
            }
            if tail.is_some() {
                inner.tail_acked.extend(acked.iter().copied());
            }
            match (live, first) {
                (0, _) | (_, None) => {
                    let _ = fs::remove_file(dir.join(file_name(seg, FileKind::Msgs)));
                    let _ = fs::remove_file(dir.join(file_name(seg, FileKind::Acks)));
                }
                (n, Some(f)) => {
                    inner.live.insert(seg, n);
                    inner.records.insert(seg, in_file);
                    inner.first_ids.insert(f, seg);
                    inner.last_ids.insert(seg, last);
                }
            }
        }
        recovered.sort_by_key(|r| r.id);
        inner.dir_exists = true;
        let on_disk = tail.as_ref().map_or(0, |t| t.1);
        if !recovered.is_empty() || on_disk > 0 || damaged > 0 {
            info!(dir = %dir.display(), in_memory = recovered.len(), on_disk, damaged_records = damaged, "recovered queue store");
        }
        inner.head = segs.last().map_or(0, |s| s + 1);
        inner.live_from = max_id.map_or(0, |m| m + 1);
        if let Some(t) = &mut tail {
            t.0.live_from = inner.live_from;
            inner.tail_floor = Some(t.0.segment);
        }
        Ok(Arc::new_cyclic(|me| Self {
            dir: dir.to_path_buf(),
            segment_size,
            inner: Mutex::new(inner),
            files: Mutex::new(HashMap::new()),
            syncer,
            me: me.clone(),
            recovered: Mutex::new(recovered),
            recovered_tail: Mutex::new(tail),
            memory_limit,
            volatile: false,
        }))
    }

    fn register(&self, inner: &mut Inner) -> u64 {
        match self.me.upgrade() {
            Some(me) => {
                let me: Arc<dyn Flush> = me;
                self.syncer.register(&me, &mut inner.queued_for)
            }
            None => 0,
        }
    }

    fn push(inner: &mut Inner, seg: u32, k: FileKind, f: impl FnOnce(&mut Vec<u8>)) {
        match inner.pending.last_mut() {
            Some((s, kk, buf)) if *s == seg && *kk == k => f(buf),
            _ => {
                let mut buf = Vec::new();
                f(&mut buf);
                inner.pending.push((seg, k, buf));
            }
        }
    }

    /// Long-lived backlogs among fast-moving traffic leave segments that are mostly acked but
    /// can never be deleted while one message lives: rewrite those without the acked records.
    fn worth_compacting(inner: &Inner, seg: u32, live: u64) -> bool {
        let records = inner.records.get(&seg).copied().unwrap_or(0);
        records >= COMPACT_MIN_RECORDS
            && live * COMPACT_LIVE_RATIO <= records
            && inner.tail_floor.is_none_or(|f| seg < f)
            && !inner.to_compact.contains(&seg)
    }

    /// Rewrites segment `seg` with only its live messages (and the delivered marks of those):
    /// new files are written and fsynced beside the old ones, then renamed over them. A crash
    /// before the renames leaves `*.compact` files that the next open removes; a crash between
    /// them leaves the compacted messages with the old acks file, which only names more ids.
    fn compact(&self, files: &mut HashMap<(u32, FileKind), File>, seg: u32) -> std::io::Result<()> {
        let msgs_path = self.dir.join(file_name(seg, FileKind::Msgs));
        let acks_path = self.dir.join(file_name(seg, FileKind::Acks));
        let mut ignored = 0;
        let msgs = scan_file(&msgs_path, &mut ignored)?;
        let acks = scan_file(&acks_path, &mut ignored)?;
        let mut acked = HashSet::new();
        let mut delivered = HashSet::new();
        for (k, p, _) in acks {
            match (k, decode_id(p)) {
                (kind::ACK, Some(id)) => {
                    acked.insert(id);
                }
                (kind::DELIVERED, Some(id)) => {
                    delivered.insert(id);
                }
                _ => {}
            }
        }
        let live_from = self.inner.lock().live_from;
        let (mut new_msgs, mut new_acks, mut kept) = (Vec::new(), Vec::new(), 0u64);
        let before = msgs.len();
        for (k, payload, _) in msgs {
            let Some(id) = payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let dead = acked.contains(&id) || (kind::is_transient(k) && id < live_from);
            if dead || !(kind::is_message(k) || kind::is_transient(k)) {
                continue;
            }
            record::put_record(&mut new_msgs, k, &[&payload]);
            if delivered.contains(&id) {
                record::put_record(&mut new_acks, kind::DELIVERED, &[&id.to_be_bytes()]);
            }
            kept += 1;
        }
        let tmp = |p: &Path| {
            p.with_extension(format!(
                "{}.compact",
                p.extension()
                    .map_or(String::new(), |e| e.to_string_lossy().into_owned())
            ))
        };
        let (msgs_tmp, acks_tmp) = (tmp(&msgs_path), tmp(&acks_path));
        for (path, bytes) in [(&msgs_tmp, &new_msgs), (&acks_tmp, &new_acks)] {
            let written = File::create(path).and_then(|mut f| f.write_all(bytes).map(|()| f));
            match written {
                Ok(f) => f.sync_all()?,
                Err(e) => {
                    // Nothing was renamed: the old files stand.
                    let _ = fs::remove_file(&msgs_tmp);
                    let _ = fs::remove_file(&acks_tmp);
                    return Err(write_refused(e));
                }
            }
        }
        files.remove(&(seg, FileKind::Msgs));
        files.remove(&(seg, FileKind::Acks));
        fs::rename(&msgs_tmp, &msgs_path)?;
        fs::rename(&acks_tmp, &acks_path)?;
        File::open(&self.dir)?.sync_all()?;
        self.inner.lock().records.insert(seg, kept);
        info!(dir = %self.dir.display(), segment = seg, before, kept, "compacted a segment");
        Ok(())
    }

    /// Puts a batch whose write failed back in front of what was appended since, for the
    /// syncer's retry.
    fn keep_for_retry(&self, batch: Vec<(u32, FileKind, Vec<u8>)>, to_compact: Vec<u32>) {
        let mut inner = self.inner.lock();
        if inner.destroyed {
            return;
        }
        let newer = std::mem::replace(&mut inner.pending, batch);
        inner.pending.extend(newer);
        for seg in to_compact {
            if !inner.to_compact.contains(&seg) {
                inner.to_compact.push(seg);
            }
        }
    }

    /// Deletes the files of fully acked segments.
    fn delete_segments(
        &self,
        files: &mut HashMap<(u32, FileKind), File>,
        segs: &[u32],
    ) -> std::io::Result<()> {
        for seg in segs {
            for k in [FileKind::Msgs, FileKind::Acks] {
                files.remove(&(*seg, k));
                match fs::remove_file(self.dir.join(file_name(*seg, k))) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn segment_of(inner: &Inner, id: u64) -> Option<u32> {
        let seg = inner.first_ids.range(..=id).next_back().map(|(_, s)| *s)?;
        (inner.last_ids.get(&seg).copied().unwrap_or(0) >= id).then_some(seg)
    }

    fn retire(inner: &mut Inner, seg: u32) {
        inner.live.remove(&seg);
        inner.first_ids.retain(|_, s| *s != seg);
        inner.last_ids.remove(&seg);
        inner.records.remove(&seg);
        inner.to_compact.retain(|s| *s != seg);
        inner.pending.retain(|(s, _, _)| *s != seg);
        inner.to_delete.push(seg);
    }

    fn id_record(&self, id: u64, k: u8) {
        let mut inner = self.inner.lock();
        if inner.destroyed {
            return;
        }
        let Some(seg) = Self::segment_of(&inner, id) else {
            return;
        };
        if self.volatile {
            // Never recovered: only the count of live messages matters.
            if k != kind::ACK {
                return;
            }
        } else {
            Self::push(&mut inner, seg, FileKind::Acks, |b| {
                record::put_record(b, k, &[&id.to_be_bytes()])
            });
        }
        if k == kind::ACK {
            let live = inner.live.entry(seg).or_insert(1);
            *live = live.saturating_sub(1);
            let live = *live;
            if live == 0 && seg != inner.head {
                Self::retire(&mut inner, seg);
            } else if !self.volatile
                && seg != inner.head
                && Self::worth_compacting(&inner, seg, live)
            {
                inner.to_compact.push(seg);
            }
        }
        self.register(&mut inner);
    }
}

impl SegmentStore {
    fn append_kind(&self, id: u64, message: &Message, record_kind: u8, expires: u64) -> u64 {
        let mut inner = self.inner.lock();
        if inner.destroyed {
            return 0;
        }
        if inner.head_size >= self.segment_size {
            let old = inner.head;
            inner.head += 1;
            inner.head_size = 0;
            if inner.live.get(&old).copied().unwrap_or(0) == 0 {
                Self::retire(&mut inner, old);
            }
        }
        let head = inner.head;
        if let std::collections::btree_map::Entry::Vacant(e) = inner.live.entry(head) {
            e.insert(0);
            inner.first_ids.insert(id, head);
        }
        let mut written = 0;
        Self::push(&mut inner, head, FileKind::Msgs, |b| {
            written = encode_message(id, message, record_kind, expires, b)
        });
        inner.head_size += written as u64;
        inner.last_ids.insert(head, id);
        *inner.records.entry(head).or_insert(0) += 1;
        *inner.live.entry(head).or_insert(0) += 1;
        self.register(&mut inner)
    }

    /// Reads whole records from `file` at `offset` (at most about 4 MiB).
    fn read_chunk(&self, segment: u32, offset: u64) -> std::io::Result<Bytes> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match File::open(self.dir.join(file_name(segment, FileKind::Msgs))) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::new()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        f.take(4 * 1024 * 1024).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    }
}

impl MessageStore for SegmentStore {
    fn append(&self, id: u64, message: &Message, expires: u64) -> u64 {
        if self.volatile {
            self.append_kind(id, message, kind::TRANSIENT, expires);
            return 0;
        }
        self.append_kind(id, message, kind::MESSAGE, expires)
    }

    fn persists(&self) -> bool {
        !self.volatile
    }

    fn paging_limit(&self) -> usize {
        self.memory_limit
    }

    fn next_id(&self) -> u64 {
        self.inner.lock().live_from
    }

    fn append_transient(&self, id: u64, message: &Message, expires: u64) {
        self.append_kind(id, message, kind::TRANSIENT, expires);
    }

    fn append_position(&self) -> TailCursor {
        let mut inner = self.inner.lock();
        let (segment, offset) = if inner.head_size >= self.segment_size {
            (inner.head + 1, 0)
        } else {
            (inner.head, inner.head_size)
        };
        inner.tail_floor = Some(inner.tail_floor.map_or(segment, |f| f.min(segment)));
        TailCursor {
            segment,
            offset,
            live_from: inner.live_from,
        }
    }

    fn read_tail(&self, cursor: &mut TailCursor, max: usize) -> std::io::Result<Vec<Recovered>> {
        let mut out = Vec::new();
        let mut flushed = false;
        while out.len() < max {
            let chunk = self.read_chunk(cursor.segment, cursor.offset)?;
            let mut at = 0;
            while out.len() < max {
                let Some((k, start, end)) = record::record_at(&chunk, at) else {
                    break;
                };
                let payload = chunk.slice(start..end);
                at = end;
                let inner = self.inner.lock();
                match decode_message(k, payload) {
                    Some((id, message, expires))
                        if kind::is_message(k) && !inner.tail_acked.contains(&id) =>
                    {
                        out.push(Recovered {
                            id,
                            message,
                            delivered: inner.tail_delivered.contains(&id),
                            expires,
                        });
                    }
                    Some((id, mut message, expires))
                        if kind::is_transient(k) && id >= cursor.live_from =>
                    {
                        message.persistent = false;
                        out.push(Recovered {
                            id,
                            message,
                            delivered: false,
                            expires,
                        });
                    }
                    _ => {}
                }
            }
            cursor.offset += at as u64;
            if at > 0 {
                flushed = false;
                continue;
            }
            // Nothing more on disk in this segment: its rest may still be pending in memory.
            if !flushed {
                self.flush()?;
                flushed = true;
                continue;
            }
            let inner = self.inner.lock();
            let next = inner
                .live
                .range(cursor.segment + 1..)
                .next()
                .map(|(s, _)| *s)
                .or((inner.head > cursor.segment).then_some(inner.head));
            match next {
                Some(s) => {
                    cursor.segment = s;
                    cursor.offset = 0;
                    flushed = false;
                }
                None => break,
            }
        }
        Ok(out)
    }

    fn drop_tail(&self, cursor: TailCursor, below: u64) -> std::io::Result<u64> {
        let mut cursor = cursor;
        let mut dropped = 0u64;
        loop {
            let batch = self.read_tail(&mut cursor, 4096)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                if r.id >= below {
                    continue;
                }
                dropped += 1;
                if r.message.persistent {
                    self.ack(r.id);
                }
            }
        }
        self.flush()?;
        Ok(dropped)
    }

    fn take_recovered_tail(&self) -> Option<(TailCursor, u64, u64)> {
        self.recovered_tail.lock().take()
    }

    fn delivered(&self, id: u64) {
        self.id_record(id, kind::DELIVERED);
    }

    fn ack(&self, id: u64) {
        self.id_record(id, kind::ACK);
    }

    fn destroy(&self) {
        let mut inner = self.inner.lock();
        inner.destroyed = true;
        inner.pending.clear();
        self.register(&mut inner);
    }

    fn take_recovered(&self) -> Vec<Recovered> {
        std::mem::take(&mut *self.recovered.lock())
    }
}

impl Flush for SegmentStore {
    fn flush(&self) -> std::io::Result<()> {
        // The files lock is taken first and held throughout, so that two flushers (the sync
        // thread and a queue reading its paged backlog) write batches in order.
        let mut files = self.files.lock();
        let (pending, to_delete, to_compact, destroyed, dir_exists) = {
            let mut inner = self.inner.lock();
            let dir_exists = inner.dir_exists;
            if !inner.pending.is_empty() {
                inner.dir_exists = true;
            }
            (
                std::mem::take(&mut inner.pending),
                std::mem::take(&mut inner.to_delete),
                std::mem::take(&mut inner.to_compact),
                inner.destroyed,
                dir_exists,
            )
        };
        if destroyed {
            files.clear();
            return match fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        if !dir_exists && !pending.is_empty() {
            let made = fs::create_dir_all(&self.dir).and_then(|()| match self.dir.parent() {
                Some(parent) if !self.volatile => File::open(parent)?.sync_all(),
                _ => Ok(()),
            });
            if let Err(e) = made {
                self.inner.lock().dir_exists = false;
                self.keep_for_retry(pending, to_compact);
                self.delete_segments(&mut files, &to_delete)?;
                return Err(write_refused(e));
            }
        }
        // Length of each file before this batch, to cut a failed batch off again.
        let mut touched: Vec<((u32, FileKind), u64)> = Vec::new();
        let mut created = false;
        let mut failure = None;
        for (seg, k, bytes) in &pending {
            let key = (*seg, *k);
            let f = match files.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let path = self.dir.join(file_name(*seg, *k));
                    created |= !path.exists();
                    match OpenOptions::new().create(true).append(true).open(path) {
                        Ok(f) => e.insert(f),
                        Err(err) => {
                            failure = Some(err);
                            break;
                        }
                    }
                }
            };
            if !touched.iter().any(|(t, _)| *t == key) {
                match f.metadata() {
                    Ok(m) => touched.push((key, m.len())),
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            if let Err(err) = f.write_all(bytes) {
                failure = Some(err);
                break;
            }
        }
        if let Some(e) = failure {
            // A full disk (or another failed write): cut off what reached the files and keep
            // the batch for the syncer's retry. Fully acked segments are still deleted (that
            // is what frees space); their records in the batch are dropped with them.
            for (key, len) in &touched {
                if let Some(f) = files.get(key) {
                    f.set_len(*len)?;
                }
            }
            let pending = pending
                .into_iter()
                .filter(|(seg, _, _)| !to_delete.contains(seg))
                .collect();
            self.keep_for_retry(pending, to_compact);
            self.delete_segments(&mut files, &to_delete)?;
            return Err(write_refused(e));
        }
        let touched: Vec<(u32, FileKind)> = touched.into_iter().map(|(k, _)| k).collect();
        if self.volatile {
            // Nothing of a spill store is recovered: no fsync.
            self.delete_segments(&mut files, &to_delete)?;
            return Ok(());
        }
        for key in &touched {
            if let Some(f) = files.get(key) {
                f.sync_data()?;
            }
        }
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        for seg in to_compact {
            // Everything pending for it was written above; skip it if it was retired meanwhile.
            let still_live = self.inner.lock().live.get(&seg).is_some_and(|n| *n > 0);
            if still_live && !to_delete.contains(&seg) {
                match self.compact(&mut files, seg) {
                    Err(e) if is_write_refused(&e) => {
                        // Compaction only saves space; the segment stays as it was.
                        warn!(dir = %self.dir.display(), segment = seg, error = %e,
                            "compacting a segment failed; it is kept as it is");
                    }
                    r => r?,
                }
            }
        }
        self.delete_segments(&mut files, &to_delete)?;
        Ok(())
    }
}

/// Number of segment files in `dir` (for tests and diagnostics).
pub fn segment_count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("msgs."))
                .count()
        })
        .unwrap_or(0)
}
