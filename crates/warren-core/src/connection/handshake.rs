//! The connection handshake: `start`/`start-ok` (authentication), `tune`/`tune-ok`, `open`.
//! Mirrors `rabbit_reader`'s behaviour in RabbitMQ 3.10.8 (see `rabbitmq-reference.md` §1.3).

use tracing::{debug, info, warn};

use super::{Connection, Ctx, State};
use crate::broker::AuthFailure;
use crate::error::AmqpError;
use warren_codec::proto::{connection, AMQPClass, AMQPValue, FieldTable, LongString, ShortString};
use warren_codec::FRAME_MIN_SIZE;

/// The capabilities RabbitMQ advertises (`rabbit_reader:server_capabilities/1`).
const CAPABILITIES: &[&str] = &[
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

pub(super) fn send_start(ctx: &mut Ctx) {
    let mut caps = FieldTable::default();
    for c in CAPABILITIES {
        caps.insert(ShortString::from(*c), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let warren = env!("CARGO_PKG_VERSION");
    let amqp = &ctx.broker.config.amqp;
    props.insert("cluster_name".into(), long_str("warren@localhost"));
    props.insert(
        "copyright".into(),
        long_str("Copyright (c) the Warren authors"),
    );
    props.insert(
        "information".into(),
        long_str(&format!(
            "Warren {warren}: an AMQP 0-9-1 broker that behaves like RabbitMQ {}",
            amqp.product_version
        )),
    );
    props.insert(
        "platform".into(),
        long_str(&format!("Warren {warren} (Rust)")),
    );
    props.insert("product".into(), long_str(&amqp.product));
    props.insert("version".into(), long_str(&amqp.product_version));
    props.insert("warren_version".into(), long_str(warren));
    ctx.send_method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from(if ctx.external.is_some() {
                b"PLAIN AMQPLAIN EXTERNAL".to_vec()
            } else {
                b"PLAIN AMQPLAIN".to_vec()
            }),
            locales: LongString::from(b"en_US".to_vec()),
        })),
    );
}

fn capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// Extracts `(user, password)` from a PLAIN (`[authzid]\0user\0pass`) or AMQPLAIN response.
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some((
                String::from_utf8(user.to_vec()).ok()?,
                String::from_utf8(pass.to_vec()).ok()?,
            ))
        }
        "AMQPLAIN" => {
            let t = warren_codec::decode_table_entries(response)?;
            let get = |k: &str| match t.inner().get(k) {
                Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).ok(),
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
                _ => None,
            };
            Some((get("LOGIN")?, get("PASSWORD")?))
        }
        _ => None,
    }
}

/// A response as Erlang prints a binary (`<<"...">>`, `~tp` of `response ~tp invalid`).
fn erlang_binary(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(t) if t.chars().all(|c| !c.is_control()) => format!("<<\"{t}\">>"),
        _ => {
            let bytes: Vec<String> = b.iter().map(u8::to_string).collect();
            format!("<<{}>>", bytes.join(","))
        }
    }
}

