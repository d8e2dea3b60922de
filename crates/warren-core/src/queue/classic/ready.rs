//! The ready messages of a queue: one FIFO, or one FIFO per priority level for priority queues
//! (`x-max-priority`: higher priorities first, FIFO within a level). Requeued messages go back
//! to their original position (by queue sequence number) within their level.

use std::collections::VecDeque;

use crate::message::QueuedMessage;

/// Ready messages.
#[derive(Debug)]
pub(crate) enum Ready {
    Fifo(VecDeque<QueuedMessage>),
    /// Index = priority level (0..=max).
    Priority(Vec<VecDeque<QueuedMessage>>),
}

fn insert_in_order(q: &mut VecDeque<QueuedMessage>, m: QueuedMessage) {
    // Requeued messages are usually older than everything ready: fast path at the front.
    if q.front().is_none_or(|f| m.seq < f.seq) {
        q.push_front(m);
        return;
    }
    let pos = q.partition_point(|x| x.seq < m.seq);
    q.insert(pos, m);
}

impl Ready {
    pub fn new(max_priority: Option<u8>) -> Self {
        match max_priority {
            Some(p) if p > 0 => Ready::Priority((0..=p).map(|_| VecDeque::new()).collect()),
            _ => Ready::Fifo(VecDeque::new()),
        }
    }

    fn level(levels: usize, m: &QueuedMessage) -> usize {
        usize::from(m.msg.priority).min(levels - 1)
    }

    pub fn push_back(&mut self, m: QueuedMessage) {
        match self {
            Ready::Fifo(q) => q.push_back(m),
            Ready::Priority(ls) => {
                let l = Self::level(ls.len(), &m);
                ls[l].push_back(m);
            }
        }
    }

    pub fn insert_in_order(&mut self, m: QueuedMessage) {
        match self {
            Ready::Fifo(q) => insert_in_order(q, m),
            Ready::Priority(ls) => {
                let l = Self::level(ls.len(), &m);
                insert_in_order(&mut ls[l], m);
            }
        }
    }

    /// The next message to deliver.
    pub fn front(&self) -> Option<&QueuedMessage> {
        match self {
            Ready::Fifo(q) => q.front(),
            Ready::Priority(ls) => ls.iter().rev().find_map(|q| q.front()),
        }
    }

    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        match self {
            Ready::Fifo(q) => q.pop_front(),
            Ready::Priority(ls) => ls.iter_mut().rev().find_map(|q| q.pop_front()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Ready::Fifo(q) => q.len(),
            Ready::Priority(ls) => ls.iter().map(VecDeque::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn drain(&mut self) -> Vec<QueuedMessage> {
        match self {
            Ready::Fifo(q) => q.drain(..).collect(),
            Ready::Priority(ls) => ls.iter_mut().flat_map(|q| q.drain(..)).collect(),
        }
    }
}
