//! A drain harness: a fast publisher of numbered messages and consumers that read their socket
//! as fast as the kernel hands bytes over, in plain OS threads with blocking sockets (like a
//! separate client process, not sharing the broker's runtime), so that tests can check that
//! standing backlogs many times the broker's output limit are delivered completely and exactly
//! once.
//!
//! Every message body starts with its 8-byte big-endian sequence number; message `k` of a run
//! goes to queue `k % queues.len()`. Consumers count each sequence number they receive.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use warren_codec::proto::{basic, AMQPClass, FieldTable};
use warren_codec::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD};

use crate::raw::{frame_bytes, method_bytes, RawClient};

/// How the consumers of a drain are set up.
#[derive(Debug, Clone)]
pub struct Consumers {
    /// Consumer connections.
    pub connections: usize,
    /// Consuming channels per connection (one consumer each).
    pub channels: usize,
    /// `no-ack` consumers (otherwise manual acks).
    pub no_ack: bool,
    /// `basic.qos` prefetch per consumer (0 = unlimited).
    pub prefetch: u16,
    /// Manual acks: a `multiple` ack at least every this many messages (1: single acks);
    /// whatever is unacked when the read buffer is used up is acked too.
    pub ack_every: u64,
}

impl Default for Consumers {
    fn default() -> Self {
        Self {
            connections: 1,
            channels: 1,
            no_ack: true,
            prefetch: 1000,
            ack_every: 1,
        }
    }
}

/// Publishes messages `first..first + count` of `size` bytes (at least 8) to `queues` through
/// the default exchange, in large pipelined writes, then waits until the broker has read them
/// (a `basic.qos` round trip on the same connection).
pub async fn publish(
    addr: SocketAddr,
    queues: &[String],
    first: u64,
    count: u64,
    size: usize,
    persistent: bool,
) {
    let size = size.max(8);
    let mut c = RawClient::open(addr).await;
    c.open_channel(1).await;
    let frame_max = c.tune.as_ref().map_or(131_072, |t| t.frame_max.max(4096)) as usize;
    let mut out = BytesMut::with_capacity(1 << 20);
    let pad = vec![0x5au8; size];
    for k in first..first + count {
        let q = &queues[(k % queues.len() as u64) as usize];
        out.extend_from_slice(&method_bytes(
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: q.as_str().into(),
                mandatory: false,
                immediate: false,
            })),
        ));
        let mut h = BytesMut::new();
        h.put_u16(60);
        h.put_u16(0);
        h.put_u64(size as u64);
        if persistent {
            h.put_u16(0x1000); // delivery-mode present
            h.put_u8(2);
        } else {
            h.put_u16(0);
        }
        out.extend_from_slice(&frame_bytes(FRAME_HEADER, 1, &h));
        let mut body = pad.clone();
        body[..8].copy_from_slice(&k.to_be_bytes());
        for chunk in body.chunks(frame_max - 8) {
            out.extend_from_slice(&frame_bytes(FRAME_BODY, 1, chunk));
        }
        if out.len() >= 512 * 1024 {
            c.send_raw(&out).await;
            out.clear();
        }
    }
    c.send_raw(&out).await;
    // The broker handles a connection's frames in order: once qos-ok is back, every publish
    // before it has been enqueued.
    c.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 0,
            global: false,
        })),
    )
    .await;
    loop {
        match c.try_read_frame(Duration::from_secs(60)).await {
            Ok(warren_codec::Frame::Method {
                method: AMQPClass::Basic(basic::AMQPMethod::QosOk(_)),
                ..
            }) => break,
            Ok(_) => continue,
            Err(e) => panic!("publisher: no qos-ok after publishing: {e:?}"),
        }
    }
    c.close().await;
}

/// What a drain saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Deliveries received.
    pub received: u64,
    /// Sequence numbers received more than once.
    pub duplicates: u64,
    /// Sequence numbers never received (the first few).
    pub missing: Vec<u64>,
    /// How many were never received.
    pub missing_count: u64,
    /// Deliveries whose sequence number was out of range.
    pub foreign: u64,
    /// Protocol errors the consumers saw (a close from the broker, a closed socket).
    pub errors: Vec<String>,
    /// Time from the first consumer's start to the last expected delivery (or the stall).
    pub elapsed: Duration,
}

