//! Topic exchange matching: a trie of binding patterns, walked word by word for each routing key.
//!
//! Owns the pattern store and matcher behind `topic` exchanges. It mirrors RabbitMQ's
//! `rabbit_exchange_type_topic` / `rabbit_db_topic_exchange` (trie of words, `trie_match`):
//!
//! * Keys and patterns are split on `.` into words; every piece is a word, empty ones included,
//!   so `a..b` is the three words `a`, ``, `b` and `.` is two empty words. The one exception,
//!   as in RabbitMQ's `split_topic_key(<<>>) -> []`, is the empty string, which is **zero**
//!   words (not one empty word): key `""` matches patterns `""`, `#` and `#.#`, but not `*`.
//! * In a pattern, the word `*` matches exactly one word and `#` matches zero or more words;
//!   any other word (including the empty word) matches only an identical key word. Key words are
//!   always literal: a key word `*` or `#` is matched like any other word.
//! * A destination is reported at most once per routed key, however many of its patterns match
//!   (RabbitMQ dedupes the matched destinations too).
//!
//! Matching is a set-of-states walk over the trie (an NFA simulation): each key word advances the
//! set of live trie nodes through the literal child, the `*` child, and the self-loop of `#`
//! nodes, and `#` children are entered without consuming a word. The live set is deduplicated at
//! every step, so the cost is O(words in key x live nodes), independent of the number of
//! bindings, and patterns such as `#.#.#` cannot blow up the way naive backtracking does.
//! Nodes live in an arena (`Vec`) with a free list, so nothing recurses and dropping a deep trie
//! is flat.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};

/// Index of the root node in the arena; the root always exists.
const ROOT: usize = 0;

/// Up to this many candidate destinations, cross-node deduplication is a linear scan.
const SMALL_DEDUP: usize = 32;

/// One word of a pattern, classified.
#[derive(Clone, Copy)]
enum Word<'a> {
    Literal(&'a str),
    Star,
    Hash,
}

impl<'a> Word<'a> {
    fn of(word: &'a str) -> Self {
        match word {
            "*" => Word::Star,
            "#" => Word::Hash,
            w => Word::Literal(w),
        }
    }
}

/// Splits a key or pattern into words the way RabbitMQ does: on every `.`, except that the
/// empty string has no words at all.
fn split_words(s: &str) -> std::str::Split<'_, char> {
    let mut words = s.split('.');
    if s.is_empty() {
        // `"".split('.')` yields a single empty word; RabbitMQ treats "" as zero words.
        let _ = words.next();
    }
    words
}

/// Hasher for the literal-word maps: a word-at-a-time multiply/rotate hash with a splitmix64
/// finaliser, seeded per trie from the OS-randomised `RandomState`. SipHash dominated route
/// time (routing keys are short and each live node costs one lookup per word); the random seed
/// keeps collisions from being precomputable.
#[derive(Clone, Debug)]
struct WordHashBuilder {
    seed: u64,
}

impl WordHashBuilder {
    fn random() -> Self {
        WordHashBuilder {
            seed: RandomState::new().build_hasher().finish(),
        }
    }
}

impl BuildHasher for WordHashBuilder {
    type Hasher = WordHasher;

    fn build_hasher(&self) -> WordHasher {
        WordHasher { state: self.seed }
    }
}

struct WordHasher {
    state: u64,
}

