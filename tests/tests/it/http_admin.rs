//! The admin half of the management API over real HTTP (reqwest) with lapin clients on the
//! AMQP port: vhosts, users, permissions, limits, connections, channels, consumers, policies,
//! parameters, the tag rules, bad input and unknown names.

use futures_lite::{Stream, StreamExt};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, Event};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::timeout;
use warren_tests::{eventually, TestBroker};

use crate::errors::{amqp, assert_amqp};

const WAIT: Duration = Duration::from_secs(10);

/// RabbitMQ's own hash of `adminpass` (from its 3.10.8 definitions export in the fixture).
const ADMINPASS_HASH: &str = "jEh9K6BNTx+7N565LIONcpStaF928+r3D/Ko/qKxHSi42EtH";

/// Percent-encodes a path segment (names like `127.0.0.1:5000 -> 127.0.0.1:5672`).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn try_connect(
    b: &TestBroker,
    user: &str,
    pass: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    let uri = format!("amqp://{user}:{pass}@{}/{}", b.addr, enc(vhost));
    timeout(
        WAIT,
        Connection::connect(&uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("connect in time")
}

async fn next_error(events: &mut (impl Stream<Item = Event> + Unpin)) -> lapin::Error {
    timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(Event::Error(e)) => return e,
                Some(_) => continue,
                None => panic!("events stream ended"),
            }
        }
    })
    .await
    .expect("an error event in time")
}

