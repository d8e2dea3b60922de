//! Broker-wide events for the event exchange (`crate::events`): users, vhosts, permissions,
//! policies and parameters (from the metadata apply path, [`Broker::apply_as`]), connections
//! and channels (from the connection lifecycle). They go to the event exchange of vhost `/`,
//! where RabbitMQ's plugin publishes them (its `vhost` setting's default), with the headers
//! RabbitMQ 3.10.8 sends (captured from a local 3.10.8 with `rabbitmq_event_exchange`).
//!
//! Nothing is built unless something is bound to that exchange; events are published after
//! the change was applied, with no lock held.

use std::sync::Arc;

use warren_codec::proto::{AMQPValue, FieldTable};

use super::Broker;
use crate::events::{erlang_ip, node_name, str_array, Event, INTERNAL_USER};
use crate::metadata::{Command, UserDef};
use crate::vhost::VHost;

/// The vhost whose event exchange receives broker-wide events.
pub const EVENT_VHOST: &str = "/";

/// What a command changes that its events need to know, read before it is applied.
pub(crate) enum Before {
    /// Nothing to read (or nobody listens).
    Nothing,
    /// `PutUser`: the user as it was (`None`: a new user).
    User(Option<UserDef>),
}

impl Broker {
    /// The vhost to publish broker-wide events to, when something is bound to its event
    /// exchange.
    pub(crate) fn event_sink(&self) -> Option<Arc<VHost>> {
        self.vhost(EVENT_VHOST).filter(|v| v.wants_events())
    }

    /// Reads what the events of `cmd` need from the state before it is applied.
    pub(crate) fn before_events(&self, cmd: &Command) -> Before {
        match cmd {
            Command::PutUser(u) if self.event_sink().is_some() => {
                Before::User(self.users.user(&u.name).map(|old| old.def.clone()))
            }
            _ => Before::Nothing,
        }
    }

    /// Publishes the events of the broker-wide `cmd`, just applied on behalf of `user`.
    pub(crate) fn command_events(&self, cmd: &Command, before: Before, user: Option<&str>) {
        let Some(vh) = self.event_sink() else { return };
        let by = user.unwrap_or(INTERNAL_USER);
        let mut out = Vec::new();
        match cmd {
            Command::AddVhost { name } => out.push(
                Event::bare("vhost.created", by)
                    .str("name", name)
                    .str("description", "")
                    .str("tags", "")
                    .bool("tracing", false)
                    .value("cluster_state", {
                        let mut t = FieldTable::default();
                        t.insert(node_name().into(), AMQPValue::LongString("running".into()));
                        AMQPValue::FieldTable(t)
                    })
                    .str("metadata", "#{description => <<>>,tags => <<>>}")
                    .str("default_queue_type", "undefined"),
            ),
            Command::DeleteVhost { name } => {
                out.push(Event::bare("vhost.deleted", by).str("name", name))
            }
            Command::PutUser(u) => {
                let old = match before {
                    Before::User(old) => old,
                    Before::Nothing => None,
                };
                let tags = || str_array(u.tags.iter().map(String::as_str));
                match old {
                    None => {
                        out.push(Event::bare("user.created", by).str("name", &u.name));
                        if !u.tags.is_empty() {
                            out.push(
                                Event::bare("user.tags.set", by)
                                    .str("name", &u.name)
                                    .value("tags", tags()),
                            );
                        }
                    }
                    Some(old) => {
                        if old.password_hash != u.password_hash {
                            let e = if u.password_hash.is_empty() {
                                "user.password.cleared"
                            } else {
                                "user.password.changed"
                            };
                            out.push(Event::bare(e, by).str("name", &u.name));
                        }
                        if old.tags != u.tags {
                            out.push(
                                Event::bare("user.tags.set", by)
                                    .str("name", &u.name)
                                    .value("tags", tags()),
                            );
                        }
                    }
                }
            }
            Command::DeleteUser { name } => {
                out.push(Event::bare("user.deleted", by).str("name", name))
            }
            Command::SetPermissions(p) => out.push(
                Event::new("permission.created", by, &p.vhost)
                    .str("user", &p.user)
                    .str("configure", &p.configure)
                    .str("write", &p.write)
                    .str("read", &p.read),
            ),
            Command::ClearPermissions { user: u, vhost } => {
                out.push(Event::new("permission.deleted", by, vhost).str("user", u))
            }
            Command::SetTopicPermissions(p) => out.push(
                Event::new("topic.permission.created", by, &p.vhost)
                    .str("user", &p.user)
                    .str("exchange", &p.exchange)
                    .str("write", &p.write)
                    .str("read", &p.read),
            ),
            Command::ClearTopicPermissions { user: u, vhost, .. } => {
                out.push(Event::new("topic.permission.deleted", by, vhost).str("user", u))
            }
            Command::PutRuntime(r) if r.kind == "policy" || r.kind == "operator_policy" => {
                let mut e = Event::new("policy.set", by, &r.vhost).str("name", &r.name);
                for k in ["pattern", "apply-to", "definition", "priority"] {
                    if let Some(v) = r.value.get(k) {
                        e = e.value(k, super::definitions::field_value(v));
                    }
                }
                out.push(e);
            }
            Command::ClearRuntime {
                kind, vhost, name, ..
            } if kind == "policy" || kind == "operator_policy" => {
                out.push(Event::new("policy.cleared", by, vhost).str("name", name))
            }
            Command::PutRuntime(r) if r.kind == "parameter" => {
                let value = r.value.get("value").unwrap_or(&r.value);
                out.push(
                    Event::new("parameter.set", by, &r.vhost)
                        .str("component", &r.component)
                        .str("name", &r.name)
                        .value("value", super::definitions::field_value(value)),
                )
            }
            Command::ClearRuntime {
                kind,
                vhost,
                component,
                name,
            } if kind == "parameter" => out.push(
                Event::new("parameter.cleared", by, vhost)
                    .str("component", component)
                    .str("name", name),
            ),
            _ => {}
        }
        let now = self.clock.now();
        for e in out {
            vh.emit_event(e, now);
        }
    }
}

