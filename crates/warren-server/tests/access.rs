//! The `warren` binary with a definitions file: `--load-definitions` / `WARREN_LOAD_DEFINITIONS`
//! imports RabbitMQ's export before clients are served, a malformed file is a one-line
//! startup error naming the place, and users, vhosts, permissions and limits survive kill -9.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/rabbitmq-3.10.8-definitions.json")
}

fn warren(data_dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WARREN_") {
            cmd.env_remove(key);
        }
    }
    // Tests run side by side: no fixed HTTP ports.
    cmd.env("WARREN_MANAGEMENT_PORT", "0");
    cmd.env("WARREN_PROMETHEUS_PORT", "0");
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--log-level",
        "warn",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    cmd
}

async fn connect(port: u16, user: &str, pass: &str, vhost: &str) -> lapin::Result<Connection> {
    let uri = format!("amqp://{user}:{pass}@127.0.0.1:{port}/{vhost}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Connection::connect(&uri, ConnectionProperties::default()).await {
            Err(e)
                if matches!(e.kind(), lapin::ErrorKind::IOError(_))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

fn kill9(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_load_at_start_and_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = warren(dir.path(), port)
        .env("WARREN_LOAD_DEFINITIONS", fixture())
        .stderr(Stdio::null())
        .spawn()
        .expect("warren starts");
    let c = connect(port, "app", "app-secret", "prod")
        .await
        .expect("app logs in with its RabbitMQ password");
    let ch = c.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("app.made-here".into(), durable, FieldTable::default())
        .await
        .expect("app may configure app.*");
    kill9(&mut child);
    // Restart without the file: everything came from the metadata log.
    let mut child = warren(dir.path(), port)
        .stderr(Stdio::null())
        .spawn()
        .expect("warren restarts");
    let c = connect(port, "app", "app-secret", "prod")
        .await
        .expect("app still logs in");
    let ch = c.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare("app.made-here".into(), passive, FieldTable::default())
        .await
        .expect("the acknowledged declaration survived");
    ch.queue_declare("app.q".into(), passive, FieldTable::default())
        .await
        .expect("the imported queue survived");
    let e = ch
        .queue_declare(
            "other.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("permissions survived");
    assert!(
        e.to_string()
            .contains("access to queue 'other.q' in vhost 'prod' refused for user 'app'"),
        "{e}"
    );
    let e = connect(port, "app", "app-secret", "staging")
        .await
        .expect_err("no permissions there");
    assert!(
        e.to_string()
            .contains("access to vhost 'staging' refused for user 'app'"),
        "{e}"
    );
    let e = connect(port, "guest", "wrong", "%2f")
        .await
        .expect_err("wrong password");
    assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");
    kill9(&mut child);
}

#[test]
fn a_malformed_definitions_file_is_a_one_line_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("defs.json");
    std::fs::write(
        &file,
        r#"{"users": [{"name": "a", "password_hash": ""}, {"tags": []}]}"#,
    )
    .expect("write");
    let out = warren(&dir.path().join("data"), free_port())
        .arg("--load-definitions")
        .arg(&file)
        .stderr(Stdio::piped())
        .output()
        .expect("warren runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!(
            "definitions file {}: users[1]: missing `name`",
            file.display()
        )),
        "{err}"
    );
}
