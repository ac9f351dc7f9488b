//! Configuration knobs of the WAL. Every field is documented with its default; `WalConfig::default()` is what
//! a broker started with no configuration uses.

use std::{fmt, str::FromStr, time::Duration};

use crate::{Error, Result};

/// Largest segment a config may ask for. Index entries store 32-bit positions, and a segment may exceed its
/// limit by one frame, so the limit stays well below 4 GiB.
pub const MAX_SEGMENT_SIZE_LIMIT: u64 = 2 << 30;
/// Smallest `max_segment_size`: one page.
pub const MIN_SEGMENT_SIZE: u64 = 4096;

/// Hard cap on one batch's payload, whatever the config says: a length read from disk above this is corrupt.
pub const MAX_BATCH_BYTES_LIMIT: u32 = 256 << 20;

/// When a segment is sealed and a new one started: for every partition by default, or for one partition
/// with [`crate::PartitionWal::set_rotation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationConfig {
    /// Rotate before an append would make the active segment larger than this. Default 1 GiB.
    pub max_segment_size: u64,
    /// Rotate on the first append after the active segment has been open this long. Default 1 hour.
    pub max_segment_age_ms: u64,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            max_segment_size: 1 << 30,
            max_segment_age_ms: 60 * 60 * 1000,
        }
    }
}

/// Periodic checkpoints bound how much of the log recovery must re-read after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Write checkpoints in the background. Default true.
    pub enabled: bool,
    /// How often. Default 30 s.
    pub interval_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 30_000,
        }
    }
}

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every append returns after `fdatasync` (shared by a group of concurrent appends). The default.
    #[default]
    Always,
    /// Appends return once written to the page cache; a background thread syncs every `interval_ms`.
    Interval { interval_ms: u64 },
    /// Appends return once written to the page cache; only sealing and shutdown sync.
    Never,
}

/// The per-call durability an append waits for; `Default` follows the configured [`SyncPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Default,
    /// Wait for `fdatasync`, whatever the policy.
    Sync,
    /// Wait only for the write to reach the page cache.
    Written,
}

/// Bounded retry for transient I/O errors that cannot have lost data (EINTR, EAGAIN). Never used for fsync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, including the first. Default 5.
    pub max_attempts: u32,
    /// Backoff before the second attempt, doubled each time. Default 1 ms.
    pub initial_backoff_ms: u64,
    /// Cap on one backoff. Default 100 ms.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 1,
            max_backoff_ms: 100,
        }
    }
}

/// Which I/O backend [`WalManager::open`](crate::WalManager::open) uses for the log's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// The backend measured fastest for the WAL, [`AUTO_PREFERS`](crate::io::AUTO_PREFERS): std today.
    /// Were it io_uring, a kernel refusing io_uring would mean std, with a warning saying why.
    #[default]
    Auto,
    /// io_uring (Linux): opening the WAL fails with [`Error::IoBackendUnavailable`] if the kernel or a
    /// container's seccomp profile refuses it.
    IoUring,
    /// Portable `std::fs` (`pwrite`/`pread`/`fdatasync`).
    Std,
}

impl IoBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io_uring",
            IoBackend::Std => "std",
        }
    }
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IoBackend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(IoBackend::Auto),
            "io_uring" => Ok(IoBackend::IoUring),
            "std" => Ok(IoBackend::Std),
            other => Err(Error::InvalidArgument(format!(
                "io_backend must be auto, io_uring or std, not {other:?}"
            ))),
        }
    }
}

