//! Broker settings: command line > `CHRONIK_*` environment > TOML config file > defaults.
//!
//! Every setting is declared once, in the `settings!` table at the bottom of this file (the macro is in
//! `settings.rs`, the table's tests in `tests.rs`): its field, type, environment variable, default, help
//! text and (where it has one) its own check. From that one row come the `chronik serve` option
//! ([`SettingArgs`], which clap fills from the command line and the environment), the TOML key
//! ([`FileConfig`]), the typed field of the resolved struct ([`ServerConfig`] or [`Logging`]), the merge
//! of the three sources, and an entry of [`SETTINGS`], through which tests keep `chronik.example.toml`
//! and the README complete.
//!
//! Invariants:
//! - A setting's TOML key is its field name (or the row's `key`), its option is the key with `-` for `_`,
//!   and its environment variable is `CHRONIK_` and the key in capitals (a test checks all three).
//! - The default is a string parsed like a value given on the command line, and is what `--help` shows:
//!   the help cannot disagree with the behaviour.
//! - A value from the file is only parsed or converted when neither the command line nor the environment
//!   gives one (so a bad value there that is overridden is not an error, as before this table existed).

mod settings;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::Context;
use chronik_wal::IoBackend;

use settings::settings;
pub use settings::{FileValue, Setting};

