//! Property tests: every method of every class survives `encode_method` -> `decode_frame`,
//! content survives `encode_content` -> frames -> `ContentAssembler`, partial reads change nothing,
//! and garbage never panics the decoder.

use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use warren_codec::encode::{encode_content, encode_delivery, encode_heartbeat, encode_method};
use warren_codec::proto::{
    access, basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, AMQPProperties,
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use warren_codec::{decode_frame, Command, ContentAssembler, Frame, FrameError};

// ---------------------------------------------------------------------------------------------
// Value strategies
// ---------------------------------------------------------------------------------------------

/// Cuts `s` to at most `max` bytes on a char boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// A short string: mostly short, sometimes up to the 255-byte limit, any Unicode.
fn short_str() -> impl Strategy<Value = ShortString> {
    prop_oneof![
        4 => "[a-zA-Z0-9._-]{0,20}".prop_map(String::from),
        1 => proptest::collection::vec(any::<char>(), 0..100)
            .prop_map(|cs| cs.into_iter().collect::<String>()),
        1 => Just("x".repeat(255)),
    ]
    .prop_map(|s| ShortString::from(cut(s, 255)))
}

fn long_str() -> impl Strategy<Value = LongString> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ]{0,40}".prop_map(|s| LongString::from(s.into_bytes())),
        1 => proptest::collection::vec(any::<u8>(), 0..600).prop_map(LongString::from),
    ]
}

fn float() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN != NaN", |f| !f.is_nan())
}

fn double() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan())
}

/// Every field value type RabbitMQ puts on the wire: t b B s u I i l f d D S T V x, plus A and F
/// recursively. (No ShortString value: RabbitMQ has no type code for it, and 'l' covers i64.)
fn value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        float().prop_map(AMQPValue::Float),
        double().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        long_str().prop_map(AMQPValue::LongString),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|v| AMQPValue::ByteArray(ByteArray::from(v))),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            proptest::collection::btree_map(short_str(), inner, 0..6)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
        ]
    })
}

fn table() -> impl Strategy<Value = FieldTable> {
    proptest::collection::btree_map(short_str(), value(), 0..8).prop_map(FieldTable::from)
}

// ---------------------------------------------------------------------------------------------
// Method strategies, class by class
// ---------------------------------------------------------------------------------------------

fn connection_method() -> impl Strategy<Value = AMQPClass> {
    use connection::*;
    let m = prop_oneof![
        (any::<u8>(), any::<u8>(), table(), long_str(), long_str()).prop_map(
            |(version_major, version_minor, server_properties, mechanisms, locales)| {
                AMQPMethod::Start(Start {
                    version_major,
                    version_minor,
                    server_properties,
                    mechanisms,
                    locales,
                })
            }
        ),
        (table(), short_str(), long_str(), short_str()).prop_map(
            |(client_properties, mechanism, response, locale)| AMQPMethod::StartOk(StartOk {
                client_properties,
                mechanism,
                response,
                locale,
            })
        ),
        long_str().prop_map(|challenge| AMQPMethod::Secure(Secure { challenge })),
        long_str().prop_map(|response| AMQPMethod::SecureOk(SecureOk { response })),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| AMQPMethod::Tune(Tune {
                channel_max,
                frame_max,
                heartbeat,
            })
        ),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| AMQPMethod::TuneOk(TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })
        ),
        short_str().prop_map(|virtual_host| AMQPMethod::Open(Open { virtual_host })),
        Just(AMQPMethod::OpenOk(OpenOk {})),
        (any::<u16>(), short_str(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| AMQPMethod::Close(Close {
                reply_code,
                reply_text,
                class_id,
                method_id,
            })
        ),
        Just(AMQPMethod::CloseOk(CloseOk {})),
        short_str().prop_map(|reason| AMQPMethod::Blocked(Blocked { reason })),
        Just(AMQPMethod::Unblocked(Unblocked {})),
        (long_str(), short_str()).prop_map(|(new_secret, reason)| AMQPMethod::UpdateSecret(
            UpdateSecret { new_secret, reason }
        )),
        Just(AMQPMethod::UpdateSecretOk(UpdateSecretOk {})),
    ];
    m.prop_map(AMQPClass::Connection)
}

