//! The per-channel content assembler, after RabbitMQ's `rabbit_command_assembler`: a method that
//! carries content is followed by exactly one content header and then body frames until the
//! announced size is reached. Anything else interleaved on that channel is 505 UNEXPECTED_FRAME.

use bytes::{Bytes, BytesMut};

use crate::frame::FrameError;
use crate::method;
use crate::proto::{AMQPClass, AMQPProperties};
use crate::MAX_BODY_SIZE;

/// The most a multi-frame body reserves up front from the size its header announces; past it
/// the buffer grows with the bytes actually received.
const MAX_BODY_PREALLOC: u64 = 1024 * 1024;

/// A decoded content header. `raw_properties` keeps the publisher's property bytes (flags and
/// fields) verbatim, so deliveries forward them unchanged as RabbitMQ does with `properties_bin`.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// Class of the content (60 for basic).
    pub class_id: u16,
    /// Total body size announced by the header.
    pub body_size: u64,
    /// The decoded properties.
    pub properties: Box<AMQPProperties>,
    /// The property flags and fields as they arrived.
    pub raw_properties: Bytes,
}

/// A complete command: a method alone, or a method with its content.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A method without content.
    Method(AMQPClass),
    /// A content-carrying method with its header and whole body.
    Content {
        /// The method (e.g. `basic.publish`).
        method: AMQPClass,
        /// The content header.
        header: ContentHeader,
        /// The body: the body frame itself when it came in one frame, otherwise the frames joined.
        body: Bytes,
    },
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    ExpectHeader(AMQPClass),
    ExpectBody {
        method: AMQPClass,
        header: ContentHeader,
        first: Option<Bytes>,
        joined: Option<BytesMut>,
        received: u64,
    },
}

/// Assembles frames of one channel into [`Command`]s.
#[derive(Debug, Default)]
pub struct ContentAssembler {
    state: State,
}

impl ContentAssembler {
    /// A fresh assembler expecting a method frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the assembler is between commands.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Forgets a half-assembled command (used when the channel closes).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// Feeds a method frame.
    pub fn handle_method(&mut self, method: AMQPClass) -> Result<Option<Command>, FrameError> {
        match &self.state {
            State::Idle => {}
            State::ExpectHeader(m) => {
                return Err(FrameError::Unexpected(format!(
                    "expected content header for class {}, got non content header frame instead",
                    m.get_amqp_class_id()
                ))
                .on_method(method::ids(m)))
            }
            State::ExpectBody { method: m, .. } => {
                return Err(FrameError::Unexpected(
                    "expected content body, got non content body frame instead".into(),
                )
                .on_method(method::ids(m)))
            }
        }
        let (class_id, method_id) = method::ids(&method);
        if method::has_content(class_id, method_id) {
            self.state = State::ExpectHeader(method);
            Ok(None)
        } else {
            Ok(Some(Command::Method(method)))
        }
    }

    /// Feeds a content header frame.
    pub fn handle_header(&mut self, header: ContentHeader) -> Result<Option<Command>, FrameError> {
        let method = match std::mem::take(&mut self.state) {
            State::ExpectHeader(m) => m,
            State::Idle => {
                return Err(FrameError::Unexpected(
                    "expected method frame, got non method frame instead".into(),
                ))
            }
            other @ State::ExpectBody { .. } => {
                let ids = match &other {
                    State::ExpectBody { method: m, .. } => method::ids(m),
                    _ => (0, 0),
                };
                self.state = other;
                return Err(FrameError::Unexpected(
                    "expected content body, got non content body frame instead".into(),
                )
                .on_method(ids));
            }
        };
        if header.class_id != method.get_amqp_class_id() {
            return Err(FrameError::Unexpected(format!(
                "expected content header for class {}, got one for class {} instead",
                method.get_amqp_class_id(),
                header.class_id
            ))
            .on_method(method::ids(&method)));
        }
        if header.body_size > MAX_BODY_SIZE {
            return Err(FrameError::BadContentSize(format!(
                "content body size {} exceeds maximum allowed size {}",
                header.body_size, MAX_BODY_SIZE
            )));
        }
        if header.body_size == 0 {
            return Ok(Some(Command::Content {
                method,
                header,
                body: Bytes::new(),
            }));
        }
        self.state = State::ExpectBody {
            method,
            header,
            first: None,
            joined: None,
            received: 0,
        };
        Ok(None)
    }

