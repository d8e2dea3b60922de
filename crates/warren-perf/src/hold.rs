//! Idle connections: opens `--connections` connections with one channel each, writes
//! `ready N`, holds them for `--hold` seconds and closes them. Used to measure a broker's
//! memory per idle connection.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::conn::{AmqpUri, Conn};
use crate::{self_cpu_seconds, Mode, Options, Summary};

/// Opens, holds and closes the idle connections.
pub async fn run(opts: &Options, out: &mut (dyn Write + Send)) -> io::Result<Summary> {
    let uri = AmqpUri::parse(&opts.uri)?;
    let cpu0 = self_cpu_seconds();
    let t0 = Instant::now();
    let mut conns: Vec<Conn> = Vec::with_capacity(opts.connections);
    let mut next = 0;
    while next < opts.connections {
        let batch = (opts.connections - next).min(50);
        let mut tasks = Vec::with_capacity(batch);
        for i in next..next + batch {
            let uri = uri.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("warren-perf idle {i}");
                let connect = Conn::connect(&uri, &name);
                match tokio::time::timeout(Duration::from_secs(30), connect).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connection {i}: no handshake within 30 s (broker connection or file limit?)"),
                    )),
                }
            }));
        }
        for t in tasks {
            conns.push(t.await.map_err(io::Error::other)??);
        }
        next += batch;
    }
    let server = conns.first().map(|c| c.server.clone()).unwrap_or_default();
    writeln!(
        out,
        "ready {} connections in {:.2} s",
        conns.len(),
        t0.elapsed().as_secs_f64()
    )?;
    out.flush()?;
    tokio::time::sleep(Duration::from_secs_f64(opts.hold.max(0.0))).await;
    let n = conns.len();
    let closing: Vec<_> = conns.into_iter().map(|c| tokio::spawn(c.close())).collect();
    for c in closing {
        let _ = c.await;
    }
    Ok(Summary {
        mode: Mode::Hold,
        uri: uri.redacted(),
        server,
        connections: n,
        duration_s: t0.elapsed().as_secs_f64(),
        client_cpu_s: self_cpu_seconds() - cpu0,
        ..Summary::default()
    })
}
