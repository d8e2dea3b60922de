//! Policies and operator policies (RabbitMQ 3.10.8's `rabbit_policy`): validation, matching
//! and the merge with a queue's own arguments.
//!
//! A policy is stored as a [`RuntimeDef`](crate::metadata::RuntimeDef) (kind `policy` or
//! `operator_policy`) holding RabbitMQ's JSON `{pattern, apply-to, definition, priority}`.
//! [`Policy::parse`] validates it with RabbitMQ's texts (the broker's check step refuses a bad
//! one before it is logged); a vhost keeps its parsed policies as a [`PolicySet`] and, on every
//! policy change and every declaration, computes each object's [`Applied`] policy: which
//! policy and operator policy match, the merged definition, and for a queue the effective
//! [`QueueArgs`] it runs with. Nothing is looked up per message: the queue keeps the result.

use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::{AmqpError, AmqpResult};
use crate::queue::{args::parse_duration, Overflow, QueueArgs, QueueKind};

/// What a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    /// `all`: queues and exchanges.
    All,
    /// `queues`: every queue type.
    Queues,
    /// `exchanges`.
    Exchanges,
    /// `classic_queues`.
    ClassicQueues,
    /// `quorum_queues`.
    QuorumQueues,
    /// `streams`.
    Streams,
}

/// What a policy is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A queue of this type.
    Queue(QueueKind),
    /// An exchange.
    Exchange,
}

impl ApplyTo {
    fn covers(self, t: Target) -> bool {
        matches!(
            (self, t),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Target::Queue(_))
                | (ApplyTo::Exchanges, Target::Exchange)
                | (ApplyTo::ClassicQueues, Target::Queue(QueueKind::Classic))
                | (ApplyTo::QuorumQueues, Target::Queue(QueueKind::Quorum))
                | (ApplyTo::Streams, Target::Queue(QueueKind::Stream))
        )
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Name.
    pub name: Arc<str>,
    /// `operator_policy` (else a plain `policy`).
    pub operator: bool,
    /// `pattern`, unanchored as `re:run/2` uses it.
    pub pattern: Regex,
    /// `apply-to` (default `all`).
    pub apply_to: ApplyTo,
    /// `priority` (higher wins).
    pub priority: f64,
    /// `definition`.
    pub definition: Map<String, Value>,
}

/// Keys of a plain policy's definition (RabbitMQ 3.10.8's policy validators; `ha-*`,
/// federation and in-memory limits are accepted and have no effect here).
const POLICY_KEYS: &[&str] = &[
    "alternate-exchange",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "dead-letter-strategy",
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
    "overflow",
    "queue-mode",
    "queue-version",
    "queue-master-locator",
    "max-age",
    "stream-max-segment-size-bytes",
    "consumer-timeout",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "federation-upstream",
    "federation-upstream-set",
];

/// Keys an operator policy may set (`rabbit_policies` operator policy validators).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Numeric keys whose effective value is the smallest of argument, policy and operator policy.
const MIN_KEYS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "delivery-limit",
    "max-in-memory-length",
    "max-in-memory-bytes",
];

/// A JSON value as Erlang prints the term RabbitMQ decoded it to (for error texts).
fn term(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Array(a) => format!("[{}]", a.iter().map(term).collect::<Vec<_>>().join(",")),
        Value::Object(o) => format!(
            "#{{{}}}",
            o.iter()
                .map(|(k, v)| format!("<<\"{k}\">> => {}", term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn failed(detail: impl std::fmt::Display) -> AmqpError {
    AmqpError::precondition_failed(format!("Validation failed\n\n{detail}\n"))
}

fn int_at_least(v: &Value, min: i64) -> bool {
    v.as_i64().is_some_and(|i| i >= min)
}

/// Checks one definition key's value (`rabbit_policies:validate_policy0/2`).
fn check_value(key: &str, v: &Value) -> Result<(), String> {
    let bad = |what: &str| Err(format!("{} is not a valid {what}", term(v)));
    let ok = match key {
        "alternate-exchange" => {
            return if v.is_string() {
                Ok(())
            } else {
                bad("alternate exchange name")
            }
        }
        "dead-letter-exchange" => {
            return if v.is_string() {
                Ok(())
            } else {
                bad("dead letter exchange name")
            }
        }
        "dead-letter-routing-key" => {
            return if v.is_string() {
                Ok(())
            } else {
                bad("dead letter routing key")
            }
        }
        "dead-letter-strategy" => {
            return if matches!(v.as_str(), Some("at-most-once" | "at-least-once")) {
                Ok(())
            } else {
                bad("dead letter strategy")
            }
        }
        "message-ttl" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("message TTL")
            }
        }
        "expires" => {
            return if int_at_least(v, 1) {
                Ok(())
            } else {
                bad("queue expiry")
            }
        }
        "max-length" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("maximum length")
            }
        }
        "max-length-bytes" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("maximum length in bytes")
            }
        }
        "max-in-memory-length" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("max-in-memory-length value")
            }
        }
        "max-in-memory-bytes" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("max-in-memory-bytes value")
            }
        }
        "delivery-limit" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("delivery limit")
            }
        }
        "consumer-timeout" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("consumer timeout")
            }
        }
        "stream-max-segment-size-bytes" => {
            return if int_at_least(v, 0) {
                Ok(())
            } else {
                bad("segment size")
            }
        }
        "overflow" => matches!(
            v.as_str(),
            Some("drop-head" | "reject-publish" | "reject-publish-dlx")
        ),
        "queue-mode" => matches!(v.as_str(), Some("default" | "lazy")),
        "queue-version" => matches!(v.as_i64(), Some(1 | 2)),
        "queue-master-locator" => {
            matches!(v.as_str(), Some("min-masters" | "client-local" | "random"))
        }
        "max-age" => v.as_str().and_then(parse_duration).is_some(),
        "ha-mode" => matches!(v.as_str(), Some("all" | "exactly" | "nodes")),
        "ha-sync-mode" => matches!(v.as_str(), Some("manual" | "automatic")),
        "ha-promote-on-shutdown" | "ha-promote-on-failure" => {
            matches!(v.as_str(), Some("always" | "when-synced"))
        }
        "ha-sync-batch-size" => int_at_least(v, 1),
        "federation-upstream" | "federation-upstream-set" => v.is_string(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not a valid {key} value", term(v)))
    }
}

