//! Broker configuration: a TOML file, every key with a default.
//!
//! Loading, CLI flags and `WARREN_*` environment overrides live in the `warren` binary; this
//! module owns the shape and the defaults, which mirror RabbitMQ 3.10.8's.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The AMQP listener.
    pub amqp: AmqpConfig,
    /// Users and login rules.
    pub auth: AuthConfig,
    /// Where durable state lives.
    pub storage: StorageConfig,
    /// Logging.
    pub log: LogConfig,
}

/// The AMQP listener and connection negotiation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Address to bind, e.g. `0.0.0.0`.
    pub bind: String,
    /// TCP port (RabbitMQ's 5672).
    pub port: u16,
    /// Largest frame the server offers in `connection.tune` (bytes, >= 4096).
    pub frame_max: u32,
    /// Most channels per connection offered in `connection.tune` (1..=65535).
    pub channel_max: u16,
    /// Heartbeat interval offered in `connection.tune`, seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted, bytes (RabbitMQ 3.10.8: 128 MiB).
    pub max_message_size: u64,
    /// Seconds a client has to finish the handshake (RabbitMQ: 10).
    pub handshake_timeout: u64,
}

/// Users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The user created on first start (`guest`).
    pub default_user: String,
    /// Its password (`guest`).
    pub default_pass: String,
    /// Users who may only log in from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
}

/// Storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0".into(),
            port: 5672,
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 134_217_728,
            handshake_timeout: 10,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            default_user: "guest".into(),
            default_pass: "guest".into(),
            loopback_users: vec!["guest".into()],
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./warren-data"),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has unknown keys or wrongly typed values.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value out of range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `amqp.frame_max`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Parses a TOML document (missing keys take their defaults) and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.amqp.frame_max < warren_codec::FRAME_MIN_SIZE {
            return Err(ConfigError::Invalid {
                key: "amqp.frame_max",
                reason: format!("must be at least {}", warren_codec::FRAME_MIN_SIZE),
            });
        }
        if self.amqp.channel_max == 0 {
            return Err(ConfigError::Invalid {
                key: "amqp.channel_max",
                reason: "must be between 1 and 65535".into(),
            });
        }
        Ok(())
    }
}
