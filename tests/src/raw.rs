//! A small raw AMQP 0-9-1 client for protocol-level tests: it speaks frames directly over a
//! [`TcpStream`] (using warren-codec to encode and decode), so tests can send exactly the bytes
//! they want — malformed frames included — and observe exactly what the broker answers.
//!
//! Every read is bounded by a timeout and panics with a descriptive message when it expires, so a
//! broker that hangs fails the test instead of hanging it.

use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_codec::encode::encode_method;
use warren_codec::proto::{
    basic, channel, connection, AMQPClass, AMQPValue, FieldTable, LongString, ShortString,
};
use warren_codec::{decode_frame, Frame, PROTOCOL_HEADER};

/// Default time to wait for anything from the broker.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What a read ended with, when it did not yield a frame.
#[derive(Debug)]
pub enum ReadEnd {
    /// The broker closed the socket (EOF or reset).
    Closed,
    /// Nothing arrived in time.
    Timeout,
}

/// Options for the connection handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// User name for PLAIN.
    pub user: String,
    /// Password for PLAIN.
    pub pass: String,
    /// Advertise the `authentication_failure_close` capability.
    pub auth_failure_close: bool,
    /// `(channel_max, frame_max, heartbeat)` to send in tune-ok; `None` echoes the server's.
    pub tune: Option<(u16, u32, u16)>,
    /// Virtual host for `connection.open`.
    pub vhost: String,
}

impl Default for Handshake {
    fn default() -> Self {
        Self {
            user: "guest".into(),
            pass: "guest".into(),
            auth_failure_close: true,
            tune: None,
            vhost: "/".into(),
        }
    }
}

/// A raw AMQP client connection.
pub struct RawClient {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
    /// The server's `connection.start`, once received.
    pub start: Option<connection::Start>,
    /// The server's `connection.tune`, once received.
    pub tune: Option<connection::Tune>,
}

/// Builds a raw frame: type, channel, payload and the frame-end octet.
pub fn frame_bytes(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.push(frame_type);
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(warren_codec::FRAME_END);
    v
}

/// Encodes a method frame.
pub fn method_bytes(channel: u16, method: &AMQPClass) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_method(&mut out, channel, method);
    out.to_vec()
}

/// A content header frame for class 60 with no properties.
pub fn content_header_bytes(channel: u16, body_size: u64) -> Vec<u8> {
    let mut p = BytesMut::new();
    p.put_u16(60);
    p.put_u16(0);
    p.put_u64(body_size);
    p.put_u16(0); // property flags: none
    frame_bytes(warren_codec::FRAME_HEADER, channel, &p)
}

