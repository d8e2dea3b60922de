//! The `warren` binary: parse the command line, load the configuration, start logging, lock the
//! data directory, bind, and run the broker until SIGTERM or SIGINT.
//!
//! Exit status: 0 after a clean shutdown, 1 on a configuration, data directory, bind or runtime
//! error (reported in one line on stderr), 2 on a command-line usage error.

mod cli;
mod ctl;
mod healthcheck;
mod rabbitmq_env;

use clap::Parser;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use warren_core::config::LogConfig;

/// mimalloc instead of glibc malloc: messages are allocated on the publisher's worker thread and
/// freed on the consumer's, a pattern where glibc's arenas spent about a fifth of the broker's
/// CPU (free-list consolidation) in the 16-byte auto-ack profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use warren_core::datadir::DataDir;
use warren_core::Config;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli.command {
        Some(cli::Command::Healthcheck(args)) => healthcheck::run(&args),
        Some(cli::Command::Ctl(args)) => ctl::run(&args),
        None if cli.serve.print_default_config => print_default_config(),
        None => serve(&cli.serve),
    }
}

/// A command-line error: clap's exit status (2) for the broker, rabbitmqctl's (64) for `ctl`;
/// `--help` and `--version` print and exit 0.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let is_ctl = std::env::args_os().nth(1).is_some_and(|a| a == "ctl");
    if !is_ctl
        || matches!(
            e.kind(),
            ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    {
        e.exit();
    }
    let _ = e.print();
    ExitCode::from(ctl::EXIT_USAGE)
}

/// Reports an error that happens before logging is set up.
fn report(message: &str) {
    let _ = writeln!(std::io::stderr(), "warren: {message}");
}

