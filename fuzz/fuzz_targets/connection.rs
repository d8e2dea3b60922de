//! A whole AMQP connection, driven in process: warren-core's real connection code
//! (`server::serve_connection`, the same loop TCP and TLS clients get) against a fresh
//! in-memory broker, over a `tokio::io::duplex` pipe.
//!
//! The first input byte picks the mode and the rest is the client's byte stream:
//! - `mode % 4 == 0`: raw, protocol header included (the handshake is the fuzzer's to find);
//! - `mode % 4 == 1`: the handshake is done for it (protocol header, start-ok PLAIN
//!   guest/guest, tune-ok, open `/`), then raw bytes;
//! - otherwise: the handshake, then *structured* frames built from the input: well-formed
//!   methods of every class a client sends (names, flags and `x-` arguments picked from small
//!   tables so that they meet), content headers and bodies in and out of place, heartbeats and
//!   raw frames, on channels 0-3.
//!
//! Bit 2 of the mode writes the stream in small pieces instead of at once; bit 3 negotiates
//! frame_max 4096 instead of 131072. The client reads (and drops) everything the broker sends,
//! then closes its side; the connection task must end (within [`warren_fuzz::EXEC_LIMIT`])
//! without a panic, and the broker must still take a connection and a queue declaration.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warren_codec::encode::{encode_body, encode_content_header, encode_heartbeat, encode_method};
use warren_codec::proto::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, AMQPProperties, AMQPValue,
    FieldTable, LongString, ShortString,
};
use warren_codec::PROTOCOL_HEADER;
use warren_core::Broker;
use warren_fuzz::{runtime, Bytes, EXEC_LIMIT};

const NAMES: &[&str] = &[
    "",
    "q",
    "q2",
    "x",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.match",
    "amq.rabbitmq.reply-to",
    "amq.rabbitmq.event",
    "amq.gen-1",
    "dlx",
    "a.b",
    "#",
    "*.b",
];

const KINDS: &[&str] = &[
    "direct",
    "fanout",
    "topic",
    "headers",
    "x-consistent-hash",
    "x-delayed-message",
    "x-local-random",
    "x-modulus-hash",
];

const ARG_KEYS: &[&str] = &[
    "x-queue-type",
    "x-max-length",
    "x-max-length-bytes",
    "x-message-ttl",
    "x-expires",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-mode",
    "x-delivery-limit",
    "x-dead-letter-strategy",
    "x-delayed-type",
    "x-priority",
    "x-stream-offset",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-match",
    "x-deduplication-header",
    "x-cache-size",
    "x-message-deduplication",
    "hash-header",
    "alternate-exchange",
    "x-cancel-on-ha-failover",
    "x-credit",
];

const STR_VALUES: &[&str] = &[
    "quorum",
    "stream",
    "classic",
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "lazy",
    "at-least-once",
    "at-most-once",
    "direct",
    "topic",
    "first",
    "last",
    "next",
    "all",
    "any",
    "1D",
    "10s",
    "dlx",
    "",
];

fn short(s: String) -> ShortString {
    ShortString::from(s)
}

fn value(b: &mut Bytes, depth: u8) -> AMQPValue {
    match b.u8() % 12 {
        0 => AMQPValue::LongString(LongString::from(b.pick_str(STR_VALUES).into_bytes())),
        1 => AMQPValue::ShortString(short(b.pick_str(STR_VALUES))),
        2 => AMQPValue::LongInt(i32::from(b.u8() as i8) * 1000),
        3 => AMQPValue::LongInt(i32::from(b.u8())),
        4 => AMQPValue::LongLongInt(b.u64() as i64),
        5 => AMQPValue::Boolean(b.bool()),
        6 => AMQPValue::ShortShortUInt(b.u8()),
        7 => AMQPValue::Double(f64::from(b.u8() as i8) / 2.0),
        8 => AMQPValue::Void,
        9 if depth < 2 => AMQPValue::FieldTable(table(b, depth + 1)),
        10 => AMQPValue::Timestamp(b.u64()),
        _ => AMQPValue::ShortInt(b.u16() as i16),
    }
}

fn table(b: &mut Bytes, depth: u8) -> FieldTable {
    let mut t = FieldTable::default();
    for _ in 0..b.u8() % 4 {
        let k = b.pick_str(ARG_KEYS);
        let v = value(b, depth);
        t.insert(short(k), v);
    }
    t
}

fn name(b: &mut Bytes) -> ShortString {
    short(b.pick_str(NAMES))
}

