//! The big management lists (queues, exchanges, bindings, connections), written straight from
//! the broker's views, over real HTTP with lapin on the AMQP side: the JSON keeps every field,
//! and the list parameters RabbitMQ 3.10 applies: `disable_stats`, `enable_queue_totals`,
//! `pagination=false` (ignored, as KEDA sends it), case-insensitive `use_regex`, a sort on a
//! statistics field, `columns`.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use warren_tests::TestBroker;

/// Declares `name` over AMQP and publishes `n` messages to it, then waits until they are in.
async fn fill(b: &TestBroker, ch: &lapin::Channel, name: &str, n: u32) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    for i in 0..n {
        ch.basic_publish(
            "".into(),
            name.into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    }
    let ok = warren_tests::eventually(Duration::from_secs(5), || {
        b.broker
            .vhost("/")
            .and_then(|v| v.queue(name))
            .is_some_and(|q| q.message_count() == n)
    })
    .await;
    assert!(ok, "{name} holds {n} messages");
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
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

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("{name} in {list}"))
}

#[tokio::test]
async fn queue_list_keeps_every_field_and_counts() {
    let b = TestBroker::start().await;
    let api = b.api();
    let (_conn, ch) = b.channel().await;
    fill(&b, &ch, "L.two", 2).await;
    let r = api.get("/api/queues").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let q = find(&r.json, "L.two");
    assert_eq!(
        keys(q),
        [
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
            "message_bytes_paged_out",
            "message_bytes_ram",
            "message_bytes_ready",
            "message_bytes_unacknowledged",
            "message_stats",
            "messages",
            "messages_details",
            "messages_paged_out",
            "messages_ram",
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
        ]
    );
    assert_eq!(q["messages"], json!(2));
    assert_eq!(q["messages_ready"], json!(2));
    assert_eq!(q["message_bytes"], json!(4));
    assert_eq!(
        q["messages_ram"],
        json!(2),
        "nothing paged on a broker without a data dir"
    );
    assert_eq!(q["messages_paged_out"], json!(0));
    assert_eq!(q["message_bytes_ram"], json!(4));
    assert_eq!(q["messages_details"], json!({"rate": 0.0}));
    assert_eq!(q["consumer_details"], json!([]));
    assert_eq!(q["message_stats"]["publish"], json!(2));
    assert_eq!(q["message_stats"]["publish_details"], json!({"rate": 0.0}));
    assert_eq!(q["message_stats"]["deliver_get"], json!(0));
    assert!(q["message_stats"].get("confirm").is_none(), "{q}");
    assert!(q["message_stats"].get("publish_in").is_none(), "{q}");
    // The single queue is the same object.
    let one = api.get("/api/queues/%2F/L.two").await;
    assert_eq!(keys(&one.json), keys(q));
    assert_eq!(one.json["messages"], json!(2));
    // Exchanges and bindings keep theirs too.
    let x = api.get("/api/exchanges/%2F").await;
    let direct = find(&x.json, "amq.direct");
    assert_eq!(direct["type"], json!("direct"));
    assert_eq!(direct["user_who_performed_action"], json!("rmq-internal"));
    assert!(direct["message_stats"]["publish_in"].is_u64(), "{direct}");
    let bs = api.get("/api/bindings/%2F").await;
    let default = bs
        .json
        .as_array()
        .and_then(|a| a.iter().find(|i| i["destination"] == "L.two"))
        .cloned()
        .expect("default binding");
    assert_eq!(
        default,
        json!({"source": "", "vhost": "/", "destination": "L.two", "destination_type": "queue",
               "routing_key": "L.two", "properties_key": "L.two", "arguments": {}})
    );
    let conns = api.get("/api/connections").await;
    assert_eq!(
        conns.json.as_array().map(Vec::len),
        Some(1),
        "{}",
        conns.text
    );
    assert_eq!(conns.json[0]["protocol"], json!("AMQP 0-9-1"));
    assert_eq!(conns.json[0]["channels"], json!(1));
    assert!(conns.json[0]["peer_host"].is_string());
}

