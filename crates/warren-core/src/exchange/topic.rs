//! Placeholder topic matcher (scan); replaced by the trie.
use std::hash::Hash;
/// Topic bindings.
#[derive(Debug)]
pub struct TopicTrie<T> {
    b: Vec<(String, T)>,
}
impl<T: Clone + Eq + Hash> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}
impl<T: Clone + Eq + Hash> TopicTrie<T> {
    /// Empty.
    pub fn new() -> Self {
        Self { b: Vec::new() }
    }
    /// Adds.
    pub fn insert(&mut self, pattern: &str, dest: T) -> bool {
        if self.b.iter().any(|(p, d)| p == pattern && *d == dest) {
            return false;
        }
        self.b.push((pattern.to_string(), dest));
        true
    }
    /// Removes.
    pub fn remove(&mut self, pattern: &str, dest: &T) -> bool {
        let n = self.b.len();
        self.b.retain(|(p, d)| !(p == pattern && d == dest));
        n != self.b.len()
    }
    /// Routes.
    pub fn route(&self, key: &str, out: &mut Vec<T>) {
        let kw: Vec<&str> = key.split('.').collect();
        for (p, d) in &self.b {
            let pw: Vec<&str> = p.split('.').collect();
            if m(&pw, &kw) && !out.contains(d) {
                out.push(d.clone());
            }
        }
    }
    /// Count.
    pub fn len(&self) -> usize {
        self.b.len()
    }
    /// Empty?
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}
fn m(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => (0..=k.len()).any(|i| m(rest, &k[i..])),
        Some((w, rest)) => !k.is_empty() && (*w == "*" || *w == k[0]) && m(rest, &k[1..]),
    }
}
