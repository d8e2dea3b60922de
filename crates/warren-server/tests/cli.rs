//! Runs the built `warren` binary: configuration errors, the data directory lock, SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use warren_core::Config;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The binary with no `WARREN_*` or `RABBITMQ_*` variable inherited from the caller's
/// environment.
fn warren() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("WARREN_") || key_str.starts_with("RABBITMQ_") {
            cmd.env_remove(key);
        }
    }
    // Tests run side by side: no fixed HTTP ports.
    cmd.env("WARREN_MANAGEMENT_PORT", "0");
    cmd.env("WARREN_PROMETHEUS_PORT", "0");
    cmd.stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run warren")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("warren.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_owned()
}

/// A running broker, killed on drop if it is still there.
struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The "listening" log line.
    listening: String,
    /// The lines `wait_for_line` passed over.
    skipped: Vec<String>,
}

impl Broker {
    /// Starts `warren` on an ephemeral loopback port and waits for its "listening" line.
    fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        Broker::spawn(
            warren()
                .args(["--bind", "127.0.0.1", "--port", "0", "--data-dir"])
                .arg(data_dir)
                .args(extra),
        )
    }

    /// Starts `cmd` and waits for its "listening" line.
    fn spawn(cmd: &mut Command) -> Broker {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn warren");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut broker = Broker {
            child,
            lines,
            listening: String::new(),
            skipped: Vec::new(),
        };
        broker.listening = broker.wait_for_line("listening");
        broker
    }

    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.skipped.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "no line containing {needle:?} from warren; got: {:#?}",
            self.skipped
        );
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait(&mut self) -> ExitStatus {
        wait_timeout(&mut self.child)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren did not exit within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn print_default_config_parses_to_the_defaults() {
    let out = run(warren().arg("--print-default-config"));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(Config::from_toml(&text).expect("parses"), Config::default());
}

#[test]
fn unknown_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), "[amqp]\nport = 5672\nfram_max = 8192\n");
    let out = run(warren().args(["--config", &path]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("`amqp.fram_max`"), "{err}");
    assert!(err.contains(&path), "names the file: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_value_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), "[amqp]\nframe_max = 10\n");
    let out = run(warren().args(["--config", &path]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("invalid value for `amqp.frame_max`: must be at least 4096"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn environment_is_checked_and_overridden_by_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = run(warren()
        .env("WARREN_LOG_LEVEL", "loudest")
        .arg("--data-dir")
        .arg(&data));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("invalid value for `log.level`") && err.contains("WARREN_LOG_LEVEL"),
        "{err}"
    );

    // Flag over variable, variable over file: the file says text, the variable json.
    let path = config_file(dir.path(), "[log]\nformat = \"text\"\nlevel = \"off\"\n");
    let broker = Broker::spawn(
        warren()
            .env("WARREN_LOG_LEVEL", "loudest")
            .env("WARREN_LOG_FORMAT", "json")
            .env("WARREN_BIND", "127.0.0.1")
            .env("WARREN_PORT", "0")
            .env("WARREN_DATA_DIR", &data)
            .args(["--config", &path, "--log-level", "info"]),
    );
    let line = &broker.listening;
    assert!(line.starts_with('{'), "json: {line}");
    assert!(line.contains("\"addr\":\"127.0.0.1:"), "{line}");
    assert!(data.join(".lock").is_file(), "WARREN_DATA_DIR used");
}

#[test]
fn second_broker_on_the_same_data_dir_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut first = Broker::start(&data, &[]);
    let mut second = warren()
        .args(["--bind", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_timeout(&mut second);
    let out = second.wait_with_output().expect("output");
    assert!(!status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "data directory {} is locked by another running warren (pid {})",
            data.display(),
            first.child.id()
        )),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    first.signal("TERM");
    assert!(first.wait().success());
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut broker = Broker::start(dir.path(), &[]);
        broker.signal(signal);
        broker.wait_for_line("shutting down");
        let status = broker.wait();
        assert!(status.success(), "SIG{signal}: {status:?}");
    }
}

#[test]
fn healthcheck_fails_without_a_broker() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = run(warren().args(["healthcheck", "--port", &port.to_string()]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("warren healthcheck: 127.0.0.1:"));
}

/// At startup the soft limit of open files is raised to the hard limit, and logged.
#[test]
fn open_files_soft_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "ulimit -Sn 256 && ulimit -Hn 4096 && exec '{}' --bind 127.0.0.1 --port 0 --management-port 0 --prometheus-port 0 --data-dir '{}'",
        env!("CARGO_BIN_EXE_warren"),
        dir.path().display()
    );
    let mut broker = Broker::spawn(Command::new("sh").args(["-c", &script]));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.child.id()))
        .expect("read /proc/PID/limits");
    let row = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files row");
    let nums: Vec<&str> = row.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["4096", "4096"], "{row}");
    broker.signal("TERM");
    assert!(broker.wait().success());
}

