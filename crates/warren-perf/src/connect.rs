//! Connection churn: `--clients` tasks each open a connection (TCP, then TLS for `amqps://`,
//! then the AMQP handshake and `channel.open` on channel 1), close it and open the next until `-z`
//! seconds are up. Measures handshakes per second, the cost TLS adds to each new connection.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::conn::{AmqpUri, Conn};
use crate::stats::{latency_of, new_histogram};
use crate::{self_cpu_seconds, Mode, Options, Summary};

/// What one client task did.
struct ClientResult {
    opened: u64,
    failed: u64,
    hist: hdrhistogram::Histogram<u64>,
    server: String,
}

/// Runs the churn and reports it.
pub async fn run(opts: &Options, out: &mut (dyn Write + Send)) -> io::Result<Summary> {
    let uri = AmqpUri::parse(&opts.uri)?;
    let clients = opts.clients.max(1);
    let cpu0 = self_cpu_seconds();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(opts.time.max(0.0));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let uri = uri.clone();
            tokio::spawn(async move { client(i, &uri, deadline).await })
        })
        .collect();
    let mut hist = new_histogram();
    let (mut opened, mut failed, mut server) = (0u64, 0u64, String::new());
    for t in tasks {
        let r = t.await.map_err(io::Error::other)?;
        opened += r.opened;
        failed += r.failed;
        hist.add(&r.hist).map_err(io::Error::other)?;
        if server.is_empty() {
            server = r.server;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if opened == 0 {
        return Err(io::Error::other(format!(
            "no connection opened ({failed} attempts failed)"
        )));
    }
    writeln!(
        out,
        "opened and closed {opened} connections in {elapsed:.1} s"
    )?;
    Ok(Summary {
        mode: Mode::Connect,
        uri: uri.redacted(),
        server,
        clients,
        duration_s: elapsed,
        handshakes: opened,
        handshake_rate: opened as f64 / elapsed,
        handshake_errors: failed,
        latency: latency_of(&hist),
        client_cpu_s: self_cpu_seconds() - cpu0,
        ..Summary::default()
    })
}

/// One task: open, close, repeat until `deadline`.
async fn client(i: usize, uri: &AmqpUri, deadline: Instant) -> ClientResult {
    let mut r = ClientResult {
        opened: 0,
        failed: 0,
        hist: new_histogram(),
        server: String::new(),
    };
    let name = format!("warren-perf connect {i}");
    while Instant::now() < deadline {
        let start = Instant::now();
        match tokio::time::timeout(Duration::from_secs(10), Conn::connect(uri, &name)).await {
            Ok(Ok(c)) => {
                let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = r.hist.record(us.max(1));
                r.opened += 1;
                if r.server.is_empty() {
                    r.server = c.server.clone();
                }
                c.close().await;
            }
            _ => {
                r.failed += 1;
                // A refusing broker (file limit, connection limit) is not hammered in a loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    r
}
