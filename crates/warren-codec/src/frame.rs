//! Frame layer: the protocol header and incremental frame decoding.
//!
//! [`decode_frame`] reads one frame from the front of a growing [`BytesMut`]. It looks at the
//! 7-byte header first and refuses a payload larger than the negotiated `frame_max` before a
//! single payload byte is buffered (amq-protocol's own parser would wait for up to 4 GiB). The
//! frame is then split off the buffer and frozen, so bodies and raw properties are `Bytes`
//! slices of the bytes read from the socket: nothing is copied.

use bytes::{Buf, Bytes, BytesMut};

use crate::assembler::ContentHeader;
use crate::proto::AMQPClass;
use crate::{method, ChannelId, ReplyCode, FRAME_END, FRAME_MIN_SIZE, PROTOCOL_HEADER};

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel the method is on.
        channel: ChannelId,
        /// The decoded method.
        method: AMQPClass,
    },
    /// A content header frame.
    Header {
        /// Channel the header is on.
        channel: ChannelId,
        /// The header, with its properties both decoded and raw.
        header: ContentHeader,
    },
    /// A content body frame.
    Body {
        /// Channel the body is on.
        channel: ChannelId,
        /// The body bytes: a slice of the read buffer.
        payload: Bytes,
    },
    /// A heartbeat frame (always on channel 0; another channel is an error).
    Heartbeat,
}

/// A violation of the frame layer. Every variant is a connection-level (hard) error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer's first 8 bytes were not an AMQP 0-9-1 protocol header.
    #[error("bad protocol header")]
    BadProtocolHeader,
    /// The frame announced a payload larger than the negotiated `frame_max`.
    #[error(
        "FRAME_ERROR - type {frame_type}, all octets = <<>>: {{frame_too_large,{size},{limit}}}"
    )]
    TooLarge {
        /// Frame type octet.
        frame_type: u8,
        /// Announced payload size.
        size: u32,
        /// `frame_max - 8`, as RabbitMQ reports it.
        limit: u32,
    },
    /// The octet after the payload was not 0xCE.
    #[error("FRAME_ERROR - type {frame_type}, {snippet}: {{invalid_frame_end_marker,{octet}}}")]
    BadFrameEnd {
        /// Frame type octet.
        frame_type: u8,
        /// The octet found instead of 0xCE.
        octet: u8,
        /// The payload as RabbitMQ's `payload_snippet/1` prints it
        /// (`all octets = <<...>>` or `first 16 octets = <<...>>`).
        snippet: String,
    },
    /// A frame type octet this protocol does not define.
    #[error("FRAME_ERROR - type {0}, all octets = <<>>: unknown_frame")]
    UnknownFrameType(u8),
    /// A `(class, method)` pair the protocol does not define.
    #[error("NOT_IMPLEMENTED - unknown method: class {class_id}, method {method_id}")]
    UnknownMethod {
        /// Class id read from the frame.
        class_id: u16,
        /// Method id read from the frame.
        method_id: u16,
    },
    /// Method arguments or content properties that do not decode (truncated, bad types).
    #[error("FRAME_ERROR - cannot decode {0}")]
    CannotDecode(String),
    /// A frame out of place (assembler state, heartbeat on a non-zero channel, ...).
    #[error("UNEXPECTED_FRAME - {0}")]
    Unexpected(String),
    /// A valid method with arguments RabbitMQ does not implement (`basic.qos` with
    /// `prefetch_size != 0`), which it refuses with 540 on the connection.
    #[error("NOT_IMPLEMENTED - {0}")]
    Unsupported(String),
    /// A content header announcing a body over the hard cap, or body frames over the announced size.
    #[error("FRAME_ERROR - {0}")]
    BadContentSize(String),
    /// `error`, attributed to a method: RabbitMQ names it in the close's `class_id`/`method_id`
    /// (the method it could not decode, or the one whose content it was assembling).
    #[error("{error}")]
    OnMethod {
        /// Class id of the method.
        class_id: u16,
        /// Method id of the method.
        method_id: u16,
        /// The error itself.
        error: Box<FrameError>,
    },
}

