//! A model-based property test: random sequences of publish, get, ack, nack, reject (with and
//! without requeue), recover, channel close and restart against an in-process broker over lapin,
//! compared after every step with a small reference model of one classic queue's semantics:
//! FIFO order, requeued messages back at their original position with `redelivered` set,
//! dead-lettering of rejected messages, the ready count, and what survives a restart (persistent
//! messages of a durable queue, unacked ones coming back redelivered).

use std::collections::BTreeMap;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use proptest::prelude::*;
use warren_tests::{message_count, TestBroker};

const QUEUE: &str = "model-q";
const DLQ: &str = "model-dlq";

#[derive(Debug, Clone)]
enum Op {
    Publish,
    Get,
    /// Ack the `n`-th oldest unacked delivery (modulo how many there are).
    Ack(usize),
    /// Nack (`requeue`) the `n`-th oldest unacked delivery.
    Nack(usize, bool),
    /// Reject (`requeue`) the `n`-th oldest unacked delivery.
    Reject(usize, bool),
    /// `basic.recover` with requeue: every unacked delivery of the channel goes back.
    Recover,
    /// The channel closes: its unacked deliveries go back.
    CloseChannel,
    /// The broker restarts on its data dir.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Publish),
        4 => Just(Op::Get),
        2 => (0usize..8).prop_map(Op::Ack),
        1 => (0usize..8, any::<bool>()).prop_map(|(n, r)| Op::Nack(n, r)),
        1 => (0usize..8, any::<bool>()).prop_map(|(n, r)| Op::Reject(n, r)),
        1 => Just(Op::Recover),
        1 => Just(Op::CloseChannel),
        1 => Just(Op::Restart),
    ]
}

/// The reference: ready messages by position, unacked ones by delivery tag, dead-lettered
/// bodies in order.
#[derive(Debug, Default)]
struct Model {
    next: u64,
    /// position -> (body, redelivered)
    ready: BTreeMap<u64, (String, bool)>,
    /// delivery tag -> (position, body), in delivery order
    unacked: BTreeMap<u64, (u64, String)>,
    dead: Vec<String>,
}

impl Model {
    fn publish(&mut self) -> String {
        let body = format!("m{}", self.next);
        self.ready.insert(self.next, (body.clone(), false));
        self.next += 1;
        body
    }

    fn get(&mut self, tag: u64) -> Option<(String, bool)> {
        let (pos, (body, redelivered)) = self.ready.pop_first()?;
        self.unacked.insert(tag, (pos, body.clone()));
        Some((body, redelivered))
    }

    fn nth_tag(&self, n: usize) -> Option<u64> {
        if self.unacked.is_empty() {
            return None;
        }
        self.unacked.keys().nth(n % self.unacked.len()).copied()
    }

    fn settle(&mut self, tag: u64, requeue: Option<bool>) {
        let Some((pos, body)) = self.unacked.remove(&tag) else {
            return;
        };
        match requeue {
            None => {}
            Some(true) => {
                self.ready.insert(pos, (body, true));
            }
            Some(false) => self.dead.push(body),
        }
    }

    fn requeue_all(&mut self) {
        for (_, (pos, body)) in std::mem::take(&mut self.unacked) {
            self.ready.insert(pos, (body, true));
        }
    }
}

struct Client {
    conn: lapin::Connection,
    ch: lapin::Channel,
}

async fn client(b: &TestBroker) -> Client {
    let (conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    Client { conn, ch }
}

async fn declare(c: &Client) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    c.ch.queue_declare(DLQ.into(), durable, FieldTable::default())
        .await
        .expect("dlq");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(b"".to_vec())),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(DLQ.as_bytes().to_vec())),
    );
    c.ch.queue_declare(QUEUE.into(), durable, args)
        .await
        .expect("queue");
}

async fn drain_dead(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) =
        c.ch.basic_get(DLQ.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get dlq")
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

async fn run(ops: Vec<Op>) {
    // Kept (not deleted) if the case fails: a broker whose data dir vanished under it stops the
    // process, which would end proptest's shrinking.
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let mut b = TestBroker::start_durable(&dir).await;
    let mut c = client(&b).await;
    declare(&c).await;
    let mut m = Model::default();
    // Broker delivery tags per model tag (the same numbers; the channel restarts at 1).
    let mut next_tag = 1u64;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Publish => {
                let body = m.publish();
                c.ch.basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            }
            Op::Get => {
                let got =
                    c.ch.basic_get(QUEUE.into(), BasicGetOptions { no_ack: false })
                        .await
                        .expect("get");
                let want = m.get(next_tag);
                match (got, want) {
                    (None, None) => {}
                    (Some(g), Some((body, redelivered))) => {
                        assert_eq!(g.delivery.delivery_tag, next_tag, "step {i}: tag");
                        assert_eq!(
                            String::from_utf8_lossy(&g.delivery.data),
                            body,
                            "step {i}: order"
                        );
                        assert_eq!(g.delivery.redelivered, redelivered, "step {i}: {body}");
                        next_tag += 1;
                    }
                    (g, w) => panic!(
                        "step {i}: broker gave {:?}, model {w:?}",
                        g.map(|g| String::from_utf8_lossy(&g.delivery.data).into_owned())
                    ),
                }
            }
            Op::Ack(n) => {
                if let Some(tag) = m.nth_tag(n) {
                    c.ch.basic_ack(tag, BasicAckOptions::default())
                        .await
                        .expect("ack");
                    m.settle(tag, None);
                }
            }
            Op::Nack(n, requeue) => {
                if let Some(tag) = m.nth_tag(n) {
                    c.ch.basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue,
                        },
                    )
                    .await
                    .expect("nack");
                    m.settle(tag, Some(requeue));
                }
            }
            Op::Reject(n, requeue) => {
                if let Some(tag) = m.nth_tag(n) {
                    c.ch.basic_reject(tag, BasicRejectOptions { requeue })
                        .await
                        .expect("reject");
                    m.settle(tag, Some(requeue));
                }
            }
            Op::Recover => {
                c.ch.basic_recover(BasicRecoverOptions { requeue: true })
                    .await
                    .expect("recover");
                m.requeue_all();
            }
            Op::CloseChannel => {
                c.ch.close(200, "bye".into()).await.expect("close");
                c.ch = c.conn.create_channel().await.expect("channel");
                c.ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .expect("confirms");
                m.requeue_all();
                next_tag = 1;
            }
            Op::Restart => {
                let _ = c.conn.close(200, "bye".into()).await;
                b.stop().await;
                b = TestBroker::start_durable(&dir).await;
                c = client(&b).await;
                m.requeue_all();
                next_tag = 1;
            }
        }
        // After every step: the ready count, and what was dead-lettered, in order.
        assert_eq!(
            message_count(&c.ch, QUEUE).await as usize,
            m.ready.len(),
            "step {i}: ready count"
        );
        let dead = drain_dead(&c).await;
        // Those gets took delivery tags on this channel too.
        next_tag += dead.len() as u64;
        let want: Vec<String> = std::mem::take(&mut m.dead);
        assert_eq!(dead, want, "step {i}: dead-lettered");
    }
    let _ = c.conn.close(200, "bye".into()).await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any sequence of operations leaves the broker where the model says.
    #[test]
    fn one_queue_behaves_as_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(ops));
    }
}