/// All WAL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    pub rotation: RotationConfig,
    pub checkpoint: CheckpointConfig,
    pub sync_policy: SyncPolicy,
    pub retry: RetryConfig,
    /// A sparse index entry is added at most every this many segment bytes. Default 4096.
    pub index_interval_bytes: u32,
    /// Largest batch payload accepted by `append`. Default 16 MiB; at most 256 MiB.
    pub max_batch_bytes: u32,
    /// Appenders wait while this many bytes are queued for the next group write. Default 32 MiB.
    pub max_pending_bytes: u64,
    /// The I/O backend [`WalManager::open`](crate::WalManager::open) builds. Default `Auto` (std, as measured).
    pub io_backend: IoBackend,
    /// Zero-filled, fsynced space a background thread keeps ahead of the active segment's write position,
    /// so that a durable append overwrites prepared blocks instead of growing the file (its fdatasync then
    /// has no file size or block allocation to persist). Topped up in 256 KiB steps when less than half of
    /// it is left, never past `rotation.max_segment_size`; once the segment is prepared to that limit, the
    /// next segment's file is created and zero-filled over this much too. Only partitions whose group
    /// commits average under 32 KiB get it: larger ones gain nothing from it and grow the file. Costs up to
    /// this much disk per active partition (twice near the end of a segment) and one extra write of every
    /// byte; recovery reads the zeroed tail once. 0 disables. Default 2 MiB: measured here it makes 1 KiB
    /// durable appends 1.3-1.5x faster than a growing file (README, Performance), while a large window
    /// (16 MiB) put bursts of zeros in front of the log's own fdatasyncs.
    pub preallocate_bytes: u64,
    /// Appends a partition takes (since it was opened) before it gets prepared space: a partition written
    /// now and then gains nothing from it, and with many partitions each written a few times the zeros
    /// (`preallocate_bytes` of disk each) and recovery's read of them would cost far more than the data.
    /// Default 0 (from the first append); `chronik serve` uses 64.
    pub preallocate_after_appends: u64,
    /// Segment files kept open at most (see [`crate::io::FileCache`]): past it, the least recently used
    /// clean ones are closed and reopened on their next use, so idle partitions hold no descriptor. A
    /// soft limit: files written and not yet fdatasynced stay open. Size it below the process's file limit,
    /// leaving room for connections. Default 4096; at least 1.
    pub max_open_files: usize,
    /// Threads recovering partitions at open. A partition's recovery is mostly waiting on a directory
    /// fsync and an fdatasync, which the file system serves side by side. Default 8; 1 recovers in
    /// directory order on the opening thread (what the crash simulation needs to replay a seed).
    pub recovery_threads: usize,
    /// Make appends durable through one journal shared by all partitions instead of an fdatasync of each
    /// partition's segment: a group is written to its segment and to the journal, and one fdatasync of
    /// the journal makes the groups of every partition waiting durable. Segments are fdatasynced in the
    /// background (a trim, after `journal_trim_bytes` of journal), and recovery replays the journal into
    /// them first. Pays off when many partitions are written at once; costs each byte written twice.
    /// Requires `SyncPolicy::Always`; turns preallocation of segments off (nothing waits on their
    /// fdatasyncs). Default false.
    pub journal: bool,
    /// Zero-filled bytes each new journal file starts with, so that a round's fdatasync has no file size
    /// to persist. Default 64 MiB.
    pub journal_file_bytes: u64,
    /// A trim (fdatasync the segments written, delete the journal before) runs once this many bytes of
    /// journal are live, and at every checkpoint. Default 64 MiB.
    pub journal_trim_bytes: u64,
    /// A round with fewer partition groups than this makes each durable by an fdatasync of its own
    /// segment instead of the journal: one partition written alone pays one fdatasync either way, and
    /// the journal would write its bytes twice. Default 2 (only a lone group); 1 always journals.
    pub journal_min_groups: usize,
    /// For deterministic tests (the crash simulation): no preallocation thread is started, and the owner
    /// runs the queued preallocation work itself with [`crate::WalManager::run_preallocation`].
    #[cfg(feature = "testkit")]
    pub preallocate_manually: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            rotation: RotationConfig::default(),
            checkpoint: CheckpointConfig::default(),
            sync_policy: SyncPolicy::default(),
            retry: RetryConfig::default(),
            index_interval_bytes: 4096,
            max_batch_bytes: 16 << 20,
            max_pending_bytes: 32 << 20,
            io_backend: IoBackend::default(),
            preallocate_bytes: 2 << 20,
            preallocate_after_appends: 0,
            max_open_files: 4096,
            recovery_threads: 8,
            journal: false,
            journal_file_bytes: 64 << 20,
            journal_trim_bytes: 64 << 20,
            journal_min_groups: 2,
            #[cfg(feature = "testkit")]
            preallocate_manually: false,
        }
    }
}

