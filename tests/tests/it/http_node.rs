//! The management API's node, health, rates and definitions endpoints over real HTTP, with
//! lapin driving the traffic they report.

use std::path::Path;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use warren_core::metadata::{Command, PermissionDef, UserDef};
use warren_core::Config;
use warren_tests::TestBroker;

const WAIT: Duration = Duration::from_secs(10);

/// Polls `GET path` until `f` holds for its JSON; returns the last reply's JSON.
async fn poll(api: &warren_tests::api::Api, path: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = api.get(path).await;
        if f(&r.json) || tokio::time::Instant::now() >= deadline {
            return r.json;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn add_user(b: &TestBroker, name: &str, pass: &str, tags: &[&str]) {
    b.broker
        .admin(Command::PutUser(UserDef {
            name: name.into(),
            password_hash: warren_core::auth::password::hash(pass),
            hashing_algorithm: warren_core::auth::password::SHA256.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            max_connections: None,
            max_channels: None,
        }))
        .await
        .expect("user added");
    b.broker
        .admin(Command::SetPermissions(PermissionDef {
            user: name.into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }))
        .await
        .expect("permissions");
}

#[tokio::test]
async fn overview_has_rabbitmq_fields_and_listeners() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    ch.queue_declare("n.q".into(), Default::default(), FieldTable::default())
        .await
        .expect("declare");
    let r = b.api().get("/api/overview").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let o = &r.json;
    assert_eq!(o["rabbitmq_version"], json!("3.10.8"));
    assert_eq!(o["management_version"], json!("3.10.8"));
    assert!(o["node"].as_str().is_some_and(|n| n.starts_with("rabbit@")));
    assert_eq!(o["cluster_name"], o["node"]);
    assert_eq!(o["object_totals"]["channels"], json!(1));
    assert_eq!(o["object_totals"]["queues"], json!(1));
    assert_eq!(o["statistics_db_event_queue"], json!(0));
    assert!(o["queue_totals"]["messages_details"]["rate"].is_number());
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    let listeners = o["listeners"].as_array().expect("listeners");
    let amqp = listeners
        .iter()
        .find(|l| l["protocol"] == json!("amqp"))
        .expect("an amqp listener");
    assert_eq!(amqp["port"], json!(b.addr.port()));
    assert!(listeners
        .iter()
        .any(|l| l["protocol"] == json!("http") && l["port"] == json!(b.http.port())));
    assert!(
        listeners
            .iter()
            .any(|l| l["protocol"] == json!("http/prometheus")
                && l["port"] == json!(b.metrics.port()))
    );
    assert!(o["exchange_types"]
        .as_array()
        .expect("types")
        .iter()
        .any(|t| t["name"] == json!("topic")));
    b.stop().await;
}

#[tokio::test]
async fn nodes_list_and_one_and_refuse_non_monitors() {
    let b = TestBroker::start().await;
    let r = b.api().get("/api/nodes").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let nodes = r.json.as_array().expect("array");
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(n["running"], json!(true));
    assert_eq!(n["type"], json!("disc"));
    assert!(n["mem_used"].as_u64().is_some_and(|m| m > 1_000_000), "{n}");
    assert!(n["mem_limit"].as_u64().is_some_and(|m| m > 0));
    assert!(n["fd_used"].as_u64().is_some_and(|m| m > 0));
    assert!(n["fd_total"].as_u64().is_some_and(|m| m > 0));
    assert!(n["disk_free"].as_u64().is_some_and(|m| m > 0));
    assert_eq!(n["mem_alarm"], json!(false));
    assert_eq!(n["disk_free_alarm"], json!(false));
    let name = n["name"].as_str().expect("name").to_string();
    let one = b.api().get(&format!("/api/nodes/{name}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json["name"], json!(name));
    let missing = b.api().get("/api/nodes/rabbit@elsewhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json["error"], json!("Object Not Found"));

    add_user(&b, "mgmt", "pw", &["management"]).await;
    let r = b.api_as("mgmt", Some("pw")).get("/api/nodes").await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json["reason"], json!("Not monitor user"));
    let ext = b.api().get("/api/extensions").await;
    assert_eq!(ext.status, 200);
    assert!(ext.json.is_array());
    b.stop().await;
}

#[tokio::test]
async fn cluster_name_round_trips_and_needs_admin() {
    let b = TestBroker::start().await;
    let r = b
        .api()
        .put("/api/cluster-name", &json!({"name": "warren-east"}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = b.api().get("/api/cluster-name").await;
    assert_eq!(r.json, json!({"name": "warren-east"}));
    let o = b.api().get("/api/overview").await;
    assert_eq!(o.json["cluster_name"], json!("warren-east"));
    let bad = b
        .api()
        .send_raw(
            reqwest::Method::PUT,
            "/api/cluster-name",
            "application/json",
            "{oops",
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.json["error"], json!("bad_request"));
    add_user(&b, "mon", "pw", &["monitoring"]).await;
    let r = b
        .api_as("mon", Some("pw"))
        .put("/api/cluster-name", &json!({"name": "x"}))
        .await;
    assert_eq!(r.status, 401);
    b.stop().await;
}

#[tokio::test]
async fn alarm_health_checks_fail_while_an_alarm_is_raised() {
    let b = TestBroker::start().await;
    for path in [
        "/api/health/checks/alarms",
        "/api/health/checks/local-alarms",
    ] {
        let r = b.api().get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.json, json!({"status": "ok"}));
    }
    b.broker.alarm.send_replace(true);
    let r = b.api().get("/api/health/checks/alarms").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["status"], json!("failed"));
    assert_eq!(r.json["alarms"][0]["resource"], json!("memory"));
    let n = b.api().get("/api/nodes").await;
    assert_eq!(n.json[0]["mem_alarm"], json!(true));
    b.broker.alarm.send_replace(false);
    b.broker.disk_alarm.send_replace(true);
    let r = b.api().get("/api/health/checks/local-alarms").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json["alarms"],
        json!([{"node": n.json[0]["name"], "resource": "disk"}])
    );
    b.broker.disk_alarm.send_replace(false);
    let r = b.api().get("/api/health/checks/local-alarms").await;
    assert_eq!(r.status, 200);
    b.stop().await;
}

#[tokio::test]
async fn listener_and_other_health_checks() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .get(&format!(
            "/api/health/checks/port-listener/{}",
            b.addr.port()
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["port"], json!(b.addr.port()));
    let r = api.get("/api/health/checks/port-listener/1").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json["missing"], json!(1));
    let r = api.get("/api/health/checks/port-listener/nope").await;
    assert_eq!(r.status, 400);
    for p in ["amqp", "amqp091", "http", "http/prometheus"] {
        let r = api
            .get(&format!(
                "/api/health/checks/protocol-listener/{}",
                p.replace('/', "%2F")
            ))
            .await;
        assert_eq!(r.status, 200, "{p}: {}", r.text);
    }
    let r = api.get("/api/health/checks/protocol-listener/stomp").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json["reason"], json!("No active listener"));
    for p in [
        "virtual-hosts",
        "node-is-quorum-critical",
        "ready-to-serve-clients",
        "certificate-expiration/1/weeks",
    ] {
        let r = api.get(&format!("/api/health/checks/{p}")).await;
        assert_eq!(r.status, 200, "{p}: {}", r.text);
        assert_eq!(r.json["status"], json!("ok"));
    }
    let r = api
        .get("/api/health/checks/certificate-expiration/1/fortnights")
        .await;
    assert_eq!(r.status, 400);
    let r = b
        .api_as("guest", None)
        .get("/api/health/checks/alarms")
        .await;
    assert_eq!(r.status, 401);
    b.stop().await;
}

