//! The `chronik` command: `chronik serve` runs the broker.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use chronik_server::{
    alloc_guard::HugeAllocGuard,
    config::{self, LogFormat, Logging, ServerConfig, SettingArgs},
};
use clap::{Args, Parser, Subcommand};
use tracing::{error, info, warn};

/// Requests claiming absurd array lengths make the protocol decoder ask for huge allocations; this
/// allocator reserves them lazily instead of aborting the process (see `alloc_guard`).
#[global_allocator]
static ALLOCATOR: HugeAllocGuard = HugeAllocGuard;

#[derive(Parser, Debug)]
#[command(
    name = "chronik",
    version,
    about = "Chronik: a Kafka-compatible streaming log built on a durable WAL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker.
    Serve(Box<ServeArgs>),
    /// Offline tools for a stopped broker's WAL (read-only).
    #[command(subcommand)]
    Wal(WalCommand),
}

#[derive(Subcommand, Debug)]
enum WalCommand {
    /// Partitions, segments, offset ranges, sizes, index state and checkpoint positions.
    Inspect {
        data_dir: PathBuf,
        /// One JSON object per segment instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Checks every frame and index; exits 1 with file, position and problem when something is wrong.
    Verify { data_dir: PathBuf },
    /// Frames of one segment file: offsets, timestamps, sizes, CRC status; `--payload` decodes records.
    Dump {
        segment: PathBuf,
        /// Skip frames wholly before this offset.
        #[arg(long, default_value_t = 0)]
        from_offset: i64,
        /// Decode each Kafka RecordBatch and print its records (keys, values, headers).
        #[arg(long)]
        payload: bool,
    },
    /// Compares two brokers' copies of a partition batch by batch (offsets and stored bytes); exits 1
    /// at the first difference, or if `--up-to` is given and they do not agree up to it.
    Compare {
        data_dir_a: PathBuf,
        data_dir_b: PathBuf,
        /// The partition, as `TOPIC-N`.
        partition: String,
        /// Compare only the batches starting below this offset (e.g. the high watermark).
        #[arg(long)]
        up_to: Option<i64>,
    },
}

/// Every setting can also be set in the TOML file given with --config (same name, `_` for `-`) and through
/// the environment variable shown. Precedence: command line, environment, file, default.
#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML file with any of these options
    #[arg(long, env = "CHRONIK_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingArgs,
}

impl ServeArgs {
    fn resolve(self) -> anyhow::Result<(ServerConfig, Logging)> {
        config::resolve(self.settings, self.config.as_deref())
    }
}

fn init_logging(logging: &Logging) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&logging.log_level).context("bad log level")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match logging.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                eprintln!("chronik: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Wal(cmd) => {
            let result = match cmd {
                WalCommand::Inspect { data_dir, json } => {
                    chronik_server::wal_tool::inspect_cmd(&data_dir, json).map(|()| true)
                }
                WalCommand::Verify { data_dir } => chronik_server::wal_tool::verify_cmd(&data_dir),
                WalCommand::Dump {
                    segment,
                    from_offset,
                    payload,
                } => chronik_server::wal_tool::dump_cmd(&segment, from_offset, payload),
                WalCommand::Compare {
                    data_dir_a,
                    data_dir_b,
                    partition,
                    up_to,
                } => chronik_server::wal_tool::compare_cmd(&data_dir_a, &data_dir_b, &partition, up_to),
            };
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("chronik wal: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Raises the soft open-file limit to the hard one (the WAL's file cache and connections share it, and
/// the default size of the cache is derived from it) and logs both, before and after.
fn raise_open_file_limit() {
    use chronik_server::capacity::{raise_to_hard_limit, show};
    match raise_to_hard_limit() {
        Ok(r) => info!(
            soft_before = %show(r.before.current),
            hard_before = %show(r.before.maximum),
            soft = %show(r.after.current),
            hard = %show(r.after.maximum),
            "open-file limit raised to the hard limit"
        ),
        Err((before, e)) => warn!(
            soft = %show(before.current),
            hard = %show(before.maximum),
            error = %e,
            "could not raise the open-file limit; keeping it"
        ),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (config, logging) = args.resolve()?;
    init_logging(&logging)?;
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting runtime")?;
    runtime.block_on(async move {
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("installing the metrics recorder")?;
        chronik_server::telemetry::register_defaults();
        let (http_listener, http_addr) = chronik_server::http::bind(config.metrics_listen)
            .await
            .with_context(|| format!("serving metrics on {}", config.metrics_listen))?;
        info!(address = %http_addr, "operations endpoint: /metrics /health /ready");
        tokio::spawn(chronik_server::http::serve(http_listener, metrics));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        chronik_server::run(listener, config, shutdown_signal()).await
    })?;
    info!("chronik stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed now, not when the future is first polled
/// (after recovery): a SIGTERM that arrives while the broker is starting must stop it cleanly too.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received, shutting down"),
                    _ = int.recv() => info!("SIGINT received, shutting down"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                error!(error = %e, "cannot listen for SIGTERM/SIGINT; the broker runs until killed");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../chronik.example.toml");

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["chronik", "serve"][..], args].concat()).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        *args
    }

    /// The table's own tests (`config::tests`) check the example key by key; this one goes through the
    /// command line as `chronik serve --config chronik.example.toml` does.
    #[test]
    fn serving_with_the_example_config_is_serving_with_the_defaults() {
        let (from_file, logging_from_file) = serve_args(&["--config", EXAMPLE]).resolve().unwrap();
        let (defaults, default_logging) = serve_args(&[]).resolve().unwrap();
        assert_eq!(from_file, defaults, "the example's values are the defaults");
        assert_eq!(logging_from_file.log_format, default_logging.log_format);
        assert_eq!(logging_from_file.log_level, "info,openraft=off");
    }
}
