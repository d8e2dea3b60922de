//! Crash test: the `warren` binary is killed with SIGKILL at random moments while a publisher
//! streams persistent messages with confirms; after every restart, every confirmed message must
//! still be there (at least once) and nothing read back may be corrupt.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 25;
const QUEUE: &str = "crash-test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start(data_dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--log-level",
            "warn",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("warren starts")
}

async fn connect(port: u16) -> Connection {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Connection::connect(&uri, ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("broker did not come up: {e}"),
        }
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut acked = BTreeSet::new();
    let mut next_seq = 0u64;

    let mut child = start(dir.path(), port);
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
        let _ = c.close(200, "ok".into()).await;
    }
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
        next_seq += 1_000_000;
        let delay = rand::thread_rng().gen_range(30..250);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
        child = start(dir.path(), port);
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
    child.kill().expect("kill");
    let _ = child.wait();

    let confirmed = confirmed.lock().expect("lock").clone();
    let _ = writeln!(
        std::io::stderr(),
        "crash test: {ROUNDS} kills, {} confirmed, {} acked, {} found at the end",
        confirmed.len(),
        acked.len(),
        found.len()
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
