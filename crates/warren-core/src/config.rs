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
    /// More AMQP listeners besides `amqp.bind`:`amqp.port` (address, port).
    pub listeners: Vec<ListenerConfig>,
    /// The AMQP listener.
    pub amqp: AmqpConfig,
    /// Users and login rules.
    pub auth: AuthConfig,
    /// Where durable state lives.
    pub storage: StorageConfig,
    /// Logging.
    pub log: LogConfig,
    /// Memory alarm.
    pub memory: MemoryConfig,
    /// Disk alarm.
    pub disk: DiskConfig,
    /// Definitions imported at every start.
    pub definitions: DefinitionsConfig,
    /// The TLS listener (on when `tls.cert` is set).
    pub tls: TlsConfig,
    /// The management HTTP API and web UI.
    pub management: ManagementConfig,
    /// The Prometheus metrics endpoint.
    pub prometheus: PrometheusConfig,
}

/// The management HTTP API and web UI (RabbitMQ's `management.tcp.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    /// Address to bind.
    pub bind: String,
    /// Port (RabbitMQ's 15672); 0 turns the listener off.
    pub port: u16,
    /// How often message rates are sampled, in milliseconds (RabbitMQ's
    /// `collect_statistics_interval`).
    pub collect_statistics_interval: u64,
    /// Largest request body accepted, in bytes (RabbitMQ's `management.http_max_body_size`).
    pub max_body_bytes: usize,
    /// Port of the HTTPS listener of the same API and UI on `bind` (RabbitMQ's
    /// `management.ssl.port`, conventionally 15671); 0 (the default): none.
    pub ssl_port: u16,
    /// PEM certificate chain of the HTTPS listener (`management.ssl.certfile`); empty: the
    /// `[tls]` listener's `tls.cert`.
    pub ssl_cert: PathBuf,
    /// Its PEM private key (`management.ssl.keyfile`); empty: `tls.key`.
    pub ssl_key: PathBuf,
}

impl ManagementConfig {
    /// The certificate options of the HTTPS listener: `ssl_cert`/`ssl_key`, or those of
    /// `[tls]` when they are not set (client certificates are not asked for).
    pub fn ssl_options(&self, tls: &TlsConfig) -> TlsConfig {
        https_options(
            &self.bind,
            self.ssl_port,
            &self.ssl_cert,
            &self.ssl_key,
            tls,
        )
    }
}

/// An HTTPS listener's TLS options: its own certificate and key, or `[tls]`'s when `cert` is
/// empty; no client certificates asked for.
fn https_options(
    bind: &str,
    port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
    tls: &TlsConfig,
) -> TlsConfig {
    let (cert, key) = if cert.as_os_str().is_empty() {
        (tls.cert.clone(), tls.key.clone())
    } else {
        (cert.to_path_buf(), key.to_path_buf())
    };
    TlsConfig {
        bind: bind.to_string(),
        port,
        cert,
        key,
        verify_peer: false,
        fail_if_no_peer_cert: false,
        ..tls.clone()
    }
}

/// Checks that an HTTPS listener (`key` its port's config key) has a certificate and key.
fn check_https(key: &'static str, o: &TlsConfig, own: &str) -> Result<(), ConfigError> {
    if o.cert.as_os_str().is_empty() || o.key.as_os_str().is_empty() {
        return Err(invalid(
            key,
            format!(
                "needs a certificate and key: {own}_cert and {own}_key, or tls.cert and tls.key"
            ),
        ));
    }
    Ok(())
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0".into(),
            port: 15672,
            collect_statistics_interval: 5000,
            max_body_bytes: 20 * 1024 * 1024,
            ssl_port: 0,
            ssl_cert: PathBuf::new(),
            ssl_key: PathBuf::new(),
        }
    }
}

/// The Prometheus endpoint (RabbitMQ's `prometheus.tcp.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Address to bind.
    pub bind: String,
    /// Port (RabbitMQ's 15692); 0 turns the listener off.
    pub port: u16,
    /// Port of an HTTPS listener of the same endpoint on `bind` (RabbitMQ's
    /// `prometheus.ssl.port`, conventionally 15691); 0 (the default): none.
    pub ssl_port: u16,
    /// PEM certificate chain of the HTTPS listener (`prometheus.ssl.certfile`); empty: the
    /// `[tls]` listener's `tls.cert`.
    pub ssl_cert: PathBuf,
    /// Its PEM private key (`prometheus.ssl.keyfile`); empty: `tls.key`.
    pub ssl_key: PathBuf,
}

