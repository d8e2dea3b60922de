//! A lean AMQP 0-9-1 client connection: the handshake and setup RPCs go through
//! `warren-codec`'s `encode_method`/`decode_frame`; the hot path (publish, ack, deliver) is
//! written and parsed by hand in place, without building `AMQPClass` values.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::Stream;
use warren_codec::encode::encode_method;
use warren_codec::proto::{
    basic, channel, confirm, connection, exchange, queue, AMQPClass, AMQPValue, FieldTable,
};
use warren_codec::{decode_frame, Frame, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD};

/// The `frame_max` this client asks for (RabbitMQ's default).
pub const CLIENT_FRAME_MAX: u32 = 131_072;

/// A parsed `amqp://user:pass@host:port/vhost` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Virtual host (percent-decoded).
    pub vhost: String,
    /// `amqps://`: TLS (see [`crate::tls`]).
    pub tls: bool,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl AmqpUri {
    /// Parses an AMQP URI; missing parts default to guest/guest, localhost, 5672 and `/`.
    pub fn parse(s: &str) -> io::Result<AmqpUri> {
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad AMQP URI: {s}"));
        let (tls, rest) = match s.strip_prefix("amqps://") {
            Some(r) => (true, r),
            None => (false, s.strip_prefix("amqp://").ok_or_else(bad)?),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.find(':') {
                Some(i) => (percent_decode(&u[..i]), percent_decode(&u[i + 1..])),
                None => (percent_decode(u), String::new()),
            },
            None => ("guest".into(), "guest".into()),
        };
        let (host, port) = match hostport.rfind(':') {
            Some(i) => (
                &hostport[..i],
                hostport[i + 1..].parse().map_err(|_| bad())?,
            ),
            None => (hostport, if tls { 5671 } else { 5672 }),
        };
        let host = if host.is_empty() { "localhost" } else { host };
        let vhost = match path {
            None | Some("") => "/".to_string(),
            Some(p) => percent_decode(p),
        };
        Ok(AmqpUri {
            user,
            password,
            host: host.to_string(),
            port,
            vhost,
            tls,
        })
    }

    /// The URI without the password, for reports.
    pub fn redacted(&self) -> String {
        format!(
            "{}://{}@{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            self.user,
            self.host,
            self.port,
            self.vhost.replace('/', "%2f")
        )
    }
}

/// An error raised by the peer or a protocol violation seen by the client.
pub fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// One open connection with channel 1 opened.
pub struct Conn {
    /// The socket (plain or TLS).
    pub stream: Stream,
    /// Bytes read and not yet decoded.
    pub rbuf: BytesMut,
    /// Bytes encoded and not yet written.
    pub wbuf: BytesMut,
    /// Negotiated `frame_max`.
    pub frame_max: u32,
    /// `product version` from the server properties.
    pub server: String,
}

