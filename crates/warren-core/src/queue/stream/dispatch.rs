//! Delivering to stream consumers: each reader's read-ahead buffer is sent while it has
//! credit, and refilled by a read of the log on the pager thread (a log in memory is read in
//! place) once it runs low. The buffer holds at most [`READ_RECORDS`] messages or about
//! [`READ_BYTES`] of bodies, so a consumer costs a bounded amount of memory however long the
//! stream is.

use std::sync::Arc;
use tracing::warn;

use super::filter::Filter;
use super::{with_offset_header, State, StreamQueue};
use crate::message::QueuedMessage;
use crate::queue::{Delivery, QueueRef};
use crate::store::stream::ReadBatch;

/// Messages one read brings in at most.
pub(super) const READ_RECORDS: usize = 256;
/// Body bytes after which one read stops.
pub(super) const READ_BYTES: usize = 1024 * 1024;

/// A read's result, ready to deliver.
pub(super) struct Batch {
    messages: Vec<QueuedMessage>,
    next: u64,
}

/// Turns read records into deliveries: drops what the consumer's filter excludes and adds the
/// `x-stream-offset` header (on the pager thread, for logs on disk).
fn prepare(b: ReadBatch, filter: Option<&Filter>) -> Batch {
    let messages = b
        .records
        .into_iter()
        .filter_map(|r| {
            let props = crate::message::amq_props(&r.message.raw_properties).unwrap_or_default();
            if filter.is_some_and(|f| !f.matches(&props)) {
                return None;
            }
            let m = with_offset_header(r.message, props, r.offset);
            Some(QueuedMessage::new(r.offset, Arc::new(m), 0))
        })
        .collect();
    Batch {
        messages,
        next: b.next,
    }
}

impl StreamQueue {
    fn handle(&self) -> Option<QueueRef> {
        self.me.upgrade().map(|q| q as QueueRef)
    }

    /// Sends what readers have credit for, and starts reads for those running low.
    pub(super) fn dispatch(&self, st: &mut State) {
        if st.deleted {
            return;
        }
        let committed = self.log.committed();
        let mut gone: Vec<u64> = Vec::new();
        for i in 0..st.readers.len() {
            loop {
                let r = &mut st.readers[i];
                while r.c.has_credit() {
                    let Some(message) = r.buf.pop_front() else {
                        break;
                    };
                    let Some(queue) = self.handle() else { return };
                    r.buf_bytes = r.buf_bytes.saturating_sub(message.msg.size());
                    r.position = message.seq + 1;
                    r.c.credit.take();
                    r.c.channel_credit.take();
                    let d = Delivery {
                        channel: r.c.channel,
                        consumer_tag: r.c.tag.clone(),
                        queue,
                        reserved: message.msg.wire_size() + r.c.tag.len(),
                        message,
                        no_ack: false,
                    };
                    if r.c.sink.deliver(d).is_err() {
                        // The connection is gone (it gave the credit back itself).
                        gone.push(r.id);
                        break;
                    }
                }
                if gone.contains(&r.id) {
                    break;
                }
                if r.buf.is_empty() && r.position < r.next {
                    // Records skipped by the read (before the head, older than the
                    // timestamp): the position moves on with it.
                    r.position = r.next;
                }
                let low = r.buf.len() < READ_RECORDS / 2 && r.buf_bytes < READ_BYTES / 2;
                if r.reading || !low || r.next >= committed {
                    break;
                }
                let (id, from, min_ts, filter) = (r.id, r.next, r.min_ts, r.filter.clone());
                r.reading = true;
                match &self.services.pager {
                    Some(pager) if !self.log.in_memory() => {
                        let log = self.log.clone();
                        let me = self.me.clone();
                        let submitted = pager.submit(move || {
                            let result = log.read(from, min_ts, READ_RECORDS, READ_BYTES);
                            if let Some(q) = me.upgrade() {
                                q.on_batch(id, result.map(|b| prepare(b, filter.as_deref())));
                            }
                        });
                        if !submitted {
                            st.readers[i].reading = false;
                        }
                        break;
                    }
                    _ => {
                        // In memory: a copy under the log's lock, no disk.
                        let result = self.log.read(from, min_ts, READ_RECORDS, READ_BYTES);
                        let r = &mut st.readers[i];
                        r.reading = false;
                        let result = result.map(|b| prepare(b, filter.as_deref()));
                        if !Self::take_batch(r, result, &mut st.read_errors) {
                            break;
                        }
                    }
                }
            }
        }
        if !gone.is_empty() {
            st.readers.retain(|r| !gone.contains(&r.id));
        }
    }

    /// Puts a read's result into the reader's buffer; false when nothing came of it.
    fn take_batch(r: &mut super::Reader, result: std::io::Result<Batch>, errors: &mut u64) -> bool {
        match result {
            Ok(b) => {
                let progressed = b.next > r.next || !b.messages.is_empty();
                r.next = r.next.max(b.next);
                for m in b.messages {
                    r.buf_bytes += m.msg.size();
                    r.buf.push_back(m);
                }
                progressed
            }
            Err(e) => {
                *errors += 1;
                warn!(consumer = %r.c.tag, error = %e, "reading a stream for a consumer failed");
                false
            }
        }
    }

    /// A read for reader `id` finished on the pager thread.
    pub(super) fn on_batch(&self, id: u64, result: std::io::Result<Batch>) {
        let mut st = self.state.lock();
        let st = &mut *st;
        let Some(r) = st.readers.iter_mut().find(|r| r.id == id) else {
            return;
        };
        r.reading = false;
        if !Self::take_batch(r, result, &mut st.read_errors) {
            // Nothing came of it (an error): the next commit or ack tries again.
            return;
        }
        self.dispatch(st);
    }
}