impl PrometheusConfig {
    /// The certificate options of the HTTPS listener, as for the management API's.
    pub fn ssl_options(&self, tls: &TlsConfig) -> TlsConfig {
        https_options(
            &self.bind,
            self.ssl_port,
            &self.ssl_cert,
            &self.ssl_key,
            tls,
        )
    }
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0".into(),
            port: 15692,
            ssl_port: 0,
            ssl_cert: PathBuf::new(),
            ssl_key: PathBuf::new(),
        }
    }
}

/// The TLS listener (RabbitMQ's `listeners.ssl` and `ssl_options`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address to bind.
    pub bind: String,
    /// Port (RabbitMQ's 5671).
    pub port: u16,
    /// PEM certificate chain, leaf first; empty: no TLS listener.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates are verified against.
    pub ca: PathBuf,
    /// Ask for and verify client certificates (`ssl_options.verify = verify_peer`).
    pub verify_peer: bool,
    /// Refuse clients without a certificate (`ssl_options.fail_if_no_peer_cert`).
    pub fail_if_no_peer_cert: bool,
    /// Where EXTERNAL takes the user name from in a verified client certificate
    /// (`ssl_cert_login_from`): `common_name` (the subject's CN), `distinguished_name` (the
    /// whole subject, RFC 4514) or `subject_alternative_name`.
    pub cert_login_from: String,
    /// With `subject_alternative_name`: which kind of SAN (`ssl_cert_login_san_type`: `dns`,
    /// `ip`, `email`, `uri`).
    pub cert_login_san_type: String,
    /// With `subject_alternative_name`: which of the SANs of that kind, from 0
    /// (`ssl_cert_login_san_index`).
    pub cert_login_san_index: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0".into(),
            port: 5671,
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            verify_peer: false,
            fail_if_no_peer_cert: false,
            cert_login_from: "common_name".into(),
            cert_login_san_type: "dns".into(),
            cert_login_san_index: 0,
        }
    }
}

/// The disk alarm (RabbitMQ's `disk_free_limit`): while the data dir's filesystem has less
/// free space than this, publishing connections are blocked (`connection.blocked`, "low on
/// disk"); consumers go on, and acks free space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Free bytes below which the alarm is raised (RabbitMQ: 50 MB). 0 turns it off.
    pub free_limit_bytes: u64,
    /// A limit relative to the machine's RAM instead (RabbitMQ's `disk_free_limit.relative`,
    /// e.g. 1.0 or 1.5); 0.0 means "use `free_limit_bytes`".
    pub free_limit_relative: f64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            free_limit_bytes: 50_000_000,
            free_limit_relative: 0.0,
        }
    }
}

impl DiskConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=100.0).contains(&self.free_limit_relative) {
            return Err(invalid(
                "disk.free_limit_relative",
                "must be between 0.0 and 100.0",
            ));
        }
        Ok(())
    }

    /// The limit in bytes for a machine with `total_ram` bytes.
    pub fn limit_bytes(&self, total_ram: u64) -> u64 {
        if self.free_limit_relative > 0.0 {
            (total_ram as f64 * self.free_limit_relative) as u64
        } else {
            self.free_limit_bytes
        }
    }
}

/// Parses a size as RabbitMQ's configuration writes it: bytes, or a number with `kB`, `MB`,
/// `GB` (powers of 1000) or `k`/`KiB`, `M`/`MiB`, `G`/`GiB` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (bytes, or e.g. 50MB, 1GiB)"))?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

impl TlsConfig {
    /// Whether the TLS listener is on.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if ![
            "common_name",
            "distinguished_name",
            "subject_alternative_name",
        ]
        .contains(&self.cert_login_from.as_str())
        {
            return Err(invalid(
                "tls.cert_login_from",
                "must be common_name, distinguished_name or subject_alternative_name",
            ));
        }
        if !["dns", "ip", "email", "uri"].contains(&self.cert_login_san_type.as_str()) {
            return Err(invalid(
                "tls.cert_login_san_type",
                "must be dns, ip, email or uri",
            ));
        }
        Ok(())
    }
}