/// The port in a "listening" line (`addr=127.0.0.1:PORT`).
fn listening_port(line: &str) -> u16 {
    let at = line
        .find("127.0.0.1:")
        .expect("address in the listening line")
        + 10;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("port")
}

/// Opens a connection as `user`/`pass`, returning the error text if refused.
fn login(port: u16, user: &str, pass: &str) -> Result<(), String> {
    login_vhost(port, user, pass, "/")
}

/// Logs in to `vhost` and declares an exclusive queue there.
fn login_vhost(port: u16, user: &str, pass: &str, vhost: &str) -> Result<(), String> {
    let vhost = vhost.replace('/', "%2f");
    let uri = format!("amqp://{user}:{pass}@127.0.0.1:{port}/{vhost}");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let conn = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
            channel
                .queue_declare(
                    "rabbitmq-env-q".into(),
                    lapin::options::QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
            conn.close(200, "bye".into())
                .await
                .map_err(|e| e.to_string())
        })
}

/// A compose file written for RabbitMQ's image works: `RABBITMQ_DEFAULT_USER`/`_PASS` create
/// the default user (guest is not created) and `RABBITMQ_DEFAULT_VHOST` the vhost created on
/// first start, where that user has its permissions.
#[test]
fn rabbitmq_image_variables_set_the_default_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::spawn(
        warren()
            .env("RABBITMQ_DEFAULT_USER", "app")
            .env("RABBITMQ_DEFAULT_PASS", "s3cret")
            .env("RABBITMQ_DEFAULT_VHOST", "/")
            .args(["--bind", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(dir.path().join("a")),
    );
    let port = listening_port(&broker.listening);
    login(port, "app", "s3cret").expect("the RABBITMQ_DEFAULT_USER logs in");
    let refused = login(port, "guest", "guest").expect_err("guest was not created");
    assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
    broker.signal("TERM");
    assert!(broker.wait().success());

    // WARREN_DEFAULT_USER wins over RABBITMQ_DEFAULT_USER; RABBITMQ_DEFAULT_VHOST=prod is
    // created and the default user may open it.
    let mut broker = Broker::spawn(
        warren()
            .env("RABBITMQ_DEFAULT_USER", "app")
            .env("RABBITMQ_DEFAULT_PASS", "s3cret")
            .env("RABBITMQ_DEFAULT_VHOST", "prod")
            .env("WARREN_DEFAULT_USER", "ops")
            .args(["--bind", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(dir.path().join("b")),
    );
    let port = listening_port(&broker.listening);
    login_vhost(port, "ops", "s3cret", "prod")
        .expect("WARREN_DEFAULT_USER with RABBITMQ_DEFAULT_PASS, in RABBITMQ_DEFAULT_VHOST");
    broker.signal("TERM");
    assert!(broker.wait().success());
}

/// The healthcheck probes the port of the configuration file named by `WARREN_CONFIG` (a
/// container configured by a mounted file), unless `WARREN_PORT` says otherwise.
#[test]
fn healthcheck_reads_the_port_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let port = listening_port(&broker.listening);
    let path = config_file(dir.path(), &format!("[amqp]\nport = {port}\n"));
    let out = run(warren().args(["healthcheck"]).env("WARREN_CONFIG", &path));
    assert!(out.status.success(), "{}", stderr(&out));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = run(warren()
        .args(["healthcheck"])
        .env("WARREN_CONFIG", &path)
        .env("WARREN_PORT", closed.to_string()));
    assert_eq!(out.status.code(), Some(1), "WARREN_PORT wins");
    broker.signal("TERM");
    assert!(broker.wait().success());
}