impl FrameError {
    /// The reply code to close the connection with.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            FrameError::OnMethod { error, .. } => error.reply_code(),
            FrameError::UnknownMethod { .. } | FrameError::Unsupported(_) => {
                ReplyCode::NotImplemented
            }
            FrameError::Unexpected(_) => ReplyCode::UnexpectedFrame,
            _ => ReplyCode::FrameError,
        }
    }

    /// Attributes this error to the method `(class_id, method_id)`.
    pub fn on_method(self, (class_id, method_id): (u16, u16)) -> Self {
        match self {
            e @ FrameError::OnMethod { .. } => e,
            e => FrameError::OnMethod {
                class_id,
                method_id,
                error: Box::new(e),
            },
        }
    }

    /// The `(class_id, method_id)` the error is attributed to; `(0, 0)` when none.
    pub fn method_ids(&self) -> (u16, u16) {
        match self {
            FrameError::OnMethod {
                class_id,
                method_id,
                ..
            } => (*class_id, *method_id),
            _ => (0, 0),
        }
    }

    /// The error for a frame of `frame_type` whose `payload` is followed by `octet` instead of
    /// the frame-end octet.
    pub fn bad_frame_end(frame_type: u8, octet: u8, payload: &[u8]) -> Self {
        FrameError::BadFrameEnd {
            frame_type,
            octet,
            snippet: payload_snippet(payload),
        }
    }

    /// The reply text, already in RabbitMQ's `"NAME - explanation"` form and at most 255 bytes.
    pub fn reply_text(&self) -> String {
        let mut s = self.to_string();
        crate::reply::truncate_to(&mut s, 255);
        s
    }
}

/// What the first bytes of a connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOutcome {
    /// Fewer than 8 bytes so far, all consistent with an acceptable header.
    NeedMore,
    /// A 0-9-1 header (or the 0-9 one, which RabbitMQ also accepts as 0-9-1); 8 bytes consumed.
    Accepted,
    /// Anything else. The server must write [`PROTOCOL_HEADER`] and close, as the spec says.
    Rejected,
}

/// The 0-9 header `AMQP 1 1 0 9`, which RabbitMQ treats as 0-9-1.
const PROTOCOL_HEADER_0_9: [u8; 8] = *b"AMQP\x01\x01\x00\x09";

/// Checks the protocol header at the front of `buf`, consuming it when accepted.
pub fn decode_protocol_header(buf: &mut BytesMut) -> HeaderOutcome {
    let n = buf.len().min(8);
    let prefix = &buf[..n];
    let plausible = [PROTOCOL_HEADER, PROTOCOL_HEADER_0_9]
        .iter()
        .any(|h| h[..n] == *prefix);
    if !plausible {
        return HeaderOutcome::Rejected;
    }
    if n < 8 {
        return HeaderOutcome::NeedMore;
    }
    buf.advance(8);
    HeaderOutcome::Accepted
}

