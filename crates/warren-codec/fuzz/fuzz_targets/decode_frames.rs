//! Feeds the input to the frame decoder as a connection's byte stream (protocol header optional),
//! in chunks of a size picked by the first input byte, through one `ContentAssembler` per
//! channel, the way the connection reader does. Must never panic, and every decoded method must
//! re-encode to bytes that decode and re-encode to the same bytes.
#![no_main]

use std::collections::HashMap;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren_codec::encode::encode_method;
use warren_codec::proto::AMQPClass;
use warren_codec::{
    decode_frame, decode_protocol_header, method, ContentAssembler, Frame, FrameError,
    HeaderOutcome,
};

fn check_method_reencodes(channel: u16, m: &AMQPClass) {
    let mut once = BytesMut::new();
    encode_method(&mut once, channel, m);
    let bytes = once.clone();
    let again = match decode_frame(&mut once, u32::MAX) {
        Ok(Some(Frame::Method { method, .. })) => method,
        other => panic!("re-encoded method does not decode: {other:?} from {m:?}"),
    };
    let mut twice = BytesMut::new();
    encode_method(&mut twice, channel, &again);
    assert_eq!(bytes, twice, "method encoding is not stable: {m:?}");
}

fn on_error(e: &FrameError) {
    let _ = e.reply_code();
    assert!(e.reply_text().len() <= 255);
}

fuzz_target!(|data: &[u8]| {
    let [ctl, chunk_sel, rest @ ..] = data else {
        return;
    };
    let frame_max = match ctl & 3 {
        0 => 4096,
        1 => 131_072,
        2 => 0,
        _ => 16_384,
    };
    let chunk = match chunk_sel {
        0 => usize::MAX,
        n => usize::from(*n),
    };
    let mut stream = rest;
    let mut buf = BytesMut::new();
    let mut header_done = !stream.starts_with(b"AM");
    let mut assemblers: HashMap<u16, ContentAssembler> = HashMap::new();
    while !stream.is_empty() {
        let n = chunk.min(stream.len());
        buf.extend_from_slice(&stream[..n]);
        stream = &stream[n..];
        if !header_done {
            match decode_protocol_header(&mut buf) {
                HeaderOutcome::NeedMore => continue,
                HeaderOutcome::Rejected => return,
                HeaderOutcome::Accepted => header_done = true,
            }
        }
        loop {
            let before = buf.len();
            let frame = match decode_frame(&mut buf, frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) must not consume");
                    break;
                }
                Err(e) => return on_error(&e),
            };
            let result = match frame {
                Frame::Method { channel, method } => {
                    let (c, m) = method::ids(&method);
                    assert!(method::is_known(c, m));
                    let _ = method::name(c, m);
                    check_method_reencodes(channel, &method);
                    assemblers.entry(channel).or_default().handle_method(method)
                }
                Frame::Header { channel, header } => {
                    assemblers.entry(channel).or_default().handle_header(header)
                }
                Frame::Body { channel, payload } => {
                    assemblers.entry(channel).or_default().handle_body(payload)
                }
                Frame::Heartbeat => Ok(None),
            };
            if let Err(e) = result {
                return on_error(&e);
            }
        }
    }
});
