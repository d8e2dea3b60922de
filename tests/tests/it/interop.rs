//! Python pika interop: runs the pytest suite in `tests/interop/` against an in-process Warren
//! broker over TCP, as part of `cargo test --workspace`.
//!
//! Needs `python3` with pika and pytest importable: `pip install -r tests/interop/requirements.txt`.
//! Without them this test FAILS with that instruction, unless env `WARREN_SKIP_INTEROP=1` is set,
//! in which case it returns early (passes without running anything) — for machines that
//! deliberately have no Python.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use warren_tests::TestBroker;

/// Hard cap on the pytest run (the suite itself takes a few seconds).
const PYTEST_TIMEOUT: Duration = Duration::from_secs(240);

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

fn python() -> String {
    std::env::var("WARREN_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn describe(out: &Output) -> String {
    format!(
        "pytest {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks that python3 can import pika and pytest; `Err` explains how to fix it.
fn check_python() -> Result<(), String> {
    let hint = format!(
        "the pika interop tests need python3 with pika, pytest and prometheus_client: run \
         `pip install -r tests/interop/requirements.txt` (or set WARREN_SKIP_INTEROP=1 to skip \
         them); python used: `{}`",
        python()
    );
    let out = Command::new(python())
        .args(["-c", "import pika, pytest, prometheus_client"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{hint}\ncould not run it: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{hint}\n{}", describe(&out)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_interop_suite() {
    if std::env::var("WARREN_SKIP_INTEROP").is_ok_and(|v| v == "1") {
        // Explicit opt-out: nothing is run.
        return;
    }
    if let Err(msg) = check_python() {
        panic!("{msg}");
    }

    let broker = TestBroker::start().await;
    // `test_access.py` runs against the definitions RabbitMQ 3.10.8 exported.
    let defs = warren_core::broker::definitions::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/rabbitmq-3.10.8-definitions.json"),
    )
    .expect("fixture parses");
    broker
        .broker
        .import_definitions(defs)
        .await
        .expect("fixture imports");
    let url = broker.uri();
    let metrics_url = format!("http://{}", broker.metrics);
    let management_url = format!("http://{}", broker.http);
    let dir = interop_dir();
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python())
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o"])
            .arg("console_output_style=classic")
            .arg(&dir)
            .current_dir(&dir)
            .env("WARREN_AMQP_URL", url)
            .env("WARREN_METRICS_URL", metrics_url)
            .env("WARREN_MANAGEMENT_URL", management_url)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3 -m pytest");
        // Read both pipes on threads so a chatty run cannot block on a full pipe.
        let mut so = child.stdout.take().expect("stdout");
        let mut se = child.stderr.take().expect("stderr");
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = std::io::Read::read_to_end(&mut so, &mut b);
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = std::io::Read::read_to_end(&mut se, &mut b);
            b
        });
        let deadline = std::time::Instant::now() + PYTEST_TIMEOUT;
        let mut timed_out = false;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait on pytest") {
                break s;
            }
            if std::time::Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait on killed pytest");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = Output {
            status,
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
        };
        (out, timed_out)
    });
    let (out, timed_out) = run.await.expect("pytest runner task");
    broker.stop().await;

    assert!(
        !timed_out,
        "pika interop suite did not finish within {PYTEST_TIMEOUT:?}\n{}",
        describe(&out)
    );
    assert!(
        out.status.success(),
        "pika interop suite failed against Warren\n{}",
        describe(&out)
    );
}
