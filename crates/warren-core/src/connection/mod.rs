//! One client connection: the reader loop, the handshake, heartbeats and close handling.
//!
//! A connection is two tasks. The *connection task* (this module) reads the byte stream,
//! decodes frames, runs the handshake state machine and every channel's methods, and receives
//! [`ConnEvent`]s (deliveries from queues, consumer cancellations, sync rounds, applied
//! metadata commands). Everything it sends goes into one output buffer that is written once
//! per loop turn, directly over TCP when nothing is pending, otherwise by the *writer task*
//! ([`writer`]), so a client that does not read never blocks the reading side.
//!
//! A connection runs over any byte stream ([`serve_stream`]: TLS, a Unix socket, a test
//! pipe); TCP ([`serve_tcp`]) keeps its direct-write fast path.
//!
//! Channels are plain state machines owned by the connection task (see `channel/`): no broker
//! operation awaits. A channel that must wait (a durable declaration until the metadata log
//! has made it durable, a `basic.get` for a paged batch, a `tx.commit` for its sync round) is
//! *paused*: its later frames are held, in order, until it resumes, while every other channel
//! goes on.
//!
//! Files: this one (the loop, input, events, close), `frames.rs` (frame routing), `flow.rs`
//! (output backpressure), `sink.rs`
//! (events, and the interfaces of the lower layers the connection implements), `input.rs`
//! (the read buffer and direct body reads), `writer.rs`, `handshake.rs`, `channel/`.

mod channel;
mod flow;
mod frames;
mod handshake;
mod input;
mod sink;
mod writer;

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::auth::Access;
use crate::broker::Broker;
use crate::clock::Millis;
use crate::error::{AmqpError, AmqpResult};
use crate::vhost::VHost;
use channel::Channel;
use flow::Flow;
use input::Input;
pub(crate) use sink::{ConnEvent, ConnSink};
use warren_codec::proto::{connection, AMQPClass};
use warren_codec::{decode_frame, encode, ChannelId, FrameError, ReplyCode};
use writer::WriterMsg;

/// Where the connection is.
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
    /// The client's `connection.close` was answered; the socket is the client's to close (as
    /// RabbitMQ leaves it), until the deadline. Another `connection.close` gets its own
    /// `close-ok`; everything else is ignored.
    Closed,
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
            State::Closing | State::Closed | State::Done => "closing",
        }
    }
}

/// How long we wait for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the socket stays open for the client after its `connection.close` was answered
/// (RabbitMQ 3.10.8 resets it after 30 s).
const CLOSED_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of frames held for paused channels above which the connection stops reading.
const PAUSED_MAX: usize = 4 * 1024 * 1024;

/// Connection-wide context the channels work in.
pub(crate) struct Ctx {
    pub broker: Arc<Broker>,
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub vhost: Option<Arc<VHost>>,
    pub user: String,
    /// The user's permissions in the vhost, as of `access_gen`.
    pub access: Option<Arc<Access>>,
    pub access_gen: u64,
    /// The user's `max-channels`.
    pub max_channels: Option<u64>,
    /// The user name EXTERNAL logs in as (from the client certificate), if any.
    pub external: Option<String>,
    /// Open channels, as the broker's connection registry sees them (user `max-channels`).
    pub channel_count: Arc<std::sync::atomic::AtomicUsize>,
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
    /// This connection as queues and the syncer see it.
    pub sink: Arc<ConnSink>,
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
    /// The broker's address of the connection, when the transport knows it.
    pub local: Option<SocketAddr>,
    /// Over TLS.
    pub tls: bool,
    /// `client_properties` of `start-ok`.
    pub client_properties: warren_codec::proto::FieldTable,
    /// The SASL mechanism the client logged in with.
    pub mechanism: String,
    /// Bytes and frames moved.
    pub io: Arc<crate::broker::IoStats>,
    /// What the management API shows of this connection (from `connection.open`).
    pub info: Option<Arc<crate::broker::ConnInfo>>,
    /// The broker clock's time for the batch of input or events being handled.
    pub now: Millis,
}

