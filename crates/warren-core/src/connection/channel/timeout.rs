//! Consumer timeout (RabbitMQ's `consumer_timeout`): a delivery not settled within the timeout
//! closes its channel with 406, and its unacked messages go back to their queues.

use super::{Channel, Ctx};
use crate::clock::Millis;
use crate::error::AmqpError;
use crate::queue::QueueRef;

/// When a message delivered at `now` from `queue` times out: its `x-consumer-timeout`, else its
/// policy's `consumer-timeout`, else the broker's `amqp.consumer_timeout`; 0 = never. Returns
/// `(deadline, timeout)`.
pub(super) fn deadline(ctx: &Ctx, queue: &QueueRef) -> (Millis, u64) {
    let timeout = queue
        .policy()
        .args
        .consumer_timeout
        .unwrap_or(ctx.broker.config.amqp.consumer_timeout);
    if timeout == 0 {
        (0, 0)
    } else {
        (ctx.now.saturating_add(timeout), timeout)
    }
}

impl Channel {
    /// Notes the deadline of a message just added to the unacked ones.
    pub(super) fn track_deadline(&mut self, deadline: Millis) {
        if deadline != 0 && (self.next_deadline == 0 || deadline < self.next_deadline) {
            self.next_deadline = deadline;
        }
    }

    /// At `ctx.now`: closes the channel if an unacked delivery is past its deadline (RabbitMQ's
    /// text). `next_deadline` may be stale (the message was settled since): then the unacked
    /// messages are scanned once and it is recomputed, so a channel scans only when a deadline
    /// passed, not every tick.
    pub fn check_consumer_timeout(&mut self, ctx: &mut Ctx) {
        if self.closing || self.next_deadline == 0 || ctx.now < self.next_deadline {
            return;
        }
        let now = ctx.now;
        let expired = self
            .unacked
            .values()
            .find(|u| u.deadline != 0 && u.deadline <= now)
            .map(|u| u.timeout);
        if let Some(timeout) = expired {
            self.next_deadline = 0;
            let text = format!(
                "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout} ms. \
                 This timeout value can be configured, see consumers doc guide to learn more",
                self.id
            );
            self.close_with(ctx, AmqpError::precondition_failed(text));
            return;
        }
        self.next_deadline = self
            .unacked
            .values()
            .map(|u| u.deadline)
            .filter(|d| *d != 0)
            .min()
            .unwrap_or(0);
    }
}