/// The `client_properties` table a start-ok carries.
pub fn client_properties(auth_failure_close: bool) -> FieldTable {
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    if auth_failure_close {
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from(b"warren-raw-test".to_vec())),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

impl RawClient {
    /// Opens a TCP connection without sending anything.
    pub async fn tcp(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("tcp connect timed out")
            .expect("tcp connect");
        let _ = stream.set_nodelay(true);
        Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            start: None,
            tune: None,
        }
    }

    /// Connects, sends the protocol header and waits for `connection.start`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut c = Self::tcp(addr).await;
        c.send_raw(&PROTOCOL_HEADER).await;
        match c.expect_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => c.start = Some(s),
            other => panic!("expected connection.start, got {other:?}"),
        }
        c
    }

    /// Connects and completes the default handshake (guest/guest, server's tune values, "/").
    pub async fn open(addr: SocketAddr) -> Self {
        Self::open_with(addr, Handshake::default()).await
    }

    /// Connects and completes a handshake with `opts`, expecting `connection.open-ok`.
    pub async fn open_with(addr: SocketAddr, opts: Handshake) -> Self {
        let mut c = Self::connect(addr).await;
        c.start_ok(&opts.user, &opts.pass, opts.auth_failure_close)
            .await;
        let tune = c.expect_tune().await;
        let (cm, fm, hb) = opts
            .tune
            .unwrap_or((tune.channel_max, tune.frame_max, tune.heartbeat));
        c.tune_ok(cm, fm, hb).await;
        c.connection_open(&opts.vhost).await;
        c.expect_open_ok().await;
        c
    }

    /// Sends `connection.start-ok` with PLAIN credentials.
    pub async fn start_ok(&mut self, user: &str, pass: &str, auth_failure_close: bool) {
        let response = format!("\0{user}\0{pass}");
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(auth_failure_close),
                mechanism: "PLAIN".into(),
                response: LongString::from(response.into_bytes()),
                locale: "en_US".into(),
            })),
        )
        .await;
    }

    /// Waits for `connection.tune`.
    pub async fn expect_tune(&mut self) -> connection::Tune {
        match self.expect_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => {
                self.tune = Some(t.clone());
                t
            }
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    /// Sends `connection.tune-ok`.
    pub async fn tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })),
        )
        .await;
    }

    /// Sends `connection.open` for `vhost`.
    pub async fn connection_open(&mut self, vhost: &str) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
    }

    /// Waits for `connection.open-ok`.
    pub async fn expect_open_ok(&mut self) {
        match self.expect_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Opens channel `id` and waits for `channel.open-ok`.
    pub async fn open_channel(&mut self, id: u16) {
        self.send_method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        match self.expect_method().await {
            (c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if c == id => {}
            other => panic!("expected channel.open-ok on {id}, got {other:?}"),
        }
    }

    /// The socket as a blocking std socket, with the bytes already read and not yet decoded.
    pub fn into_std(self) -> (std::net::TcpStream, BytesMut) {
        let s = self.stream.into_std().expect("into std socket");
        s.set_nonblocking(false).expect("blocking socket");
        (s, self.buf)
    }

    /// Writes `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(TIMEOUT, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Writes `bytes`, tolerating a socket the broker already closed.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(TIMEOUT, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes a method frame.
    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        let b = method_bytes(channel, &method);
        self.send_raw(&b).await;
    }

    /// Writes a frame of any type with `payload`.
    pub async fn send_frame(&mut self, frame_type: u8, channel: u16, payload: &[u8]) {
        let b = frame_bytes(frame_type, channel, payload);
        self.send_raw(&b).await;
    }

    /// Sends `connection.close-ok`.
    pub async fn send_close_ok(&mut self) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        )
        .await;
    }

    /// Sends `connection.close` and waits for `close-ok` (skipping anything else).
    pub async fn close(&mut self) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        loop {
            match self.expect_method().await {
                (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => return,
                _ => continue,
            }
        }
    }

    /// Reads exactly `n` raw bytes (from the buffer first), or fewer if the socket closes.
    pub async fn read_raw(&mut self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.buf.len() < n {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => panic!("timed out reading {n} raw bytes (got {:?})", &self.buf[..]),
            }
        }
        let k = n.min(self.buf.len());
        self.buf.split_to(k).to_vec()
    }

    /// Reads the next frame, or says why there is none.
    pub async fn try_read_frame(&mut self, timeout: Duration) -> Result<Frame, ReadEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match decode_frame(&mut self.buf, u32::MAX) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => panic!("broker sent an undecodable frame: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadEnd::Closed),
                Ok(Ok(_)) => {}
                Err(_) => return Err(ReadEnd::Timeout),
            }
        }
    }

    /// Reads the next frame; panics on timeout or a closed socket.
    pub async fn read_frame(&mut self) -> Frame {
        match self.try_read_frame(TIMEOUT).await {
            Ok(f) => f,
            Err(e) => panic!("expected a frame, got {e:?}"),
        }
    }

    /// Reads the next method frame, skipping heartbeats; panics on anything else.
    pub async fn expect_method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.read_frame().await {
                Frame::Heartbeat => continue,
                Frame::Method { channel, method } => return (channel, method),
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Waits for `connection.close` (skipping other frames, such as heartbeats or deliveries);
    /// returns `(reply_code, reply_text, class_id, method_id)`. Does not answer it.
    pub async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.try_read_frame(TIMEOUT).await {
                Ok(Frame::Method {
                    channel: 0,
                    method: AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                }) => {
                    return (
                        c.reply_code,
                        c.reply_text.as_str().to_owned(),
                        c.class_id,
                        c.method_id,
                    )
                }
                Ok(_) => continue,
                Err(e) => panic!("expected connection.close, got {e:?}"),
            }
        }
    }

    /// Waits for `channel.close` on `ch` (skipping other frames); returns
    /// `(reply_code, reply_text, class_id, method_id)`. Panics on a `connection.close`.
    pub async fn expect_channel_close(&mut self, ch: u16) -> (u16, String, u16, u16) {
        loop {
            match self.try_read_frame(TIMEOUT).await {
                Ok(Frame::Method {
                    channel,
                    method: AMQPClass::Channel(channel::AMQPMethod::Close(c)),
                }) if channel == ch => {
                    return (
                        c.reply_code,
                        c.reply_text.as_str().to_owned(),
                        c.class_id,
                        c.method_id,
                    )
                }
                Ok(Frame::Method {
                    method: AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                    ..
                }) => panic!("expected channel.close on {ch}, got connection.close {c:?}"),
                Ok(_) => continue,
                Err(e) => panic!("expected channel.close on {ch}, got {e:?}"),
            }
        }
    }

    /// Waits (up to `timeout`) for the broker to close the socket, discarding anything it sends.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.buf.clear();
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Asserts the broker closes the socket within [`TIMEOUT`].
    pub async fn expect_closed_socket(&mut self) {
        assert!(
            self.wait_closed(TIMEOUT).await,
            "the broker did not close the socket within {TIMEOUT:?}"
        );
    }

    /// Sends `basic.qos` with a hand-crafted `prefetch_size` (amq-protocol drops that field).
    pub async fn send_qos_raw(&mut self, ch: u16, prefetch_size: u32, prefetch_count: u16) {
        let mut p = BytesMut::new();
        p.put_u16(60);
        p.put_u16(10);
        p.put_u32(prefetch_size);
        p.put_u16(prefetch_count);
        p.put_u8(0);
        self.send_frame(warren_codec::FRAME_METHOD, ch, &p).await;
    }

    /// Sends `basic.publish` to `exchange`/`routing_key` (method frame only).
    pub async fn send_publish(&mut self, ch: u16, exchange: &str, routing_key: &str) {
        self.send_method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: ShortString::from(exchange),
                routing_key: ShortString::from(routing_key),
                mandatory: false,
                immediate: false,
            })),
        )
        .await;
    }
}
