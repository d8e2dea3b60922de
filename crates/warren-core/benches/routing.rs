//! Routing matcher benchmarks: topic trie with 10,000 bindings, and a 5-argument headers match.
//!
//! Run briefly with:
//! `cargo bench -p warren-core --bench routing -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use warren_codec::proto::{AMQPValue, FieldTable, LongString, ShortString};
use warren_core::exchange::headers::{headers_match, XMatch};
use warren_core::exchange::topic::TopicTrie;

/// 10,000 bindings: 7,000 `region.<n>.*.orders`, 2,990 `*.<n>.#`, 10 `#.audit`.
fn topic_trie() -> TopicTrie<u32> {
    let mut t = TopicTrie::new();
    for n in 0..7_000u32 {
        t.insert(&format!("region.{n}.*.orders"), n);
    }
    for n in 0..2_990u32 {
        t.insert(&format!("*.{n}.#"), 10_000 + n);
    }
    for n in 0..10u32 {
        t.insert("#.audit", 20_000 + n);
    }
    assert_eq!(t.len(), 10_000);
    t
}

fn bench_topic(c: &mut Criterion) {
    let trie = topic_trie();
    let cases: &[(&str, &str, usize)] = &[
        // region.42.*.orders + *.42.#
        ("match_2", "region.42.eu.orders", 2),
        // *.42.# + ten #.audit
        ("match_11", "region.42.eu.audit", 11),
        // region.6500.*.orders only (6500 has no *.<n>.# binding)
        ("match_1", "region.6500.us.orders", 1),
        ("miss_4_words", "region.99999.eu.orders", 0),
        ("miss_1_word", "heartbeat", 0),
        ("miss_8_words", "a.b.c.d.e.f.g.h", 0),
    ];
    let mut group = c.benchmark_group("topic_10k");
    for &(name, key, expect) in cases {
        let mut out = Vec::with_capacity(16);
        trie.route(key, &mut out);
        assert_eq!(out.len(), expect, "{key}");
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                trie.route(black_box(key), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn bench_headers(c: &mut Criterion) {
    let binding = table(&[
        ("x-match", s("all")),
        ("format", s("pdf")),
        ("type", s("report")),
        ("region", s("eu")),
        ("priority", AMQPValue::LongInt(5)),
        ("signed", AMQPValue::Void),
    ]);
    let matching = table(&[
        ("format", s("pdf")),
        ("type", s("report")),
        ("region", s("eu")),
        ("priority", AMQPValue::ShortShortUInt(5)),
        ("signed", AMQPValue::Boolean(true)),
        ("trace-id", s("0123456789abcdef")),
    ]);
    let last_differs = table(&[
        ("format", s("pdf")),
        ("type", s("report")),
        ("region", s("us")),
        ("priority", AMQPValue::LongInt(5)),
        ("signed", AMQPValue::Boolean(true)),
    ]);
    let mut group = c.benchmark_group("headers_5");
    let cases: &[(&str, XMatch, &FieldTable, bool)] = &[
        ("all_match", XMatch::All, &matching, true),
        ("all_miss", XMatch::All, &last_differs, false),
        ("any_match", XMatch::Any, &last_differs, true),
    ];
    for &(name, mode, headers, expect) in cases {
        assert_eq!(headers_match(mode, &binding, Some(headers)), expect);
        group.bench_function(name, |b| {
            b.iter(|| {
                headers_match(
                    black_box(mode),
                    black_box(&binding),
                    black_box(Some(headers)),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_topic, bench_headers);
criterion_main!(benches);
