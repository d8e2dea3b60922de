//! Message rates (RabbitMQ's `*_details: {"rate": ...}`): a sampler task copies the broker's
//! monotonic counters every `management.collect_statistics_interval` ms (broker totals, per
//! vhost, per queue, per exchange, keyed by name) and turns the last two samples into
//! per-second rates. Handlers read the rates already computed; nothing waits on the sampler.
//!
//! The copy is taken on a blocking thread from the core's read-only views (each takes its
//! lock only to clone a list), the rates are computed with no lock held, and the result is
//! swapped in under a write lock held for one pointer assignment, so listing 10,000 queues
//! never stalls AMQP traffic or an HTTP reader.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};
use warren_core::stats::MessageTotals;
use warren_core::Broker;

/// One object's counters at one instant: its message counters and queue gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Message counters (monotonic).
    pub msg: MessageTotals,
    /// Ready messages (queues, vhosts and the broker).
    pub ready: u64,
    /// Unacknowledged messages.
    pub unacked: u64,
}

/// Per-second rates of one object, by RabbitMQ field name (`publish`, `deliver_get`,
/// `messages_ready`, ...). A field never seen has rate 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    fields: Vec<(&'static str, f64)>,
}

impl Rates {
    /// The rate of `field` per second (0.0 if unknown).
    pub fn rate(&self, field: &str) -> f64 {
        self.fields
            .iter()
            .find(|(k, _)| *k == field)
            .map_or(0.0, |(_, v)| *v)
    }

    fn between(old: &Counts, new: &Counts, secs: f64) -> Self {
        let per = |a: u64, b: u64| {
            if secs > 0.0 {
                (b as f64 - a as f64) / secs
            } else {
                0.0
            }
        };
        let mut fields: Vec<(&'static str, f64)> = old
            .msg
            .fields()
            .into_iter()
            .zip(new.msg.fields())
            .map(|((k, a), (_, b))| (k, per(a, b)))
            .collect();
        fields.push((
            "deliver_get",
            per(old.msg.deliver_get(), new.msg.deliver_get()),
        ));
        fields.push(("messages_ready", per(old.ready, new.ready)));
        fields.push(("messages_unacknowledged", per(old.unacked, new.unacked)));
        fields.push((
            "messages",
            per(old.ready + old.unacked, new.ready + new.unacked),
        ));
        Self { fields }
    }
}

/// The counters of everything at one instant.
#[derive(Debug, Default)]
struct Sample {
    broker: Counts,
    vhosts: HashMap<String, Counts>,
    queues: HashMap<String, HashMap<String, Counts>>,
    exchanges: HashMap<String, HashMap<String, Counts>>,
}

/// The rates computed from the last two samples.
#[derive(Debug, Default)]
struct Computed {
    broker: Rates,
    vhosts: HashMap<String, Rates>,
    queues: HashMap<String, HashMap<String, Rates>>,
    exchanges: HashMap<String, HashMap<String, Rates>>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<(Instant, Arc<Sample>)>,
    rates: Arc<Computed>,
    samples: u64,
}

/// The rates at one instant, read without locking per object.
#[derive(Debug, Clone)]
pub struct Snapshot(Arc<Computed>);

impl Snapshot {
    /// A queue's rates.
    pub fn queue(&self, vhost: &str, name: &str) -> Option<&Rates> {
        self.0.queues.get(vhost)?.get(name)
    }
    /// An exchange's rates.
    pub fn exchange(&self, vhost: &str, name: &str) -> Option<&Rates> {
        self.0.exchanges.get(vhost)?.get(name)
    }
}

/// The rate table every handler reads.
#[derive(Debug, Default)]
pub struct RateTable {
    state: RwLock<State>,
}

fn nested(
    old: &HashMap<String, HashMap<String, Counts>>,
    new: &HashMap<String, HashMap<String, Counts>>,
    secs: f64,
) -> HashMap<String, HashMap<String, Rates>> {
    new.iter()
        .map(|(vh, objs)| {
            let before = old.get(vh);
            let rates = objs
                .iter()
                .map(|(name, c)| {
                    let o = before
                        .and_then(|m| m.get(name))
                        .copied()
                        .unwrap_or_default();
                    (name.clone(), Rates::between(&o, c, secs))
                })
                .collect();
            (vh.clone(), rates)
        })
        .collect()
}

impl RateTable {
    /// The broker's rates (overview).
    pub fn broker(&self) -> Rates {
        self.computed().broker.clone()
    }
    /// A vhost's rates.
    pub fn vhost(&self, vhost: &str) -> Option<Rates> {
        self.computed().vhosts.get(vhost).cloned()
    }
    /// A queue's rates (for the queue list handlers).
    pub fn queue(&self, vhost: &str, name: &str) -> Option<Rates> {
        self.computed().queues.get(vhost)?.get(name).cloned()
    }
    /// An exchange's rates (for the exchange list handlers).
    pub fn exchange(&self, vhost: &str, name: &str) -> Option<Rates> {
        self.computed().exchanges.get(vhost)?.get(name).cloned()
    }
    /// The rates as they are now, for one big listing (one lock for the whole list; see
    /// [`Snapshot`]).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.computed())
    }
    /// How many samples were taken so far.
    pub fn samples(&self) -> u64 {
        self.read().samples
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn computed(&self) -> Arc<Computed> {
        self.read().rates.clone()
    }

    /// Takes one sample of `broker` now and recomputes the rates (blocking: call it off the
    /// event loop; it walks every queue and exchange).
    pub fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let new = Arc::new(take(broker));
        let last = self.read().last.clone();
        let computed = match &last {
            Some((at, old)) => {
                let secs = now.duration_since(*at).as_secs_f64();
                Computed {
                    broker: Rates::between(&old.broker, &new.broker, secs),
                    vhosts: new
                        .vhosts
                        .iter()
                        .map(|(k, c)| {
                            let o = old.vhosts.get(k).copied().unwrap_or_default();
                            (k.clone(), Rates::between(&o, c, secs))
                        })
                        .collect(),
                    queues: nested(&old.queues, &new.queues, secs),
                    exchanges: nested(&old.exchanges, &new.exchanges, secs),
                }
            }
            None => Computed::default(),
        };
        let computed = Arc::new(computed);
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.last = Some((now, new));
        st.rates = computed;
        st.samples += 1;
    }
}

