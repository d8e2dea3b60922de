//! Policies and operator policies (RabbitMQ 3.10.8's `rabbit_policy`), with lapin over TCP:
//! policies are set through the metadata path (`Broker::admin(Command::PutRuntime)`, what the
//! HTTP API and the definitions import use) and their effect is watched on existing queues and
//! exchanges: length limits and overflow, dead-lettering, TTL, alternate exchanges, precedence
//! against queue arguments, operator policy caps, priority choice, validation errors, restart
//! and the definitions file.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::timeout;
use warren_core::metadata::{Command, RuntimeDef};
use warren_core::queue::QueueRef;
use warren_tests::{eventually, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

fn put(kind: &str, name: &str, pattern: &str, priority: i64, definition: Value) -> Command {
    Command::PutRuntime(RuntimeDef {
        kind: kind.into(),
        vhost: "/".into(),
        component: String::new(),
        name: name.into(),
        value: json!({"pattern": pattern, "apply-to": "queues", "priority": priority, "definition": definition}),
    })
}

fn policy(name: &str, pattern: &str, priority: i64, definition: Value) -> Command {
    put("policy", name, pattern, priority, definition)
}

fn clear(kind: &str, name: &str) -> Command {
    Command::ClearRuntime {
        kind: kind.into(),
        vhost: "/".into(),
        component: String::new(),
        name: name.into(),
    }
}

async fn admin(b: &TestBroker, cmd: Command) {
    b.broker
        .admin(cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
}

fn queue(b: &TestBroker, name: &str) -> QueueRef {
    b.broker
        .vhost("/")
        .and_then(|v| v.queue(name))
        .unwrap_or_else(|| panic!("queue {name} exists"))
}

fn count(b: &TestBroker, name: &str) -> u32 {
    queue(b, name).message_count()
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

async fn bound_queue(ch: &Channel, exchange: &str, queue: &str) {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    declare(ch, queue, FieldTable::default()).await;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

/// Publishes `n` messages to `queue` on a confirming channel; returns how many were acked.
async fn publish_n(ch: &Channel, queue: &str, n: usize) -> usize {
    let mut acks = 0;
    for i in 0..n {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        if c.is_ack() {
            acks += 1;
        }
    }
    acks
}

async fn confirming(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (c, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (c, ch)
}

/// Gets one message from `queue` and returns its `x-death` (queue, reason) pairs.
async fn get_death(ch: &Channel, queue: &str) -> Vec<(String, String)> {
    let mut got = None;
    for _ in 0..100 {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            got = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = got.unwrap_or_else(|| panic!("a message in {queue}"));
    let headers = m.delivery.properties.headers().clone().unwrap_or_default();
    match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|e| match e {
                AMQPValue::FieldTable(t) => {
                    let s = |k: &str| match t.inner().get(k) {
                        Some(AMQPValue::LongString(s)) => s.to_string(),
                        other => panic!("x-death {k}: {other:?}"),
                    };
                    (s("queue"), s("reason"))
                }
                other => panic!("x-death entry {other:?}"),
            })
            .collect(),
        other => panic!("x-death: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_max_length_reject_publish_nacks_the_sixth() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare(&ch, "pq.limited", FieldTable::default()).await;
    admin(
        &b,
        policy(
            "limit",
            "^pq\\.",
            0,
            json!({"max-length": 5, "overflow": "reject-publish"}),
        ),
    )
    .await;
    assert_eq!(publish_n(&ch, "pq.limited", 6).await, 5);
    assert_eq!(count(&b, "pq.limited"), 5);
    // A queue declared after the policy gets it at declare.
    declare(&ch, "pq.later", FieldTable::default()).await;
    assert_eq!(publish_n(&ch, "pq.later", 6).await, 5);
    let p = queue(&b, "pq.later").policy();
    assert_eq!(p.policy.as_deref(), Some("limit"));
    assert_eq!(p.definition.get("max-length"), Some(&json!(5)));
    // A queue the pattern does not match is unlimited.
    declare(&ch, "other", FieldTable::default()).await;
    assert_eq!(publish_n(&ch, "other", 6).await, 6);
    assert!(queue(&b, "other").policy().policy.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_dead_letter_exchange_with_x_death() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    bound_queue(&ch, "dlx", "dead").await;
    declare(&ch, "work", FieldTable::default()).await;
    admin(
        &b,
        policy("dl", "^work$", 0, json!({"dead-letter-exchange": "dlx"})),
    )
    .await;
    ch.basic_publish(
        "".into(),
        "work".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let m = loop {
        if let Some(m) = ch
            .basic_get("work".into(), BasicGetOptions::default())
            .await
            .expect("get")
        {
            break m;
        }
    };
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    assert_eq!(
        get_death(&ch, "dead").await,
        vec![("work".to_string(), "rejected".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_and_clearing_a_policy_changes_an_existing_queue() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirming(&b).await;
    declare(&ch, "live", FieldTable::default()).await;
    admin(
        &b,
        policy(
            "p",
            "live",
            0,
            json!({"max-length": 2, "overflow": "reject-publish"}),
        ),
    )
    .await;
    assert_eq!(publish_n(&ch, "live", 3).await, 2);
    admin(
        &b,
        policy(
            "p",
            "live",
            0,
            json!({"max-length": 4, "overflow": "reject-publish"}),
        ),
    )
    .await;
    assert_eq!(publish_n(&ch, "live", 3).await, 2);
    assert_eq!(count(&b, "live"), 4);
    admin(&b, clear("policy", "p")).await;
    assert_eq!(publish_n(&ch, "live", 3).await, 3);
    assert_eq!(count(&b, "live"), 7);
    assert!(queue(&b, "live").policy().policy.is_none());
    // Clearing what does not exist is a 404.
    let e = b
        .broker
        .admin(clear("policy", "p"))
        .await
        .expect_err("no such policy");
    assert!(e.text.starts_with("NOT_FOUND"), "{}", e.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_length_trims_and_dead_letters_at_once() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirming(&b).await;
    bound_queue(&ch, "trimmed", "trimmed.dead").await;
    declare(&ch, "big", FieldTable::default()).await;
    assert_eq!(publish_n(&ch, "big", 10).await, 10);
    admin(
        &b,
        policy(
            "trim",
            "^big$",
            0,
            json!({"max-length": 3, "dead-letter-exchange": "trimmed"}),
        ),
    )
    .await;
    assert_eq!(count(&b, "big"), 3);
    assert!(eventually(WAIT, || count(&b, "trimmed.dead") == 7).await);
    assert_eq!(
        get_death(&ch, "trimmed.dead").await,
        vec![("big".to_string(), "maxlen".to_string())]
    );
    // The oldest went (drop-head): the head is now m7.
    let m = ch
        .basic_get("big".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(m.delivery.data, b"m7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smaller_limit_wins_and_the_argument_wins_for_dlx() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirming(&b).await;
    bound_queue(&ch, "mine", "mine.dead").await;
    bound_queue(&ch, "theirs", "theirs.dead").await;
    admin(
        &b,
        policy(
            "prec",
            "^prec\\.",
            0,
            json!({"max-length": 3, "dead-letter-exchange": "theirs"}),
        ),
    )
    .await;
    // Argument 10, policy 3: 3.
    declare(
        &ch,
        "prec.a",
        table(&[
            ("x-max-length", AMQPValue::LongInt(10)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("mine".into()),
            ),
        ]),
    )
    .await;
    // Argument 2, policy 3: 2.
    declare(
        &ch,
        "prec.b",
        table(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
    assert_eq!(publish_n(&ch, "prec.a", 5).await, 5);
    assert_eq!(publish_n(&ch, "prec.b", 5).await, 5);
    assert_eq!(count(&b, "prec.a"), 3);
    assert_eq!(count(&b, "prec.b"), 2);
    // prec.a's own DLX wins over the policy's; prec.b has only the policy's.
    assert!(eventually(WAIT, || count(&b, "mine.dead") == 2).await);
    assert!(eventually(WAIT, || count(&b, "theirs.dead") == 3).await);
    assert_eq!(
        queue(&b, "prec.a")
            .policy()
            .args
            .dead_letter_exchange
            .as_deref(),
        Some("mine")
    );
    // Redeclaring with the queue's own arguments is equivalent (the policy is not compared).
    declare(
        &ch,
        "prec.b",
        table(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_policy_caps_and_priority_chooses() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirming(&b).await;
    admin(
        &b,
        policy(
            "low",
            "^op",
            1,
            json!({"max-length": 100, "overflow": "reject-publish"}),
        ),
    )
    .await;
    admin(
        &b,
        policy(
            "high",
            "^op\\.q",
            7,
            json!({"max-length": 50, "overflow": "reject-publish"}),
        ),
    )
    .await;
    declare(&ch, "op.q", FieldTable::default()).await;
    let p = queue(&b, "op.q").policy();
    assert_eq!(p.policy.as_deref(), Some("high"));
    assert_eq!(p.args.max_length, Some(50));
    admin(
        &b,
        put("operator_policy", "cap", ".*", 0, json!({"max-length": 2})),
    )
    .await;
    assert_eq!(publish_n(&ch, "op.q", 4).await, 2);
    let p = queue(&b, "op.q").policy();
    assert_eq!(p.operator_policy.as_deref(), Some("cap"));
    assert_eq!(p.definition.get("max-length"), Some(&json!(2)));
    assert_eq!(p.definition.get("overflow"), Some(&json!("reject-publish")));
    // The operator policy cannot raise a limit: a cap above the policy's leaves 50.
    admin(
        &b,
        put("operator_policy", "cap", ".*", 0, json!({"max-length": 80})),
    )
    .await;
    assert_eq!(queue(&b, "op.q").policy().args.max_length, Some(50));
    // Lowering "high" below "low" hands the queue to "low".
    admin(
        &b,
        policy(
            "high",
            "^op\\.q",
            0,
            json!({"max-length": 50, "overflow": "reject-publish"}),
        ),
    )
    .await;
    assert_eq!(queue(&b, "op.q").policy().policy.as_deref(), Some("low"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_policy_expires_new_messages() {
    let b = TestBroker::start().await;
    let (_c, ch) = confirming(&b).await;
    bound_queue(&ch, "expired", "expired.dead").await;
    declare(&ch, "ttl", FieldTable::default()).await;
    admin(
        &b,
        policy(
            "ttl",
            "^ttl$",
            0,
            json!({"message-ttl": 50, "dead-letter-exchange": "expired"}),
        ),
    )
    .await;
    assert_eq!(publish_n(&ch, "ttl", 2).await, 2);
    assert!(eventually(WAIT, || count(&b, "expired.dead") == 2).await);
    assert_eq!(count(&b, "ttl"), 0);
    assert_eq!(
        get_death(&ch, "expired.dead").await,
        vec![("ttl".to_string(), "expired".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_policy_on_an_exchange() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    bound_queue(&ch, "ae", "unrouted").await;
    ch.exchange_declare(
        "main".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    admin(
        &b,
        Command::PutRuntime(RuntimeDef {
            kind: "policy".into(),
            vhost: "/".into(),
            component: String::new(),
            name: "ae".into(),
            value: json!({"pattern": "^main$", "apply-to": "exchanges", "definition": {"alternate-exchange": "ae"}}),
        }),
    )
    .await;
    let shown = b
        .broker
        .vhost("/")
        .expect("vhost")
        .exchanges()
        .into_iter()
        .find(|x| &*x.name == "main")
        .and_then(|x| x.policy)
        .and_then(|p| p.policy.clone());
    assert_eq!(shown.as_deref(), Some("ae"));
    ch.basic_publish(
        "main".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    assert!(eventually(WAIT, || count(&b, "unrouted") == 1).await);
    // The policy applies to exchanges only: queues matching the pattern are untouched.
    admin(&b, clear("policy", "ae")).await;
    ch.basic_publish(
        "main".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"y",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&b, "unrouted"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_with_rabbitmq_texts() {
    let b = TestBroker::start().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"pattern": "q", "definition": {"foo": "bar"}}),
            "[{<<\"foo\">>,<<\"bar\">>}] are not recognised policy settings",
        ),
        (
            json!({"pattern": "q", "definition": {}}),
            "no policy provided",
        ),
        (
            json!({"pattern": "(", "definition": {"max-length": 1}}),
            "pattern should be regular expression but is invalid",
        ),
        (
            json!({"pattern": "q", "apply-to": "topics", "definition": {"max-length": 1}}),
            "apply-to 'topics' unrecognised",
        ),
        (
            json!({"pattern": "q", "priority": "x", "definition": {"max-length": 1}}),
            "priority should be a number, actually was <<\"x\">>",
        ),
        (
            json!({"pattern": "q", "definition": {"max-length": -1}}),
            "-1 is not a valid maximum length",
        ),
        (
            json!({"pattern": "q", "definition": {"message-ttl": "5"}}),
            "<<\"5\">> is not a valid message TTL",
        ),
        (
            json!({"pattern": "q", "definition": {"overflow": "sometimes"}}),
            "<<\"sometimes\">> is not a valid overflow value",
        ),
        (
            json!({"pattern": "q", "definition": {"expires": 0}}),
            "0 is not a valid queue expiry",
        ),
        (
            json!({"pattern": "q", "definition": {"dead-letter-exchange": 5}}),
            "5 is not a valid dead letter exchange name",
        ),
        (
            json!({"definition": {"max-length": 1}}),
            "Key \"pattern\" not found in bad",
        ),
    ];
    for (value, text) in cases {
        let e = b
            .broker
            .admin(Command::PutRuntime(RuntimeDef {
                kind: "policy".into(),
                vhost: "/".into(),
                component: String::new(),
                name: "bad".into(),
                value: value.clone(),
            }))
            .await
            .expect_err("refused");
        assert!(
            e.text
                .starts_with("PRECONDITION_FAILED - Validation failed")
                && e.text.contains(text),
            "{value}: {}",
            e.text
        );
        assert!(b.broker.runtime("policy", "/", "", "bad").is_none());
    }
    // Operator policies take only the limit keys.
    let e = b
        .broker
        .admin(put(
            "operator_policy",
            "op",
            ".*",
            0,
            json!({"dead-letter-exchange": "x"}),
        ))
        .await
        .expect_err("refused");
    assert!(
        e.text.contains("are not recognised policy settings"),
        "{}",
        e.text
    );
    // A policy for a vhost that does not exist.
    let e = b
        .broker
        .admin(Command::PutRuntime(RuntimeDef {
            kind: "policy".into(),
            vhost: "nope".into(),
            component: String::new(),
            name: "p".into(),
            value: json!({"pattern": "q", "definition": {"max-length": 1}}),
        }))
        .await
        .expect_err("refused");
    assert!(e.text.starts_with("NOT_FOUND"), "{}", e.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    {
        let (_c, ch) = b.channel().await;
        ch.queue_declare(
            "kept".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
        admin(
            &b,
            policy(
                "keep",
                "^kept$",
                0,
                json!({"max-length": 2, "overflow": "reject-publish"}),
            ),
        )
        .await;
        admin(
            &b,
            put(
                "operator_policy",
                "cap",
                ".*",
                0,
                json!({"message-ttl": 600000}),
            ),
        )
        .await;
    }
    b.stop().await;
    let b = TestBroker::start_durable(dir.path()).await;
    let p = queue(&b, "kept").policy();
    assert_eq!(p.policy.as_deref(), Some("keep"));
    assert_eq!(p.operator_policy.as_deref(), Some("cap"));
    assert_eq!(p.args.message_ttl, Some(600_000));
    let (_c, ch) = confirming(&b).await;
    assert_eq!(publish_n(&ch, "kept", 3).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_from_a_definitions_file_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("defs.json");
    std::fs::write(
        &good,
        json!({
            "vhosts": [{"name": "/"}],
            "policies": [{"vhost": "/", "name": "fromfile", "pattern": "^f\\.", "apply-to": "queues",
                          "definition": {"max-length": 1, "overflow": "reject-publish"}, "priority": 0}],
            "queues": [{"name": "f.q", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}]
        })
        .to_string(),
    )
    .expect("write");
    let mut config = warren_core::config::Config::default();
    config.definitions.load = good;
    let b = TestBroker::start_with(config).await;
    warren_core::server::import_configured_definitions(&b.broker)
        .await
        .expect("the file imports");
    assert_eq!(
        queue(&b, "f.q").policy().policy.as_deref(),
        Some("fromfile")
    );
    let (_c, ch) = confirming(&b).await;
    assert_eq!(publish_n(&ch, "f.q", 2).await, 1);

    // A bad policy in the file: a one-line error naming it.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"policies": [{"vhost": "/", "name": "broken", "pattern": "x", "apply-to": "queues",
                             "definition": {"max-length": "many"}, "priority": 0}]})
        .to_string(),
    )
    .expect("write");
    let mut config = warren_core::config::Config::default();
    config.definitions.load = bad;
    let b2 = TestBroker::start_with(config).await;
    let e = warren_core::server::import_configured_definitions(&b2.broker)
        .await
        .expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains("policies[0]") && text.contains("is not a valid maximum length"),
        "{text}"
    );
    assert!(b2.broker.runtime("policy", "/", "", "broken").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reevaluating_ten_thousand_queues() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    for i in 0..10_000 {
        ch.queue_declare(
            format!("many.{i}").as_str().into(),
            QueueDeclareOptions {
                nowait: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    assert!(
        eventually(Duration::from_secs(60), || b
            .broker
            .vhost("/")
            .is_some_and(|v| v.queue_count() >= 10_000))
        .await
    );
    let started = std::time::Instant::now();
    admin(&b, policy("many", "^many\\.", 0, json!({"max-length": 9}))).await;
    let elapsed = started.elapsed();
    tracing::info!(?elapsed, "10,000 queues re-evaluated");
    assert_eq!(queue(&b, "many.9999").policy().args.max_length, Some(9));
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    // Consumers see the limit too (a real delivery from a re-evaluated queue).
    let mut consumer = ch
        .basic_consume(
            "many.5".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    ch.basic_publish(
        "".into(),
        "many.5".into(),
        BasicPublishOptions::default(),
        b"hi",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let d = timeout(WAIT, consumer.next())
        .await
        .expect("in time")
        .expect("a delivery")
        .expect("ok");
    assert_eq!(d.data, b"hi");
}
