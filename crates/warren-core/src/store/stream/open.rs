//! Opening a stream's directory after a restart (or a crash).
//!
//! For each segment: the index file is read (entries up to the first bad one), then the
//! segment is checked from its last index entry to its end, record by record. What does not
//! check out (a torn tail after kill -9, or flipped bytes) is cut off the file and logged; the
//! records before it stay readable. This costs one index read and at most [`INDEX_EVERY`]
//! bytes (plus one record) of segment read per segment, however long the stream.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use tracing::{info, warn};

use super::{idx_name, seg_name, IndexEntry, Inner, Segment, StreamLog, IDX_ENTRY, INDEX_EVERY};
use crate::store::record::{self, kind};
use crate::store::sync::Syncer;

/// Offset and timestamp of a stream record payload (kind byte excluded).
pub(crate) fn record_head(payload: &[u8]) -> Option<(u64, u64)> {
    let ts = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let offset = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((offset, ts))
}

fn load_index(path: &Path, seg_len: u64) -> Vec<IndexEntry> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    let mut out: Vec<IndexEntry> = Vec::new();
    for chunk in bytes.chunks(IDX_ENTRY) {
        let Some(e) = IndexEntry::decode(chunk) else {
            break;
        };
        let in_order = out
            .last()
            .is_none_or(|p| e.offset > p.offset && e.pos > p.pos && e.ts >= p.ts);
        if !in_order || e.pos >= seg_len || (out.is_empty() && e.pos != 0) {
            break;
        }
        out.push(e);
    }
    out
}

struct Checked {
    /// Offset of the first record checked, and (offset, ts) of the last one.
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    /// Index entries for checked records that the index file lacks.
    extra_index: Vec<IndexEntry>,
    valid_end: u64,
}

/// Checks the records of `data` (the segment's bytes from `start` on).
fn check_records(data: &[u8], start: u64, last_indexed: Option<IndexEntry>) -> Checked {
    let mut c = Checked {
        first: None,
        last: None,
        extra_index: Vec::new(),
        valid_end: start,
    };
    let mut at = 0usize;
    let mut last_entry_pos = last_indexed.map(|e| e.pos);
    while let Some((k, payload_start, end)) = record::record_at(data, at) {
        if k != kind::STREAM {
            break;
        }
        let Some((offset, ts)) = record_head(&data[payload_start..end]) else {
            break;
        };
        if c.last.is_some_and(|(o, t)| offset != o + 1 || ts < t) {
            break;
        }
        let pos = start + at as u64;
        if last_entry_pos.is_none_or(|p| pos > p && pos - p >= INDEX_EVERY) {
            c.extra_index.push(IndexEntry { offset, pos, ts });
            last_entry_pos = Some(pos);
        }
        c.first.get_or_insert((offset, ts));
        c.last = Some((offset, ts));
        at = end;
        c.valid_end = start + end as u64;
    }
    c
}

/// Recovers one segment file; `None` if it holds no intact record (it is removed).
fn open_segment(dir: &Path, first: u64) -> std::io::Result<Option<Segment>> {
    let seg_path = dir.join(seg_name(first));
    let idx_path = dir.join(idx_name(first));
    let mut f = OpenOptions::new().read(true).write(true).open(&seg_path)?;
    let len = f.metadata()?.len();
    let mut index = load_index(&idx_path, len);
    let (checked, index) = loop {
        let start = index.last().map_or(0, |e| e.pos);
        f.seek(SeekFrom::Start(start))?;
        let mut data = Vec::with_capacity((len - start) as usize);
        (&mut f).take(len - start).read_to_end(&mut data)?;
        let c = check_records(&data, start, index.last().copied());
        let indexed_ok = match (index.last(), c.first) {
            (None, _) => true,
            (Some(e), Some((o, t))) => e.offset == o && e.ts == t,
            (Some(_), None) => false,
        };
        if indexed_ok {
            break (c, index);
        }
        // The last index entry does not point at its record: trust the file, not the index.
        index.pop();
    };
    let Some((last_offset, last_ts)) = checked.last else {
        warn!(file = %seg_path.display(), bytes = len, "stream segment without an intact record: removed");
        drop(f);
        fs::remove_file(&seg_path)?;
        let _ = fs::remove_file(&idx_path);
        return Ok(None);
    };
    if checked.valid_end < len {
        warn!(
            file = %seg_path.display(),
            cut_bytes = len - checked.valid_end,
            "stream segment ends in a torn or corrupt record: cut off"
        );
        f.set_len(checked.valid_end)?;
        f.sync_all()?;
    }
    let mut index = index;
    index.extend(checked.extra_index);
    let first_offset = index.first().map_or(first, |e| e.offset);
    Ok(Some(Segment {
        first: first_offset,
        end: last_offset + 1,
        size: checked.valid_end,
        committed_size: checked.valid_end,
        last_ts,
        index,
        sealed: true,
        mem: None,
    }))
}

impl StreamLog {
    /// Opens the log in `dir` left by a previous run (creating nothing if it does not exist).
    /// Blocking disk I/O: called while the broker opens its data dir.
    pub fn open(dir: &Path, syncer: Arc<Syncer>, max_segment: u64) -> std::io::Result<Arc<Self>> {
        let mut firsts: BTreeMap<u64, ()> = BTreeMap::new();
        let mut dir_exists = false;
        match fs::read_dir(dir) {
            Ok(rd) => {
                dir_exists = true;
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                        firsts.insert(n, ());
                    } else if let Some(n) = name.strip_suffix(".idx") {
                        if !dir.join(format!("{n}.seg")).exists() {
                            let _ = fs::remove_file(e.path());
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut inner = Inner {
            dir_exists,
            ..Inner::default()
        };
        for first in firsts.keys() {
            if let Some(seg) = open_segment(dir, *first)? {
                if seg.first < inner.next {
                    warn!(dir = %dir.display(), segment = seg.first, "stream segment overlaps the previous one: ignored");
                    continue;
                }
                inner.bytes += seg.size;
                inner.next = seg.end;
                inner.last_chunk = seg.end - 1;
                inner.last_ts = seg.last_ts;
                inner.segments.push_back(seg);
            }
        }
        inner.committed = inner.next;
        if !inner.segments.is_empty() {
            info!(
                dir = %dir.display(),
                segments = inner.segments.len(),
                first = inner.segments.front().map_or(0, |s| s.first),
                next = inner.next,
                "stream recovered"
            );
        }
        Ok(Self::build(
            Some(dir.to_path_buf()),
            Some(syncer),
            max_segment,
            inner,
        ))
    }
}
