//! Consumer choice and the delivery loop of a classic queue.

use super::{ClassicQueue, Dead, State};
use crate::clock::Millis;
use crate::queue::Delivery;

impl ClassicQueue {
    /// Picks the consumer for the next message: with single active consumer only the first
    /// registered; otherwise round robin among the highest-priority consumers with credit.
    /// One pass, asking each consumer's credit (and sink) once.
    fn pick_consumer(&self, st: &State) -> Option<usize> {
        if self.info.args.single_active_consumer {
            return st.consumers.first().filter(|c| c.has_credit()).map(|_| 0);
        }
        let n = st.consumers.len();
        let start = st.next_consumer % n;
        let mut best: Option<(i64, usize)> = None;
        for i in (0..n).map(|i| (start + i) % n) {
            let c = &st.consumers[i];
            if best.is_some_and(|(p, _)| c.priority <= p) || !c.has_credit() {
                continue;
            }
            best = Some((c.priority, i));
        }
        best.map(|(_, i)| i)
    }

    /// Hands ready messages to consumers with credit.
    pub(super) fn dispatch(&self, st: &mut State, now: Millis, dead: &mut Vec<Dead>) {
        while !st.consumers.is_empty() {
            self.expire_head(st, now, dead);
            self.request_page(st);
            if st.ready.is_empty() {
                return;
            }
            let Some(idx) = self.pick_consumer(st) else {
                return;
            };
            let Some(mut message) = st.ready.pop_front() else {
                return;
            };
            st.next_consumer = (idx + 1) % st.consumers.len();
            st.ready_bytes = st.ready_bytes.saturating_sub(message.msg.size() as u64);
            message.deliveries += 1;
            let c = &st.consumers[idx];
            if !c.no_ack {
                c.credit.take();
                c.channel_credit.take();
                self.mark_delivered(&message);
            }
            let no_ack = c.no_ack;
            // One reference count operation per delivery (the upgrade), as a clone would be.
            let Some(queue) = self.handle() else { return };
            let delivery = Delivery {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                queue,
                reserved: message.msg.wire_size() + c.tag.len(),
                message,
                no_ack,
            };
            match c.sink.deliver(delivery) {
                Ok(()) => {
                    if !no_ack {
                        st.unacked += 1;
                    }
                }
                Err(mut d) => {
                    // The connection is gone: put the message back and forget the consumer.
                    d.message.deliveries -= 1;
                    st.ready_bytes += d.message.msg.size() as u64;
                    st.ready.insert_in_order(d.message);
                    st.consumers.remove(idx);
                    st.next_consumer = 0;
                }
            }
        }
    }
}