/// A definitions file in RabbitMQ's format, imported at every start before clients are
/// accepted (RabbitMQ's `load_definitions`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefinitionsConfig {
    /// Path of the file; empty: none.
    pub load: PathBuf,
}

/// The memory alarm (RabbitMQ's `vm_memory_high_watermark`): above it, publishing connections
/// are blocked (`connection.blocked`) until memory use falls again; consumers go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Fraction of the machine's RAM (RabbitMQ 3.10.8: 0.4).
    pub high_watermark: f64,
    /// An absolute limit in bytes instead (0: use the fraction).
    pub high_watermark_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            high_watermark: 0.4,
            high_watermark_bytes: 0,
        }
    }
}

impl MemoryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.high_watermark) {
            return Err(invalid(
                "memory.high_watermark",
                "must be between 0.0 and 1.0",
            ));
        }
        Ok(())
    }

    /// The limit in bytes for a machine with `total_ram` bytes.
    pub fn limit_bytes(&self, total_ram: u64) -> u64 {
        if self.high_watermark_bytes > 0 {
            self.high_watermark_bytes
        } else {
            (total_ram as f64 * self.high_watermark) as u64
        }
    }
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
    /// Largest message body accepted, bytes; 0 (the default) is the `compat` release's default:
    /// 128 MiB for 3.10, 16 MiB for 4.
    pub max_message_size: u64,
    /// Seconds a client has to finish the handshake (RabbitMQ: 10).
    pub handshake_timeout: u64,
    /// Milliseconds a delivery may stay unacknowledged before its channel is closed with 406
    /// (RabbitMQ's `consumer_timeout`, 30 minutes in 3.10); 0 turns it off.
    pub consumer_timeout: u64,
    /// `product` in `connection.start`'s server properties. Clients switch features on for
    /// `RabbitMQ` (some Perl, PHP and kombu versions), so that is the default.
    pub product: String,
    /// `version` in the server properties: the RabbitMQ version Warren behaves like.
    pub product_version: String,
    /// Whether the plain (non-TLS) listener `bind`:`port` is on.
    pub plain: bool,
    /// Which RabbitMQ's defaults to follow where 4.x changed them: `"3.10"` (the default) or
    /// `"4"`. See [`Compat`].
    pub compat: Compat,
}

/// The RabbitMQ release whose defaults Warren follows where RabbitMQ 4.x changed them
/// (`amqp.compat`). What `"4"` changes (each as RabbitMQ 4.0-4.3 does by default):
/// - a quorum queue declared without `x-delivery-limit` (and no `delivery-limit` policy) gets
///   the limit [`Compat::QUORUM_DELIVERY_LIMIT_4`] (4.0);
/// - `amqp.max_message_size = 0` (the default) means 16 MiB instead of 128 MiB (4.0);
/// - `basic.qos` with `global = true` sets the per-consumer prefetch (4.3, deprecated feature
///   `global_qos` denied);
/// - declaring a new non-durable, non-exclusive queue fails with 541 (4.3, deprecated feature
///   `transient_nonexcl_queues` denied);
/// - a passive `exchange.declare` or `queue.declare` needs `configure` permission (4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Compat {
    /// RabbitMQ 3.10.8 (the default).
    #[default]
    #[serde(rename = "3.10")]
    V3_10,
    /// RabbitMQ 4.x.
    #[serde(rename = "4")]
    V4,
}

impl Compat {
    /// RabbitMQ 4.0's default `delivery-limit` of quorum queues.
    pub const QUORUM_DELIVERY_LIMIT_4: u64 = 20;

    /// The delivery limit a quorum queue declared without one gets.
    pub fn default_quorum_delivery_limit(self) -> Option<u64> {
        match self {
            Compat::V3_10 => None,
            Compat::V4 => Some(Self::QUORUM_DELIVERY_LIMIT_4),
        }
    }

    /// RabbitMQ 3.10's default `max_message_size` (128 MiB).
    pub const MAX_MESSAGE_SIZE_3_10: u64 = 134_217_728;
    /// RabbitMQ 4.0's default `max_message_size` (16 MiB).
    pub const MAX_MESSAGE_SIZE_4: u64 = 16_777_216;

    /// The largest message body accepted, given `amqp.max_message_size` (0: this release's
    /// default).
    pub fn max_message_size(self, configured: u64) -> u64 {
        match (configured, self) {
            (0, Compat::V3_10) => Self::MAX_MESSAGE_SIZE_3_10,
            (0, Compat::V4) => Self::MAX_MESSAGE_SIZE_4,
            (n, _) => n,
        }
    }

