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
    /// The WAL's I/O backend; `Auto` probes io_uring and falls back to std.
    pub io_backend: IoBackend,
}

pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9644";
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 100 * 1024 * 1024;

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