/// The format of log lines.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => anyhow::bail!("log_format must be text or json, not {other:?}"),
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Resolves the settings: `args` (command line and environment) over the TOML file at `config_file`
/// over the defaults, each setting checked, then the checks that relate several settings.
pub fn resolve(args: SettingArgs, config_file: Option<&Path>) -> anyhow::Result<(ServerConfig, Logging)> {
    let file = match config_file {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let (server, logging) = args.merge(file)?;
    server.validate()?;
    Ok((server, logging))
}

impl ServerConfig {
    /// The declared defaults, on `data_dir`: what `chronik serve --data-dir DIR` runs with when nothing
    /// else is set.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        // The defaults are literals of the table; the test `the_declared_defaults_are_valid` parses them.
        let defaults = Self::from_sources(&mut SettingArgs::default(), &mut FileConfig::default())
            .expect("the declared defaults are valid");
        Self {
            data_dir: data_dir.into(),
            ..defaults
        }
    }

    /// The checks that relate several settings (each setting's own are in the table).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.queued_max_request_bytes >= self.max_request_bytes,
            "queued-max-request-bytes ({}) must be at least max-request-bytes ({})",
            self.queued_max_request_bytes,
            self.max_request_bytes
        );
        anyhow::ensure!(
            self.queued_max_response_bytes >= self.fetch_max_bytes,
            "queued-max-response-bytes ({}) must be at least fetch-max-bytes ({})",
            self.queued_max_response_bytes,
            self.fetch_max_bytes
        );
        self.wal_config().validate().context("segment settings")?;
        let voters = self.voters()?;
        // A node listening elsewhere than its own voter entry says is most likely a second node given
        // this node's id: two nodes answering as one would corrupt the quorum.
        if voters.len() > 1 {
            let listed = &voters[&self.node_id];
            let port_matches = listed
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().ok() == Some(self.controller_listen.port()));
            anyhow::ensure!(
                port_matches,
                "--controller-voters gives node {} the address {listed}, but --controller-listen is {}: is \
                 another node running with --node-id {}?",
                self.node_id,
                self.controller_listen,
                self.node_id
            );
        }
        Ok(())
    }

    /// The controller voters: `controller_voters`, or this node alone at `controller_listen`.
    pub fn voters(&self) -> anyhow::Result<std::collections::BTreeMap<u64, String>> {
        if self.controller_voters.trim().is_empty() {
            return Ok([(self.node_id, self.controller_listen.to_string())].into());
        }
        chronik_cluster::parse_voters(&self.controller_voters, self.node_id).context("controller-voters")
    }

    /// The partitions the broker admits: `max_partitions`, or when it is 0 what the machine's memory
    /// holds at [`crate::capacity::MEMORY_PER_PARTITION`] each.
    pub fn partition_limit(&self) -> usize {
        match self.max_partitions {
            0 => crate::capacity::derived_max_partitions(crate::capacity::memory_limit()),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// Segment files the WAL keeps open at most: `max_open_segment_files`, or when it is 0 what the
    /// process's open-file limit (as it is now: `chronik serve` raises it first) leaves after
    /// `max_connections` and a reserve.
    pub fn open_segment_file_limit(&self) -> usize {
        match self.max_open_segment_files {
            0 => crate::capacity::derived_max_open_segment_files(
                crate::capacity::soft_limit(),
                self.max_connections,
            ),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// The WAL settings these broker settings imply.
    pub fn wal_config(&self) -> chronik_wal::WalConfig {
        let mut wal = chronik_wal::WalConfig::default();
        wal.rotation.max_segment_size = self.segment_bytes;
        wal.rotation.max_segment_age_ms = self.segment_ms;
        wal.io_backend = self.io_backend;
        wal.preallocate_bytes = self.preallocate_bytes;
        wal.preallocate_after_appends = PREALLOCATE_AFTER_APPENDS;
        wal.max_open_files = self.open_segment_file_limit();
        wal.journal = self.wal_journal;
        wal
    }
}

/// Appends a partition takes before the WAL prepares space ahead of it (`WalConfig::preallocate_after_appends`):
/// a broker holds many partitions written now and then, which would each get `preallocate_bytes` of zeros
/// on disk (2 MiB by default: 2 GB for 1,000 partitions written once) and have them read by every recovery.
/// A partition under steady load reaches 64 appends within moments.
pub const PREALLOCATE_AFTER_APPENDS: u64 = 64;

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

/// `--advertised-listener`: empty means unset (the example config lists the key that way).
fn parse_advertised_listener(s: String) -> anyhow::Result<Option<(String, i32)>> {
    if s.is_empty() {
        return Ok(None);
    }
    parse_host_port(&s).map(Some)
}

settings! {
    /// The resolved settings the broker runs with.
    pub struct ServerConfig {
        /// Directory holding the log.
        data_dir: PathBuf {
            env: "CHRONIK_DATA_DIR",
            default: "./data",
            help: "Directory holding the log (created if missing)",
        }
        /// Address the Kafka protocol listens on.
        listen: SocketAddr {
            env: "CHRONIK_LISTEN",
            default: "127.0.0.1:9092",
            help: "Address the Kafka protocol listens on",
        }
        /// Address of the operations endpoint (/metrics, /health, /ready).
        metrics_listen: SocketAddr {
            env: "CHRONIK_METRICS_LISTEN",
            default: "127.0.0.1:9644",
            help: "Address serving Prometheus metrics at /metrics",
        }
        /// Host and port put in Metadata responses; `None`: the address the listener is bound to.
        advertised: String => Option<(String, i32)> {
            key: "advertised_listener",
            env: "CHRONIK_ADVERTISED_LISTENER",
            default: "",
            shown: "the listen address",
            help: "HOST:PORT that clients are told to connect to",
            arg: [long = "advertised-listener", value_name = "ADVERTISED_LISTENER"],
            convert: parse_advertised_listener,
        }
        /// This broker's id in the cluster (Kafka's `node.id`).
        node_id: u64 {
            env: "CHRONIK_NODE_ID",
            default: "0",
            help: "This broker's id in the cluster, unique among its brokers",
            check: |n: &u64| *n <= i32::MAX as u64, "must be from 0 to 2147483647 (Kafka's broker ids)",
        }
        /// Where other nodes reach this node's controller: Raft and brokers' heartbeats and forwarded
        /// changes. Not opened when this node is the only voter.
        controller_listen: SocketAddr {
            env: "CHRONIK_CONTROLLER_LISTEN",
            default: "127.0.0.1:9093",
            help: "Address of the controller listener (Raft, heartbeats, forwarded changes); not opened \
                   when this node is the only voter",
        }
        /// The controller quorum, the same on every node; empty: this node alone, at `controller_listen`.
        controller_voters: String {
            env: "CHRONIK_CONTROLLER_VOTERS",
            default: "",
            shown: "this node alone",
            help: "The controller voters, ID@HOST:PORT[,ID@HOST:PORT...] (the same list on every node)",
        }
        /// Replicas of topics created without a replication factor; 0: min(3, live brokers). Until
        /// partitions are replicated, topics have one replica and more is refused.
        default_replication_factor: u32 {
            env: "CHRONIK_DEFAULT_REPLICATION_FACTOR",
            default: "0",
            shown: "0: min(3, live brokers), at most 1 until partitions are replicated",
            help: "Replication factor of topics created without one; 0 derives it from the live brokers",
            check: |n: &u32| *n <= 1, "must be 0 or 1: partitions are not replicated yet",
        }
        /// A broker that has not heartbeated the controller for this long is fenced: its partitions get
        /// another leader from their in-sync replicas, or go offline. 6 s: a broker stalled for a moment
        /// (a slow disk, a paused VM) keeps its partitions, a dead one is replaced within seconds.
        broker_session_timeout_ms: u64 {
            env: "CHRONIK_BROKER_SESSION_TIMEOUT_MS",
            default: "6000",
            help: "Fence a broker that has not heartbeated the controller for this long, in ms",
            check: |ms: &u64| *ms >= 100, "must be at least 100",
        }
        /// Partitions of the internal offsets topic, fixed when it is created (on the first
        /// FindCoordinator of the cluster): groups are spread over them, each partition's leader
        /// coordinating its groups. Each costs its leader a writer thread and two WAL partitions; Kafka's
        /// default is 50.
        offsets_topic_partitions: u32 {
            env: "CHRONIK_OFFSETS_TOPIC_PARTITIONS",
            default: "10",
            help: "Partitions of the committed-offsets topic (set when the cluster first creates it)",
            check: |n: &u32| (1..=1000).contains(n), "must be from 1 to 1000",
        }
        /// Partitions of a topic created without a count (auto-creation, `num_partitions = -1`).
        default_partitions: i32 {
            env: "CHRONIK_DEFAULT_PARTITIONS",
            default: "1",
            help: "Partitions of topics created without a count (auto-created topics)",
            check: |n: &i32| *n >= 1, "must be at least 1",
        }
        /// Create unknown topics named in Metadata requests that allow it.
        auto_create_topics: bool {
            env: "CHRONIK_AUTO_CREATE_TOPICS",
            default: "true",
            help: "Create unknown topics when a client asks for their metadata",
        }
        /// Partitions the broker holds at most, internal ones included: CreateTopics, CreatePartitions and
        /// auto-creation beyond it are refused before anything is created. 0: derived from memory
        /// ([`crate::capacity::derived_max_partitions`]); see [`ServerConfig::partition_limit`].
        max_partitions: u32 {
            env: "CHRONIK_MAX_PARTITIONS",
            default: "0",
            shown: "0: the machine's (or container's) memory / 64 KiB",
            help: "Partitions (internal ones included) the broker holds at most; creations beyond it are \
                   refused; 0 derives it from memory",
        }
        /// Segment files the WAL keeps open at most; past it the least recently used are closed and
        /// reopened on their next use, so idle partitions hold no descriptor (files awaiting their
        /// fdatasync stay open). 0: derived from the open-file limit
        /// ([`crate::capacity::derived_max_open_segment_files`]).
        max_open_segment_files: u32 {
            env: "CHRONIK_MAX_OPEN_SEGMENT_FILES",
            default: "0",
            shown: "0: the open-file limit less a reserve of 64 and the connections (at most half)",
            help: "Segment files kept open at most (least recently used closed first); 0 derives it from \
                   the open-file limit",
        }
        /// Requests larger than this close the connection before anything is allocated for them.
        max_request_bytes: u32 {
            env: "CHRONIK_MAX_REQUEST_BYTES",
            default: "104857600",
            help: "Largest request accepted, in bytes; larger ones close the connection",
        }
        /// Default `retention.ms` of topics that do not set it (-1: keep forever). Kafka's default: a week.
        retention_ms: i64 {
            env: "CHRONIK_RETENTION_MS",
            default: "604800000",
            shown: "604800000, a week",
            help: "Default retention.ms of topics (-1: forever)",
            arg: [allow_negative_numbers = true],
            check: |ms: &i64| *ms >= -1, "must be -1 (unlimited) or more",
        }
        /// Default `retention.bytes` per partition of topics that do not set it (-1: no limit, as Kafka).
        retention_bytes: i64 {
            env: "CHRONIK_RETENTION_BYTES",
            default: "-1",
            help: "Default retention.bytes per partition (-1: unlimited)",
            arg: [allow_negative_numbers = true],
            check: |bytes: &i64| *bytes >= -1, "must be -1 (unlimited) or more",
        }
        /// How often retention looks for segments to delete (Kafka's default: 5 minutes).
        retention_check_interval_ms: u64 {
            env: "CHRONIK_RETENTION_CHECK_INTERVAL_MS",
            default: "300000",
            help: "How often old segments are looked for and deleted, in ms",
        }
        /// WAL segments are sealed at this size (the unit retention deletes).
        segment_bytes: u64 {
            env: "CHRONIK_SEGMENT_BYTES",
            default: "1073741824",
            help: "WAL segment size at which it is sealed and a new one started",
        }
        /// ... or at this age.
        segment_ms: u64 {
            env: "CHRONIK_SEGMENT_MS",
            default: "3600000",
            help: "WAL segment age at which it is sealed on the next append, in ms",
        }
        /// A connection with nothing in flight and no request for this long is closed (Kafka's
        /// connections.max.idle.ms).
        connections_max_idle_ms: u64 {
            env: "CHRONIK_CONNECTIONS_MAX_IDLE_MS",
            default: "600000",
            help: "Close connections idle (nothing in flight) for this long, in ms",
            check: |ms: &u64| *ms > 0, "must be positive",
        }
        /// Connections beyond this are closed as soon as they are accepted.
        max_connections: u32 {
            env: "CHRONIK_MAX_CONNECTIONS",
            default: "10000",
            help: "Connections accepted at once; more are closed on accept",
            check: |n: &u32| *n > 0, "must be positive",
        }
        /// Bytes of requests held in memory at once over all connections (read, not yet answered); reading
        /// pauses when it is reached. At least `max_request_bytes`.
        queued_max_request_bytes: u32 {
            env: "CHRONIK_QUEUED_MAX_REQUEST_BYTES",
            default: "536870912",
            help: "Request bytes held in memory at once over all connections; reading pauses beyond it",
        }
        /// Once a request's length has been read (and its bytes granted from `queued_max_request_bytes`),
        /// its body must arrive within this long, else the connection is closed and the bytes given back.
        /// The default is generous for a body on a slow link, short next to the idle timeout a stalled one
        /// would otherwise hold its budget for.
        request_body_timeout_ms: u64 {
            env: "CHRONIK_REQUEST_BODY_TIMEOUT_MS",
            default: "30000",
            help: "Close a connection whose request body has not arrived this long after its length, in ms",
            check: |ms: &u64| *ms > 0, "must be positive",
        }
        /// A connection whose client takes no byte of a response for this long is closed, giving back the
        /// memory its unsent responses hold (a client that stopped reading). Real clients read responses
        /// as they come (their network threads do, whatever the application does); one that takes nothing
        /// for the default minute holds Fetch memory other clients are waiting for.
        response_write_timeout_ms: u64 {
            env: "CHRONIK_RESPONSE_WRITE_TIMEOUT_MS",
            default: "60000",
            help: "Close a connection whose client takes no byte of a response for this long, in ms",
            check: |ms: &u64| *ms > 0, "must be positive",
        }
        /// Bytes of Fetch record data held at once over all connections (read from the WAL, not yet
        /// written to the socket); fetches return less, or wait, when it is reached. At least
        /// `fetch_max_bytes`.
        queued_max_response_bytes: u32 {
            env: "CHRONIK_QUEUED_MAX_RESPONSE_BYTES",
            default: "536870912",
            help: "Fetch record data held in memory at once over all connections (read, not yet sent); \
                   fetches return less or wait beyond it",
        }
        /// Cap on the bytes of record data one Fetch response carries (the client's `max_bytes` is lowered
        /// to it; one batch larger than it is still returned whole, as Kafka does). Also each connection's
        /// share of `queued_max_response_bytes`: its unwritten Fetch responses hold at most this much
        /// together (or one such larger batch). The default is Kafka's broker fetch.max.bytes (55 MiB).
        fetch_max_bytes: u32 {
            env: "CHRONIK_FETCH_MAX_BYTES",
            default: "57671680",
            help: "Largest record data in one Fetch response, and in one connection's unsent Fetch \
                   responses, in bytes",
        }
        /// Idempotent-producer state of a partition is dropped after this long without a batch from it
        /// (Kafka's producer.id.expiration.ms: a day).
        producer_id_expiration_ms: u64 {
            env: "CHRONIK_PRODUCER_ID_EXPIRATION_MS",
            default: "86400000",
            help: "Forget an idempotent producer's state on a partition after this long without a batch, \
                   in ms",
        }
        /// Zero-filled space the WAL keeps ahead of each active segment (`WalConfig::preallocate_bytes`,
        /// whose default this is).
        preallocate_bytes: u64 {
            env: "CHRONIK_PREALLOCATE_BYTES",
            default: "2097152",
            help: "Zero-filled space kept ahead of each partition's write position (for partitions past \
                   their first 64 appends whose group commits average under 32 KiB), in bytes; 0 disables",
        }
        /// Make produces durable through one journal shared by all partitions (`WalConfig::journal`): one
        /// fdatasync per round of appends over every partition, instead of one per partition written.
        wal_journal: bool {
            env: "CHRONIK_WAL_JOURNAL",
            default: "false",
            help: "Make appends durable through one journal shared by all partitions (one fdatasync for \
                   every partition written at once) instead of an fdatasync of each partition's segment",
        }
        /// The WAL's I/O backend; `Auto` probes io_uring and falls back to std.
        io_backend: IoBackend {
            env: "CHRONIK_IO_BACKEND",
            default: "auto",
            help: "WAL I/O backend: auto (the one measured fastest: std today), io_uring (fail if the \
                   kernel refuses it) or std",
        }
    }

    /// How the `chronik` process logs (set up by the binary, not by [`crate::run`]).
    pub struct Logging {
        log_format: LogFormat {
            env: "CHRONIK_LOG_FORMAT",
            default: "text",
            help: "Log line format",
        }
        /// A `tracing` filter.
        log_level: String {
            env: "CHRONIK_LOG_LEVEL",
            default: "info,openraft=off",
            help: "Log filter, e.g. `info` or `chronik_wal=debug,info`; RUST_LOG is used when this is not \
                   set (openraft's own lines, one per retry, are off: Chronik logs controller changes, \
                   unreachable voters and fencing itself)",
            fallback: || std::env::var("RUST_LOG").ok(),
        }
    }
}

#[cfg(test)]
mod tests;