fn channel_method() -> impl Strategy<Value = AMQPClass> {
    use channel::*;
    prop_oneof![
        Just(AMQPMethod::Open(Open {})),
        Just(AMQPMethod::OpenOk(OpenOk {})),
        any::<bool>().prop_map(|active| AMQPMethod::Flow(Flow { active })),
        any::<bool>().prop_map(|active| AMQPMethod::FlowOk(FlowOk { active })),
        (any::<u16>(), short_str(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| AMQPMethod::Close(Close {
                reply_code,
                reply_text,
                class_id,
                method_id,
            })
        ),
        Just(AMQPMethod::CloseOk(CloseOk {})),
    ]
    .prop_map(AMQPClass::Channel)
}

fn access_method() -> impl Strategy<Value = AMQPClass> {
    use access::*;
    prop_oneof![
        (short_str(), any::<[bool; 5]>()).prop_map(|(realm, b)| AMQPMethod::Request(Request {
            realm,
            exclusive: b[0],
            passive: b[1],
            active: b[2],
            write: b[3],
            read: b[4],
        })),
        Just(AMQPMethod::RequestOk(RequestOk {})),
    ]
    .prop_map(AMQPClass::Access)
}

fn exchange_method() -> impl Strategy<Value = AMQPClass> {
    use exchange::*;
    prop_oneof![
        (short_str(), short_str(), any::<[bool; 5]>(), table()).prop_map(
            |(exchange, kind, b, arguments)| AMQPMethod::Declare(Declare {
                exchange,
                kind,
                passive: b[0],
                durable: b[1],
                auto_delete: b[2],
                internal: b[3],
                nowait: b[4],
                arguments,
            })
        ),
        Just(AMQPMethod::DeclareOk(DeclareOk {})),
        (short_str(), any::<bool>(), any::<bool>()).prop_map(|(exchange, if_unused, nowait)| {
            AMQPMethod::Delete(Delete {
                exchange,
                if_unused,
                nowait,
            })
        }),
        Just(AMQPMethod::DeleteOk(DeleteOk {})),
        (
            short_str(),
            short_str(),
            short_str(),
            any::<bool>(),
            table()
        )
            .prop_map(|(destination, source, routing_key, nowait, arguments)| {
                AMQPMethod::Bind(Bind {
                    destination,
                    source,
                    routing_key,
                    nowait,
                    arguments,
                })
            }),
        Just(AMQPMethod::BindOk(BindOk {})),
        (
            short_str(),
            short_str(),
            short_str(),
            any::<bool>(),
            table()
        )
            .prop_map(|(destination, source, routing_key, nowait, arguments)| {
                AMQPMethod::Unbind(Unbind {
                    destination,
                    source,
                    routing_key,
                    nowait,
                    arguments,
                })
            }),
        Just(AMQPMethod::UnbindOk(UnbindOk {})),
    ]
    .prop_map(AMQPClass::Exchange)
}

fn queue_method() -> impl Strategy<Value = AMQPClass> {
    use queue::*;
    prop_oneof![
        (short_str(), any::<[bool; 5]>(), table()).prop_map(|(queue, b, arguments)| {
            AMQPMethod::Declare(Declare {
                queue,
                passive: b[0],
                durable: b[1],
                exclusive: b[2],
                auto_delete: b[3],
                nowait: b[4],
                arguments,
            })
        }),
        (short_str(), any::<u32>(), any::<u32>()).prop_map(
            |(queue, message_count, consumer_count)| AMQPMethod::DeclareOk(DeclareOk {
                queue,
                message_count,
                consumer_count,
            })
        ),
        (
            short_str(),
            short_str(),
            short_str(),
            any::<bool>(),
            table()
        )
            .prop_map(
                |(queue, exchange, routing_key, nowait, arguments)| AMQPMethod::Bind(Bind {
                    queue,
                    exchange,
                    routing_key,
                    nowait,
                    arguments,
                })
            ),
        Just(AMQPMethod::BindOk(BindOk {})),
        (short_str(), any::<bool>())
            .prop_map(|(queue, nowait)| AMQPMethod::Purge(Purge { queue, nowait })),
        any::<u32>().prop_map(|message_count| AMQPMethod::PurgeOk(PurgeOk { message_count })),
        (short_str(), any::<[bool; 3]>()).prop_map(|(queue, b)| AMQPMethod::Delete(Delete {
            queue,
            if_unused: b[0],
            if_empty: b[1],
            nowait: b[2],
        })),
        any::<u32>().prop_map(|message_count| AMQPMethod::DeleteOk(DeleteOk { message_count })),
        (short_str(), short_str(), short_str(), table()).prop_map(
            |(queue, exchange, routing_key, arguments)| AMQPMethod::Unbind(Unbind {
                queue,
                exchange,
                routing_key,
                arguments,
            })
        ),
        Just(AMQPMethod::UnbindOk(UnbindOk {})),
    ]
    .prop_map(AMQPClass::Queue)
}

/// The content-carrying basic methods.
fn basic_content_method() -> impl Strategy<Value = AMQPClass> {
    use basic::*;
    prop_oneof![
        (short_str(), short_str(), any::<bool>(), any::<bool>()).prop_map(
            |(exchange, routing_key, mandatory, immediate)| AMQPMethod::Publish(Publish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            })
        ),
        (any::<u16>(), short_str(), short_str(), short_str()).prop_map(
            |(reply_code, reply_text, exchange, routing_key)| AMQPMethod::Return(Return {
                reply_code,
                reply_text,
                exchange,
                routing_key,
            })
        ),
        (
            short_str(),
            any::<u64>(),
            any::<bool>(),
            short_str(),
            short_str()
        )
            .prop_map(
                |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| {
                    AMQPMethod::Deliver(Deliver {
                        consumer_tag,
                        delivery_tag,
                        redelivered,
                        exchange,
                        routing_key,
                    })
                }
            ),
        (
            any::<u64>(),
            any::<bool>(),
            short_str(),
            short_str(),
            any::<u32>()
        )
            .prop_map(
                |(delivery_tag, redelivered, exchange, routing_key, message_count)| {
                    AMQPMethod::GetOk(GetOk {
                        delivery_tag,
                        redelivered,
                        exchange,
                        routing_key,
                        message_count,
                    })
                }
            ),
    ]
    .prop_map(AMQPClass::Basic)
}

