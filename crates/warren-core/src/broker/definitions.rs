//! Importing a definitions file in RabbitMQ's format (what `GET /api/definitions` and
//! `rabbitmqctl export_definitions` write): vhosts, users (with their password hashes),
//! permissions, topic permissions, parameters (`vhost-limits` applied, the rest stored),
//! global parameters, policies (stored), exchanges, queues and bindings.
//!
//! [`parse`] turns the file into metadata commands, each with the place it came from;
//! [`Broker::import_definitions`] submits them through the metadata path in that order.
//! Importing twice changes nothing: every command is a no-op when its effect exists. Keys
//! Warren does not know are logged once and skipped; a malformed file is one error line that
//! names the place.

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use tracing::{info, warn};

use super::Broker;
use crate::metadata::{
    BindingDef, Command, ExchangeDef, PermissionDef, QueueDef, RuntimeDef, TopicPermissionDef,
    UserDef, VhostLimits,
};
use crate::vhost::{new_store_dir, Origin, Pre};
use warren_codec::proto::{AMQPValue, FieldArray, FieldTable, LongString};

/// The commands of a definitions file, each with where it came from (`queues[3]`).
#[derive(Debug, Default)]
pub struct Definitions {
    /// In import order.
    pub commands: Vec<(String, Command)>,
    /// Keys Warren does not know (`users[].foo`), each once.
    pub unknown: BTreeSet<String>,
}

/// Top-level keys RabbitMQ writes that carry nothing to import.
const IGNORED_TOP: &[&str] = &[
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
];

struct Reader<'a> {
    unknown: &'a mut BTreeSet<String>,
}

impl Reader<'_> {
    fn object<'v>(
        &mut self,
        v: &'v Value,
        place: &str,
        section: &str,
        known: &[&str],
    ) -> Result<&'v Map<String, Value>, String> {
        let o = v
            .as_object()
            .ok_or_else(|| format!("{place}: expected an object"))?;
        for k in o.keys() {
            if !known.contains(&k.as_str()) {
                self.unknown.insert(format!("{section}[].{k}"));
            }
        }
        Ok(o)
    }
}

fn string(o: &Map<String, Value>, key: &str, place: &str) -> Result<String, String> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{place}.{key}: expected a string")),
        None => Err(format!("{place}: missing `{key}`")),
    }
}

fn opt_string(
    o: &Map<String, Value>,
    key: &str,
    place: &str,
    default: &str,
) -> Result<String, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{place}.{key}: expected a string")),
    }
}

fn boolean(o: &Map<String, Value>, key: &str, place: &str, default: bool) -> Result<bool, String> {
    match o.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("{place}.{key}: expected true or false")),
    }
}

/// A JSON argument value as an AMQP field value.
pub(crate) fn field_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(field_value).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(table(o)),
    }
}

fn table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        t.insert(k.as_str().into(), field_value(v));
    }
    t
}

/// A table key an AMQP field table cannot hold (longer than a short string's 255 bytes), at any
/// depth of `o`. Every JSON-to-table conversion (definitions, the HTTP API) checks it first:
/// building the table would panic.
pub fn overlong_key(o: &Map<String, Value>) -> Option<&str> {
    fn in_value(v: &Value) -> Option<&str> {
        match v {
            Value::Object(o) => overlong_key(o),
            Value::Array(a) => a.iter().find_map(in_value),
            _ => None,
        }
    }
    o.iter().find_map(|(k, v)| {
        if k.len() > 255 {
            Some(k.as_str())
        } else {
            in_value(v)
        }
    })
}

fn arguments(o: &Map<String, Value>, place: &str) -> Result<FieldTable, String> {
    match o.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(Value::Object(a)) => match overlong_key(a) {
            Some(k) => Err(format!(
                "{place}.arguments: key longer than 255 bytes ({} bytes)",
                k.len()
            )),
            None => Ok(table(a)),
        },
        Some(_) => Err(format!("{place}.arguments: expected an object")),
    }
}

/// A limit value: a non-negative integer is the limit, a negative one means "no limit".
fn limit(o: &Map<String, Value>, key: &str, place: &str) -> Result<Option<u64>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if i < 0 => Ok(None),
            Some(i) => Ok(Some(i as u64)),
            None => Err(format!("{place}.{key}: expected an integer")),
        },
        Some(_) => Err(format!("{place}.{key}: expected an integer")),
    }
}

