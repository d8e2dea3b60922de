//! `warren healthcheck`: is a broker answering AMQP 0-9-1 on this host and port?
//!
//! Sends the protocol header and expects the first byte of the reply to be a method frame's type
//! octet (the broker's `connection.start`), all within the timeout. No AMQP session is opened,
//! so no credentials are needed. Plain blocking std I/O: no runtime for a one-shot probe.

use crate::cli::HealthcheckArgs;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use warren_core::Config;

/// Runs the probe; reports a failure on stderr in one line.
pub fn run(args: &HealthcheckArgs) -> ExitCode {
    let deadline = Instant::now() + Duration::from_secs(args.timeout.min(3600));
    let port = match port(args) {
        Ok(port) => port,
        Err(e) => {
            let _ = writeln!(io::stderr(), "warren healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match probe(&args.host, port, deadline) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "warren healthcheck: {}:{port}: {e}",
                args.host
            );
            ExitCode::FAILURE
        }
    }
}

/// The port to probe: --port / `WARREN_PORT`, else the configuration file's `amqp.port` (so a
/// container configured by a mounted file is probed where it listens), else the default.
fn port(args: &HealthcheckArgs) -> Result<u16, String> {
    if let Some(port) = args.port {
        return Ok(port);
    }
    let Some(path) = &args.config else {
        return Ok(Config::default().amqp.port);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read configuration file {}: {e}", path.display()))?;
    let config = Config::parse_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config.amqp.port)
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}

fn probe(host: &str, port: u16, deadline: Instant) -> io::Result<()> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(stream) => return expect_method_frame(stream, deadline),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

fn expect_method_frame(mut stream: TcpStream, deadline: Instant) -> io::Result<()> {
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(&warren_codec::PROTOCOL_HEADER)?;
    stream.set_read_timeout(Some(remaining(deadline)?))?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first)?;
    if first[0] == warren_codec::FRAME_METHOD {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "replied with byte {:#04x}, not a method frame (is this an AMQP 0-9-1 broker?)",
                first[0]
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection fake server that reads the header and replies with `reply`.
    fn fake_server(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut header = [0u8; 8];
            s.read_exact(&mut header).expect("header");
            assert_eq!(header, warren_codec::PROTOCOL_HEADER);
            let _ = s.write_all(reply);
            std::thread::sleep(Duration::from_millis(200));
        });
        port
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(3)
    }

    #[test]
    fn method_frame_is_healthy() {
        let port = fake_server(&[1, 0, 0, 0, 0, 0, 4]);
        probe("127.0.0.1", port, soon()).expect("healthy");
    }

    #[test]
    fn protocol_header_reply_is_unhealthy() {
        let port = fake_server(b"AMQP\x00\x00\x09\x01");
        let err = probe("127.0.0.1", port, soon()).expect_err("unhealthy");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn silence_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let started = Instant::now();
        let err = probe(
            "127.0.0.1",
            port,
            Instant::now() + Duration::from_millis(300),
        )
        .expect_err("no reply");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn closed_port_is_unhealthy() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        probe("127.0.0.1", port, soon()).expect_err("refused");
    }
}
