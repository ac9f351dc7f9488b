//! Broker settings: command line > `CHRONIK_*` environment > TOML config file > defaults.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use chronik_wal::IoBackend;
use serde::Deserialize;

/// Settings that a TOML file may hold; every field optional. Same names as the command-line options,
/// with `_` for `-`.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub advertised_listener: Option<String>,
    pub default_partitions: Option<i32>,
    pub auto_create_topics: Option<bool>,
    pub max_request_bytes: Option<u32>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub retention_check_interval_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<u64>,
    pub connections_max_idle_ms: Option<u64>,
    pub max_connections: Option<u32>,
    pub queued_max_request_bytes: Option<u32>,
    pub request_body_timeout_ms: Option<u64>,
    pub response_write_timeout_ms: Option<u64>,
    pub queued_max_response_bytes: Option<u32>,
    pub fetch_max_bytes: Option<u32>,
    pub producer_id_expiration_ms: Option<u64>,
    pub preallocate_bytes: Option<u64>,
    /// `auto`, `io_uring` or `std`.
    pub io_backend: Option<String>,
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// The resolved settings the broker runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// Host and port put in Metadata responses; `None`: the address the listener is bound to.
    pub advertised: Option<(String, i32)>,
    /// Partitions of a topic created without a count (auto-creation, `num_partitions = -1`).
    pub default_partitions: i32,
    /// Create unknown topics named in Metadata requests that allow it.
    pub auto_create_topics: bool,
    /// Requests larger than this close the connection before anything is allocated for them.
    pub max_request_bytes: u32,
    /// Default `retention.ms` of topics that do not set it (-1: keep forever).
    pub retention_ms: i64,
    /// Default `retention.bytes` per partition of topics that do not set it (-1: no limit).
    pub retention_bytes: i64,
    /// How often retention looks for segments to delete.
    pub retention_check_interval_ms: u64,
    /// WAL segments are sealed at this size (the unit retention deletes).
    pub segment_bytes: u64,
    /// ... or at this age.
    pub segment_ms: u64,
    /// A connection with nothing in flight and no request for this long is closed.
    pub connections_max_idle_ms: u64,
    /// Connections beyond this are closed as soon as they are accepted.
    pub max_connections: u32,
    /// Bytes of requests held in memory at once over all connections (read, not yet answered); reading
    /// pauses when it is reached. At least `max_request_bytes`.
    pub queued_max_request_bytes: u32,
    /// Once a request's length has been read (and its bytes granted from `queued_max_request_bytes`), its
    /// body must arrive within this long, else the connection is closed and the bytes given back.
    pub request_body_timeout_ms: u64,
    /// A connection whose client takes no byte of a response for this long is closed, giving back the
    /// memory its unsent responses hold (a client that stopped reading).
    pub response_write_timeout_ms: u64,
    /// Bytes of Fetch record data held at once over all connections (read from the WAL, not yet written to
    /// the socket); fetches return less, or wait, when it is reached. At least `fetch_max_bytes`.
    pub queued_max_response_bytes: u32,
    /// Cap on the bytes of record data one Fetch response carries (the client's `max_bytes` is lowered to
    /// it; one batch larger than it is still returned whole, as Kafka does). Also each connection's share of
    /// `queued_max_response_bytes`: its unwritten Fetch responses hold at most this much together (or one
    /// such larger batch).
    pub fetch_max_bytes: u32,
    /// Idempotent-producer state of a partition is dropped after this long without a batch from it.
    pub producer_id_expiration_ms: u64,
    /// Zero-filled space the WAL keeps ahead of each active segment (`WalConfig::preallocate_bytes`).
    pub preallocate_bytes: u64,
    /// The WAL's I/O backend; `Auto` probes io_uring and falls back to std.
    pub io_backend: IoBackend,
}

impl ServerConfig {
    /// The WAL settings these broker settings imply.
    pub fn wal_config(&self) -> chronik_wal::WalConfig {
        let mut wal = chronik_wal::WalConfig::default();
        wal.rotation.max_segment_size = self.segment_bytes;
        wal.rotation.max_segment_age_ms = self.segment_ms;
        wal.io_backend = self.io_backend;
        wal.preallocate_bytes = self.preallocate_bytes;
        wal
    }
}

pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9644";
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 100 * 1024 * 1024;
/// Kafka's defaults: a week, no size limit, checked every 5 minutes.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
pub const DEFAULT_RETENTION_BYTES: i64 = -1;
pub const DEFAULT_RETENTION_CHECK_INTERVAL_MS: u64 = 300_000;
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
pub const DEFAULT_SEGMENT_MS: u64 = 3_600_000;
/// Kafka's connections.max.idle.ms.
pub const DEFAULT_CONNECTIONS_MAX_IDLE_MS: u64 = 600_000;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const DEFAULT_QUEUED_MAX_REQUEST_BYTES: u32 = 512 * 1024 * 1024;
/// Generous for a body on a slow link, short next to the idle timeout a stalled one would otherwise hold
/// its budget for.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 30_000;
/// Real clients read responses as they come (their network threads do, whatever the application does);
/// one that takes nothing for a minute holds Fetch memory other clients are waiting for.
pub const DEFAULT_RESPONSE_WRITE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_QUEUED_MAX_RESPONSE_BYTES: u32 = 512 * 1024 * 1024;
/// Kafka's broker fetch.max.bytes (55 MiB).
pub const DEFAULT_FETCH_MAX_BYTES: u32 = 55 * 1024 * 1024;
/// Kafka's producer.id.expiration.ms (a day).
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: u64 = 86_400_000;

/// Splits `host:port`.
pub fn parse_host_port(s: &str) -> anyhow::Result<(String, i32)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?} is not HOST:PORT"))?;
    let port: u16 = port.parse().with_context(|| format!("bad port in {s:?}"))?;
    anyhow::ensure!(!host.is_empty(), "empty host in {s:?}");
    Ok((
        host.trim_start_matches('[').trim_end_matches(']').to_string(),
        i32::from(port),
    ))
}