/// When `buf` starts with the header of a body frame whose payload `decode_frame` would accept
/// but that is not complete in `buf` yet: its channel and payload size.
pub fn partial_body_frame(buf: &[u8], frame_max: u32) -> Option<(ChannelId, usize)> {
    let h = buf.get(..7)?;
    if h[0] != crate::FRAME_BODY {
        return None;
    }
    let channel = u16::from_be_bytes([h[1], h[2]]);
    let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
    if size > frame_max.max(FRAME_MIN_SIZE) {
        return None;
    }
    let size = size as usize;
    (buf.len() < 7 + size + 1).then_some((channel, size))
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and reserves room for the rest of the frame).
/// `frame_max` is the negotiated maximum frame size including the 8 bytes of overhead; like
/// RabbitMQ we allow a payload of up to `frame_max` bytes (an 8-byte fudge for clients that count
/// the overhead wrongly).
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let frame_type = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(frame_type, 1 | 2 | 3 | 8) {
        return Err(FrameError::UnknownFrameType(frame_type));
    }
    let frame_max = frame_max.max(FRAME_MIN_SIZE);
    if size > frame_max {
        return Err(FrameError::TooLarge {
            frame_type,
            size,
            limit: frame_max - 8,
        });
    }
    let total = 7 + size as usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(FrameError::bad_frame_end(
            frame_type,
            end,
            &buf[7..total - 1],
        ));
    }
    let frame = buf.split_to(total).freeze();
    let payload = frame.slice(7..total - 1);
    match frame_type {
        crate::FRAME_METHOD => {
            decode_method(&payload).map(|method| Some(Frame::Method { channel, method }))
        }
        crate::FRAME_HEADER => {
            decode_header(payload).map(|header| Some(Frame::Header { channel, header }))
        }
        crate::FRAME_BODY => Ok(Some(Frame::Body { channel, payload })),
        _ => {
            if channel != 0 {
                Err(FrameError::Unexpected("type 8, all octets = <<>>".into()))
            } else {
                Ok(Some(Frame::Heartbeat))
            }
        }
    }
}

/// Decodes a method payload: class id, method id and arguments.
pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, FrameError> {
    if payload.len() < 4 {
        return Err(FrameError::CannotDecode(erl_binary(payload)));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if !method::is_known(class_id, method_id) {
        return Err(FrameError::UnknownMethod {
            class_id,
            method_id,
        });
    }
    // amq-protocol drops basic.qos's prefetch-size; RabbitMQ refuses a non-zero one.
    if (class_id, method_id) == (60, 10) && payload.len() >= 8 {
        let prefetch_size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if prefetch_size != 0 {
            return Err(
                FrameError::Unsupported(format!("prefetch_size!=0 ({prefetch_size})"))
                    .on_method((class_id, method_id)),
            );
        }
    }
    if let Some(m) = decode_hot_method(class_id, method_id, &payload[4..]) {
        return Ok(m);
    }
    match amq_protocol::protocol::parse_class(payload) {
        Ok((_, class)) => Ok(class),
        // rabbit_misc:frame_error/2 names the method it could not decode.
        Err(_) => {
            Err(FrameError::CannotDecode(erl_binary(&payload[4..]))
                .on_method((class_id, method_id)))
        }
    }
}

/// A short string at the front of `p`, and the rest.
fn short_str(p: &[u8]) -> Option<(&str, &[u8])> {
    let n = usize::from(*p.first()?);
    let s = p.get(1..1 + n)?;
    Some((std::str::from_utf8(s).ok()?, &p[1 + n..]))
}

/// Hand-written decoding of the methods on the message hot path (`basic.publish`,
/// `basic.ack`), skipping amq-protocol's generic parser. Anything unusual returns `None` and
/// takes the generic path, which also produces the error for malformed input.
fn decode_hot_method(class_id: u16, method_id: u16, args: &[u8]) -> Option<AMQPClass> {
    use crate::proto::{basic, ShortString};
    match (class_id, method_id) {
        (60, 40) => {
            let (exchange, rest) = short_str(args.get(2..)?)?;
            let (routing_key, rest) = short_str(rest)?;
            let bits = *rest.first()?;
            Some(AMQPClass::Basic(basic::AMQPMethod::Publish(
                basic::Publish {
                    exchange: ShortString::from(exchange.to_owned()),
                    routing_key: ShortString::from(routing_key.to_owned()),
                    mandatory: bits & 1 != 0,
                    immediate: bits & 2 != 0,
                },
            )))
        }
        (60, 80) => {
            let tag = u64::from_be_bytes(args.get(..8)?.try_into().ok()?);
            let bits = *args.get(8)?;
            Some(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple: bits & 1 != 0,
            })))
        }
        _ => None,
    }
}

