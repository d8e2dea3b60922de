//! Publisher confirms (`confirm.select`): one ack (or nack) per publish, coalesced into
//! `multiple` acks; a persistent message in a durable queue is confirmed only once its sync
//! round is durable.

use std::collections::VecDeque;

use super::Channel;
use crate::connection::Ctx;
use crate::error::{AmqpError, AmqpResult};
use warren_codec::proto::{basic, confirm, AMQPClass};

#[derive(Debug, Default)]
pub(super) struct ConfirmState {
    next_seq: u64,
    /// (sequence number, ack?) decided and waiting to be sent at the end of this turn.
    pending: Vec<(u64, bool)>,
    /// Persistent messages waiting for their sync epoch: (sequence number, epoch), in order.
    waiting: VecDeque<(u64, u64)>,
}

impl ConfirmState {
    /// Forgets everything (the channel closes).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.waiting.clear();
    }
}

impl Channel {
    pub(super) fn confirm_select(&mut self, ctx: &mut Ctx, s: confirm::Select) -> AmqpResult<()> {
        if self.tx.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from tx to confirm mode",
            ));
        }
        if self.confirm.is_none() {
            self.info
                .confirm
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.confirm = Some(ConfirmState {
                next_seq: 1,
                ..ConfirmState::default()
            });
        }
        if !s.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    /// Records the confirm of the publish just enqueued: a nack when a queue refused it
    /// (`x-overflow=reject-publish`), an ack now, or an ack once `epoch` is durable.
    pub(super) fn record_confirm(&mut self, ctx: &mut Ctx, rejected: bool, epoch: u64) {
        let Some(c) = &mut self.confirm else { return };
        let seq = c.next_seq;
        c.next_seq += 1;
        if rejected {
            if c.pending.is_empty() {
                ctx.confirms_dirty.push(self.id);
            }
            c.pending.push((seq, false));
            return;
        }
        if epoch > ctx.durable_epoch() {
            // On disk only after that sync round: confirm then (persistent + durable).
            c.waiting.push_back((seq, epoch));
            ctx.wait_for_sync(epoch);
            return;
        }
        if c.pending.is_empty() {
            ctx.confirms_dirty.push(self.id);
        }
        c.pending.push((seq, true));
    }

    /// A sync round finished: confirms whose messages are now on disk become sendable.
    pub fn on_synced(&mut self, ctx: &mut Ctx, durable: u64) {
        if let Some(epoch) = self.waiting_epoch() {
            if epoch > durable {
                ctx.wait_for_sync(epoch);
            }
        }
        let Some(c) = &mut self.confirm else { return };
        let before = c.pending.len();
        while let Some(&(seq, epoch)) = c.waiting.front() {
            if epoch > durable {
                ctx.wait_for_sync(epoch);
                break;
            }
            c.waiting.pop_front();
            c.pending.push((seq, true));
        }
        if before == 0 && !c.pending.is_empty() {
            ctx.confirms_dirty.push(self.id);
        }
    }

    /// Sends the confirms gathered this turn. Acks below the oldest still-waiting message are
    /// coalesced into one `multiple` ack (which must not cover anything unconfirmed).
    pub fn flush_confirms(&mut self, ctx: &mut Ctx) {
        let Some(c) = &mut self.confirm else { return };
        if c.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut c.pending);
        let acks = pending.iter().filter(|(_, ack)| *ack).count();
        self.info.stats.confirm.add(acks as u64);
        crate::broker::ChannelInfo::set(&self.info.messages_unconfirmed, c.waiting.len() as u64);
        pending.sort_unstable_by_key(|(seq, _)| *seq);
        let oldest_waiting = c.waiting.front().map_or(u64::MAX, |(s, _)| *s);
        let split = pending.partition_point(|(seq, _)| *seq < oldest_waiting);
        let mut rest: Vec<(u64, bool)> = pending.split_off(split);
        if pending.len() > 1 && pending.iter().all(|(_, ack)| *ack) {
            let (last, _) = pending[pending.len() - 1];
            let ack = basic::Ack {
                delivery_tag: last,
                multiple: true,
            };
            ctx.send_method(self.id, &AMQPClass::Basic(basic::AMQPMethod::Ack(ack)));
        } else {
            rest.splice(0..0, pending);
        }
        for (seq, is_ack) in rest {
            let m = if is_ack {
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: seq,
                    multiple: false,
                })
            } else {
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                })
            };
            ctx.send_method(self.id, &AMQPClass::Basic(m));
        }
    }
}