impl Outcome {
    /// Every expected message arrived exactly once and nothing went wrong.
    pub fn exact(&self) -> bool {
        self.duplicates == 0
            && self.missing_count == 0
            && self.foreign == 0
            && self.errors.is_empty()
    }
}

/// Running consumers; [`Drain::wait`] collects the outcome.
pub struct Drain {
    counts: Arc<Vec<AtomicU8>>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
    expected: u64,
}

/// Attaches `spec`'s consumers to `queues` (consumer `i` takes queue `i % queues.len()`; there
/// must be at least as many consumers as queues) and
/// starts reading; `expected` is the number of messages (sequence numbers `0..expected`) the
/// drain waits for.
pub async fn start(addr: SocketAddr, queues: &[String], spec: &Consumers, expected: u64) -> Drain {
    let counts: Arc<Vec<AtomicU8>> = Arc::new((0..expected).map(|_| AtomicU8::new(0)).collect());
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    let started = Instant::now();
    let mut index = 0usize;
    assert!(
        spec.connections * spec.channels >= queues.len(),
        "every queue needs a consumer"
    );
    for _ in 0..spec.connections {
        let mut c = RawClient::open(addr).await;
        let mut setup = Vec::new();
        for ch in 1..=spec.channels as u16 {
            c.open_channel(ch).await;
            if spec.prefetch > 0 {
                c.send_method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                        prefetch_count: spec.prefetch,
                        global: false,
                    })),
                )
                .await;
                c.expect_method().await;
            }
            setup.extend_from_slice(&method_bytes(
                ch,
                &AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: queues[index % queues.len()].as_str().into(),
                    consumer_tag: format!("drain-{index}").as_str().into(),
                    no_local: false,
                    no_ack: spec.no_ack,
                    exclusive: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            ));
            index += 1;
        }
        // The consumes go out together; their consume-oks are skipped by the reader.
        c.send_raw(&setup).await;
        let (sock, leftover) = c.into_std();
        let reader = Reader {
            sock,
            buf: leftover,
            channels: vec![ChannelState::default(); spec.channels + 1],
            no_ack: spec.no_ack,
            ack_every: match spec.prefetch {
                0 => spec.ack_every.max(1),
                p => spec.ack_every.clamp(1, u64::from(p)),
            },
            counts: counts.clone(),
            total: total.clone(),
            stop: stop.clone(),
            errors: errors.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("drain-consumer".into())
                .spawn(move || reader.run())
                .expect("spawn consumer thread"),
        );
    }
    Drain {
        counts,
        total,
        stop,
        errors,
        threads,
        started,
        expected,
    }
}