impl Ctx {
    /// Publishes `channel.created` / `channel.closed` of channel `id` (when anything listens).
    pub(crate) fn channel_event(&self, created: bool, id: ChannelId) {
        let Some(vh) = self.broker.event_sink() else {
            return;
        };
        let pid = crate::vhost::channel_pid(self.conn_id, id);
        let e = if created {
            let name = self
                .info
                .as_ref()
                .map(|i| format!("{} ({id})", i.name))
                .unwrap_or_default();
            crate::events::Event::new(
                "channel.created",
                &self.user,
                self.vhost.as_ref().map_or("", |v| &v.name),
            )
            .str("user", &self.user)
            .int("number", i64::from(id))
            .str("connection", &crate::vhost::channel_pid(self.conn_id, 0))
            .str("name", &name)
            .str("pid", &pid)
        } else {
            crate::events::Event::bare("channel.closed", &self.user).str("pid", &pid)
        };
        vh.emit_event(e, self.now);
    }

    pub fn send_method(&mut self, channel: ChannelId, method: &AMQPClass) {
        encode::encode_method(&mut self.out, channel, method);
    }

    /// The user's permissions in the connection's vhost, fetched again when users or
    /// permissions changed since (one atomic load otherwise). Revoked: every check refuses.
    pub fn access(&mut self) -> AmqpResult<Arc<Access>> {
        let gen = self.broker.users.generation();
        if gen != self.access_gen {
            let vhost = self.vhost.as_ref().map(|v| v.name.to_string());
            self.access = vhost.and_then(|v| self.broker.users.access(&self.user, &v));
            self.access_gen = gen;
        }
        self.access.clone().ok_or_else(|| {
            let vhost = self
                .vhost
                .as_ref()
                .map(|v| v.name.to_string())
                .unwrap_or_default();
            if self.broker.vhost(&vhost).is_none() {
                // The vhost was deleted: its permissions went with it a moment before this
                // connection's forced close arrives; answer as that close does.
                return AmqpError::new(
                    ReplyCode::ConnectionForced,
                    format!("vhost '{vhost}' is deleted"),
                );
            }
            AmqpError::access_refused(format!(
                "access to vhost '{vhost}' refused for user '{}'",
                self.user
            ))
        })
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
                let w: Arc<dyn crate::store::sync::SyncWaiter> = self.sink.clone();
                s.notify_when_durable(epoch, &w);
                self.sync_waiting_for = epoch;
            }
        }
    }
}

/// How the connection's output reaches the byte stream.
enum Out {
    /// TCP: the connection task writes directly when the writer is idle.
    Tcp(Arc<tokio::net::tcp::OwnedWriteHalf>),
    /// Any other stream: everything goes through the writer task, which owns the write half.
    Task,
}

/// A client connection.
pub(crate) struct Connection {
    ctx: Ctx,
    state: State,
    /// FxHash: SipHash of the channel number showed up in the per-frame profile.
    channels: rustc_hash::FxHashMap<ChannelId, Channel>,
    events_rx: mpsc::UnboundedReceiver<ConnEvent>,
    writer: mpsc::UnboundedSender<WriterMsg>,
    out: Out,
    /// The broker's memory alarm.
    alarm: tokio::sync::watch::Receiver<bool>,
    /// The broker's disk alarm.
    disk_alarm: tokio::sync::watch::Receiver<bool>,
    /// `connection.blocked` was sent and not yet undone.
    blocked_sent: bool,
    /// The client sent `connection.close` while channels were paused: handled once they
    /// have resumed (their held frames came before it).
    close_deferred: bool,
    started: Instant,
    last_recv: Instant,
    last_sent: Instant,
    close_deadline: Option<Instant>,
}

/// What a byte stream other than plain TCP tells the management API about itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transport {
    /// The broker's address of the connection.
    pub local: Option<SocketAddr>,
    /// Over TLS.
    pub tls: bool,
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve_tcp(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, write_half) = stream.into_split();
    let flow = Arc::new(Flow::default());
    let sock = Arc::new(write_half);
    let (wtx, wrx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer::run_tcp(sock.clone(), wrx, flow.clone()));
    let local = sock.local_addr().ok();
    let mut conn = Connection::new(broker, peer, flow, wtx, Out::Tcp(sock));
    conn.ctx.local = local;
    conn.serve(&mut reader, shutdown, writer_task).await
}