    /// Feeds a content body frame.
    pub fn handle_body(&mut self, payload: Bytes) -> Result<Option<Command>, FrameError> {
        if !matches!(self.state, State::ExpectBody { .. }) {
            return Err(self.not_expecting_body());
        }
        self.account(payload.len())?;
        let State::ExpectBody {
            header,
            first,
            joined,
            ..
        } = &mut self.state
        else {
            unreachable!("state checked above")
        };
        match (first.take(), joined.as_mut()) {
            (None, None) => *first = Some(payload),
            (Some(f), None) => {
                // A second frame: from here on the body is joined into one buffer (one copy).
                let mut b = body_buffer(header.body_size);
                b.extend_from_slice(&f);
                b.extend_from_slice(&payload);
                *joined = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&payload),
        }
        Ok(self.complete())
    }

    /// Offers a body frame of `payload_len` bytes whose payload has not been read yet, so that
    /// the reader can put it straight into the body buffer instead of joining it afterwards.
    ///
    /// When the assembler expects content body and the frame fits the announced size, returns
    /// the body so far (a buffer with room for at least `payload_len` more bytes) and takes it
    /// out of the assembler: the caller appends the frame's payload and hands the buffer back with
    /// [`ContentAssembler::finish_direct`]. Otherwise (wrong state, too many bytes) returns `None`
    /// and the frame should take the normal path, where [`ContentAssembler::handle_body`] gives
    /// the error.
    ///
    /// The buffer reserves what the announced size promises only up to a bound (as
    /// `handle_body` does) and otherwise grows with the frames actually announced, each at most
    /// `frame_max` bytes.
    pub fn begin_direct(&mut self, payload_len: usize) -> Option<DirectBody> {
        let State::ExpectBody {
            header,
            first,
            joined,
            received,
            ..
        } = &mut self.state
        else {
            return None;
        };
        let after = received.checked_add(payload_len as u64)?;
        if after > header.body_size {
            return None;
        }
        let mut buf = match (joined.take(), first.take()) {
            (Some(b), _) => b,
            (None, first) => {
                let mut b = body_buffer(header.body_size);
                if let Some(f) = first {
                    b.extend_from_slice(&f);
                }
                b
            }
        };
        buf.reserve(payload_len);
        Some(DirectBody {
            buf,
            completes: after == header.body_size,
        })
    }

    /// Gives back the body buffer taken with [`ContentAssembler::begin_direct`] after `n` bytes
    /// (one body frame's payload) were appended to it. Accounts them like
    /// [`ContentAssembler::handle_body`], with the same errors, and returns the command when the
    /// body is complete.
    pub fn finish_direct(
        &mut self,
        buf: BytesMut,
        n: usize,
    ) -> Result<Option<Command>, FrameError> {
        if !matches!(self.state, State::ExpectBody { .. }) {
            return Err(self.not_expecting_body());
        }
        self.account(n)?;
        let State::ExpectBody { first, joined, .. } = &mut self.state else {
            unreachable!("state checked above")
        };
        *first = None;
        *joined = Some(buf);
        Ok(self.complete())
    }

    /// The error for a body frame when no body is expected.
    fn not_expecting_body(&self) -> FrameError {
        match self.state {
            State::ExpectHeader(ref m) => FrameError::Unexpected(format!(
                "expected content header for class {}, got non content header frame instead",
                m.get_amqp_class_id()
            ))
            .on_method(method::ids(m)),
            _ => {
                FrameError::Unexpected("expected method frame, got non method frame instead".into())
            }
        }
    }

    /// Counts `n` more body bytes; more than the header announced is an error.
    fn account(&mut self, n: usize) -> Result<(), FrameError> {
        if let State::ExpectBody {
            header, received, ..
        } = &mut self.state
        {
            *received = received.saturating_add(n as u64);
            if *received > header.body_size {
                return Err(FrameError::BadContentSize(format!(
                    "received {} bytes of content, more than the announced body size {}",
                    *received, header.body_size
                )));
            }
        }
        Ok(())
    }

