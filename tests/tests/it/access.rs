//! Access control (issue 13): users with RabbitMQ password hashes, vhosts, permissions,
//! topic permissions, limits and the definitions import, with lapin over TCP. The denials'
//! codes and texts are those RabbitMQ 3.10.8 sent for the same operations (checked with pika
//! against a local 3.10.8 loaded with the same definitions).

use futures_lite::{Stream, StreamExt};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Event};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::timeout;
use warren_core::broker::definitions;
use warren_core::metadata::{Command, PermissionDef};
use warren_tests::{eventually, TestBroker};

use crate::errors::{amqp, assert_amqp};

const WAIT: Duration = Duration::from_secs(10);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rabbitmq-3.10.8-definitions.json")
}

/// A broker loaded with the definitions RabbitMQ 3.10.8 exported (`GET /api/definitions`).
async fn import_fixture(b: &TestBroker) {
    let defs = definitions::load(&fixture()).expect("the fixture parses");
    b.broker
        .import_definitions(defs)
        .await
        .expect("the fixture imports");
}

fn uri(b: &TestBroker, user: &str, pass: &str, vhost: &str) -> String {
    let vhost = if vhost == "/" { "%2f" } else { vhost };
    format!("amqp://{user}:{pass}@{}/{vhost}", b.addr)
}

async fn try_connect(
    b: &TestBroker,
    user: &str,
    pass: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    timeout(
        WAIT,
        Connection::connect(
            &uri(b, user, pass, vhost),
            lapin::ConnectionProperties::default(),
        ),
    )
    .await
    .expect("connect in time")
}