impl Broker {
    /// Publishes `connection.created` (`created`) or `connection.closed` of `info`.
    pub(crate) fn connection_event(&self, created: bool, info: &super::ConnInfo) {
        let Some(vh) = self.event_sink() else { return };
        let pid = crate::vhost::channel_pid(info.id, 0);
        let named = info
            .client_properties
            .inner()
            .get("connection_name")
            .and_then(crate::value::str_value);
        let e = if created {
            connection_created(info, &pid, named.as_deref())
        } else {
            connection_closed(info, &pid, named.as_deref())
        };
        vh.emit_event(e, self.clock.now());
    }
}

/// `connection.created` of a connection just opened.
pub(crate) fn connection_created(
    info: &super::ConnInfo,
    pid: &str,
    user_provided_name: Option<&str>,
) -> Event {
    let (host, port) = match info.local {
        Some(l) => (erlang_ip(l.ip()), i64::from(l.port())),
        None => (String::new(), 0),
    };
    let mut e = Event::new("connection.created", &info.user, &info.vhost)
        .str("node", node_name())
        .int("connected_at", info.connected_at as i64)
        .value(
            "client_properties",
            crate::events::arguments(&info.client_properties),
        )
        .int("channel_max", i64::from(info.channel_max))
        .int("frame_max", i64::from(info.frame_max))
        .int("timeout", i64::from(info.heartbeat))
        .str("user", &info.user)
        .str("protocol", "{0,9,1}")
        .str("ssl_hash", "")
        .str("ssl_cipher", "")
        .str("ssl_key_exchange", "")
        .str("ssl_protocol", "")
        .str("auth_mechanism", &info.auth_mechanism)
        .str("peer_cert_validity", "")
        .str("peer_cert_issuer", "")
        .str("peer_cert_subject", "")
        .bool("ssl", info.tls)
        .str("peer_host", &erlang_ip(info.peer.ip()))
        .str("host", &host)
        .int("peer_port", i64::from(info.peer.port()))
        .int("port", port)
        .str("name", &info.name)
        .str("pid", pid)
        .str("type", "network");
    if let Some(n) = user_provided_name {
        e = e.str("user_provided_name", n);
    }
    e
}

/// `connection.closed`.
pub(crate) fn connection_closed(
    info: &super::ConnInfo,
    pid: &str,
    user_provided_name: Option<&str>,
) -> Event {
    let mut headers = FieldTable::default();
    headers.insert(
        "client_properties".into(),
        crate::events::arguments(&info.client_properties),
    );
    let mut e = Event {
        name: "connection.closed",
        headers,
    }
    .str("node", node_name())
    .str("pid", pid)
    .str("name", &info.name);
    if let Some(n) = user_provided_name {
        e = e.str("user_provided_name", n);
    }
    e
}

/// What `user.authentication.success/failure` says about the connection that tried to log in.
pub(crate) struct AuthAttempt<'a> {
    /// The user name given (`None`: none could be read from the response).
    pub(crate) user: Option<&'a str>,
    /// The mechanism, e.g. `PLAIN`.
    pub(crate) mechanism: &'a str,
    /// The client's address.
    pub(crate) peer: std::net::SocketAddr,
    /// The broker's address of the connection.
    pub(crate) local: Option<std::net::SocketAddr>,
    /// Whether it came over TLS.
    pub(crate) tls: bool,
}

impl Broker {
    /// Publishes `user.authentication.success` (`error` `None`) or
    /// `user.authentication.failure` with `error` (RabbitMQ's text of the refusal).
    pub(crate) fn auth_event(&self, attempt: &AuthAttempt<'_>, error: Option<&str>) {
        let Some(vh) = self.event_sink() else { return };
        vh.emit_event(auth_event(attempt, error), self.clock.now());
    }
}

/// The event of a login, with the keys `rabbit_reader:notify_auth_result/4` sends in 3.10.8
/// (`connection_type`, `name`, then `?AUTH_NOTIFICATION_INFO_KEYS`, then `error`; keys whose
/// value is `''`, such as the TLS details of a plain connection, are left out as it does).
pub(crate) fn auth_event(a: &AuthAttempt<'_>, error: Option<&str>) -> Event {
    let name = if error.is_some() {
        "user.authentication.failure"
    } else {
        "user.authentication.success"
    };
    let mut e = Event {
        name,
        headers: FieldTable::default(),
    }
    .str("connection_type", "network");
    if let Some(u) = a.user.filter(|u| !u.is_empty()) {
        e = e.str("name", u);
    }
    let connection_name = match a.local {
        Some(l) => format!("{} -> {l}", a.peer),
        None => a.peer.to_string(),
    };
    if let Some(l) = a.local {
        e = e.str("host", &erlang_ip(l.ip()));
    }
    e = e
        .str("connection_name", &connection_name)
        .str("peer_host", &erlang_ip(a.peer.ip()))
        .int("peer_port", i64::from(a.peer.port()))
        .str("protocol", "{0,9,1}")
        .str("auth_mechanism", a.mechanism)
        .bool("ssl", a.tls);
    if let Some(err) = error {
        e = e.str("error", err);
    }
    e
}
