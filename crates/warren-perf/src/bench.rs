//! The producer/consumer run: topology, producer and consumer tasks, per-second reports,
//! drain and verification.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem::MaybeUninit;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_codec::{FRAME_BODY, FRAME_END};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use warren_codec::proto::{connection, AMQPClass};

use crate::conn::{
    check_close, peek_fast, proto_err, put_ack, put_body, put_header, put_publish, raw_props,
    AmqpUri, Conn, Fast,
};
use crate::stats::{latency_of, merge_queue, new_histogram, Tracker};
use crate::{self_cpu_seconds, Mode, Options, Summary};

/// Bytes of the stamp at the start of every body: sequence, producer id, send time (ns).
pub const STAMP_LEN: usize = 24;

/// Writes the stamp.
#[inline]
pub fn stamp(seq: u64, producer: u64, ts_ns: u64) -> [u8; STAMP_LEN] {
    let mut s = [0u8; STAMP_LEN];
    s[..8].copy_from_slice(&seq.to_be_bytes());
    s[8..16].copy_from_slice(&producer.to_be_bytes());
    s[16..].copy_from_slice(&ts_ns.to_be_bytes());
    s
}

/// Reads a stamp: (seq, producer, ts_ns).
#[inline]
pub fn read_stamp(mut b: &[u8]) -> (u64, u64, u64) {
    (b.get_u64(), b.get_u64(), b.get_u64())
}

struct LatPair {
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

pub(crate) struct Shared {
    pub(crate) base: Instant,
    stop: AtomicBool,
    sent: Vec<AtomicU64>,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    pub(crate) received: AtomicU64,
    lat: Vec<Mutex<LatPair>>,
    failed: AtomicBool,
    /// Per consumer, ns since `base` (0 = not yet): when its `basic.consume` was sent, when
    /// its first message arrived, when it had all it was to receive (replay mode's limit).
    pub(crate) consume_ns: Vec<AtomicU64>,
    pub(crate) first_ns: Vec<AtomicU64>,
    pub(crate) done_ns: Vec<AtomicU64>,
}

impl Shared {
    pub(crate) fn new(producers: usize, consumers: usize) -> Shared {
        let per_consumer = || (0..consumers).map(|_| AtomicU64::new(0)).collect();
        Shared {
            base: Instant::now(),
            stop: AtomicBool::new(false),
            sent: (0..producers).map(|_| AtomicU64::new(0)).collect(),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            lat: (0..consumers)
                .map(|_| {
                    Mutex::new(LatPair {
                        interval: new_histogram(),
                        total: new_histogram(),
                    })
                })
                .collect(),
            failed: AtomicBool::new(false),
            consume_ns: per_consumer(),
            first_ns: per_consumer(),
            done_ns: per_consumer(),
        }
    }
    fn sent_total(&self) -> u64 {
        self.sent.iter().map(|s| s.load(Relaxed)).sum()
    }
    pub(crate) fn now_ns(&self) -> u64 {
        // At least 1: 0 means "not yet" in the per-consumer instants.
        (self.base.elapsed().as_nanos() as u64).max(1)
    }
}

/// Where producers publish and what consumers consume.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Queue names.
    pub queues: Vec<String>,
    /// Bindings to create: (queue index, binding key).
    pub bindings: Vec<(usize, String)>,
    /// Per producer: the routing keys it rotates through.
    pub keys: Vec<Vec<Vec<u8>>>,
    /// Per producer: the queues its messages reach.
    pub routes: Vec<Vec<usize>>,
    /// Per consumer: its queue.
    pub consumer_queue: Vec<usize>,
}

