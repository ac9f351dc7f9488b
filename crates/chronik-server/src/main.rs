//! The `chronik` command: `chronik serve` runs the broker.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use chronik_server::{
    alloc_guard::HugeAllocGuard,
    config::{
        parse_host_port, FileConfig, ServerConfig, DEFAULT_CONNECTIONS_MAX_IDLE_MS, DEFAULT_DATA_DIR,
        DEFAULT_FETCH_MAX_BYTES, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BYTES,
        DEFAULT_METRICS_LISTEN, DEFAULT_PRODUCER_ID_EXPIRATION_MS, DEFAULT_QUEUED_MAX_REQUEST_BYTES,
        DEFAULT_QUEUED_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_BODY_TIMEOUT_MS,
        DEFAULT_RESPONSE_WRITE_TIMEOUT_MS, DEFAULT_RETENTION_BYTES, DEFAULT_RETENTION_CHECK_INTERVAL_MS,
        DEFAULT_RETENTION_MS, DEFAULT_SEGMENT_BYTES, DEFAULT_SEGMENT_MS,
    },
};
use chronik_wal::IoBackend;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::{error, info};

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
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Every option can also be set in the TOML file given with --config (same name, `_` for `-`) and through
/// the environment variable shown. Precedence: command line, environment, file, default.
#[derive(Args, Debug)]
struct ServeArgs {
    /// Directory holding the log (created if missing) [default: ./data]
    #[arg(long, env = "CHRONIK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address the Kafka protocol listens on [default: 127.0.0.1:9092]
    #[arg(long, env = "CHRONIK_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address serving Prometheus metrics at /metrics [default: 127.0.0.1:9644]
    #[arg(long, env = "CHRONIK_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// HOST:PORT that clients are told to connect to [default: the listen address]
    #[arg(long, env = "CHRONIK_ADVERTISED_LISTENER")]
    advertised_listener: Option<String>,
    /// TOML file with any of these options
    #[arg(long, env = "CHRONIK_CONFIG")]
    config: Option<PathBuf>,
    /// Partitions of topics created without a count (auto-created topics) [default: 1]
    #[arg(long, env = "CHRONIK_DEFAULT_PARTITIONS")]
    default_partitions: Option<i32>,
    /// Create unknown topics when a client asks for their metadata [default: true]
    #[arg(long, env = "CHRONIK_AUTO_CREATE_TOPICS")]
    auto_create_topics: Option<bool>,
    /// Largest request accepted, in bytes; larger ones close the connection [default: 104857600]
    #[arg(long, env = "CHRONIK_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<u32>,
    /// Log line format [default: text]
    #[arg(long, env = "CHRONIK_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `chronik_wal=debug,info`; RUST_LOG is used when this is not set [default: info]
    #[arg(long, env = "CHRONIK_LOG_LEVEL")]
    log_level: Option<String>,
    /// Default retention.ms of topics (-1: forever) [default: 604800000, a week]
    #[arg(long, env = "CHRONIK_RETENTION_MS", allow_negative_numbers = true)]
    retention_ms: Option<i64>,
    /// Default retention.bytes per partition (-1: unlimited) [default: -1]
    #[arg(long, env = "CHRONIK_RETENTION_BYTES", allow_negative_numbers = true)]
    retention_bytes: Option<i64>,
    /// How often old segments are looked for and deleted, in ms [default: 300000]
    #[arg(long, env = "CHRONIK_RETENTION_CHECK_INTERVAL_MS")]
    retention_check_interval_ms: Option<u64>,
    /// WAL segment size at which it is sealed and a new one started [default: 1073741824]
    #[arg(long, env = "CHRONIK_SEGMENT_BYTES")]
    segment_bytes: Option<u64>,
    /// WAL segment age at which it is sealed on the next append, in ms [default: 3600000]
    #[arg(long, env = "CHRONIK_SEGMENT_MS")]
    segment_ms: Option<u64>,
    /// Close connections idle (nothing in flight) for this long, in ms [default: 600000]
    #[arg(long, env = "CHRONIK_CONNECTIONS_MAX_IDLE_MS")]
    connections_max_idle_ms: Option<u64>,
    /// Connections accepted at once; more are closed on accept [default: 10000]
    #[arg(long, env = "CHRONIK_MAX_CONNECTIONS")]
    max_connections: Option<u32>,
    /// Request bytes held in memory at once over all connections; reading pauses beyond it [default: 536870912]
    #[arg(long, env = "CHRONIK_QUEUED_MAX_REQUEST_BYTES")]
    queued_max_request_bytes: Option<u32>,
    /// Close a connection whose request body has not arrived this long after its length, in ms [default: 30000]
    #[arg(long, env = "CHRONIK_REQUEST_BODY_TIMEOUT_MS")]
    request_body_timeout_ms: Option<u64>,
    /// Close a connection whose client takes no byte of a response for this long, in ms [default: 60000]
    #[arg(long, env = "CHRONIK_RESPONSE_WRITE_TIMEOUT_MS")]
    response_write_timeout_ms: Option<u64>,
    /// Fetch record data held in memory at once over all connections (read, not yet sent); fetches return
    /// less or wait beyond it [default: 536870912]
    #[arg(long, env = "CHRONIK_QUEUED_MAX_RESPONSE_BYTES")]
    queued_max_response_bytes: Option<u32>,
    /// Largest record data in one Fetch response, and in one connection's unsent Fetch responses, in bytes [default: 57671680]
    #[arg(long, env = "CHRONIK_FETCH_MAX_BYTES")]
    fetch_max_bytes: Option<u32>,
    /// Forget an idempotent producer's state on a partition after this long without a batch, in ms [default: 86400000]
    #[arg(long, env = "CHRONIK_PRODUCER_ID_EXPIRATION_MS")]
    producer_id_expiration_ms: Option<u64>,
    /// Zero-filled space kept ahead of each partition's write position (for partitions whose group commits
    /// average under 32 KiB), in bytes; 0 disables [default: 2097152]
    #[arg(long, env = "CHRONIK_PREALLOCATE_BYTES")]
    preallocate_bytes: Option<u64>,
    /// WAL I/O backend: auto (the one measured fastest: std today), io_uring (fail if the kernel refuses
    /// it) or std [default: auto]
    #[arg(long, env = "CHRONIK_IO_BACKEND")]
    io_backend: Option<IoBackend>,
}