impl Drain {
    /// Deliveries received so far.
    pub fn received(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Waits until every expected message has arrived, or until nothing arrived for `stall`
    /// (then what did not arrive is missing); stops the consumers and returns the outcome.
    /// After the last expected message it waits `settle` more, so duplicates can show up.
    pub async fn wait(self, stall: Duration, settle: Duration) -> Outcome {
        let mut last = self.received();
        let mut last_progress = Instant::now();
        loop {
            let now = self.received();
            if now >= self.expected || !self.errors.lock().expect("errors").is_empty() {
                break;
            }
            if now != last {
                last = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= stall {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = self.started.elapsed();
        tokio::time::sleep(settle).await;
        self.stop.store(true, Ordering::Release);
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await
        .expect("join consumers");
        let mut o = Outcome {
            received: self.total.load(Ordering::Acquire),
            elapsed,
            errors: self.errors.lock().expect("errors").clone(),
            ..Outcome::default()
        };
        for (seq, c) in self.counts.iter().enumerate() {
            match c.load(Ordering::Acquire) {
                0 => {
                    o.missing_count += 1;
                    if o.missing.len() < 10 {
                        o.missing.push(seq as u64);
                    }
                }
                1 => {}
                _ => o.duplicates += 1,
            }
        }
        let counted: u64 = self
            .counts
            .iter()
            .map(|c| u64::from(c.load(Ordering::Acquire)))
            .sum();
        o.foreign = o.received.saturating_sub(counted);
        o
    }
}

#[derive(Debug, Clone, Default)]
struct ChannelState {
    body_left: u64,
    first_body: bool,
    /// Tag of the delivery being received.
    tag: u64,
    /// Tag of the last delivery received completely.
    done_tag: u64,
    unacked: u64,
}

struct Reader {
    sock: std::net::TcpStream,
    buf: BytesMut,
    channels: Vec<ChannelState>,
    no_ack: bool,
    ack_every: u64,
    counts: Arc<Vec<AtomicU8>>,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn ack_frame(out: &mut Vec<u8>, channel: u16, tag: u64, multiple: bool) {
    out.extend_from_slice(&method_bytes(
        channel,
        &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        })),
    ));
}

impl Reader {
    fn fail(&self, e: String) {
        self.errors.lock().expect("errors").push(e);
    }

    fn run(mut self) {
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(50)));
        // Acks go through a writer thread, so a broker that is not reading us (its output to
        // us is full) can never block this reader: it keeps draining.
        let (ack_tx, ack_rx) = mpsc::channel::<Vec<u8>>();
        let writer = match self.sock.try_clone() {
            Ok(mut w) => std::thread::spawn(move || {
                while let Ok(bytes) = ack_rx.recv() {
                    if w.write_all(&bytes).is_err() {
                        return;
                    }
                }
            }),
            Err(e) => return self.fail(format!("clone socket: {e}")),
        };
        let mut chunk = vec![0u8; 1 << 20];
        let mut acks = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            if let Err(e) = self.parse(&mut acks) {
                self.fail(e);
                break;
            }
            if !self.no_ack {
                for (ch, st) in self.channels.iter_mut().enumerate() {
                    if st.unacked > 0 {
                        ack_frame(&mut acks, ch as u16, st.done_tag, st.unacked > 1);
                        st.unacked = 0;
                    }
                }
            }
            if !acks.is_empty() && ack_tx.send(std::mem::take(&mut acks)).is_err() {
                self.fail("ack writer gone".into());
                break;
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    self.fail("the broker closed the socket".into());
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    self.fail(format!("read: {e}"));
                    break;
                }
            }
        }
        drop(ack_tx);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
    }

    /// Walks the complete frames in the buffer.
    fn parse(&mut self, acks: &mut Vec<u8>) -> Result<(), String> {
        let mut pos = 0usize;
        let mut got = 0u64;
        let buf = &self.buf[..];
        while buf.len() - pos >= 7 {
            let ty = buf[pos];
            let ch = be_u16(&buf[pos + 1..]) as usize;
            let size = u32::from_be_bytes([buf[pos + 3], buf[pos + 4], buf[pos + 5], buf[pos + 6]])
                as usize;
            if buf.len() - pos < size + 8 {
                break;
            }
            let p = &buf[pos + 7..pos + 7 + size];
            if buf[pos + 7 + size] != FRAME_END {
                return Err(format!("bad frame end at a frame of type {ty}"));
            }
            pos += size + 8;
            if ty != FRAME_METHOD && ty != FRAME_HEADER && ty != FRAME_BODY {
                continue; // heartbeat
            }
            let Some(st) = self.channels.get_mut(ch) else {
                return Err(format!("frame on unexpected channel {ch}"));
            };
            match ty {
                FRAME_METHOD if size >= 4 => match (be_u16(p), be_u16(&p[2..])) {
                    (60, 60) => {
                        let tag_len = p[4] as usize;
                        st.tag = be_u64(&p[5 + tag_len..]);
                    }
                    (20, 40) | (10, 50) => {
                        let text_len = p[6] as usize;
                        let text = String::from_utf8_lossy(&p[7..7 + text_len]).into_owned();
                        return Err(format!("closed by the broker: {} {text}", be_u16(&p[4..])));
                    }
                    (60, 30) => return Err("consumer cancelled by the broker".into()),
                    _ => {}
                },
                FRAME_HEADER => {
                    st.body_left = be_u64(&p[4..]);
                    st.first_body = true;
                }
                FRAME_BODY => {
                    if st.first_body {
                        st.first_body = false;
                        let seq = if p.len() >= 8 { be_u64(p) } else { u64::MAX };
                        if let Some(c) = usize::try_from(seq).ok().and_then(|s| self.counts.get(s))
                        {
                            c.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    st.body_left = st.body_left.saturating_sub(size as u64);
                    if st.body_left == 0 {
                        got += 1;
                        st.done_tag = st.tag;
                        if !self.no_ack {
                            st.unacked += 1;
                            if st.unacked >= self.ack_every {
                                ack_frame(acks, ch as u16, st.done_tag, self.ack_every > 1);
                                st.unacked = 0;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let _ = self.buf.split_to(pos);
        if got > 0 {
            self.total.fetch_add(got, Ordering::AcqRel);
        }
        Ok(())
    }
}