/// Serves one connection over any byte stream (TLS, a Unix socket, ...) until it closes.
/// `external`: the user name the transport vouches for (a verified client certificate's CN),
/// which makes the EXTERNAL mechanism available.
pub async fn serve_stream<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
    external: Option<String>,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, write_half) = tokio::io::split(stream);
    let flow = Arc::new(Flow::default());
    let (wtx, wrx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer::run_stream(write_half, wrx, flow.clone()));
    let mut conn = Connection::new(broker, peer, flow, wtx, Out::Task);
    conn.ctx.external = external;
    conn.ctx.local = transport.local;
    conn.ctx.tls = transport.tls;
    conn.serve(&mut reader, shutdown, writer_task).await
}

impl Connection {
    fn new(
        broker: Arc<Broker>,
        peer: SocketAddr,
        flow: Arc<Flow>,
        writer: mpsc::UnboundedSender<WriterMsg>,
        out: Out,
    ) -> Self {
        let alarm = broker.alarm.subscribe();
        let disk_alarm = broker.disk_alarm.subscribe();
        let (etx, erx) = mpsc::unbounded_channel();
        let conn_id = broker.next_conn_id();
        let frame_max = broker.config.amqp.frame_max;
        let channel_max = broker.config.amqp.channel_max;
        let now = Instant::now();
        let clock_now = broker.clock.now();
        Connection {
            ctx: Ctx {
                broker,
                conn_id,
                peer,
                vhost: None,
                user: String::new(),
                access: None,
                access_gen: 0,
                max_channels: None,
                external: None,
                channel_count: Arc::default(),
                frame_max,
                channel_max,
                heartbeat: 0,
                cap_consumer_cancel_notify: false,
                cap_auth_failure_close: false,
                out: BytesMut::with_capacity(4096),
                chunks: Vec::new(),
                sink: ConnSink::new(etx, flow.clone()),
                confirms_dirty: Vec::new(),
                sync_waiting_for: 0,
                cap_connection_blocked: false,
                published: false,
                flow,
                now: clock_now,
                local: None,
                tls: false,
                client_properties: Default::default(),
                mechanism: String::new(),
                io: Arc::default(),
                info: None,
            },
            state: State::AwaitHeader,
            channels: rustc_hash::FxHashMap::default(),
            events_rx: erx,
            writer,
            out,
            alarm,
            disk_alarm,
            blocked_sent: false,
            close_deferred: false,
            started: now,
            last_recv: now,
            last_sent: now,
            close_deadline: None,
        }
    }

    async fn serve<R: AsyncRead + Unpin>(
        mut self,
        reader: &mut R,
        shutdown: CancellationToken,
        writer_task: tokio::task::JoinHandle<()>,
    ) {
        let span = tracing::info_span!("conn", id = self.ctx.conn_id, peer = %self.ctx.peer);
        async move {
            debug!("accepted");
            self.run(reader, shutdown).await;
            self.teardown();
            let _ = self.writer.send(WriterMsg::Shutdown);
            drop(self);
            let _ = writer_task.await;
            debug!("closed");
        }
        .instrument(span)
        .await
    }

    /// Bytes held for paused channels.
    fn paused_bytes(&self) -> usize {
        self.channels.values().map(Channel::held_bytes).sum()
    }