fn basic_method() -> impl Strategy<Value = AMQPClass> {
    use basic::*;
    let plain = prop_oneof![
        (any::<u16>(), any::<bool>()).prop_map(|(prefetch_count, global)| AMQPMethod::Qos(Qos {
            prefetch_count,
            global
        })),
        Just(AMQPMethod::QosOk(QosOk {})),
        (short_str(), short_str(), any::<[bool; 4]>(), table()).prop_map(
            |(queue, consumer_tag, b, arguments)| AMQPMethod::Consume(Consume {
                queue,
                consumer_tag,
                no_local: b[0],
                no_ack: b[1],
                exclusive: b[2],
                nowait: b[3],
                arguments,
            })
        ),
        short_str().prop_map(|consumer_tag| AMQPMethod::ConsumeOk(ConsumeOk { consumer_tag })),
        (short_str(), any::<bool>()).prop_map(|(consumer_tag, nowait)| AMQPMethod::Cancel(
            Cancel {
                consumer_tag,
                nowait
            }
        )),
        short_str().prop_map(|consumer_tag| AMQPMethod::CancelOk(CancelOk { consumer_tag })),
        (short_str(), any::<bool>())
            .prop_map(|(queue, no_ack)| AMQPMethod::Get(Get { queue, no_ack })),
        Just(AMQPMethod::GetEmpty(GetEmpty {})),
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, multiple)| AMQPMethod::Ack(Ack {
            delivery_tag,
            multiple
        })),
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, requeue)| AMQPMethod::Reject(
            Reject {
                delivery_tag,
                requeue
            }
        )),
        any::<bool>().prop_map(|requeue| AMQPMethod::RecoverAsync(RecoverAsync { requeue })),
        any::<bool>().prop_map(|requeue| AMQPMethod::Recover(Recover { requeue })),
        Just(AMQPMethod::RecoverOk(RecoverOk {})),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(delivery_tag, multiple, requeue)| AMQPMethod::Nack(Nack {
                delivery_tag,
                multiple,
                requeue,
            })
        ),
    ]
    .prop_map(AMQPClass::Basic);
    prop_oneof![3 => plain, 1 => basic_content_method()]
}

