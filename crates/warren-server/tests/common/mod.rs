//! What the binary tests that kill the broker share: a free port, starting the `warren`
//! binary on a data dir, and connecting once it accepts.

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

/// Connects as guest, retrying for up to 20 s while the broker comes up.
pub async fn connect(port: u16) -> Connection {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Connection::connect(&uri, ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("broker did not come up: {e}"),
        }
    }
}
