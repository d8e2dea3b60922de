//! The management HTTP API's topology half over real HTTP (reqwest) with lapin on the AMQP
//! side: exchanges, queues, bindings, publish, get, purge, list query parameters, errors.

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use warren_core::metadata::{Command, PermissionDef, UserDef};
use warren_tests::TestBroker;

async fn add_user(b: &TestBroker, name: &str, tags: &[&str], configure: &str) {
    b.broker
        .admin(Command::PutUser(UserDef {
            name: name.into(),
            password_hash: warren_core::auth::password::hash("pw"),
            hashing_algorithm: warren_core::auth::password::SHA256.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            max_connections: None,
            max_channels: None,
        }))
        .await
        .expect("user");
    b.broker
        .admin(Command::SetPermissions(PermissionDef {
            user: name.into(),
            vhost: "/".into(),
            configure: configure.into(),
            write: ".*".into(),
            read: ".*".into(),
        }))
        .await
        .expect("permissions");
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn exchanges_declare_show_list_delete() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .put(
            "/api/exchanges/%2F/t.x",
            &json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .put(
            "/api/exchanges/%2F/t.x",
            &json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    // Inequivalent redeclaration: RabbitMQ's 400 and text.
    let r = api
        .put("/api/exchanges/%2F/t.x", &json!({"type": "direct"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"], json!("bad_request"));
    assert!(
        r.json["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("inequivalent arg 'type' for exchange 't.x' in vhost '/'"),
        "{}",
        r.text
    );
    let r = api
        .put("/api/exchanges/%2F/t.bad", &json!({"type": "bogus"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    let r = api.get("/api/exchanges/%2F/t.x").await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (k, v) in [
        ("name", json!("t.x")),
        ("vhost", json!("/")),
        ("type", json!("topic")),
        ("durable", json!(true)),
        ("auto_delete", json!(false)),
        ("internal", json!(false)),
        ("arguments", json!({"alternate-exchange": "ae"})),
    ] {
        assert_eq!(r.json[k], v, "{k}: {}", r.text);
    }
    // The default exchange: "" in lists, amq.default in paths.
    let r = api.get("/api/exchanges/%2F/amq.default").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["name"], json!(""));
    let all = api.get("/api/exchanges").await;
    let n = names(&all.json);
    assert!(
        n.contains(&"".to_string()) && n.contains(&"t.x".to_string()),
        "{n:?}"
    );
    let vh = api.get("/api/exchanges/%2F").await;
    assert_eq!(names(&vh.json), n);
    assert_eq!(api.get("/api/exchanges/nope").await.status, 404);
    assert_eq!(api.get("/api/exchanges/%2F/nope").await.status, 404);
    assert_eq!(
        api.delete("/api/exchanges/%2F/amq.default").await.status,
        401
    );

    // if-unused refuses while it has bindings as a source.
    api.put("/api/queues/%2F/t.q", &json!({})).await;
    let r = api
        .post(
            "/api/bindings/%2F/e/t.x/q/t.q",
            &json!({"routing_key": "k"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.delete("/api/exchanges/%2F/t.x?if-unused=true").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json["reason"],
        json!("exchange 't.x' in vhost '/' in use"),
        "{}",
        r.text
    );
    assert_eq!(api.delete("/api/exchanges/%2F/t.x").await.status, 204);
    assert_eq!(api.get("/api/exchanges/%2F/t.x").await.status, 404);
    assert_eq!(api.delete("/api/exchanges/%2F/t.x").await.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn queue_fields_count_what_amqp_published_and_consumed() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .put(
            "/api/queues/%2F/t.q",
            &json!({"durable": true, "arguments": {"x-max-length": 100}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .put(
            "/api/queues/%2F/t.q",
            &json!({"durable": true, "arguments": {"x-max-length": 100}}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let (_conn, ch) = b.channel().await;
    for i in 0..3 {
        ch.basic_publish(
            "".into(),
            "t.q".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    }
    let ok = warren_tests::eventually(std::time::Duration::from_secs(5), || {
        b.broker
            .vhost("/")
            .and_then(|v| v.queue("t.q"))
            .is_some_and(|q| q.message_count() == 3)
    })
    .await;
    assert!(ok);
    let r = api.get("/api/queues/%2F/t.q").await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (k, v) in [
        ("name", json!("t.q")),
        ("vhost", json!("/")),
        ("durable", json!(true)),
        ("auto_delete", json!(false)),
        ("exclusive", json!(false)),
        ("arguments", json!({"x-max-length": 100})),
        ("type", json!("classic")),
        ("state", json!("running")),
        ("messages", json!(3)),
        ("messages_ready", json!(3)),
        ("messages_unacknowledged", json!(0)),
        ("message_bytes", json!(6)),
        ("message_bytes_ready", json!(6)),
        ("consumers", json!(0)),
    ] {
        assert_eq!(r.json[k], v, "{k}: {}", r.text);
    }
    assert_eq!(r.json["message_stats"]["publish"], json!(3), "{}", r.text);
    assert_eq!(r.json["messages_details"]["rate"], json!(0.0));
    // A consumer that does not ack: unacknowledged, and it shows as a consumer.
    ch.basic_qos(1, Default::default()).await.expect("qos");
    let _consumer = ch
        .basic_consume(
            "t.q".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let ok = warren_tests::eventually(std::time::Duration::from_secs(5), || {
        b.broker
            .vhost("/")
            .and_then(|v| v.queue("t.q"))
            .is_some_and(|q| q.unacked_count() == 1)
    })
    .await;
    assert!(ok);
    let r = api.get("/api/queues/%2F/t.q").await;
    assert_eq!(r.json["messages"], json!(3), "{}", r.text);
    assert_eq!(r.json["messages_ready"], json!(2));
    assert_eq!(r.json["messages_unacknowledged"], json!(1));
    assert_eq!(r.json["consumers"], json!(1));
    assert_eq!(r.json["consumer_details"][0]["consumer_tag"], json!("c1"));
    // if-unused refuses while consumed.
    let r = api.delete("/api/queues/%2F/t.q?if-unused=true").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["reason"], json!("queue 't.q' in vhost '/' in use"));
    let r = api.delete("/api/queues/%2F/t.q?if-empty=true").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json["reason"],
        json!("queue 't.q' in vhost '/' not empty")
    );
    assert_eq!(api.delete("/api/queues/%2F/t.q").await.status, 204);
    assert_eq!(api.get("/api/queues/%2F/t.q").await.status, 404);
    assert_eq!(api.delete("/api/queues/%2F/t.q").await.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn queue_put_errors_and_lists() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .put(
            "/api/queues/%2F/t.bad",
            &json!({"arguments": {"x-max-length": "x"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"], json!("bad_request"));
    assert!(
        r.json["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("invalid arg 'x-max-length' for queue 't.bad' in vhost '/'"),
        "{}",
        r.text
    );
    let r = api
        .send_raw(
            reqwest::Method::PUT,
            "/api/queues/%2F/t.bad",
            "application/json",
            "{durable",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"error": "bad_request", "reason": "not_json"})
    );
    assert_eq!(api.put("/api/queues/nope/q", &json!({})).await.status, 404);
    api.put("/api/queues/%2F/t.a", &json!({"durable": true}))
        .await;
    let r = api
        .put("/api/queues/%2F/t.a", &json!({"durable": false}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json["reason"]
        .as_str()
        .unwrap_or("")
        .starts_with("inequivalent arg 'durable' for queue 't.a' in vhost '/'"));
    for n in ["t.b", "t.c", "other"] {
        assert_eq!(
            api.put(&format!("/api/queues/%2F/{n}"), &json!({}))
                .await
                .status,
            201
        );
    }
    let all = api.get("/api/queues").await;
    assert_eq!(names(&all.json), ["other", "t.a", "t.b", "t.c"]);
    assert_eq!(api.get("/api/queues/nope").await.status, 404);
    // Pagination, filters, sort, columns.
    let r = api.get("/api/queues/%2F?page=1&page_size=2&name=t.&sort=name&sort_reverse=true&columns=name,vhost").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["total_count"], json!(4));
    assert_eq!(r.json["filtered_count"], json!(3));
    assert_eq!(r.json["item_count"], json!(2));
    assert_eq!(r.json["page_count"], json!(2));
    assert_eq!(r.json["page"], json!(1));
    assert_eq!(r.json["page_size"], json!(2));
    assert_eq!(
        r.json["items"],
        json!([{"name": "t.c", "vhost": "/"}, {"name": "t.b", "vhost": "/"}])
    );
    let r = api
        .get("/api/queues?page=1&name=%5Et%5C.%5Bab%5D%24&use_regex=true")
        .await;
    assert_eq!(names(&r.json["items"]), ["t.a", "t.b"], "{}", r.text);
    for bad in [
        "page=9",
        "page=x",
        "page=1&page_size=501",
        "page=1&page_size=0",
    ] {
        let r = api.get(&format!("/api/queues?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    b.stop().await;
}

async fn publish_http(api: &warren_tests::api::Api, key: &str, payload: &str, enc: &str) -> Value {
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            &json!({"properties": {"content_type": "text/plain", "headers": {"h": 1}},
                    "routing_key": key, "payload": payload, "payload_encoding": enc}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test]
async fn publish_get_each_ackmode_and_purge() {
    let b = TestBroker::start().await;
    let api = b.api();
    api.put("/api/queues/%2F/t.g", &json!({})).await;
    assert_eq!(
        publish_http(&api, "t.g", "one", "string").await,
        json!({"routed": true})
    );
    assert_eq!(
        publish_http(&api, "t.g", "dHdv", "base64").await,
        json!({"routed": true})
    );
    assert_eq!(
        publish_http(&api, "nowhere", "x", "string").await,
        json!({"routed": false})
    );
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            &json!({"properties": {}, "routing_key": "t.g", "payload": "x"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["reason"], json!("[{key_missing,payload_encoding}]"));
    let x = api.get("/api/exchanges/%2F/amq.default").await;
    assert_eq!(
        x.json["message_stats"]["publish_in"],
        json!(3),
        "{}",
        x.text
    );
    assert_eq!(
        x.json["message_stats"]["publish_out"],
        json!(2),
        "{}",
        x.text
    );

    let get = |mode: &str, count: u64| json!({"count": count, "ackmode": mode, "encoding": "auto", "truncate": 50000});
    // Requeue: both seen, both still there, redelivered next time.
    let r = api
        .post("/api/queues/%2F/t.g/get", &get("ack_requeue_true", 5))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let msgs = r.json.as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 2, "{}", r.text);
    assert_eq!(msgs[0]["payload"], json!("one"));
    assert_eq!(msgs[0]["payload_encoding"], json!("string"));
    assert_eq!(msgs[0]["payload_bytes"], json!(3));
    assert_eq!(msgs[0]["redelivered"], json!(false));
    assert_eq!(msgs[0]["exchange"], json!(""));
    assert_eq!(msgs[0]["routing_key"], json!("t.g"));
    assert_eq!(msgs[0]["message_count"], json!(1));
    assert_eq!(msgs[0]["properties"]["content_type"], json!("text/plain"));
    assert_eq!(msgs[0]["properties"]["headers"], json!({"h": 1}));
    assert_eq!(msgs[1]["payload"], json!("two"));
    assert_eq!(
        api.get("/api/queues/%2F/t.g").await.json["messages"],
        json!(2)
    );
    let r = api
        .post("/api/queues/%2F/t.g/get", &get("reject_requeue_true", 1))
        .await;
    assert_eq!(r.json[0]["redelivered"], json!(true), "{}", r.text);
    assert_eq!(
        api.get("/api/queues/%2F/t.g").await.json["messages"],
        json!(2)
    );
    // base64 encoding and truncate.
    let r = api
        .post(
            "/api/queues/%2F/t.g/get",
            &json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "base64", "truncate": 2}),
        )
        .await;
    assert_eq!(r.json[0]["payload"], json!("b24="), "{}", r.text);
    assert_eq!(r.json[0]["payload_encoding"], json!("base64"));
    assert_eq!(r.json[0]["payload_bytes"], json!(3));
    // Ack without requeue removes one; reject without requeue the other.
    let r = api
        .post("/api/queues/%2F/t.g/get", &get("ack_requeue_false", 1))
        .await;
    assert_eq!(r.json[0]["payload"], json!("one"), "{}", r.text);
    assert_eq!(
        api.get("/api/queues/%2F/t.g").await.json["messages"],
        json!(1)
    );
    let r = api
        .post("/api/queues/%2F/t.g/get", &get("reject_requeue_false", 1))
        .await;
    assert_eq!(r.json[0]["payload"], json!("two"), "{}", r.text);
    assert_eq!(
        api.get("/api/queues/%2F/t.g").await.json["messages"],
        json!(0)
    );
    let r = api
        .post("/api/queues/%2F/t.g/get", &get("ack_requeue_true", 1))
        .await;
    assert_eq!(r.json, json!([]), "{}", r.text);
    // Bad get bodies.
    let r = api
        .post(
            "/api/queues/%2F/t.g/get",
            &json!({"ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["reason"], json!("[{key_missing,count}]"));
    let r = api.post("/api/queues/%2F/t.g/get", &get("bogus", 1)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        api.post("/api/queues/%2F/nope/get", &get("ack_requeue_true", 1))
            .await
            .status,
        404
    );

    // Purge: messages from AMQP gone, the queue stays.
    let (_conn, ch) = b.channel().await;
    for _ in 0..4 {
        ch.basic_publish(
            "".into(),
            "t.g".into(),
            BasicPublishOptions::default(),
            b"p",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    }
    assert!(
        warren_tests::eventually(std::time::Duration::from_secs(5), || {
            b.broker
                .vhost("/")
                .and_then(|v| v.queue("t.g"))
                .is_some_and(|q| q.message_count() == 4)
        })
        .await
    );
    assert_eq!(
        api.get("/api/queues/%2F/t.g").await.json["messages"],
        json!(4)
    );
    assert_eq!(api.delete("/api/queues/%2F/t.g/contents").await.status, 204);
    assert_eq!(warren_tests::message_count(&ch, "t.g").await, 0);
    assert_eq!(
        api.delete("/api/queues/%2F/nope/contents").await.status,
        404
    );
    b.stop().await;
}

#[tokio::test]
async fn bindings_create_show_list_delete() {
    let b = TestBroker::start().await;
    let api = b.api();
    api.put("/api/queues/%2F/t.q", &json!({})).await;
    api.put("/api/exchanges/%2F/t.x", &json!({"type": "direct"}))
        .await;
    let r = api
        .post(
            "/api/bindings/%2F/e/t.x/q/t.q",
            &json!({"routing_key": "a b~c", "arguments": {}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("t.q/a%2Bb%257Ec")
    );
    let r = api
        .post(
            "/api/bindings/%2F/e/t.x/q/t.q",
            &json!({"routing_key": "", "arguments": {"x": 1}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.post("/api/bindings/%2F/e/t.x/q/t.q", &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("t.q/~")
    );
    let r = api.get("/api/bindings/%2F/e/t.x/q/t.q").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let keys: Vec<String> = r
        .json
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["properties_key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(keys.len(), 3, "{}", r.text);
    assert!(keys.contains(&"~".to_string()), "{keys:?}");
    assert!(keys.contains(&"a+b%7Ec".to_string()), "{keys:?}");
    let with_args = keys
        .iter()
        .find(|k| k.starts_with('~') && k.len() > 1)
        .cloned()
        .unwrap_or_default();
    assert_eq!(with_args.len(), 7, "{keys:?}");

    // A message through the binding reaches the queue.
    let r = api
        .post(
            "/api/exchanges/%2F/t.x/publish",
            &json!({"properties": {}, "routing_key": "a b~c", "payload": "x", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(r.json, json!({"routed": true}), "{}", r.text);

    let r = api.get("/api/bindings/%2F/e/t.x/q/t.q/a%2Bb%257Ec").await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (k, v) in [
        ("source", json!("t.x")),
        ("vhost", json!("/")),
        ("destination", json!("t.q")),
        ("destination_type", json!("queue")),
        ("routing_key", json!("a b~c")),
        ("arguments", json!({})),
        ("properties_key", json!("a+b%7Ec")),
    ] {
        assert_eq!(r.json[k], v, "{k}: {}", r.text);
    }
    // The queue's bindings include the default exchange's.
    let r = api.get("/api/queues/%2F/t.q/bindings").await;
    let arr = r.json.as_array().cloned().unwrap_or_default();
    assert_eq!(arr.len(), 4, "{}", r.text);
    assert_eq!(arr[0]["source"], json!(""));
    assert_eq!(arr[0]["routing_key"], json!("t.q"));
    let src = api.get("/api/exchanges/%2F/t.x/bindings/source").await;
    assert_eq!(src.json.as_array().map(Vec::len), Some(3), "{}", src.text);

    // Exchange to exchange.
    let r = api
        .post(
            "/api/bindings/%2F/e/t.x/e/amq.fanout",
            &json!({"routing_key": "r"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("amq.fanout/r")
    );
    let d = api
        .get("/api/exchanges/%2F/amq.fanout/bindings/destination")
        .await;
    assert_eq!(d.json[0]["source"], json!("t.x"), "{}", d.text);
    assert_eq!(d.json[0]["destination_type"], json!("exchange"));
    assert_eq!(
        api.get("/api/bindings/%2F/e/t.x/e/amq.fanout/r")
            .await
            .status,
        200
    );
    assert_eq!(
        api.delete("/api/bindings/%2F/e/t.x/e/amq.fanout/r")
            .await
            .status,
        204
    );
    assert_eq!(
        api.get("/api/bindings/%2F/e/t.x/e/amq.fanout/r")
            .await
            .status,
        404
    );

    // Lists.
    let all = api.get("/api/bindings").await;
    assert_eq!(all.json.as_array().map(Vec::len), Some(4), "{}", all.text);
    assert_eq!(api.get("/api/bindings/%2F").await.json, all.json);
    assert_eq!(api.get("/api/bindings/nope").await.status, 404);

    // Delete by properties key (with arguments too), then 404.
    assert_eq!(
        api.delete("/api/bindings/%2F/e/t.x/q/t.q/a%2Bb%257Ec")
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete("/api/bindings/%2F/e/t.x/q/t.q/a%2Bb%257Ec")
            .await
            .status,
        404
    );
    let path = format!("/api/bindings/%2F/e/t.x/q/t.q/{with_args}");
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(
        api.delete("/api/bindings/%2F/e/t.x/q/t.q/~").await.status,
        204
    );
    assert_eq!(
        api.get("/api/bindings/%2F/e/t.x/q/t.q").await.json,
        json!([])
    );
    // Missing ends.
    let r = api
        .post(
            "/api/bindings/%2F/e/t.x/q/nope",
            &json!({"routing_key": "k"}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error"], json!("not_found"));
    assert_eq!(r.json["reason"], json!("no queue 'nope' in vhost '/'"));
    assert_eq!(api.get("/api/bindings/%2F/e/nope/q/t.q").await.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn auth_and_permissions_on_topology() {
    let b = TestBroker::start().await;
    // No credentials: 401 on reads and writes.
    let anon = b.api_as("guest", None);
    assert_eq!(anon.get("/api/queues").await.status, 401);
    assert_eq!(
        anon.put("/api/queues/%2F/t.q", &json!({})).await.status,
        401
    );
    assert_eq!(anon.get("/api/exchanges/%2F").await.status, 401);
    assert_eq!(anon.get("/api/bindings").await.status, 401);
    // A management user whose configure permission excludes "t.": may list, may not declare.
    add_user(&b, "mgr", &["management"], "^mine\\.").await;
    let mgr = b.api_as("mgr", Some("pw"));
    assert_eq!(mgr.get("/api/queues").await.status, 200);
    let r = mgr.put("/api/queues/%2F/t.q", &json!({})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json["error"], json!("not_authorised"));
    let r = mgr.put("/api/exchanges/%2F/t.x", &json!({})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        mgr.put("/api/queues/%2F/mine.q", &json!({})).await.status,
        201
    );
    assert_eq!(
        b.api().put("/api/queues/%2F/t.q", &json!({})).await.status,
        201
    );
    assert_eq!(mgr.delete("/api/queues/%2F/t.q").await.status, 401);
    assert_eq!(mgr.delete("/api/queues/%2F/mine.q").await.status, 204);
    // A user without a management tag is refused outright.
    add_user(&b, "plain", &[], ".*").await;
    assert_eq!(
        b.api_as("plain", Some("pw"))
            .get("/api/queues")
            .await
            .status,
        401
    );
    b.stop().await;
}

#[tokio::test]
async fn field_names_match_rabbitmq() {
    // Field names RabbitMQ 3.10.8 shows for a classic queue and an exchange (from a local
    // RabbitMQ; its internals-only fields such as backing_queue_status, garbage_collection,
    // memory and reductions are not shown by Warren).
    let b = TestBroker::start().await;
    let api = b.api();
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "t.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let q = api.get("/api/queues/%2F/t.q").await.json;
    for k in [
        "arguments",
        "auto_delete",
        "consumer_capacity",
        "consumer_details",
        "consumer_utilisation",
        "consumers",
        "durable",
        "effective_policy_definition",
        "exclusive",
        "exclusive_consumer_tag",
        "head_message_timestamp",
        "message_bytes",
        "message_bytes_ready",
        "message_bytes_unacknowledged",
        "message_stats",
        "messages",
        "messages_details",
        "messages_ready",
        "messages_ready_details",
        "messages_unacknowledged",
        "messages_unacknowledged_details",
        "name",
        "node",
        "operator_policy",
        "policy",
        "single_active_consumer_tag",
        "state",
        "type",
        "vhost",
    ] {
        assert!(q.get(k).is_some(), "queue field {k} missing: {q}");
    }
    let x = api.get("/api/exchanges/%2F/amq.direct").await.json;
    for k in [
        "arguments",
        "auto_delete",
        "durable",
        "internal",
        "name",
        "type",
        "user_who_performed_action",
        "vhost",
    ] {
        assert!(x.get(k).is_some(), "exchange field {k} missing: {x}");
    }
    assert_eq!(x["user_who_performed_action"], json!("rmq-internal"));
    b.stop().await;
}

#[tokio::test]
async fn http_publish_reaches_an_amqp_consumer_with_its_properties() {
    use futures_lite::StreamExt;
    let b = TestBroker::start().await;
    let api = b.api();
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "t.p".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let mut consumer = ch
        .basic_consume(
            "t.p".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            &json!({"properties": {"content_type": "application/json", "delivery_mode": 2,
                                   "correlation_id": "c-1", "headers": {"k": "v"}},
                    "routing_key": "t.p", "payload": "{\"a\":1}", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(r.json, json!({"routed": true}), "{}", r.text);
    let d = tokio::time::timeout(std::time::Duration::from_secs(5), consumer.next())
        .await
        .expect("delivered in time")
        .expect("a delivery")
        .expect("not an error");
    assert_eq!(d.data, b"{\"a\":1}");
    assert_eq!(d.routing_key.as_str(), "t.p");
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-1")
    );
    let headers = d.properties.headers().clone().unwrap_or_default();
    assert!(headers.inner().contains_key("k"), "{headers:?}");
    // Errors: unknown vhost, unknown exchange, bad base64, not JSON, no credentials.
    let body = json!({"properties": {}, "routing_key": "t.p", "payload": "x", "payload_encoding": "string"});
    assert_eq!(
        api.post("/api/exchanges/nope/amq.default/publish", &body)
            .await
            .status,
        404
    );
    assert_eq!(
        api.post("/api/exchanges/%2F/nope/publish", &body)
            .await
            .status,
        404
    );
    let bad = json!({"properties": {}, "routing_key": "t.p", "payload": "!!", "payload_encoding": "base64"});
    assert_eq!(
        api.post("/api/exchanges/%2F/amq.default/publish", &bad)
            .await
            .status,
        400
    );
    let r = api
        .send_raw(
            reqwest::Method::POST,
            "/api/exchanges/%2F/amq.default/publish",
            "application/json",
            "[",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        b.api_as("guest", None)
            .post("/api/exchanges/%2F/amq.default/publish", &body)
            .await
            .status,
        401
    );
    b.stop().await;
}

#[tokio::test]
async fn stream_queue_shows_its_type_and_refuses_get_and_purge() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .put(
            "/api/queues/%2F/t.s",
            &json!({"durable": true, "arguments": {"x-queue-type": "stream"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let q = api.get("/api/queues/%2F/t.s").await;
    assert_eq!(q.json["type"], json!("stream"), "{}", q.text);
    let r = api
        .post(
            "/api/queues/%2F/t.s/get",
            &json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert!(
        r.status >= 400 && r.status < 500,
        "{}: {}",
        r.status,
        r.text
    );
    assert!(r.json["reason"].is_string(), "{}", r.text);
    let r = api.delete("/api/queues/%2F/t.s/contents").await;
    assert!(
        r.status >= 400 && r.status < 500,
        "{}: {}",
        r.status,
        r.text
    );
    // The broker still answers.
    assert_eq!(api.get("/api/queues/%2F/t.s").await.status, 200);
    b.stop().await;
}

/// Found by the definitions fuzz target: a JSON key longer than an AMQP short string (255
/// bytes) in `arguments` or publish `headers` is a 400, not a panic, over HTTP and in a
/// definitions import; the broker goes on.
#[tokio::test]
async fn overlong_table_keys_are_400_not_a_panic() {
    let b = TestBroker::start().await;
    let api = b.api();
    let long = "k".repeat(256);
    let r = api
        .put(
            "/api/queues/%2F/longkey",
            &json!({"durable": false, "arguments": {long.clone(): 1}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json["reason"],
        json!("arguments: key longer than 255 bytes (256 bytes)")
    );
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            &json!({"routing_key": "q", "payload": "x", "payload_encoding": "string",
                    "properties": {"headers": {"a": {long.clone(): 1}}}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .post(
            "/api/definitions",
            &json!({"queues": [{"name": "q", "vhost": "/", "durable": true,
                                 "auto_delete": false, "arguments": {long: 1}}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Still serving: a normal declare works.
    let r = api
        .put("/api/queues/%2F/fine", &json!({"durable": false}))
        .await;
    assert!(r.status == 201 || r.status == 204, "{}", r.text);
    let (_c, ch) = b.channel().await;
    ch.queue_declare(
        "fine".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the queue made over HTTP");
}