impl RotationConfig {
    /// Rejects sizes and ages the WAL cannot honour.
    pub fn validate(&self) -> Result<()> {
        if self.max_segment_size < MIN_SEGMENT_SIZE || self.max_segment_size > MAX_SEGMENT_SIZE_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "rotation.max_segment_size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE_LIMIT}, got {}",
                self.max_segment_size
            )));
        }
        if self.max_segment_age_ms == 0 {
            return Err(Error::InvalidArgument(
                "rotation.max_segment_age_ms must be positive".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn max_segment_age(&self) -> Duration {
        Duration::from_millis(self.max_segment_age_ms)
    }
}

impl WalConfig {
    /// Whether the owner runs preallocation itself instead of a preparer thread: only a test can ask for
    /// it (`preallocate_manually`, with the `testkit` feature).
    #[cfg(feature = "testkit")]
    pub(crate) fn preallocates_manually(&self) -> bool {
        self.preallocate_manually
    }

    #[cfg(not(feature = "testkit"))]
    pub(crate) fn preallocates_manually(&self) -> bool {
        false
    }

    /// Rejects settings the WAL cannot honour.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(msg));
        self.rotation.validate()?;
        if self.checkpoint.enabled && self.checkpoint.interval_ms == 0 {
            return bad("checkpoint.interval_ms must be positive".into());
        }
        if let SyncPolicy::Interval { interval_ms: 0 } = self.sync_policy {
            return bad("sync_policy interval_ms must be positive".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive".into());
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > MAX_BATCH_BYTES_LIMIT {
            return bad(format!(
                "max_batch_bytes must be between 1 and {MAX_BATCH_BYTES_LIMIT}"
            ));
        }
        if self.max_pending_bytes < u64::from(self.max_batch_bytes) {
            return bad("max_pending_bytes must be at least max_batch_bytes".into());
        }
        if self.preallocate_bytes != 0
            && (self.preallocate_bytes < 4096 || self.preallocate_bytes > MAX_SEGMENT_SIZE_LIMIT)
        {
            return bad(format!(
                "preallocate_bytes must be 0 or between 4096 and {MAX_SEGMENT_SIZE_LIMIT}, got {}",
                self.preallocate_bytes
            ));
        }
        if self.max_open_files == 0 {
            return bad("max_open_files must be at least 1".into());
        }
        if self.recovery_threads == 0 {
            return bad("recovery_threads must be at least 1".into());
        }
        if self.journal && self.sync_policy != SyncPolicy::Always {
            return bad("journal requires sync_policy Always (it exists to make appends durable)".into());
        }
        if self.journal && self.journal_trim_bytes == 0 {
            return bad("journal_trim_bytes must be positive".into());
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_backend_names_round_trip_and_unknown_names_are_refused() {
        for backend in [IoBackend::Auto, IoBackend::IoUring, IoBackend::Std] {
            assert_eq!(backend.to_string().parse::<IoBackend>().ok(), Some(backend));
        }
        assert_eq!(IoBackend::IoUring.to_string(), "io_uring");
        assert!(matches!(
            "uring".parse::<IoBackend>(),
            Err(Error::InvalidArgument(m)) if m.contains("auto, io_uring or std")
        ));
        assert_eq!(WalConfig::default().io_backend, IoBackend::Auto);
    }
}