    /// Whether `basic.qos(global = true)` limits the whole channel (3.10) or is taken as
    /// per-consumer (4.3 denies the deprecated feature `global_qos`).
    pub fn global_qos(self) -> bool {
        self == Compat::V3_10
    }

    /// Whether a new non-durable, non-exclusive queue may be declared (4.3 denies the
    /// deprecated feature `transient_nonexcl_queues`).
    pub fn transient_nonexclusive_queues(self) -> bool {
        self == Compat::V3_10
    }

    /// Whether passive declares check `configure` permission (4.3 does).
    pub fn passive_declare_needs_configure(self) -> bool {
        self == Compat::V4
    }
}

/// One more AMQP listener (`[[listeners]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind.
    pub bind: String,
    /// TCP port (0: ephemeral).
    pub port: u16,
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
    /// The vhost created on first start (RabbitMQ's `default_vhost`, `/`).
    pub default_vhost: String,
}

/// Storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Size in bytes at which a queue's message segment file is rotated.
    pub segment_size: u64,
    /// Ready messages a durable queue keeps in memory; beyond that its backlog stays on disk
    /// and is read back as consumers catch up (0 = keep everything in memory).
    pub queue_memory_messages: usize,
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
            max_message_size: 0,
            handshake_timeout: 10,
            consumer_timeout: 1_800_000,
            product: "RabbitMQ".into(),
            product_version: "3.10.8".into(),
            plain: true,
            compat: Compat::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            default_user: "guest".into(),
            default_pass: "guest".into(),
            loopback_users: vec!["guest".into()],
            default_vhost: "/".into(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./warren-data"),
            segment_size: 16 * 1024 * 1024,
            queue_memory_messages: 100_000,
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

/// Longest `amqp.handshake_timeout` accepted, in seconds.
pub const HANDSHAKE_TIMEOUT_MAX: u64 = 3600;

/// A configuration that cannot be used, naming the key at fault. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid TOML, or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A key that Warren does not know (a typo, or a RabbitMQ key Warren does not have).
    #[error("unknown configuration key `{key}` (known keys here: {known})")]
    UnknownKey {
        /// Dotted key, e.g. `amqp.frame_mx`.
        key: String,
        /// The keys allowed at that level, comma separated.
        known: String,
    },
    /// A value out of range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `amqp.frame_max`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// Parses a TOML document (missing keys take their defaults) and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_toml(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML document, rejecting unknown keys and wrongly typed values, without checking
    /// value ranges: for callers that override some keys before calling [`Config::validate`].
    pub fn parse_toml(text: &str) -> Result<Self, ConfigError> {
        let doc: toml::Table = text.parse().map_err(|e| parse_error(text, &e))?;
        check_known_keys(&doc, &default_table()?, "")?;
        toml::from_str(text).map_err(|e| parse_error(text, &e))
    }

    /// Checks every value, returning the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for l in &self.listeners {
            check_bind(&l.bind).map_err(|r| invalid("listeners.bind", r))?;
        }
        self.amqp.validate()?;
        self.auth.validate()?;
        self.storage.validate()?;
        self.memory.validate()?;
        self.disk.validate()?;
        self.tls.validate()?;
        check_bind(&self.management.bind).map_err(|r| invalid("management.bind", r))?;
        if self.management.collect_statistics_interval == 0 {
            return Err(invalid(
                "management.collect_statistics_interval",
                "must be at least 1",
            ));
        }
        if self.management.ssl_port != 0 {
            let o = self.management.ssl_options(&self.tls);
            check_https("management.ssl_port", &o, "management.ssl")?;
        }
        check_bind(&self.prometheus.bind).map_err(|r| invalid("prometheus.bind", r))?;
        if self.prometheus.ssl_port != 0 {
            let o = self.prometheus.ssl_options(&self.tls);
            check_https("prometheus.ssl_port", &o, "prometheus.ssl")?;
        }
        self.log.validate()
    }
}

impl Config {
    /// Every AMQP listener: `amqp.bind`:`amqp.port` first, then `listeners`.
    pub fn amqp_listeners(&self) -> Vec<ListenerConfig> {
        let mut v = Vec::new();
        if self.amqp.plain {
            v.push(ListenerConfig {
                bind: self.amqp.bind.clone(),
                port: self.amqp.port,
            });
        }
        v.extend(self.listeners.iter().cloned());
        v
    }
}

