//! What the binary tests that kill the broker share: a free port, starting the `warren`
//! binary on a data dir, and connecting once it accepts.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use lapin::{Connection, ConnectionProperties};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `warren` on 127.0.0.1:`port` with `data_dir`, quiet.
pub fn start(data_dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        // Tests run side by side: no fixed HTTP ports.
        .env("WARREN_MANAGEMENT_PORT", "0")
        .env("WARREN_PROMETHEUS_PORT", "0")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--log-level",
            "warn",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("warren starts")
}

/// Connects as guest, retrying for up to 60 s while the broker comes up. The listener is
/// bound before recovery, so one attempt can wait on a broker that is still recovering: each
/// attempt is bounded too, and a broker that never answers fails the test instead of hanging
/// it.
pub async fn connect(port: u16) -> Connection {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&uri, ConnectionProperties::default()),
        )
        .await;
        match attempt {
            Ok(Ok(c)) => return c,
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => panic!("broker did not come up: {e}"),
            Err(_) => panic!("broker accepted but never finished the handshake"),
        }
    }
}

/// Starts `warren` like [`start`] and returns once it serves AMQP, so that what the test
/// does next (publish, then kill) meets a running broker, however slow the machine is.
pub async fn start_ready(data_dir: &Path, port: u16) -> Child {
    let child = start(data_dir, port);
    let c = connect(port).await;
    let _ = c.close(200, "ready".into()).await;
    child
}

/// Waits up to 10 s for a task that ends when the broker is killed, then aborts it. A
/// detached task would otherwise reconnect to the next broker and go on publishing, and a
/// final "read until nothing comes" would never end.
pub async fn finish<T>(mut task: tokio::task::JoinHandle<T>) {
    if tokio::time::timeout(Duration::from_secs(10), &mut task)
        .await
        .is_err()
    {
        task.abort();
        let _ = task.await;
    }
}
