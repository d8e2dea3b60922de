//! The event exchange (`amq.rabbitmq.event`) with lapin over TCP: the events of queue,
//! exchange, binding and consumer operations with the headers RabbitMQ 3.10.8's
//! `rabbitmq_event_exchange` sends (captured from a local 3.10.8 with the plugin enabled).

use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::Duration;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

async fn events(ch: &Channel, q: &str) -> Vec<(String, FieldTable)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        assert!(m.delivery.data.is_empty());
        assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
        assert!(m.delivery.properties.timestamp().is_some());
        let h = m.delivery.properties.headers().clone().unwrap_or_default();
        out.push((m.delivery.routing_key.to_string(), h));
    }
    out
}

fn get<'a>(h: &'a FieldTable, k: &str) -> &'a AMQPValue {
    h.inner()
        .get(k)
        .unwrap_or_else(|| panic!("header {k} in {h:?}"))
}

#[tokio::test]
async fn topology_and_consumer_operations_publish_the_plugin_events() {
    let b = TestBroker::start().await;
    let (_c, ev) = b.channel().await;
    ev.queue_declare(
        "events".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ev.queue_bind(
        "events".into(),
        "amq.rabbitmq.event".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind to the event exchange");

    let (_c2, ch) = b.channel().await;
    let mut qargs = FieldTable::default();
    qargs.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    ch.queue_declare("evq".into(), QueueDeclareOptions::default(), qargs)
        .await
        .expect("queue");
    ch.exchange_declare(
        "evx".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    ch.queue_bind(
        "evq".into(),
        "evx".into(),
        "a.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    ch.basic_consume(
        "evq".into(),
        "ctag1".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("consume");
    ch.basic_cancel("ctag1".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    ch.queue_unbind(
        "evq".into(),
        "evx".into(),
        "a.#".into(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    ch.exchange_delete("evx".into(), ExchangeDeleteOptions::default())
        .await
        .expect("exchange.delete");
    ch.queue_delete("evq".into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");

    let vh = b.broker.vhost("/").expect("vhost");
    assert!(
        eventually(WAIT, || vh
            .queue("events")
            .is_some_and(|q| q.message_count() >= 11))
        .await
    );
    // The second connection's own connection/channel events are checked in
    // `connection_channel_and_admin_operations_publish_the_plugin_events`.
    let got: Vec<_> = events(&ev, "events")
        .await
        .into_iter()
        .filter(|(n, _)| {
            !n.starts_with("connection.")
                && !n.starts_with("channel.")
                && !n.starts_with("user.authentication.")
        })
        .collect();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "binding.created",
            "queue.created",
            "exchange.created",
            "binding.created",
            "consumer.created",
            "consumer.deleted",
            "binding.deleted",
            "exchange.deleted",
            "queue.deleted",
        ]
    );
    for (_, h) in &got {
        assert_eq!(get(h, "user_who_performed_action"), &s("guest"));
        assert_eq!(get(h, "vhost"), &s("/"));
        assert!(matches!(
            get(h, "timestamp_in_ms"),
            AMQPValue::LongLongInt(_)
        ));
    }
    // The first: the event queue's own binding.
    let own = &got[0].1;
    assert_eq!(get(own, "source_name"), &s("amq.rabbitmq.event"));
    assert_eq!(get(own, "source_kind"), &s("exchange"));
    assert_eq!(get(own, "destination_name"), &s("events"));
    assert_eq!(get(own, "destination_kind"), &s("queue"));
    assert_eq!(get(own, "routing_key"), &s("#"));
    let q = &got[1].1;
    assert_eq!(get(q, "name"), &s("evq"));
    assert_eq!(get(q, "durable"), &AMQPValue::Boolean(false));
    assert_eq!(get(q, "auto_delete"), &AMQPValue::Boolean(false));
    assert_eq!(get(q, "exclusive"), &AMQPValue::Boolean(false));
    let mut args = FieldArray::default();
    args.push(s("{<<\"x-message-ttl\">>,signedint,1000}"));
    assert_eq!(get(q, "arguments"), &AMQPValue::FieldArray(args));
    let x = &got[2].1;
    assert_eq!(get(x, "name"), &s("evx"));
    assert_eq!(get(x, "type"), &s("topic"));
    assert_eq!(get(x, "internal"), &AMQPValue::Boolean(false));
    let c = &got[4].1;
    assert_eq!(get(c, "queue"), &s("evq"));
    assert_eq!(get(c, "consumer_tag"), &s("ctag1"));
    assert_eq!(get(c, "ack_required"), &AMQPValue::Boolean(true));
    assert_eq!(get(c, "exclusive"), &AMQPValue::Boolean(false));
    assert_eq!(get(&got[8].1, "name"), &s("evq"));

    // Clients may not publish to it: it is internal.
    let e = ev
        .basic_publish(
            "amq.rabbitmq.event".into(),
            "queue.created".into(),
            BasicPublishOptions::default(),
            b"fake",
            BasicProperties::default(),
        )
        .await
        .expect("publish is asynchronous");
    drop(e);
    assert!(eventually(WAIT, || !ev.status().connected()).await);
    b.stop().await;
}

#[tokio::test]
async fn nothing_bound_nothing_built() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let vh = b.broker.vhost("/").expect("vhost");
    assert!(!vh.wants_events());
    assert!(vh
        .exchange_names()
        .iter()
        .any(|n| n == "amq.rabbitmq.event"));
    b.stop().await;
}

/// Waits until `q` holds `n` events and returns them.
async fn wait_events(b: &TestBroker, ch: &Channel, q: &str, n: usize) -> Vec<(String, FieldTable)> {
    let vh = b.broker.vhost("/").expect("vhost");
    assert!(
        eventually(WAIT, || vh
            .queue(q)
            .is_some_and(|x| x.message_count() as usize >= n))
        .await,
        "{n} events in {q}"
    );
    events(ch, q).await
}

fn find<'a>(got: &'a [(String, FieldTable)], name: &str) -> &'a FieldTable {
    &got.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("event {name} in {got:?}"))
        .1
}

#[tokio::test]
async fn connection_channel_and_admin_operations_publish_the_plugin_events() {
    let b = TestBroker::start().await;
    let (_c, ev) = b.channel().await;
    ev.queue_declare(
        "events".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ev.queue_bind(
        "events".into(),
        "amq.rabbitmq.event".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let _ = wait_events(&b, &ev, "events", 1).await; // its own binding.created

    // Connection and channel lifecycle.
    let c2 = lapin::Connection::connect(
        &b.uri(),
        lapin::ConnectionProperties::default().with_connection_name("evconn".into()),
    )
    .await
    .expect("connect");
    let ch2 = c2.create_channel().await.expect("channel");
    ch2.close(200, "bye".into()).await.expect("channel close");
    c2.close(200, "bye".into()).await.expect("connection close");
    let got = wait_events(&b, &ev, "events", 5).await;
    // The login comes first (its headers: `logins_publish_authentication_success_and_failure`).
    assert_eq!(got[0].0, "user.authentication.success");
    let got = got[1..].to_vec();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "connection.created",
            "channel.created",
            "channel.closed",
            "connection.closed"
        ]
    );
    let cc = &got[0].1;
    assert_eq!(get(cc, "user_who_performed_action"), &s("guest"));
    assert_eq!(get(cc, "user"), &s("guest"));
    assert_eq!(get(cc, "vhost"), &s("/"));
    assert_eq!(get(cc, "user_provided_name"), &s("evconn"));
    assert_eq!(get(cc, "protocol"), &s("{0,9,1}"));
    assert_eq!(get(cc, "auth_mechanism"), &s("PLAIN"));
    assert_eq!(get(cc, "ssl"), &AMQPValue::Boolean(false));
    assert_eq!(get(cc, "type"), &s("network"));
    assert_eq!(get(cc, "peer_host"), &s("{127,0,0,1}"));
    assert_eq!(
        get(cc, "port"),
        &AMQPValue::LongLongInt(i64::from(b.addr.port()))
    );
    let AMQPValue::LongString(name) = get(cc, "name") else {
        panic!("name")
    };
    let name = name.to_string();
    assert!(name.ends_with(&format!(" -> {}", b.addr)), "{name}");
    let AMQPValue::FieldArray(props) = get(cc, "client_properties") else {
        panic!("client_properties")
    };
    assert!(props
        .as_slice()
        .contains(&s("{<<\"connection_name\">>,longstr,<<\"evconn\">>}")));
    let conn_pid = get(cc, "pid").clone();
    let chc = &got[1].1;
    assert_eq!(get(chc, "number"), &AMQPValue::LongLongInt(1));
    assert_eq!(get(chc, "connection"), &conn_pid);
    assert_eq!(get(chc, "name"), &s(&format!("{name} (1)")));
    assert_eq!(get(chc, "user"), &s("guest"));
    let ch_pid = get(chc, "pid").clone();
    assert_eq!(get(&got[2].1, "pid"), &ch_pid);
    assert_eq!(get(&got[2].1, "user_who_performed_action"), &s("guest"));
    let closed = &got[3].1;
    assert_eq!(get(closed, "pid"), &conn_pid);
    assert_eq!(get(closed, "name"), &s(&name));
    assert_eq!(get(closed, "user_provided_name"), &s("evconn"));
    assert!(closed.inner().get("vhost").is_none());

    // Users, vhosts, permissions, policies through the management API (as guest).
    let api = b.api();
    let pw = |p: &str| serde_json::json!({ "password": p, "tags": "" });
    assert_eq!(api.put("/api/users/evu", &pw("pw1")).await.status, 201);
    assert_eq!(
        api.put(
            "/api/users/evu",
            &serde_json::json!({ "password": "pw2", "tags": "monitoring,management" })
        )
        .await
        .status,
        204
    );
    assert_eq!(
        api.put("/api/vhosts/evv", &serde_json::json!({}))
            .await
            .status,
        201
    );
    let perms = serde_json::json!({ "configure": ".*", "write": "w.*", "read": "r.*" });
    assert_eq!(
        api.put("/api/permissions/evv/evu", &perms).await.status,
        201
    );
    assert_eq!(api.delete("/api/permissions/evv/evu").await.status, 204);
    let pol = serde_json::json!({
        "pattern": "^a", "definition": { "max-length": 5 }, "priority": 3, "apply-to": "queues"
    });
    assert_eq!(api.put("/api/policies/evv/evp", &pol).await.status, 201);
    assert_eq!(api.delete("/api/policies/evv/evp").await.status, 204);
    assert_eq!(api.delete("/api/vhosts/evv").await.status, 204);
    assert_eq!(api.delete("/api/users/evu").await.status, 204);
    // An error creates no event.
    assert_eq!(api.delete("/api/users/evu").await.status, 404);

    let got = wait_events(&b, &ev, "events", 10).await;
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "user.created",
            "user.password.changed",
            "user.tags.set",
            "vhost.created",
            "permission.created",
            "permission.deleted",
            "policy.set",
            "policy.cleared",
            "vhost.deleted",
            "user.deleted",
        ]
    );
    for (n, h) in &got {
        assert_eq!(get(h, "user_who_performed_action"), &s("guest"), "{n}");
        assert!(matches!(
            get(h, "timestamp_in_ms"),
            AMQPValue::LongLongInt(_)
        ));
    }
    for n in ["user.created", "user.password.changed", "user.deleted"] {
        let h = find(&got, n);
        assert_eq!(get(h, "name"), &s("evu"));
        assert!(h.inner().get("vhost").is_none(), "{n}");
    }
    let mut tags = FieldArray::default();
    tags.push(s("monitoring"));
    tags.push(s("management"));
    assert_eq!(
        get(find(&got, "user.tags.set"), "tags"),
        &AMQPValue::FieldArray(tags)
    );
    let vc = find(&got, "vhost.created");
    assert_eq!(get(vc, "name"), &s("evv"));
    assert_eq!(get(vc, "tracing"), &AMQPValue::Boolean(false));
    assert!(matches!(get(vc, "cluster_state"), AMQPValue::FieldTable(_)));
    let pc = find(&got, "permission.created");
    assert_eq!(get(pc, "user"), &s("evu"));
    assert_eq!(get(pc, "vhost"), &s("evv"));
    assert_eq!(get(pc, "configure"), &s(".*"));
    assert_eq!(get(pc, "write"), &s("w.*"));
    assert_eq!(get(pc, "read"), &s("r.*"));
    let pd = find(&got, "permission.deleted");
    assert_eq!(get(pd, "user"), &s("evu"));
    assert_eq!(get(pd, "vhost"), &s("evv"));
    let ps = find(&got, "policy.set");
    assert_eq!(get(ps, "name"), &s("evp"));
    assert_eq!(get(ps, "vhost"), &s("evv"));
    assert_eq!(get(ps, "pattern"), &s("^a"));
    assert_eq!(get(ps, "apply-to"), &s("queues"));
    assert_eq!(get(ps, "priority"), &AMQPValue::LongLongInt(3));
    let AMQPValue::FieldTable(def) = get(ps, "definition") else {
        panic!("definition")
    };
    assert_eq!(
        def.inner().get("max-length"),
        Some(&AMQPValue::LongLongInt(5))
    );
    assert_eq!(get(find(&got, "policy.cleared"), "name"), &s("evp"));
    assert_eq!(get(find(&got, "vhost.deleted"), "name"), &s("evv"));
    b.stop().await;
}

