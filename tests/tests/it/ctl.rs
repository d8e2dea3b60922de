//! `warren ctl`: the built `warren` binary's ctl subcommand run against a TestBroker's management
//! port, checked through lapin and the HTTP API.
//!
//! The binary is `target/debug/warren` next to this test binary (`WARREN_BIN` overrides it);
//! build it first with `cargo build -p warren-server --bin warren`.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use warren_tests::TestBroker;

/// The `warren` binary under test.
fn warren_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("WARREN_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/it-<hash> -> target/debug/warren
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("warren");
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build -p warren-server --bin warren` \
         (or set WARREN_BIN)",
        bin.display()
    );
    bin
}

/// One run of `warren ctl`: exit code, stdout, stderr.
struct Run {
    code: i32,
    out: String,
    err: String,
}

/// Runs `warren ctl --url http://{url} --user U --password P ARGS...`.
async fn ctl_at(url: &str, user: &str, pass: &str, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(warren_bin());
    cmd.arg("ctl")
        .args(["--url", url, "--user", user, "--password", pass])
        .args(args)
        .env_remove("WARREN_CTL_URL")
        .env_remove("WARREN_CTL_USER")
        .env_remove("WARREN_CTL_PASSWORD")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("warren ctl finishes in time")
        .expect("warren ctl runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ctl(b: &TestBroker, args: &[&str]) -> Run {
    ctl_at(&format!("http://{}", b.http), "guest", "guest", args).await
}

/// Runs a command that must succeed.
async fn ok(b: &TestBroker, args: &[&str]) -> String {
    let r = ctl(b, args).await;
    assert_eq!(r.code, 0, "warren ctl {args:?}: {}\n{}", r.out, r.err);
    r.out
}

async fn publish(ch: &lapin::Channel, queue: &str, n: usize) {
    for i in 0..n {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("publish confirmed");
    }
}

fn uri_as(b: &TestBroker, user: &str, pass: &str, vhost: &str) -> String {
    format!(
        "amqp://{user}:{pass}@{}/{}",
        b.addr,
        vhost.replace('/', "%2F")
    )
}

async fn can_log_in(uri: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(10),
            lapin::Connection::connect(uri, lapin::ConnectionProperties::default()),
        )
        .await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_add_user_and_permissions_let_lapin_log_in() {
    let b = TestBroker::start().await;
    let out = ok(&b, &["add_user", "bob", "s3cret"]).await;
    assert!(out.starts_with("Adding user \"bob\" ..."), "{out}");
    // No permissions yet: the broker refuses the vhost.
    assert!(!can_log_in(&uri_as(&b, "bob", "s3cret", "/")).await);
    ok(&b, &["set_permissions", "-p", "/", "bob", ".*", ".*", ".*"]).await;
    assert!(can_log_in(&uri_as(&b, "bob", "s3cret", "/")).await);
    assert!(!can_log_in(&uri_as(&b, "bob", "wrong", "/")).await);

    let perms = ok(&b, &["list_permissions", "-q"]).await;
    assert!(perms.lines().any(|l| l == "bob\t.*\t.*\t.*"), "{perms}");

    // Adding the same user again fails like rabbitmqctl.
    let again = ctl(&b, &["add_user", "bob", "x"]).await;
    assert_eq!(again.code, 70, "{}", again.err);
    assert!(again.err.contains("already exists"), "{}", again.err);

    ok(&b, &["change_password", "bob", "n3w"]).await;
    assert!(can_log_in(&uri_as(&b, "bob", "n3w", "/")).await);
    assert!(!can_log_in(&uri_as(&b, "bob", "s3cret", "/")).await);

    ok(&b, &["set_user_tags", "bob", "monitoring", "policymaker"]).await;
    let users = ok(&b, &["list_users", "--quiet"]).await;
    assert_eq!(users.lines().next(), Some("user\ttags"), "{users}");
    assert!(
        users.lines().any(|l| l == "bob\t[monitoring, policymaker]"),
        "{users}"
    );
    // Tags changed, password kept.
    assert!(can_log_in(&uri_as(&b, "bob", "n3w", "/")).await);

    ok(&b, &["clear_permissions", "bob"]).await;
    assert!(!can_log_in(&uri_as(&b, "bob", "n3w", "/")).await);
    ok(&b, &["delete_user", "bob"]).await;
    let users = ok(&b, &["list_users", "-s"]).await;
    assert!(!users.contains("bob"), "{users}");
    let gone = ctl(&b, &["delete_user", "bob"]).await;
    assert_ne!(gone.code, 0);
    assert!(
        gone.err.contains("user \"bob\" does not exist"),
        "{}",
        gone.err
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_list_queues_shows_counts_then_purge_and_delete() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "ctl-q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    publish(&ch, "ctl-q", 3).await;

    let out = ok(&b, &["list_queues"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"Timeout: 60.0 seconds ..."), "{out}");
    assert_eq!(
        lines.get(1),
        Some(&"Listing queues for vhost / ..."),
        "{out}"
    );
    assert_eq!(lines.get(2), Some(&"name\tmessages"), "{out}");
    assert!(lines.contains(&"ctl-q\t3"), "{out}");

    let out = ok(
        &b,
        &[
            "list_queues",
            "-s",
            "name",
            "messages_ready",
            "consumers",
            "durable",
        ],
    )
    .await;
    assert_eq!(out.trim_end(), "ctl-q\t3\t0\tfalse", "{out}");

    let json = ok(
        &b,
        &["list_queues", "--formatter", "json", "name", "messages"],
    )
    .await;
    let v: Value = serde_json::from_str(&json).expect("JSON output");
    assert_eq!(v, serde_json::json!([{"name": "ctl-q", "messages": 3}]));

    let bad = ctl(&b, &["list_queues", "name", "no_such_column"]).await;
    assert_eq!(bad.code, 64, "{}", bad.err);
    assert!(bad.err.contains("no_such_column"), "{}", bad.err);

    let out = ok(&b, &["purge_queue", "ctl-q"]).await;
    assert_eq!(out.trim_end(), "Purging queue 'ctl-q' in vhost '/' ...");
    assert_eq!(warren_tests::message_count(&ch, "ctl-q").await, 0);
    publish(&ch, "ctl-q", 2).await;

    let out = ok(&b, &["delete_queue", "ctl-q"]).await;
    assert!(
        out.contains("Queue was successfully deleted with 2 messages"),
        "{out}"
    );
    let out = ok(&b, &["list_queues", "-s"]).await;
    assert!(!out.contains("ctl-q"), "{out}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_unknown_queue_fails_with_rabbitmq_text() {
    let b = TestBroker::start().await;
    for cmd in ["delete_queue", "purge_queue"] {
        let r = ctl(&b, &[cmd, "nope"]).await;
        assert_eq!(r.code, 70, "{cmd}: {} {}", r.out, r.err);
        assert_eq!(
            r.err.trim_end(),
            "Error: NOT_FOUND - no queue 'nope' in vhost '/'",
            "{cmd}"
        );
        assert_eq!(r.err.lines().count(), 1);
    }
    let r = ctl(&b, &["list_queues", "-p", "no-such-vhost"]).await;
    assert_eq!(r.code, 70, "{}", r.err);
    assert!(r.err.contains("no-such-vhost"), "{}", r.err);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_wrong_password_unreachable_and_usage_exit_codes() {
    let b = TestBroker::start().await;
    let url = format!("http://{}", b.http);
    let r = ctl_at(&url, "guest", "wrong", &["list_queues"]).await;
    assert_eq!(r.code, 69, "{} {}", r.out, r.err);
    assert!(
        r.err
            .starts_with("Error: authentication failed for user 'guest'"),
        "{}",
        r.err
    );
    // Nothing listens there (port 1 on loopback).
    let r = ctl_at("http://127.0.0.1:1", "guest", "guest", &["status"]).await;
    assert_eq!(r.code, 69, "{}", r.err);
    assert!(r.err.contains("unable to reach"), "{}", r.err);

    let r = ctl(&b, &["no_such_command"]).await;
    assert_eq!(r.code, 64, "{}", r.err);
    let r = ctl(&b, &["add_user", "only-a-name"]).await;
    assert_eq!(r.code, 64, "{}", r.err);
    let r = ctl(&b, &["set_policy", "p", "^x", "{not json"]).await;
    assert_eq!(r.code, 65, "{}", r.err);

    let out = ok(&b, &["status"]).await;
    assert!(out.contains("Totals"), "{out}");
    assert!(out.contains("Listeners"), "{out}");
    let out = ok(&b, &["await_startup"]).await;
    assert!(out.contains("wait"), "{out}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_vhosts_policies_exchanges_bindings_connections() {
    let b = TestBroker::start().await;
    ok(&b, &["add_vhost", "ctl-v"]).await;
    let out = ok(&b, &["list_vhosts", "-s"]).await;
    assert!(out.lines().any(|l| l == "ctl-v"), "{out}");
    ok(
        &b,
        &["set_permissions", "-p", "ctl-v", "guest", ".*", ".*", ".*"],
    )
    .await;

    ok(
        &b,
        &[
            "set_policy",
            "-p",
            "ctl-v",
            "--priority",
            "3",
            "--apply-to",
            "queues",
            "lim",
            "^lim\\.",
            r#"{"max-length":1}"#,
        ],
    )
    .await;
    let out = ok(&b, &["list_policies", "-p", "ctl-v", "-s"]).await;
    assert_eq!(
        out.trim_end(),
        "ctl-v\tlim\t^lim\\.\tqueues\t{\"max-length\":1}\t3",
        "{out}"
    );

    // The policy applies to a queue declared over AMQP.
    let conn = warren_tests::connect_uri(&uri_as(&b, "guest", "guest", "ctl-v")).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    ch.queue_declare(
        "lim.a".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    publish(&ch, "lim.a", 3).await;
    // max-length 1: the policy holds the queue at one message.
    let out = ok(
        &b,
        &["list_queues", "-p", "ctl-v", "-s", "name", "messages"],
    )
    .await;
    assert_eq!(out.trim_end(), "lim.a\t1", "{out}");

    let out = ok(&b, &["list_exchanges", "-p", "ctl-v", "-s"]).await;
    assert!(out.lines().any(|l| l == "amq.topic\ttopic"), "{out}");
    let out = ok(&b, &["list_bindings", "-p", "ctl-v", "-s"]).await;
    assert!(
        out.lines()
            .any(|l| l == "\texchange\tlim.a\tqueue\tlim.a\t[]"),
        "{out}"
    );

    let out = ok(&b, &["list_connections", "-s", "user", "vhost", "name"]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("guest\tctl-v\t"))
        .unwrap_or_else(|| panic!("connection listed: {out}"));
    let name = line.split('\t').nth(2).expect("name column").to_string();
    let out = ok(&b, &["list_channels", "-s", "user", "number"]).await;
    assert!(out.lines().any(|l| l == "guest\t1"), "{out}");
    ok(&b, &["close_connection", &name, "closed by ctl test"]).await;
    assert!(
        warren_tests::eventually(Duration::from_secs(5), || !conn.status().connected()).await,
        "connection closed"
    );
    let r = ctl(&b, &["close_connection", "no such connection", "x"]).await;
    assert_eq!(r.code, 70, "{}", r.err);

    ok(&b, &["clear_policy", "-p", "ctl-v", "lim"]).await;
    let out = ok(&b, &["list_policies", "-p", "ctl-v", "-s"]).await;
    assert_eq!(out, "", "{out}");
    ok(&b, &["delete_vhost", "ctl-v"]).await;
    let out = ok(&b, &["list_vhosts", "-s"]).await;
    assert!(!out.contains("ctl-v"), "{out}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_export_import_definitions_round_trip() {
    let b = TestBroker::start().await;
    ok(&b, &["add_vhost", "defs-v"]).await;
    ok(&b, &["add_user", "defs-user", "pw"]).await;
    ok(
        &b,
        &[
            "set_permissions",
            "-p",
            "defs-v",
            "defs-user",
            "^a",
            "^b",
            "^c",
        ],
    )
    .await;
    ok(
        &b,
        &["set_permissions", "-p", "defs-v", "guest", ".*", ".*", ".*"],
    )
    .await;
    let api = b.api();
    let r = api
        .put(
            "/api/queues/defs-v/defs-q",
            &serde_json::json!({"durable": true}),
        )
        .await;
    assert!(r.status == 201 || r.status == 204, "{}", r.text);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("defs.json");
    let path = file.to_str().expect("utf-8 path");
    let out = ok(&b, &["export_definitions", path]).await;
    assert_eq!(
        out.trim_end(),
        format!("Exporting definitions in JSON to a file at \"{path}\" ...")
    );
    let defs: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("file written")).expect("JSON");
    assert!(defs["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .any(|q| q["name"] == "defs-q" && q["vhost"] == "defs-v"));
    // `-` writes to stdout.
    let out = ok(&b, &["export_definitions", "-"]).await;
    let stdout_defs: Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(stdout_defs["users"], defs["users"]);

    // Into a fresh broker: everything comes back.
    let b2 = TestBroker::start().await;
    ok(&b2, &["import_definitions", path]).await;
    let q = b2.api().get("/api/queues/defs-v/defs-q").await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.json["durable"], true);
    let out = ok(&b2, &["list_permissions", "-p", "defs-v", "-s"]).await;
    assert!(out.lines().any(|l| l == "defs-user\t^a\t^b\t^c"), "{out}");
    assert!(can_log_in(&uri_as(&b2, "defs-user", "pw", "defs-v")).await);

    // A file that is not JSON changes nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").expect("write");
    let r = ctl(&b2, &["import_definitions", bad.to_str().expect("path")]).await;
    assert_eq!(r.code, 65, "{}", r.err);
    let r = ctl(&b2, &["import_definitions", "/nonexistent/defs.json"]).await;
    assert_eq!(r.code, 65, "{}", r.err);
    b2.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_set_topic_permissions_and_vhost_limits() {
    let b = TestBroker::start().await;
    ok(&b, &["add_vhost", "ctl-l"]).await;
    ok(
        &b,
        &["set_permissions", "-p", "ctl-l", "guest", ".*", ".*", ".*"],
    )
    .await;
    ok(
        &b,
        &[
            "set_topic_permissions",
            "-p",
            "ctl-l",
            "guest",
            "amq.topic",
            "^ok\\.",
            ".*",
        ],
    )
    .await;
    let r = b.api().get("/api/topic-permissions/ctl-l/guest").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json[0]["exchange"], "amq.topic", "{}", r.text);
    assert_eq!(r.json[0]["write"], "^ok\\.", "{}", r.text);

    // One connection allowed: the first logs in and stays, the second is refused.
    ok(
        &b,
        &[
            "set_vhost_limits",
            "-p",
            "ctl-l",
            r#"{"max-connections": 1}"#,
        ],
    )
    .await;
    let r = b.api().get("/api/vhost-limits/ctl-l").await;
    assert_eq!(r.json[0]["value"]["max-connections"], 1, "{}", r.text);
    let uri = uri_as(&b, "guest", "guest", "ctl-l");
    let first = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
        .await
        .expect("first connection");
    assert!(!can_log_in(&uri).await, "the limit refuses the second");
    drop(first);
    // Bad JSON is a data error (65), as rabbitmqctl's.
    let r = ctl(&b, &["set_vhost_limits", "-p", "ctl-l", "{nope"]).await;
    assert_eq!(r.code, 65, "{}\n{}", r.out, r.err);
    b.stop().await;
}
