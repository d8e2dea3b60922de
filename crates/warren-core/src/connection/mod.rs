//! One client connection: the reader loop, the handshake, heartbeats and close handling.
//!
//! A connection is two tasks. The *connection task* (this module) reads the socket, decodes
//! frames, runs the handshake state machine and every channel's methods, and receives
//! [`ConnEvent`]s (deliveries from queues, consumer cancellations). Everything it sends goes into
//! one output buffer that is handed, once per loop turn, to the *writer task* ([`writer`]), so
//! frames produced together leave in one `write` and a client that does not read never blocks
//! the reading side.
//!
//! Channels are plain state machines owned by the connection task (see `channel.rs`): no broker
//! operation awaits, so there is nothing a channel could block its siblings on.

mod channel;
mod handshake;
mod input;
mod writer;

use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn, Instrument};

use crate::broker::Broker;
use crate::error::AmqpError;
use crate::queue::Delivery;
use crate::vhost::VHost;
use channel::Channel;
use input::{Direct, Input, DIRECT_MIN};
use warren_codec::proto::{connection, AMQPClass};
use warren_codec::{
    decode_frame, encode, partial_body_frame, ChannelId, Frame, FrameError, ReplyCode, FRAME_BODY,
    FRAME_END,
};
use writer::WriterMsg;

/// Sender half of a connection's event channel.
pub type ConnSender = mpsc::UnboundedSender<ConnEvent>;

/// Output backpressure of one connection: bytes handed to the writer and not yet written,
/// plus the estimated output of deliveries queues have handed over and the connection has not
/// encoded yet. At [`Flow::HIGH`] the connection stops reading its socket and its consumers get
/// nothing more (so a client that does not read cannot make the broker buffer without bound).
///
/// Wake-ups have one owner, the connection task. Whoever finds the connection not writable (a
/// queue's dispatch skipping a consumer, or the connection itself before reading) marks it
/// *parked*; every place that lowers the level checks for a parked mark afterwards: the
/// connection task at the end of each turn ([`Flow::resume_due`], after encoding deliveries
/// and writing directly), the writer task after each write (it pokes the connection task,
/// which then does the same check). Once the level is below [`Flow::LOW`] and the mark is
/// set, the connection task clears it and kicks the queues of its consumers. The mark is set
/// before the level is read again and the level is lowered before the mark is read (both
/// `SeqCst`), so a dispatch that parks concurrently with the last decrement is either seen by
/// the check or sees the lowered level itself: no wake-up is lost.
#[derive(Debug, Default)]
pub struct Flow {
    pending: AtomicUsize,
    /// Estimated output bytes of deliveries handed to the connection and not yet encoded.
    reserved: AtomicUsize,
    parked: AtomicBool,
    drained: tokio::sync::Notify,
}

impl Flow {
    /// Stop at this many output bytes.
    pub const HIGH: usize = 8 * 1024 * 1024;
    /// Resume below this many.
    pub const LOW: usize = 2 * 1024 * 1024;

    fn level(&self) -> usize {
        self.pending.load(Ordering::SeqCst) + self.reserved.load(Ordering::SeqCst)
    }

    /// Whether more output may be produced for this connection. When not, the connection is
    /// marked parked, and its task kicks its consumers' queues once it drains.
    pub fn writable(&self) -> bool {
        if self.level() < Self::HIGH {
            return true;
        }
        self.parked.store(true, Ordering::SeqCst);
        // Re-read after parking: a decrement that raced with the first read is seen here, or
        // it sees the mark (see the type's docs).
        self.level() < Self::HIGH
    }

    /// A queue hands this connection a delivery of about `n` output bytes.
    pub fn reserve(&self, n: usize) {
        self.reserved.fetch_add(n, Ordering::SeqCst);
    }

    /// The delivery reserved with [`Flow::reserve`] was encoded (or returned).
    pub fn unreserve(&self, n: usize) {
        let _ = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Nothing is waiting at (or being written by) the writer.
    fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    fn queued(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::SeqCst);
    }