    async fn run<R: AsyncRead + Unpin>(&mut self, reader: &mut R, shutdown: CancellationToken) {
        let mut input = Input::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutting_down = false;
        let mut alarm_open = true;
        let mut disk_alarm_open = true;
        let mut event_turns = 0u32;
        loop {
            let out_ok = self.ctx.flow.writable();
            let alarms = (*self.alarm.borrow(), *self.disk_alarm.borrow());
            let alarm_blocks =
                (alarms.0 || alarms.1) && self.ctx.published && self.state == State::Running;
            self.signal_blocked(alarm_blocks, alarms);
            let can_read = out_ok
                && !alarm_blocks
                && !self.close_deferred
                && (self.state != State::Running || self.paused_bytes() < PAUSED_MAX);
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
                        self.ctx.now = self.ctx.broker.clock.now();
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
                r = self.disk_alarm.changed(), if disk_alarm_open => {
                    if r.is_err() {
                        disk_alarm_open = false;
                    }
                }
                r = input.read(reader), if can_read => {
                    event_turns = 0;
                    match r {
                        Ok(0) | Err(_) => {
                            if self.state == State::Running {
                                debug!("client closed the socket");
                            }
                            return;
                        }
                        Ok(n) => {
                            self.last_recv = Instant::now();
                            self.ctx.io.recv_oct.add(n as u64);
                            self.ctx.io.recv_cnt.inc();
                            self.handle_input(&mut input);
                        }
                    }
                }
                _ = tick.tick() => {
                    if !can_read {
                        // Not reading on purpose: the client is not the one being silent.
                        self.last_recv = Instant::now();
                    }
                    self.on_tick(Instant::now())
                }
            }
            self.flush();
            if self.ctx.flow.resume_due() {
                // Output drained after something parked on it (see `Flow`): consumers of this
                // connection may get messages again, and reading resumes at the next turn.
                let now = self.ctx.broker.clock.now();
                for ch in self.channels.values() {
                    ch.kick_consumer_queues(now);
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
    /// or disk alarm blocks or releases this publishing connection (RabbitMQ's `rabbit_reader`).
    fn signal_blocked(&mut self, blocked: bool, (memory, disk): (bool, bool)) {
        if blocked == self.blocked_sent {
            return;
        }
        self.blocked_sent = blocked;
        // RabbitMQ's reasons; with both alarms, "low on disk & memory".
        let reason = match (disk, memory) {
            (true, true) => "low on disk & memory",
            (true, false) => "low on disk",
            _ => "low on memory",
        };
        if blocked {
            warn!(reason, "resource alarm: blocking publishing connection");
        }
        if !self.ctx.cap_connection_blocked {
            return;
        }
        let m = if blocked {
            connection::AMQPMethod::Blocked(connection::Blocked {
                reason: reason.into(),
            })
        } else {
            connection::AMQPMethod::Unblocked(connection::Unblocked {})
        };
        self.ctx.send_method(0, &AMQPClass::Connection(m));
        self.flush();
    }

    /// Hands the output to the socket (directly when nothing is pending) or the writer.
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
        if self.ctx.chunks.is_empty() {
            return;
        }
        let mut chunks = std::mem::take(&mut self.ctx.chunks);
        self.ctx
            .io
            .send_oct
            .add(chunks.iter().map(|c| c.len() as u64).sum());
        self.ctx.io.send_cnt.inc();
        // Nothing queued at the writer: write now, from this task, and hand over only what
        // the kernel does not take.
        if let Out::Tcp(sock) = &self.out {
            if self.ctx.flow.idle() {
                let _ = writer::try_write_now(sock, &mut chunks);
            }
        }
        if !chunks.is_empty() {
            self.ctx.flow.queued(chunks.iter().map(|c| c.len()).sum());
            let _ = self.writer.send(WriterMsg::Chunks(chunks));
        }
        self.last_sent = Instant::now();
    }

    /// Handshake timeout, close timeout, consumer timeouts and heartbeats at time `now`.
    fn on_tick(&mut self, now: Instant) {
        if self.state == State::Running {
            self.ctx.now = self.ctx.broker.clock.now();
            for ch in self.channels.values_mut() {
                ch.check_consumer_timeout(&mut self.ctx);
            }
        }
        match self.state {
            State::AwaitHeader | State::Starting | State::Tuning | State::Opening => {
                let limit = Duration::from_secs(self.ctx.broker.config.amqp.handshake_timeout);
                if now.duration_since(self.started) > limit {
                    info!("handshake timeout");
                    self.state = State::Done;
                }
            }
            State::Closing | State::Closed => {
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
        self.ctx.now = self.ctx.broker.clock.now();
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
        if matches!(self.state, State::Closing | State::Closed) {
            self.state = State::Done;
        } else {
            warn!(error = %err.text, "frame error");
            self.close_connection(err);
            // The rest of the buffer cannot be framed any more.
            inbuf.clear();
        }
    }

    fn handle_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Deliver(d) => {
                self.ctx.flow.unreserve(d.reserved);
                match self.channels.get_mut(&d.channel) {
                    Some(ch) => ch.deliver(&mut self.ctx, d),
                    None => channel::return_undelivered(d, self.ctx.now),
                }
            }
            ConnEvent::Synced => {
                self.ctx.sync_waiting_for = 0;
                let durable = self.ctx.durable_epoch();
                let mut resumed = Vec::new();
                for (id, ch) in self.channels.iter_mut() {
                    ch.on_synced(&mut self.ctx, durable);
                    if ch.sync_resumable(durable) {
                        resumed.push(*id);
                    }
                }
                for id in resumed {
                    self.resume(id, channel::Resume::Synced);
                }
            }
            ConnEvent::ConsumerCancelled { channel, tag } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.consumer_cancelled(&mut self.ctx, &tag);
                }
            }
            ConnEvent::Applied { channel, result } => {
                self.resume(channel, channel::Resume::Applied(result));
            }
            ConnEvent::ForceClose(text) => {
                self.close_connection(AmqpError::new(ReplyCode::ConnectionForced, text));
            }
            ConnEvent::Wake { channel } => self.resume(channel, channel::Resume::Woken),
        }
    }