/// Creates `user` with `tags` and full permissions in each of `vhosts`, as guest over HTTP.
async fn make_user(b: &TestBroker, user: &str, pass: &str, tags: &str, vhosts: &[&str]) {
    let api = b.api();
    let r = api
        .put(
            &format!("/api/users/{user}"),
            &json!({"password": pass, "tags": tags}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for v in vhosts {
        let r = api
            .put(
                &format!("/api/permissions/{}/{user}", enc(v)),
                &json!({"configure": ".*", "write": ".*", "read": ".*"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

/// The one connection the API lists (waits for it to be registered).
async fn only_connection(b: &TestBroker) -> Value {
    let api = b.api();
    for _ in 0..100 {
        let r = api.get("/api/connections").await;
        assert_eq!(r.status, 200, "{}", r.text);
        if let Some(c) = r.json.as_array().and_then(|a| a.first()) {
            return c.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no connection listed");
}

#[tokio::test]
async fn http_created_vhost_user_and_permissions_govern_amqp_logins() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api.put("/api/vhosts/v1", &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.put("/api/vhosts/v1", &json!({})).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = api
        .put(
            "/api/users/app",
            &json!({"password": "s3cret", "tags": "management"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .put(
            "/api/permissions/v1/app",
            &json!({"configure": "^app\\.", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let u = api.get("/api/users/app").await;
    assert_eq!(u.status, 200);
    assert_eq!(u.json["tags"], json!(["management"]));
    assert_eq!(
        u.json["hashing_algorithm"],
        json!("rabbit_password_hashing_sha256")
    );
    assert!(u.json["password_hash"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    let p = api.get("/api/permissions/v1/app").await;
    assert_eq!(
        p.json,
        json!({"user": "app", "vhost": "v1", "configure": "^app\\.", "write": ".*", "read": ".*"})
    );
    let vp = api.get("/api/vhosts/v1/permissions").await;
    assert_eq!(vp.json.as_array().map(Vec::len), Some(1));
    let up = api.get("/api/users/app/permissions").await;
    assert_eq!(up.json[0]["vhost"], json!("v1"));
    let names: Vec<Value> = api
        .get("/api/vhosts")
        .await
        .json
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("/"), json!("v1")]);

    // The permissions govern what lapin may do.
    let c = try_connect(&b, "app", "s3cret", "v1")
        .await
        .expect("app logs in");
    let ch = c.create_channel().await.expect("channel");
    ch.queue_declare(
        "app.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("app.q is allowed");
    let e = ch
        .queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to queue 'other' in vhost 'v1' refused for user 'app'",
    );
    let e = try_connect(&b, "app", "s3cret", "/")
        .await
        .expect_err("no permissions in /");
    assert!(amqp(&e).0 == 530 || amqp(&e).0 == 403, "{e}");
    let e = try_connect(&b, "app", "wrong", "v1")
        .await
        .expect_err("bad password");
    assert_eq!(amqp(&e).0, 403);

    // Deleting the vhost closes the connection in it with 320.
    let mut events = Box::pin(c.events_listener());
    let r = api.delete("/api/vhosts/v1").await;
    assert_eq!(r.status, 204, "{}", r.text);
    let e = next_error(&mut events).await;
    assert_amqp(&e, 320, "CONNECTION_FORCED - vhost 'v1' is deleted");
    assert_eq!(api.get("/api/vhosts/v1").await.status, 404);
    assert_eq!(api.get("/api/permissions/v1/app").await.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn http_delete_connection_closes_it_with_320_and_the_x_reason() {
    let b = TestBroker::start().await;
    let c = b.connect().await;
    let conn = only_connection(&b).await;
    let name = conn["name"].as_str().expect("name").to_string();
    assert!(name.contains(" -> "), "{name}");
    assert_eq!(conn["user"], json!("guest"));
    assert_eq!(conn["vhost"], json!("/"));
    assert_eq!(conn["protocol"], json!("AMQP 0-9-1"));
    assert_eq!(conn["auth_mechanism"], json!("PLAIN"));
    assert_eq!(conn["ssl"], json!(false));
    assert_eq!(conn["port"], json!(b.addr.port()));
    assert!(conn["peer_port"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(conn["client_properties"]["product"], json!("lapin"));
    let path = format!("/api/connections/{}", enc(&name));
    let one = b.api().get(&path).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["name"], json!(name));
    let vc = b.api().get("/api/vhosts/%2F/connections").await;
    assert_eq!(vc.json.as_array().map(Vec::len), Some(1));

    let mut events = Box::pin(c.events_listener());
    let r = reqwest::Client::new()
        .delete(b.api().url(&path))
        .basic_auth("guest", Some("guest"))
        .header("X-Reason", "maintenance window")
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status().as_u16(), 204);
    let e = next_error(&mut events).await;
    assert_amqp(&e, 320, "CONNECTION_FORCED - maintenance window");
    assert!(
        eventually(WAIT, || b.broker.connections().is_empty()).await,
        "connection gone"
    );
    assert_eq!(b.api().get(&path).await.status, 404);
    assert_eq!(b.api().delete(&path).await.status, 404);

    // Without X-Reason, RabbitMQ's default text.
    let c = b.connect().await;
    let name = only_connection(&b).await["name"]
        .as_str()
        .expect("name")
        .to_string();
    let mut events = Box::pin(c.events_listener());
    let r = b
        .api()
        .delete(&format!("/api/connections/{}", enc(&name)))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let e = next_error(&mut events).await;
    assert_amqp(&e, 320, "CONNECTION_FORCED - Closed via management plugin");
    b.stop().await;
}

#[tokio::test]
async fn http_channels_and_consumers_show_a_lapin_consumer() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.basic_qos(7, BasicQosOptions::default())
        .await
        .expect("qos");
    ch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let _consumer = ch
        .basic_consume(
            "work".into(),
            "ctag-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let conn = only_connection(&b).await;
    let cname = conn["name"].as_str().expect("name").to_string();
    let api = b.api();
    let chans = api.get("/api/channels").await;
    assert_eq!(chans.status, 200, "{}", chans.text);
    let c0 = &chans.json[0];
    assert_eq!(c0["name"], json!(format!("{cname} (1)")));
    assert_eq!(c0["number"], json!(1));
    assert_eq!(c0["connection_details"]["name"], json!(cname));
    assert_eq!(c0["consumer_count"], json!(1));
    assert_eq!(c0["prefetch_count"], json!(7));
    assert_eq!(c0["confirm"], json!(false));
    assert_eq!(c0["transactional"], json!(false));
    assert!(c0["message_stats"].is_object());
    let one = api
        .get(&format!("/api/channels/{}", enc(&format!("{cname} (1)"))))
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    let of_conn = api
        .get(&format!("/api/connections/{}/channels", enc(&cname)))
        .await;
    assert_eq!(of_conn.json.as_array().map(Vec::len), Some(1));
    let of_vhost = api.get("/api/vhosts/%2F/channels").await;
    assert_eq!(of_vhost.json.as_array().map(Vec::len), Some(1));
    for path in ["/api/consumers", "/api/consumers/%2F"] {
        let r = api.get(path).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let list = r.json.as_array().expect("list");
        assert_eq!(list.len(), 1, "{}", r.text);
        let k = &list[0];
        assert_eq!(k["consumer_tag"], json!("ctag-1"));
        assert_eq!(k["queue"], json!({"name": "work", "vhost": "/"}));
        assert_eq!(k["channel_details"]["connection_name"], json!(cname));
        assert_eq!(k["channel_details"]["number"], json!(1));
        assert_eq!(k["ack_required"], json!(true));
        assert_eq!(k["exclusive"], json!(false));
        assert_eq!(k["prefetch_count"], json!(7));
        assert_eq!(k["active"], json!(true));
    }
    assert_eq!(api.get("/api/consumers/nope").await.status, 404);
    assert_eq!(api.get("/api/channels/nope").await.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn http_vhost_limit_refuses_the_next_connection() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .put(
            "/api/vhost-limits/%2F/max-connections",
            &json!({"value": 1}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let l = api.get("/api/vhost-limits").await;
    assert_eq!(
        l.json,
        json!([{"vhost": "/", "value": {"max-connections": 1}}])
    );
    let l = api.get("/api/vhost-limits/%2F").await;
    assert_eq!(l.json.as_array().map(Vec::len), Some(1));
    let _c = try_connect(&b, "guest", "guest", "/").await.expect("first");
    let e = try_connect(&b, "guest", "guest", "/")
        .await
        .expect_err("over the limit");
    assert_amqp(
        &e,
        530,
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is reached",
    );
    let r = api.delete("/api/vhost-limits/%2F/max-connections").await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(api.get("/api/vhost-limits").await.json, json!([]));
    let _c2 = try_connect(&b, "guest", "guest", "/")
        .await
        .expect("limit cleared");
    let r = api
        .put("/api/vhost-limits/%2F/max-bananas", &json!({"value": 1}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/vhost-limits/nope/max-connections",
            &json!({"value": 1}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    b.stop().await;
}

#[tokio::test]
async fn http_user_with_a_rabbitmq_password_hash_logs_in_and_user_limits_apply() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .put(
            "/api/users/ops",
            &json!({
                "password_hash": ADMINPASS_HASH,
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator", "monitoring"],
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let u = api.get("/api/users/ops").await;
    assert_eq!(u.json["password_hash"], json!(ADMINPASS_HASH));
    assert_eq!(u.json["tags"], json!(["administrator", "monitoring"]));
    let r = api
        .put(
            "/api/permissions/%2F/ops",
            &json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let who = b.api_as("ops", Some("adminpass")).get("/api/whoami").await;
    assert_eq!(who.status, 200, "{}", who.text);
    assert_eq!(who.json["name"], json!("ops"));
    let without = api.get("/api/users/without-permissions").await;
    assert!(!without.text.contains("\"ops\""), "{}", without.text);

    let r = api
        .put("/api/user-limits/ops/max-connections", &json!({"value": 1}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let l = api.get("/api/user-limits").await;
    assert_eq!(
        l.json,
        json!([{"user": "ops", "value": {"max-connections": 1}}])
    );
    let c = try_connect(&b, "ops", "adminpass", "/")
        .await
        .expect("ops logs in");
    let e = try_connect(&b, "ops", "adminpass", "/")
        .await
        .expect_err("user limit");
    assert_eq!(amqp(&e).0, 530, "{e}");
    let r = api.delete("/api/user-limits/ops/max-connections").await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(api.get("/api/user-limits/ops").await.json, json!([]));

    // Bulk delete removes the user and closes its connection.
    let mut events = Box::pin(c.events_listener());
    let r = api
        .post(
            "/api/users/bulk-delete",
            &json!({"users": ["ops", "nobody"]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let e = next_error(&mut events).await;
    assert_eq!(amqp(&e).0, 320);
    assert_eq!(api.get("/api/users/ops").await.status, 404);
    let e = try_connect(&b, "ops", "adminpass", "/")
        .await
        .expect_err("gone");
    assert_eq!(amqp(&e).0, 403);
    b.stop().await;
}

#[tokio::test]
async fn http_topic_permissions_refuse_a_publish_and_can_be_deleted() {
    let b = TestBroker::start().await;
    make_user(&b, "pub", "pubpass", "", &["/"]).await;
    let api = b.api();
    let r = api
        .put(
            "/api/topic-permissions/%2F/pub",
            &json!({"exchange": "amq.topic", "write": "^ok\\.", "read": ".*"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.get("/api/topic-permissions/%2F/pub").await;
    assert_eq!(
        r.json,
        json!([{"user": "pub", "vhost": "/", "exchange": "amq.topic", "write": "^ok\\.", "read": ".*"}])
    );
    assert_eq!(
        api.get("/api/topic-permissions")
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        api.get("/api/users/pub/topic-permissions")
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        api.get("/api/vhosts/%2F/topic-permissions")
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    let c = try_connect(&b, "pub", "pubpass", "/").await.expect("login");
    let ch = c.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let e = ch
        .basic_publish(
            "amq.topic".into(),
            "no.way".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("sent")
        .await
        .expect_err("refused");
    assert_eq!(amqp(&e).0, 403, "{e}");

    let r = api.delete("/api/topic-permissions/%2F/pub").await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(api.get("/api/topic-permissions/%2F/pub").await.status, 404);
    assert_eq!(
        api.delete("/api/topic-permissions/%2F/pub").await.status,
        404
    );
    let ch = c.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.basic_publish(
        "amq.topic".into(),
        "no.way".into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .expect("sent")
    .await
    .expect("allowed once the topic permissions are gone");
    b.stop().await;
}

#[tokio::test]
async fn http_tag_rules_decide_who_sees_and_changes_what() {
    let b = TestBroker::start().await;
    let api = b.api();
    assert_eq!(api.put("/api/vhosts/v1", &json!({})).await.status, 201);
    make_user(&b, "mgmt", "p", "management", &["v1"]).await;
    make_user(&b, "mon", "p", "monitoring", &[]).await;
    make_user(&b, "pm", "p", "policymaker", &["v1"]).await;
    make_user(&b, "plain", "p", "", &["v1"]).await;
    let _guest_conn = b.connect().await;
    let _mgmt_conn = try_connect(&b, "mgmt", "p", "v1")
        .await
        .expect("mgmt logs in");
    assert!(eventually(WAIT, || b.broker.connections().len() == 2).await);
    let mgmt = b.api_as("mgmt", Some("p"));
    let mon = b.api_as("mon", Some("p"));
    let pm = b.api_as("pm", Some("p"));
    let plain = b.api_as("plain", Some("p"));

    // No management tag: 401.
    let r = plain.get("/api/vhosts").await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json["error"], json!("not_authorised"));

    // management: its own vhosts and connections only; no user or vhost changes.
    let r = mgmt.get("/api/vhosts").await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(1), "{}", r.text);
    assert_eq!(r.json[0]["name"], json!("v1"));
    assert_eq!(mgmt.get("/api/vhosts/%2F").await.status, 401);
    let r = mgmt.get("/api/connections").await;
    let conns = r.json.as_array().expect("list");
    assert_eq!(conns.len(), 1, "{}", r.text);
    assert_eq!(conns[0]["user"], json!("mgmt"));
    let r = mgmt.get("/api/users").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["reason"], json!("Not administrator user"));
    assert_eq!(mgmt.put("/api/vhosts/x", &json!({})).await.status, 401);
    assert_eq!(
        mgmt.put(
            "/api/policies/v1/p",
            &json!({"pattern": ".*", "definition": {}})
        )
        .await
        .status,
        401
    );

    // monitoring: reads everything, changes nothing.
    assert_eq!(
        mon.get("/api/connections")
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        mon.get("/api/vhosts").await.json.as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(mon.get("/api/users").await.status, 401);
    assert_eq!(mon.delete("/api/vhosts/v1").await.status, 401);

    // policymaker: policies and parameters in its vhosts.
    let policy = json!({"pattern": "^lim\\.", "definition": {"max-length": 5}, "apply-to": "queues", "priority": 3});
    let r = pm.put("/api/policies/v1/cap", &policy).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(pm.put("/api/policies/v1/cap", &policy).await.status, 204);
    assert_eq!(pm.put("/api/policies/%2F/cap", &policy).await.status, 401);
    let r = pm.get("/api/policies/v1/cap").await;
    assert_eq!(
        r.json,
        json!({"vhost": "v1", "name": "cap", "pattern": "^lim\\.", "apply-to": "queues",
               "definition": {"max-length": 5}, "priority": 3})
    );
    assert_eq!(
        api.get("/api/policies").await.json.as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        pm.get("/api/policies/v1")
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let op = json!({"pattern": ".*", "definition": {"max-length": 100}, "apply-to": "queues"});
    assert_eq!(
        api.put("/api/operator-policies/v1/op", &op).await.status,
        201
    );
    assert_eq!(
        api.get("/api/operator-policies").await.json[0]["name"],
        json!("op")
    );
    let up = json!({"value": {"uri": "amqp://remote"}});
    let r = pm
        .put("/api/parameters/federation-upstream/v1/up", &up)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = pm.get("/api/parameters/federation-upstream/v1").await;
    assert_eq!(
        r.json,
        json!([{"vhost": "v1", "component": "federation-upstream", "name": "up",
                "value": {"uri": "amqp://remote"}}])
    );
    assert_eq!(
        pm.delete("/api/parameters/federation-upstream/v1/up")
            .await
            .status,
        204
    );
    assert_eq!(
        pm.get("/api/parameters/federation-upstream/v1/up")
            .await
            .status,
        404
    );
    assert_eq!(pm.delete("/api/policies/v1/cap").await.status, 204);
    assert_eq!(pm.get("/api/policies/v1/cap").await.status, 404);
    assert_eq!(
        pm.put("/api/global-parameters/g", &json!({"value": 1}))
            .await
            .status,
        401
    );

    // administrator: global parameters.
    let r = api
        .put(
            "/api/global-parameters/cluster_tags",
            &json!({"value": {"az": "a"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        api.get("/api/global-parameters/cluster_tags").await.json,
        json!({"name": "cluster_tags", "value": {"az": "a"}})
    );
    assert_eq!(
        api.delete("/api/global-parameters/cluster_tags")
            .await
            .status,
        204
    );
    b.stop().await;
}

#[tokio::test]
async fn http_admin_bad_input_and_unknown_names_get_rabbitmq_errors() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .send_raw(
            reqwest::Method::PUT,
            "/api/vhosts/x",
            "application/json",
            "{not json",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"], json!("bad_request"));
    let r = api
        .send_raw(
            reqwest::Method::PUT,
            "/api/users/u",
            "application/json",
            "[1]",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/users/u",
            &json!({"password": "a", "password_hash": "b"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api.put("/api/users/u", &json!({"password": 5})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/users/u",
            &json!({"password_hash": "x", "hashing_algorithm": "rot13"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/permissions/%2F/guest",
            &json!({"configure": ".*", "write": ".*"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/permissions/%2F/guest",
            &json!({"configure": "(", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let perm = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        api.put("/api/permissions/%2F/nobody", &perm).await.status,
        404
    );
    assert_eq!(
        api.put("/api/permissions/nope/guest", &perm).await.status,
        404
    );
    let r = api
        .put("/api/policies/%2F/p", &json!({"definition": {}}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/policies/%2F/p",
            &json!({"pattern": "(", "definition": {}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/policies/%2F/p",
            &json!({"pattern": ".*", "definition": 3}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .put(
            "/api/policies/%2F/p",
            &json!({"pattern": ".*", "definition": {}, "apply-to": "sofas"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api.put("/api/parameters/c/%2F/n", &json!({})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .post("/api/users/bulk-delete", &json!({"users": "guest"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api.get("/api/users/nobody").await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error"], json!("Object Not Found"));
    for path in [
        "/api/vhosts/nope",
        "/api/connections/nope",
        "/api/permissions/%2F/nobody",
        "/api/policies/%2F/nope",
        "/api/global-parameters/nope",
        "/api/vhosts/nope/connections",
    ] {
        assert_eq!(api.get(path).await.status, 404, "{path}");
    }
    for path in [
        "/api/vhosts/nope",
        "/api/users/nobody",
        "/api/permissions/%2F/nobody",
        "/api/policies/%2F/nope",
    ] {
        assert_eq!(api.delete(path).await.status, 404, "{path}");
    }
    assert_eq!(api.post("/api/vhosts/x", &json!({})).await.status, 405);
    // The broker still serves.
    assert_eq!(api.get("/api/vhosts").await.status, 200);
    assert_eq!(api.get("/api/users/guest").await.status, 200);
    b.stop().await;
}
