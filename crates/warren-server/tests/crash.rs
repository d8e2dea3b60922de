//! Crash test: the `warren` binary is killed with SIGKILL at random moments while a publisher
//! streams persistent messages with confirms and another client declares, binds, unbinds and
//! deletes durable queues and exchanges; after the restarts, every confirmed message must
//! still be there (at least once), nothing read back may be corrupt, every acknowledged
//! declaration and binding must be there, and nothing whose deletion was acknowledged may
//! come back.

mod common;
use common::{connect, finish, free_port, start_ready};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use rand::Rng;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: usize = 25;
const QUEUE: &str = "crash-test";
/// The durable exchange the churned queues are bound to.
const EXCHANGE: &str = "crash-x";

fn body(seq: u64) -> Vec<u8> {
    // Sequence number plus a checkable filler, so corruption would show.
    let mut b = format!("seq={seq};").into_bytes();
    b.extend(std::iter::repeat_n(
        b'a' + (seq % 26) as u8,
        100 + (seq % 300) as usize,
    ));
    b
}

fn parse(data: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(data).ok()?;
    let (head, filler) = s.split_once(';')?;
    let seq: u64 = head.strip_prefix("seq=")?.parse().ok()?;
    (data == body(seq).as_slice() && !filler.is_empty()).then_some(seq)
}

/// Publishes persistent messages starting at `first` until the connection dies; records each
/// sequence number whose confirm (basic.ack) arrived.
/// With `tx`, batches of 20 are committed in a transaction instead, and a `commit-ok` counts
/// as the confirmation of its 20 messages.
async fn publish_until_killed(
    port: u16,
    first: u64,
    confirmed: Arc<Mutex<BTreeSet<u64>>>,
    tx: bool,
) {
    let conn = connect(port).await;
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let mode = if tx {
        ch.tx_select().await
    } else {
        ch.confirm_select(ConfirmSelectOptions::default()).await
    };
    if mode.is_err() {
        return;
    }
    let mut seq = first;
    loop {
        let mut batch = Vec::new();
        for _ in 0..20 {
            let props = BasicProperties::default().with_delivery_mode(2);
            match ch
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &body(seq),
                    props,
                )
                .await
            {
                Ok(c) => batch.push((seq, c)),
                Err(_) => return,
            }
            seq += 1;
        }
        if tx {
            if ch.tx_commit().await.is_err() {
                return;
            }
            let mut done = confirmed.lock().expect("lock");
            done.extend(batch.iter().map(|(s, _)| *s));
            continue;
        }
        for (s, c) in batch {
            match c.await {
                Ok(conf) if conf.is_ack() => {
                    confirmed.lock().expect("lock").insert(s);
                }
                _ => return,
            }
        }
    }
}