impl Policy {
    /// Validates a stored policy (`kind` `policy` or `operator_policy`) with RabbitMQ's texts.
    pub fn parse(kind: &str, name: &str, value: &Value) -> AmqpResult<Policy> {
        let operator = match kind {
            "policy" => false,
            "operator_policy" => true,
            _ => {
                return Err(AmqpError::precondition_failed(format!(
                    "not a policy: {kind}"
                )))
            }
        };
        let Some(o) = value.as_object() else {
            return Err(failed(format!("{} is not a valid policy", term(value))));
        };
        let unknown: Vec<String> = o
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "pattern" | "apply-to" | "definition" | "priority" | "vhost" | "name"
                )
            })
            .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", term(v)))
            .collect();
        if !unknown.is_empty() {
            return Err(failed(format!(
                "Unrecognised terms [{}] in {name}",
                unknown.join(",")
            )));
        }
        let missing = |k: &str| failed(format!("Key \"{k}\" not found in {name}"));
        let pattern = match o.get("pattern") {
            None => return Err(missing("pattern")),
            Some(Value::String(p)) => Regex::new(p).map_err(|e| {
                failed(format!(
                    "pattern should be regular expression but is invalid: {}",
                    e.to_string().replace('\n', " ")
                ))
            })?,
            Some(v) => {
                return Err(failed(format!(
                    "pattern should be a binary, actually was {}",
                    term(v)
                )))
            }
        };
        let priority = match o.get("priority") {
            // The HTTP API and rabbitmqctl default it to 0.
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(v) => {
                return Err(failed(format!(
                    "priority should be a number, actually was {}",
                    term(v)
                )))
            }
        };
        let apply_to = match o.get("apply-to") {
            None | Some(Value::Null) => ApplyTo::All,
            Some(v) => match v.as_str() {
                Some("all") => ApplyTo::All,
                Some("queues") => ApplyTo::Queues,
                Some("exchanges") => ApplyTo::Exchanges,
                Some("classic_queues") => ApplyTo::ClassicQueues,
                Some("quorum_queues") => ApplyTo::QuorumQueues,
                Some("streams") => ApplyTo::Streams,
                _ => {
                    let shown = v.as_str().map(str::to_owned).unwrap_or_else(|| term(v));
                    return Err(failed(format!(
                        "apply-to '{shown}' unrecognised; should be 'queues', 'classic_queues', 'quorum_queues', 'streams', 'exchanges', or 'all'"
                    )));
                }
            },
        };
        let definition = match o.get("definition") {
            None => return Err(missing("definition")),
            Some(Value::Object(d)) => d.clone(),
            Some(v) => {
                return Err(failed(format!(
                    "definition must be a dictionary: {}",
                    term(v)
                )))
            }
        };
        if definition.is_empty() {
            return Err(failed("no policy provided"));
        }
        let known = if operator { OPERATOR_KEYS } else { POLICY_KEYS };
        let unknown: Vec<String> = definition
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", term(v)))
            .collect();
        if !unknown.is_empty() {
            return Err(failed(format!(
                "[{}] are not recognised policy settings",
                unknown.join(",")
            )));
        }
        for (k, v) in &definition {
            check_value(k, v).map_err(failed)?;
        }
        if definition.contains_key("ha-mode") != definition.contains_key("ha-params")
            && matches!(
                definition.get("ha-mode").and_then(Value::as_str),
                Some("exactly" | "nodes")
            )
        {
            return Err(failed("ha-mode requires ha-params"));
        }
        Ok(Policy {
            name: name.into(),
            operator,
            pattern,
            apply_to,
            priority,
            definition,
        })
    }

    fn matches(&self, name: &str, t: Target) -> bool {
        self.apply_to.covers(t) && self.pattern.is_match(name)
    }
}