    /// The writer wrote `n` bytes; pokes the connection task if someone is parked and the
    /// level is low enough to resume.
    pub(crate) fn written(&self, n: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
        if self.level() < Self::LOW && self.parked.load(Ordering::SeqCst) {
            self.drained.notify_one();
        }
    }

    /// The connection task's check after every turn: true (once) when something parked on this
    /// connection's output and it has drained below [`Flow::LOW`], i.e. its consumers' queues
    /// must be kicked now.
    fn resume_due(&self) -> bool {
        self.level() < Self::LOW && self.parked.swap(false, Ordering::SeqCst)
    }
}

/// Something another part of the broker tells a connection.
#[derive(Debug)]
pub enum ConnEvent {
    /// A queue delivers a message to one of this connection's consumers.
    Deliver(Delivery),
    /// A sync round completed: persistent messages may be confirmable now.
    Synced,
    /// A queue was deleted under one of this connection's consumers.
    ConsumerCancelled {
        /// Channel of the consumer.
        channel: u16,
        /// Its tag.
        tag: Arc<str>,
    },
}

/// Where the handshake or the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 8-byte protocol header.
    AwaitHeader,
    /// `connection.start` sent, waiting for `start-ok`.
    Starting,
    /// `connection.tune` sent, waiting for `tune-ok`.
    Tuning,
    /// Waiting for `connection.open`.
    Opening,
    /// Open for channels.
    Running,
    /// `connection.close` sent, waiting for `close-ok` (until the deadline).
    Closing,
    /// Finished: flush and drop the socket.
    Done,
}

impl State {
    fn rabbit_name(self) -> &'static str {
        match self {
            State::AwaitHeader | State::Starting => "starting",
            State::Tuning => "tuning",
            State::Opening => "opening",
            State::Running => "running",
            State::Closing | State::Done => "closing",
        }
    }
}

/// How long we wait for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connection-wide context the channels work in.
pub(crate) struct Ctx {
    pub broker: Arc<Broker>,
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub vhost: Option<Arc<VHost>>,
    pub user: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// Client capabilities from `start-ok`.
    pub cap_consumer_cancel_notify: bool,
    pub cap_auth_failure_close: bool,
    /// Frames waiting to be handed to the writer.
    pub out: BytesMut,
    /// Output already cut into pieces (zero-copy bodies), to be written before `out`.
    pub chunks: Vec<bytes::Bytes>,
    /// Our own event sender, given to consumers.
    pub events: ConnSender,
    /// Channels with confirms to flush at the end of this turn.
    pub confirms_dirty: Vec<ChannelId>,
    /// Highest sync epoch we asked to be told about (0: none pending).
    pub sync_waiting_for: u64,
    /// The client advertised `connection.blocked`.
    pub cap_connection_blocked: bool,
    /// This connection has published (so a memory alarm blocks it).
    pub published: bool,
    /// Output backpressure.
    pub flow: Arc<Flow>,
}

impl Ctx {
    pub fn send_method(&mut self, channel: ChannelId, method: &AMQPClass) {
        encode::encode_method(&mut self.out, channel, method);
    }

    /// The highest durable sync epoch (everything is durable without a syncer).
    pub fn durable_epoch(&self) -> u64 {
        self.broker
            .syncer
            .as_ref()
            .map_or(u64::MAX, |s| s.durable())
    }

    /// Asks the syncer for a [`ConnEvent::Synced`] once `epoch` is durable.
    pub fn wait_for_sync(&mut self, epoch: u64) {
        if epoch > self.sync_waiting_for {
            if let Some(s) = &self.broker.syncer {
                s.notify_when_durable(epoch, &self.events);
                self.sync_waiting_for = epoch;
            }
        }
    }
}

