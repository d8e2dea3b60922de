//! The RabbitMQ image's variables (`RABBITMQ_DEFAULT_USER`, `RABBITMQ_DEFAULT_PASS`,
//! `RABBITMQ_DEFAULT_VHOST`), honoured so that a compose file written for RabbitMQ works after
//! changing only the image name.
//!
//! They rank just below their `WARREN_*` equivalents: flag > `WARREN_*` > `RABBITMQ_*` > file >
//! default. An empty value counts as unset, as in RabbitMQ's scripts.

use warren_core::Config;

/// `RABBITMQ_DEFAULT_USER`.
pub const USER_VAR: &str = "RABBITMQ_DEFAULT_USER";
/// `RABBITMQ_DEFAULT_PASS`.
pub const PASS_VAR: &str = "RABBITMQ_DEFAULT_PASS";
/// `RABBITMQ_DEFAULT_VHOST`.
pub const VHOST_VAR: &str = "RABBITMQ_DEFAULT_VHOST";

/// The RabbitMQ variables that were set (non-empty).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RabbitmqEnv {
    pub default_user: Option<String>,
    pub default_pass: Option<String>,
    pub default_vhost: Option<String>,
}

impl RabbitmqEnv {
    /// Reads the process environment.
    pub fn from_process() -> RabbitmqEnv {
        RabbitmqEnv::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the variables through `lookup` (the process environment, or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> RabbitmqEnv {
        let get = |key: &str| lookup(key).filter(|v| !v.is_empty());
        RabbitmqEnv {
            default_user: get(USER_VAR),
            default_pass: get(PASS_VAR),
            default_vhost: get(VHOST_VAR),
        }
    }

    /// Sets `auth.default_user` / `auth.default_pass` where `user_set` / `pass_set` say that no
    /// flag or `WARREN_*` variable did, and `auth.default_vhost` (created on first start, the
    /// default user's permissions are there). Returns the warnings to log once logging is up.
    pub fn apply(&self, config: &mut Config, user_set: bool, pass_set: bool) -> Vec<String> {
        if !user_set {
            if let Some(user) = &self.default_user {
                config.auth.default_user.clone_from(user);
            }
        }
        if !pass_set {
            if let Some(pass) = &self.default_pass {
                config.auth.default_pass.clone_from(pass);
            }
        }
        if let Some(vhost) = &self.default_vhost {
            config.auth.default_vhost.clone_from(vhost);
        }
        Vec::new()
    }

    /// Whether this set `auth.default_user` (`user_set`: a flag or `WARREN_*` variable did).
    pub fn sets_user(&self, user_set: bool) -> bool {
        !user_set && self.default_user.is_some()
    }

    /// Whether this set `auth.default_pass`.
    pub fn sets_pass(&self, pass_set: bool) -> bool {
        !pass_set && self.default_pass.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> RabbitmqEnv {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RabbitmqEnv::from_lookup(|key| map.get(key).cloned())
    }

    #[test]
    fn user_and_pass_apply_when_nothing_else_set_them() {
        let mut config = Config::default();
        let warnings = env(&[(USER_VAR, "app"), (PASS_VAR, "pw")]).apply(&mut config, false, false);
        assert_eq!(config.auth.default_user, "app");
        assert_eq!(config.auth.default_pass, "pw");
        assert!(warnings.is_empty());
    }

    #[test]
    fn warren_settings_win() {
        let mut config = Config::default();
        config.auth.default_user = "from-warren".into();
        env(&[(USER_VAR, "app"), (PASS_VAR, "pw")]).apply(&mut config, true, false);
        assert_eq!(config.auth.default_user, "from-warren");
        assert_eq!(config.auth.default_pass, "pw");
    }

    #[test]
    fn empty_values_are_unset() {
        let e = env(&[(USER_VAR, ""), (PASS_VAR, ""), (VHOST_VAR, "")]);
        assert_eq!(e, RabbitmqEnv::default());
        let mut config = Config::default();
        assert!(e.apply(&mut config, false, false).is_empty());
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_default_vhost_is_set() {
        let mut config = Config::default();
        assert!(env(&[(VHOST_VAR, "prod")])
            .apply(&mut config, false, false)
            .is_empty());
        assert_eq!(config.auth.default_vhost, "prod");
    }
}