fn properties(b: &mut Bytes) -> Vec<u8> {
    let flags = b.u16();
    let mut p = AMQPProperties::default();
    if flags & 1 != 0 {
        p = p.with_delivery_mode(b.u8() % 4);
    }
    if flags & 2 != 0 {
        p = p.with_priority(b.u8() % 16);
    }
    if flags & 4 != 0 {
        let e = b.pick_str(&["0", "1", "100", "60000", "-1", "x", "99999999999999999999"]);
        p = p.with_expiration(short(e));
    }
    if flags & 8 != 0 {
        p = p.with_headers(table(b, 0));
    }
    if flags & 16 != 0 {
        p = p.with_reply_to(name(b));
    }
    if flags & 32 != 0 {
        p = p.with_user_id(short(b.pick_str(&["guest", "other", ""])));
    }
    if flags & 64 != 0 {
        p = p.with_message_id(short(b.pick_str(&["m1", "m2", ""])));
    }
    if flags & 128 != 0 {
        p = p.with_correlation_id(name(b));
    }
    if flags & 256 != 0 {
        p = p.with_timestamp(b.u64());
    }
    if flags & 512 != 0 {
        p = p.with_content_type(short(b.pick_str(&["text/plain", "application/json"])));
    }
    warren_codec::encode_properties(&p)
}

fn content(out: &mut BytesMut, ch: u16, b: &mut Bytes, frame_max: u32, header: bool) {
    let len = usize::from(b.u8()) * usize::from(b.u8() % 4 + 1) * 8;
    let raw = properties(b);
    // Mostly the body size the header announces; sometimes another one.
    let announced = match b.u8() % 8 {
        0 => len as u64 + 1,
        1 => 0,
        _ => len as u64,
    };
    if header {
        encode_content_header(out, ch, 60, announced, &raw);
    }
    let body = vec![b'x'; len];
    encode_body(out, ch, &body, frame_max);
}

fn method(b: &mut Bytes) -> Option<AMQPClass> {
    use AMQPClass as C;
    let m = match b.u8() % 34 {
        0 => C::Channel(channel::AMQPMethod::Open(channel::Open {})),
        1 => C::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: short("bye".into()),
            class_id: 0,
            method_id: 0,
        })),
        2 => C::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        3 => C::Channel(channel::AMQPMethod::Flow(channel::Flow {
            active: b.bool(),
        })),
        4 => C::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name(b),
            kind: short(b.pick_str(KINDS)),
            passive: b.u8() % 4 == 0,
            durable: b.bool(),
            auto_delete: b.bool(),
            internal: b.u8() % 4 == 0,
            nowait: b.bool(),
            arguments: table(b, 0),
        })),
        5 => C::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name(b),
            if_unused: b.bool(),
            nowait: b.bool(),
        })),
        6 => C::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: name(b),
            source: name(b),
            routing_key: name(b),
            nowait: b.bool(),
            arguments: table(b, 0),
        })),
        7 => C::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
            destination: name(b),
            source: name(b),
            routing_key: name(b),
            nowait: b.bool(),
            arguments: table(b, 0),
        })),
        8 | 9 => C::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name(b),
            passive: b.u8() % 4 == 0,
            durable: b.bool(),
            exclusive: b.bool(),
            auto_delete: b.bool(),
            nowait: b.bool(),
            arguments: table(b, 0),
        })),
        10 => C::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: name(b),
            exchange: name(b),
            routing_key: name(b),
            nowait: b.bool(),
            arguments: table(b, 0),
        })),
        11 => C::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: name(b),
            exchange: name(b),
            routing_key: name(b),
            arguments: table(b, 0),
        })),
        12 => C::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: name(b),
            nowait: b.bool(),
        })),
        13 => C::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name(b),
            if_unused: b.bool(),
            if_empty: b.bool(),
            nowait: b.bool(),
        })),
        14 => C::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: u16::from(b.u8() % 8),
            global: b.bool(),
        })),
        15 | 16 => C::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: name(b),
            consumer_tag: short(b.pick_str(&["", "c1", "c2"])),
            no_local: b.u8() % 4 == 0,
            no_ack: b.bool(),
            exclusive: b.u8() % 4 == 0,
            nowait: b.bool(),
            arguments: table(b, 0),
        })),
        17 => C::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: short(b.pick_str(&["", "c1", "c2"])),
            nowait: b.bool(),
        })),
        18..=21 => C::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: name(b),
            routing_key: name(b),
            mandatory: b.bool(),
            immediate: b.u8() % 8 == 0,
        })),
        22 => C::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: name(b),
            no_ack: b.bool(),
        })),
        23 => C::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: u64::from(b.u8() % 8),
            multiple: b.bool(),
        })),
        24 => C::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: u64::from(b.u8() % 8),
            requeue: b.bool(),
        })),
        25 => C::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: u64::from(b.u8() % 8),
            multiple: b.bool(),
            requeue: b.bool(),
        })),
        26 => C::Basic(basic::AMQPMethod::Recover(basic::Recover {
            requeue: b.bool(),
        })),
        27 => C::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
            requeue: b.bool(),
        })),
        28 => C::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: b.bool(),
        })),
        29 => C::Tx(tx::AMQPMethod::Select(tx::Select {})),
        30 => C::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
        31 => C::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        32 => C::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: short("bye".into()),
            class_id: 0,
            method_id: 0,
        })),
        _ => return None,
    };
    Some(m)
}

