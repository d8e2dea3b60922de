//! The socket input of a connection: the read buffer frames are decoded from, and *direct body
//! reads*.
//!
//! A large body frame (at least [`DIRECT_MIN`] payload bytes) that is not yet complete in the
//! read buffer is not assembled there: its payload goes straight into the body buffer of the
//! message its channel is assembling (lent by `ContentAssembler::begin_direct`), the bytes
//! already read first, then the rest read from the socket into that buffer. The frame-end octet
//! is read into the read buffer again and checked by the connection, which then hands the body
//! buffer back (`ContentAssembler::finish_direct`). So a multi-frame body is never joined by a
//! copy, and the read buffer does not grow to hold large frames.

use bytes::{BufMut, BytesMut};
use std::future::Future;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt};
use warren_codec::ChannelId;

/// Read buffer starting size.
pub(super) const READ_BUF: usize = 64 * 1024;

/// Body frames with at least this many payload bytes are read directly into their body buffer.
/// Smaller ones are cheap to join, and most of them arrive whole in one read anyway.
pub(super) const DIRECT_MIN: usize = 32 * 1024;

/// A body frame whose payload is being read straight into its message's body buffer.
#[derive(Debug)]
pub(super) struct Direct {
    /// The frame's channel.
    pub channel: ChannelId,
    /// The message body so far, lent by the channel's assembler.
    pub buf: BytesMut,
    /// Payload size of the frame.
    pub len: usize,
    /// Payload bytes still to read; at 0 the frame-end octet is next, in the read buffer.
    pub left: usize,
    /// More body frames follow this one.
    pub more: bool,
}

/// The read buffer and, while a large body frame arrives, its direct read.
#[derive(Debug)]
pub(super) struct Input {
    /// Bytes read and not yet decoded.
    pub buf: BytesMut,
    /// The body frame being read directly, if any.
    pub direct: Option<Direct>,
    /// A direct frame ended and its body has more frames: read no further than the next frame
    /// header, so that the next body frame's payload is not read into `buf` (to be copied out).
    pub header_only: bool,
}

impl Input {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_BUF),
            direct: None,
            header_only: false,
        }
    }

    /// The most the next read into `buf` may take, when limited.
    fn limit(&self) -> Option<usize> {
        let want: usize = match &self.direct {
            // The frame-end octet, and the header of the body frame that should follow.
            Some(d) if d.more => 8,
            Some(_) => return None,
            None if self.header_only => 7,
            None => return None,
        };
        Some(want.saturating_sub(self.buf.len()).max(1))
    }

    /// Reads what the socket has (waiting for something) into the direct frame's body buffer
    /// or into the read buffer. `Ok(0)` is the end of the stream.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, sock: &mut R) -> std::io::Result<usize> {
        if let Some(d) = self.direct.as_mut().filter(|d| d.left > 0) {
            let n = sock.read_buf(&mut (&mut d.buf).limit(d.left)).await?;
            d.left = d.left.saturating_sub(n);
            return Ok(n);
        }
        match self.limit() {
            Some(limit) => sock.read_buf(&mut (&mut self.buf).limit(limit)).await,
            None => sock.read_buf(&mut self.buf).await,
        }
    }

    /// Like [`Input::read`] without waiting (`WouldBlock` when nothing is there): polls the
    /// read once.
    pub fn try_read<R: AsyncRead + Unpin>(&mut self, sock: &mut R) -> std::io::Result<usize> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let read = std::pin::pin!(self.read(sock));
        match read.poll(&mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Keeps room in the read buffer for the next read.
    pub fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < 4096 && self.buf.len() < READ_BUF {
            self.buf.reserve(READ_BUF);
        }
    }
}
