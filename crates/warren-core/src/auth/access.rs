//! The checks of one operation against a user's permissions in a vhost, with RabbitMQ
//! 3.10.8's texts (`rabbit_access_control:check_resource_access/4`,
//! `rabbit_channel:check_topic_authorisation/5`).

use regex::Regex;
use std::sync::Arc;

use super::User;
use crate::error::{AmqpError, AmqpResult};

/// The three kinds of permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Create and delete.
    Configure,
    /// Publish to, bind to.
    Write,
    /// Consume from, bind from.
    Read,
}

/// What one user may do in one vhost (a snapshot; fetched again when the generation moves).
#[derive(Debug)]
pub struct Access {
    /// The user.
    pub user: Arc<User>,
    /// The vhost.
    pub vhost: String,
    pub(super) configure: Regex,
    pub(super) write: Regex,
    pub(super) read: Regex,
    /// (exchange, write, read) topic permissions.
    pub(super) topics: Vec<(String, Regex, Regex)>,
}

/// RabbitMQ checks the default exchange under the name `amq.default`.
fn exchange_resource(name: &str) -> &str {
    if name.is_empty() {
        "amq.default"
    } else {
        name
    }
}

impl Access {
    fn regex(&self, perm: Perm) -> &Regex {
        match perm {
            Perm::Configure => &self.configure,
            Perm::Write => &self.write,
            Perm::Read => &self.read,
        }
    }

    fn refused(&self, what: String) -> AmqpError {
        AmqpError::access_refused(format!(
            "access to {what} in vhost '{}' refused for user '{}'",
            self.vhost, self.user.def.name
        ))
    }

    /// `perm` on exchange `name`.
    pub fn exchange(&self, perm: Perm, name: &str) -> AmqpResult<()> {
        let name = exchange_resource(name);
        if self.regex(perm).is_match(name) {
            Ok(())
        } else {
            Err(self.refused(format!("exchange '{name}'")))
        }
    }

    /// `perm` on queue `name`.
    pub fn queue(&self, perm: Perm, name: &str) -> AmqpResult<()> {
        if self.regex(perm).is_match(name) {
            Ok(())
        } else {
            Err(self.refused(format!("queue '{name}'")))
        }
    }

    /// Whether topic permissions could apply at all (none set: every key is allowed).
    pub fn has_topic_permissions(&self) -> bool {
        !self.topics.is_empty()
    }

    /// `perm` (write or read) on routing key `key` of topic exchange `exchange`.
    pub fn topic(&self, perm: Perm, exchange: &str, key: &str) -> AmqpResult<()> {
        let Some((_, w, r)) = self.topics.iter().find(|(x, _, _)| x == exchange) else {
            return Ok(());
        };
        let re = if perm == Perm::Write { w } else { r };
        if re.is_match(key) {
            Ok(())
        } else {
            Err(self.refused(format!("topic '{key}' in exchange '{exchange}'")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::compile;
    use crate::metadata::UserDef;

    fn access(configure: &str, write: &str, read: &str) -> Access {
        Access {
            user: Arc::new(User {
                def: UserDef {
                    name: "app".into(),
                    password_hash: String::new(),
                    hashing_algorithm: String::new(),
                    tags: vec![],
                    max_connections: None,
                    max_channels: None,
                },
            }),
            vhost: "prod".into(),
            configure: compile(configure).expect("regex"),
            write: compile(write).expect("regex"),
            read: compile(read).expect("regex"),
            topics: vec![(
                "amq.topic".into(),
                compile("^payments\\.ok").expect("regex"),
                compile(".*").expect("regex"),
            )],
        }
    }

    #[test]
    fn unanchored_match_and_the_empty_expression() {
        let a = access("app", "", "^$");
        assert!(a.queue(Perm::Configure, "my.app.q").is_ok(), "unanchored");
        assert!(a.queue(Perm::Configure, "other").is_err());
        assert!(a.exchange(Perm::Write, "x").is_err(), "empty = ^$");
        assert!(a.queue(Perm::Read, "").is_ok());
        assert!(a.queue(Perm::Read, "q").is_err());
    }

    #[test]
    fn texts_are_rabbitmqs() {
        let a = access("^$", "^$", "^$");
        let e = a.queue(Perm::Read, "other.q").expect_err("refused");
        assert_eq!(e.code, warren_codec::ReplyCode::AccessRefused);
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to queue 'other.q' in vhost 'prod' refused for user 'app'"
        );
        let e = a.exchange(Perm::Write, "").expect_err("refused");
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost 'prod' refused for user 'app'"
        );
        let e = a
            .topic(Perm::Write, "amq.topic", "payments.x")
            .expect_err("refused");
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to topic 'payments.x' in exchange 'amq.topic' in vhost 'prod' refused for user 'app'"
        );
        assert!(a.topic(Perm::Write, "amq.topic", "payments.ok.1").is_ok());
        assert!(a.topic(Perm::Write, "other.topic", "anything").is_ok());
    }
}
