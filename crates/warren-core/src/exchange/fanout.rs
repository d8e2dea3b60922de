//! The fanout exchange's router: every bound destination, once.

use std::collections::HashMap;

use super::proto::FieldTable;
use super::{Destination, Routable, Router};

/// Bound destinations with their number of bindings.
#[derive(Debug, Default)]
pub(super) struct FanoutRouter {
    dests: HashMap<Destination, u32>,
}

impl Router for FanoutRouter {
    fn add(&mut self, dest: &Destination, _key: &str, _args: &FieldTable) {
        *self.dests.entry(dest.clone()).or_insert(0) += 1;
    }

    fn remove(&mut self, dest: &Destination, _key: &str, _args: &FieldTable) {
        if let Some(n) = self.dests.get_mut(dest) {
            *n -= 1;
            if *n == 0 {
                self.dests.remove(dest);
            }
        }
    }

    fn route(&self, _m: &Routable<'_>, out: &mut Vec<Destination>) {
        out.extend(self.dests.keys().cloned());
    }
}
