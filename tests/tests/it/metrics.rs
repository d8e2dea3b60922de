//! The Prometheus endpoint (15692): lapin traffic, then scrapes over HTTP that must show it
//! under rabbitmq_prometheus 3.10.8's names, types and labels.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::HashMap;
use warren_tests::api::{Api, Reply};
use warren_tests::TestBroker;

fn metrics_client(b: &TestBroker) -> Api {
    Api::new(b.metrics, "guest", Some("guest"))
}

/// Parses Prometheus text into `sample line name{labels}` -> value, and `family` -> type.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
    text: String,
}

impl Scrape {
    fn parse(r: &Reply) -> Self {
        assert_eq!(r.status, 200, "{}", r.text);
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        for line in r.text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, ty) = t.rsplit_once(' ').expect("TYPE line has a type");
                types.insert(name.to_string(), ty.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (k, v) = line.rsplit_once(' ').expect("sample has a value");
                samples.insert(k.to_string(), v.parse().expect("numeric value"));
            }
        }
        Self {
            samples,
            types,
            text: r.text.clone(),
        }
    }
    fn get(&self, key: &str) -> f64 {
        match self.samples.get(key) {
            Some(v) => *v,
            None => panic!("no sample {key} in\n{}", self.text),
        }
    }
}

async fn scrape(api: &Api, path: &str) -> Scrape {
    Scrape::parse(&api.get(path).await)
}

