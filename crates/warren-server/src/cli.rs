//! Command line: flags, their `WARREN_*` environment variables, and how they layer over the
//! configuration file. Precedence: flag > environment variable > file > built-in default.

use crate::rabbitmq_env::{self, RabbitmqEnv};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use warren_core::config::ConfigError;
use warren_core::Config;

/// Warren, an AMQP 0-9-1 message broker.
#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    after_help = "Settings: flag > WARREN_* environment variable > --config file > default.\n\
                  RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS (as in RabbitMQ's image) set\n\
                  the default user when neither the flag nor the WARREN_* variable does.\n\
                  `warren healthcheck` probes a running broker (exit 0 healthy, 1 not)."
)]
pub struct Cli {
    /// A mode other than running the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Broker settings (ignored by the subcommands).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Modes other than running the broker.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 if a broker answers the AMQP 0-9-1 protocol header with a method frame
    /// (`connection.start`), else 1. Made for Docker's HEALTHCHECK.
    Healthcheck(HealthcheckArgs),
    /// rabbitmqctl-like administration of a running broker through its management HTTP API
    /// (`warren ctl list_queues name messages`, `warren ctl add_user bob secret`, ...).
    Ctl(crate::ctl::CtlArgs),
}

/// `warren healthcheck` options.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Host to connect to.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// AMQP port [default: `amqp.port` of the --config file, else 5672].
    #[arg(long, env = "WARREN_PORT")]
    pub port: Option<u16>,
    /// The broker's configuration file, read for `amqp.port` when no port is given.
    #[arg(long, env = "WARREN_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the whole exchange.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub timeout: u64,
}

/// Broker settings; each overrides the same key of the configuration file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; every key is optional (see --print-default-config).
    #[arg(long, env = "WARREN_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on (`amqp.bind`).
    #[arg(long, env = "WARREN_BIND", value_name = "ADDR")]
    pub bind: Option<String>,
    /// AMQP port, 0 for an ephemeral one (`amqp.port`).
    #[arg(long, env = "WARREN_PORT", value_name = "N")]
    pub port: Option<u16>,
    /// Data directory, created if missing (`storage.data_dir`).
    #[arg(long, env = "WARREN_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Log level or tracing filter, e.g. `info` or `warn,warren_core=debug` (`log.level`).
    #[arg(long, env = "WARREN_LOG_LEVEL", value_name = "L")]
    pub log_level: Option<String>,
    /// Log format (`log.format`).
    #[arg(long, env = "WARREN_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// User created on first start (`auth.default_user`). Only `guest` is loopback-only by
    /// default.
    #[arg(long, env = "WARREN_DEFAULT_USER", value_name = "USER")]
    pub default_user: Option<String>,
    /// Password of the default user (`auth.default_pass`). Prefer the environment variable:
    /// flags are visible to every local user in the process list.
    #[arg(
        long,
        env = "WARREN_DEFAULT_PASS",
        value_name = "PASS",
        hide_env_values = true
    )]
    pub default_pass: Option<String>,
    /// Free disk space below which publishers are blocked (`disk.free_limit_bytes`): bytes, or
    /// a number with kB, MB, GB, KiB, MiB, GiB; 0 turns the disk alarm off.
    #[arg(long, env = "WARREN_DISK_FREE_LIMIT", value_name = "SIZE", value_parser = warren_core::config::parse_size)]
    pub disk_free_limit: Option<u64>,
    /// TLS port (`tls.port`, 5671).
    #[arg(long, env = "WARREN_TLS_PORT", value_name = "N")]
    pub tls_port: Option<u16>,
    /// PEM certificate chain; turns the TLS listener on (`tls.cert`).
    #[arg(long, env = "WARREN_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (`tls.key`).
    #[arg(long, env = "WARREN_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (`tls.ca`).
    #[arg(long, env = "WARREN_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Definitions file in RabbitMQ's format imported at start (`definitions.load`).
    #[arg(long, env = "WARREN_LOAD_DEFINITIONS", value_name = "PATH")]
    pub load_definitions: Option<PathBuf>,
    /// Address of the management HTTP API (`management.bind`).
    #[arg(long, env = "WARREN_MANAGEMENT_BIND", value_name = "ADDR")]
    pub management_bind: Option<String>,
    /// Port of the management HTTP API and web UI; 0 turns it off (`management.port`).
    #[arg(long, env = "WARREN_MANAGEMENT_PORT", value_name = "N")]
    pub management_port: Option<u16>,
    /// Port of the management API's HTTPS listener (RabbitMQ's `management.ssl.port`); 0: none
    /// (`management.ssl_port`; certificate from `management.ssl_cert` or `tls.cert`).
    #[arg(long, env = "WARREN_MANAGEMENT_SSL_PORT", value_name = "N")]
    pub management_ssl_port: Option<u16>,
    /// Address of the Prometheus endpoint (`prometheus.bind`).
    #[arg(long, env = "WARREN_PROMETHEUS_BIND", value_name = "ADDR")]
    pub prometheus_bind: Option<String>,
    /// Port of the Prometheus endpoint; 0 turns it off (`prometheus.port`).
    #[arg(long, env = "WARREN_PROMETHEUS_PORT", value_name = "N")]
    pub prometheus_port: Option<u16>,
    /// Port of the Prometheus endpoint's HTTPS listener (RabbitMQ's `prometheus.ssl.port`); 0:
    /// none (`prometheus.ssl_port`; certificate from `prometheus.ssl_cert` or `tls.cert`).
    #[arg(long, env = "WARREN_PROMETHEUS_SSL_PORT", value_name = "N")]
    pub prometheus_ssl_port: Option<u16>,
    /// Print a documented configuration file holding the defaults, and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