    /// A paused channel's wait is over: it finishes what it was doing, then the frames held
    /// for it are handled in order (it may pause again, holding the rest).
    fn resume(&mut self, id: ChannelId, why: channel::Resume) {
        if !matches!(self.state, State::Running) {
            return;
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let Some((r, held)) = ch.resume(&mut self.ctx, why) else {
            return;
        };
        if let Err(e) = r {
            if e.is_hard() {
                self.close_connection(e);
                return;
            }
            ch.close_with(&mut self.ctx, e);
        }
        for f in held {
            if self.state != State::Running {
                break;
            }
            self.handle_frame(f);
        }
        if self.close_deferred && !self.channels.values().any(Channel::is_paused) {
            self.close_deferred = false;
            self.client_close();
        }
    }

    /// Sends `connection.close` for a hard error and releases every channel's resources.
    fn close_connection(&mut self, err: AmqpError) {
        if matches!(self.state, State::Closing | State::Closed | State::Done) {
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

    /// Publishes the number of open channels to the broker's registry.
    /// Publishes the set of open channels: their count (user `max-channels`) and, for the
    /// management API, each channel's [`ChannelInfo`]; a channel that went keeps its counts
    /// in the vhost's totals.
    fn count_channels(&self) {
        self.ctx
            .channel_count
            .store(self.channels.len(), std::sync::atomic::Ordering::Relaxed);
        let Some(info) = &self.ctx.info else { return };
        let listed = info.channels();
        for c in &listed {
            if !self.channels.contains_key(&c.number) {
                if let Some(gone) = info.remove_channel(c.number) {
                    self.ctx.broker.churn.channels_closed.inc();
                    if let Some(vh) = &self.ctx.vhost {
                        vh.retire(&gone.stats.totals());
                    }
                }
            }
        }
        for (id, ch) in &self.channels {
            if !listed.iter().any(|c| c.number == *id) {
                info.add_channel(ch.info.clone());
                self.ctx.broker.churn.channels_opened.inc();
            }
        }
    }

    /// Releases every channel (requeue unacked, cancel consumers) and exclusive queues.
    fn teardown(&mut self) {
        let now = self.ctx.broker.clock.now();
        self.ctx.now = now;
        for (_, mut ch) in self.channels.drain() {
            ch.teardown(&mut self.ctx);
        }
        self.count_channels();
        if let Some(vh) = &self.ctx.vhost {
            vh.delete_exclusive_queues(self.ctx.conn_id);
            self.ctx.broker.unregister_connection(self.ctx.conn_id);
            if let Some(info) = self.ctx.info.take() {
                self.ctx.broker.connection_event(false, &info);
            }
        }
        // Deliveries already queued to us go back to their queues.
        while let Ok(ev) = self.events_rx.try_recv() {
            if let ConnEvent::Deliver(d) = ev {
                self.ctx.flow.unreserve(d.reserved);
                channel::return_undelivered(d, now);
            }
        }
    }
}