async fn publish(ch: &lapin::Channel, rk: &str, n: usize) {
    for _ in 0..n {
        ch.basic_publish(
            "".into(),
            rk.into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
}

#[tokio::test]
async fn aggregated_metrics_follow_lapin_traffic() {
    let b = TestBroker::start().await;
    let api = metrics_client(&b);
    let before = scrape(&api, "/metrics").await;
    assert_eq!(before.get("rabbitmq_connections"), 0.0);
    assert_eq!(before.get("rabbitmq_queues"), 0.0);
    assert_eq!(
        before.types.get("rabbitmq_global_messages_received_total"),
        Some(&"counter".to_string())
    );
    assert_eq!(
        before.types.get("rabbitmq_build_info"),
        Some(&"untyped".to_string())
    );
    let r = api.get("/metrics").await;
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");

    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    ch.queue_declare(
        "m1".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    publish(&ch, "m1", 4).await;
    // One unroutable publish (dropped).
    publish(&ch, "no-such-queue", 1).await;
    let got = ch
        .basic_get("m1".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message");
    got.ack(BasicAckOptions::default()).await.expect("ack");

    let s = scrape(&api, "/metrics").await;
    assert_eq!(s.get("rabbitmq_connections"), 1.0);
    assert_eq!(s.get("rabbitmq_channels"), 1.0);
    assert_eq!(s.get("rabbitmq_queues"), 1.0);
    assert_eq!(s.get("rabbitmq_queue_messages_ready"), 3.0);
    assert_eq!(s.get("rabbitmq_queue_messages_unacked"), 0.0);
    assert_eq!(s.get("rabbitmq_queue_messages"), 3.0);
    assert_eq!(s.get("rabbitmq_queue_messages_ready_bytes"), 15.0);
    assert_eq!(
        s.get(r#"rabbitmq_global_messages_received_total{protocol="amqp091"}"#),
        5.0
    );
    assert_eq!(
        s.get(r#"rabbitmq_global_messages_confirmed_total{protocol="amqp091"}"#),
        5.0
    );
    assert_eq!(
        s.get(r#"rabbitmq_global_messages_routed_total{protocol="amqp091"}"#),
        4.0
    );
    assert_eq!(
        s.get(r#"rabbitmq_global_messages_unroutable_dropped_total{protocol="amqp091"}"#),
        1.0
    );
    let classic = r#"protocol="amqp091",queue_type="rabbit_classic_queue""#;
    assert_eq!(
        s.get(&format!(
            "rabbitmq_global_messages_delivered_get_manual_ack_total{{{classic}}}"
        )),
        1.0
    );
    assert_eq!(
        s.get(&format!(
            "rabbitmq_global_messages_delivered_total{{{classic}}}"
        )),
        1.0
    );
    assert_eq!(
        s.get(&format!(
            "rabbitmq_global_messages_acknowledged_total{{{classic}}}"
        )),
        1.0
    );
    assert_eq!(s.get("rabbitmq_channel_messages_published_total"), 5.0);
    assert!(s.get("rabbitmq_connection_incoming_bytes_total") > 0.0);
    assert!(s.get("rabbitmq_connections_opened_total") >= 1.0);
    assert!(s.get("rabbitmq_queues_created_total") >= 1.0);
    assert!(s.get("rabbitmq_process_resident_memory_bytes") > 1e6);
    assert!(s.get("rabbitmq_process_open_fds") > 0.0);
    assert!(s.get("rabbitmq_process_max_fds") >= s.get("rabbitmq_process_open_fds"));
    assert!(s.get("rabbitmq_resident_memory_limit_bytes") > 0.0);
    assert_eq!(s.get("rabbitmq_alarms_memory_used_watermark"), 0.0);
    assert_eq!(s.get("rabbitmq_alarms_free_disk_space_watermark"), 0.0);
    assert!(s
        .text
        .contains(r#"rabbitmq_identity_info{rabbitmq_node="warren@localhost""#));

    // Consume the rest with auto-ack: delivered totals move, the queue empties.
    let mut consumer = ch
        .basic_consume(
            "m1".into(),
            "ctag".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..3 {
        consumer.next().await.expect("a delivery").expect("ok");
    }
    let s = scrape(&api, "/metrics").await;
    assert_eq!(s.get("rabbitmq_queue_messages"), 0.0);
    assert_eq!(s.get("rabbitmq_consumers"), 1.0);
    assert_eq!(
        s.get(&format!(
            "rabbitmq_global_messages_delivered_consume_auto_ack_total{{{classic}}}"
        )),
        3.0
    );
    assert_eq!(
        s.get(&format!(
            "rabbitmq_global_messages_delivered_total{{{classic}}}"
        )),
        4.0
    );
    c.close(200, "bye".into()).await.expect("close");
    let closed = warren_tests::eventually(std::time::Duration::from_secs(5), || {
        b.broker.connections().is_empty()
    })
    .await;
    assert!(closed);
    let s = scrape(&api, "/metrics").await;
    assert_eq!(s.get("rabbitmq_connections"), 0.0);
    assert!(s.get("rabbitmq_connections_closed_total") >= 1.0);
    // Counters of closed channels are kept.
    assert_eq!(
        s.get(r#"rabbitmq_global_messages_received_total{protocol="amqp091"}"#),
        5.0
    );
    b.stop().await;
}

#[tokio::test]
async fn per_object_metrics_label_queues_channels_and_connections() {
    let b = TestBroker::start().await;
    let api = metrics_client(&b);
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    for q in ["po-a", "po-b"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    publish(&ch, "po-a", 2).await;
    publish(&ch, "po-b", 1).await;
    let s = scrape(&api, "/metrics/per-object").await;
    assert_eq!(
        s.get(r#"rabbitmq_queue_messages_ready{vhost="/",queue="po-a"}"#),
        2.0
    );
    assert_eq!(
        s.get(r#"rabbitmq_queue_messages_ready{vhost="/",queue="po-b"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"rabbitmq_queue_messages_published_total{vhost="/",queue="po-a"}"#),
        2.0
    );
    assert!(!s.samples.contains_key("rabbitmq_queue_messages_ready"));
    let conn = b.broker.connections();
    assert_eq!(conn.len(), 1);
    let id = conn[0].id;
    let chan = format!("<warren@localhost.{id}.1.0>");
    assert_eq!(
        s.get(&format!(
            r#"rabbitmq_channel_messages_published_total{{channel="{chan}",vhost="/"}}"#
        )),
        3.0
    );
    assert_eq!(
        s.get(&format!(
            r#"rabbitmq_connection_channels{{channel="<warren@localhost.{id}.0.0>"}}"#
        )),
        1.0
    );
    // A queue name with a quote and a backslash is escaped in its label.
    ch.queue_declare(
        "po-\"q\"\\x".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let s = scrape(&api, "/metrics/per-object").await;
    assert_eq!(
        s.get(r#"rabbitmq_queue_messages_ready{vhost="/",queue="po-\"q\"\\x"}"#),
        0.0
    );
    assert_eq!(s.get("rabbitmq_queues"), 3.0);
    // The overview gauges stay unlabelled.
    b.stop().await;
}

#[tokio::test]
async fn detailed_serves_the_families_and_vhosts_asked_for() {
    let b = TestBroker::start().await;
    let api = metrics_client(&b);
    let (_c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    ch.queue_declare(
        "d1".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    publish(&ch, "d1", 2).await;

    let s = scrape(&api, "/metrics/detailed?family=queue_coarse_metrics").await;
    assert_eq!(
        s.get(r#"rabbitmq_detailed_queue_messages_ready{vhost="/",queue="d1"}"#),
        2.0
    );
    assert_eq!(
        s.types.get("rabbitmq_detailed_queue_messages"),
        Some(&"gauge".to_string())
    );
    // Only that group (and the identity families).
    assert!(
        !s.text.contains("rabbitmq_detailed_queue_consumers"),
        "{}",
        s.text
    );
    assert!(!s
        .text
        .contains("rabbitmq_detailed_connections_opened_total"));
    assert!(!s.text.contains("rabbitmq_global_"));
    assert!(s.text.contains("rabbitmq_build_info{"));

    let s = scrape(
        &api,
        "/metrics/detailed?family=connection_churn_metrics&family=queue_metrics&family=vhost_status&family=exchange_bindings",
    )
    .await;
    assert!(s.get("rabbitmq_detailed_connections_opened_total") >= 1.0);
    assert_eq!(
        s.get(r#"rabbitmq_detailed_queue_consumers{vhost="/",queue="d1"}"#),
        0.0
    );
    assert_eq!(s.get(r#"rabbitmq_cluster_vhost_status{vhost="/"}"#), 1.0);
    assert_eq!(
        s.get(
            r#"rabbitmq_cluster_exchange_bindings{vhost="/",exchange="amq.direct",type="direct"}"#
        ),
        0.0
    );

    // A vhost filter that matches nothing: the families are declared, with no samples.
    let s = scrape(
        &api,
        "/metrics/detailed?family=queue_coarse_metrics&vhost=no-such-vhost",
    )
    .await;
    assert!(s
        .types
        .contains_key("rabbitmq_detailed_queue_messages_ready"));
    assert!(!s.text.contains(r#"queue="d1""#), "{}", s.text);
    let s = scrape(
        &api,
        "/metrics/detailed?family=queue_coarse_metrics&vhost=%2F",
    )
    .await;
    assert!(s.text.contains(r#"queue="d1""#), "{}", s.text);

    let s = scrape(&api, "/metrics/detailed?family=channel_metrics&vhost=other").await;
    assert!(s.types.contains_key("rabbitmq_detailed_channel_consumers"));
    assert!(!s.text.contains("channel=\""), "{}", s.text);
    let s = scrape(&api, "/metrics/detailed?family=channel_metrics&vhost=%2F").await;
    assert!(
        s.text
            .contains("rabbitmq_detailed_channel_consumers{channel=\""),
        "{}",
        s.text
    );

    // No family, or an unknown one: only the identity families, as RabbitMQ answers.
    let s = scrape(&api, "/metrics/detailed?family=no_such_family").await;
    assert!(!s.text.contains("rabbitmq_detailed_"), "{}", s.text);
    assert!(s.text.contains("rabbitmq_identity_info{"));
    b.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_openmetrics_is_negotiated() {
    let b = TestBroker::start().await;
    let api = metrics_client(&b);
    for path in ["/nope", "/metrics/nope", "/api/overview"] {
        let r = api.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json["error"], "Object Not Found", "{path}: {}", r.text);
        assert_eq!(r.json["reason"], "Not Found");
    }
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{}/metrics", b.metrics))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("scrape");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = resp.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE rabbitmq_connections_opened counter\n"),
        "{text}"
    );
    b.stop().await;
}