/// A client connection.
pub(crate) struct Connection {
    ctx: Ctx,
    state: State,
    /// FxHash: SipHash of the channel number showed up in the per-frame profile.
    channels: rustc_hash::FxHashMap<ChannelId, Channel>,
    events_rx: mpsc::UnboundedReceiver<ConnEvent>,
    writer: mpsc::UnboundedSender<WriterMsg>,
    /// The socket's write half, shared with the writer task (see `writer.rs`).
    sock: Arc<tokio::net::tcp::OwnedWriteHalf>,
    /// The broker's memory alarm.
    alarm: tokio::sync::watch::Receiver<bool>,
    /// `connection.blocked` was sent and not yet undone.
    blocked_sent: bool,
    started: Instant,
    last_recv: Instant,
    last_sent: Instant,
    close_deadline: Option<Instant>,
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, write_half) = stream.into_split();
    let (wtx, wrx) = mpsc::unbounded_channel();
    let flow = Arc::new(Flow::default());
    let sock = Arc::new(write_half);
    let writer_task = tokio::spawn(writer::run(sock.clone(), wrx, flow.clone()));
    let alarm = broker.alarm.subscribe();
    let (etx, erx) = mpsc::unbounded_channel();
    let conn_id = broker.next_conn_id();
    let frame_max = broker.config.amqp.frame_max;
    let channel_max = broker.config.amqp.channel_max;
    let now = Instant::now();
    let mut conn = Connection {
        ctx: Ctx {
            broker,
            conn_id,
            peer,
            vhost: None,
            user: String::new(),
            frame_max,
            channel_max,
            heartbeat: 0,
            cap_consumer_cancel_notify: false,
            cap_auth_failure_close: false,
            out: BytesMut::with_capacity(4096),
            chunks: Vec::new(),
            events: etx,
            confirms_dirty: Vec::new(),
            sync_waiting_for: 0,
            cap_connection_blocked: false,
            published: false,
            flow,
        },
        state: State::AwaitHeader,
        channels: rustc_hash::FxHashMap::default(),
        events_rx: erx,
        writer: wtx,
        sock,
        alarm,
        blocked_sent: false,
        started: now,
        last_recv: now,
        last_sent: now,
        close_deadline: None,
    };
    let span = tracing::info_span!("conn", id = conn_id, peer = %peer);
    async move {
        debug!("accepted");
        conn.run(&mut reader, shutdown).await;
        conn.teardown();
        let _ = conn.writer.send(WriterMsg::Shutdown);
        drop(conn);
        let _ = writer_task.await;
        debug!("closed");
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn run(
        &mut self,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        shutdown: CancellationToken,
    ) {
        let mut input = Input::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutting_down = false;
        let mut alarm_open = true;
        let mut event_turns = 0u32;
        loop {
            let out_ok = self.ctx.flow.writable();
            let alarm_blocks =
                *self.alarm.borrow() && self.ctx.published && self.state == State::Running;
            self.signal_blocked(alarm_blocks);
            let can_read = out_ok && !alarm_blocks;
            let flow = self.ctx.flow.clone();
            // Biased, cheapest first (a ready branch stops the polling of the rest). So that a
            // steady stream of deliveries cannot starve reading the socket (acks, heartbeats),
            // the socket is also read without waiting every few turns spent on events.
            if event_turns >= 8 && can_read {
                event_turns = 0;
                match input.try_read(reader) {
                    Ok(0) => return,
                    Ok(_) => {
                        self.last_recv = Instant::now();
                        self.handle_input(&mut input);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    if self.state == State::Running || self.state == State::Opening {
                        self.close_connection(AmqpError::new(
                            ReplyCode::ConnectionForced,
                            "broker forced connection closure with reason 'shutdown'",
                        ));
                    } else if self.state != State::Closing {
                        self.state = State::Done;
                    }
                }
                ev = self.events_rx.recv() => {
                    event_turns += 1;
                    if let Some(ev) = ev {
                        self.handle_event(ev);
                        for _ in 0..1024 {
                            match self.events_rx.try_recv() {
                                Ok(ev) => self.handle_event(ev),
                                Err(_) => break,
                            }
                        }
                    }
                }
                // The writer drained below the low mark with something parked: the check
                // after this turn resumes it.
                _ = flow.drained.notified() => {}
                r = self.alarm.changed(), if alarm_open => {
                    if r.is_err() {
                        alarm_open = false;
                    }
                }
                r = input.read(reader), if can_read => {
                    event_turns = 0;
                    match r {
                        Ok(0) | Err(_) => {
                            if self.state != State::Closing && self.state != State::Done {
                                debug!("client closed the socket");
                            }
                            return;
                        }
                        Ok(_) => {
                            self.last_recv = Instant::now();
                            self.handle_input(&mut input);
                        }
                    }
                }
                _ = tick.tick() => {
                    if !can_read {
                        // Not reading on purpose: the client is not the one being silent.
                        self.last_recv = Instant::now();
                    }
                    self.on_tick()
                }
            }
            self.flush();
            if self.ctx.flow.resume_due() {
                // Output drained after something parked on it (see `Flow`): consumers of this
                // connection may get messages again, and reading resumes at the next turn.
                for ch in self.channels.values() {
                    ch.kick_consumer_queues();
                }
                self.flush();
            }
            if self.state == State::Done {
                return;
            }
            input.make_room();
        }
    }

    /// Sends `connection.blocked`/`unblocked` (to clients that understand them) as the memory
    /// alarm blocks or releases this publishing connection (RabbitMQ's `rabbit_reader`).
    fn signal_blocked(&mut self, blocked: bool) {
        if blocked == self.blocked_sent {
            return;
        }
        self.blocked_sent = blocked;
        if blocked {
            warn!("memory alarm: blocking publishing connection");
        }
        if !self.ctx.cap_connection_blocked {
            return;
        }
        let m = if blocked {
            connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })
        } else {
            connection::AMQPMethod::Unblocked(connection::Unblocked {})
        };
        self.ctx.send_method(0, &AMQPClass::Connection(m));
        self.flush();
    }

    /// Hands the output buffer to the writer.
    fn flush(&mut self) {
        for id in std::mem::take(&mut self.ctx.confirms_dirty) {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.flush_confirms(&mut self.ctx);
            }
        }
        if !self.ctx.out.is_empty() {
            let tail = self.ctx.out.split().freeze();
            self.ctx.chunks.push(tail);
        }
        if !self.ctx.chunks.is_empty() {
            let mut chunks = std::mem::take(&mut self.ctx.chunks);
            // Nothing queued at the writer: write now, from this task, and hand over only
            // what the kernel does not take.
            if self.ctx.flow.idle() {
                let _ = writer::try_write_now(&self.sock, &mut chunks);
            }
            if !chunks.is_empty() {
                self.ctx.flow.queued(chunks.iter().map(|c| c.len()).sum());
                let _ = self.writer.send(WriterMsg::Chunks(chunks));
            }
            self.last_sent = Instant::now();
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        match self.state {
            State::AwaitHeader | State::Starting | State::Tuning | State::Opening => {
                let limit = Duration::from_secs(self.ctx.broker.config.amqp.handshake_timeout);
                if now.duration_since(self.started) > limit {
                    info!("handshake timeout");
                    self.state = State::Done;
                }
            }
            State::Closing => {
                if self.close_deadline.is_some_and(|d| now >= d) {
                    self.state = State::Done;
                }
            }
            State::Running | State::Done => {}
        }
        let hb = u64::from(self.ctx.heartbeat);
        if hb > 0 && matches!(self.state, State::Running | State::Opening | State::Closing) {
            if now.duration_since(self.last_recv) > Duration::from_secs(2 * hb) {
                warn!(
                    timeout_s = hb,
                    "missed heartbeats from client, closing connection"
                );
                self.state = State::Done;
                return;
            }
            let interval = Duration::from_millis((hb * 1000 / 2).max(500));
            if now.duration_since(self.last_sent) >= interval {
                encode::encode_heartbeat(&mut self.ctx.out);
            }
        }
    }

    fn handle_input(&mut self, input: &mut Input) {
        let _clock = crate::timer::ClockScope::enter();
        if let Some(d) = &input.direct {
            if d.left > 0 || input.buf.is_empty() {
                // Payload went into the body buffer; nothing to decode yet.
                return;
            }
            self.finish_direct(input);
        }
        let inbuf = &mut input.buf;
        if self.state == State::AwaitHeader {
            match warren_codec::decode_protocol_header(inbuf) {
                warren_codec::HeaderOutcome::NeedMore => return,
                warren_codec::HeaderOutcome::Rejected => {
                    // The spec: answer with the header we speak, then close.
                    self.ctx
                        .out
                        .extend_from_slice(&warren_codec::PROTOCOL_HEADER);
                    self.state = State::Done;
                    return;
                }
                warren_codec::HeaderOutcome::Accepted => {
                    handshake::send_start(&mut self.ctx);
                    self.state = State::Starting;
                }
            }
        }
        while self.state != State::Done {
            if inbuf.len() >= 7 {
                input.header_only = false;
            }
            if let Some(d) = self.begin_direct(inbuf) {
                input.direct = Some(d);
                break;
            }
            match decode_frame(inbuf, self.ctx.frame_max) {
                Ok(Some(frame)) => self.handle_frame(frame),
                Ok(None) => break,
                Err(e) => {
                    self.frame_error(e, inbuf);
                    break;
                }
            }
        }
    }

    /// A frame the connection cannot go on from: close it (or, closing already, stop).
    fn frame_error(&mut self, e: FrameError, inbuf: &mut BytesMut) {
        let err = AmqpError::from(e);
        if self.state == State::Closing {
            self.state = State::Done;
        } else {
            warn!(error = %err.text, "frame error");
            self.close_connection(err);
            // The rest of the buffer cannot be framed any more.
            inbuf.clear();
        }
    }

    /// Starts a direct body read (see `input.rs`) when `inbuf` starts with a large body frame
    /// that is not complete yet and its channel is assembling a body the frame fits. The
    /// payload bytes already read move into the body buffer and leave `inbuf`.
    fn begin_direct(&mut self, inbuf: &mut BytesMut) -> Option<Direct> {
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
    fn finish_direct(&mut self, input: &mut Input) {
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

    fn handle_frame(&mut self, frame: Frame) {
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
            Frame::Header { channel, header } => {
                self.with_channel(channel, |ch, ctx| ch.handle_header(ctx, header))
            }
            Frame::Body { channel, payload } => {
                self.with_channel(channel, |ch, ctx| ch.handle_body(ctx, payload))
            }
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
                self.teardown();
                self.ctx.send_method(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.state = State::Done;
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
                self.channels.insert(id, Channel::new(id));
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
            (AMQPClass::Channel(ch::AMQPMethod::Close(_)), Some(_)) => {
                if let Some(mut c) = self.channels.remove(&id) {
                    c.teardown(&mut self.ctx);
                }
                self.ctx.send_method(
                    id,
                    &AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                );
                Ok(())
            }
            (AMQPClass::Channel(ch::AMQPMethod::CloseOk(_)), Some(c)) if c.is_closing() => {
                self.channels.remove(&id);
                Ok(())
            }
            (_, Some(_)) => self.with_channel(id, |c, ctx| c.handle_method(ctx, method)),
        }
    }

    fn handle_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Deliver(d) => {
                self.ctx.flow.unreserve(d.reserved);
                match self.channels.get_mut(&d.channel) {
                    Some(ch) => ch.deliver(&mut self.ctx, d),
                    None => channel::return_undelivered(d),
                }
            }
            ConnEvent::Synced => {
                self.ctx.sync_waiting_for = 0;
                let durable = self.ctx.durable_epoch();
                for ch in self.channels.values_mut() {
                    ch.on_synced(&mut self.ctx, durable);
                }
            }
            ConnEvent::ConsumerCancelled { channel, tag } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.consumer_cancelled(&mut self.ctx, &tag);
                }
            }
        }
    }

    /// Sends `connection.close` for a hard error and releases every channel's resources.
    fn close_connection(&mut self, err: AmqpError) {
        if matches!(self.state, State::Closing | State::Done) {
            return;
        }
        if err.code != ReplyCode::ConnectionForced {
            info!(code = err.code.code(), text = %err.text, "closing connection");
        }
        self.teardown();
        self.ctx.send_method(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: err.code.code(),
                reply_text: err.text.as_str().into(),
                class_id: err.class_id,
                method_id: err.method_id,
            })),
        );
        self.state = State::Closing;
        self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// Releases every channel (requeue unacked, cancel consumers) and exclusive queues.
    fn teardown(&mut self) {
        for (_, mut ch) in self.channels.drain() {
            ch.teardown(&mut self.ctx);
        }
        if let Some(vh) = &self.ctx.vhost {
            vh.delete_exclusive_queues(self.ctx.conn_id);
        }
        // Deliveries already queued to us go back to their queues.
        while let Ok(ev) = self.events_rx.try_recv() {
            if let ConnEvent::Deliver(d) = ev {
                self.ctx.flow.unreserve(d.reserved);
                channel::return_undelivered(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Flow;

    /// The issue-11 stall: a dispatch burst reserves the whole window and parks; the connection
    /// encodes everything and writes it directly (the writer never sees a byte). The check at
    /// the end of the connection's turn must resume, exactly once.
    #[test]
    fn reserved_window_drained_without_the_writer_resumes() {
        let f = Flow::default();
        let mut reserved = 0;
        while f.writable() {
            f.reserve(100);
            reserved += 100;
        }
        assert!(!f.resume_due(), "still full");
        f.unreserve(reserved - Flow::LOW);
        assert!(!f.resume_due(), "not below the low mark yet");
        f.unreserve(Flow::LOW);
        assert!(f.resume_due(), "drained: kick the consumers");
        assert!(!f.resume_due(), "one kick per park");
        assert!(f.writable());
    }

    /// Bytes queued at the writer: the writer's write pokes the connection task once the level
    /// is low, and only when something parked.
    #[tokio::test]
    async fn writer_drain_pokes_the_connection_when_parked() {
        let f = Flow::default();
        f.queued(Flow::HIGH);
        assert!(!f.writable());
        f.written(Flow::HIGH - Flow::LOW);
        let poked =
            tokio::time::timeout(std::time::Duration::from_millis(20), f.drained.notified());
        assert!(poked.await.is_err(), "not below the low mark: no poke");
        f.written(Flow::LOW);
        tokio::time::timeout(std::time::Duration::from_secs(1), f.drained.notified())
            .await
            .expect("poked");
        assert!(f.resume_due());
        // Without a park, draining pokes nobody.
        f.queued(1000);
        f.written(1000);
        assert!(!f.resume_due());
    }

    /// Parking and the last decrement racing on two threads never lose the wake-up: either the
    /// parking side sees the connection writable again, or the connection's check sees the mark.
    #[test]
    fn park_and_drain_race_loses_no_wakeup() {
        for _ in 0..2000 {
            let f = std::sync::Arc::new(Flow::default());
            f.reserve(Flow::HIGH);
            let g = f.clone();
            let parker = std::thread::spawn(move || g.writable());
            f.unreserve(Flow::HIGH);
            let resumed = f.resume_due();
            let writable = parker.join().expect("join");
            assert!(writable || resumed, "a park was missed");
        }
    }
}