#[tokio::test]
async fn certificate_expiration_reads_the_tls_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.self_signed(&key).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let mut config = Config::default();
    config.tls.cert = cert_path;
    config.tls.key = key_path;
    let b = TestBroker::start_with(config).await;
    let r = b
        .api()
        .get("/api/health/checks/certificate-expiration/1/weeks")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = b
        .api()
        .get("/api/health/checks/certificate-expiration/100/years")
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["reason"], json!("Certificates expiring"));
    b.stop().await;
}

#[tokio::test]
async fn rates_rise_while_a_client_publishes() {
    let mut config = Config::default();
    config.management.collect_statistics_interval = 50;
    let b = TestBroker::start_with(config).await;
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "rates.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = ch
                    .basic_publish(
                        "".into(),
                        "rates.q".into(),
                        BasicPublishOptions::default(),
                        b"x",
                        BasicProperties::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let api = b.api();
    let o = poll(&api, "/api/overview", |o| {
        o["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
            && o["queue_totals"]["messages_ready_details"]["rate"]
                .as_f64()
                .is_some_and(|r| r > 0.0)
    })
    .await;
    stop.cancel();
    let _ = publisher.await;
    assert!(
        o["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{o}"
    );
    assert!(o["message_stats"]["publish"]
        .as_u64()
        .is_some_and(|n| n > 0));
    // Once publishing stops, the rate falls back to 0.
    let o = poll(&api, "/api/overview", |o| {
        o["message_stats"]["publish_details"]["rate"].as_f64() == Some(0.0)
    })
    .await;
    assert_eq!(
        o["message_stats"]["publish_details"]["rate"],
        json!(0.0),
        "{o}"
    );
    b.stop().await;
}

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rabbitmq-3.10.8-definitions.json")
}

fn names(v: &Value, section: &str, key: &str) -> Vec<String> {
    let mut n: Vec<String> = v[section]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i[key].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

#[tokio::test]
async fn rabbitmq_definitions_import_over_http_and_export_reimports() {
    let b = TestBroker::start().await;
    let text = std::fs::read_to_string(fixture()).expect("fixture");
    let r = b
        .api()
        .send_raw(
            reqwest::Method::POST,
            "/api/definitions",
            "application/json",
            &text,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    // The imported users log in with their RabbitMQ passwords.
    let who = b
        .api_as("admin", Some("adminpass"))
        .get("/api/whoami")
        .await;
    assert_eq!(who.status, 200, "{}", who.text);
    let c = warren_tests::connect_uri(&format!("amqp://app:app-secret@{}/prod", b.addr)).await;
    let _ = c.close(200, "bye".into()).await;

    let export = b.api().get("/api/definitions").await;
    assert_eq!(export.status, 200, "{}", export.text);
    let e = &export.json;
    assert_eq!(e["rabbitmq_version"], json!("3.10.8"));
    assert!(names(e, "users", "name").contains(&"app".to_string()));
    assert!(names(e, "vhosts", "name").contains(&"prod".to_string()));
    assert_eq!(names(e, "queues", "name"), vec!["app.q".to_string()]);
    assert_eq!(
        names(e, "exchanges", "name"),
        vec!["app.events".to_string()]
    );
    assert_eq!(e["queues"][0]["arguments"], json!({"x-max-length": 1000}));
    assert_eq!(e["bindings"][0]["routing_key"], json!("app.#"));
    assert_eq!(names(e, "policies", "name"), vec!["ttl".to_string()]);
    assert!(e["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .any(|p| p["component"] == json!("vhost-limits")
            && p["value"] == json!({"max-connections": 2, "max-queues": 3})));
    assert_eq!(e["topic_permissions"][0]["write"], json!("^payments\\.ok"));

    // Into a second broker: the same export comes back out.
    let b2 = TestBroker::start().await;
    let r = b2.api().post("/api/definitions", e).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let e2 = b2.api().get("/api/definitions").await.json;
    for (section, key) in [
        ("users", "name"),
        ("vhosts", "name"),
        ("queues", "name"),
        ("exchanges", "name"),
        ("policies", "name"),
        ("permissions", "user"),
        ("bindings", "destination"),
    ] {
        assert_eq!(
            names(e, section, key),
            names(&e2, section, key),
            "{section}"
        );
    }
    let who = b2
        .api_as("reader", Some("readpass"))
        .get("/api/whoami")
        .await;
    assert_eq!(who.status, 200);

    // One vhost's definitions.
    let v = b.api().get("/api/definitions/prod").await;
    assert_eq!(v.status, 200);
    assert!(v.json.get("users").is_none());
    assert_eq!(names(&v.json, "queues", "name"), vec!["app.q".to_string()]);
    let missing = b.api().get("/api/definitions/nope").await;
    assert_eq!(missing.status, 404);
    b.stop().await;
    b2.stop().await;
}

#[tokio::test]
async fn definitions_into_one_vhost_and_bad_input() {
    let b = TestBroker::start().await;
    let body = json!({
        "queues": [{"name": "v.q", "vhost": "elsewhere", "durable": true,
                    "auto_delete": false, "arguments": {}}],
    });
    let r = b.api().post("/api/definitions/%2F", &body).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare(
            "v.q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(q.is_ok(), "the queue was imported into /");

    let bad = b
        .api()
        .send_raw(
            reqwest::Method::POST,
            "/api/definitions",
            "application/json",
            "{\"queues\": [",
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.json["error"], json!("bad_request"));
    let bad = b
        .api()
        .post("/api/definitions", &json!({"queues": [{"vhost": "/"}]}))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.json["reason"]
        .as_str()
        .is_some_and(|r| r.contains("queues[0]")));

    add_user(&b, "mon", "pw", &["monitoring"]).await;
    let r = b.api_as("mon", Some("pw")).get("/api/definitions").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["reason"], json!("Not administrator user"));
    let r = b
        .api_as("mon", Some("pw"))
        .post("/api/definitions", &json!({}))
        .await;
    assert_eq!(r.status, 401);
    b.stop().await;
}

#[tokio::test]
async fn aliveness_test_declares_publishes_and_gets() {
    let b = TestBroker::start().await;
    for _ in 0..2 {
        let r = b.api().get("/api/aliveness-test/%2F").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json, json!({"status": "ok"}));
    }
    // The queue exists, non-durable, and is left empty.
    let (_c, ch) = b.channel().await;
    let q = ch
        .queue_declare(
            "aliveness-test".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("aliveness-test queue exists");
    assert_eq!(q.message_count(), 0);
    let r = b.api().get("/api/aliveness-test/nope").await;
    assert_eq!(r.status, 404, "{}", r.text);
    b.stop().await;
}
