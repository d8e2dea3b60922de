//! A paused channel: what it waits for, what it does when the wait is over, and the frames
//! the client sent meanwhile (handled in order once it resumes, as a channel task blocked on
//! the operation would).
//!
//! A channel pauses when its reply must wait for something that happens elsewhere:
//! - a metadata command the log must make durable first (a durable `queue.declare`, a bind
//!   of durable entities, a delete...): resumed by [`ConnEvent::Applied`](super::super::ConnEvent),
//!   which carries the outcome;
//! - `basic.get` on a queue whose messages are all paged out while a batch is read, and a
//!   purge of a paged backlog: resumed by a queue's wake-up;
//! - `tx.commit` with persistent messages: resumed when their sync round is durable.
//!
//! Everything else of the connection goes on meanwhile: other channels, deliveries to this
//! channel's consumers, confirms of its earlier publishes.

use std::collections::VecDeque;

use super::Channel;
use crate::connection::Ctx;
use crate::error::AmqpResult;
use crate::vhost::Applied;
use warren_codec::proto::{basic, queue, tx, AMQPClass};
use warren_codec::Frame;

/// Why a paused channel may go on.
#[derive(Debug)]
pub(crate) enum Resume {
    /// Its metadata command was applied (or refused).
    Applied(AmqpResult<Applied>),
    /// The queue it waits on woke it.
    Woken,
    /// A sync round completed.
    Synced,
}

/// What a paused channel waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// [`Resume::Applied`].
    Applied,
    /// [`Resume::Woken`].
    Woken,
    /// This sync epoch ([`Resume::Synced`]).
    Durable(u64),
}

/// The reply a metadata command gets once applied.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reply {
    ExchangeDeclare { nowait: bool },
    ExchangeDelete { nowait: bool },
    ExchangeBind { nowait: bool },
    ExchangeUnbind { nowait: bool },
    QueueDeclare { nowait: bool },
    QueueBind { nowait: bool },
    QueueUnbind,
    QueueDelete { nowait: bool },
}

/// What the channel does when the wait is over.
#[derive(Debug)]
pub(super) enum Then {
    /// Answer a metadata command.
    Reply(Reply),
    /// Try `basic.get` again.
    Get(basic::Get),
    /// Answer `queue.purge`.
    PurgeOk { count: u32, nowait: bool },
    /// Answer `tx.commit`.
    CommitOk,
}

/// The state of a paused channel.
#[derive(Debug)]
pub(crate) struct Paused {
    wait: Wait,
    then: Then,
    held: VecDeque<Frame>,
    bytes: usize,
}

impl Channel {
    /// Pauses until `wait` is over, then does `then`.
    pub(super) fn pause(&mut self, wait: Wait, then: Then) {
        self.paused = Some(Paused {
            wait,
            then,
            held: VecDeque::new(),
            bytes: 0,
        });
    }

    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Holds a frame that arrived while paused.
    pub fn hold(&mut self, f: Frame) {
        if let Some(p) = &mut self.paused {
            p.bytes += 16
                + match &f {
                    Frame::Body { payload, .. } => payload.len(),
                    _ => 256,
                };
            p.held.push_back(f);
        }
    }

    /// Bytes of frames held.
    pub fn held_bytes(&self) -> usize {
        self.paused.as_ref().map_or(0, |p| p.bytes)
    }

    /// The sync epoch the channel waits for, if it does.
    pub(super) fn waiting_epoch(&self) -> Option<u64> {
        match self.paused.as_ref()?.wait {
            Wait::Durable(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the channel waits for a sync epoch that `durable` covers.
    pub fn sync_resumable(&self, durable: u64) -> bool {
        matches!(self.paused.as_ref().map(|p| p.wait), Some(Wait::Durable(e)) if e <= durable)
    }

    /// The wait is over (if `why` is what the channel waits for): finishes the paused
    /// operation and gives back the frames held meanwhile, for the connection to handle in
    /// order (a retried `basic.get` may have paused the channel again: the connection holds
    /// them again then). `None`: the channel does not wait for this. An error is for the
    /// connection to close the channel (or itself) with.
    pub fn resume(&mut self, ctx: &mut Ctx, why: Resume) -> Option<(AmqpResult<()>, Vec<Frame>)> {
        let wait = self.paused.as_ref()?.wait;
        let matches = matches!(
            (&why, wait),
            (Resume::Applied(_), Wait::Applied)
                | (Resume::Woken, Wait::Woken)
                | (Resume::Synced, Wait::Durable(_))
        );
        if !matches {
            return None;
        }
        let p = self.paused.take()?;
        let id = self.id;
        let r = match (p.then, why) {
            (Then::Reply(reply), Resume::Applied(result)) => match result {
                Ok(a) => {
                    self.send_reply(ctx, reply, a);
                    Ok(())
                }
                Err(e) => Err(e.on(reply.ids())),
            },
            (Then::Get(g), _) => self.get(ctx, g).map_err(|e| e.on((60, 70))),
            (Then::PurgeOk { count, nowait }, _) => {
                if !nowait {
                    ctx.send_method(
                        id,
                        &AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: count,
                        })),
                    );
                }
                Ok(())
            }
            (Then::CommitOk, _) => {
                ctx.send_method(
                    id,
                    &AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
                Ok(())
            }
            (Then::Reply(_), _) => Ok(()),
        };
        Some((r, p.held.into_iter().collect()))
    }
}

impl Reply {
    /// The (class, method) ids of the command this answers, for error replies.
    pub(super) fn ids(self) -> (u16, u16) {
        match self {
            Reply::ExchangeDeclare { .. } => (40, 10),
            Reply::ExchangeDelete { .. } => (40, 20),
            Reply::ExchangeBind { .. } => (40, 30),
            Reply::ExchangeUnbind { .. } => (40, 40),
            Reply::QueueDeclare { .. } => (50, 10),
            Reply::QueueBind { .. } => (50, 20),
            Reply::QueueUnbind => (50, 50),
            Reply::QueueDelete { .. } => (50, 40),
        }
    }
}