impl AmqpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_bind(&self.bind).map_err(|r| invalid("amqp.bind", r))?;
        // `port`: every u16 is fine; 0 asks the OS for an ephemeral port.
        if self.frame_max < warren_codec::FRAME_MIN_SIZE {
            return Err(invalid(
                "amqp.frame_max",
                format!("must be at least {}", warren_codec::FRAME_MIN_SIZE),
            ));
        }
        if self.channel_max == 0 {
            return Err(invalid("amqp.channel_max", "must be between 1 and 65535"));
        }
        // `heartbeat`: every u16 is fine; 0 disables heartbeats.
        // RabbitMQ refuses a `max_message_size` above its hard cap, 512 MiB; 0 is the default.
        let cap = warren_codec::MAX_BODY_SIZE;
        if self.max_message_size > cap {
            return Err(invalid(
                "amqp.max_message_size",
                format!("must be between 0 (the default) and {cap} bytes (512 MiB)"),
            ));
        }
        if self.handshake_timeout == 0 || self.handshake_timeout > HANDSHAKE_TIMEOUT_MAX {
            return Err(invalid(
                "amqp.handshake_timeout",
                format!("must be between 1 and {HANDSHAKE_TIMEOUT_MAX} seconds"),
            ));
        }
        Ok(())
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_credential(&self.default_user).map_err(|r| invalid("auth.default_user", r))?;
        // RabbitMQ refuses to log anyone in with a blank password, so a blank default
        // password would make the default user unusable.
        check_credential(&self.default_pass).map_err(|r| invalid("auth.default_pass", r))?;
        for (i, user) in self.loopback_users.iter().enumerate() {
            check_credential(user)
                .map_err(|r| invalid("auth.loopback_users", format!("entry {}: {r}", i + 1)))?;
        }
        Ok(())
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let raw = self.data_dir.as_os_str();
        if raw.is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        if raw.as_encoded_bytes().contains(&0) {
            return Err(invalid(
                "storage.data_dir",
                "must not contain a NUL character",
            ));
        }
        if self.segment_size < 4096 {
            return Err(invalid("storage.segment_size", "must be at least 4096"));
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_log_filter(&self.level).map_err(|r| invalid("log.level", r))?;
        match self.format.as_str() {
            "text" | "json" => Ok(()),
            other => Err(invalid(
                "log.format",
                format!("`{other}` is neither `text` nor `json`"),
            )),
        }
    }
}