fn confirm_method() -> impl Strategy<Value = AMQPClass> {
    use confirm::*;
    prop_oneof![
        any::<bool>().prop_map(|nowait| AMQPMethod::Select(Select { nowait })),
        Just(AMQPMethod::SelectOk(SelectOk {})),
    ]
    .prop_map(AMQPClass::Confirm)
}

fn tx_method() -> impl Strategy<Value = AMQPClass> {
    use tx::*;
    prop_oneof![
        Just(AMQPMethod::Select(Select {})),
        Just(AMQPMethod::SelectOk(SelectOk {})),
        Just(AMQPMethod::Commit(Commit {})),
        Just(AMQPMethod::CommitOk(CommitOk {})),
        Just(AMQPMethod::Rollback(Rollback {})),
        Just(AMQPMethod::RollbackOk(RollbackOk {})),
    ]
    .prop_map(AMQPClass::Tx)
}

fn any_method() -> impl Strategy<Value = AMQPClass> {
    prop_oneof![
        connection_method(),
        channel_method(),
        access_method(),
        exchange_method(),
        queue_method(),
        basic_method(),
        confirm_method(),
        tx_method(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties and content
// ---------------------------------------------------------------------------------------------

fn properties() -> impl Strategy<Value = AMQPProperties> {
    let strings = proptest::collection::vec(proptest::option::of(short_str()), 10);
    (
        strings,
        proptest::option::of(table()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(s, headers, delivery_mode, priority, timestamp)| {
            let mut p = AMQPProperties::default();
            let mut s = s.into_iter();
            let mut next = || s.next().flatten();
            if let Some(v) = next() {
                p = p.with_content_type(v);
            }
            if let Some(v) = next() {
                p = p.with_content_encoding(v);
            }
            if let Some(v) = headers {
                p = p.with_headers(v);
            }
            if let Some(v) = delivery_mode {
                p = p.with_delivery_mode(v);
            }
            if let Some(v) = priority {
                p = p.with_priority(v);
            }
            if let Some(v) = next() {
                p = p.with_correlation_id(v);
            }
            if let Some(v) = next() {
                p = p.with_reply_to(v);
            }
            if let Some(v) = next() {
                p = p.with_expiration(v);
            }
            if let Some(v) = next() {
                p = p.with_message_id(v);
            }
            if let Some(v) = timestamp {
                p = p.with_timestamp(v);
            }
            if let Some(v) = next() {
                p = p.with_type(v);
            }
            if let Some(v) = next() {
                p = p.with_user_id(v);
            }
            if let Some(v) = next() {
                p = p.with_app_id(v);
            }
            if let Some(v) = next() {
                p = p.with_cluster_id(v);
            }
            p
        })
}

fn raw_properties(p: &AMQPProperties) -> Vec<u8> {
    amq_protocol::protocol::basic::gen_properties(p)(amq_protocol::frame::WriteContext::from(
        Vec::new(),
    ))
    .expect("properties encode")
    .write
}

/// A body of 0..200 KiB, mostly small, with a recognisable non-constant pattern.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => 0usize..64,
        2 => 0usize..20_000,
        1 => 0usize..=200 * 1024,
    ]
    .prop_flat_map(|len| {
        any::<u8>().prop_map(move |seed| {
            (0..len)
                .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
                .collect()
        })
    })
}

/// Walks an encoded stream by its frame headers and returns each frame's total size.
fn frame_sizes(mut b: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    while b.len() >= 7 {
        let size = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize;
        sizes.push(size + 8);
        b = &b[size + 8..];
    }
    assert!(b.is_empty(), "stream ends on a frame boundary");
    sizes
}

/// Decodes every complete frame of `buf`.
fn decode_all(buf: &mut BytesMut, frame_max: u32) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = decode_frame(buf, frame_max).expect("valid stream") {
        frames.push(f);
    }
    frames
}

/// Runs frames through one assembler per channel.
fn assemble(frames: Vec<Frame>) -> Result<Vec<(u16, Command)>, FrameError> {
    let mut asm: HashMap<u16, ContentAssembler> = HashMap::new();
    let mut out = Vec::new();
    for f in frames {
        let (ch, r) = match f {
            Frame::Method { channel, method } => (
                channel,
                asm.entry(channel).or_default().handle_method(method),
            ),
            Frame::Header { channel, header } => (
                channel,
                asm.entry(channel).or_default().handle_header(header),
            ),
            Frame::Body { channel, payload } => (
                channel,
                asm.entry(channel).or_default().handle_body(payload),
            ),
            Frame::Heartbeat => continue,
        };
        if let Some(cmd) = r? {
            out.push((ch, cmd));
        }
    }
    Ok(out)
}

fn frame_maxes() -> impl Strategy<Value = u32> {
    prop_oneof![Just(4096u32), Just(131_072u32), 4096u32..=131_072]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_method_round_trips(channel in any::<u16>(), method in any_method()) {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &method);
        let sizes = frame_sizes(&out);
        prop_assert_eq!(sizes.len(), 1);
        let got = decode_frame(&mut out, u32::MAX).expect("decodes");
        prop_assert_eq!(got, Some(Frame::Method { channel, method }));
        prop_assert!(out.is_empty(), "whole frame consumed");
    }

    #[test]
    fn field_tables_round_trip_through_start_ok(client_properties in table()) {
        // A table-heavy method, to get many more table samples than the mixed strategy gives.
        let m = AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties,
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        }));
        let mut out = BytesMut::new();
        encode_method(&mut out, 0, &m);
        let got = decode_frame(&mut out, u32::MAX).expect("decodes");
        prop_assert_eq!(got, Some(Frame::Method { channel: 0, method: m }));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn content_round_trips(
        channel in 1u16..,
        method in basic_content_method(),
        props in properties(),
        body in body(),
        frame_max in frame_maxes(),
    ) {
        let raw = raw_properties(&props);
        // A header frame cannot be split: keep the generated properties within one frame.
        prop_assume!(raw.len() + 12 + 8 <= frame_max as usize);
        let mut out = BytesMut::new();
        encode_content(&mut out, channel, &method, &raw, &body, frame_max);
        let sizes = frame_sizes(&out);
        let method_frame = sizes[0];
        for (i, s) in sizes.iter().enumerate().skip(1) {
            prop_assert!(*s <= frame_max as usize, "frame {} is {} > {}", i, s, frame_max);
        }
        prop_assert!(method_frame <= frame_max as usize);
        // header + body frames: ceil(len / (frame_max - 8))
        let chunk = frame_max as usize - 8;
        prop_assert_eq!(sizes.len(), 2 + body.len().div_ceil(chunk));

        let frames = decode_all(&mut out, frame_max);
        prop_assert!(out.is_empty());
        let cmds = assemble(frames).expect("assembles");
        prop_assert_eq!(cmds.len(), 1);
        let (ch, cmd) = cmds.into_iter().next().expect("one command");
        prop_assert_eq!(ch, channel);
        match cmd {
            Command::Content { method: m, header, body: b } => {
                prop_assert_eq!(m, method);
                prop_assert_eq!(header.class_id, 60);
                prop_assert_eq!(header.body_size, body.len() as u64);
                prop_assert_eq!(&header.raw_properties[..], &raw[..]);
                prop_assert_eq!(*header.properties, props);
                prop_assert_eq!(&b[..], &body[..]);
            }
            other => prop_assert!(false, "expected content, got {:?}", other),
        }
    }

    #[test]
    fn delivery_round_trips(
        channel in 1u16..,
        consumer_tag in short_str(),
        delivery_tag in any::<u64>(),
        redelivered in any::<bool>(),
        exchange in short_str(),
        routing_key in short_str(),
        props in properties(),
        body in body(),
        frame_max in frame_maxes(),
    ) {
        let raw = raw_properties(&props);
        prop_assume!(raw.len() + 12 + 8 <= frame_max as usize);
        let mut out = BytesMut::new();
        encode_delivery(
            &mut out, channel, consumer_tag.as_str(), delivery_tag, redelivered,
            exchange.as_str(), routing_key.as_str(), &raw, &body, frame_max,
        );
        for s in frame_sizes(&out) {
            prop_assert!(s <= frame_max as usize);
        }
        let cmds = assemble(decode_all(&mut out, frame_max)).expect("assembles");
        let expected = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag, delivery_tag, redelivered, exchange, routing_key,
        }));
        match cmds.as_slice() {
            [(ch, Command::Content { method, header, body: b })] => {
                prop_assert_eq!(*ch, channel);
                prop_assert_eq!(method, &expected);
                prop_assert_eq!(&header.raw_properties[..], &raw[..]);
                prop_assert_eq!(&b[..], &body[..]);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn partial_reads_give_the_same_frames(
        parts in proptest::collection::vec(
            (any_method(), 0u16..4, proptest::option::of(
                (basic_content_method(), properties(), 0usize..10_000)
            )),
            1..6,
        ),
        cuts in proptest::collection::vec(1usize..3000, 0..64),
        frame_max in frame_maxes(),
    ) {
        let mut stream = BytesMut::new();
        for (method, channel, content) in &parts {
            encode_method(&mut stream, *channel, method);
            if let Some((m, props, len)) = content {
                let raw = raw_properties(props);
                if raw.len() + 20 <= frame_max as usize {
                    let body: Vec<u8> = (0..*len).map(|i| i as u8).collect();
                    encode_content(&mut stream, *channel + 10, m, &raw, &body, frame_max);
                }
            }
            encode_heartbeat(&mut stream);
        }
        let whole = stream.clone().freeze();
        let max = u32::MAX; // method frames with big tables may exceed frame_max
        let expected = decode_all(&mut stream, max);

        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        let mut rest: Bytes = whole.clone();
        let mut cuts = cuts.into_iter();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            buf.extend_from_slice(&rest.split_to(n));
            loop {
                let before = buf.len();
                match decode_frame(&mut buf, max).expect("valid stream") {
                    Some(f) => got.push(f),
                    None => {
                        prop_assert_eq!(buf.len(), before, "Ok(None) consumes nothing");
                        break;
                    }
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn garbage_never_panics(
        prefix in proptest::option::of(
            (prop_oneof![Just(1u8), Just(2), Just(3), Just(8), any::<u8>()], any::<u16>(), 0u32..300)
        ),
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        frame_max in prop_oneof![Just(0u32), 0u32..200_000, Just(u32::MAX)],
    ) {
        let mut buf = BytesMut::new();
        if let Some((ty, ch, size)) = prefix {
            buf.extend_from_slice(&[ty]);
            buf.extend_from_slice(&ch.to_be_bytes());
            buf.extend_from_slice(&size.to_be_bytes());
        }
        buf.extend_from_slice(&bytes);
        let mut asm: BTreeMap<u16, ContentAssembler> = BTreeMap::new();
        while let Ok(Some(f)) = decode_frame(&mut buf, frame_max) {
            let _ = match f {
                Frame::Method { channel, method } => asm.entry(channel).or_default().handle_method(method),
                Frame::Header { channel, header } => asm.entry(channel).or_default().handle_header(header),
                Frame::Body { channel, payload } => asm.entry(channel).or_default().handle_body(payload),
                Frame::Heartbeat => Ok(None),
            };
        }
    }

    #[test]
    fn mutated_method_frames_never_panic(
        method in any_method(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut out = BytesMut::new();
        encode_method(&mut out, 1, &method);
        let len = out.len();
        // Flip payload bytes only (keep the frame header and end), so the parsers are exercised.
        if len > 8 {
            for (i, x) in &flips {
                let at = 7 + i.index(len - 8);
                out[at] ^= *x;
            }
        }
        if let Some(t) = truncate {
            // Shorten the payload and fix up the size so the frame is well-formed but truncated.
            let keep = t.index(len - 8);
            let mut b = BytesMut::new();
            b.extend_from_slice(&out[..3]);
            b.extend_from_slice(&(keep as u32).to_be_bytes());
            b.extend_from_slice(&out[7..7 + keep]);
            b.extend_from_slice(&[0xCE]);
            out = b;
        }
        let _ = decode_frame(&mut out, u32::MAX);
    }
}
