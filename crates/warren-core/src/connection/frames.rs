//! Frame routing of a running connection: frames of closing connections, the handshake,
//! channel 0, paused channels, direct body reads, and channel methods to their channel.

use bytes::{Buf, BytesMut};
use tracing::{debug, trace};

use super::channel::Channel;
use super::input::{Direct, Input, DIRECT_MIN};
use super::{handshake, Connection, Ctx, State};
use crate::error::AmqpError;
use warren_codec::proto::{connection, AMQPClass};
use warren_codec::{
    partial_body_frame, ChannelId, Frame, FrameError, ReplyCode, FRAME_BODY, FRAME_END,
};

impl Connection {
    /// Starts a direct body read (see `input.rs`) when `inbuf` starts with a large body frame
    /// that is not complete yet and its channel is assembling a body the frame fits. The
    /// payload bytes already read move into the body buffer and leave `inbuf`.
    pub(super) fn begin_direct(&mut self, inbuf: &mut BytesMut) -> Option<Direct> {
        if self.state != State::Running {
            return None;
        }
        let (channel, len) = partial_body_frame(inbuf, self.ctx.frame_max)?;
        if len < DIRECT_MIN {
            return None;
        }
        let body = self.channels.get_mut(&channel)?.begin_direct(len)?;
        let mut buf = body.buf;
        inbuf.advance(7);
        // partial_body_frame: fewer than len + 1 bytes follow the header.
        let have = inbuf.len().min(len);
        buf.extend_from_slice(&inbuf[..have]);
        inbuf.advance(have);
        trace!(channel, len, have, "direct body read");
        Some(Direct {
            channel,
            buf,
            len,
            left: len - have,
            more: !body.completes,
        })
    }

    /// Ends a direct body read once its payload is in and `input.buf` holds the next octet:
    /// checks that it is the frame end and hands the body buffer back to the channel, which
    /// completes the message when this was the body's last frame.
    pub(super) fn finish_direct(&mut self, input: &mut Input) {
        let Some(&end) = input.buf.first() else {
            return;
        };
        let Some(d) = input.direct.take() else {
            return;
        };
        input.buf.advance(1);
        if end != FRAME_END {
            let payload = &d.buf[d.buf.len().saturating_sub(d.len)..];
            let e = FrameError::bad_frame_end(FRAME_BODY, end, payload);
            self.frame_error(e, &mut input.buf);
            return;
        }
        input.header_only = d.more;
        if self.state != State::Running {
            // Closing: like any other frame, the body is dropped.
            return;
        }
        let r = self.with_channel(d.channel, |ch, ctx| ch.finish_direct(ctx, d.buf, d.len));
        if let Err(e) = r {
            self.close_connection(e);
        }
    }

    pub(super) fn handle_frame(&mut self, frame: Frame) {
        if self.state == State::Closed {
            // RabbitMQ answers every `connection.close` it receives (clients that close from
            // several threads each get their close-ok); nothing else is looked at.
            if let Frame::Method {
                channel: 0,
                method: AMQPClass::Connection(connection::AMQPMethod::Close(_)),
            } = frame
            {
                self.send_close_ok();
            }
            return;
        }
        if self.state == State::Closing {
            // After connection.close only close/close-ok matter (spec 4.2.2).
            if let Frame::Method {
                channel: 0,
                method: AMQPClass::Connection(m),
            } = frame
            {
                match m {
                    connection::AMQPMethod::CloseOk(_) => self.state = State::Done,
                    connection::AMQPMethod::Close(_) => {
                        self.ctx.send_method(
                            0,
                            &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.state = State::Done;
                    }
                    _ => {}
                }
            }
            return;
        }
        if self.state != State::Running {
            let r = match frame {
                Frame::Method { channel: 0, method } => handshake::handle(self, method),
                Frame::Heartbeat => Ok(()),
                _ => Err(AmqpError::channel_error(format!(
                    "unexpected method in connection state {}",
                    self.state.rabbit_name()
                ))),
            };
            if let Err(e) = r {
                self.close_connection(e);
            }
            return;
        }
        let r = match frame {
            Frame::Heartbeat => Ok(()),
            Frame::Method { channel: 0, method } => self.handle_channel0(method),
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => {
                Err(AmqpError::new(
                    ReplyCode::UnexpectedFrame,
                    "expected method frame, got non method frame instead",
                ))
            }
            Frame::Method { channel, method } => self.handle_channel_method(channel, method),
            f @ (Frame::Header { .. } | Frame::Body { .. }) => self.content_frame(f),
        };
        if let Err(e) = r {
            self.close_connection(e);
        }
    }

    fn handle_channel0(&mut self, method: AMQPClass) -> Result<(), AmqpError> {
        let ids = warren_codec::method::ids(&method);
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                debug!(code = c.reply_code, text = %c.reply_text, "client closed the connection");
                if self.channels.values().any(Channel::is_paused) {
                    self.close_deferred = true;
                    return Ok(());
                }
                self.client_close();
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.ctx.send_method(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            _ => Err(
                AmqpError::channel_error("unexpected method in connection state running").on(ids),
            ),
        }
    }

    /// The client's `connection.close`: release everything, answer, and leave the socket for
    /// the client to close (bounded by [`CLOSED_TIMEOUT`](super::CLOSED_TIMEOUT)).
    pub(super) fn client_close(&mut self) {
        self.teardown();
        self.send_close_ok();
        self.state = State::Closed;
        self.close_deadline = Some(tokio::time::Instant::now() + super::CLOSED_TIMEOUT);
    }

    fn send_close_ok(&mut self) {
        self.ctx.send_method(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
    }

    /// A content header or body frame for its channel (one lookup): dropped for a closing
    /// channel, held for a paused one, 504 CHANNEL_ERROR for an unknown one.
    fn content_frame(&mut self, frame: Frame) -> Result<(), AmqpError> {
        let (Frame::Header { channel: id, .. } | Frame::Body { channel: id, .. }) = frame else {
            return Ok(());
        };
        let Some(ch) = self.channels.get_mut(&id) else {
            return Err(AmqpError::channel_error("expected 'channel.open'"));
        };
        if ch.is_closing() {
            return Ok(());
        }
        if ch.is_paused() {
            // Frames of a paused channel wait, in order, until it resumes.
            ch.hold(frame);
            return Ok(());
        }
        let r = match frame {
            Frame::Header { header, .. } => ch.handle_header(&mut self.ctx, header),
            Frame::Body { payload, .. } => ch.handle_body(&mut self.ctx, payload),
            _ => Ok(()),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.is_hard() => Err(e),
            Err(e) => {
                ch.close_with(&mut self.ctx, e);
                Ok(())
            }
        }
    }

    /// Runs `f` on an open channel; frames for a closing channel are dropped, and frames for an
    /// unknown channel are 504 CHANNEL_ERROR.
    fn with_channel(
        &mut self,
        id: ChannelId,
        f: impl FnOnce(&mut Channel, &mut Ctx) -> Result<(), AmqpError>,
    ) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Err(AmqpError::channel_error("expected 'channel.open'"));
        };
        if ch.is_closing() {
            return Ok(());
        }
        match f(ch, &mut self.ctx) {
            Ok(()) => Ok(()),
            Err(e) if e.is_hard() => Err(e),
            Err(e) => {
                ch.close_with(&mut self.ctx, e);
                Ok(())
            }
        }
    }

