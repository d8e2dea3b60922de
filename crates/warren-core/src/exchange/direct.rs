//! The direct exchange's router: routing key equality, one hash lookup per message.

use std::collections::HashMap;

use super::proto::FieldTable;
use super::{Destination, Routable, Router};

/// Destinations by binding key, each with the number of its bindings under that key (bindings
/// that differ only in their arguments route once).
#[derive(Debug, Default)]
pub(super) struct DirectRouter {
    keys: HashMap<Box<str>, Vec<(Destination, u32)>>,
}

impl Router for DirectRouter {
    fn add(&mut self, dest: &Destination, key: &str, _args: &FieldTable) {
        let v = self.keys.entry(key.into()).or_default();
        match v.iter_mut().find(|(d, _)| d == dest) {
            Some((_, n)) => *n += 1,
            None => v.push((dest.clone(), 1)),
        }
    }

    fn remove(&mut self, dest: &Destination, key: &str, _args: &FieldTable) {
        let Some(v) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(i) = v.iter().position(|(d, _)| d == dest) {
            v[i].1 -= 1;
            if v[i].1 == 0 {
                v.swap_remove(i);
            }
        }
        if v.is_empty() {
            self.keys.remove(key);
        }
    }

    fn route(&self, m: &Routable<'_>, out: &mut Vec<Destination>) {
        if let Some(v) = self.keys.get(m.routing_key) {
            out.extend(v.iter().map(|(d, _)| d.clone()));
        }
    }
}