pub(super) fn handle(conn: &mut Connection, method: AMQPClass) -> Result<(), AmqpError> {
    let ids = warren_codec::method::ids(&method);
    let unexpected = |state: State| {
        AmqpError::channel_error(format!(
            "unexpected method in connection state {}",
            state.rabbit_name()
        ))
        .on(ids)
    };
    let AMQPClass::Connection(m) = method else {
        return Err(unexpected(conn.state));
    };
    match (conn.state, m) {
        (_, connection::AMQPMethod::Close(_)) => {
            conn.ctx.send_method(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            );
            conn.state = State::Done;
            Ok(())
        }
        (State::Starting, connection::AMQPMethod::StartOk(s)) => {
            conn.ctx.cap_consumer_cancel_notify =
                capability(&s.client_properties, "consumer_cancel_notify");
            conn.ctx.cap_connection_blocked =
                capability(&s.client_properties, "connection.blocked");
            conn.ctx.cap_auth_failure_close =
                capability(&s.client_properties, "authentication_failure_close");
            let mechanism = s.mechanism.as_str();
            let external = mechanism == "EXTERNAL" && conn.ctx.external.is_some();
            if mechanism != "PLAIN" && mechanism != "AMQPLAIN" && !external {
                return Err(AmqpError::command_invalid(format!(
                    "unknown authentication mechanism '{mechanism}'"
                ))
                .on(ids));
            }
            let refused = |text: String| -> Result<(), AmqpError> {
                Err(AmqpError::access_refused(text).on(ids))
            };
            let creds = match &conn.ctx.external {
                Some(cn) if external => Some((cn.clone(), None)),
                _ => credentials(mechanism, s.response.as_bytes()).map(|(u, p)| (u, Some(p))),
            };
            let anonymous = crate::broker::AuthAttempt {
                user: None,
                mechanism,
                peer: conn.ctx.peer,
                local: conn.ctx.local,
                tls: conn.ctx.tls,
            };
            let Some((user, pass)) = creds else {
                conn.ctx.broker.count_failed_login();
                conn.ctx.broker.auth_event(
                    &anonymous,
                    Some(&format!(
                        "response {} invalid",
                        erlang_binary(s.response.as_bytes())
                    )),
                );
                warn!(peer = %conn.ctx.peer, mechanism, "login refused: malformed response");
                return refused(format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ))
                .or_else(|e| conn.auth_failed(e));
            };
            let peer = conn.ctx.peer;
            match conn.ctx.broker.authenticate(&user, pass.as_deref(), peer) {
                Ok(()) => conn.ctx.broker.auth_event(
                    &crate::broker::AuthAttempt {
                        user: Some(&user),
                        ..anonymous
                    },
                    None,
                ),
                Err(AuthFailure::BadCredentials | AuthFailure::NoPassword) => {
                    conn.ctx.broker.auth_event(
                        &crate::broker::AuthAttempt {
                            user: Some(&user),
                            ..anonymous
                        },
                        Some(&format!("user '{user}' - invalid credentials")),
                    );
                    warn!(%peer, user = %user, mechanism, "login refused: invalid credentials");
                    return refused(format!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    ))
                    .or_else(|e| conn.auth_failed(e));
                }
                Err(AuthFailure::LoopbackOnly(u)) => {
                    conn.ctx.broker.auth_event(
                        &crate::broker::AuthAttempt {
                            user: Some(&user),
                            ..anonymous
                        },
                        Some(&format!("user '{u}' can only connect via localhost")),
                    );
                    warn!(%peer, user = %u, "login refused: user may only connect via localhost");
                    return refused(format!("user '{u}' can only connect via localhost"))
                        .or_else(|e| conn.auth_failed(e));
                }
            }
            conn.ctx.user = user;
            conn.ctx.mechanism = mechanism.to_string();
            conn.ctx.client_properties = s.client_properties.clone();
            let cfg = &conn.ctx.broker.config.amqp;
            let tune = connection::Tune {
                channel_max: cfg.channel_max,
                frame_max: cfg.frame_max,
                heartbeat: cfg.heartbeat,
            };
            conn.ctx.send_method(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::Tune(tune)),
            );
            conn.state = State::Tuning;
            Ok(())
        }
        (State::Tuning, connection::AMQPMethod::TuneOk(t)) => {
            let cfg = &conn.ctx.broker.config.amqp;
            // rabbit_reader:fail_negotiation/4 names `connection.tune` (10.30), not tune-ok.
            const TUNE: (u16, u16) = (10, 30);
            // rabbit_reader:validate_negotiated_integer_value: 0 means "no limit", which is
            // higher than ours; values below the minimum are refused too.
            if t.frame_max == 0 || t.frame_max > cfg.frame_max {
                return Err(AmqpError::not_allowed(format!(
                    "negotiated frame_max = {} is higher than the maximum allowed value ({})",
                    t.frame_max, cfg.frame_max
                ))
                .on(TUNE));
            }
            if t.frame_max < FRAME_MIN_SIZE {
                return Err(AmqpError::not_allowed(format!(
                    "negotiated frame_max = {} is lower than the minimum allowed value ({})",
                    t.frame_max, FRAME_MIN_SIZE
                ))
                .on(TUNE));
            }
            if t.channel_max == 0 || t.channel_max > cfg.channel_max {
                return Err(AmqpError::not_allowed(format!(
                    "negotiated channel_max = {} is higher than the maximum allowed value ({})",
                    t.channel_max, cfg.channel_max
                ))
                .on(TUNE));
            }
            conn.ctx.frame_max = t.frame_max;
            conn.ctx.channel_max = t.channel_max;
            conn.ctx.heartbeat = t.heartbeat;
            debug!(
                frame_max = t.frame_max,
                channel_max = t.channel_max,
                heartbeat = t.heartbeat,
                "tuned"
            );
            conn.state = State::Opening;
            Ok(())
        }
        (State::Opening, connection::AMQPMethod::Open(o)) => {
            let name = o.virtual_host.as_str();
            let Some(vh) = conn.ctx.broker.vhost(name) else {
                return Err(AmqpError::not_allowed(format!("vhost {name} not found")).on(ids));
            };
            let broker = conn.ctx.broker.clone();
            let gen = broker.users.generation();
            let refused = || {
                AmqpError::not_allowed(format!(
                    "access to vhost '{name}' refused for user '{}'",
                    conn.ctx.user
                ))
                .on(ids)
            };
            let Some(access) = broker.users.access(&conn.ctx.user, name) else {
                warn!(peer = %conn.ctx.peer, user = %conn.ctx.user, vhost = name, "vhost access refused");
                return Err(refused());
            };
            let control: std::sync::Arc<dyn crate::broker::ConnControl> = conn.ctx.sink.clone();
            let info = std::sync::Arc::new(crate::broker::ConnInfo::new(
                conn.ctx.conn_id,
                conn.ctx.peer,
                conn.ctx.local,
                conn.ctx.user.clone(),
                name.to_string(),
                std::mem::take(&mut conn.ctx.client_properties),
                conn.ctx.mechanism.clone(),
                conn.ctx.tls,
                broker.clock.wall(),
                (conn.ctx.frame_max, conn.ctx.channel_max, conn.ctx.heartbeat),
                conn.ctx.io.clone(),
            ));
            broker
                .register_connection(
                    conn.ctx.conn_id,
                    &vh,
                    &access.user,
                    control,
                    conn.ctx.channel_count.clone(),
                    Some(info.clone()),
                )
                .map_err(|e| e.on(ids))?;
            conn.ctx.max_channels = access.user.def.max_channels;
            conn.ctx.access = Some(access);
            conn.ctx.access_gen = gen;
            conn.ctx.vhost = Some(vh);
            broker.connection_event(true, &info);
            conn.ctx.info = Some(info);
            conn.ctx.send_method(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
            );
            conn.state = State::Running;
            info!(user = %conn.ctx.user, vhost = name, "connection open");
            Ok(())
        }
        (state, _) => Err(unexpected(state)),
    }
}

impl Connection {
    /// RabbitMQ sends `connection.close` 403 on a failed login only to clients that advertise
    /// `authentication_failure_close`; others just see the socket close.
    fn auth_failed(&mut self, e: AmqpError) -> Result<(), AmqpError> {
        if self.ctx.cap_auth_failure_close {
            Err(e)
        } else {
            self.state = State::Done;
            Ok(())
        }
    }
}