fn decode_header(payload: Bytes) -> Result<ContentHeader, FrameError> {
    if payload.len() < 14 {
        return Err(FrameError::CannotDecode(erl_binary(&payload)));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let body_size = u64::from_be_bytes([
        payload[4],
        payload[5],
        payload[6],
        payload[7],
        payload[8],
        payload[9],
        payload[10],
        payload[11],
    ]);
    let raw = payload.slice(12..);
    // No properties at all (flag word 0) is common and needs no parser.
    let properties = if raw[..] == [0, 0] {
        Default::default()
    } else {
        match amq_protocol::protocol::basic::parse_properties(&raw[..]) {
            Ok((_, p)) => p,
            Err(_) => return Err(FrameError::CannotDecode(erl_binary(&raw))),
        }
    };
    Ok(ContentHeader {
        class_id,
        body_size,
        properties: Box::new(properties),
        raw_properties: raw,
    })
}

/// RabbitMQ's `rabbit_reader:payload_snippet/1` rendered with `~s octets = ~p`: the whole
/// payload up to 16 bytes, else its first 16.
fn payload_snippet(payload: &[u8]) -> String {
    if payload.len() <= 16 {
        format!("all octets = {}", erl_p_binary(payload))
    } else {
        format!("first 16 octets = {}", erl_p_binary(&payload[..16]))
    }
}

/// Renders a short binary as Erlang's `~p` does: `<<"text">>` when every byte is printable
/// (Latin-1), else `<<1,2,3>>`.
fn erl_p_binary(bytes: &[u8]) -> String {
    let printable = |b: u8| matches!(b, 32..=126 | 160..=255 | 8..=13 | 27);
    if bytes.is_empty() || !bytes.iter().all(|b| printable(*b)) {
        let shown: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
        return format!("<<{}>>", shown.join(","));
    }
    let mut s = String::from("<<\"");
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            8 => s.push_str("\\b"),
            11 => s.push_str("\\v"),
            12 => s.push_str("\\f"),
            27 => s.push_str("\\e"),
            _ => s.push(char::from(b)),
        }
    }
    s.push_str("\">>");
    s
}