fn tags(o: &Map<String, Value>, place: &str) -> Result<Vec<String>, String> {
    match o.get("tags") {
        None | Some(Value::Null) => Ok(Vec::new()),
        // RabbitMQ 3.8 and earlier: one comma-separated string.
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("{place}.tags: expected strings"))
            })
            .collect(),
        Some(_) => Err(format!("{place}.tags: expected a list or a string")),
    }
}

fn section<'v>(root: &'v Map<String, Value>, key: &str) -> Result<&'v [Value], String> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{key}: expected a list")),
    }
}

/// Parses a definitions file.
pub fn parse(text: &str) -> Result<Definitions, String> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| format!("line {} column {}: {e}", e.line(), e.column()))?;
    let root = root
        .as_object()
        .ok_or_else(|| "the top level must be an object".to_string())?;
    let mut defs = Definitions::default();
    let mut cmds: Vec<(String, Command)> = Vec::new();
    let mut r = Reader {
        unknown: &mut defs.unknown,
    };
    const SECTIONS: &[&str] = &[
        "vhosts",
        "users",
        "permissions",
        "topic_permissions",
        "parameters",
        "global_parameters",
        "policies",
        "operator_policies",
        "exchanges",
        "queues",
        "bindings",
    ];
    for k in root.keys() {
        if !SECTIONS.contains(&k.as_str()) && !IGNORED_TOP.contains(&k.as_str()) {
            r.unknown.insert(k.clone());
        }
    }
    for (i, v) in section(root, "vhosts")?.iter().enumerate() {
        let place = format!("vhosts[{i}]");
        let o = r.object(
            v,
            &place,
            "vhosts",
            &[
                "name",
                "limits",
                "metadata",
                "description",
                "tags",
                "default_queue_type",
            ],
        )?;
        cmds.push((
            place.clone(),
            Command::AddVhost {
                name: string(o, "name", &place)?,
            },
        ));
    }
    for (i, v) in section(root, "users")?.iter().enumerate() {
        let place = format!("users[{i}]");
        let o = r.object(
            v,
            &place,
            "users",
            &[
                "name",
                "password_hash",
                "hashing_algorithm",
                "tags",
                "limits",
            ],
        )?;
        let (max_connections, max_channels) = match o.get("limits") {
            None | Some(Value::Null) => (None, None),
            Some(Value::Object(l)) => (
                limit(l, "max-connections", &format!("{place}.limits"))?,
                limit(l, "max-channels", &format!("{place}.limits"))?,
            ),
            Some(_) => return Err(format!("{place}.limits: expected an object")),
        };
        let user = UserDef {
            name: string(o, "name", &place)?,
            password_hash: opt_string(o, "password_hash", &place, "")?,
            hashing_algorithm: opt_string(
                o,
                "hashing_algorithm",
                &place,
                crate::auth::password::SHA256,
            )?,
            tags: tags(o, &place)?,
            max_connections,
            max_channels,
        };
        if !user.password_hash.is_empty()
            && !crate::auth::password::known_algorithm(&user.hashing_algorithm)
        {
            return Err(format!(
                "{place}.hashing_algorithm: unknown algorithm '{}'",
                user.hashing_algorithm
            ));
        }
        cmds.push((place, Command::PutUser(user)));
    }
    for (i, v) in section(root, "permissions")?.iter().enumerate() {
        let place = format!("permissions[{i}]");
        let o = r.object(
            v,
            &place,
            "permissions",
            &["user", "vhost", "configure", "write", "read"],
        )?;
        let p = PermissionDef {
            user: string(o, "user", &place)?,
            vhost: string(o, "vhost", &place)?,
            configure: string(o, "configure", &place)?,
            write: string(o, "write", &place)?,
            read: string(o, "read", &place)?,
        };
        for re in [&p.configure, &p.write, &p.read] {
            crate::auth::compile(re).map_err(|e| format!("{place}: {}", e.text))?;
        }
        cmds.push((place, Command::SetPermissions(p)));
    }
    for (i, v) in section(root, "topic_permissions")?.iter().enumerate() {
        let place = format!("topic_permissions[{i}]");
        let o = r.object(
            v,
            &place,
            "topic_permissions",
            &["user", "vhost", "exchange", "write", "read"],
        )?;
        let p = TopicPermissionDef {
            user: string(o, "user", &place)?,
            vhost: string(o, "vhost", &place)?,
            exchange: string(o, "exchange", &place)?,
            write: string(o, "write", &place)?,
            read: string(o, "read", &place)?,
        };
        cmds.push((place, Command::SetTopicPermissions(p)));
    }
    for (i, v) in section(root, "parameters")?.iter().enumerate() {
        let place = format!("parameters[{i}]");
        let o = r.object(
            v,
            &place,
            "parameters",
            &["vhost", "component", "name", "value"],
        )?;
        let vhost = string(o, "vhost", &place)?;
        let component = string(o, "component", &place)?;
        let name = string(o, "name", &place)?;
        if component == "vhost-limits" {
            let Some(Value::Object(l)) = o.get("value") else {
                return Err(format!("{place}.value: expected an object"));
            };
            let limits = VhostLimits {
                max_connections: limit(l, "max-connections", &format!("{place}.value"))?,
                max_queues: limit(l, "max-queues", &format!("{place}.value"))?,
            };
            cmds.push((place, Command::SetVhostLimits { vhost, limits }));
        } else {
            let value = Value::Object(o.clone());
            cmds.push((
                place,
                Command::PutRuntime(RuntimeDef {
                    kind: "parameter".into(),
                    vhost,
                    component,
                    name,
                    value,
                }),
            ));
        }
    }
    for (i, v) in section(root, "global_parameters")?.iter().enumerate() {
        let place = format!("global_parameters[{i}]");
        let o = r.object(v, &place, "global_parameters", &["name", "value"])?;
        let name = string(o, "name", &place)?;
        let value = Value::Object(o.clone());
        cmds.push((
            place,
            Command::PutRuntime(RuntimeDef {
                kind: "global_parameter".into(),
                vhost: String::new(),
                component: String::new(),
                name,
                value,
            }),
        ));
    }
    for (sect, kind) in [
        ("policies", "policy"),
        ("operator_policies", "operator_policy"),
    ] {
        for (i, v) in section(root, sect)?.iter().enumerate() {
            let place = format!("{sect}[{i}]");
            let o = r.object(
                v,
                &place,
                sect,
                &[
                    "vhost",
                    "name",
                    "pattern",
                    "apply-to",
                    "definition",
                    "priority",
                ],
            )?;
            let vhost = string(o, "vhost", &place)?;
            let name = string(o, "name", &place)?;
            string(o, "pattern", &place)?;
            let value = Value::Object(o.clone());
            cmds.push((
                place,
                Command::PutRuntime(RuntimeDef {
                    kind: kind.into(),
                    vhost,
                    component: String::new(),
                    name,
                    value,
                }),
            ));
        }
    }
    for (i, v) in section(root, "exchanges")?.iter().enumerate() {
        let place = format!("exchanges[{i}]");
        let o = r.object(
            v,
            &place,
            "exchanges",
            &[
                "name",
                "vhost",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
            ],
        )?;
        cmds.push((
            place.clone(),
            Command::DeclareExchange({
                let name = string(o, "name", &place)?;
                let kind = string(o, "type", &place)?;
                let durable = boolean(o, "durable", &place, true)?;
                // A durable delayed exchange keeps persistent held messages in a store.
                let store_dir =
                    if durable && kind == crate::exchange::ExchangeKind::Delayed.as_str() {
                        format!("dx-{}", crate::vhost::new_store_dir(&name))
                    } else {
                        String::new()
                    };
                ExchangeDef {
                    vhost: string(o, "vhost", &place)?,
                    name,
                    kind,
                    durable,
                    auto_delete: boolean(o, "auto_delete", &place, false)?,
                    internal: boolean(o, "internal", &place, false)?,
                    arguments: arguments(o, &place)?,
                    store_dir,
                }
            }),
        ));
    }
    for (i, v) in section(root, "queues")?.iter().enumerate() {
        let place = format!("queues[{i}]");
        let o = r.object(
            v,
            &place,
            "queues",
            &[
                "name",
                "vhost",
                "durable",
                "auto_delete",
                "arguments",
                "type",
            ],
        )?;
        let mut args = arguments(o, &place)?;
        if let Some(Value::String(t)) = o.get("type") {
            if t != "classic" && !args.inner().contains_key("x-queue-type") {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString(LongString::from(t.as_bytes().to_vec())),
                );
            }
        }
        cmds.push((
            place.clone(),
            Command::DeclareQueue(QueueDef {
                vhost: string(o, "vhost", &place)?,
                name: string(o, "name", &place)?,
                durable: boolean(o, "durable", &place, true)?,
                auto_delete: boolean(o, "auto_delete", &place, false)?,
                arguments: args,
                store_dir: String::new(),
                exclusive_owner: None,
            }),
        ));
    }
    for (i, v) in section(root, "bindings")?.iter().enumerate() {
        let place = format!("bindings[{i}]");
        let o = r.object(
            v,
            &place,
            "bindings",
            &[
                "source",
                "vhost",
                "destination",
                "destination_type",
                "routing_key",
                "arguments",
                "properties_key",
            ],
        )?;
        let destination_type = string(o, "destination_type", &place)?;
        if destination_type != "queue" && destination_type != "exchange" {
            return Err(format!(
                "{place}.destination_type: expected \"queue\" or \"exchange\""
            ));
        }
        cmds.push((
            place.clone(),
            Command::Bind(BindingDef {
                vhost: string(o, "vhost", &place)?,
                source: string(o, "source", &place)?,
                destination: string(o, "destination", &place)?,
                destination_type,
                routing_key: opt_string(o, "routing_key", &place, "")?,
                arguments: arguments(o, &place)?,
            }),
        ));
    }
    defs.commands = cmds;
    Ok(defs)
}