impl Conn {
    /// Connects, runs the handshake (PLAIN) and opens channel 1.
    pub async fn connect(uri: &AmqpUri, name: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect((uri.host.as_str(), uri.port)).await?;
        stream.set_nodelay(true)?;
        let stream = if uri.tls {
            Stream::Tls(Box::new(crate::tls::connect(stream, &uri.host).await?))
        } else {
            Stream::Tcp(stream)
        };
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::with_capacity(256 * 1024),
            frame_max: CLIENT_FRAME_MAX,
            server: String::new(),
        };
        c.wbuf.extend_from_slice(&warren_codec::PROTOCOL_HEADER);
        c.flush().await?;
        let start = match c.expect_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => {
                return Err(proto_err(format!(
                    "expected connection.start, got {other:?}"
                )))
            }
        };
        let prop = |k: &str| match start.server_properties.inner().get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => String::new(),
        };
        let warren = prop("warren_version");
        c.server = if warren.is_empty() {
            format!("{} {}", prop("product"), prop("version"))
                .trim()
                .to_string()
        } else {
            // Warren reports RabbitMQ's identity for client feature detection.
            format!("Warren {warren}")
        };
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString("warren-perf".into()),
        );
        props.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let response = format!("\0{}\0{}", uri.user, uri.password);
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            })),
        );
        c.flush().await?;
        let tune = match c.expect_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => {
                return Err(proto_err(format!(
                    "expected connection.tune, got {other:?}"
                )))
            }
        };
        c.frame_max = match tune.frame_max {
            0 => CLIENT_FRAME_MAX,
            n => n.min(CLIENT_FRAME_MAX),
        };
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: c.frame_max,
                heartbeat: 0,
            })),
        );
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        );
        c.flush().await?;
        match c.expect_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => {
                return Err(proto_err(format!(
                    "expected connection.open-ok, got {other:?}"
                )))
            }
        }
        c.rpc(AMQPClass::Channel(channel::AMQPMethod::Open(
            channel::Open {},
        )))
        .await?;
        Ok(c)
    }

    /// Appends a method frame on `channel` to the write buffer.
    pub fn send(&mut self, channel: u16, m: &AMQPClass) {
        encode_method(&mut self.wbuf, channel, m);
    }

    /// Writes the whole write buffer to the socket.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes into the read buffer; an EOF is an error.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
            self.rbuf.reserve(64 * 1024);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the broker",
            ));
        }
        Ok(())
    }

    /// Reads frames until a method arrives on `channel` (content frames are skipped). A close
    /// from the broker becomes an error carrying its reply text.
    pub async fn expect_method(&mut self, channel: u16) -> io::Result<AMQPClass> {
        loop {
            while let Some(frame) = decode_frame(&mut self.rbuf, self.frame_max)
                .map_err(|e| proto_err(e.to_string()))?
            {
                if let Frame::Method {
                    channel: ch,
                    method,
                } = frame
                {
                    check_close(&method)?;
                    if ch == channel {
                        return Ok(method);
                    }
                }
            }
            self.fill().await?;
        }
    }

    /// Sends a synchronous method on channel 1 and waits for its reply.
    pub async fn rpc(&mut self, m: AMQPClass) -> io::Result<AMQPClass> {
        self.send(1, &m);
        self.flush().await?;
        self.expect_method(1).await
    }

    /// Declares a queue.
    pub async fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        arguments: FieldTable,
    ) -> io::Result<()> {
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: name.into(),
                passive: false,
                durable,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            },
        )))
        .await
        .map(drop)
    }

    /// Declares a queue passively (checks that it exists) and returns its message count. A
    /// missing queue comes back as the broker's `channel.close` (404), turned into an error;
    /// channel 1 is closed then and the connection should be dropped.
    pub async fn declare_queue_passive(&mut self, name: &str) -> io::Result<u32> {
        let reply = self
            .rpc(AMQPClass::Queue(queue::AMQPMethod::Declare(
                queue::Declare {
                    queue: name.into(),
                    passive: true,
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                },
            )))
            .await?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => Err(proto_err(format!(
                "expected queue.declare-ok, got {other:?}"
            ))),
        }
    }

    /// Deletes a queue.
    pub async fn delete_queue(&mut self, name: &str) -> io::Result<()> {
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })))
        .await
        .map(drop)
    }

    /// Declares an exchange.
    pub async fn declare_exchange(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
    ) -> io::Result<()> {
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Declare(
            exchange::Declare {
                exchange: name.into(),
                kind: kind.into(),
                passive: false,
                durable,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )))
        .await
        .map(drop)
    }

    /// Binds a queue to an exchange.
    pub async fn bind(&mut self, queue: &str, exchange: &str, key: &str) -> io::Result<()> {
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            nowait: false,
            arguments: FieldTable::default(),
        })))
        .await
        .map(drop)
    }

    /// Puts channel 1 in confirm mode.
    pub async fn confirm_select(&mut self) -> io::Result<()> {
        self.rpc(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )))
        .await
        .map(drop)
    }

    /// Sets the prefetch count of channel 1.
    pub async fn qos(&mut self, prefetch: u16) -> io::Result<()> {
        self.rpc(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: prefetch,
            global: false,
        })))
        .await
        .map(drop)
    }

    /// Starts a consumer on channel 1.
    pub async fn consume(
        &mut self,
        queue: &str,
        tag: &str,
        no_ack: bool,
        arguments: FieldTable,
    ) -> io::Result<()> {
        self.rpc(AMQPClass::Basic(basic::AMQPMethod::Consume(
            basic::Consume {
                queue: queue.into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments,
            },
        )))
        .await
        .map(drop)
    }

    /// Closes the connection politely (best effort, bounded wait).
    pub async fn close(mut self) {
        self.wbuf.clear();
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            self.flush().await?;
            loop {
                match self.expect_method(0).await? {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        return Ok::<(), io::Error>(())
                    }
                    _ => continue,
                }
            }
        })
        .await;
    }
}

