//! Request-reply round-trip latency with one message in flight: the requester publishes to
//! `<queue>-rtt-req` with `reply_to = <queue>-rtt-reply`; a responder on its own connection
//! consumes the request and publishes the body back to the default exchange with the
//! `reply_to` as routing key; the requester measures until the reply arrives.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};

use crate::bench::{read_stamp, stamp, STAMP_LEN};
use crate::conn::{
    check_close, peek_fast, proto_err, put_body, put_header, put_publish, AmqpUri, Conn, Fast,
};
use crate::stats::{latency_of, new_histogram};
use crate::{self_cpu_seconds, Mode, Options, Summary};

/// A connection switched to blocking socket I/O for the timed loop: a thread blocked in
/// `read` is woken by the kernel directly when a frame arrives, without an event loop in
/// between, so the tool adds as little as it can to the round trip it measures.
struct Blocking {
    stream: std::net::TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    frame_max: u32,
    server: String,
}

impl Blocking {
    fn from_conn(conn: Conn) -> io::Result<Blocking> {
        let Conn {
            stream,
            rbuf,
            wbuf,
            frame_max,
            server,
        } = conn;
        let stream = match stream {
            crate::tls::Stream::Tcp(s) => s.into_std()?,
            crate::tls::Stream::Tls(_) => {
                return Err(crate::conn::proto_err("rtt over TLS is not supported"))
            }
        };
        stream.set_nonblocking(false)?;
        Ok(Blocking {
            stream,
            rbuf,
            wbuf,
            frame_max,
            server,
        })
    }

    /// Back to an async connection (for the orderly close).
    fn into_conn(self) -> io::Result<Conn> {
        self.stream.set_nonblocking(true)?;
        self.stream.set_read_timeout(None)?;
        Ok(Conn {
            stream: crate::tls::Stream::Tcp(tokio::net::TcpStream::from_std(self.stream)?),
            rbuf: self.rbuf,
            wbuf: self.wbuf,
            frame_max: self.frame_max,
            server: self.server,
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes; `Ok(false)` when a read timeout passed with nothing read.
    fn fill(&mut self) -> io::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
            self.rbuf.reserve(64 * 1024);
        }
        let len = self.rbuf.len();
        let cap = self.rbuf.capacity();
        self.rbuf.resize(cap, 0);
        let r = self.stream.read(&mut self.rbuf[len..]);
        match r {
            Ok(0) => {
                self.rbuf.truncate(len);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the broker",
                ))
            }
            Ok(n) => {
                self.rbuf.truncate(len + n);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.rbuf.truncate(len);
                Ok(false)
            }
            Err(e) => {
                self.rbuf.truncate(len);
                Err(e)
            }
        }
    }

    /// Reads frames until one whole message has arrived; its raw properties and body are
    /// copied into the given (reused) buffers. `Ok(false)` when `stop` was set while waiting.
    fn read_message(
        &mut self,
        props: &mut Vec<u8>,
        body: &mut Vec<u8>,
        stop: &AtomicBool,
    ) -> io::Result<bool> {
        let mut left: Option<u64> = None;
        loop {
            while let Some((f, n)) = peek_fast(&mut self.rbuf, self.frame_max)? {
                let mut done = false;
                match f {
                    Fast::Deliver(_) => {
                        props.clear();
                        body.clear();
                        left = None;
                    }
                    Fast::Header(size) => {
                        props.extend_from_slice(&self.rbuf[19..n - 1]);
                        left = Some(size);
                        done = size == 0;
                    }
                    Fast::Body(len) => {
                        body.extend_from_slice(&self.rbuf[7..7 + len]);
                        let l = left.unwrap_or(0).saturating_sub(len as u64);
                        left = Some(l);
                        done = l == 0;
                    }
                    Fast::Other(m) => check_close(&m)?,
                    _ => {}
                }
                self.rbuf.advance(n);
                if done {
                    return Ok(true);
                }
            }
            while !self.fill()? {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
            }
        }
    }
}

fn reply_to_props(queue: &str) -> Vec<u8> {
    let mut p = BytesMut::new();
    p.put_u16(0x0200);
    p.put_u8(queue.len() as u8);
    p.put_slice(queue.as_bytes());
    p.to_vec()
}

/// Answers every request with its body, published to its `reply_to`, until `stop` is set.
fn responder(conn: &mut Blocking, stop: &AtomicBool) -> io::Result<()> {
    conn.stream
        .set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut props = Vec::new();
    let mut body = Vec::new();
    while conn.read_message(&mut props, &mut body, stop)? {
        let reply_to = warren_codec::decode_properties(&props)
            .and_then(|p| p.reply_to().as_ref().map(|s| s.as_str().to_string()))
            .unwrap_or_default();
        put_publish(&mut conn.wbuf, b"", reply_to.as_bytes());
        put_header(&mut conn.wbuf, body.len() as u64, &[0, 0]);
        if body.len() >= STAMP_LEN {
            let mut s = [0u8; STAMP_LEN];
            s.copy_from_slice(&body[..STAMP_LEN]);
            put_body(&mut conn.wbuf, &s, &body, body.len(), conn.frame_max);
        }
        conn.flush()?;
    }
    Ok(())
}