#[tokio::test]
async fn disable_stats_and_queue_totals_as_rabbitmq() {
    let b = TestBroker::start().await;
    let api = b.api();
    let (_conn, ch) = b.channel().await;
    fill(&b, &ch, "S.three", 3).await;
    // disable_stats: the definition, state and node; no counts.
    let r = api.get("/api/queues?disable_stats=true").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let q = find(&r.json, "S.three");
    assert_eq!(
        keys(q),
        [
            "arguments",
            "auto_delete",
            "durable",
            "exclusive",
            "name",
            "node",
            "state",
            "type",
            "vhost"
        ]
    );
    // With enable_queue_totals: the three counts and `policy` too.
    let r = api
        .get("/api/queues/%2F?disable_stats=true&enable_queue_totals=true")
        .await;
    let q = find(&r.json, "S.three");
    assert_eq!(q["messages"], json!(3), "{q}");
    assert_eq!(q["messages_ready"], json!(3));
    assert_eq!(q["messages_unacknowledged"], json!(0));
    assert_eq!(q["policy"], json!(""));
    assert!(q.get("message_stats").is_none(), "{q}");
    assert!(q.get("messages_details").is_none(), "{q}");
    // enable_queue_totals alone changes nothing.
    let r = api.get("/api/queues?enable_queue_totals=true").await;
    assert!(find(&r.json, "S.three")["message_stats"].is_object());
    // A policy shows in the basic form when one applies.
    let r = api
        .put(
            "/api/policies/%2F/cap",
            &json!({"pattern": "^S\\.", "definition": {"max-length": 10}, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ok = warren_tests::eventually(Duration::from_secs(5), || {
        b.broker
            .vhost("/")
            .and_then(|v| v.queue("S.three"))
            .is_some_and(|q| q.policy().policy.is_some())
    })
    .await;
    assert!(ok);
    let r = api.get("/api/queues?disable_stats=true").await;
    assert_eq!(find(&r.json, "S.three")["policy"], json!("cap"));
    let r = api
        .get("/api/queues/%2F/S.three?disable_stats=true&enable_queue_totals=true")
        .await;
    assert_eq!(r.json["policy"], json!("cap"), "{}", r.text);
    assert_eq!(r.json["messages"], json!(3));
    // Exchanges without their message_stats; paginated and sorted still.
    let r = api
        .get("/api/exchanges/%2F?disable_stats=true&page=1&page_size=2&sort=name")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(names(&r.json["items"]), ["", "amq.direct"]);
    assert!(
        r.json["items"][1].get("message_stats").is_none(),
        "{}",
        r.text
    );
    assert_eq!(r.json["items"][1]["type"], json!("direct"));
}

#[tokio::test]
async fn keda_regex_query_and_sorts() {
    let b = TestBroker::start().await;
    let api = b.api();
    let (_conn, ch) = b.channel().await;
    fill(&b, &ch, "Work.a", 1).await;
    fill(&b, &ch, "work.b", 3).await;
    fill(&b, &ch, "work.c", 2).await;
    fill(&b, &ch, "other", 0).await;
    // KEDA's regex mode: `pagination=false` is ignored (page=1 gives the paginated shape),
    // and the regex is case-insensitive as RabbitMQ's (`caseless`).
    let r = api
        .get(
            "/api/queues/%2F?page=1&use_regex=true&pagination=false&name=%5Ework%5C.&page_size=100",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(names(&r.json["items"]), ["Work.a", "work.b", "work.c"]);
    assert_eq!(r.json["page_count"], json!(1));
    assert_eq!(r.json["filtered_count"], json!(3));
    assert_eq!(r.json["total_count"], json!(4));
    let total: u64 = r.json["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|q| q["messages"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(total, 6);
    // pagination=false without page: the bare list.
    let r = api.get("/api/queues?pagination=false").await;
    assert_eq!(names(&r.json), ["Work.a", "other", "work.b", "work.c"]);
    // A sort on a statistics field (the slow path), reversed, with columns.
    let r = api
        .get("/api/queues?sort=messages&sort_reverse=true&columns=name,messages")
        .await;
    assert_eq!(
        r.json,
        json!([
            {"name": "work.b", "messages": 3},
            {"name": "work.c", "messages": 2},
            {"name": "Work.a", "messages": 1},
            {"name": "other", "messages": 0},
        ]),
        "{}",
        r.text
    );
    // Nested columns.
    let r = api
        .get("/api/queues/%2F?columns=name,message_stats.publish&name=work.b")
        .await;
    assert_eq!(
        r.json,
        json!([{"name": "work.b", "message_stats": {"publish": 3}}]),
        "{}",
        r.text
    );
    // Reverse by name.
    let r = api.get("/api/queues?sort=name&sort_reverse=true").await;
    assert_eq!(names(&r.json), ["work.c", "work.b", "other", "Work.a"]);
    // A page sorted on a statistics field: whole items, in that order (ties by vhost, name).
    let r = api
        .get("/api/queues?page=1&page_size=3&sort=messages&sort_reverse=true")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(names(&r.json["items"]), ["work.b", "work.c", "Work.a"]);
    assert_eq!(r.json["items"][0]["messages_ready"], json!(3));
    assert!(r.json["items"][0]["message_stats"].is_object());
    assert_eq!(
        (r.json["page_count"].clone(), r.json["item_count"].clone()),
        (json!(2), json!(3))
    );
    let r = api
        .get("/api/queues?sort=messages&page=2&page_size=3")
        .await;
    assert_eq!(names(&r.json["items"]), ["work.b"]);
    // A dotted sort key, and a column that no item has.
    let r = api
        .get("/api/queues?sort=message_stats.publish&columns=name,nope")
        .await;
    assert_eq!(
        r.json,
        json!([{"name": "other"}, {"name": "Work.a"}, {"name": "work.c"}, {"name": "work.b"}]),
        "{}",
        r.text
    );
}