/// Works out the topology for `opts`.
pub fn plan(opts: &Options) -> Plan {
    let nq = opts.queues.max(1);
    let queues: Vec<String> = if nq == 1 {
        vec![opts.queue.clone()]
    } else {
        (0..nq).map(|i| format!("{}-{i}", opts.queue)).collect()
    };
    let all: Vec<usize> = (0..nq).collect();
    let mut bindings = Vec::new();
    let mut keys = Vec::new();
    let mut routes = Vec::new();
    let ty = opts.exchange_type.as_str();
    for p in 0..opts.producers {
        let own = p % nq;
        if opts.exchange.is_empty() {
            keys.push(vec![queues[own].clone().into_bytes()]);
            routes.push(vec![own]);
        } else if ty == "fanout" {
            keys.push(vec![opts
                .routing_key
                .clone()
                .unwrap_or_default()
                .into_bytes()]);
            routes.push(all.clone());
        } else if ty == "topic" && opts.bindings > 0 {
            keys.push(
                (0..opts.bindings)
                    .map(|i| format!("perf.{i}.x").into_bytes())
                    .collect(),
            );
            routes.push(all.clone());
        } else if let Some(k) = &opts.routing_key {
            keys.push(vec![k.clone().into_bytes()]);
            routes.push(all.clone());
        } else {
            keys.push(vec![queues[own].clone().into_bytes()]);
            routes.push(vec![own]);
        }
    }
    if !opts.exchange.is_empty() {
        for (qi, q) in queues.iter().enumerate() {
            if ty == "fanout" {
                bindings.push((qi, String::new()));
            } else if ty == "topic" && opts.bindings > 0 {
                for i in 0..opts.bindings {
                    bindings.push((qi, format!("perf.{i}.*")));
                }
            } else if let Some(k) = &opts.routing_key {
                bindings.push((qi, k.clone()));
            } else {
                bindings.push((qi, q.clone()));
            }
        }
    }
    let consumer_queue = (0..opts.consumers).map(|c| c % nq).collect();
    Plan {
        queues,
        bindings,
        keys,
        routes,
        consumer_queue,
    }
}

fn declares_exchange(opts: &Options) -> bool {
    !opts.exchange.is_empty() && !opts.exchange.starts_with("amq.") && !opts.predeclared
}

/// Declares queues, exchange and bindings.
pub async fn setup(conn: &mut Conn, opts: &Options, plan: &Plan) -> io::Result<()> {
    if opts.predeclared {
        return Ok(());
    }
    let durable = opts.persistent();
    for q in &plan.queues {
        conn.declare_queue(q, durable, crate::field_table(&opts.queue_args))
            .await?;
    }
    if declares_exchange(opts) {
        conn.declare_exchange(&opts.exchange, &opts.exchange_type, durable)
            .await?;
    }
    if !opts.exchange.is_empty() {
        // Pipeline the bindings (1,000 of them for the topic scenario) and read the replies.
        for chunk in plan.bindings.chunks(100) {
            for (qi, key) in chunk {
                conn.send(
                    1,
                    &AMQPClass::Queue(warren_codec::proto::queue::AMQPMethod::Bind(
                        warren_codec::proto::queue::Bind {
                            queue: plan.queues[*qi].as_str().into(),
                            exchange: opts.exchange.as_str().into(),
                            routing_key: key.as_str().into(),
                            nowait: false,
                            arguments: Default::default(),
                        },
                    )),
                );
            }
            conn.flush().await?;
            for _ in chunk {
                conn.expect_method(1).await?;
            }
        }
    }
    Ok(())
}

/// Deletes what [`setup`] declared (unless predeclared or `--keep-queues`).
pub async fn teardown(conn: &mut Conn, opts: &Options, plan: &Plan) -> io::Result<()> {
    if opts.predeclared || opts.keep_queues {
        return Ok(());
    }
    for q in &plan.queues {
        conn.delete_queue(q).await?;
    }
    if declares_exchange(opts) {
        conn.rpc(AMQPClass::Exchange(
            warren_codec::proto::exchange::AMQPMethod::Delete(
                warren_codec::proto::exchange::Delete {
                    exchange: opts.exchange.as_str().into(),
                    if_unused: false,
                    nowait: false,
                },
            ),
        ))
        .await?;
    }
    Ok(())
}

/// Tracks publisher confirms: which tags above the lowest unconfirmed one are settled.
#[derive(Default)]
struct ConfirmWindow {
    base: u64,
    settled: VecDeque<bool>,
}

impl ConfirmWindow {
    /// Settles `tag` (and everything below it when `multiple`); returns how many were new.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if self.base == 0 {
            self.base = 1;
        }
        if tag < self.base {
            return 0;
        }
        let idx = (tag - self.base) as usize;
        if self.settled.len() <= idx {
            self.settled.resize(idx + 1, false);
        }
        let mut newly = 0;
        if multiple {
            for s in self.settled.iter_mut().take(idx + 1) {
                if !*s {
                    *s = true;
                    newly += 1;
                }
            }
        } else if !self.settled[idx] {
            self.settled[idx] = true;
            newly = 1;
        }
        while self.settled.front() == Some(&true) {
            self.settled.pop_front();
            self.base += 1;
        }
        newly
    }
}