impl WordHasher {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(buf));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            // Fold the tail length in so "a" and "a\0" differ.
            self.mix(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        // splitmix64 finaliser: hashbrown uses both the low and the top bits.
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

type LiteralMap = HashMap<Box<str>, usize, WordHashBuilder>;

thread_local! {
    /// Reused live-state buffers for `route`, so routing does not allocate in the steady state.
    static SCRATCH: Cell<(Vec<usize>, Vec<usize>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

#[derive(Debug)]
struct Node<T> {
    /// Children reached through a literal word.
    literal: LiteralMap,
    /// Child reached through a `*` word.
    star: Option<usize>,
    /// Child reached through a `#` word.
    hash: Option<usize>,
    /// Whether this node is itself the target of a `#` edge (and so may swallow key words).
    is_hash: bool,
    /// Destinations bound with the pattern that ends at this node.
    dests: HashSet<T>,
}

impl<T> Node<T> {
    fn new(is_hash: bool, hasher: &WordHashBuilder) -> Self {
        Node {
            literal: HashMap::with_hasher(hasher.clone()),
            star: None,
            hash: None,
            is_hash,
            dests: HashSet::new(),
        }
    }

    fn is_unused(&self) -> bool {
        self.dests.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    fn child(&self, word: Word<'_>) -> Option<usize> {
        match word {
            Word::Literal(w) => self.literal.get(w).copied(),
            Word::Star => self.star,
            Word::Hash => self.hash,
        }
    }
}

/// The bindings of one topic exchange: `(pattern, destination)` pairs in a word trie.
#[derive(Debug)]
pub struct TopicTrie<T> {
    nodes: Vec<Node<T>>,
    /// Arena slots of pruned nodes, reused by later inserts.
    free: Vec<usize>,
    bindings: usize,
    hasher: WordHashBuilder,
}

impl<T: Clone + Eq + Hash> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        let hasher = WordHashBuilder::random();
        TopicTrie {
            nodes: vec![Node::new(false, &hasher)],
            free: Vec::new(),
            bindings: 0,
            hasher,
        }
    }

    /// Number of `(pattern, destination)` bindings held.
    pub fn len(&self) -> usize {
        self.bindings
    }

    /// Whether no binding is held.
    pub fn is_empty(&self) -> bool {
        self.bindings == 0
    }

    /// Binds `dest` with `pattern`. Returns `false` (and changes nothing) if exactly that
    /// `(pattern, dest)` pair was already bound.
    pub fn insert(&mut self, pattern: &str, dest: T) -> bool {
        let mut cur = ROOT;
        for w in split_words(pattern) {
            let word = Word::of(w);
            cur = match self.nodes[cur].child(word) {
                Some(next) => next,
                None => {
                    let next = self.alloc(matches!(word, Word::Hash));
                    let parent = &mut self.nodes[cur];
                    match word {
                        Word::Literal(w) => {
                            parent.literal.insert(w.into(), next);
                        }
                        Word::Star => parent.star = Some(next),
                        Word::Hash => parent.hash = Some(next),
                    }
                    next
                }
            };
        }
        let added = self.nodes[cur].dests.insert(dest);
        if added {
            self.bindings += 1;
        }
        added
    }

    /// Unbinds `dest` from `pattern`. Returns `false` if that pair was not bound. Trie nodes
    /// left without bindings or children are pruned.
    pub fn remove(&mut self, pattern: &str, dest: &T) -> bool {
        // (parent, word, child) for each step down the pattern's path.
        let mut path: Vec<(usize, Word<'_>, usize)> = Vec::new();
        let mut cur = ROOT;
        for w in split_words(pattern) {
            let word = Word::of(w);
            match self.nodes[cur].child(word) {
                Some(next) => {
                    path.push((cur, word, next));
                    cur = next;
                }
                None => return false,
            }
        }
        if !self.nodes[cur].dests.remove(dest) {
            return false;
        }
        self.bindings -= 1;
        for (parent, word, child) in path.into_iter().rev() {
            if !self.nodes[child].is_unused() {
                break;
            }
            let p = &mut self.nodes[parent];
            match word {
                Word::Literal(w) => {
                    p.literal.remove(w);
                }
                Word::Star => p.star = None,
                Word::Hash => p.hash = None,
            }
            // Drop the slot's allocations and keep it for reuse.
            self.nodes[child] = Node::new(false, &self.hasher);
            self.free.push(child);
        }
        true
    }

    /// Pushes onto `out` every destination bound with a pattern that matches `routing_key`,
    /// each destination at most once per call. Existing contents of `out` are left alone (and
    /// are not considered when deduplicating).
    pub fn route(&self, routing_key: &str, out: &mut Vec<T>) {
        let (mut live, mut next) = SCRATCH.take();
        self.route_with(routing_key, &mut live, &mut next, out);
        live.clear();
        next.clear();
        SCRATCH.set((live, next));
    }

    fn route_with(
        &self,
        routing_key: &str,
        live: &mut Vec<usize>,
        next: &mut Vec<usize>,
        out: &mut Vec<T>,
    ) {
        live.clear();
        live.push(ROOT);
        self.close_over_hash(live);
        for word in split_words(routing_key) {
            next.clear();
            for &id in live.iter() {
                let node = &self.nodes[id];
                if let Some(c) = node.literal.get(word) {
                    next.push(*c);
                }
                if let Some(c) = node.star {
                    next.push(c);
                }
                if node.is_hash {
                    // `#` swallows this word and stays put.
                    next.push(id);
                }
            }
            self.close_over_hash(next);
            std::mem::swap(live, next);
            if live.is_empty() {
                return;
            }
        }
        self.collect(live, out);
    }

    /// Deduplicates `states`, then adds the `#` children reachable from them without consuming
    /// a word (`#` matching zero words, repeatedly for `#.#`). The result has no duplicates.
    fn close_over_hash(&self, states: &mut Vec<usize>) {
        if states.len() > 1 {
            states.sort_unstable();
            states.dedup();
        }
        let base = states.len();
        for i in 0..base {
            let mut hash = self.nodes[states[i]].hash;
            while let Some(h) = hash {
                // A chain that reaches another base state is walked from that state instead.
                // The trie is a tree, so chains from distinct bases never otherwise meet.
                if states[..base].binary_search(&h).is_ok() {
                    break;
                }
                states.push(h);
                hash = self.nodes[h].hash;
            }
        }
    }

    /// Pushes the destinations of the matched (duplicate-free) `states`, deduplicating across
    /// nodes only when more than one matched node has bindings.
    fn collect(&self, states: &[usize], out: &mut Vec<T>) {
        let mut bound = states
            .iter()
            .map(|&id| &self.nodes[id].dests)
            .filter(|d| !d.is_empty());
        let Some(first) = bound.next() else {
            return;
        };
        let Some(second) = bound.next() else {
            out.extend(first.iter().cloned());
            return;
        };
        let rest: Vec<&HashSet<T>> = bound.collect();
        let total = first.len() + second.len() + rest.iter().map(|d| d.len()).sum::<usize>();
        let all = [first, second].into_iter().chain(rest);
        if total <= SMALL_DEDUP {
            // Few candidates: a linear scan of what this call pushed beats hashing.
            let start = out.len();
            for dests in all {
                for d in dests {
                    if !out[start..].contains(d) {
                        out.push(d.clone());
                    }
                }
            }
            return;
        }
        let mut seen: HashSet<&T> = HashSet::with_capacity(total);
        for dests in all {
            for d in dests {
                if seen.insert(d) {
                    out.push(d.clone());
                }
            }
        }
    }

    fn alloc(&mut self, is_hash: bool) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.nodes[id].is_hash = is_hash;
                id
            }
            None => {
                self.nodes.push(Node::new(is_hash, &self.hasher));
                self.nodes.len() - 1
            }
        }
    }
}