/// The policies and operator policies of one vhost, each list best first (highest priority;
/// among equal priorities, the first name in byte order).
#[derive(Debug, Default, Clone)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
    operator: Vec<Arc<Policy>>,
}

impl PolicySet {
    /// A set of parsed policies (either kind, in any order).
    pub fn new(all: impl IntoIterator<Item = Policy>) -> Self {
        let (mut operator, mut policies): (Vec<_>, Vec<_>) =
            all.into_iter().map(Arc::new).partition(|p| p.operator);
        let order = |a: &Arc<Policy>, b: &Arc<Policy>| {
            b.priority
                .total_cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        };
        policies.sort_by(order);
        operator.sort_by(order);
        Self { policies, operator }
    }

    /// Whether the set has no policy of either kind.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.operator.is_empty()
    }

    /// What applies to the object `name` of type `t` (operator policies apply to queues only).
    pub fn lookup(&self, name: &str, t: Target) -> (Option<Arc<Policy>>, Option<Arc<Policy>>) {
        let p = self.policies.iter().find(|p| p.matches(name, t)).cloned();
        let op = match t {
            Target::Queue(_) => self.operator.iter().find(|p| p.matches(name, t)).cloned(),
            Target::Exchange => None,
        };
        (p, op)
    }
}

/// The policy an object runs with: names and the merged definition, for display, and for a
/// queue its effective arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The matching policy.
    pub policy: Option<Arc<str>>,
    /// The matching operator policy.
    pub operator_policy: Option<Arc<str>>,
    /// `effective_policy_definition`: the policy's definition merged with the operator
    /// policy's (the smaller value of a key both set).
    pub definition: Map<String, Value>,
    /// A queue's effective arguments (its own merged with the definition).
    pub args: QueueArgs,
}

fn min_json(a: &Value, b: &Value) -> Value {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if y < x => b.clone(),
        _ => a.clone(),
    }
}

fn merged(p: Option<&Policy>, op: Option<&Policy>) -> Map<String, Value> {
    let mut d = p.map(|p| p.definition.clone()).unwrap_or_default();
    if let Some(op) = op {
        for (k, v) in &op.definition {
            let nv = match d.get(k) {
                Some(old) if MIN_KEYS.contains(&k.as_str()) => min_json(old, v),
                _ => v.clone(),
            };
            d.insert(k.clone(), nv);
        }
    }
    d
}

