//! Management API polish (issue 14): real rates on queues, exchanges and vhosts, policies
//! shown on queues and exchanges and validated by the core, RabbitMQ's list parameters on the
//! admin lists, and RabbitMQ's answers to a wrong method and an unknown path.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use reqwest::Method;
use serde_json::{json, Value};
use warren_core::Config;
use warren_tests::api::Api;
use warren_tests::TestBroker;

const WAIT: Duration = Duration::from_secs(10);

/// Polls `GET path` until `f` holds for its JSON; returns the last reply's JSON.
async fn poll(api: &Api, path: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = api.get(path).await;
        if f(&r.json) || tokio::time::Instant::now() >= deadline {
            return r.json;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rate(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn http_rates_of_queues_exchanges_and_vhosts_rise_while_publishing() {
    let mut config = Config::default();
    config.management.collect_statistics_interval = 50;
    let b = TestBroker::start_with(config).await;
    let (_conn, ch) = b.channel().await;
    ch.exchange_declare(
        "rates.x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    ch.queue_declare(
        "rates.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue");
    ch.queue_bind(
        "rates.q".into(),
        "rates.x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let api = b.api();
    // Before any traffic every rate is 0.
    let q = api.get("/api/queues/%2F/rates.q").await.json;
    assert_eq!(
        rate(&q, &["message_stats", "publish_details", "rate"]),
        0.0,
        "{q}"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = ch
                    .basic_publish(
                        "rates.x".into(),
                        "k".into(),
                        BasicPublishOptions::default(),
                        b"x",
                        BasicProperties::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let q = poll(&api, "/api/queues/%2F/rates.q", |q| {
        rate(q, &["message_stats", "publish_details", "rate"]) > 0.0
            && rate(q, &["messages_ready_details", "rate"]) > 0.0
    })
    .await;
    let listed = poll(&api, "/api/queues/%2F", |l| {
        rate(&l[0], &["message_stats", "publish_details", "rate"]) > 0.0
    })
    .await;
    let x = poll(&api, "/api/exchanges/%2F/rates.x", |x| {
        rate(x, &["message_stats", "publish_in_details", "rate"]) > 0.0
            && rate(x, &["message_stats", "publish_out_details", "rate"]) > 0.0
    })
    .await;
    let vhosts = poll(&api, "/api/vhosts", |l| {
        rate(&l[0], &["message_stats", "publish_details", "rate"]) > 0.0
            && rate(&l[0], &["messages_details", "rate"]) > 0.0
    })
    .await;
    stop.cancel();
    let _ = publisher.await;
    assert!(
        rate(&q, &["message_stats", "publish_details", "rate"]) > 0.0,
        "{q}"
    );
    assert!(rate(&q, &["messages_ready_details", "rate"]) > 0.0, "{q}");
    assert!(
        rate(&listed[0], &["message_stats", "publish_details", "rate"]) > 0.0,
        "{listed}"
    );
    assert!(
        rate(&x, &["message_stats", "publish_in_details", "rate"]) > 0.0,
        "{x}"
    );
    assert!(
        rate(&vhosts[0], &["message_stats", "publish_details", "rate"]) > 0.0,
        "{vhosts}"
    );
    assert!(
        vhosts[0]["message_stats"]["publish"].as_u64() > Some(0),
        "{vhosts}"
    );
    // Once publishing stops, the queue's publish rate falls back to 0.
    let q = poll(&api, "/api/queues/%2F/rates.q", |q| {
        rate(q, &["message_stats", "publish_details", "rate"]) == 0.0
    })
    .await;
    assert_eq!(
        rate(&q, &["message_stats", "publish_details", "rate"]),
        0.0,
        "{q}"
    );
    b.stop().await;
}

#[tokio::test]
async fn http_policy_put_over_http_caps_a_queue_and_shows_on_it() {
    let b = TestBroker::start().await;
    let api = b.api();
    let r = api
        .put(
            "/api/policies/%2F/cap",
            &json!({"pattern": "^capped$", "definition": {"max-length": 2}, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .put(
            "/api/policies/%2F/ae",
            &json!({"pattern": "^px$", "definition": {"alternate-exchange": "amq.fanout"},
                    "apply-to": "exchanges", "priority": 3}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for q in ["capped", "free"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    ch.exchange_declare(
        "px".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    for i in 0..5u8 {
        for q in ["capped", "free"] {
            ch.basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                &[i],
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
    }
    let q = api.get("/api/queues/%2F/capped").await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.json["messages"], json!(2), "{}", q.text);
    assert_eq!(q.json["policy"], json!("cap"));
    assert_eq!(q.json["operator_policy"], Value::Null);
    assert_eq!(
        q.json["effective_policy_definition"],
        json!({"max-length": 2})
    );
    let free = api.get("/api/queues/%2F/free").await.json;
    assert_eq!(free["messages"], json!(5), "{free}");
    assert_eq!(free["policy"], Value::Null);
    assert_eq!(free["effective_policy_definition"], json!({}));
    // An exchange shows `policy` only when one applies (as RabbitMQ 3.10).
    let x = api.get("/api/exchanges/%2F/px").await.json;
    assert_eq!(x["policy"], json!("ae"), "{x}");
    let d = api.get("/api/exchanges/%2F/amq.direct").await.json;
    assert!(d.get("policy").is_none(), "{d}");
    // The stored policy reads back with the defaults the API fills in.
    let p = api.get("/api/policies/%2F/cap").await.json;
    assert_eq!(p["priority"], json!(0), "{p}");
    assert_eq!(p["apply-to"], json!("queues"));
    b.stop().await;
}

#[tokio::test]
async fn http_policy_the_core_refuses_is_400_validation_failed() {
    let b = TestBroker::start().await;
    let api = b.api();
    let put = |def: Value| {
        let api = &api;
        async move {
            api.put(
                "/api/policies/%2F/bad",
                &json!({"pattern": ".*", "definition": def}),
            )
            .await
        }
    };
    // As RabbitMQ 3.10.8 answers these (its reason is HTML-escaped).
    let r = put(json!({"max-length": "x"})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"error": "bad_request",
               "reason": "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n"})
    );
    let r = put(json!({"bogus": 1})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json["reason"],
        json!("Validation failed\n\n[{&lt;&lt;\"bogus\"&gt;&gt;,1}] are not recognised policy settings\n")
    );
    let r = api
        .put(
            "/api/policies/%2F/bad",
            &json!({"pattern": "(", "definition": {"max-length": 1}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"], json!("bad_request"));
    assert!(
        r.json["reason"]
            .as_str()
            .is_some_and(|t| t.starts_with("Validation failed\n\n")),
        "{}",
        r.text
    );
    let r = api
        .put("/api/policies/%2F/bad", &json!({"pattern": ".*"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Nothing was stored.
    assert_eq!(api.get("/api/policies/%2F/bad").await.status, 404);
    assert_eq!(api.get("/api/policies").await.json, json!([]));
    b.stop().await;
}

#[tokio::test]
async fn http_admin_lists_take_rabbitmq_list_parameters() {
    let b = TestBroker::start().await;
    let api = b.api();
    for u in ["ann", "bob", "cat"] {
        let r = api
            .put(
                &format!("/api/users/{u}"),
                &json!({"password": "pw", "tags": ""}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Users: page 2 of size 2 of [ann, bob, cat, guest].
    let r = api.get("/api/users?page=2&page_size=2").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["total_count"], json!(4), "{}", r.text);
    assert_eq!(r.json["page_count"], json!(2));
    assert_eq!(r.json["item_count"], json!(2));
    let names: Vec<&str> = r.json["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|u| u["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["cat", "guest"]);
    // Name filter, reverse sort and columns.
    let r = api
        .get("/api/users?name=a&sort=name&sort_reverse=true&columns=name")
        .await;
    assert_eq!(
        r.json,
        json!([{"name": "cat"}, {"name": "ann"}]),
        "{}",
        r.text
    );
    // Vhosts, and RabbitMQ's pagination errors.
    for v in ["v1", "v2"] {
        assert_eq!(
            api.put(&format!("/api/vhosts/{v}"), &json!({}))
                .await
                .status,
            201
        );
    }
    let r = api.get("/api/vhosts?page=1&page_size=2&columns=name").await;
    assert_eq!(r.json["total_count"], json!(3), "{}", r.text);
    assert_eq!(r.json["items"], json!([{"name": "/"}, {"name": "v1"}]));
    let r = api.get("/api/vhosts?page=3&page_size=2").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"], json!("page_out_of_range"));
    let r = api.get("/api/users?page=0").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"], json!("invalid_pagination_parameters"));
    // Connections and channels of a live lapin client.
    let (_conn, _ch) = b.channel().await;
    let r = poll(&api, "/api/connections?page=1", |j| {
        j["total_count"] == json!(1)
    })
    .await;
    assert_eq!(r["item_count"], json!(1), "{r}");
    assert_eq!(r["items"][0]["user"], json!("guest"));
    let r = poll(&api, "/api/channels?page=1&page_size=5", |j| {
        j["total_count"] == json!(1)
    })
    .await;
    assert_eq!(r["items"][0]["number"], json!(1), "{r}");
    // Permissions come sorted by vhost, as RabbitMQ's lists are.
    let r = api
        .put(
            "/api/permissions/v1/ann",
            &json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.get("/api/permissions?columns=user,vhost").await;
    assert_eq!(
        r.json,
        json!([{"user": "guest", "vhost": "/"}, {"user": "ann", "vhost": "v1"}]),
        "{}",
        r.text
    );
    b.stop().await;
}

#[tokio::test]
async fn http_wrong_method_is_405_and_unknown_path_404_as_rabbitmq() {
    let b = TestBroker::start().await;
    let api = b.api();
    let patch = Method::from_bytes(b"PATCH").expect("method");
    // As RabbitMQ 3.10.8 (cowboy): 405, no body, `allow` in its order with OPTIONS.
    let r = api.send(patch.clone(), "/api/overview", None).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.text, "");
    assert_eq!(r.headers["allow"], "HEAD, GET, OPTIONS");
    let r = api.send(patch.clone(), "/api/queues/%2F/q", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "HEAD, GET, PUT, DELETE, OPTIONS");
    let r = api.post("/api/vhosts/x", &json!({})).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "HEAD, GET, PUT, DELETE, OPTIONS");
    let r = api
        .send(Method::GET, "/api/exchanges/%2F/amq.direct/publish", None)
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST, OPTIONS");
    let r = api.send(Method::OPTIONS, "/api/overview", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["allow"], "HEAD, GET, OPTIONS");
    // An unknown path: GET is RabbitMQ's JSON 404, other methods 405.
    let r = api.get("/api/nothing/here").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    let r = api.get("/api/nothing").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    let r = api.send(Method::DELETE, "/api/nothing", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "HEAD, GET, OPTIONS");
    // The broker still answers.
    assert_eq!(api.get("/api/overview").await.status, 200);
    b.stop().await;
}