/// Renders bytes the way Erlang prints a binary (`<<0,1,2>>`), cut after 32 bytes.
fn erl_binary(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(32).map(|b| b.to_string()).collect();
    let more = if bytes.len() > 32 { ",..." } else { "" };
    format!("<<{}{}>>", shown.join(","), more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_header_outcomes() {
        let mut b = BytesMut::from(&b"AMQ"[..]);
        assert_eq!(decode_protocol_header(&mut b), HeaderOutcome::NeedMore);
        b.extend_from_slice(b"P\x00\x00\x09\x01rest");
        assert_eq!(decode_protocol_header(&mut b), HeaderOutcome::Accepted);
        assert_eq!(&b[..], b"rest");
        let mut b = BytesMut::from(&b"GET / HTTP/1.1"[..]);
        assert_eq!(decode_protocol_header(&mut b), HeaderOutcome::Rejected);
        let mut b = BytesMut::from(&b"AMQP\x00\x00\x09\x02"[..]);
        assert_eq!(decode_protocol_header(&mut b), HeaderOutcome::Rejected);
        let mut b = BytesMut::from(&b"AMQP\x01\x01\x00\x09"[..]);
        assert_eq!(decode_protocol_header(&mut b), HeaderOutcome::Accepted);
    }

    #[test]
    fn partial_frames_need_more() {
        let full = [8u8, 0, 0, 0, 0, 0, 0, 0xCE];
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(decode_frame(&mut b, 131072), Ok(None));
            assert_eq!(b.len(), cut, "nothing consumed on a partial frame");
        }
        let mut b = BytesMut::from(&full[..]);
        assert_eq!(decode_frame(&mut b, 131072), Ok(Some(Frame::Heartbeat)));
        assert!(b.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_from_the_header_alone() {
        // Only the 7-byte header: the 200000-byte payload is never waited for.
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 3, 0x0d, 0x40][..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(err.reply_code(), ReplyCode::FrameError);
        assert_eq!(
            err.reply_text(),
            "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,200000,131064}"
        );
    }

    #[test]
    fn bad_frame_end() {
        let mut b = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0][..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(
            err.reply_text(),
            "FRAME_ERROR - type 8, all octets = <<>>: {invalid_frame_end_marker,0}"
        );
    }

    #[test]
    fn bad_frame_end_prints_the_payload_like_rabbitmq() {
        // channel.open on channel 1 with a wrong end octet
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0][..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(
            err.reply_text(),
            "FRAME_ERROR - type 1, all octets = <<0,20,0,10,0>>: {invalid_frame_end_marker,0}"
        );
        assert_eq!(erl_p_binary(b"ab\"c\n"), "<<\"ab\\\"c\\n\">>");
        assert_eq!(
            payload_snippet(&[1u8; 20]),
            "first 16 octets = <<1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>>"
        );
    }

    #[test]
    fn method_errors_name_the_method() {
        // queue.declare with its arguments cut after one octet
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 5, 0, 50, 0, 10, 0, 0xCE][..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(err.reply_text(), "FRAME_ERROR - cannot decode <<0>>");
        assert_eq!(err.method_ids(), (50, 10));
        // basic.qos with prefetch_size 10
        let mut b = BytesMut::from(
            &[
                1u8, 0, 1, 0, 0, 0, 11, 0, 60, 0, 10, 0, 0, 0, 10, 0, 0, 0, 0xCE,
            ][..],
        );
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(err.reply_code(), ReplyCode::NotImplemented);
        assert_eq!(err.reply_text(), "NOT_IMPLEMENTED - prefetch_size!=0 (10)");
        assert_eq!(err.method_ids(), (60, 10));
    }

    #[test]
    fn heartbeat_on_channel_is_unexpected() {
        let mut b = BytesMut::from(&[8u8, 0, 1, 0, 0, 0, 0, 0xCE][..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(err.reply_code(), ReplyCode::UnexpectedFrame);
        assert_eq!(
            err.reply_text(),
            "UNEXPECTED_FRAME - type 8, all octets = <<>>"
        );
    }

    #[test]
    fn unknown_method_and_truncated_args() {
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, 0xCE][..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(err.reply_code(), ReplyCode::NotImplemented);
        // channel.open (20.10) with its short-string argument missing
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 20, 0, 10, 0xCE][..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(err.reply_code(), ReplyCode::FrameError);
        assert_eq!(err.reply_text(), "FRAME_ERROR - cannot decode <<>>");
    }

    #[test]
    fn unknown_frame_type() {
        let mut b = BytesMut::from(&b"garbage!garbage!"[..]);
        let err = decode_frame(&mut b, 131072).unwrap_err();
        assert_eq!(err.reply_code(), ReplyCode::FrameError);
    }
}

#[cfg(test)]
mod hot_path_tests {
    use super::*;
    use crate::proto::basic;

    fn generic(payload: &[u8]) -> AMQPClass {
        amq_protocol::protocol::parse_class(payload)
            .expect("parses")
            .1
    }

    #[test]
    fn hot_methods_decode_like_amq_protocol() {
        for (x, k, bits) in [
            ("", "q", 0u8),
            ("amq.topic", "a.b.c", 1),
            ("é-x", "ключ", 3),
            ("x", "", 2),
        ] {
            let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: x.into(),
                routing_key: k.into(),
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            }));
            let mut out = bytes::BytesMut::new();
            crate::encode::encode_method(&mut out, 1, &m);
            let payload = &out[7..out.len() - 1];
            assert_eq!(decode_method(payload).expect("decodes"), generic(payload));
            assert_eq!(decode_method(payload).expect("decodes"), m);
        }
        for (tag, multiple) in [(0u64, false), (1, true), (u64::MAX, false)] {
            let m = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple,
            }));
            let mut out = bytes::BytesMut::new();
            crate::encode::encode_method(&mut out, 1, &m);
            let payload = &out[7..out.len() - 1];
            assert_eq!(decode_method(payload).expect("decodes"), m);
        }
        // Truncated publish arguments still get the generic path's error.
        assert!(decode_method(&[0, 60, 0, 40, 0, 0, 5, b'a']).is_err());
    }
}