/// Turns a `connection.close` / `channel.close` from the broker into an error.
pub fn check_close(m: &AMQPClass) -> io::Result<()> {
    match m {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Err(proto_err(format!(
            "connection closed by broker: {} {}",
            c.reply_code, c.reply_text
        ))),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Err(proto_err(format!(
            "channel closed by broker: {} {}",
            c.reply_code, c.reply_text
        ))),
        _ => Ok(()),
    }
}

/// Appends a `basic.publish` method frame on channel 1 (hand-written, no `AMQPClass`).
pub fn put_publish(out: &mut BytesMut, exchange: &[u8], routing_key: &[u8]) {
    let size = 4 + 2 + 1 + exchange.len() + 1 + routing_key.len() + 1;
    out.put_u8(FRAME_METHOD);
    out.put_u16(1);
    out.put_u32(size as u32);
    out.put_u16(60);
    out.put_u16(40);
    out.put_u16(0);
    out.put_u8(exchange.len() as u8);
    out.put_slice(exchange);
    out.put_u8(routing_key.len() as u8);
    out.put_slice(routing_key);
    out.put_u8(0); // mandatory, immediate
    out.put_u8(FRAME_END);
}

/// Appends a content header frame on channel 1 with raw properties.
pub fn put_header(out: &mut BytesMut, body_size: u64, raw_props: &[u8]) {
    out.put_u8(FRAME_HEADER);
    out.put_u16(1);
    out.put_u32((12 + raw_props.len()) as u32);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body_size);
    out.put_slice(raw_props);
    out.put_u8(FRAME_END);
}

/// Appends body frames on channel 1; the first `stamp` bytes of the body come from `stamp`,
/// the rest from `pad` (which must be at least as long as the body).
pub fn put_body(
    out: &mut BytesMut,
    stamp: &[u8; 24],
    pad: &[u8],
    body_size: usize,
    frame_max: u32,
) {
    let chunk = frame_max as usize - warren_codec::FRAME_OVERHEAD;
    let mut off = 0;
    while off < body_size {
        let n = chunk.min(body_size - off);
        out.put_u8(FRAME_BODY);
        out.put_u16(1);
        out.put_u32(n as u32);
        if off == 0 {
            out.put_slice(stamp);
            out.put_slice(&pad[24..n]);
        } else {
            out.put_slice(&pad[off..off + n]);
        }
        out.put_u8(FRAME_END);
        off += n;
    }
}

/// Appends a `basic.ack` on channel 1.
pub fn put_ack(out: &mut BytesMut, tag: u64, multiple: bool) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(1);
    out.put_u32(13);
    out.put_u16(60);
    out.put_u16(80);
    out.put_u64(tag);
    out.put_u8(u8::from(multiple));
    out.put_u8(FRAME_END);
}

/// Raw properties: flags only, or `delivery_mode = 2` when persistent.
pub fn raw_props(persistent: bool) -> &'static [u8] {
    if persistent {
        &[0x10, 0x00, 2]
    } else {
        &[0x00, 0x00]
    }
}

/// A frame seen by the hot-path parser: only what the load generator needs.
#[derive(Debug)]
pub enum Fast {
    /// `basic.deliver`: the delivery tag.
    Deliver(u64),
    /// A content header: the body size.
    Header(u64),
    /// A body frame; the payload is at `rbuf[7..7+len]` until [`consume`] is called.
    Body(usize),
    /// `basic.ack` / `basic.nack` from the broker (confirms): tag, multiple, nack.
    Confirm(u64, bool, bool),
    /// Anything else, decoded by the codec.
    Other(AMQPClass),
    /// A heartbeat or a content frame we do not care about.
    Skip,
}