/// What the topology client was told: acknowledged declarations, bindings, unbindings and
/// deletions. Operations whose reply never came are in neither set (either outcome is fine).
#[derive(Debug, Default)]
struct Topology {
    queues: BTreeSet<String>,
    deleted_queues: BTreeSet<String>,
    bound: BTreeSet<String>,
    unbound: BTreeSet<String>,
    exchanges: BTreeSet<String>,
    deleted_exchanges: BTreeSet<String>,
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares, binds, unbinds and deletes durable queues and exchanges until the connection
/// dies, recording every acknowledged operation.
async fn churn_until_killed(port: u16, round: usize, t: Arc<Mutex<Topology>>) {
    let conn = connect(port).await;
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let name = |i: usize| format!("t-{round}-{i}");
    for i in 0.. {
        let q = name(i);
        if ch
            .queue_declare(q.as_str().into(), durable_queue(), FieldTable::default())
            .await
            .is_err()
        {
            return;
        }
        t.lock().expect("lock").queues.insert(q.clone());
        let bind = ch
            .queue_bind(
                q.as_str().into(),
                EXCHANGE.into(),
                q.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        if bind.is_err() {
            return;
        }
        t.lock().expect("lock").bound.insert(q.clone());
        if i % 3 == 2 {
            let prev = name(i - 1);
            // In flight: neither bound nor unbound until the reply.
            t.lock().expect("lock").bound.remove(&prev);
            let unbind = ch
                .queue_unbind(
                    prev.as_str().into(),
                    EXCHANGE.into(),
                    prev.as_str().into(),
                    FieldTable::default(),
                )
                .await;
            if unbind.is_err() {
                return;
            }
            t.lock().expect("lock").unbound.insert(prev);
        }
        if i % 4 == 3 {
            let old = name(i - 3);
            {
                let mut t = t.lock().expect("lock");
                t.queues.remove(&old);
                t.bound.remove(&old);
                t.unbound.remove(&old);
            }
            if ch
                .queue_delete(old.as_str().into(), QueueDeleteOptions::default())
                .await
                .is_err()
            {
                return;
            }
            t.lock().expect("lock").deleted_queues.insert(old);
        }
        if i % 5 == 0 {
            let x = format!("cx-{round}-{i}");
            let opts = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            if ch
                .exchange_declare(
                    x.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    opts,
                    FieldTable::default(),
                )
                .await
                .is_err()
            {
                return;
            }
            t.lock().expect("lock").exchanges.insert(x);
        }
        if i % 10 == 5 {
            let x = format!("cx-{round}-{}", i - 5);
            t.lock().expect("lock").exchanges.remove(&x);
            if ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .is_err()
            {
                return;
            }
            t.lock().expect("lock").deleted_exchanges.insert(x);
        }
    }
}

/// Whether a passive declare of queue (or exchange) `name` succeeds.
async fn exists(conn: &Connection, name: &str, exchange: bool) -> bool {
    let ch = conn.create_channel().await.expect("channel");
    let passive = if exchange {
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
    } else {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
    };
    if passive {
        let _ = ch.close(200, "ok".into()).await;
    }
    passive
}

/// Checks the recovered topology against what was acknowledged.
async fn check_topology(port: u16, t: &Topology) {
    let conn = connect(port).await;
    for q in &t.queues {
        assert!(exists(&conn, q, false).await, "acknowledged queue {q} lost");
    }
    for q in &t.deleted_queues {
        assert!(
            !exists(&conn, q, false).await,
            "deleted queue {q} came back"
        );
    }
    for x in &t.exchanges {
        assert!(
            exists(&conn, x, true).await,
            "acknowledged exchange {x} lost"
        );
    }
    for x in &t.deleted_exchanges {
        assert!(
            !exists(&conn, x, true).await,
            "deleted exchange {x} came back"
        );
    }
    // Bindings: a message to the exchange with the queue's name as key reaches the queue
    // exactly when the binding is there.
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let probe: Vec<(&String, bool)> = t
        .bound
        .iter()
        .map(|q| (q, true))
        .chain(t.unbound.iter().map(|q| (q, false)))
        .filter(|(q, _)| t.queues.contains(*q))
        .collect();
    for (q, _) in &probe {
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
        ch.basic_publish(
            EXCHANGE.into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"probe",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    for (q, bound) in probe {
        let n = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive")
            .message_count();
        assert_eq!(n, u32::from(bound), "binding of {q} (bound: {bound})");
    }
    let _ = conn.close(200, "ok".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut acked = BTreeSet::new();
    let mut next_seq = 0u64;

    let mut child = start_ready(dir.path(), port).await;
    {
        let c = connect(port).await;
        let ch = c.create_channel().await.expect("channel");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(QUEUE.into(), durable, FieldTable::default())
            .await
            .expect("declare");
        ch.exchange_declare(
            EXCHANGE.into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
        let _ = c.close(200, "ok".into()).await;
    }
    let topology = Arc::new(Mutex::new(Topology::default()));
    for round in 0..ROUNDS {
        // Consume-and-ack a few messages each round, to exercise acks across crashes.
        if round > 0 {
            let c = connect(port).await;
            let ch = c.create_channel().await.expect("channel");
            for _ in 0..5 {
                match ch.basic_get(QUEUE.into(), BasicGetOptions::default()).await {
                    Ok(Some(m)) => {
                        let seq = parse(&m.delivery.data).expect("an intact message");
                        if m.delivery.ack(BasicAckOptions::default()).await.is_ok() {
                            acked.insert(seq);
                        }
                    }
                    _ => break,
                }
            }
            let _ = c.close(200, "ok".into()).await;
        }
        // Odd rounds publish in transactions: commit-ok is as binding as a confirm.
        let publisher = tokio::spawn(publish_until_killed(
            port,
            next_seq,
            confirmed.clone(),
            round % 2 == 1,
        ));
        let churner = tokio::spawn(churn_until_killed(port, round, topology.clone()));
        next_seq += 1_000_000;
        let delay = rand::thread_rng().gen_range(30..250);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        finish(publisher).await;
        finish(churner).await;
        child = start_ready(dir.path(), port).await;
    }

    // Drain everything and check.
    let c = connect(port).await;
    let ch = c.create_channel().await.expect("channel");
    let mut found = BTreeSet::new();
    while let Some(m) = ch
        .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        let seq = parse(&m.delivery.data).expect("no corrupt message is ever delivered");
        found.insert(seq);
    }
    let _ = c.close(200, "ok".into()).await;
    let topology = std::mem::take(&mut *topology.lock().expect("lock"));
    check_topology(port, &topology).await;
    child.kill().expect("kill");
    let _ = child.wait();

    let confirmed = confirmed.lock().expect("lock").clone();
    let _ = writeln!(
        std::io::stderr(),
        "crash test: {ROUNDS} kills, {} confirmed, {} acked, {} found at the end; topology: \
         {} queues kept, {} deleted, {} bindings kept, {} unbound, {} exchanges kept, {} deleted",
        confirmed.len(),
        acked.len(),
        found.len(),
        topology.queues.len(),
        topology.deleted_queues.len(),
        topology.bound.len(),
        topology.unbound.len(),
        topology.exchanges.len(),
        topology.deleted_exchanges.len()
    );
    assert!(
        topology.queues.len() > ROUNDS && topology.deleted_queues.len() > ROUNDS / 2,
        "the churn did too little: {topology:?}"
    );
    assert!(
        confirmed.len() > ROUNDS * 10,
        "the test published too little: {}",
        confirmed.len()
    );
    let lost: Vec<u64> = confirmed
        .iter()
        .filter(|s| !found.contains(s) && !acked.contains(s))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