/// The topic exchange's router: the trie holds each `(pattern, destination)` once; bindings
/// that differ only in their arguments are counted.
#[derive(Debug, Default)]
pub(super) struct TopicRouter {
    trie: TopicTrie<super::Destination>,
    counts: HashMap<(Box<str>, super::Destination), u32>,
}

impl super::Router for TopicRouter {
    fn add(&mut self, dest: &super::Destination, key: &str, _args: &super::proto::FieldTable) {
        let n = self.counts.entry((key.into(), dest.clone())).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.trie.insert(key, dest.clone());
        }
    }

    fn remove(&mut self, dest: &super::Destination, key: &str, _args: &super::proto::FieldTable) {
        let k = (Box::<str>::from(key), dest.clone());
        if let Some(n) = self.counts.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&k);
                self.trie.remove(key, dest);
            }
        }
    }

    fn route(&self, m: &super::Routable<'_>, out: &mut Vec<super::Destination>) {
        self.trie.route(m.routing_key, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn routed(trie: &TopicTrie<&'static str>, key: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        trie.route(key, &mut out);
        out.sort_unstable();
        out
    }

    fn trie_of(bindings: &[(&str, &'static str)]) -> TopicTrie<&'static str> {
        let mut t = TopicTrie::new();
        for &(p, d) in bindings {
            assert!(t.insert(p, d), "duplicate in fixture: {p} -> {d}");
        }
        t
    }

    /// Nodes in use (the root included).
    fn live_nodes<T>(t: &TopicTrie<T>) -> usize {
        t.nodes.len() - t.free.len()
    }

    /// Reference matcher: plain recursion over word lists, the textbook definition.
    fn ref_match(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|i| ref_match(rest, &key[i..])),
            Some((&"*", rest)) => !key.is_empty() && ref_match(rest, &key[1..]),
            Some((w, rest)) => key.first() == Some(w) && ref_match(rest, &key[1..]),
        }
    }

    fn ref_words(s: &str) -> Vec<&str> {
        split_words(s).collect()
    }

    #[test]
    fn rabbitmq_tutorial_examples() {
        // Tutorial 5: Q1 binds `*.orange.*`, Q2 binds `*.*.rabbit` and `lazy.#`.
        let t = trie_of(&[("*.orange.*", "Q1"), ("*.*.rabbit", "Q2"), ("lazy.#", "Q2")]);
        assert_eq!(t.len(), 3);
        assert_eq!(routed(&t, "quick.orange.rabbit"), ["Q1", "Q2"]);
        assert_eq!(routed(&t, "lazy.orange.elephant"), ["Q1", "Q2"]);
        assert_eq!(routed(&t, "quick.orange.fox"), ["Q1"]);
        assert_eq!(routed(&t, "lazy.brown.fox"), ["Q2"]);
        // Matches both of Q2's bindings, delivered once.
        assert_eq!(routed(&t, "lazy.pink.rabbit"), ["Q2"]);
        assert!(routed(&t, "quick.brown.fox").is_empty());
        assert!(routed(&t, "orange").is_empty());
        assert!(routed(&t, "quick.orange.new.rabbit").is_empty());
        assert_eq!(routed(&t, "lazy.orange.new.rabbit"), ["Q2"]);
    }

    #[test]
    fn empty_key_is_zero_words() {
        let t = trie_of(&[
            ("", "empty"),
            ("#", "hash"),
            ("*", "star"),
            ("#.#", "hashhash"),
            ("#.*", "hashstar"),
        ]);
        assert_eq!(routed(&t, ""), ["empty", "hash", "hashhash"]);
        // "." is two empty words.
        assert_eq!(routed(&t, "."), ["hash", "hashhash", "hashstar"]);
        assert_eq!(routed(&t, "x"), ["hash", "hashhash", "hashstar", "star"]);
    }

    #[test]
    fn empty_words_are_words() {
        let t = trie_of(&[
            ("a..b", "exact"),
            ("a.*.b", "star"),
            ("a.b", "short"),
            ("a.#.b", "hash"),
            ("*.*.*", "three"),
            ("a.", "trailing"),
            (".a", "leading"),
        ]);
        assert_eq!(routed(&t, "a..b"), ["exact", "hash", "star", "three"]);
        assert_eq!(routed(&t, "a.b"), ["hash", "short"]);
        assert_eq!(routed(&t, "a."), ["trailing"]);
        assert_eq!(routed(&t, ".a"), ["leading"]);
        assert!(routed(&t, "a").is_empty());
        assert_eq!(routed(&t, ".."), ["three"]);
    }

    #[test]
    fn hash_followed_by_words() {
        let t = trie_of(&[
            ("a.#.c", "a#c"),
            ("#.c", "#c"),
            ("#.*", "#*"),
            ("*.#", "*#"),
            ("#.a.#", "#a#"),
            ("#.#.c", "##c"),
        ]);
        assert_eq!(routed(&t, "a.c"), ["##c", "#*", "#a#", "#c", "*#", "a#c"]);
        assert_eq!(
            routed(&t, "a.b.b.c"),
            ["##c", "#*", "#a#", "#c", "*#", "a#c"]
        );
        assert_eq!(routed(&t, "a.c.d"), ["#*", "#a#", "*#"]);
        assert_eq!(routed(&t, "c"), ["##c", "#*", "#c", "*#"]);
        assert_eq!(routed(&t, "b.a"), ["#*", "#a#", "*#"]);
        assert!(routed(&t, "").is_empty());
    }

    #[test]
    fn hash_alone_matches_everything() {
        let t = trie_of(&[("#", "all")]);
        for key in ["", ".", "a", "a.b.c", "..", "#", "*"] {
            assert_eq!(routed(&t, key), ["all"], "key {key:?}");
        }
    }

    #[test]
    fn key_words_are_literal() {
        let t = trie_of(&[("a.*", "star"), ("a.x", "x")]);
        assert_eq!(routed(&t, "a.*"), ["star"]);
        assert_eq!(routed(&t, "a.#"), ["star"]);
        assert!(routed(&t, "a.b.c").is_empty());
    }

    #[test]
    fn deep_hash_chain_is_polynomial() {
        let pattern = vec!["#"; 60].join(".");
        let key = vec!["w"; 120].join(".");
        let t = trie_of(&[(&pattern, "deep"), ("#.w.#.w.#.v", "never")]);
        assert_eq!(routed(&t, &key), ["deep"]);
    }

    #[test]
    fn insert_and_remove_bookkeeping() {
        let mut t: TopicTrie<u32> = TopicTrie::default();
        assert!(t.is_empty());
        assert!(t.insert("a.b", 1));
        assert!(!t.insert("a.b", 1), "same pair twice");
        assert!(t.insert("a.b", 2));
        assert!(t.insert("a.#", 1));
        assert_eq!(t.len(), 3);
        let mut out = vec![99];
        t.route("a.b", &mut out);
        out[1..].sort_unstable();
        assert_eq!(out, [99, 1, 2], "out is appended to, dest 1 once");

        assert!(!t.remove("a.b", &3), "unknown dest");
        assert!(!t.remove("a.c", &1), "unknown pattern");
        assert!(!t.remove("a", &1), "prefix of a pattern");
        assert!(t.remove("a.b", &1));
        assert!(!t.remove("a.b", &1), "already removed");
        assert_eq!(t.len(), 2);
        let mut out = Vec::new();
        t.route("a.b", &mut out);
        out.sort_unstable();
        assert_eq!(out, [1, 2]);

        assert!(t.remove("a.b", &2));
        assert!(t.remove("a.#", &1));
        assert!(t.is_empty());
        assert_eq!(live_nodes(&t), 1, "all but the root pruned");
        let mut out = Vec::new();
        t.route("a.b", &mut out);
        assert!(out.is_empty());

        // Freed slots are reused and pruning keeps shared prefixes.
        assert!(t.insert("x.y.z", 7));
        assert!(t.insert("x.y", 8));
        assert_eq!(t.nodes.len(), 4);
        assert!(t.remove("x.y.z", &7));
        assert_eq!(live_nodes(&t), 3);
        let mut out = Vec::new();
        t.route("x.y", &mut out);
        assert_eq!(out, [8]);
    }

    #[test]
    fn dedup_across_many_nodes() {
        // Enough candidates to take the HashSet path, overlapping across four matched nodes.
        let mut t = TopicTrie::new();
        for d in 0..40u32 {
            assert!(t.insert("a.b", d));
            assert!(t.insert("a.*", d + 20));
        }
        for d in 0..7u32 {
            assert!(t.insert("#", d));
        }
        assert!(t.insert("#.b", 100));
        let mut out = Vec::new();
        t.route("a.b", &mut out);
        out.sort_unstable();
        let want: Vec<u32> = (0..60).chain([100]).collect();
        assert_eq!(out, want);
        // Small path with overlap, appended after existing contents.
        let t = trie_of(&[("x.#", "q1"), ("x.y", "q1"), ("#.y", "q2"), ("*.y", "q2")]);
        let mut out = vec!["q1"];
        t.route("x.y", &mut out);
        out[1..].sort_unstable();
        assert_eq!(out, ["q1", "q1", "q2"]);
    }

    #[test]
    fn word_hasher_separates_similar_words() {
        let b = WordHashBuilder { seed: 7 };
        let h = |w: &str| b.hash_one(w);
        assert_ne!(h("a"), h("a\0"));
        assert_ne!(h(""), h("\0"));
        assert_ne!(h("abcdefgh"), h("abcdefgh\0"));
        assert_eq!(h("orders"), h("orders"));
    }

    #[test]
    fn empty_pattern_binds_at_root() {
        let mut t = TopicTrie::new();
        assert!(t.insert("", 1u8));
        let mut out = Vec::new();
        t.route("", &mut out);
        assert_eq!(out, [1]);
        out.clear();
        t.route("a", &mut out);
        assert!(out.is_empty());
        assert!(t.remove("", &1));
        assert!(t.is_empty());
        assert_eq!(live_nodes(&t), 1);
    }

    #[test]
    fn many_bindings() {
        let mut t = TopicTrie::new();
        for n in 0..10_000u32 {
            assert!(t.insert(&format!("region.{n}.*.orders"), n));
        }
        assert!(t.insert("#.audit", 1_000_000));
        assert_eq!(t.len(), 10_001);
        let mut out = Vec::new();
        t.route("region.42.eu.orders", &mut out);
        assert_eq!(out, [42]);
        out.clear();
        t.route("region.42.eu.audit", &mut out);
        assert_eq!(out, [1_000_000]);
        out.clear();
        t.route("region.x.eu.orders", &mut out);
        assert!(out.is_empty());
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "*", "#"]), 0..6)
            .prop_map(|w| w.join("."))
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "c", "*"]), 0..7)
            .prop_map(|w| w.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn trie_agrees_with_reference(
            bindings in prop::collection::vec((pattern_strategy(), 0u8..6), 0..24),
            keys in prop::collection::vec(key_strategy(), 1..12),
        ) {
            let mut t = TopicTrie::new();
            let mut model: BTreeSet<(String, u8)> = BTreeSet::new();
            for (p, d) in &bindings {
                prop_assert_eq!(t.insert(p, *d), model.insert((p.clone(), *d)));
            }
            prop_assert_eq!(t.len(), model.len());
            for key in &keys {
                let mut got = Vec::new();
                t.route(key, &mut got);
                let n = got.len();
                let got: BTreeSet<u8> = got.into_iter().collect();
                prop_assert_eq!(n, got.len(), "duplicate destination for {:?}", key);
                let kw = ref_words(key);
                let want: BTreeSet<u8> = model
                    .iter()
                    .filter(|(p, _)| ref_match(&ref_words(p), &kw))
                    .map(|(_, d)| *d)
                    .collect();
                prop_assert_eq!(got, want, "key {:?}", key);
            }
        }

        #[test]
        fn removal_agrees_with_reference(
            ops in prop::collection::vec((any::<bool>(), pattern_strategy(), 0u8..4), 0..60),
            keys in prop::collection::vec(key_strategy(), 1..8),
        ) {
            let mut t = TopicTrie::new();
            let mut model: BTreeSet<(String, u8)> = BTreeSet::new();
            for (add, p, d) in &ops {
                if *add {
                    prop_assert_eq!(t.insert(p, *d), model.insert((p.clone(), *d)));
                } else {
                    prop_assert_eq!(t.remove(p, d), model.remove(&(p.clone(), *d)));
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for key in &keys {
                let mut got = Vec::new();
                t.route(key, &mut got);
                got.sort_unstable();
                let kw = ref_words(key);
                let want: Vec<u8> = model
                    .iter()
                    .filter(|(p, _)| ref_match(&ref_words(p), &kw))
                    .map(|(_, d)| *d)
                    .collect::<BTreeSet<u8>>()
                    .into_iter()
                    .collect();
                prop_assert_eq!(got, want, "key {:?}", key);
            }
            // Removing everything prunes the trie back to its root.
            for (p, d) in &model {
                prop_assert!(t.remove(p, d));
            }
            prop_assert!(t.is_empty());
            prop_assert_eq!(live_nodes(&t), 1);
        }
    }
}