fn take(broker: &Broker) -> Sample {
    let mut s = Sample {
        broker: Counts {
            msg: broker.message_totals(),
            ..Counts::default()
        },
        ..Sample::default()
    };
    for name in broker.vhost_names() {
        let Some(vh) = broker.vhost(&name) else {
            continue;
        };
        let mut vc = Counts {
            msg: broker.vhost_message_totals(&name).unwrap_or_default(),
            ..Counts::default()
        };
        let mut queues = HashMap::new();
        for q in vh.queues() {
            let c = Counts {
                msg: q.info().stats.totals(),
                ready: u64::from(q.message_count()),
                unacked: q.unacked_count(),
            };
            vc.ready += c.ready;
            vc.unacked += c.unacked;
            queues.insert(q.name().to_string(), c);
        }
        let exchanges = vh
            .exchanges()
            .into_iter()
            .map(|x| {
                (
                    x.name.to_string(),
                    Counts {
                        msg: x.stats.totals(),
                        ..Counts::default()
                    },
                )
            })
            .collect();
        s.broker.ready += vc.ready;
        s.broker.unacked += vc.unacked;
        s.vhosts.insert(name.clone(), vc);
        s.queues.insert(name.clone(), queues);
        s.exchanges.insert(name, exchanges);
    }
    s
}

/// Starts the sampler: every `management.collect_statistics_interval` ms until the table is
/// dropped.
pub fn spawn_sampler(broker: Arc<Broker>, table: &Arc<RateTable>) {
    let every = Duration::from_millis(broker.config.management.collect_statistics_interval.max(10));
    let weak: Weak<RateTable> = Arc::downgrade(table);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(t) = weak.upgrade() else { return };
            let b = broker.clone();
            if tokio::task::spawn_blocking(move || t.sample(&b))
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

/// Which counters an object kind reports in `message_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The overview, a vhost, a channel: everything but `publish_in`/`publish_out`.
    Messages,
    /// An exchange: `publish_in` and `publish_out`.
    Exchange,
    /// A queue: as [`Kind::Messages`] without `confirm`, `return_unroutable` and
    /// `drop_unroutable` (a queue does not count them).
    Queue,
}

impl Kind {
    fn reports(self, field: &str) -> bool {
        let exchange_field = matches!(field, "publish_in" | "publish_out");
        match self {
            Kind::Exchange => exchange_field,
            Kind::Messages => !exchange_field,
            Kind::Queue => {
                !exchange_field
                    && !matches!(field, "confirm" | "return_unroutable" | "drop_unroutable")
            }
        }
    }
}

/// RabbitMQ's `message_stats` object, serialised straight from the counters: each counter
/// and its `*_details: {"rate": r}` (no JSON tree is built; see [`message_stats`] for one).
#[derive(Debug, Clone, Copy)]
pub struct MessageStatsJson<'a> {
    /// The counters.
    pub totals: &'a MessageTotals,
    /// Their rates, if sampled.
    pub rates: Option<&'a Rates>,
    /// Which counters the object reports.
    pub kind: Kind,
}

impl Serialize for MessageStatsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let mut put = |k: &'static str, v: u64| -> Result<(), S::Error> {
            m.serialize_entry(k, &v)?;
            m.serialize_entry(&DetailsKey(k), &Details::of(self.rates, k))
        };
        for (k, v) in self.totals.fields() {
            if self.kind.reports(k) {
                put(k, v)?;
            }
        }
        if self.kind != Kind::Exchange {
            put("deliver_get", self.totals.deliver_get())?;
        }
        m.end()
    }
}

/// `{field}_details` as a map key, written without allocating.
struct DetailsKey(&'static str);

impl Serialize for DetailsKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}_details", self.0))
    }
}

/// `{"rate": r}`.
#[derive(Debug, Clone, Copy)]
pub struct Details(pub f64);

impl Details {
    /// The rate of `field` in `rates` (0.0 when not sampled).
    pub fn of(rates: Option<&Rates>, field: &str) -> Self {
        Self(rates.map_or(0.0, |r| r.rate(field)))
    }
}

impl Serialize for Details {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("rate", &self.0)?;
        m.end()
    }
}

/// RabbitMQ's `message_stats` object as a JSON tree (for the small answers: overview, vhosts).
pub fn message_stats(totals: &MessageTotals, rates: Option<&Rates>, kind: Kind) -> Value {
    serde_json::to_value(MessageStatsJson {
        totals,
        rates,
        kind,
    })
    .unwrap_or_default()
}

/// `{"rate": r}` of `field`.
pub fn details(rates: Option<&Rates>, field: &str) -> Value {
    json!({ "rate": rates.map_or(0.0, |r| r.rate(field)) })
}