struct ProducerCtx {
    acked: AtomicU64,
    notify: Notify,
    done: AtomicBool,
}

async fn producer_reader(
    mut rd: crate::tls::ReadHalf,
    mut rbuf: BytesMut,
    frame_max: u32,
    shared: Arc<Shared>,
    ctx: Arc<ProducerCtx>,
) -> io::Result<()> {
    let mut window = ConfirmWindow::default();
    loop {
        let mut acks = 0;
        let mut nacks = 0;
        while let Some((f, n)) = peek_fast(&mut rbuf, frame_max)? {
            match f {
                Fast::Confirm(tag, multiple, nack) => {
                    let k = window.settle(tag, multiple);
                    if nack {
                        nacks += k;
                    } else {
                        acks += k;
                    }
                }
                Fast::Other(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    return Ok(())
                }
                Fast::Other(m) => check_close(&m)?,
                _ => {}
            }
            rbuf.advance(n);
        }
        if acks + nacks > 0 {
            shared.confirmed.fetch_add(acks, Relaxed);
            shared.nacked.fetch_add(nacks, Relaxed);
            ctx.acked.fetch_add(acks + nacks, Relaxed);
            ctx.notify.notify_one();
        }
        if rbuf.capacity() - rbuf.len() < 8192 {
            rbuf.reserve(64 * 1024);
        }
        if rd.read_buf(&mut rbuf).await? == 0 {
            if ctx.done.load(Relaxed) {
                return Ok(());
            }
            return Err(proto_err("producer connection closed by the broker"));
        }
    }
}

async fn producer(
    id: usize,
    conn: Conn,
    opts: Arc<Options>,
    shared: Arc<Shared>,
    keys: Vec<Vec<u8>>,
) -> io::Result<()> {
    let body_size = opts.body_size();
    let pad = vec![0u8; body_size];
    // Large bodies are not copied into the write buffer: their frames are written with
    // `writev`, the payload coming straight from this shared pad.
    let large = body_size >= LARGE_BODY;
    let pad_bytes = Bytes::from(pad.clone());
    let mut chunks: Vec<Bytes> = Vec::new();
    let props = raw_props(opts.persistent());
    let exchange = opts.exchange.as_bytes().to_vec();
    let frame_max = conn.frame_max;
    let Conn {
        stream,
        rbuf,
        mut wbuf,
        ..
    } = conn;
    let (rd, mut wr) = stream.into_split();
    let ctx = Arc::new(ProducerCtx {
        acked: AtomicU64::new(0),
        notify: Notify::new(),
        done: AtomicBool::new(false),
    });
    let reader = tokio::spawn(producer_reader(
        rd,
        rbuf,
        frame_max,
        shared.clone(),
        ctx.clone(),
    ));
    let per_msg = 40 + exchange.len() + keys.first().map_or(0, Vec::len) + body_size;
    let batch_cap = (64 * 1024 / per_msg).clamp(1, 512) as u64;
    let limit = opts.pmessages.unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut seq: u64 = 0;
    let pid = id as u64;
    let result: io::Result<()> = async {
        'outer: loop {
            if shared.stop.load(Relaxed) || shared.failed.load(Relaxed) || reader.is_finished() {
                break;
            }
            if seq >= limit {
                break;
            }
            let mut n = batch_cap.min(limit - seq);
            if let Some(c) = opts.confirm {
                let c = c.max(1);
                loop {
                    let outstanding = seq - ctx.acked.load(Relaxed);
                    if outstanding < c {
                        n = n.min(c - outstanding);
                        break;
                    }
                    if shared.stop.load(Relaxed) || reader.is_finished() {
                        break 'outer;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(100), ctx.notify.notified())
                        .await;
                }
            }
            if let Some(rate) = opts.rate {
                let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                if due <= seq {
                    let at = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    continue;
                }
                n = n.min(due - seq);
            }
            let ts = shared.now_ns();
            for _ in 0..n {
                let key = &keys[(seq % keys.len() as u64) as usize];
                put_publish(&mut wbuf, &exchange, key);
                put_header(&mut wbuf, body_size as u64, props);
                if large {
                    put_body_chunks(
                        &mut wbuf,
                        &mut chunks,
                        &stamp(seq, pid, ts),
                        &pad_bytes,
                        frame_max,
                    );
                } else {
                    put_body(&mut wbuf, &stamp(seq, pid, ts), &pad, body_size, frame_max);
                }
                seq += 1;
            }
            if large {
                chunks.push(wbuf.split().freeze());
                write_chunks(&mut wr, &mut chunks).await?;
            } else {
                wr.write_all(&wbuf).await?;
                wr.flush().await?;
                wbuf.clear();
            }
            shared.sent[id].store(seq, Relaxed);
        }
        if opts.confirm.is_some() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while ctx.acked.load(Relaxed) < seq
                && Instant::now() < deadline
                && !reader.is_finished()
            {
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), ctx.notify.notified()).await;
            }
        }
        Ok(())
    }
    .await;
    ctx.done.store(true, Relaxed);
    // Polite close: the reader returns on close-ok.
    if !reader.is_finished() {
        wbuf.clear();
        warren_codec::encode::encode_method(
            &mut wbuf,
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        let _ = wr.write_all(&wbuf).await;
        let _ = wr.flush().await;
    }
    let reader_result = tokio::time::timeout(Duration::from_secs(5), reader).await;
    result?;
    match reader_result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Ok(()),
    }
}

