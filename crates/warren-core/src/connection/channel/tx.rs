//! Transactions (`tx.select`, `tx.commit`, `tx.rollback`): publishes and settlements are held
//! until commit; `commit-ok` waits, like a confirm, for the sync round of the transaction's
//! persistent messages (the channel pauses until then).

use std::sync::Arc;

use super::consume::Disposition;
use super::pause::{Then, Wait};
use super::publish::Targets;
use super::{ok, Channel, Unacked};
use crate::connection::Ctx;
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use warren_codec::proto::{tx, AMQPClass};

/// A publish held until `tx.commit`.
#[derive(Debug)]
pub(super) struct TxPublish {
    pub queues: Targets,
    pub message: Arc<Message>,
    pub mandatory: bool,
    /// Held by a delayed exchange at commit: its holder and the delay.
    pub delayed: Option<(Arc<crate::exchange::delayed::DelayedMessages>, u64)>,
}

#[derive(Debug, Default)]
pub(super) struct TxState {
    pub publishes: Vec<TxPublish>,
    /// Settlements held until commit.
    pub settles: Vec<(u64, Unacked, Disposition)>,
}

impl Channel {
    pub(super) fn tx_method(&mut self, ctx: &mut Ctx, m: tx::AMQPMethod) -> AmqpResult<()> {
        let id = self.id;
        match m {
            tx::AMQPMethod::Select(_) => {
                if self.confirm.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.info
                        .transactional
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.tx = Some(TxState::default());
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                )
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(state) = self.tx.replace(TxState::default()) else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                let mut epoch = 0;
                for p in state.publishes {
                    let mut held_epoch = 0;
                    if let Some((held, delay)) = &p.delayed {
                        if let Some(props) =
                            warren_codec::decode_properties(&p.message.raw_properties)
                        {
                            held_epoch = Self::hold_delayed(ctx, held, &p.message, &props, *delay);
                        }
                    }
                    let e = self.enqueue(ctx, &p.queues, p.message, p.mandatory, held_epoch);
                    epoch = epoch.max(e);
                }
                let (mut acks, mut rejects, mut requeues) = (Vec::new(), Vec::new(), Vec::new());
                for (_, u, how) in state.settles {
                    match how {
                        Disposition::Ack => acks.push(u),
                        Disposition::Reject => rejects.push(u),
                        Disposition::Requeue => requeues.push(u),
                    }
                }
                self.dispose(acks, Disposition::Ack, ctx.now);
                self.dispose(rejects, Disposition::Reject, ctx.now);
                self.dispose(requeues, Disposition::Requeue, ctx.now);
                self.kick_consumer_queues(ctx.now);
                if epoch > ctx.durable_epoch() {
                    // Like a confirm, commit-ok promises that the persistent messages of the
                    // transaction are on disk: it goes out when their sync round is done.
                    self.pause(Wait::Durable(epoch), Then::CommitOk);
                    ctx.wait_for_sync(epoch);
                    return Ok(());
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                )
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(state) = self.tx.replace(TxState::default()) else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                for (tag, u, _) in state.settles {
                    self.unacked.insert(tag, u);
                }
                ok(
                    ctx,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                )
            }
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }
}