/// Looks at the frame at the front of `buf` without consuming it. Returns the parsed frame and
/// its total length, or `None` when incomplete. Frames other than the hot ones go through the
/// codec's `decode_frame` (and are consumed there: length 0 is returned for those).
pub fn peek_fast(buf: &mut BytesMut, frame_max: u32) -> io::Result<Option<(Fast, usize)>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let ty = buf[0];
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let total = size + 8;
    if buf.len() < total {
        if size > frame_max as usize {
            return Err(proto_err(format!(
                "frame of {size} bytes exceeds frame_max"
            )));
        }
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(proto_err("bad frame end"));
    }
    let p = &buf[7..7 + size];
    match ty {
        FRAME_METHOD if size >= 4 => {
            let ids = (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            match ids {
                (60, 60) => {
                    let tl = p[4] as usize;
                    let at = 5 + tl;
                    if p.len() < at + 8 {
                        return Err(proto_err("short basic.deliver"));
                    }
                    let mut t = &p[at..at + 8];
                    return Ok(Some((Fast::Deliver(t.get_u64()), total)));
                }
                (60, 80) | (60, 120) if p.len() >= 13 => {
                    let mut t = &p[4..12];
                    let tag = t.get_u64();
                    let bits = p[12];
                    return Ok(Some((
                        Fast::Confirm(tag, bits & 1 != 0, ids.1 == 120),
                        total,
                    )));
                }
                _ => {}
            }
        }
        FRAME_HEADER if size >= 12 => {
            let mut s = &p[4..12];
            return Ok(Some((Fast::Header(s.get_u64()), total)));
        }
        FRAME_BODY => return Ok(Some((Fast::Body(size), total))),
        _ => {}
    }
    match decode_frame(buf, frame_max).map_err(|e| proto_err(e.to_string()))? {
        Some(Frame::Method { method, .. }) => Ok(Some((Fast::Other(method), 0))),
        Some(_) => Ok(Some((Fast::Skip, 0))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parsing() {
        let u = AmqpUri::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("parses");
        assert_eq!(u.vhost, "/");
        assert_eq!(u.port, 5672);
        assert_eq!(u.user, "guest");
        let u = AmqpUri::parse("amqp://a:b%40c@h:1/v").expect("parses");
        assert_eq!(
            (u.password.as_str(), u.host.as_str(), u.vhost.as_str()),
            ("b@c", "h", "v")
        );
        let u = AmqpUri::parse("amqp://localhost").expect("parses");
        assert_eq!((u.port, u.vhost.as_str()), (5672, "/"));
    }

    #[test]
    fn hand_written_frames_decode_with_the_codec() {
        let mut out = BytesMut::new();
        put_publish(&mut out, b"ex", b"rk");
        put_header(&mut out, 30, raw_props(true));
        let pad = vec![0u8; 30];
        put_body(&mut out, &[1u8; 24], &pad, 30, 4096);
        put_ack(&mut out, 7, true);
        match decode_frame(&mut out, 4096) {
            Ok(Some(Frame::Method {
                method: AMQPClass::Basic(basic::AMQPMethod::Publish(p)),
                ..
            })) => {
                assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("ex", "rk"));
            }
            other => panic!("{other:?}"),
        }
        match decode_frame(&mut out, 4096) {
            Ok(Some(Frame::Header { header, .. })) => {
                assert_eq!(header.body_size, 30);
                assert_eq!(header.properties.delivery_mode(), &Some(2));
            }
            other => panic!("{other:?}"),
        }
        match decode_frame(&mut out, 4096) {
            Ok(Some(Frame::Body { payload, .. })) => {
                assert_eq!(&payload[..24], &[1u8; 24]);
                assert_eq!(payload.len(), 30);
            }
            other => panic!("{other:?}"),
        }
        match decode_frame(&mut out, 4096) {
            Ok(Some(Frame::Method {
                method: AMQPClass::Basic(basic::AMQPMethod::Ack(a)),
                ..
            })) => assert_eq!((a.delivery_tag, a.multiple), (7, true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fast_parser_reads_deliver() {
        let mut out = BytesMut::new();
        warren_codec::encode::encode_delivery(
            &mut out,
            1,
            "ctag",
            99,
            false,
            "",
            "q",
            &[0, 0],
            &[5u8; 40],
            4096,
        );
        let (f, n) = peek_fast(&mut out, 4096).expect("ok").expect("complete");
        assert!(matches!(f, Fast::Deliver(99)));
        out.advance(n);
        let (f, n) = peek_fast(&mut out, 4096).expect("ok").expect("complete");
        assert!(matches!(f, Fast::Header(40)));
        out.advance(n);
        let (f, _) = peek_fast(&mut out, 4096).expect("ok").expect("complete");
        assert!(matches!(f, Fast::Body(40)));
    }
}