async fn consumer(
    idx: usize,
    mut conn: Conn,
    opts: Arc<Options>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<Tracker> {
    let mut tracker = Tracker::new(opts.producers);
    // Replay mode: each consumer stops once it has `-C` messages.
    let limit = if opts.mode == Mode::Replay {
        opts.pmessages.unwrap_or(u64::MAX)
    } else {
        u64::MAX
    };
    let mut total = 0u64;
    let ack_every = if opts.autoack {
        0
    } else {
        let a = opts.multi_ack_every.max(1);
        if opts.qos > 0 {
            a.min(u64::from(opts.qos))
        } else {
            a
        }
    };
    let fm = conn.frame_max;
    // Large messages: read big chunks, so that few frames straddle the end of the buffer
    // (each of those is moved to the front when room is made).
    let read_room = if opts.body_size() >= LARGE_BODY {
        4 * 1024 * 1024
    } else {
        64 * 1024
    };
    let mut unacked = 0u64;
    let mut tag = 0u64;
    let mut body_left = 0u64;
    let mut first_body = false;
    let mut lats: Vec<u64> = Vec::with_capacity(4096);
    // Payload bytes of the current large body frame to drop in the kernel, and whether its
    // frame-end octet is still to be checked.
    let mut skip = 0usize;
    let mut expect_end = false;
    let mut scratch: Vec<MaybeUninit<u8>> = Vec::new();
    loop {
        let now = shared.now_ns();
        let mut got = 0u64;
        loop {
            if skip > 0 {
                break;
            }
            if expect_end {
                match conn.rbuf.first() {
                    None => break,
                    Some(&FRAME_END) => {
                        conn.rbuf.advance(1);
                        expect_end = false;
                    }
                    Some(_) => return Err(proto_err("bad frame end after a large body frame")),
                }
            }
            // A large body frame not all in the buffer yet: everything this tool needs (the
            // size, and the stamp at the start of a body) is in its first bytes, so account it
            // now and let the kernel drop the rest of its payload instead of copying it in.
            if let Some((len, have)) = partial_large_body(&conn.rbuf) {
                if first_body || body_left >= len as u64 {
                    let complete = take_body(
                        &conn.rbuf[7..7 + have],
                        len,
                        &mut first_body,
                        &mut body_left,
                        &mut tracker,
                        &mut lats,
                        now,
                    );
                    conn.rbuf.clear();
                    skip = len - have;
                    expect_end = true;
                    if complete {
                        got += 1;
                        ack_when_due(&mut conn.wbuf, &mut unacked, ack_every, tag);
                    }
                    break;
                }
            }
            let Some((f, n)) = peek_fast(&mut conn.rbuf, fm)? else {
                break;
            };
            let mut complete = false;
            match f {
                Fast::Deliver(t) => tag = t,
                Fast::Header(size) => {
                    body_left = size;
                    first_body = true;
                    if size == 0 {
                        tracker.foreign += 1;
                        complete = true;
                    }
                }
                Fast::Body(len) => {
                    complete = take_body(
                        &conn.rbuf[7..7 + len],
                        len,
                        &mut first_body,
                        &mut body_left,
                        &mut tracker,
                        &mut lats,
                        now,
                    );
                }
                Fast::Other(m) => check_close(&m)?,
                _ => {}
            }
            conn.rbuf.advance(n);
            if complete {
                got += 1;
                ack_when_due(&mut conn.wbuf, &mut unacked, ack_every, tag);
                if total + got >= limit {
                    break;
                }
            }
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
        if got > 0 {
            if total == 0 {
                shared.first_ns[idx].store(now, Relaxed);
            }
            total += got;
            shared.received.fetch_add(got, Relaxed);
        }
        if !lats.is_empty() {
            if let Ok(mut l) = shared.lat[idx].lock() {
                for &v in &lats {
                    let v = v.max(1);
                    let _ = l.interval.record(v);
                    let _ = l.total.record(v);
                }
            }
            lats.clear();
        }
        if total >= limit {
            shared.done_ns[idx].store(shared.now_ns(), Relaxed);
            break;
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < read_room / 4 {
            conn.rbuf.reserve(read_room);
        }
        if skip > 0 && scratch.is_empty() {
            // Never written to (MSG_TRUNC), so it costs address space, not memory.
            scratch.resize(4 * 1024 * 1024, MaybeUninit::uninit());
        }
        let n = if skip > 0 {
            tokio::select! {
                r = async {
                    match &mut conn.stream {
                        crate::tls::Stream::Tcp(s) => discard(s, skip, &mut scratch).await,
                        crate::tls::Stream::Tls(s) => {
                            // No MSG_TRUNC under TLS: decrypt into a scratch buffer.
                            let mut tmp = vec![0u8; skip.min(256 * 1024)];
                            s.read(&mut tmp).await
                        }
                    }
                } => r?,
                _ = stop.changed() => break,
            }
        } else {
            tokio::select! {
                r = conn.stream.read_buf(&mut conn.rbuf) => r?,
                _ = stop.changed() => break,
            }
        };
        if n == 0 {
            return Err(proto_err("consumer connection closed by the broker"));
        }
        if skip > 0 {
            skip = skip.saturating_sub(n);
        }
    }
    if unacked > 0 {
        put_ack(&mut conn.wbuf, tag, true);
        conn.flush().await?;
    }
    conn.close().await;
    Ok(tracker)
}

/// Manual acks: counts one more received message and queues a (multiple) ack for `tag` every
/// `ack_every` messages (0: auto-ack, nothing to do).
fn ack_when_due(wbuf: &mut BytesMut, unacked: &mut u64, ack_every: u64, tag: u64) {
    if ack_every == 0 {
        return;
    }
    *unacked += 1;
    if *unacked >= ack_every {
        put_ack(wbuf, tag, ack_every > 1);
        *unacked = 0;
    }
}

/// Accounts `len` bytes of body (`payload` holds at least the start of them): the stamp at the
/// start of a message records its sequence and latency. True when the message is complete.
fn take_body(
    payload: &[u8],
    len: usize,
    first_body: &mut bool,
    body_left: &mut u64,
    tracker: &mut Tracker,
    lats: &mut Vec<u64>,
    now: u64,
) -> bool {
    if *first_body {
        *first_body = false;
        if len >= STAMP_LEN && payload.len() >= STAMP_LEN {
            let (seq, pid, ts) = read_stamp(&payload[..STAMP_LEN]);
            tracker.record(pid, seq);
            lats.push(now.saturating_sub(ts) / 1000);
        } else {
            tracker.foreign += 1;
        }
    }
    *body_left = body_left.saturating_sub(len as u64);
    *body_left == 0
}

/// A body frame of at least [`LARGE_BODY`] payload bytes at the front of `buf`, not complete,
/// with at least its stamp's worth of payload present: (payload length, payload bytes present).
fn partial_large_body(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 7 + STAMP_LEN || buf[0] != FRAME_BODY {
        return None;
    }
    let len = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let have = buf.len() - 7;
    (len >= LARGE_BODY && have < len).then_some((len, have))
}

/// Drops up to `n` bytes from the socket without copying them (`recv` with `MSG_TRUNC`, which
/// on TCP discards the bytes in the kernel). `Ok(0)` is the end of the stream.
async fn discard(
    stream: &tokio::net::TcpStream,
    n: usize,
    scratch: &mut [MaybeUninit<u8>],
) -> io::Result<usize> {
    let len = n.min(scratch.len());
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            socket2::SockRef::from(stream).recv_with_flags(&mut scratch[..len], libc::MSG_TRUNC)
        }) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Bodies from this size on are written from a shared pad with `writev` (no copy).
const LARGE_BODY: usize = 64 * 1024;

/// Appends the body frames of one message (the pad's length) for [`write_chunks`]: frame
/// headers, the stamp and frame ends go through `wbuf`, the payload is sliced from `pad`.
fn put_body_chunks(
    wbuf: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
    stamp: &[u8; STAMP_LEN],
    pad: &Bytes,
    frame_max: u32,
) {
    let chunk = frame_max as usize - warren_codec::FRAME_OVERHEAD;
    let size = pad.len();
    let mut off = 0;
    while off < size {
        let n = chunk.min(size - off);
        wbuf.put_u8(warren_codec::FRAME_BODY);
        wbuf.put_u16(1);
        wbuf.put_u32(n as u32);
        let mut from = off;
        if off == 0 {
            let s = STAMP_LEN.min(n);
            wbuf.put_slice(&stamp[..s]);
            from = s;
        }
        chunks.push(wbuf.split().freeze());
        if from < off + n {
            chunks.push(pad.slice(from..off + n));
        }
        wbuf.put_u8(warren_codec::FRAME_END);
        off += n;
    }
}

/// Writes every chunk with vectored writes.
async fn write_chunks(wr: &mut crate::tls::WriteHalf, chunks: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| io::IoSlice::new(c))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed"));
        }
        while n > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                chunks[first].advance(n);
                n = 0;
            }
        }
    }
    chunks.clear();
    wr.flush().await?;
    Ok(())
}