/// Frames built from the input (see the module doc).
fn structured(out: &mut BytesMut, b: &mut Bytes, frame_max: u32) {
    while !b.is_empty() && out.len() < 1 << 20 {
        let op = b.u8();
        let ch = u16::from(op >> 6);
        match op % 8 {
            // Mostly methods; publishes get their content.
            0..=4 => match method(b) {
                Some(m @ AMQPClass::Basic(basic::AMQPMethod::Publish(_))) => {
                    encode_method(out, ch, &m);
                    let with_header = b.u8() % 16 != 0;
                    content(out, ch, b, frame_max, with_header);
                }
                Some(m) => encode_method(out, ch, &m),
                None => encode_heartbeat(out),
            },
            5 => content(out, ch, b, frame_max, true),
            6 => content(out, ch, b, frame_max, false),
            _ => {
                // A raw frame: any type and channel, any payload, a correct frame end.
                let kind = b.u8() % 10;
                let channel = b.u16();
                let n = usize::from(b.u8());
                let payload = b.take(n);
                out.extend_from_slice(&[kind]);
                out.extend_from_slice(&channel.to_be_bytes());
                out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(&[0xCE]);
            }
        }
    }
}

/// The client side of the handshake up to `connection.open` of `/`, pipelined.
fn handshake(out: &mut BytesMut, frame_max: u32) {
    out.extend_from_slice(&PROTOCOL_HEADER);
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "basic.nack",
        "exchange_exchange_bindings",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from(&b"warren-fuzz"[..])),
    );
    let start_ok = AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: props,
        mechanism: "PLAIN".into(),
        response: LongString::from(&b"\0guest\0guest"[..]),
        locale: "en_US".into(),
    }));
    encode_method(out, 0, &start_ok);
    let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: 16,
        frame_max,
        heartbeat: 0,
    }));
    encode_method(out, 0, &tune_ok);
    let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
        virtual_host: "/".into(),
    }));
    encode_method(out, 0, &open);
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5999))
}

/// Runs one client byte stream against `broker`; returns what the broker sent.
async fn drive(broker: &Arc<Broker>, stream: Vec<u8>, piece: usize) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let shutdown = CancellationToken::new();
    let conn = tokio::spawn(warren_core::server::serve_connection(
        broker.clone(),
        server,
        peer(),
        shutdown.clone(),
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    let writer = async move {
        for part in stream.chunks(piece.max(1)) {
            if wr.write_all(part).await.is_err() {
                break;
            }
            if piece < usize::MAX {
                tokio::task::yield_now().await;
            }
        }
        // Gives the broker a turn at what was sent before it sees the end of the stream.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
        wr
    };
    let reader = async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if got.len() < 1 << 20 {
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        got
    };
    let run = async {
        let (_wr, got) = tokio::join!(writer, reader);
        conn.await.expect("connection task panicked");
        got
    };
    match tokio::time::timeout(EXEC_LIMIT, run).await {
        Ok(got) => got,
        Err(_) => panic!("connection did not end within {EXEC_LIMIT:?} of the client closing"),
    }
}

/// The broker still serves: a fresh connection opens and declares a queue.
async fn still_usable(broker: &Arc<Broker>) {
    let mut s = BytesMut::new();
    handshake(&mut s, 131_072);
    encode_method(
        &mut s,
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    encode_method(
        &mut s,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "fuzz-check".into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    let got = drive(broker, s.to_vec(), usize::MAX).await;
    // queue.declare-ok: class 50, method 11.
    let declare_ok = [0u8, 50, 0, 11];
    assert!(
        got.windows(4).any(|w| w == declare_ok),
        "the broker no longer declares a queue after this input"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let frame_max = if mode & 8 != 0 { 4096 } else { 131_072 };
    let piece = if mode & 4 != 0 {
        usize::from(mode >> 4) * 7 + 1
    } else {
        usize::MAX
    };
    let mut stream = BytesMut::new();
    match mode % 4 {
        0 => stream.extend_from_slice(rest),
        1 => {
            handshake(&mut stream, frame_max);
            stream.extend_from_slice(rest);
        }
        _ => {
            handshake(&mut stream, frame_max);
            structured(&mut stream, &mut Bytes::new(rest), frame_max);
        }
    }
    runtime().block_on(async {
        let broker = warren_fuzz::broker();
        drive(&broker, stream.to_vec(), piece).await;
        still_usable(&broker).await;
    });
});