async fn connect(b: &TestBroker, user: &str, pass: &str, vhost: &str) -> (Connection, Channel) {
    let c = try_connect(b, user, pass, vhost)
        .await
        .unwrap_or_else(|e| panic!("{user} logs in to {vhost}: {e}"));
    let ch = c.create_channel().await.expect("channel");
    (c, ch)
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

/// A soft error closed `ch`; its connection still opens channels.
async fn channel_closed_connection_ok(c: &Connection, ch: &Channel) {
    assert!(
        eventually(WAIT, || !ch.status().connected()).await,
        "channel closed"
    );
    assert!(c.status().connected(), "connection still open");
    c.create_channel()
        .await
        .expect("a new channel on the same connection");
}

/// Publishes with confirms and returns the outcome of the confirm.
async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    props: BasicProperties,
) -> lapin::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"m",
        props,
    )
    .await?
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_definitions_import_and_users_log_in_with_their_rabbitmq_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    import_fixture(&b).await;
    // The passwords these users had on RabbitMQ 3.10.8 (only their hashes are in the file).
    for (user, pass, vhost) in [
        ("admin", "adminpass", "prod"),
        ("admin", "adminpass", "staging"),
        ("app", "app-secret", "prod"),
        ("reader", "readpass", "prod"),
        ("guest", "guest", "/"),
    ] {
        let (c, _ch) = connect(&b, user, pass, vhost).await;
        c.close(200, "bye".into()).await.expect("close");
    }
    let e = try_connect(&b, "admin", "wrong", "prod")
        .await
        .expect_err("bad password");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    assert!(b.broker.failed_logins() >= 1, "failed login counted");
    // Queues, exchanges (with arguments) and bindings came along: a publish to the topic
    // exchange reaches the bound queue; the policy is stored.
    let (c, ch) = connect(&b, "admin", "adminpass", "prod").await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish(&ch, "app.events", "app.created", persistent)
        .await
        .expect("routed and confirmed");
    assert_eq!(warren_tests::message_count(&ch, "app.q").await, 1);
    assert!(b.broker.runtime("policy", "prod", "", "ttl").is_some());
    c.close(200, "bye".into()).await.expect("close");
    // Importing again changes nothing: not one record is appended to the metadata log.
    let log = dir.path().join("metadata/log");
    let before = std::fs::metadata(&log).expect("log").len();
    import_fixture(&b).await;
    assert_eq!(
        std::fs::metadata(&log).expect("log").len(),
        before,
        "idempotent"
    );
    b.stop().await;
    // Users, vhosts, permissions, limits and topology survive a restart without the file.
    let b = TestBroker::start_durable(dir.path()).await;
    let (c, ch) = connect(&b, "app", "app-secret", "prod").await;
    assert_eq!(warren_tests::message_count(&ch, "app.q").await, 1);
    let e = ch
        .queue_declare(
            "other.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("permissions kept");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to queue 'other.q' in vhost 'prod' refused for user 'app'",
    );
    drop(c);
    let e = try_connect(&b, "app", "app-secret", "staging")
        .await
        .expect_err("no permissions");
    assert_amqp(
        &e,
        530,
        "NOT_ALLOWED - access to vhost 'staging' refused for user 'app'",
    );
    let (_c1, _) = connect(&b, "admin", "adminpass", "staging").await;
    let (_c2, _) = connect(&b, "admin", "adminpass", "staging").await;
    let e = try_connect(&b, "admin", "adminpass", "staging")
        .await
        .expect_err("limit kept");
    assert_amqp(
        &e,
        530,
        "NOT_ALLOWED - access to vhost 'staging' refused for user 'admin': connection limit (2) is reached",
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_have_rabbitmqs_codes_and_texts() {
    let b = TestBroker::start().await;
    import_fixture(&b).await;
    // configure on the queue
    let (c, ch) = connect(&b, "app", "app-secret", "prod").await;
    let e = ch
        .queue_declare(
            "other.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to queue 'other.q' in vhost 'prod' refused for user 'app'",
    );
    channel_closed_connection_ok(&c, &ch).await;
    // a passive declare needs no permission (as in RabbitMQ)
    let (ca, cha) = connect(&b, "admin", "adminpass", "prod").await;
    cha.queue_declare(
        "other.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("admin declares");
    let ch = c.create_channel().await.expect("channel");
    warren_tests::message_count(&ch, "other.q").await;
    // read on the queue
    let e = ch
        .basic_get("other.q".into(), BasicGetOptions::default())
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to queue 'other.q' in vhost 'prod' refused for user 'app'",
    );
    channel_closed_connection_ok(&c, &ch).await;
    let ch = c.create_channel().await.expect("channel");
    let e = ch
        .basic_consume(
            "other.q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to queue 'other.q' in vhost 'prod' refused for user 'app'",
    );
    // read on the exchange for queue.bind (write on app.q is granted)
    let ch = c.create_channel().await.expect("channel");
    let e = ch
        .queue_bind(
            "app.q".into(),
            "amq.topic".into(),
            "payments.x".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to exchange 'amq.topic' in vhost 'prod' refused for user 'app'",
    );
    // write on the dead-letter exchange
    let ch = c.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("other.dlx".into()),
    );
    let e = ch
        .queue_declare("app.dlq".into(), QueueDeclareOptions::default(), args)
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to exchange 'other.dlx' in vhost 'prod' refused for user 'app'",
    );
    // topic permission on the routing key; an allowed key passes
    let ch = c.create_channel().await.expect("channel");
    publish(
        &ch,
        "amq.topic",
        "payments.ok.1",
        BasicProperties::default(),
    )
    .await
    .expect("allowed key");
    let e = publish(&ch, "amq.topic", "payments.x", BasicProperties::default())
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to topic 'payments.x' in exchange 'amq.topic' in vhost 'prod' refused for user 'app'",
    );
    channel_closed_connection_ok(&c, &ch).await;
    // an impersonator may set another user_id
    let ch = c.create_channel().await.expect("channel");
    publish(
        &ch,
        "app.events",
        "app.x",
        BasicProperties::default().with_user_id(ShortString::from("bob")),
    )
    .await
    .expect("impersonator");
    // write on the exchange; the default exchange is checked as `amq.default`
    let (cr, chr) = connect(&b, "reader", "readpass", "prod").await;
    let e = publish(&chr, "app.events", "k", BasicProperties::default())
        .await
        .expect_err("refused");
    assert_amqp(&e, 403, "ACCESS_REFUSED - access to exchange 'app.events' in vhost 'prod' refused for user 'reader'");
    let chr = cr.create_channel().await.expect("channel");
    let e = publish(&chr, "", "k", BasicProperties::default())
        .await
        .expect_err("refused");
    assert_amqp(&e, 403, "ACCESS_REFUSED - access to exchange 'amq.default' in vhost 'prod' refused for user 'reader'");
    channel_closed_connection_ok(&cr, &chr).await;
    // user_id must be the login for others
    let cha = ca.create_channel().await.expect("channel");
    let e = publish(
        &cha,
        "",
        "app.q",
        BasicProperties::default().with_user_id(ShortString::from("bob")),
    )
    .await
    .expect_err("refused");
    assert_amqp(
        &e,
        406,
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'admin'",
    );
    // vhost without permissions
    let e = try_connect(&b, "app", "app-secret", "staging")
        .await
        .expect_err("refused");
    assert_amqp(
        &e,
        530,
        "NOT_ALLOWED - access to vhost 'staging' refused for user 'app'",
    );
    // vhost limits
    let (cs, chs) = connect(&b, "admin", "adminpass", "staging").await;
    for i in 0..3 {
        chs.queue_declare(
            format!("q{i}").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("under the limit");
    }
    let e = chs
        .queue_declare(
            "q3".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("limit");
    assert_amqp(&e, 406, "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost 'staging' (3) is reached");
    channel_closed_connection_ok(&cs, &chs).await;
    let (_c2, _) = connect(&b, "admin", "adminpass", "staging").await;
    let e = try_connect(&b, "admin", "adminpass", "staging")
        .await
        .expect_err("limit");
    assert_amqp(
        &e,
        530,
        "NOT_ALLOWED - access to vhost 'staging' refused for user 'admin': connection limit (2) is reached",
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_changes_apply_to_the_next_operation_and_a_deleted_user_is_disconnected() {
    let b = TestBroker::start().await;
    import_fixture(&b).await;
    let (c, ch) = connect(&b, "app", "app-secret", "prod").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for _ in 0..3 {
        // The same exchange and key: the channel's cached decision.
        ch.basic_publish(
            "app.events".into(),
            "app.k".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("sent")
        .await
        .expect("confirmed");
    }
    b.broker
        .admin(Command::SetPermissions(PermissionDef {
            user: "app".into(),
            vhost: "prod".into(),
            configure: "^app\\.".into(),
            write: "^$".into(),
            read: "^app\\.".into(),
        }))
        .await
        .expect("permissions changed");
    let e = ch
        .basic_publish(
            "app.events".into(),
            "app.k".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("sent")
        .await
        .expect_err("revoked at once");
    assert_amqp(
        &e,
        403,
        "ACCESS_REFUSED - access to exchange 'app.events' in vhost 'prod' refused for user 'app'",
    );
    channel_closed_connection_ok(&c, &ch).await;
    // Clearing the user's permissions refuses every operation; the connection stays.
    b.broker
        .admin(Command::ClearPermissions {
            user: "app".into(),
            vhost: "prod".into(),
        })
        .await
        .expect("cleared");
    let ch = c.create_channel().await.expect("channel");
    let e = ch
        .queue_declare(
            "app.new".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("no permissions");
    assert_eq!(amqp(&e).0, 403);
    // Deleting the user closes its connections with 320.
    let mut events = Box::pin(c.events_listener());
    b.broker
        .admin(Command::DeleteUser { name: "app".into() })
        .await
        .expect("deleted");
    let e = next_error(&mut events).await;
    assert_amqp(&e, 320, "CONNECTION_FORCED - user 'app' is deleted");
    let e = try_connect(&b, "app", "app-secret", "prod")
        .await
        .expect_err("gone");
    assert_eq!(amqp(&e).0, 403);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_under_load_closes_its_connections_and_removes_its_files_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = TestBroker::start_durable(dir.path()).await;
    b.broker
        .admin(Command::AddVhost { name: "v2".into() })
        .await
        .expect("vhost added");
    b.broker
        .admin(Command::SetPermissions(PermissionDef {
            user: "guest".into(),
            vhost: "v2".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }))
        .await
        .expect("permissions");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // The same queue name in both vhosts: unrelated queues.
    let (c1, ch1) = connect(&b, "guest", "guest", "/").await;
    let (c2, ch2) = connect(&b, "guest", "guest", "v2").await;
    for ch in [&ch1, &ch2] {
        ch.queue_declare("jobs".into(), durable, FieldTable::default())
            .await
            .expect("declare");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
    }
    for _ in 0..50 {
        ch1.basic_publish(
            "".into(),
            "jobs".into(),
            BasicPublishOptions::default(),
            b"keep",
            persistent.clone(),
        )
        .await
        .expect("sent")
        .await
        .expect("confirmed");
    }
    // v2 is under load while it is deleted.
    let loader = tokio::spawn(async move {
        let mut sent = 0u32;
        while ch2
            .basic_publish(
                "".into(),
                "jobs".into(),
                BasicPublishOptions::default(),
                b"go",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .is_ok()
        {
            sent += 1;
            if sent.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
        sent
    });
    let v2_dir = dir.path().join("vhosts").join("7632");
    assert!(
        eventually(WAIT, || v2_dir
            .join("queues")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()))
        .await
    );
    let mut events = Box::pin(c2.events_listener());
    b.broker
        .admin(Command::DeleteVhost { name: "v2".into() })
        .await
        .expect("vhost deleted");
    let e = next_error(&mut events).await;
    assert_amqp(&e, 320, "CONNECTION_FORCED - vhost 'v2' is deleted");
    let sent = timeout(WAIT, loader)
        .await
        .expect("loader stops")
        .expect("join");
    assert!(sent > 0);
    assert!(
        eventually(WAIT, || !v2_dir.exists()).await,
        "v2's files removed"
    );
    assert_eq!(
        warren_tests::message_count(&ch1, "jobs").await,
        50,
        "other vhosts untouched"
    );
    let e = try_connect(&b, "guest", "guest", "v2")
        .await
        .expect_err("gone");
    assert_amqp(&e, 530, "NOT_ALLOWED - vhost v2 not found");
    c1.close(200, "bye".into()).await.expect("close");
    b.stop().await;
    // After a restart: v2 stays deleted, `/` keeps its messages.
    let b = TestBroker::start_durable(dir.path()).await;
    assert!(b.broker.vhost("v2").is_none());
    let (_c, ch) = connect(&b, "guest", "guest", "/").await;
    assert_eq!(warren_tests::message_count(&ch, "jobs").await, 50);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_channel_limit_counts_every_connection_of_the_user() {
    let b = TestBroker::start().await;
    b.broker
        .admin(Command::PutUser(warren_core::metadata::UserDef {
            name: "lim".into(),
            password_hash: warren_core::auth::password::hash("pw"),
            hashing_algorithm: warren_core::auth::password::SHA256.into(),
            tags: vec![],
            max_connections: None,
            max_channels: Some(2),
        }))
        .await
        .expect("user");
    b.broker
        .admin(Command::SetPermissions(PermissionDef {
            user: "lim".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }))
        .await
        .expect("permissions");
    let (c1, ch1) = connect(&b, "lim", "pw", "/").await;
    let (c2, _ch2) = connect(&b, "lim", "pw", "/").await;
    let e = c2
        .create_channel()
        .await
        .expect_err("third channel of the user");
    assert_amqp(
        &e,
        530,
        "NOT_ALLOWED - number of channels opened for user 'lim' has reached the maximum allowed user limit of (2)",
    );
    // A closed channel frees its place.
    ch1.close(200, "bye".into()).await.expect("close");
    c1.create_channel().await.expect("under the limit again");
    b.stop().await;
}