/// Connects, subscribes and starts the consumer tasks.
pub(crate) async fn start_consumers(
    uri: &AmqpUri,
    opts: &Arc<Options>,
    plan: &Plan,
    shared: &Arc<Shared>,
    stop_rx: &watch::Receiver<bool>,
) -> io::Result<Vec<tokio::task::JoinHandle<io::Result<Tracker>>>> {
    let mut setups = Vec::new();
    for c in 0..opts.consumers {
        let uri = uri.clone();
        let opts = opts.clone();
        let shared = shared.clone();
        let queue = plan.queues[plan.consumer_queue[c]].clone();
        setups.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&uri, &format!("warren-perf consumer {c}")).await?;
            if opts.qos > 0 {
                conn.qos(opts.qos).await?;
            }
            let args = crate::field_table(&opts.consumer_args);
            shared.consume_ns[c].store(shared.now_ns(), Relaxed);
            conn.consume(&queue, &format!("warren-perf-{c}"), opts.autoack, args)
                .await?;
            Ok::<Conn, io::Error>(conn)
        }));
    }
    let mut consumers = Vec::new();
    for (c, s) in setups.into_iter().enumerate() {
        let conn = s.await.map_err(io::Error::other)??;
        consumers.push(tokio::spawn(consumer(
            c,
            conn,
            opts.clone(),
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    Ok(consumers)
}

/// Runs producers and consumers as `opts` says (mode run or drain).
pub async fn run(opts: &Options, out: &mut (dyn Write + Send)) -> io::Result<Summary> {
    let uri = AmqpUri::parse(&opts.uri)?;
    let opts = Arc::new(opts.clone());
    let plan = plan(&opts);
    let mut admin = Conn::connect(&uri, "warren-perf setup").await?;
    setup(&mut admin, &opts, &plan).await?;
    let shared = Arc::new(Shared::new(opts.producers, opts.consumers));

    // Consumers first, all subscribed before any producer starts (in drain mode: only once
    // every producer has finished, so that they drain a standing backlog).
    let drain_mode = opts.mode == Mode::Drain;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = if drain_mode {
        Vec::new()
    } else {
        start_consumers(&uri, &opts, &plan, &shared, &stop_rx).await?
    };
    let mut setups = Vec::new();
    for p in 0..opts.producers {
        let uri = uri.clone();
        let confirm = opts.confirm.is_some();
        setups.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&uri, &format!("warren-perf producer {p}")).await?;
            if confirm {
                conn.confirm_select().await?;
            }
            Ok::<Conn, io::Error>(conn)
        }));
    }
    let mut conns = Vec::new();
    for s in setups {
        conns.push(s.await.map_err(io::Error::other)??);
    }

    let cpu0 = self_cpu_seconds();
    let t0 = Instant::now();
    let mut producers = Vec::new();
    for (p, conn) in conns.into_iter().enumerate() {
        producers.push(tokio::spawn(producer(
            p,
            conn,
            opts.clone(),
            shared.clone(),
            plan.keys[p].clone(),
        )));
    }

    // Per-second report until the time is up or every producer has finished.
    let duration = Duration::from_secs_f64(opts.time.max(0.0));
    let mut tick =
        tokio::time::interval_at((t0 + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let (mut last_s, mut last_c, mut last_r) = (0u64, 0u64, 0u64);
    let mut last_t = t0;
    loop {
        let left = duration.saturating_sub(t0.elapsed());
        if left.is_zero() || producers.iter().all(|h| h.is_finished()) {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(left.min(Duration::from_millis(200))) => continue,
        }
        let (s, c, r) = (
            shared.sent_total(),
            shared.confirmed.load(Relaxed),
            shared.received.load(Relaxed),
        );
        let dt = last_t.elapsed().as_secs_f64();
        last_t = Instant::now();
        let mut h = new_histogram();
        for l in &shared.lat {
            if let Ok(mut l) = l.lock() {
                let _ = h.add(&l.interval);
                l.interval.reset();
            }
        }
        if !opts.json {
            writeln!(
                out,
                "time {:.1} s, sent {:.0} msg/s, confirmed {:.0} msg/s, received {:.0} msg/s, latency p50 {} us p99 {} us",
                t0.elapsed().as_secs_f64(),
                (s - last_s) as f64 / dt,
                (c - last_c) as f64 / dt,
                (r - last_r) as f64 / dt,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
            )?;
            out.flush()?;
        }
        (last_s, last_c, last_r) = (s, c, r);
    }
    shared.stop.store(true, Relaxed);
    let run_s = t0.elapsed().as_secs_f64();
    let received_in_run = shared.received.load(Relaxed);
    let sent_in_run = shared.sent_total();
    let mut first_err = None;
    for h in producers {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(io::Error::other(e));
            }
        }
    }
    let sent_per: Vec<u64> = shared.sent.iter().map(|s| s.load(Relaxed)).collect();
    if drain_mode && first_err.is_none() {
        consumers = start_consumers(&uri, &opts, &plan, &shared, &stop_rx).await?;
    }

    // Drain: wait until everything routed to a consumed queue has arrived, or progress stops.
    let consumed: Vec<bool> = (0..plan.queues.len())
        .map(|q| plan.consumer_queue.contains(&q))
        .collect();
    let expected: u64 = sent_per
        .iter()
        .enumerate()
        .map(|(p, s)| s * plan.routes[p].iter().filter(|q| consumed[**q]).count() as u64)
        .sum();
    let drain_start = Instant::now();
    if opts.consumers > 0 {
        let mut last = shared.received.load(Relaxed);
        let mut last_progress = Instant::now();
        while shared.received.load(Relaxed) < expected
            && last_progress.elapsed().as_secs_f64() < opts.drain
            && drain_start.elapsed() < Duration::from_secs(300)
            && !consumers.iter().any(|h| h.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let r = shared.received.load(Relaxed);
            if r != last {
                last = r;
                last_progress = Instant::now();
            }
        }
    }
    let drain_s = if opts.consumers > 0 {
        drain_start.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let drained = shared.received.load(Relaxed) - received_in_run;
    let _ = stop_tx.send(true);
    let mut trackers = Vec::new();
    for h in consumers {
        match h.await {
            Ok(Ok(t)) => trackers.push(Some(t)),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
                trackers.push(None);
            }
            Err(e) => {
                first_err.get_or_insert(io::Error::other(e));
                trackers.push(None);
            }
        }
    }
    let cpu = self_cpu_seconds() - cpu0;
    let _ = teardown(&mut admin, &opts, &plan).await;
    let server = admin.server.clone();
    admin.close().await;
    if let Some(e) = first_err {
        return Err(e);
    }

    let mut duplicates = 0;
    let mut out_of_order = 0;
    let mut foreign = 0;
    let mut missing = 0;
    for t in trackers.iter().flatten() {
        duplicates += t.duplicates;
        out_of_order += t.out_of_order;
        foreign += t.foreign;
    }
    if opts.consumers > 0 {
        for (q, consumed) in consumed.iter().enumerate() {
            if !consumed {
                continue;
            }
            let ts: Vec<&Tracker> = plan
                .consumer_queue
                .iter()
                .enumerate()
                .filter(|(_, cq)| **cq == q)
                .filter_map(|(c, _)| trackers[c].as_ref())
                .collect();
            let (unique, dups) = merge_queue(&ts, opts.producers);
            duplicates += dups;
            for (p, routes) in plan.routes.iter().enumerate() {
                if routes.contains(&q) {
                    missing += sent_per[p].saturating_sub(unique[p]);
                }
            }
        }
    }
    let mut total = new_histogram();
    for l in &shared.lat {
        if let Ok(l) = l.lock() {
            let _ = total.add(&l.total);
        }
    }
    let sent = sent_per.iter().sum::<u64>();
    let received_total = shared.received.load(Relaxed);
    let size = opts.body_size();
    let mb = |n: u64| n as f64 * size as f64 / 1e6 / run_s;
    Ok(Summary {
        mode: opts.mode,
        uri: uri.redacted(),
        server,
        producers: opts.producers,
        consumers: opts.consumers,
        size,
        duration_s: run_s,
        sent,
        confirmed: shared.confirmed.load(Relaxed),
        nacked: shared.nacked.load(Relaxed),
        received: received_in_run,
        received_total,
        send_rate: sent_in_run as f64 / run_s,
        confirm_rate: shared.confirmed.load(Relaxed) as f64 / run_s,
        receive_rate: received_in_run as f64 / run_s,
        send_mb_s: mb(sent_in_run),
        receive_mb_s: mb(received_in_run),
        latency: latency_of(&total),
        duplicates,
        out_of_order,
        missing,
        foreign,
        drain_s,
        drain_rate: if drain_s > 0.0 {
            drained as f64 / drain_s
        } else {
            0.0
        },
        client_cpu_s: cpu,
        client_cpu_us_per_msg: if sent + received_total > 0 {
            cpu * 1e6 / (sent + received_total) as f64
        } else {
            0.0
        },
        connections: 0,
        ..Summary::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn confirm_window() {
        let mut w = ConfirmWindow::default();
        assert_eq!(w.settle(3, false), 1);
        assert_eq!(w.settle(2, true), 2);
        assert_eq!(w.base, 4);
        assert_eq!(w.settle(3, true), 0);
        assert_eq!(w.settle(10, true), 7);
    }

    #[test]
    fn stamp_round_trip() {
        assert_eq!(read_stamp(&stamp(1, 2, 3)), (1, 2, 3));
    }

    #[test]
    fn plans() {
        let o = Options::parse_from(["p", "-x", "3", "-y", "2", "--queues", "2"]);
        let p = plan(&o);
        assert_eq!(p.queues, vec!["warren-perf-0", "warren-perf-1"]);
        assert_eq!(p.routes, vec![vec![0], vec![1], vec![0]]);
        assert!(p.bindings.is_empty());
        let o = Options::parse_from(["p", "-e", "t", "-t", "topic", "--bindings", "1000"]);
        let p = plan(&o);
        assert_eq!(p.bindings.len(), 1000);
        assert_eq!(p.keys[0].len(), 1000);
        let o = Options::parse_from(["p", "-e", "f", "-t", "fanout", "--queues", "10", "-y", "10"]);
        let p = plan(&o);
        assert_eq!(p.routes[0].len(), 10);
        assert_eq!(p.consumer_queue, (0..10).collect::<Vec<_>>());
    }
}
