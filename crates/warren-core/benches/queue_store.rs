//! Queue and store micro-benchmarks: enqueue/dequeue/ack through a queue (the `basic.get` path,
//! no network), and segment-store appends with group commit (fsync per round).
//!
//! `cargo bench -p warren-core --bench queue_store -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use warren_codec::proto::{AMQPProperties, FieldTable};
use warren_core::clock::Clock;
use warren_core::message::Message;
use warren_core::queue::memory_sink::MemorySink;
use warren_core::queue::timers::Timers;
use warren_core::queue::{
    self, Got, QueueArgs, QueueInfo, QueueOptions, QueueRef, Services, Settle, Waiter,
};
use warren_core::store::segment::SegmentStore;
use warren_core::store::sync::Syncer;
use warren_core::store::MessageStore;

fn message(body: usize) -> Arc<Message> {
    Arc::new(Message::new(
        "".into(),
        "q",
        &AMQPProperties::default(),
        Bytes::from_static(&[0, 0]),
        Bytes::from(vec![7u8; body]),
    ))
}

fn queue() -> QueueRef {
    let info = QueueInfo {
        name: "q".into(),
        vhost: "/".into(),
        options: QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        },
        args: QueueArgs::default(),
        policy: warren_core::queue::PolicyCell::new(warren_core::policy::Applied::none(
            QueueArgs::default(),
        )),
        store_dir: None,
        stats: Default::default(),
    };
    let services = Services {
        timers: Timers::new(Clock::System),
        pager: None,
        clock: Clock::System,
        compat: Default::default(),
    };
    queue::create(info, queue::Backing::None, &services, 1)
}

fn bench_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1000));
    let m = message(16);
    g.bench_function("publish_get_ack_1000x16B", |b| {
        let q = queue();
        let waiter = Waiter {
            sink: MemorySink::new(),
            channel: 1,
        };
        b.iter(|| {
            for _ in 0..1000 {
                let _ = q.publish(m.clone(), 1);
            }
            let mut got = Vec::with_capacity(1000);
            while let Got::Message(msg, _) = q.get(false, 1, &waiter) {
                got.push(msg);
            }
            q.settle(black_box(got), Settle::Ack, 1);
        })
    });
    g.finish();
}

fn bench_store(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment_store");
    g.sample_size(10);
    for (name, size) in [
        ("append_1000x16B_group_commit", 16usize),
        ("append_1000x1KiB_group_commit", 1024),
    ] {
        g.throughput(Throughput::Elements(1000));
        let m = message(size);
        g.bench_function(name, |b| {
            let dir = tempfile::tempdir().expect("tempdir");
            let syncer = Syncer::start().expect("sync thread");
            let store =
                SegmentStore::open(dir.path(), syncer.clone(), 16 * 1024 * 1024, 0).expect("store");
            let mut id = 0u64;
            b.iter_batched(
                || (),
                |_| {
                    for _ in 0..1000 {
                        store.append(id, &m, 0);
                        id += 1;
                    }
                    // Waits for the round(s) covering these appends: durable on return.
                    syncer.barrier();
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_queue, bench_store);
criterion_main!(benches);
