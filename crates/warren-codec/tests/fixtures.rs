//! Byte-exact fixtures: hand-written frames, decoded, checked field by field and re-encoded to the
//! same bytes.

use bytes::BytesMut;
use warren_codec::encode::{
    encode_body, encode_content_header, encode_delivery, encode_heartbeat, encode_method,
};
use warren_codec::proto::{basic, channel, connection, queue, AMQPClass, AMQPValue, FieldTable};
use warren_codec::{decode_frame, Command, ContentAssembler, Frame};

/// Hex with whitespace and `|` separators ignored.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_hexdigit())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        })
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

/// Decodes every frame of `bytes`, re-encodes each one and checks the bytes are identical.
fn decode_and_reencode(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(f) = decode_frame(&mut buf, 131_072).expect("fixture decodes") {
        frames.push(f);
    }
    assert!(buf.is_empty(), "fixture has trailing bytes");
    let mut out = BytesMut::new();
    for f in &frames {
        match f {
            Frame::Method { channel, method } => encode_method(&mut out, *channel, method),
            Frame::Header { channel, header } => encode_content_header(
                &mut out,
                *channel,
                header.class_id,
                header.body_size,
                &header.raw_properties,
            ),
            Frame::Body { channel, payload } => encode_body(&mut out, *channel, payload, 131_072),
            Frame::Heartbeat => encode_heartbeat(&mut out),
        }
    }
    assert_eq!(
        &out[..],
        bytes,
        "re-encoded bytes differ from the fixture\n got: {:02x?}\nwant: {:02x?}",
        &out[..],
        bytes
    );
    frames
}

#[test]
fn connection_tune() {
    // channel_max 2047, frame_max 131072, heartbeat 60
    let bytes = hex("01 0000 0000000c | 000a 001e | 07ff 00020000 003c | ce");
    let frames = decode_and_reencode(&bytes);
    assert_eq!(
        frames,
        vec![Frame::Method {
            channel: 0,
            method: AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            })),
        }]
    );
}

#[test]
fn connection_start_ok_plain() {
    // client_properties {product: S "x"}, mechanism PLAIN, response "\0guest\0guest", locale en_US
    let bytes = hex(concat!(
        "01 0000 00000032 | 000a 000b |",
        "0000000e 07 70726f64756374 53 00000001 78 |", // table: "product" => S "x"
        "05 504c41494e |",                             // PLAIN
        "0000000c 00 6775657374 00 6775657374 |",      // \0guest\0guest
        "05 656e5f5553 | ce",                          // en_US
    ));
    let frames = decode_and_reencode(&bytes);
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(b"x".to_vec().into()),
    );
    assert_eq!(
        frames,
        vec![Frame::Method {
            channel: 0,
            method: AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: b"\0guest\0guest".to_vec().into(),
                locale: "en_US".into(),
            })),
        }]
    );
}

#[test]
fn channel_close_not_found() {
    let bytes = hex(concat!(
        "01 0001 00000023 | 0014 0028 | 0194 |",
        "18 4e4f545f464f554e44202d206e6f20717565756520277127 |", // NOT_FOUND - no queue 'q'
        "0032 000a | ce",
    ));
    let frames = decode_and_reencode(&bytes);
    assert_eq!(
        frames,
        vec![Frame::Method {
            channel: 1,
            method: AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - no queue 'q'".into(),
                class_id: 50,
                method_id: 10,
            })),
        }]
    );
}

#[test]
fn queue_declare_with_arguments() {
    // durable queue "q" with {x-max-length: l 10, x-queue-type: S "quorum"}
    let bytes = hex(concat!(
        "01 0001 0000003b | 0032 000a | 0000 | 01 71 | 02 |",
        "0000002e",
        "0c 782d6d61782d6c656e677468 6c 000000000000000a",
        "0c 782d71756575652d74797065 53 00000006 71756f72756d",
        "| ce",
    ));
    let frames = decode_and_reencode(&bytes);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(b"quorum".to_vec().into()),
    );
    assert_eq!(
        frames,
        vec![Frame::Method {
            channel: 1,
            method: AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: args,
            })),
        }]
    );
}

/// basic.publish to "" / "hello", content-type text/plain, delivery-mode 2, body "hello", then a
/// heartbeat.
const PUBLISH: &str = concat!(
    "01 0001 0000000e | 003c 0028 | 0000 | 00 | 05 68656c6c6f | 00 | ce",
    "02 0001 0000001a | 003c 0000 | 0000000000000005 | 9000 | 0a 746578742f706c61696e | 02 | ce",
    "03 0001 00000005 | 68656c6c6f | ce",
    "08 0000 00000000 ce",
);

#[test]
fn basic_publish_header_body() {
    let bytes = hex(PUBLISH);
    let frames = decode_and_reencode(&bytes);
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[3], Frame::Heartbeat);
    let mut asm = ContentAssembler::new();
    let mut cmd = None;
    for f in frames.into_iter().take(3) {
        cmd = match f {
            Frame::Method { method, .. } => asm.handle_method(method),
            Frame::Header { header, .. } => asm.handle_header(header),
            Frame::Body { payload, .. } => asm.handle_body(payload),
            Frame::Heartbeat => unreachable!(),
        }
        .expect("assembles");
    }
    let Some(Command::Content {
        method,
        header,
        body,
    }) = cmd
    else {
        panic!("no content command: {cmd:?}");
    };
    assert_eq!(
        method,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "hello".into(),
            mandatory: false,
            immediate: false,
        }))
    );
    assert_eq!(header.body_size, 5);
    assert_eq!(
        &header.raw_properties[..],
        &hex("9000 0a 746578742f706c61696e 02")[..]
    );
    assert_eq!(
        *header.properties,
        basic::AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(2)
    );
    assert_eq!(&body[..], b"hello");
}

#[test]
fn delivery_fast_path_bytes() {
    // basic.deliver ctag/1/not redelivered/""/"hello" with the publish's properties and body.
    let expected = hex(concat!(
        "01 0001 00000019 | 003c 003c | 04 63746167 | 0000000000000001 | 00 | 00 | 05 68656c6c6f | ce",
        "02 0001 0000001a | 003c 0000 | 0000000000000005 | 9000 | 0a 746578742f706c61696e | 02 | ce",
        "03 0001 00000005 | 68656c6c6f | ce",
    ));
    let mut out = BytesMut::new();
    let props = hex("9000 0a 746578742f706c61696e 02");
    encode_delivery(
        &mut out, 1, "ctag", 1, false, "", "hello", &props, b"hello", 131_072,
    );
    assert_eq!(&out[..], &expected[..]);
    decode_and_reencode(&expected);
}