    fn handle_channel_method(&mut self, id: ChannelId, method: AMQPClass) -> Result<(), AmqpError> {
        use warren_codec::proto::channel as ch;
        let ids = warren_codec::method::ids(&method);
        if let AMQPClass::Connection(_) = method {
            return Err(AmqpError::command_invalid("unimplemented method").on(ids));
        }
        if let Some(c) = self.channels.get_mut(&id).filter(|c| c.is_paused()) {
            // Frames of a paused channel (its close too) wait, in order, until it resumes.
            c.hold(Frame::Method {
                channel: id,
                method,
            });
            return Ok(());
        }
        match (&method, self.channels.get(&id)) {
            (AMQPClass::Channel(ch::AMQPMethod::Open(_)), None) => {
                if self.channels.len() >= usize::from(self.ctx.channel_max) {
                    return Err(AmqpError::not_allowed(format!(
                        "number of channels opened ({}) has reached the negotiated channel_max ({})",
                        self.channels.len(),
                        self.ctx.channel_max
                    ))
                    .on(ids));
                }
                if let Some(max) = self.ctx.max_channels {
                    self.ctx
                        .broker
                        .check_user_channels(&self.ctx.user, max)
                        .map_err(|e| e.on(ids))?;
                }
                self.channels.insert(id, Channel::new(id));
                self.count_channels();
                self.ctx.channel_event(true, id);
                self.ctx.send_method(
                    id,
                    &AMQPClass::Channel(ch::AMQPMethod::OpenOk(ch::OpenOk {})),
                );
                Ok(())
            }
            (AMQPClass::Channel(ch::AMQPMethod::Open(_)), Some(c)) if !c.is_closing() => {
                Err(AmqpError::channel_error("second 'channel.open' seen").on(ids))
            }
            (_, None) => Err(AmqpError::channel_error("expected 'channel.open'").on(ids)),
            (AMQPClass::Channel(ch::AMQPMethod::Close(_)), Some(c)) if c.is_closing() => {
                // The client's close crossed ours on the wire: answer it, and forget the
                // channel only when the client's close-ok for ours arrives (as RabbitMQ).
                self.ctx.send_method(
                    id,
                    &AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                );
                Ok(())
            }
            (AMQPClass::Channel(ch::AMQPMethod::Close(_)), Some(_)) => {
                if let Some(mut c) = self.channels.remove(&id) {
                    c.teardown(&mut self.ctx);
                }
                self.count_channels();
                self.ctx.send_method(
                    id,
                    &AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                );
                Ok(())
            }
            (AMQPClass::Channel(ch::AMQPMethod::CloseOk(_)), Some(c)) if c.is_closing() => {
                self.channels.remove(&id);
                self.count_channels();
                Ok(())
            }
            (_, Some(_)) => self.with_channel(id, |c, ctx| c.handle_method(ctx, method)),
        }
    }
}