fn print_default_config() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(cli::DEFAULT_CONFIG.as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&format!("cannot write the default configuration: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &cli::ServeArgs) -> ExitCode {
    let (config, warnings) = match args.load_config(&rabbitmq_env::RabbitmqEnv::from_process()) {
        Ok(loaded) => loaded,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = init_tracing(&config.log) {
        report(&e);
        return ExitCode::FAILURE;
    }
    for warning in &warnings {
        warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard limit (each connection is a descriptor;
/// distributions start processes with a soft limit of 1024) and logs what it got.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let before = getrlimit(Resource::Nofile);
    let mut want = before;
    if want.current < want.maximum {
        want.current = want.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, want) {
            warn!(error = %e, "cannot raise the open files limit");
        }
    }
    let now = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    info!(
        soft = %show(now.current),
        hard = %show(now.maximum),
        was = %show(before.current),
        "open files limit"
    );
}

/// Logs go to stderr (stdout is for `--print-default-config`), filtered by `log.level`.
fn init_tracing(log: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&log.level)
        .map_err(|e| format!("invalid value for `log.level`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if log.format == "json" {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

async fn run(config: Config) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone()).map_err(|e| format!("cannot install signal handlers: {e}"))?;

    // Held until the broker has stopped: the lock keeps a second warren off this directory.
    let data_dir = DataDir::open(&config.storage.data_dir).map_err(|e| e.to_string())?;
    raise_open_files_limit();
    let listeners = warren_core::server::bind_all(&config).await?;
    for l in &listeners {
        let addr = l
            .local_addr()
            .map_err(|e| format!("cannot read the listening address: {e}"))?;
        info!(
            %addr,
            data_dir = %data_dir.path().display(),
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );
    }
    let management = bind_http(
        "management",
        &config.management.bind,
        config.management.port,
    )
    .await?;
    let management_tls = bind_http(
        "management (HTTPS)",
        &config.management.bind,
        config.management.ssl_port,
    )
    .await?;
    let prometheus = bind_http(
        "prometheus",
        &config.prometheus.bind,
        config.prometheus.port,
    )
    .await?;
    let prometheus_tls = bind_http(
        "prometheus (HTTPS)",
        &config.prometheus.bind,
        config.prometheus.ssl_port,
    )
    .await?;
    let broker = tokio::task::spawn_blocking(move || warren_core::Broker::open(config))
        .await
        .map_err(|e| format!("broker failed: {e}"))?
        .map_err(|e| format!("broker failed: {e}"))?;
    warren_core::server::import_configured_definitions(&broker)
        .await
        .map_err(|e| format!("broker failed: {e}"))?;
    let tls = warren_core::server::bind_tls(&broker.config).await?;
    if let Some(t) = &tls {
        reload_tls_on_sighup(t.acceptor.clone(), broker.config.tls.clone())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    }
    let management_tls = match management_tls {
        Some(l) => Some((l, warren_http::tls::acceptor(&broker.config)?)),
        None => None,
    };
    if management.is_some() || management_tls.is_some() {
        // One router (and one rate sampler) for both listeners.
        let app = warren_http::router(broker.clone());
        if let Some(l) = management {
            let (b, s, app) = (broker.clone(), shutdown.clone(), app.clone());
            tokio::spawn(async move {
                if let Err(e) = warren_http::serve_router(&b, app, l, s).await {
                    error!(error = %e, "management listener failed");
                }
            });
        }
        if let Some((l, acceptor)) = management_tls {
            let (b, s) = (broker.clone(), shutdown.clone());
            tokio::spawn(async move {
                if let Err(e) = warren_http::serve_router_tls(&b, app, l, acceptor, s).await {
                    error!(error = %e, "management HTTPS listener failed");
                }
            });
        }
    }
    if let Some(l) = prometheus {
        let (b, s) = (broker.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = warren_metrics::serve(b, l, s).await {
                error!(error = %e, "prometheus listener failed");
            }
        });
    }
    if let Some(l) = prometheus_tls {
        let c = &broker.config;
        let acceptor = warren_core::tls::acceptor(&c.prometheus.ssl_options(&c.tls))?;
        let (b, s) = (broker.clone(), shutdown.clone());
        tokio::spawn(async move {
            let app = warren_metrics::router(b.clone());
            if let Err(e) =
                warren_http::serve_https(&b, "https/prometheus", app, l, acceptor, s).await
            {
                error!(error = %e, "prometheus HTTPS listener failed");
            }
        });
    }
    warren_core::server::run_broker_with(broker, listeners, tls, shutdown)
        .await
        .map_err(|e| format!("broker failed: {e}"))?;
    drop(data_dir);
    Ok(())
}

/// Binds an HTTP listener (`port` 0: off) and logs its address; the error names it.
async fn bind_http(
    what: &str,
    bind: &str,
    port: u16,
) -> Result<Option<tokio::net::TcpListener>, String> {
    if port == 0 {
        return Ok(None);
    }
    let l = tokio::net::TcpListener::bind((bind, port))
        .await
        .map_err(|e| format!("cannot listen on {bind}:{port} ({what}): {e}"))?;
    if let Ok(addr) = l.local_addr() {
        info!(%addr, "{what} listening");
    }
    Ok(Some(l))
}

/// On SIGHUP, reads the TLS certificate and key again: new connections get them, open ones
/// keep theirs; a file that cannot be used is logged and the old certificate stays.
fn reload_tls_on_sighup(
    cell: warren_core::server::TlsAcceptorCell,
    cfg: warren_core::config::TlsConfig,
) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let (cell, cfg) = (cell.clone(), cfg.clone());
            match tokio::task::spawn_blocking(move || cell.reload(&cfg)).await {
                Ok(Ok(())) => info!("SIGHUP: TLS certificate and key reloaded"),
                Ok(Err(e)) => error!("SIGHUP: TLS reload failed, keeping the old certificate: {e}"),
                Err(e) => error!("SIGHUP: TLS reload failed: {e}"),
            }
        }
    });
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT; a second one exits at once.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down: closing client connections");
        shutdown.cancel();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        warn!(
            signal = name,
            "second signal: exiting without waiting for connections"
        );
        std::process::exit(1);
    });
    Ok(())
}
