//! The on-disk part of a long backlog (paging).
//!
//! A queue with a store (a durable queue's, or the spill store a non-durable queue gets on a
//! broker with a data dir) keeps at most its store's paging limit of ready messages in memory; beyond
//! that, new messages are only appended to the store and counted here. When the in-memory part
//! falls below half the limit, the queue asks the pager thread for the next batch and goes on
//! serving from memory; the batch arrives in [`ClassicQueue::paged`]. A failed read is logged
//! with the queue's name and counted, the queue keeps its backlog and retries a second later.
//! Purging drops the paged part on the pager thread too.

use std::sync::Arc;

use super::{limits, ClassicQueue, State};
use crate::clock::Millis;
use crate::message::Message;
use crate::queue::Waiter;
use crate::store::{Recovered, TailCursor};

/// How long after a failed read the queue tries again.
const RETRY_MS: Millis = 1000;

/// Ready messages that are only on disk, after all of the in-memory ones.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// Messages on disk only.
    pub count: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Where the next batch starts.
    cursor: TailCursor,
    /// A batch is being read.
    reading: bool,
    /// Bumped when the tail is dropped (purge), so that a batch read before is discarded.
    generation: u64,
    /// A read failed: try again at this time.
    retry: Option<Millis>,
    /// Failed reads so far.
    pub read_errors: u64,
}

impl Tail {
    /// The backlog a store recovered beyond its in-memory limit.
    pub fn recovered(cursor: TailCursor, count: u64, bytes: u64) -> Self {
        Self {
            count,
            bytes,
            cursor,
            ..Self::default()
        }
    }

    /// When a failed read is to be retried.
    pub fn retry_at(&self) -> Option<Millis> {
        self.retry
    }

    /// Whether a failed read is due for a retry (clears the retry).
    pub fn retry_due(&mut self, now: Millis) -> bool {
        if self.retry.is_some_and(|t| now >= t) {
            self.retry = None;
            return true;
        }
        false
    }
}

impl ClassicQueue {
    /// Ready messages kept in memory before the backlog pages to disk (0: never pages).
    /// Priority and TTL queues do not page: their order and expiry need every message at hand.
    fn paging_limit(&self, st: &State) -> usize {
        match &self.store {
            Some(s)
                if self.info.args.max_priority.is_none()
                    && st.args.message_ttl.is_none()
                    && self.services.pager.is_some() =>
            {
                s.paging_limit()
            }
            _ => 0,
        }
    }

    /// Appends message `seq` (expiring at `expires_at`, 0: never) to the paged backlog instead
    /// of memory when the queue is long; returns its sync epoch then (0 for a transient one),
    /// `None` when it belongs in memory.
    pub(super) fn page_out(
        &self,
        st: &mut State,
        seq: u64,
        msg: &Message,
        expires_at: Millis,
    ) -> Option<u64> {
        let limit = self.paging_limit(st);
        let s = self.store.as_ref()?;
        if limit == 0 || (st.tail.count == 0 && st.ready.len() < limit) {
            return None;
        }
        if st.tail.count == 0 {
            st.tail.cursor = s.append_position();
        }
        let expires = self.services.clock.to_wall(expires_at);
        let epoch = if msg.persistent && s.persists() {
            s.append(seq, msg, expires)
        } else {
            s.append_transient(seq, msg, expires);
            0
        };
        st.tail.count += 1;
        st.tail.bytes += msg.size() as u64;
        Some(epoch)
    }

    /// Asks the pager for the next batch when the in-memory part is below half the limit (and
    /// no batch is on its way).
    pub(super) fn request_page(&self, st: &mut State) {
        let tail = &st.tail;
        if tail.count == 0 {
            // The usual case, checked first: nothing is paged out.
            return;
        }
        let limit = self.paging_limit(st);
        if limit == 0
            || tail.reading
            || tail.retry.is_some()
            || st.ready.len() >= (limit / 2).max(1)
        {
            return;
        }
        let (Some(store), Some(pager)) = (self.store.clone(), self.services.pager.clone()) else {
            return;
        };
        let want = limit
            .saturating_sub(st.ready.len())
            .max(1)
            .min(usize::try_from(tail.count).unwrap_or(usize::MAX));
        let generation = tail.generation;
        let mut cursor = tail.cursor;
        let me = self.me.clone();
        st.tail.reading = pager.submit(move || {
            let r = store.read_tail(&mut cursor, want);
            if let Some(q) = me.upgrade() {
                q.paged(generation, cursor, r);
            }
        });
    }

    /// A batch of the paged backlog has been read (on the pager thread).
    fn paged(&self, generation: u64, cursor: TailCursor, r: std::io::Result<Vec<Recovered>>) {
        let now = self.services.clock.now();
        let mut dead = Vec::new();
        let waiters = {
            let mut st = self.state.lock();
            if st.deleted || st.tail.generation != generation {
                return;
            }
            st.tail.reading = false;
            match r {
                Ok(batch) if !batch.is_empty() || st.tail.count == 0 => {
                    st.tail.cursor = cursor;
                    for r in batch {
                        let size = r.message.size() as u64;
                        st.tail.count = st.tail.count.saturating_sub(1);
                        st.tail.bytes = st.tail.bytes.saturating_sub(size);
                        st.ready_bytes += size;
                        let m = limits::recovered_message(&st.args, r, &self.services.clock);
                        st.ready.push_back(m);
                    }
                }
                other => {
                    st.tail.read_errors += 1;
                    st.tail.retry = Some(now + RETRY_MS);
                    let error = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "no messages where the backlog should continue".into(),
                    };
                    tracing::error!(
                        queue = %self.info.name,
                        vhost = %self.info.vhost,
                        on_disk = st.tail.count,
                        failed_reads = st.tail.read_errors,
                        %error,
                        "cannot read the paged backlog back; the queue keeps it and retries"
                    );
                }
            }
            self.dispatch(&mut st, now, &mut dead);
            self.enforce_limits(&mut st, &mut dead);
            self.schedule(&mut st);
            std::mem::take(&mut st.waiters)
        };
        self.dead_letter(dead, now);
        Self::wake(waiters);
    }

    /// Purge: forgets the paged backlog at once and has the pager drop it from the store.
    /// True when `waiter` must wait for that (it is woken when it is durable).
    pub(super) fn drop_tail(&self, st: &mut State, waiter: &Waiter) -> bool {
        if st.tail.count == 0 {
            return false;
        }
        let (Some(store), Some(pager)) = (self.store.clone(), self.services.pager.clone()) else {
            return false;
        };
        let cursor = st.tail.cursor;
        let below = st.next_seq;
        st.tail = Tail {
            generation: st.tail.generation + 1,
            read_errors: st.tail.read_errors,
            ..Tail::default()
        };
        let name: Arc<str> = self.info.name.clone();
        let waiter = waiter.clone();
        pager.submit(move || {
            if let Err(e) = store.drop_tail(cursor, below) {
                tracing::error!(queue = %name, error = %e, "purging the paged backlog failed");
            }
            waiter.sink.wake(waiter.channel);
        })
    }
}