/// An IP address or a host name, as `TcpListener::bind((bind, port))` takes it.
fn check_bind(bind: &str) -> Result<(), String> {
    if bind.is_empty() {
        return Err("must not be empty (`0.0.0.0` listens on every IPv4 interface, `::` on every interface)".into());
    }
    if bind.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if bind.starts_with('[') {
        return Err(format!(
            "`{bind}`: write an IPv6 address without brackets, e.g. `::1`"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if bind.len() <= 253 && bind.trim_end_matches('.').split('.').all(label_ok) {
        return Ok(());
    }
    Err(format!(
        "`{bind}` is neither an IP address nor a host name (the port is set by `amqp.port`)"
    ))
}

/// A user name or password: non-empty, and free of control characters (SASL PLAIN separates
/// its fields with NUL).
fn check_credential(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Words people write for a level that `tracing` would silently take as a target name.
const LEVEL_TYPOS: &[(&str, &str)] = &[
    ("warning", "warn"),
    ("err", "error"),
    ("critical", "error"),
    ("fatal", "error"),
    ("notice", "info"),
    ("information", "info"),
    ("verbose", "debug"),
    ("all", "trace"),
    ("none", "off"),
];

/// A level (`info`) or a `tracing` filter (`warn,warren_core=debug`), in the syntax of
/// `tracing_subscriber::EnvFilter`, except that a target needs its level: `warren_core=trace`.
fn check_log_filter(filter: &str) -> Result<(), String> {
    use std::str::FromStr;
    use tracing::level_filters::LevelFilter;

    let is_level = |s: &str| LevelFilter::from_str(s).is_ok();
    let target_ok = |t: &str| {
        let name = t.split('[').next().unwrap_or(t);
        let name_ok = name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
        let span_ok = !t.contains('[') || t.ends_with(']');
        !t.is_empty() && name_ok && span_ok
    };
    let mut directives = 0;
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        directives += 1;
        if let Some((_, right)) = LEVEL_TYPOS
            .iter()
            .find(|(typo, _)| d.eq_ignore_ascii_case(typo))
        {
            return Err(format!("`{d}` is not a level; did you mean `{right}`?"));
        }
        // `target[span{field=value}]=level`: the level is after the last `]`.
        let tail = d.rfind(']').map_or(0, |i| i + 1);
        let (target, level) = match d[tail..].find('=') {
            Some(eq) => (&d[..tail + eq], Some(&d[tail + eq + 1..])),
            None => (d, None),
        };
        match level {
            Some(level) if !is_level(level) => {
                return Err(format!(
                    "`{level}` in `{d}` is not one of off, error, warn, info, debug, trace"
                ));
            }
            Some(_) if !target_ok(target) => {
                return Err(format!("`{target}` in `{d}` is not a valid target"));
            }
            // EnvFilter would take a bare word as a target to trace; a typo is likelier.
            None if !is_level(d) => {
                return Err(format!(
                    "`{d}` is not one of off, error, warn, info, debug, trace \
                     (write `target=level` to filter by target)"
                ));
            }
            _ => {}
        }
    }
    if directives == 0 {
        return Err("must not be empty (e.g. `info`, or `warn,warren_core=debug`)".into());
    }
    Ok(())
}

/// The default configuration as a TOML table: the set of known keys.
fn default_table() -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(Config::default())
        .map_err(|e| ConfigError::Parse(format!("cannot serialize the defaults: {e}")))
}

/// Rejects the first key of `doc` that `known` does not have, naming it with its full path.
/// (serde's `deny_unknown_fields` would reject it too, but without the section.)
fn check_known_keys(
    doc: &toml::Table,
    known: &toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (key, value) in doc {
        let path = format!("{prefix}{key}");
        match (known.get(key), value) {
            (None, _) => {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                return Err(ConfigError::UnknownKey {
                    key: path,
                    known: names.join(", "),
                });
            }
            (Some(toml::Value::Table(k)), toml::Value::Table(v)) => {
                check_known_keys(v, k, &format!("{path}."))?;
            }
            // A wrong type (e.g. a table where a number belongs) is reported by the typed parse.
            _ => {}
        }
    }
    Ok(())
}

/// One line: where in the document, which key, and what is wrong.
fn parse_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let mut message = err.message().trim().replace('\n', " ");
    if let Some(i) = message.find("expected struct ") {
        message.replace_range(i.., "expected a table");
    }
    let Some(span) = err.span() else {
        return ConfigError::Parse(message);
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    match key_at(before) {
        Some(key) => {
            ConfigError::Parse(format!("line {line}, column {column}, `{key}`: {message}"))
        }
        None => ConfigError::Parse(format!("line {line}, column {column}: {message}")),
    }
}

/// The dotted key whose value starts where `before` ends, for a plain `key = value` line under
/// a `[section]` header (the only shape Warren's configuration has); `None` when unsure.
fn key_at(before: &str) -> Option<String> {
    let mut lines = before.rsplit('\n');
    let (key, _) = lines.next()?.split_once('=')?;
    let key = key.trim();
    let bare = |k: &str| {
        !k.is_empty()
            && k.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
    };
    if !bare(key) {
        return None;
    }
    let section = lines
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|l| l.strip_prefix('[')?.split(']').next())
        .map(str::trim);
    match section {
        None => Some(key.to_owned()),
        Some(section) if bare(section) => Some(format!("{section}.{key}")),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn sizes_parse_as_rabbitmq_writes_them() {
        use super::parse_size;
        assert_eq!(parse_size("50000000"), Ok(50_000_000));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size(" 3 kB "), Ok(3000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5PB").is_err());
        assert!(parse_size("99999999999999999999GB").is_err());
    }

    use super::*;

    fn err(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(cfg) => panic!("accepted {text:?} as {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn invalid_key(text: &str) -> &'static str {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text:?}: expected an invalid value, got {other:?}"),
        }
    }

    #[test]
    fn empty_document_gives_the_defaults() {
        assert_eq!(Config::from_toml("").expect("empty"), Config::default());
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn missing_keys_take_their_defaults() {
        let cfg = Config::from_toml("[amqp]\nport = 5673\n").expect("valid");
        assert_eq!(cfg.amqp.port, 5673);
        assert_eq!(cfg.amqp.frame_max, 131_072);
        assert_eq!(cfg.auth, AuthConfig::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let e = err("[amqp]\nport = 5672\nframe_mx = 4096\n");
        assert!(e.contains("`amqp.frame_mx`"), "{e}");
        assert!(e.contains("frame_max"), "lists the known keys: {e}");
        let e = err("vm_memory_high_watermark = 0.4\n");
        assert!(e.contains("`vm_memory_high_watermark`"), "{e}");
        let e = err("[managment]\nport = 15672\n");
        assert!(e.contains("`managment`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn syntax_and_type_errors_give_a_line() {
        let e = err("[amqp]\nport = \"five\"\n");
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.contains("`amqp.port`"), "names the key: {e}");
        let e = err("[amqp]\nport = 70000\n");
        assert!(e.contains("line 2") && e.contains("`amqp.port`"), "{e}");
        let e = err("log.level = 3\n");
        assert!(e.contains("`log.level`"), "{e}");
        let e = err("amqp = 5\n");
        assert!(
            e.contains("`amqp`") && e.contains("expected a table"),
            "{e}"
        );
        let e = err("[amqp\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn bind_must_be_an_address_or_host_name() {
        for ok in [
            "0.0.0.0",
            "127.0.0.1",
            "::",
            "::1",
            "localhost",
            "warren.example.org",
        ] {
            Config::from_toml(&format!("amqp.bind = \"{ok}\"")).expect(ok);
        }
        for bad in ["", "[::1]", "0.0.0.0:5672", "my host", "-bad-", "a..b"] {
            assert_eq!(
                invalid_key(&format!("amqp.bind = \"{bad}\"")),
                "amqp.bind",
                "{bad}"
            );
        }
    }

    #[test]
    fn port_zero_is_ephemeral_and_allowed() {
        assert_eq!(Config::from_toml("amqp.port = 0").expect("0").amqp.port, 0);
    }

    #[test]
    fn frame_max_has_a_floor() {
        let e = err("[amqp]\nframe_max = 10\n");
        assert_eq!(
            e,
            "invalid value for `amqp.frame_max`: must be at least 4096"
        );
        assert_eq!(invalid_key("amqp.frame_max = 0"), "amqp.frame_max");
        Config::from_toml("amqp.frame_max = 4096").expect("the minimum");
    }

    #[test]
    fn channel_max_must_not_be_zero() {
        assert_eq!(invalid_key("amqp.channel_max = 0"), "amqp.channel_max");
        Config::from_toml("amqp.channel_max = 65535").expect("max");
    }

    #[test]
    fn heartbeat_zero_disables() {
        assert_eq!(
            Config::from_toml("amqp.heartbeat = 0")
                .expect("0")
                .amqp
                .heartbeat,
            0
        );
    }

    #[test]
    fn max_message_size_is_bounded() {
        let zero = Config::from_toml("amqp.max_message_size = 0").expect("0");
        assert_eq!(
            zero.amqp
                .compat
                .max_message_size(zero.amqp.max_message_size),
            134_217_728
        );
        let v4 = Config::from_toml("amqp.max_message_size = 0\namqp.compat = \"4\"").expect("4");
        assert_eq!(v4.amqp.compat.max_message_size(0), 16_777_216);
        assert_eq!(v4.amqp.compat.max_message_size(1000), 1000);
        assert_eq!(
            invalid_key("amqp.max_message_size = 536870913"),
            "amqp.max_message_size"
        );
        Config::from_toml("amqp.max_message_size = 536870912").expect("512 MiB");
    }

    #[test]
    fn handshake_timeout_is_bounded() {
        assert_eq!(
            invalid_key("amqp.handshake_timeout = 0"),
            "amqp.handshake_timeout"
        );
        assert_eq!(
            invalid_key("amqp.handshake_timeout = 3601"),
            "amqp.handshake_timeout"
        );
        Config::from_toml("amqp.handshake_timeout = 1").expect("1 s");
    }

    #[test]
    fn prometheus_https_needs_a_certificate() {
        assert_eq!(
            invalid_key("[prometheus]\nssl_port = 15691"),
            "prometheus.ssl_port"
        );
        let c = Config::from_toml(
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[prometheus]\nssl_port = 15691",
        )
        .expect("tls.cert reused");
        let o = c.prometheus.ssl_options(&c.tls);
        assert_eq!((o.cert.to_str(), o.port), (Some("/c.pem"), 15691));
        let c = Config::from_toml(
            "[prometheus]\nssl_port = 15691\nssl_cert = \"/p.pem\"\nssl_key = \"/p.key\"",
        )
        .expect("its own certificate");
        let o = c.prometheus.ssl_options(&c.tls);
        assert_eq!(
            (o.cert.to_str(), o.key.to_str()),
            (Some("/p.pem"), Some("/p.key"))
        );
    }

    #[test]
    fn management_https_needs_a_certificate() {
        assert_eq!(
            invalid_key("[management]\nssl_port = 15671"),
            "management.ssl_port"
        );
        // The `[tls]` certificate is reused, or its own.
        let c = Config::from_toml(
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[management]\nssl_port = 15671",
        )
        .expect("tls.cert reused");
        let o = c.management.ssl_options(&c.tls);
        assert_eq!(
            (o.cert.to_str(), o.key.to_str()),
            (Some("/c.pem"), Some("/k.pem"))
        );
        assert_eq!(o.port, 15671);
        assert!(!o.verify_peer);
        let c = Config::from_toml(
            "[management]\nssl_port = 15671\nssl_cert = \"/m.pem\"\nssl_key = \"/m.key\"",
        )
        .expect("own certificate");
        let o = c.management.ssl_options(&c.tls);
        assert_eq!(
            (o.cert.to_str(), o.key.to_str()),
            (Some("/m.pem"), Some("/m.key"))
        );
    }

    #[test]
    fn credentials_must_be_non_empty_and_printable() {
        assert_eq!(invalid_key("auth.default_user = \"\""), "auth.default_user");
        assert_eq!(
            invalid_key("auth.default_user = \"a\\u0000b\""),
            "auth.default_user"
        );
        assert_eq!(invalid_key("auth.default_pass = \"\""), "auth.default_pass");
        assert_eq!(
            invalid_key("auth.loopback_users = [\"guest\", \"\"]"),
            "auth.loopback_users"
        );
        let e = err("auth.loopback_users = [\"guest\", \"\"]");
        assert!(e.contains("entry 2"), "{e}");
    }

    #[test]
    fn a_non_guest_default_user_is_not_loopback_only() {
        let cfg =
            Config::from_toml("[auth]\ndefault_user = \"admin\"\ndefault_pass = \"s3cret\"\n")
                .expect("valid");
        assert!(!cfg.auth.loopback_users.contains(&cfg.auth.default_user));
        let cfg = Config::from_toml("auth.loopback_users = []").expect("valid");
        assert!(cfg.auth.loopback_users.is_empty());
    }

    #[test]
    fn data_dir_must_not_be_empty() {
        assert_eq!(invalid_key("storage.data_dir = \"\""), "storage.data_dir");
        assert_eq!(
            invalid_key("storage.data_dir = \"a\\u0000b\""),
            "storage.data_dir"
        );
        Config::from_toml("storage.data_dir = \"/var/lib/warren\"").expect("absolute");
    }

    #[test]
    fn log_level_takes_levels_and_filters() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "warn,warren_core=debug",
            "warren_core::server=trace",
            "info,warren_core[conn{id=1}]=trace",
            "info,",
        ] {
            Config::from_toml(&format!("log.level = \"{ok}\"")).expect(ok);
        }
        for bad in [
            "",
            " , ",
            "warning",
            "verbose",
            "loud",
            "warren_core",
            "info,warren=loud",
            "=info",
            "a b=info",
            "x[y=info",
        ] {
            assert_eq!(
                invalid_key(&format!("log.level = \"{bad}\"")),
                "log.level",
                "{bad:?}"
            );
        }
        let e = err("log.level = \"warning\"");
        assert!(e.contains("did you mean `warn`"), "{e}");
    }

    #[test]
    fn log_format_is_text_or_json() {
        Config::from_toml("log.format = \"json\"").expect("json");
        Config::from_toml("log.format = \"text\"").expect("text");
        let e = err("log.format = \"xml\"");
        assert_eq!(
            e,
            "invalid value for `log.format`: `xml` is neither `text` nor `json`"
        );
    }
}
