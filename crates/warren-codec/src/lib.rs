//! Sans-IO AMQP 0-9-1 wire codec for Warren.
//!
//! # What this crate owns
//! - Incremental frame decoding from a [`bytes::BytesMut`] ([`frame::decode_frame`]): the 7-byte header
//!   is checked against the negotiated `frame_max` *before* anything is buffered, and the frame-end
//!   octet is verified. Bodies and raw content properties come out as [`bytes::Bytes`] slices of the
//!   read buffer: they are never copied while decoding.
//! - The protocol header handshake ([`frame::decode_protocol_header`]).
//! - The per-channel [`assembler::ContentAssembler`] (method, content header, body frames -> command),
//!   modelled on RabbitMQ's `rabbit_command_assembler`.
//! - Encoding of methods and of content split into frames of at most `frame_max`
//!   ([`encode`]), with a hand-written fast path for `basic.deliver`.
//! - [`ReplyCode`]: every AMQP reply code with RabbitMQ's names and its hard/soft class.
//!
//! # What it must not do
//! No sockets, no clocks, no tokio, no broker state. Method and property types come from
//! `amq-protocol` (generated from the same spec JSON RabbitMQ uses) and are re-exported in [`proto`].
#![warn(missing_docs)]

pub mod assembler;
pub mod encode;
pub mod frame;
pub mod method;
mod reply;

pub use assembler::{Command, ContentAssembler, ContentHeader, DirectBody};
pub use frame::{
    decode_frame, decode_protocol_header, partial_body_frame, Frame, FrameError, HeaderOutcome,
};
pub use reply::ReplyCode;

/// Re-exports of the protocol types this codec speaks (from `amq-protocol`), so that the rest of
/// the broker depends on one crate for the wire vocabulary.
pub mod proto {
    pub use amq_protocol::protocol::{
        access, basic, basic::AMQPProperties, channel, confirm, connection, exchange, queue, tx,
        AMQPClass,
    };
    pub use amq_protocol::types::{
        AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
    };
}

/// A channel number (0 is the connection's own channel).
pub type ChannelId = u16;

/// The protocol header a 0-9-1 client sends and the server answers with on a mismatch.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// Smallest `frame_max` a peer may negotiate. The spec says 8192, but RabbitMQ 3.10.8 accepts 4096
/// (observed), so we do too.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Size of the frame header (type, channel, payload size) plus the frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The frame-end octet every frame must finish with.
pub const FRAME_END: u8 = 0xCE;
/// RabbitMQ's hard cap on a message body announced by a content header (`?MAX_MSG_SIZE`).
pub const MAX_BODY_SIZE: u64 = 512 * 1024 * 1024;

/// Decodes the entries of a field table that arrives without its 4-byte length prefix (the
/// AMQPLAIN response). `None` when the bytes are not a valid table.
pub fn decode_table_entries(bytes: &[u8]) -> Option<proto::FieldTable> {
    let len = u32::try_from(bytes.len()).ok()?;
    let mut framed = Vec::with_capacity(bytes.len() + 4);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    match amq_protocol::types::parsing::parse_field_table(&framed[..]) {
        Ok((&[], table)) => Some(table),
        _ => None,
    }
}

/// Decodes raw content properties (property flags and fields, as in a content header after
/// the body size). `None` when they do not decode.
pub fn decode_properties(raw: &[u8]) -> Option<proto::AMQPProperties> {
    amq_protocol::protocol::basic::parse_properties(raw)
        .ok()
        .map(|(_, p)| p)
}

/// Encodes content properties (property flags and fields), as a content header carries them.
pub fn encode_properties(props: &proto::AMQPProperties) -> Vec<u8> {
    amq_protocol::protocol::basic::gen_properties(props)(amq_protocol::frame::WriteContext::from(
        Vec::with_capacity(64),
    ))
    .map(|ctx| ctx.write)
    // Properties always encode (they are parsed values); an empty flag word is the safe fallback.
    .unwrap_or_else(|_| vec![0, 0])
}
