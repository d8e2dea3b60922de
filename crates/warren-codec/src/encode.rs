//! Encoding of frames into an output [`BytesMut`].
//!
//! Control methods go through amq-protocol's generators. The frames on the delivery hot path
//! (`basic.deliver`, content header, body) are written by hand and tested byte-for-byte against
//! amq-protocol's output. Content bodies are split into frames of at most `frame_max` bytes
//! (payload `frame_max - 8`), as `rabbit_binary_generator:build_simple_content_frames` does.

use bytes::{BufMut, BytesMut};

use crate::proto::AMQPClass;
use crate::{ChannelId, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};

/// Writes the 7-byte frame header with a zero size; returns where the size goes.
fn begin_frame(out: &mut BytesMut, frame_type: u8, channel: ChannelId) -> usize {
    out.put_u8(frame_type);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

/// Fills in the size written by [`begin_frame`] and appends the frame-end octet.
fn end_frame(out: &mut BytesMut, size_at: usize) {
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method(out: &mut BytesMut, channel: ChannelId, method: &AMQPClass) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    // amq-protocol's generators need a `BackToTheBuffer` writer (for table lengths): a Vec.
    let buf = Vec::with_capacity(64);
    match amq_protocol::protocol::gen_class(method)(amq_protocol::frame::WriteContext::from(buf)) {
        Ok(ctx) => out.extend_from_slice(&ctx.write),
        Err(e) => {
            // Only reachable with a value that cannot be represented (a bug in the caller).
            tracing_free_debug_assert(&e);
        }
    }
    end_frame(out, at);
}

#[inline]
fn tracing_free_debug_assert(e: &amq_protocol::frame::GenError) {
    debug_assert!(false, "method encoding failed: {e:?}");
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a content header frame carrying `raw_properties` (flags and fields) verbatim.
pub fn encode_content_header(
    out: &mut BytesMut,
    channel: ChannelId,
    class_id: u16,
    body_size: u64,
    raw_properties: &[u8],
) {
    let at = begin_frame(out, FRAME_HEADER, channel);
    out.put_u16(class_id);
    out.put_u16(0);
    out.put_u64(body_size);
    out.put_slice(raw_properties);
    end_frame(out, at);
}

/// Appends body frames of at most `frame_max` bytes each (nothing for an empty body).
pub fn encode_body(out: &mut BytesMut, channel: ChannelId, body: &[u8], frame_max: u32) {
    let chunk = (frame_max.max(crate::FRAME_MIN_SIZE) as usize) - crate::FRAME_OVERHEAD;
    out.reserve(body.len() + body.len().div_ceil(chunk) * crate::FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// Appends a content-carrying method, its header and its body frames.
pub fn encode_content(
    out: &mut BytesMut,
    channel: ChannelId,
    method: &AMQPClass,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    encode_method(out, channel, method);
    encode_content_header(
        out,
        channel,
        method.get_amqp_class_id(),
        body.len() as u64,
        raw_properties,
    );
    encode_body(out, channel, body, frame_max);
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    // Short strings are at most 255 bytes; longer input is a caller bug, cut rather than corrupt.
    // Cut on a char boundary: peers (amq-protocol among them) refuse a short string that is not
    // UTF-8.
    let mut len = s.len().min(255);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    let b = &s.as_bytes()[..len];
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

/// Fast path: appends a `basic.deliver` method frame without building an [`AMQPClass`].
pub fn encode_deliver(
    out: &mut BytesMut,
    channel: ChannelId,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(60);
    put_short_str(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    end_frame(out, at);
}

/// Fast path: a whole delivery (`basic.deliver`, header, body frames).
#[allow(clippy::too_many_arguments)]
pub fn encode_delivery(
    out: &mut BytesMut,
    channel: ChannelId,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let d = (
        consumer_tag,
        delivery_tag,
        redelivered,
        exchange,
        routing_key,
    );
    encode_delivery_head(out, channel, d, raw_properties, body.len());
    encode_body(out, channel, body, frame_max);
}

/// `basic.deliver` and the content header of a delivery (the part both delivery encoders share).
fn encode_delivery_head(
    out: &mut BytesMut,
    channel: ChannelId,
    (consumer_tag, delivery_tag, redelivered, exchange, routing_key): (&str, u64, bool, &str, &str),
    raw_properties: &[u8],
    body_len: usize,
) {
    encode_deliver(
        out,
        channel,
        consumer_tag,
        delivery_tag,
        redelivered,
        exchange,
        routing_key,
    );
    encode_content_header(out, channel, 60, body_len as u64, raw_properties);
}

/// Bodies at least this large are not copied into the output buffer by
/// [`encode_delivery_zero_copy`]: their frames point into the message's own bytes.
pub const ZERO_COPY_BODY: usize = 16 * 1024;

/// Like [`encode_delivery`], but a large body is not copied: the frames are emitted as a
/// sequence of chunks (`done`), alternating small headers taken from `out` and slices of
/// `body`, for a vectored write. Small bodies are copied into `out` as usual.
#[allow(clippy::too_many_arguments)]
pub fn encode_delivery_zero_copy(
    out: &mut BytesMut,
    done: &mut Vec<bytes::Bytes>,
    channel: ChannelId,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    raw_properties: &[u8],
    body: &bytes::Bytes,
    frame_max: u32,
) {
    let d = (
        consumer_tag,
        delivery_tag,
        redelivered,
        exchange,
        routing_key,
    );
    encode_delivery_head(out, channel, d, raw_properties, body.len());
    if body.len() < ZERO_COPY_BODY {
        encode_body(out, channel, body, frame_max);
        return;
    }
    let chunk = (frame_max.max(crate::FRAME_MIN_SIZE) as usize) - crate::FRAME_OVERHEAD;
    let mut at = 0;
    while at < body.len() {
        let end = (at + chunk).min(body.len());
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32((end - at) as u32);
        done.push(out.split().freeze());
        done.push(body.slice(at..end));
        out.put_u8(FRAME_END);
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, Frame};
    use crate::proto::basic;
    use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};

    fn amq_bytes(frame: &AMQPFrame) -> Vec<u8> {
        gen_frame(frame)(WriteContext::from(Vec::new()))
            .expect("encodes")
            .write
    }

    #[test]
    fn deliver_fast_path_matches_amq_protocol() {
        let mut out = BytesMut::new();
        encode_deliver(&mut out, 7, "ctag", 42, true, "amq.topic", "a.b.c");
        let reference = amq_bytes(&AMQPFrame::Method(
            7,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "amq.topic".into(),
                routing_key: "a.b.c".into(),
            })),
        ));
        assert_eq!(&out[..], &reference[..]);
    }

    #[test]
    fn content_header_matches_amq_protocol() {
        let props = basic::AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(2);
        let mut raw = Vec::new();
        raw = amq_protocol::protocol::basic::gen_properties(&props)(WriteContext::from(raw))
            .expect("encodes")
            .write;
        let mut out = BytesMut::new();
        encode_content_header(&mut out, 3, 60, 10, &raw);
        let reference = amq_bytes(&AMQPFrame::Header(
            3,
            AMQPContentHeader {
                class_id: 60,
                body_size: 10,
                properties: props,
            },
        ));
        assert_eq!(&out[..], &reference[..]);
    }

    #[test]
    fn overlong_short_strings_are_cut_on_a_char_boundary() {
        // 127 two-byte chars (254 bytes) then 'é' again: a byte cut at 255 would split it.
        let tag = "é".repeat(130);
        let mut out = BytesMut::new();
        encode_deliver(&mut out, 1, &tag, 1, false, "", "");
        match decode_frame(&mut out, 131072) {
            Ok(Some(Frame::Method {
                method: AMQPClass::Basic(basic::AMQPMethod::Deliver(d)),
                ..
            })) => assert_eq!(d.consumer_tag.as_str(), "é".repeat(127)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn zero_copy_delivery_is_byte_identical() {
        for size in [10usize, ZERO_COPY_BODY, 300_000] {
            let body = bytes::Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>());
            let mut copied = BytesMut::new();
            encode_delivery(
                &mut copied,
                2,
                "t",
                9,
                false,
                "x",
                "k",
                &[0, 0],
                &body,
                131072,
            );
            let mut out = BytesMut::new();
            let mut chunks = Vec::new();
            encode_delivery_zero_copy(
                &mut out,
                &mut chunks,
                2,
                "t",
                9,
                false,
                "x",
                "k",
                &[0, 0],
                &body,
                131072,
            );
            chunks.push(out.split().freeze());
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, copied.to_vec(), "size {size}");
            if size >= ZERO_COPY_BODY {
                assert!(
                    chunks.iter().any(|c| c.as_ptr() == body.as_ptr()),
                    "body not copied"
                );
            }
        }
    }

    #[test]
    fn bodies_split_at_frame_max() {
        let body = vec![7u8; 10_000];
        let mut out = BytesMut::new();
        encode_body(&mut out, 1, &body, 4096);
        let mut sizes = Vec::new();
        let mut joined = Vec::new();
        while let Some(f) = decode_frame(&mut out, 4096).expect("valid") {
            match f {
                Frame::Body { payload, .. } => {
                    sizes.push(payload.len());
                    joined.extend_from_slice(&payload);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sizes, vec![4088, 4088, 1824]);
        assert_eq!(joined, body);
    }

    #[test]
    fn method_round_trip() {
        let m = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 3,
            global: true,
        }));
        let mut out = BytesMut::new();
        encode_method(&mut out, 9, &m);
        assert_eq!(
            decode_frame(&mut out, 131072),
            Ok(Some(Frame::Method {
                channel: 9,
                method: m
            }))
        );
    }
}