#[tokio::test]
async fn logins_publish_authentication_success_and_failure() {
    let b = TestBroker::start().await;
    let (_c, ev) = b.channel().await;
    ev.queue_declare(
        "auth".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ev.queue_bind(
        "auth".into(),
        "amq.rabbitmq.event".into(),
        "user.authentication.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");

    let bad = format!("amqp://guest:wrong@{}/%2f", b.addr);
    assert!(
        lapin::Connection::connect(&bad, lapin::ConnectionProperties::default())
            .await
            .is_err(),
        "a wrong password is refused"
    );
    let nobody = format!("amqp://nobody:pw@{}/%2f", b.addr);
    assert!(
        lapin::Connection::connect(&nobody, lapin::ConnectionProperties::default())
            .await
            .is_err(),
        "an unknown user is refused"
    );
    let good = b.connect().await;

    let got = wait_events(&b, &ev, "auth", 3).await;
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "user.authentication.failure",
            "user.authentication.failure",
            "user.authentication.success"
        ]
    );
    for (n, h) in &got {
        assert_eq!(get(h, "connection_type"), &s("network"), "{n}");
        assert_eq!(get(h, "auth_mechanism"), &s("PLAIN"), "{n}");
        assert_eq!(get(h, "protocol"), &s("{0,9,1}"), "{n}");
        assert_eq!(get(h, "ssl"), &AMQPValue::Boolean(false), "{n}");
        assert_eq!(get(h, "peer_host"), &s("{127,0,0,1}"), "{n}");
        assert_eq!(get(h, "host"), &s("{127,0,0,1}"), "{n}");
        assert!(matches!(get(h, "peer_port"), AMQPValue::LongLongInt(p) if *p > 0));
        let AMQPValue::LongString(cn) = get(h, "connection_name") else {
            panic!("connection_name")
        };
        assert!(cn.to_string().ends_with(&format!(" -> {}", b.addr)), "{cn}");
        assert!(matches!(
            get(h, "timestamp_in_ms"),
            AMQPValue::LongLongInt(_)
        ));
        // As rabbit_reader:notify_auth_result/4: no vhost, no acting user, no empty TLS keys.
        for k in [
            "vhost",
            "user_who_performed_action",
            "ssl_protocol",
            "peer_cert_subject",
        ] {
            assert!(h.inner().get(k).is_none(), "{n} has no {k}");
        }
    }
    assert_eq!(get(&got[0].1, "name"), &s("guest"));
    assert_eq!(
        get(&got[0].1, "error"),
        &s("user 'guest' - invalid credentials")
    );
    assert_eq!(get(&got[1].1, "name"), &s("nobody"));
    assert_eq!(
        get(&got[1].1, "error"),
        &s("user 'nobody' - invalid credentials")
    );
    assert_eq!(get(&got[2].1, "name"), &s("guest"));
    assert!(got[2].1.inner().get("error").is_none());
    good.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}