impl ServeArgs {
    fn resolve(self) -> anyhow::Result<(ServerConfig, LogFormat, String)> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let listen = match self.listen.or(file.listen) {
            Some(a) => a,
            None => DEFAULT_LISTEN.parse().context("default listen address")?,
        };
        let metrics_listen = match self.metrics_listen.or(file.metrics_listen) {
            Some(a) => a,
            None => DEFAULT_METRICS_LISTEN
                .parse()
                .context("default metrics address")?,
        };
        let advertised = self
            .advertised_listener
            .or(file.advertised_listener)
            // Empty means unset (the example config lists the key that way).
            .filter(|s| !s.is_empty())
            .map(|s| parse_host_port(&s))
            .transpose()?;
        let default_partitions = self.default_partitions.or(file.default_partitions).unwrap_or(1);
        anyhow::ensure!(default_partitions >= 1, "default-partitions must be at least 1");
        let log_format = match self.log_format {
            Some(f) => f,
            None => match file.log_format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => anyhow::bail!("log_format must be text or json, not {other:?}"),
            },
        };
        let io_backend = match self.io_backend {
            Some(b) => b,
            None => file
                .io_backend
                .as_deref()
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
        };
        let log_level = self
            .log_level
            .or(file.log_level)
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".into());
        let config = ServerConfig {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            listen,
            metrics_listen,
            advertised,
            default_partitions,
            auto_create_topics: self
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            max_request_bytes: self
                .max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            retention_ms: self
                .retention_ms
                .or(file.retention_ms)
                .unwrap_or(DEFAULT_RETENTION_MS),
            retention_bytes: self
                .retention_bytes
                .or(file.retention_bytes)
                .unwrap_or(DEFAULT_RETENTION_BYTES),
            retention_check_interval_ms: self
                .retention_check_interval_ms
                .or(file.retention_check_interval_ms)
                .unwrap_or(DEFAULT_RETENTION_CHECK_INTERVAL_MS),
            segment_bytes: self
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(DEFAULT_SEGMENT_BYTES),
            segment_ms: self.segment_ms.or(file.segment_ms).unwrap_or(DEFAULT_SEGMENT_MS),
            connections_max_idle_ms: self
                .connections_max_idle_ms
                .or(file.connections_max_idle_ms)
                .unwrap_or(DEFAULT_CONNECTIONS_MAX_IDLE_MS),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            queued_max_request_bytes: self
                .queued_max_request_bytes
                .or(file.queued_max_request_bytes)
                .unwrap_or(DEFAULT_QUEUED_MAX_REQUEST_BYTES),
            request_body_timeout_ms: self
                .request_body_timeout_ms
                .or(file.request_body_timeout_ms)
                .unwrap_or(DEFAULT_REQUEST_BODY_TIMEOUT_MS),
            response_write_timeout_ms: self
                .response_write_timeout_ms
                .or(file.response_write_timeout_ms)
                .unwrap_or(DEFAULT_RESPONSE_WRITE_TIMEOUT_MS),
            queued_max_response_bytes: self
                .queued_max_response_bytes
                .or(file.queued_max_response_bytes)
                .unwrap_or(DEFAULT_QUEUED_MAX_RESPONSE_BYTES),
            fetch_max_bytes: self
                .fetch_max_bytes
                .or(file.fetch_max_bytes)
                .unwrap_or(DEFAULT_FETCH_MAX_BYTES),
            producer_id_expiration_ms: self
                .producer_id_expiration_ms
                .or(file.producer_id_expiration_ms)
                .unwrap_or(DEFAULT_PRODUCER_ID_EXPIRATION_MS),
            preallocate_bytes: self
                .preallocate_bytes
                .or(file.preallocate_bytes)
                .unwrap_or_else(|| chronik_wal::WalConfig::default().preallocate_bytes),
            io_backend,
        };
        anyhow::ensure!(
            config.queued_max_request_bytes >= config.max_request_bytes,
            "queued-max-request-bytes ({}) must be at least max-request-bytes ({})",
            config.queued_max_request_bytes,
            config.max_request_bytes
        );
        anyhow::ensure!(
            config.queued_max_response_bytes >= config.fetch_max_bytes,
            "queued-max-response-bytes ({}) must be at least fetch-max-bytes ({})",
            config.queued_max_response_bytes,
            config.fetch_max_bytes
        );
        anyhow::ensure!(
            config.request_body_timeout_ms > 0,
            "request-body-timeout-ms must be positive"
        );
        anyhow::ensure!(
            config.response_write_timeout_ms > 0,
            "response-write-timeout-ms must be positive"
        );
        anyhow::ensure!(
            config.connections_max_idle_ms > 0,
            "connections-max-idle-ms must be positive"
        );
        anyhow::ensure!(config.max_connections > 0, "max-connections must be positive");
        anyhow::ensure!(
            config.retention_ms >= -1 && config.retention_bytes >= -1,
            "retention-ms and retention-bytes must be -1 (unlimited) or more"
        );
        config.wal_config().validate().context("segment settings")?;
        Ok((config, log_format, log_level))
    }
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("bad log level")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (config, log_format, log_level) = args.resolve()?;
    init_logging(log_format, &log_level)?;
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
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn the_example_config_holds_every_setting_at_its_default() {
        // No `..`: a new setting does not compile here until the example documents it.
        let FileConfig {
            data_dir,
            listen,
            metrics_listen,
            advertised_listener,
            default_partitions,
            auto_create_topics,
            max_request_bytes,
            log_format,
            log_level,
            retention_ms,
            retention_bytes,
            retention_check_interval_ms,
            segment_bytes,
            segment_ms,
            connections_max_idle_ms,
            max_connections,
            queued_max_request_bytes,
            request_body_timeout_ms,
            response_write_timeout_ms,
            queued_max_response_bytes,
            fetch_max_bytes,
            producer_id_expiration_ms,
            preallocate_bytes,
            io_backend,
        } = FileConfig::load(std::path::Path::new(EXAMPLE)).unwrap();
        let present = [
            ("data_dir", data_dir.is_some()),
            ("listen", listen.is_some()),
            ("metrics_listen", metrics_listen.is_some()),
            ("advertised_listener", advertised_listener.is_some()),
            ("default_partitions", default_partitions.is_some()),
            ("auto_create_topics", auto_create_topics.is_some()),
            ("max_request_bytes", max_request_bytes.is_some()),
            ("log_format", log_format.is_some()),
            ("log_level", log_level.is_some()),
            ("retention_ms", retention_ms.is_some()),
            ("retention_bytes", retention_bytes.is_some()),
            (
                "retention_check_interval_ms",
                retention_check_interval_ms.is_some(),
            ),
            ("segment_bytes", segment_bytes.is_some()),
            ("segment_ms", segment_ms.is_some()),
            ("connections_max_idle_ms", connections_max_idle_ms.is_some()),
            ("max_connections", max_connections.is_some()),
            ("queued_max_request_bytes", queued_max_request_bytes.is_some()),
            ("request_body_timeout_ms", request_body_timeout_ms.is_some()),
            ("response_write_timeout_ms", response_write_timeout_ms.is_some()),
            ("queued_max_response_bytes", queued_max_response_bytes.is_some()),
            ("fetch_max_bytes", fetch_max_bytes.is_some()),
            ("producer_id_expiration_ms", producer_id_expiration_ms.is_some()),
            ("preallocate_bytes", preallocate_bytes.is_some()),
            ("io_backend", io_backend.is_some()),
        ];
        let missing: Vec<_> = present.iter().filter(|(_, p)| !p).map(|(n, _)| n).collect();
        assert!(missing.is_empty(), "chronik.example.toml lacks {missing:?}");

        let (from_file, format_from_file, _) = serve_args(&["--config", EXAMPLE]).resolve().unwrap();
        let (defaults, default_format, _) = serve_args(&[]).resolve().unwrap();
        assert_eq!(from_file, defaults, "the example's values are the defaults");
        assert_eq!(format_from_file, default_format);
        // The log level's default is RUST_LOG when set, so only the file's own value is compared.
        assert_eq!(log_level.as_deref(), Some("info"));
    }
}