    /// The finished command once every announced body byte has arrived.
    fn complete(&mut self) -> Option<Command> {
        match &self.state {
            State::ExpectBody {
                header, received, ..
            } if *received >= header.body_size => {}
            _ => return None,
        }
        let State::ExpectBody {
            method,
            header,
            first,
            joined,
            ..
        } = std::mem::take(&mut self.state)
        else {
            return None;
        };
        let body = match (first, joined) {
            (_, Some(b)) => b.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        };
        Some(Command::Content {
            method,
            header,
            body,
        })
    }
}

/// A body buffer lent out by [`ContentAssembler::begin_direct`].
#[derive(Debug)]
pub struct DirectBody {
    /// The body so far, with room for the frame's payload.
    pub buf: BytesMut,
    /// The frame is the body's last one.
    pub completes: bool,
}

/// A buffer for a multi-frame body. The announced size is only trusted up to a bound: a peer
/// could otherwise make us reserve 512 MiB per channel with a header and two 1-byte body frames.
fn body_buffer(body_size: u64) -> BytesMut {
    BytesMut::with_capacity(body_size.min(MAX_BODY_PREALLOC) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::basic;

    fn publish() -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        }))
    }

    fn header(size: u64) -> ContentHeader {
        ContentHeader {
            class_id: 60,
            body_size: size,
            properties: Box::default(),
            raw_properties: Bytes::from_static(&[0, 0]),
        }
    }

    #[test]
    fn single_frame_body_is_not_copied() {
        let mut a = ContentAssembler::new();
        assert_eq!(a.handle_method(publish()), Ok(None));
        assert_eq!(a.handle_header(header(5)), Ok(None));
        let body = Bytes::from_static(b"hello");
        let ptr = body.as_ptr();
        match a.handle_body(body) {
            Ok(Some(Command::Content { body, .. })) => assert_eq!(body.as_ptr(), ptr),
            other => panic!("unexpected {other:?}"),
        }
        assert!(a.is_idle());
    }

    #[test]
    fn multi_frame_body_and_empty_body() {
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(6)).unwrap();
        assert_eq!(a.handle_body(Bytes::from_static(b"ab")), Ok(None));
        assert_eq!(a.handle_body(Bytes::from_static(b"cd")), Ok(None));
        match a.handle_body(Bytes::from_static(b"ef")) {
            Ok(Some(Command::Content { body, .. })) => assert_eq!(&body[..], b"abcdef"),
            other => panic!("unexpected {other:?}"),
        }
        a.handle_method(publish()).unwrap();
        assert!(matches!(
            a.handle_header(header(0)),
            Ok(Some(Command::Content { .. }))
        ));
    }

    #[test]
    fn announced_size_is_not_preallocated_beyond_a_bound() {
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(MAX_BODY_SIZE)).unwrap();
        assert_eq!(a.handle_body(Bytes::from_static(b"a")), Ok(None));
        assert_eq!(a.handle_body(Bytes::from_static(b"b")), Ok(None));
        let State::ExpectBody {
            joined: Some(ref b),
            ..
        } = a.state
        else {
            panic!("expected a joined body, got {:?}", a.state);
        };
        assert!(
            b.capacity() as u64 <= MAX_BODY_PREALLOC,
            "reserved {} bytes for 2 received",
            b.capacity()
        );
        assert_eq!(&b[..], b"ab");
    }

    #[test]
    fn interleaving_is_unexpected_frame() {
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        let err = a.handle_method(publish()).unwrap_err();
        assert_eq!(
            err.reply_text(),
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
        );
        let mut a = ContentAssembler::new();
        let err = a.handle_body(Bytes::from_static(b"x")).unwrap_err();
        assert_eq!(
            err.reply_text(),
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
        );
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(2)).unwrap();
        assert!(a.handle_body(Bytes::from_static(b"xyz")).is_err());
    }

    /// Runs one body frame through the direct path: lend the buffer, append, give it back.
    fn direct(a: &mut ContentAssembler, payload: &[u8]) -> Result<Option<Command>, FrameError> {
        let Some(DirectBody { mut buf, .. }) = a.begin_direct(payload.len()) else {
            panic!("direct refused for {} bytes", payload.len());
        };
        assert!(buf.capacity() - buf.len() >= payload.len());
        buf.extend_from_slice(payload);
        a.finish_direct(buf, payload.len())
    }

    #[test]
    fn direct_body_frames_are_accounted_and_complete() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(body.len() as u64)).unwrap();
        // Direct, normal, direct: the paths mix within one body.
        assert_eq!(direct(&mut a, &body[..4000]), Ok(None));
        assert_eq!(
            a.handle_body(Bytes::copy_from_slice(&body[4000..5000])),
            Ok(None)
        );
        let d = a.begin_direct(5000).expect("direct");
        assert!(d.completes);
        let mut buf = d.buf;
        buf.extend_from_slice(&body[5000..]);
        match a.finish_direct(buf, 5000) {
            Ok(Some(Command::Content { body: got, .. })) => assert_eq!(&got[..], &body[..]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(a.is_idle());

        // A first frame that came the normal way is joined into the direct buffer.
        a.handle_method(publish()).unwrap();
        a.handle_header(header(6)).unwrap();
        assert_eq!(a.handle_body(Bytes::from_static(b"ab")), Ok(None));
        let d = a.begin_direct(4).expect("direct");
        assert!(d.completes);
        let mut buf = d.buf;
        buf.extend_from_slice(b"cdef");
        match a.finish_direct(buf, 4) {
            Ok(Some(Command::Content { body, .. })) => assert_eq!(&body[..], b"abcdef"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn direct_refuses_what_handle_body_rejects() {
        // Too many bytes: no direct buffer, and the normal path gives the error.
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(10)).unwrap();
        assert_eq!(direct(&mut a, b"12345678"), Ok(None));
        assert!(a.begin_direct(3).is_none());
        let err = a.handle_body(Bytes::from_static(b"9ab")).unwrap_err();
        assert_eq!(
            err.reply_text(),
            "FRAME_ERROR - received 11 bytes of content, more than the announced body size 10"
        );

        // finish_direct checks the count it is given like handle_body does.
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(10)).unwrap();
        let d = a.begin_direct(10).expect("direct");
        assert_eq!(
            a.finish_direct(d.buf, 11).unwrap_err().reply_text(),
            "FRAME_ERROR - received 11 bytes of content, more than the announced body size 10"
        );

        // Not expecting a body: no direct buffer, and finishing is the handle_body error.
        let mut a = ContentAssembler::new();
        assert!(a.begin_direct(1).is_none());
        assert_eq!(
            a.finish_direct(BytesMut::new(), 1)
                .unwrap_err()
                .reply_text(),
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
        );
        a.handle_method(publish()).unwrap();
        assert!(a.begin_direct(1).is_none());
        let err = a.finish_direct(BytesMut::new(), 1).unwrap_err();
        assert_eq!(err.reply_code(), crate::ReplyCode::UnexpectedFrame);
        assert_eq!(err.method_ids(), (60, 40));
    }

    #[test]
    fn interleaving_during_direct_body_is_unexpected_frame() {
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(100)).unwrap();
        assert_eq!(direct(&mut a, &[1; 40]), Ok(None));
        let err = a.handle_method(publish()).unwrap_err();
        assert_eq!(
            err.reply_text(),
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
        );
        assert_eq!(err.method_ids(), (60, 40));
        let err = a.handle_header(header(100)).unwrap_err();
        assert_eq!(err.reply_code(), crate::ReplyCode::UnexpectedFrame);
        // The body still completes after the refused frames.
        assert!(matches!(
            direct(&mut a, &[2; 60]),
            Ok(Some(Command::Content { body, .. })) if body.len() == 100 && body[40] == 2
        ));
    }

    #[test]
    fn direct_buffer_is_not_preallocated_beyond_a_bound() {
        let mut a = ContentAssembler::new();
        a.handle_method(publish()).unwrap();
        a.handle_header(header(MAX_BODY_SIZE)).unwrap();
        let d = a.begin_direct(100).expect("direct");
        assert!(!d.completes);
        assert!(d.buf.capacity() as u64 <= MAX_BODY_PREALLOC);
        a.finish_direct(d.buf, 0).unwrap();
        // Frames beyond the preallocation grow the buffer by what they announce.
        let d = a
            .begin_direct(2 * MAX_BODY_PREALLOC as usize)
            .expect("direct");
        assert!(d.buf.capacity() >= 2 * MAX_BODY_PREALLOC as usize);
        assert!(d.buf.capacity() <= 4 * MAX_BODY_PREALLOC as usize);
    }
}
