// `deny`, not `forbid`: `io/uring.rs` allows unsafe code for the pointers it hands the kernel.
#![deny(unsafe_code)]

//! `chronik-wal`: a durable, per-partition write-ahead log with group commit and crash recovery.
//!
//! # Layout
//! - [`WalManager`] (`manager.rs`) owns one [`PartitionWal`] per topic-partition in a concurrent map, runs
//!   recovery when opened and a background thread for interval syncs and checkpoints. Opening never fails
//!   because of one partition: one recovery cannot load is *offline* ([`WalManager::offline_partitions`],
//!   [`Error::PartitionOffline`]), left untouched on disk with its checkpoint entry kept, until the WAL is
//!   opened again.
//! - [`PartitionWal`] (`partition/`) appends with group commit (leader/follower: one write and one
//!   fdatasync per group of concurrent appends), rotates segments and serves reads and waits.
//! - `segment.rs` is one file of frames; `frame.rs` the frame codec (length + CRC32C, detectable when torn);
//!   `index.rs` the sparse offset/time index; `checkpoint.rs` the durable-position record; `terms.rs` the
//!   term map (where each leader epoch began, for replicas);
//!   `recovery/` the decision tables applied on open; `retention.rs` which old segments may go, by a
//!   policy ([`PartitionWal::apply_retention`]) or below an offset ([`PartitionWal::delete_segments_below`]).
//! - [`WalManager::heal`] is the one way back from a poisoned partition: reopened from disk once, whoever
//!   holds the failed handle.
//! - `journal/` is the optional journal shared by all partitions ([`WalConfig::journal`]): groups written
//!   to their segments unsynced and made durable by one fdatasync of the journal per round; replayed into
//!   the segments at open, trimmed once they are synced. Its module doc states its invariants.
//! - `prealloc.rs` is the background thread that keeps zero-filled space ahead of each active segment;
//!   `buffers.rs` the read buffers reused across reads.
//! - `config.rs` the settings ([`WalConfig`]); `error.rs` the typed errors (I/O, corruption, caller
//!   mistakes); `version.rs` the format version every file carries; `metrics.rs` the WAL's metrics;
//!   `inspect.rs` read-only inspection of a data directory (`chronik wal inspect|verify`).
//! - `io/` is the only code that touches the file system, behind the [`io::WalIo`] trait: `std_fs.rs`
//!   (portable), `uring.rs` (io_uring, Linux), `select.rs` (picks one at run time, see [`IoBackend`]).
//!
//! Test support is compiled only with the `testkit` feature (this crate's own tests and benches, the fuzz
//! crate, the broker's fault-injection build): `io/sim.rs` (a simulated disk that loses unsynced writes on
//! a simulated power cut), `io/fault.rs` (a wrapper injecting I/O errors), `fuzzing.rs` (the fuzz
//! harnesses, replayed by `cargo test`) and hooks that let a test run preallocation deterministically.
//!
//! The on-disk format is specified in `FORMAT.md` next to this crate.
//!
//! # Example
//! ```
//! use chronik_wal::{Batch, TopicPartition, WalConfig, WalManager};
//! # let dir = tempfile::tempdir().unwrap();
//! let wal = WalManager::open(dir.path(), WalConfig::default()).unwrap();
//! let tp = TopicPartition::new("orders", 0);
//! wal.create_partition(&tp).unwrap();
//! let at = wal.append(&tp, Batch::new(&b"payload"[..], 1, 1_700_000_000_000)).unwrap();
//! assert_eq!(at.base_offset, 0);
//! let batches = wal.read(&tp, 0, 1 << 20).unwrap();
//! assert_eq!(&batches[0].payload[..], b"payload");
//! wal.close().unwrap();
//! ```

mod buffers;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod frame;
#[cfg(feature = "testkit")]
pub mod fuzzing;
pub mod index;
pub mod inspect;
pub mod io;
mod journal;
mod manager;
pub mod metrics;
mod partition;
mod prealloc;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod terms;
pub mod version;

use std::{fmt, sync::Arc, thread, time::Duration};

use bytes::Bytes;

pub use config::{
    CheckpointConfig, Durability, IoBackend, RetryConfig, RotationConfig, SyncPolicy, WalConfig,
};
pub use error::{CorruptionKind, Error, Result};
pub use manager::{CheckpointSummary, Healed, OfflinePartition, RecoveryReport, WalManager};
pub use partition::{AppendOptions, AppendResult, AppendTicket, CheckpointEntry, PartitionWal};
pub use retention::{RetentionOutcome, RetentionPolicy, SegmentInfo};
pub use terms::{TermMap, TermStart};

/// A topic name and partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// Kafka's rules: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`; partition >= 0.
    pub fn validate(&self) -> Result<()> {
        let t = &*self.topic;
        let legal = t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if t.is_empty() || t.len() > 249 || !legal || t == "." || t == ".." {
            return Err(Error::InvalidArgument(format!("illegal topic name {t:?}")));
        }
        if self.partition < 0 {
            return Err(Error::InvalidArgument(format!(
                "partition {} is negative",
                self.partition
            )));
        }
        Ok(())
    }

    /// Directory name: `<topic>-<partition>`, as Kafka names its log directories.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    pub fn from_dir_name(name: &str) -> Option<Self> {
        let (topic, partition) = name.rsplit_once('-')?;
        let tp = TopicPartition::new(topic, partition.parse().ok()?);
        (tp.validate().is_ok() && tp.dir_name() == name).then_some(tp)
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// What an append stores: opaque payload bytes plus the metadata the WAL indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub payload: Bytes,
    /// Offsets the batch occupies (at least 1).
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
}

impl Batch {
    /// A batch whose records all carry `timestamp`.
    pub fn new(payload: impl Into<Bytes>, record_count: u32, timestamp: i64) -> Self {
        Self {
            payload: payload.into(),
            record_count,
            first_timestamp: timestamp,
            max_timestamp: timestamp,
        }
    }
}

/// A batch read back, with the offsets the WAL assigned. `payload` is the stored bytes, not re-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub payload: Bytes,
}

impl StoredBatch {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.record_count) - 1
    }

    pub fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.record_count)
    }
}

/// What every partition shares: the I/O backend and the configuration.
#[derive(Debug)]
pub(crate) struct WalContext {
    pub io: Arc<dyn io::WalIo>,
    /// Every segment file is opened through it (at most `config.max_open_files` open at once).
    pub files: io::FileCache,
    pub config: WalConfig,
    /// Where partitions ask for preallocated space (served only if `config.preallocate_bytes > 0`).
    pub prealloc: prealloc::PreallocQueue,
    /// Read buffers, reused once the batches read into them are dropped.
    pub read_buffers: Arc<buffers::BufferPool>,
    /// The shared journal, with `config.journal`.
    pub journal: Option<Arc<journal::Journal>>,
}

impl WalContext {
    /// Runs an I/O call, retrying with bounded exponential backoff only on errors that cannot have lost
    /// data (EINTR, EAGAIN). Never used around fsync.
    pub fn retry_transient<T>(&self, mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
        let retry = &self.config.retry;
        let mut backoff = Duration::from_millis(retry.initial_backoff_ms);
        let mut attempt = 1;
        loop {
            match op() {
                Err(e)
                    if attempt < retry.max_attempts
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                        ) =>
                {
                    metrics::io_retry();
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(retry.max_backoff_ms));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
