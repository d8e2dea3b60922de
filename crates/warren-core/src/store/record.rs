//! The on-disk record format shared by message and ack segment files.
//!
//! ```text
//! magic u32 = 0x57524E31 ("WRN1") | len u32 (of kind + payload) | crc32 u32 (of kind + payload)
//! kind u8 | payload
//! ```
//! The magic lets recovery find the next intact record after a corrupt one; the checksum tells
//! intact from torn or flipped. Everything is big-endian.

use bytes::{Buf, BufMut, Bytes};

pub(crate) const MAGIC: u32 = 0x5752_4E31;
pub(crate) const HEADER: usize = 12;
/// Upper bound on one record, far above the 512 MiB message cap plus metadata.
const MAX_RECORD: usize = 600 * 1024 * 1024;

/// Record kinds.
pub(crate) mod kind {
    /// A message: id, exchange, routing key, properties, body.
    pub const MESSAGE: u8 = 1;
    /// A transient message written only because its queue pages to disk: never recovered.
    pub const TRANSIENT: u8 = 4;
    /// An ack of message id.
    pub const ACK: u8 = 2;
    /// A delivery of message id (it will come back redelivered).
    pub const DELIVERED: u8 = 3;
    /// [`MESSAGE`] with its absolute expiry (wall-clock ms) after the id, so that its TTL
    /// keeps counting across a restart.
    pub const MESSAGE_EXPIRING: u8 = 5;
    /// [`TRANSIENT`] with its absolute expiry after the id.
    pub const TRANSIENT_EXPIRING: u8 = 6;

    /// A message record of either form.
    pub fn is_message(k: u8) -> bool {
        matches!(k, MESSAGE | MESSAGE_EXPIRING)
    }

    /// A transient message record of either form.
    pub fn is_transient(k: u8) -> bool {
        matches!(k, TRANSIENT | TRANSIENT_EXPIRING)
    }
    /// A stream message: timestamp, then a MESSAGE payload whose id is the stream offset.
    pub const STREAM: u8 = 7;
}

/// Appends one record to `out`.
pub(crate) fn put_record(out: &mut Vec<u8>, kind: u8, payload: &[&[u8]]) {
    let len: usize = 1 + payload.iter().map(|p| p.len()).sum::<usize>();
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    for p in payload {
        h.update(p);
    }
    out.put_u32(MAGIC);
    out.put_u32(len as u32);
    out.put_u32(h.finalize());
    out.put_u8(kind);
    for p in payload {
        out.put_slice(p);
    }
}

/// Result of scanning a file.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Intact records: (kind, payload, offset of the record in the file).
    pub records: Vec<(u8, Bytes, usize)>,
    /// Spans of bytes that were not intact records (corruption or a torn tail).
    pub bad_spans: usize,
    /// Where the last intact record ends: a torn tail after this is cut off.
    pub valid_end: usize,
}

/// The record starting at `at`: (kind, payload start, record end), if intact.
pub(crate) fn record_at(data: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    if data.len() < at + HEADER + 1 {
        return None;
    }
    let mut h = &data[at..at + HEADER];
    if h.get_u32() != MAGIC {
        return None;
    }
    let len = h.get_u32() as usize;
    let crc = h.get_u32();
    if len == 0 || len > MAX_RECORD || data.len() < at + HEADER + len {
        return None;
    }
    let body = &data[at + HEADER..at + HEADER + len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((body[0], at + HEADER + 1, at + HEADER + len))
}

/// Scans a whole file's bytes, skipping over corrupt spans by searching for the next magic.
pub(crate) fn scan(data: Bytes) -> Scan {
    let mut s = Scan::default();
    let mut at = 0;
    let mut in_bad = false;
    while at < data.len() {
        match record_at(&data, at) {
            Some((kind, start, end)) => {
                s.records.push((kind, data.slice(start..end), at));
                at = end;
                s.valid_end = end;
                in_bad = false;
            }
            None => {
                if !in_bad {
                    s.bad_spans += 1;
                    in_bad = true;
                }
                at += 1;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_recovery_from_corruption() {
        let mut buf = Vec::new();
        for i in 0u64..10 {
            put_record(&mut buf, kind::ACK, &[&i.to_be_bytes()]);
        }
        let whole = scan(Bytes::from(buf.clone()));
        assert_eq!(whole.records.len(), 10);
        assert_eq!(whole.bad_spans, 0);
        // Flip a byte inside record 3's payload: only that record is lost.
        let rec = HEADER + 1 + 8;
        let mut flipped = buf.clone();
        flipped[3 * rec + HEADER + 3] ^= 0xFF;
        let s = scan(Bytes::from(flipped));
        assert_eq!(s.records.len(), 9);
        assert_eq!(s.bad_spans, 1);
        // Torn tail: the last record half written.
        let torn = Bytes::from(buf[..buf.len() - 4].to_vec());
        let s = scan(torn);
        assert_eq!(s.records.len(), 9);
        assert_eq!(s.valid_end, 9 * rec);
    }
}
