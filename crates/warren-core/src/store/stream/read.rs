//! Reading committed records from an offset or a timestamp on.
//!
//! A read finds its segment and the index entry at or before its start in memory (under the
//! log's lock, briefly), then reads the segment file from that position without any lock, so
//! publishers are never held up by readers. A segment deleted by retention meanwhile is
//! skipped: the next attempt starts at the new head.

use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use tracing::warn;

use super::open::record_head;
use super::{seg_name, StreamLog};
use crate::message::Message;
use crate::store::decode_message;
use crate::store::record::{self, kind, HEADER};

/// Bytes read from a segment file at once (a record larger than this is read whole).
const READ_WINDOW: u64 = 64 * 1024;

/// One message read back, with its offset and timestamp.
#[derive(Debug)]
pub struct StreamRecord {
    /// Its offset in the stream.
    pub offset: u64,
    /// When it was appended (broker clock, ms).
    pub ts: u64,
    /// The message.
    pub message: Message,
}

/// What a read found.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// The records, in offset order.
    pub records: Vec<StreamRecord>,
    /// Where the next read starts.
    pub next: u64,
}

/// Where a read goes in one segment.
struct Plan {
    seg_first: u64,
    start_pos: u64,
    /// Committed bytes of the segment.
    limit: u64,
    /// Offset after its last committed record.
    seg_end: u64,
    /// The read's start, clamped to the head and the segment.
    from: u64,
}

enum Source<'a> {
    File(File),
    Memory(&'a StreamLog),
}

impl StreamLog {
    /// Reads committed records from offset `from` on (from the head if `from` is older) whose
    /// timestamp is at least `min_ts`: at most `max_records`, and stopping once `max_bytes` of
    /// bodies are read. Blocking disk I/O: called on the pager thread (a log in memory may be
    /// read anywhere).
    pub fn read(
        &self,
        from: u64,
        min_ts: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> std::io::Result<ReadBatch> {
        let mut batch = ReadBatch {
            records: Vec::new(),
            next: from,
        };
        let mut bytes = 0usize;
        // Each turn reads one segment, until the batch is full or nothing more is committed.
        for _ in 0..64 {
            let plan = match self.plan(batch.next, min_ts) {
                Ok(p) => p,
                Err(clamped) => {
                    batch.next = clamped;
                    break;
                }
            };
            batch.next = plan.from;
            match self.read_segment(
                &plan,
                min_ts,
                max_records,
                max_bytes,
                &mut batch,
                &mut bytes,
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Deleted by retention meanwhile (the next plan starts at the head), or
                    // lost: skip it.
                    let still_listed = self
                        .inner
                        .lock()
                        .segments
                        .iter()
                        .any(|s| s.first == plan.seg_first);
                    if still_listed {
                        warn!(
                            segment = plan.seg_first,
                            "stream segment file missing: skipped"
                        );
                        batch.next = plan.seg_end;
                    }
                }
                Err(e) => return Err(e),
            }
            if batch.records.len() >= max_records || bytes >= max_bytes {
                break;
            }
        }
        Ok(batch)
    }

    /// The segment and position a read from `from` (with `min_ts`) starts at, or the clamped
    /// start if nothing committed is there yet.
    fn plan(&self, from: u64, min_ts: u64) -> Result<Plan, u64> {
        let inner = self.inner.lock();
        let head = inner.segments.front().map_or(inner.committed, |s| s.first);
        let from = from.max(head);
        if from >= inner.committed {
            return Err(from);
        }
        let i = if min_ts > 0 {
            inner
                .segments
                .iter()
                .position(|s| s.end > from && s.last_ts >= min_ts)
        } else {
            Some(inner.segments.partition_point(|s| s.end <= from))
        };
        let Some(seg) = i.and_then(|i| inner.segments.get(i)) else {
            return Err(inner.committed);
        };
        if seg.first >= inner.committed || seg.committed_size == 0 {
            return Err(from);
        }
        let from = from.max(seg.first);
        let k = seg
            .index
            .partition_point(|e| e.offset <= from || e.ts < min_ts);
        let start_pos = k
            .checked_sub(1)
            .and_then(|k| seg.index.get(k))
            .map_or(0, |e| e.pos);
        Ok(Plan {
            seg_first: seg.first,
            start_pos,
            limit: seg.committed_size,
            seg_end: seg.end.min(inner.committed),
            from,
        })
    }

    fn read_at(&self, src: &Source<'_>, seg: u64, pos: u64, len: u64) -> std::io::Result<Bytes> {
        match src {
            Source::File(f) => {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, pos)?;
                Ok(Bytes::from(buf))
            }
            Source::Memory(log) => {
                let inner = log.inner.lock();
                let mem = inner
                    .segments
                    .iter()
                    .find(|s| s.first == seg)
                    .and_then(|s| s.mem.as_ref())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
                let (start, end) = (pos as usize, (pos + len) as usize);
                mem.get(start..end)
                    .map(Bytes::copy_from_slice)
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            }
        }
    }

    fn read_segment(
        &self,
        plan: &Plan,
        min_ts: u64,
        max_records: usize,
        max_bytes: usize,
        batch: &mut ReadBatch,
        bytes: &mut usize,
    ) -> std::io::Result<()> {
        let src = match &self.dir {
            Some(d) => Source::File(File::open(d.join(seg_name(plan.seg_first)))?),
            None => Source::Memory(self),
        };
        let from = plan.from;
        let mut pos = plan.start_pos;
        while pos < plan.limit {
            let want = (plan.limit - pos).min(READ_WINDOW);
            let mut buf = self.read_at(&src, plan.seg_first, pos, want)?;
            if buf.len() >= HEADER {
                let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as u64;
                let whole = HEADER as u64 + len;
                if whole > buf.len() as u64 && pos + whole <= plan.limit {
                    // The first record is larger than the window: read it whole.
                    buf = self.read_at(&src, plan.seg_first, pos, whole)?;
                }
            }
            let mut at = 0usize;
            while buf.len() >= at + HEADER {
                let len = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
                if at + HEADER + len as usize > buf.len() {
                    break;
                }
                let Some((k, start, end)) = record::record_at(&buf, at) else {
                    return self.corrupt(plan, pos + at as u64, batch);
                };
                let Some((offset, ts)) =
                    record_head(&buf[start..end]).filter(|_| k == kind::STREAM)
                else {
                    return self.corrupt(plan, pos + at as u64, batch);
                };
                at = end;
                if offset < from || ts < min_ts {
                    continue;
                }
                let Some((_, message, _)) =
                    decode_message(kind::MESSAGE, buf.slice(start + 8..end))
                else {
                    return self.corrupt(plan, pos + at as u64, batch);
                };
                *bytes += message.size();
                batch.records.push(StreamRecord {
                    offset,
                    ts,
                    message,
                });
                batch.next = offset + 1;
                if batch.records.len() >= max_records || *bytes >= max_bytes {
                    if pos + at as u64 >= plan.limit {
                        batch.next = batch.next.max(plan.seg_end);
                    }
                    return Ok(());
                }
            }
            if at == 0 {
                return self.corrupt(plan, pos, batch);
            }
            pos += at as u64;
        }
        batch.next = batch.next.max(plan.seg_end);
        Ok(())
    }

    fn corrupt(&self, plan: &Plan, pos: u64, batch: &mut ReadBatch) -> std::io::Result<()> {
        warn!(
            segment = plan.seg_first,
            position = pos,
            "corrupt record in a stream segment: the rest of the segment is skipped"
        );
        batch.next = batch.next.max(plan.seg_end);
        Ok(())
    }
}