/// `log.format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The documented default configuration, printed by `--print-default-config`.
pub const DEFAULT_CONFIG: &str = include_str!("../warren.toml");

impl ServeArgs {
    /// Reads the configuration file (if any), applies the flags and environment variables over
    /// it (`rabbitmq`: the RabbitMQ image's variables, under the `WARREN_*` ones), and validates
    /// the result. Returns it with warnings to log once logging is set up. The error is one line
    /// naming the file or key at fault.
    pub fn load_config(&self, rabbitmq: &RabbitmqEnv) -> Result<(Config, Vec<String>), String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read configuration file {}: {e}", path.display())
                })?;
                Config::parse_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        self.apply(&mut config);
        let warnings = rabbitmq.apply(
            &mut config,
            self.default_user.is_some(),
            self.default_pass.is_some(),
        );
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, .. } => match self.source_of(key, rabbitmq) {
                Some(flag) => format!("{e} (set by {flag})"),
                None => match &self.config {
                    Some(path) => format!("{}: {e}", path.display()),
                    None => e.to_string(),
                },
            },
            other => other.to_string(),
        })?;
        Ok((config, warnings))
    }

    fn apply(&self, config: &mut Config) {
        if let Some(bind) = &self.bind {
            config.amqp.bind.clone_from(bind);
        }
        if let Some(port) = self.port {
            config.amqp.port = port;
        }
        if let Some(dir) = &self.data_dir {
            config.storage.data_dir.clone_from(dir);
        }
        if let Some(level) = &self.log_level {
            config.log.level.clone_from(level);
        }
        if let Some(format) = self.log_format {
            config.log.format = format.as_str().into();
        }
        if let Some(user) = &self.default_user {
            config.auth.default_user.clone_from(user);
        }
        if let Some(pass) = &self.default_pass {
            config.auth.default_pass.clone_from(pass);
        }
        if let Some(limit) = self.disk_free_limit {
            config.disk.free_limit_bytes = limit;
            config.disk.free_limit_relative = 0.0;
        }
        if let Some(port) = self.tls_port {
            config.tls.port = port;
        }
        if let Some(p) = &self.tls_cert {
            config.tls.cert.clone_from(p);
        }
        if let Some(p) = &self.tls_key {
            config.tls.key.clone_from(p);
        }
        if let Some(p) = &self.tls_ca {
            config.tls.ca.clone_from(p);
        }
        if let Some(path) = &self.load_definitions {
            config.definitions.load.clone_from(path);
        }
        if let Some(bind) = &self.management_bind {
            config.management.bind.clone_from(bind);
        }
        if let Some(port) = self.management_port {
            config.management.port = port;
        }
        if let Some(port) = self.management_ssl_port {
            config.management.ssl_port = port;
        }
        if let Some(bind) = &self.prometheus_bind {
            config.prometheus.bind.clone_from(bind);
        }
        if let Some(port) = self.prometheus_ssl_port {
            config.prometheus.ssl_port = port;
        }
        if let Some(port) = self.prometheus_port {
            config.prometheus.port = port;
        }
    }

    /// The flag and variable that set `key`, when one did.
    fn source_of(&self, key: &str, rabbitmq: &RabbitmqEnv) -> Option<&'static str> {
        match key {
            "auth.default_user" if rabbitmq.sets_user(self.default_user.is_some()) => {
                return Some(rabbitmq_env::USER_VAR)
            }
            "auth.default_pass" if rabbitmq.sets_pass(self.default_pass.is_some()) => {
                return Some(rabbitmq_env::PASS_VAR)
            }
            _ => {}
        }
        let (set, source) = match key {
            "amqp.bind" => (self.bind.is_some(), "--bind or WARREN_BIND"),
            "amqp.port" => (self.port.is_some(), "--port or WARREN_PORT"),
            "storage.data_dir" => (self.data_dir.is_some(), "--data-dir or WARREN_DATA_DIR"),
            "log.level" => (self.log_level.is_some(), "--log-level or WARREN_LOG_LEVEL"),
            "log.format" => (
                self.log_format.is_some(),
                "--log-format or WARREN_LOG_FORMAT",
            ),
            "auth.default_user" => (
                self.default_user.is_some(),
                "--default-user or WARREN_DEFAULT_USER",
            ),
            "auth.default_pass" => (
                self.default_pass.is_some(),
                "--default-pass or WARREN_DEFAULT_PASS",
            ),
            "management.bind" => (
                self.management_bind.is_some(),
                "--management-bind or WARREN_MANAGEMENT_BIND",
            ),
            "management.ssl_port" => (
                self.management_ssl_port.is_some(),
                "--management-ssl-port or WARREN_MANAGEMENT_SSL_PORT",
            ),
            "prometheus.bind" => (
                self.prometheus_bind.is_some(),
                "--prometheus-bind or WARREN_PROMETHEUS_BIND",
            ),
            "prometheus.ssl_port" => (
                self.prometheus_ssl_port.is_some(),
                "--prometheus-ssl-port or WARREN_PROMETHEUS_SSL_PORT",
            ),
            "disk.free_limit_relative" => (
                self.disk_free_limit.is_some(),
                "--disk-free-limit or WARREN_DISK_FREE_LIMIT",
            ),
            _ => return None,
        };
        set.then_some(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_config_file_is_exactly_the_defaults() {
        assert_eq!(
            Config::from_toml(DEFAULT_CONFIG).expect("warren.toml parses"),
            Config::default()
        );
    }

    /// Every key is written out (not left to its default), so the file documents all of them.
    #[test]
    fn default_config_file_names_every_key() {
        let file: toml::Table = DEFAULT_CONFIG.parse().expect("toml");
        let defaults = toml::Table::try_from(Config::default()).expect("serialize");
        assert_eq!(file, defaults);
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["warren"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parse").serve
    }

    impl ServeArgs {
        /// `load_config` without the RabbitMQ variables, ignoring warnings.
        fn load(&self) -> Result<Config, String> {
            self.load_config(&RabbitmqEnv::default()).map(|(c, _)| c)
        }
    }

    fn rabbitmq(user: &str, pass: &str) -> RabbitmqEnv {
        RabbitmqEnv {
            default_user: Some(user.into()),
            default_pass: Some(pass.into()),
            default_vhost: None,
        }
    }

    #[test]
    fn rabbitmq_variables_rank_below_warren_ones_and_above_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("warren.toml");
        std::fs::write(
            &path,
            "[auth]\ndefault_user = \"file\"\ndefault_pass = \"f\"\n",
        )
        .expect("write");
        let path = path.to_str().expect("utf-8");
        let (cfg, warnings) = parse(&["--config", path])
            .load_config(&rabbitmq("rmq", "rp"))
            .expect("valid");
        assert_eq!(
            (
                cfg.auth.default_user.as_str(),
                cfg.auth.default_pass.as_str()
            ),
            ("rmq", "rp")
        );
        assert!(warnings.is_empty());
        let (cfg, _) = parse(&["--config", path, "--default-user", "w"])
            .load_config(&rabbitmq("rmq", "rp"))
            .expect("valid");
        assert_eq!(
            (
                cfg.auth.default_user.as_str(),
                cfg.auth.default_pass.as_str()
            ),
            ("w", "rp")
        );
    }

    #[test]
    fn a_bad_rabbitmq_value_names_the_variable() {
        let err = parse(&[])
            .load_config(&rabbitmq("guest\u{0}", "pw"))
            .expect_err("invalid user");
        assert!(err.contains("RABBITMQ_DEFAULT_USER"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("warren.toml");
        std::fs::write(
            &path,
            "[amqp]\nport = 1111\nbind = \"127.0.0.1\"\n[log]\nlevel = \"debug\"\n",
        )
        .expect("write");
        let path = path.to_str().expect("utf-8");
        let cfg = parse(&["--config", path, "--port", "2222", "--log-format", "json"])
            .load()
            .expect("valid");
        assert_eq!(cfg.amqp.port, 2222, "flag wins");
        assert_eq!(cfg.amqp.bind, "127.0.0.1", "file kept");
        assert_eq!(cfg.log.level, "debug", "file kept");
        assert_eq!(cfg.log.format, "json");
        assert_eq!(cfg.amqp.frame_max, 131_072, "default kept");
    }

    #[test]
    fn default_user_flags_set_auth() {
        let cfg = parse(&["--default-user", "admin", "--default-pass", "pw"])
            .load()
            .expect("valid");
        assert_eq!(cfg.auth.default_user, "admin");
        assert_eq!(cfg.auth.default_pass, "pw");
        assert_eq!(cfg.auth.loopback_users, vec!["guest".to_string()]);
    }

    #[test]
    fn a_bad_flag_value_names_key_and_flag() {
        let err = parse(&["--log-level", "warning"])
            .load()
            .expect_err("invalid");
        assert!(err.contains("`log.level`"), "{err}");
        assert!(err.contains("--log-level or WARREN_LOG_LEVEL"), "{err}");
    }

    #[test]
    fn a_file_value_overridden_by_a_flag_is_not_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("warren.toml");
        std::fs::write(&path, "log.level = \"debug,warren=loud\"\n").expect("write");
        let path = path.to_str().expect("utf-8");
        parse(&["--config", path, "--log-level", "info"])
            .load()
            .expect("flag replaces the bad value");
        let err = parse(&["--config", path]).load().expect_err("bad");
        assert!(err.contains(path) && err.contains("`log.level`"), "{err}");
    }

    #[test]
    fn missing_file_is_reported() {
        let err = parse(&["--config", "/nonexistent/warren.toml"])
            .load()
            .expect_err("missing");
        assert!(
            err.starts_with("cannot read configuration file /nonexistent/warren.toml"),
            "{err}"
        );
    }

    #[test]
    fn healthcheck_is_a_subcommand() {
        let cli = Cli::try_parse_from(["warren", "healthcheck", "--port", "5673"]).expect("parse");
        match cli.command {
            Some(Command::Healthcheck(h)) => {
                assert_eq!(
                    (h.host.as_str(), h.port, h.timeout),
                    ("127.0.0.1", Some(5673), 3)
                );
            }
            _ => panic!("not healthcheck"),
        }
    }
}
