//! Codec micro-benchmarks: decoding a publish (method + header + body, through the assembler)
//! and encoding a delivery, with 16 B and 64 KiB bodies.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warren_codec::encode::{encode_content, encode_delivery};
use warren_codec::proto::{basic, AMQPClass};
use warren_codec::{decode_frame, Command, ContentAssembler, Frame};

const FRAME_MAX: u32 = 131_072;
/// content-type "application/octet-stream", delivery-mode 2, a small headers table.
fn raw_properties() -> Vec<u8> {
    let mut headers = warren_codec::proto::FieldTable::default();
    headers.insert(
        "x-trace".into(),
        warren_codec::proto::AMQPValue::LongString(b"abc123".to_vec().into()),
    );
    let props = basic::AMQPProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    let ctx = amq_protocol::protocol::basic::gen_properties(&props)(
        amq_protocol::frame::WriteContext::from(Vec::new()),
    )
    .expect("properties encode");
    ctx.write
}

fn publish_bytes(body: &[u8]) -> Bytes {
    let method = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "amq.direct".into(),
        routing_key: "bench.queue".into(),
        mandatory: false,
        immediate: false,
    }));
    let mut out = BytesMut::new();
    encode_content(&mut out, 1, &method, &raw_properties(), body, FRAME_MAX);
    out.freeze()
}

fn decode_publish(buf: &mut BytesMut, asm: &mut ContentAssembler) -> Option<Command> {
    let mut cmd = None;
    while let Some(f) = decode_frame(buf, FRAME_MAX).expect("valid") {
        cmd = match f {
            Frame::Method { method, .. } => asm.handle_method(method),
            Frame::Header { header, .. } => asm.handle_header(header),
            Frame::Body { payload, .. } => asm.handle_body(payload),
            Frame::Heartbeat => Ok(None),
        }
        .expect("assembles");
    }
    cmd
}

fn bench(c: &mut Criterion) {
    let props = raw_properties();
    for (name, size) in [("16B", 16usize), ("64KiB", 64 * 1024)] {
        let body: Vec<u8> = (0..size).map(|i| i as u8).collect();

        let wire = publish_bytes(&body);
        let mut g = c.benchmark_group("decode_publish");
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(name, |b| {
            let mut asm = ContentAssembler::new();
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| black_box(decode_publish(&mut buf, &mut asm)),
                BatchSize::SmallInput,
            )
        });
        g.finish();

        let mut g = c.benchmark_group("encode_delivery");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            let mut out = BytesMut::with_capacity(body.len() + 1024);
            let mut tag = 0u64;
            b.iter(|| {
                out.clear();
                tag += 1;
                encode_delivery(
                    &mut out,
                    1,
                    "amq.ctag-bench",
                    tag,
                    false,
                    "amq.direct",
                    "bench.queue",
                    black_box(&props),
                    black_box(&body),
                    FRAME_MAX,
                );
                black_box(out.len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
