//! Crash test for streams: the `warren` binary is killed with SIGKILL at random moments while
//! a publisher appends to a stream with confirms (small segments, so they roll); after the
//! restarts, reading the stream from `first` must give every confirmed message, intact, at
//! consecutive offsets (the `x-stream-offset` header of delivery i is i), and the offsets
//! must go on after the last restart.

mod common;
use common::{connect, finish, free_port, start_ready};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use rand::Rng;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: usize = 8;
const STREAM: &str = "crash-stream";

fn body(seq: u64) -> Vec<u8> {
    let mut b = format!("seq={seq};").into_bytes();
    b.extend(std::iter::repeat_n(
        b'a' + (seq % 26) as u8,
        50 + (seq % 200) as usize,
    ));
    b
}

fn parse(data: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(data).ok()?;
    let (head, _) = s.split_once(';')?;
    let seq: u64 = head.strip_prefix("seq=")?.parse().ok()?;
    (data == body(seq).as_slice()).then_some(seq)
}

async fn publish_until_killed(port: u16, first: u64, confirmed: Arc<Mutex<BTreeSet<u64>>>) {
    let conn = connect(port).await;
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    let mut seq = first;
    loop {
        let mut batch = Vec::new();
        for _ in 0..20 {
            match ch
                .basic_publish(
                    "".into(),
                    STREAM.into(),
                    BasicPublishOptions::default(),
                    &body(seq),
                    BasicProperties::default(),
                )
                .await
            {
                Ok(c) => batch.push((seq, c)),
                Err(_) => return,
            }
            seq += 1;
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

/// Reads the whole stream from `first`: (x-stream-offset, seq) until nothing comes for a
/// while.
async fn read_all(port: u16) -> Vec<(i64, u64)> {
    let c = connect(port).await;
    let ch = c.create_channel().await.expect("channel");
    ch.basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(LongString::from("first")),
    );
    let mut k = ch
        .basic_consume(
            STREAM.into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume");
    let mut out = Vec::new();
    // Nothing publishes any more, so the stream has an end; the bound turns a broker that
    // delivers without end into a failure, not a hung CI run.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), k.next()).await {
        assert!(
            std::time::Instant::now() < deadline,
            "still delivering after 120 s ({} so far)",
            out.len()
        );
        let d = d.expect("delivery");
        let offset = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(o)) => o,
            other => panic!("x-stream-offset header, got {other:?}"),
        };
        let seq = parse(&d.data).expect("no corrupt message is ever delivered");
        out.push((offset, seq));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let _ = c.close(200, "ok".into()).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_stream_messages_survive_kill_9_at_their_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut child = start_ready(dir.path(), port).await;
    {
        let c = connect(port).await;
        let ch = c.create_channel().await.expect("channel");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("stream")),
        );
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongInt(20_000),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(STREAM.into(), durable, args)
            .await
            .expect("declare");
        let _ = c.close(200, "ok".into()).await;
    }
    let mut next_seq = 0u64;
    for _ in 0..ROUNDS {
        let publisher = tokio::spawn(publish_until_killed(port, next_seq, confirmed.clone()));
        next_seq += 1_000_000;
        let delay = rand::thread_rng().gen_range(50..300);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        finish(publisher).await;
        child = start_ready(dir.path(), port).await;
    }

    let found = read_all(port).await;
    child.kill().expect("kill");
    let _ = child.wait();
    let confirmed = confirmed.lock().expect("lock").clone();
    let _ = writeln!(
        std::io::stderr(),
        "stream crash test: {ROUNDS} kills, {} confirmed, {} in the stream",
        confirmed.len(),
        found.len()
    );
    assert!(
        confirmed.len() > ROUNDS * 10,
        "the test published too little: {}",
        confirmed.len()
    );
    for (i, (offset, _)) in found.iter().enumerate() {
        assert_eq!(*offset, i as i64, "offsets are consecutive from 0");
    }
    let seqs: BTreeSet<u64> = found.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs.len(), found.len(), "no message twice");
    let lost: Vec<u64> = confirmed.difference(&seqs).copied().collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