fn min_opt(arg: Option<u64>, pol: Option<&Value>) -> Option<u64> {
    let pol = pol.and_then(Value::as_u64);
    match (arg, pol) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Applied {
    /// No policy: the declared arguments as they are.
    pub fn none(args: QueueArgs) -> Self {
        Self {
            args,
            ..Self::default()
        }
    }

    /// What `set` gives a queue `name` declared with `declared` arguments.
    pub fn for_queue(set: &PolicySet, name: &str, declared: &QueueArgs) -> Self {
        let (p, op) = set.lookup(name, Target::Queue(declared.kind));
        if p.is_none() && op.is_none() {
            return Self::none(declared.clone());
        }
        let d = merged(p.as_deref(), op.as_deref());
        let mut a = declared.clone();
        a.message_ttl = min_opt(a.message_ttl, d.get("message-ttl"));
        a.expires = min_opt(a.expires, d.get("expires"));
        a.max_length = min_opt(a.max_length, d.get("max-length"));
        a.max_length_bytes = min_opt(a.max_length_bytes, d.get("max-length-bytes"));
        a.delivery_limit = min_opt(a.delivery_limit, d.get("delivery-limit"));
        let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
        if a.dead_letter_exchange.is_none() {
            a.dead_letter_exchange = text("dead-letter-exchange");
        }
        if a.dead_letter_routing_key.is_none() {
            a.dead_letter_routing_key = text("dead-letter-routing-key");
        }
        // RabbitMQ 3.12+: the smaller of the queue's x-consumer-timeout and the policy's.
        a.consumer_timeout = min_opt(a.consumer_timeout, d.get("consumer-timeout"));
        if a.max_age.is_none() {
            a.max_age = text("max-age").as_deref().and_then(parse_duration);
        }
        if a.stream_max_segment_size.is_none() {
            a.stream_max_segment_size = d
                .get("stream-max-segment-size-bytes")
                .and_then(Value::as_u64);
        }
        // The queue's own x-overflow wins; QueueArgs keeps the default when it was not given.
        if !declared.overflow_given {
            if let Some(o) = text("overflow") {
                a.overflow = match o.as_str() {
                    "reject-publish" => Overflow::RejectPublish,
                    "reject-publish-dlx" => Overflow::RejectPublishDlx,
                    _ => Overflow::DropHead,
                };
            }
        }
        Self {
            policy: p.map(|p| p.name.clone()),
            operator_policy: op.map(|p| p.name.clone()),
            definition: d,
            args: a,
        }
    }

    /// What `set` gives an exchange `name`.
    pub fn for_exchange(set: &PolicySet, name: &str) -> Option<Arc<Self>> {
        let (p, _) = set.lookup(name, Target::Exchange);
        let p = p?;
        Some(Arc::new(Self {
            policy: Some(p.name.clone()),
            operator_policy: None,
            definition: p.definition.clone(),
            args: QueueArgs::default(),
        }))
    }

    /// The policy's `alternate-exchange`.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.definition
            .get("alternate-exchange")
            .and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(kind: &str, v: Value) -> String {
        Policy::parse(kind, "p", &v).expect_err("invalid").text
    }

    #[test]
    fn validation_texts() {
        let base = |def: Value| json!({"pattern": "^q", "apply-to": "queues", "priority": 0, "definition": def});
        assert_eq!(
            err("policy", base(json!({"foo": "bar"}))),
            "PRECONDITION_FAILED - Validation failed\n\n[{<<\"foo\">>,<<\"bar\">>}] are not recognised policy settings\n"
        );
        assert!(err("policy", base(json!({}))).contains("no policy provided"));
        assert!(err("policy", base(json!({"max-length": -1})))
            .contains("-1 is not a valid maximum length"));
        assert!(err("policy", base(json!({"overflow": "x"})))
            .contains("<<\"x\">> is not a valid overflow value"));
        assert!(
            err("policy", base(json!({"expires": 0}))).contains("0 is not a valid queue expiry")
        );
        assert!(err(
            "operator_policy",
            base(json!({"dead-letter-exchange": "x"}))
        )
        .contains("are not recognised policy settings"));
        assert!(err(
            "policy",
            json!({"pattern": "(", "definition": {"max-length": 1}})
        )
        .contains("pattern should be regular expression but is invalid"));
        assert!(err(
            "policy",
            json!({"pattern": "q", "apply-to": "bogus", "definition": {"max-length": 1}})
        )
        .contains("apply-to 'bogus' unrecognised"));
        assert!(err(
            "policy",
            json!({"pattern": "q", "priority": "high", "definition": {"max-length": 1}})
        )
        .contains("priority should be a number, actually was <<\"high\">>"));
        assert!(err("policy", json!({"definition": {"max-length": 1}}))
            .contains("Key \"pattern\" not found in p"));
    }

    #[test]
    fn matching_and_merge() {
        let p = |kind: &str, name: &str, pat: &str, prio: i64, def: Value| {
            Policy::parse(
                kind,
                name,
                &json!({"pattern": pat, "apply-to": "queues", "priority": prio, "definition": def}),
            )
            .expect("valid")
        };
        let set = PolicySet::new([
            p("policy", "low", "q", 0, json!({"max-length": 10})),
            p(
                "policy",
                "high",
                "^q",
                5,
                json!({"max-length": 20, "dead-letter-exchange": "dlx"}),
            ),
            p("policy", "b", "^x", 1, json!({"message-ttl": 1})),
            p("policy", "a", "^x", 1, json!({"message-ttl": 2})),
            p("operator_policy", "cap", ".*", 0, json!({"max-length": 15})),
        ]);
        let mut declared = QueueArgs {
            max_length: Some(30),
            dead_letter_exchange: Some("mine".into()),
            ..QueueArgs::default()
        };
        let a = Applied::for_queue(&set, "qq", &declared);
        assert_eq!(a.policy.as_deref(), Some("high"));
        assert_eq!(a.operator_policy.as_deref(), Some("cap"));
        assert_eq!(a.args.max_length, Some(15));
        assert_eq!(a.args.dead_letter_exchange.as_deref(), Some("mine"));
        assert_eq!(a.definition.get("max-length"), Some(&json!(15)));
        declared.max_length = Some(3);
        assert_eq!(
            Applied::for_queue(&set, "qq", &declared).args.max_length,
            Some(3)
        );
        // Equal priorities: the first name wins.
        let x = Applied::for_queue(&set, "xq", &QueueArgs::default());
        assert_eq!(x.policy.as_deref(), Some("a"));
        assert_eq!(x.args.message_ttl, Some(2));
        assert!(Applied::for_exchange(&set, "qq").is_none());
    }
}