impl Broker {
    /// Imports `defs` through the metadata path, in order; the error names the entry at
    /// fault. Returns the number of entries.
    pub async fn import_definitions(self: &Arc<Self>, defs: Definitions) -> Result<usize, String> {
        for k in &defs.unknown {
            warn!(key = %k, "definitions: unknown key skipped");
        }
        let origin = Origin {
            conn_id: None,
            internal: true,
            user: None,
        };
        let total = defs.commands.len();
        for (place, mut cmd) in defs.commands {
            if let Command::DeclareQueue(q) = &mut cmd {
                if q.durable && self.vhost(&q.vhost).is_some_and(|v| v.persistent()) {
                    q.store_dir = new_store_dir(&q.name);
                }
            }
            self.execute(cmd, origin.clone(), Pre::default())
                .await
                // One line (a policy's validation text has RabbitMQ's line breaks).
                .map_err(|e| {
                    format!(
                        "{place}: {}",
                        e.text.trim_end().replace("\n\n", " ").replace('\n', " ")
                    )
                })?;
        }
        info!(entries = total, "definitions imported");
        Ok(total)
    }
}

/// Reads and parses a definitions file; the error is one line naming the file and place.
pub fn load(path: &std::path::Path) -> Result<Definitions, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read definitions file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("definitions file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_argument_keys_are_refused_not_a_panic() {
        // Found by the definitions fuzz target: a key over 255 bytes panicked in ShortString.
        let long = "k".repeat(256);
        let text = format!(
            r#"{{"queues": [{{"name": "q", "vhost": "/", "durable": true, "arguments": {{"{long}": 1}}}}]}}"#
        );
        let e = parse(&text).expect_err("overlong key");
        assert_eq!(
            e,
            "queues[0].arguments: key longer than 255 bytes (256 bytes)"
        );
        let text = format!(
            r#"{{"exchanges": [{{"name": "x", "vhost": "/", "type": "direct", "arguments": {{"a": [{{"{long}": 1}}]}}}}]}}"#
        );
        assert!(parse(&text).is_err());
    }

    #[test]
    fn malformed_files_name_the_place() {
        let e = parse("{\"users\": [}").expect_err("bad json");
        assert!(e.starts_with("line 1 column 12"), "{e}");
        let e = parse(r#"{"users": [{"name": "a"}, {"password_hash": ""}]}"#).expect_err("missing");
        assert_eq!(e, "users[1]: missing `name`");
        let e = parse(r#"{"queues": [{"name": "q", "vhost": "/", "durable": "yes"}]}"#)
            .expect_err("type");
        assert_eq!(e, "queues[0].durable: expected true or false");
        let e = parse(
            r#"{"permissions": [{"user":"a","vhost":"/","configure":"(","write":"","read":""}]}"#,
        )
        .expect_err("regex");
        assert!(
            e.starts_with("permissions[0]: PRECONDITION_FAILED - invalid regular expression '('"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_collected_once() {
        let d = parse(
            r#"{"rabbit_version": "3.10.8", "shovels": [], "users": [
            {"name": "a", "password_hash": "", "tags": "administrator,monitoring", "colour": 1},
            {"name": "b", "password_hash": "", "tags": [], "colour": 2}]}"#,
        )
        .expect("parses");
        assert_eq!(
            d.unknown.iter().cloned().collect::<Vec<_>>(),
            vec!["shovels".to_string(), "users[].colour".to_string()]
        );
        let Command::PutUser(u) = &d.commands[0].1 else {
            panic!("a user")
        };
        assert_eq!(u.tags, vec!["administrator", "monitoring"]);
    }
}
