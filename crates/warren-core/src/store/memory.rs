//! An in-memory [`MessageStore`]: what a broker without a data directory uses, and the
//! reference the conformance suite checks the segment store against. "Reopening" it (cloning
//! the handle) sees the same records, as a restart would see files.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{MessageStore, Recovered};
use crate::message::Message;

#[derive(Debug, Default)]
struct State {
    messages: BTreeMap<u64, (Message, bool, u64)>,
}

/// In-memory store.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl MessageStore for MemoryStore {
    fn append(&self, id: u64, message: &Message, expires: u64) -> u64 {
        self.state
            .lock()
            .messages
            .insert(id, (message.clone(), false, expires));
        0
    }
    fn delivered(&self, id: u64) {
        if let Some(e) = self.state.lock().messages.get_mut(&id) {
            e.1 = true;
        }
    }
    fn ack(&self, id: u64) {
        self.state.lock().messages.remove(&id);
    }
    fn destroy(&self) {
        self.state.lock().messages.clear();
    }
    fn take_recovered(&self) -> Vec<Recovered> {
        self.state
            .lock()
            .messages
            .iter()
            .map(|(id, (m, d, e))| Recovered {
                id: *id,
                message: m.clone(),
                delivered: *d,
                expires: *e,
            })
            .collect()
    }
}