/// Runs the round-trip measurement for `opts.time` seconds.
pub async fn run(opts: &Options, out: &mut (dyn Write + Send)) -> io::Result<Summary> {
    let uri = AmqpUri::parse(&opts.uri)?;
    let req_q = format!("{}-rtt-req", opts.queue);
    let rep_q = format!("{}-rtt-reply", opts.queue);
    let mut admin = Conn::connect(&uri, "warren-perf rtt setup").await?;
    if !opts.predeclared {
        admin
            .declare_queue(&req_q, false, Default::default())
            .await?;
        admin
            .declare_queue(&rep_q, false, Default::default())
            .await?;
    }
    let mut resp = Conn::connect(&uri, "warren-perf rtt responder").await?;
    resp.consume(&req_q, "rtt-responder", true, Default::default())
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut resp = Blocking::from_conn(resp)?;
    let resp_stop = stop.clone();
    let responder = std::thread::spawn(move || {
        let r = responder(&mut resp, &resp_stop);
        (resp, r)
    });
    let mut conn = Conn::connect(&uri, "warren-perf rtt requester").await?;
    conn.consume(&rep_q, "rtt-requester", true, Default::default())
        .await?;
    let mut conn = Blocking::from_conn(conn)?;
    let never = AtomicBool::new(false);

    let size = opts.body_size();
    let pad = vec![0u8; size];
    let props = reply_to_props(&rep_q);
    let mut hist = new_histogram();
    let mut interval = new_histogram();
    let (mut rprops, mut rbody) = (Vec::new(), Vec::new());
    let base = Instant::now();
    let cpu0 = self_cpu_seconds();
    let duration = Duration::from_secs_f64(opts.time.max(0.0));
    let mut next_report = base + Duration::from_secs(1);
    let mut seq = 0u64;
    let mut bad = 0u64;
    let limit = opts.pmessages.unwrap_or(u64::MAX);
    while base.elapsed() < duration && seq < limit {
        let t = Instant::now();
        put_publish(&mut conn.wbuf, b"", req_q.as_bytes());
        put_header(&mut conn.wbuf, size as u64, &props);
        let ts = base.elapsed().as_nanos() as u64;
        put_body(
            &mut conn.wbuf,
            &stamp(seq, 0, ts),
            &pad,
            size,
            conn.frame_max,
        );
        conn.flush()?;
        conn.read_message(&mut rprops, &mut rbody, &never)?;
        let us = (t.elapsed().as_nanos() as u64 / 1000).max(1);
        if rbody.len() < STAMP_LEN || read_stamp(&rbody[..STAMP_LEN]).0 != seq {
            bad += 1;
        }
        let _ = hist.record(us);
        let _ = interval.record(us);
        seq += 1;
        if !opts.json && Instant::now() >= next_report {
            writeln!(
                out,
                "time {:.1} s, round trips {} /s, rtt p50 {} us p99 {} us",
                base.elapsed().as_secs_f64(),
                interval.len(),
                interval.value_at_quantile(0.5),
                interval.value_at_quantile(0.99)
            )?;
            out.flush()?;
            interval.reset();
            next_report += Duration::from_secs(1);
        }
    }
    let elapsed = base.elapsed().as_secs_f64();
    let cpu = self_cpu_seconds() - cpu0;
    stop.store(true, Ordering::Relaxed);
    match responder.join() {
        Ok((resp, r)) => {
            r?;
            resp.into_conn()?.close().await;
        }
        Err(_) => return Err(proto_err("the responder thread panicked")),
    }
    conn.into_conn()?.close().await;
    if !opts.predeclared && !opts.keep_queues {
        admin.delete_queue(&req_q).await?;
        admin.delete_queue(&rep_q).await?;
    }
    let server = admin.server.clone();
    admin.close().await;
    Ok(Summary {
        mode: Mode::Rtt,
        uri: uri.redacted(),
        server,
        producers: 1,
        consumers: 1,
        size,
        duration_s: elapsed,
        sent: seq,
        confirmed: 0,
        nacked: 0,
        received: seq,
        received_total: seq,
        send_rate: seq as f64 / elapsed,
        confirm_rate: 0.0,
        receive_rate: seq as f64 / elapsed,
        send_mb_s: seq as f64 * size as f64 / 1e6 / elapsed,
        receive_mb_s: seq as f64 * size as f64 / 1e6 / elapsed,
        latency: latency_of(&hist),
        duplicates: 0,
        out_of_order: bad,
        missing: 0,
        foreign: 0,
        drain_s: 0.0,
        drain_rate: 0.0,
        client_cpu_s: cpu,
        client_cpu_us_per_msg: if seq > 0 {
            cpu * 1e6 / (2 * seq) as f64
        } else {
            0.0
        },
        connections: 0,
        ..Summary::default()
    })
}
