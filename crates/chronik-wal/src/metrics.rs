//! Metric names and recording helpers, through the `metrics` facade: the embedding program chooses the
//! exporter (the server exports Prometheus). Labels are bounded: no topic, partition or offset labels here.
//!
//! Every label value this crate records is listed here (`ERROR_KINDS`, `SEGMENT_STATES`), so that
//! [`register_defaults`] can create each series at zero before anything happens: a series that appears
//! only with its first event leaves `rate()` and absence alerts blind until then.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const WRITES_TOTAL: &str = "chronik_wal_writes_total";
pub const WRITE_DURATION_SECONDS: &str = "chronik_wal_write_duration_seconds";
pub const FSYNC_DURATION_SECONDS: &str = "chronik_wal_fsync_duration_seconds";
pub const RECOVERY_DURATION_SECONDS: &str = "chronik_wal_recovery_duration_seconds";
pub const SEGMENTS_TOTAL: &str = "chronik_wal_segments_total";
/// By `kind`: `fsync` for each failed fdatasync of appended data or prepared space, `poisoned` once per
/// partition poisoning (the appends refused afterwards are not counted), and per failed call the error's
/// kind (`storage_full`, `io`, `corrupt`, ...), plus background failures (`preallocate`, `index`, ...).
pub const ERRORS_TOTAL: &str = "chronik_wal_errors_total";
pub const BYTES_WRITTEN_TOTAL: &str = "chronik_wal_bytes_written_total";
pub const GROUP_COMMIT_BATCHES: &str = "chronik_wal_group_commit_batches";
pub const IO_RETRIES_TOTAL: &str = "chronik_wal_io_retries_total";
pub const CHECKPOINTS_TOTAL: &str = "chronik_wal_checkpoints_total";
pub const RECOVERY_BYTES_SCANNED_TOTAL: &str = "chronik_wal_recovery_bytes_scanned_total";
pub const TRUNCATED_BYTES_TOTAL: &str = "chronik_wal_truncated_bytes_total";
pub const RETENTION_DELETED_SEGMENTS_TOTAL: &str = "chronik_wal_retention_deleted_segments_total";
pub const RETENTION_DELETED_BYTES_TOTAL: &str = "chronik_wal_retention_deleted_bytes_total";
pub const PREALLOCATED_BYTES_TOTAL: &str = "chronik_wal_preallocated_bytes_total";
pub const OPEN_FILES: &str = "chronik_wal_open_files";
pub const FILE_OPENS_TOTAL: &str = "chronik_wal_file_opens_total";
pub const FILE_CLOSES_TOTAL: &str = "chronik_wal_file_closes_total";
pub const JOURNAL_ROUNDS_TOTAL: &str = "chronik_wal_journal_rounds_total";
pub const JOURNAL_BYTES_TOTAL: &str = "chronik_wal_journal_bytes_total";
pub const JOURNAL_ROUND_DURATION_SECONDS: &str = "chronik_wal_journal_round_duration_seconds";
pub const JOURNAL_ROUND_GROUPS: &str = "chronik_wal_journal_round_groups";

/// Every `kind` of [`ERRORS_TOTAL`]: the [`crate::Error::kind_label`] values and the background failures.
pub const ERROR_KINDS: &[&str] = &[
    "fsync",
    "poisoned",
    "offline",
    "storage_full",
    "io",
    "corrupt",
    "offset_out_of_range",
    "partition",
    "invalid_argument",
    "out_of_step",
    "preallocate",
    "index",
    "journal",
];

/// Every `state` of [`SEGMENTS_TOTAL`].
pub const SEGMENT_STATES: &[&str] = &["active", "sealed"];

/// Gives every metric above its help text and creates each series, with every known label value, at
/// zero (histograms empty). Call once after installing the recorder and before opening a WAL; gauges are
/// moved by deltas, so calling it later would not disturb them either.
pub fn register_defaults() {
    let counters = [
        (WRITES_TOTAL, "Appended batches written to segment files."),
        (
            BYTES_WRITTEN_TOTAL,
            "Bytes written to segment files, frame headers included.",
        ),
        (
            IO_RETRIES_TOTAL,
            "I/O calls retried after a transient error (interrupted, would block).",
        ),
        (CHECKPOINTS_TOTAL, "Checkpoints written."),
        (
            RECOVERY_BYTES_SCANNED_TOTAL,
            "Bytes of segments read and validated by recovery at open.",
        ),
        (
            TRUNCATED_BYTES_TOTAL,
            "Torn or damaged tail bytes cut off by recovery.",
        ),
        (
            RETENTION_DELETED_SEGMENTS_TOTAL,
            "Sealed segments deleted by retention.",
        ),
        (
            RETENTION_DELETED_BYTES_TOTAL,
            "Bytes of segments deleted by retention.",
        ),
        (
            PREALLOCATED_BYTES_TOTAL,
            "Bytes zero-filled and synced ahead of active segments' write positions.",
        ),
        (
            FILE_OPENS_TOTAL,
            "Segment files opened, first or again after the file cache closed them.",
        ),
        (
            FILE_CLOSES_TOTAL,
            "Segment files closed by the file cache (least recently used, over its limit) or dropped.",
        ),
        (
            JOURNAL_ROUNDS_TOTAL,
            "Journal rounds written (one write and one fdatasync of the shared journal each).",
        ),
        (JOURNAL_BYTES_TOTAL, "Bytes written to the shared journal."),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
        counter!(name).increment(0);
    }
    describe_counter!(
        ERRORS_TOTAL,
        "WAL errors by kind: failed fdatasyncs (fsync), partition poisonings (poisoned), errors returned to callers by their kind, background failures (preallocate, index)."
    );
    for kind in ERROR_KINDS {
        counter!(ERRORS_TOTAL, "kind" => *kind).increment(0);
    }
    describe_gauge!(SEGMENTS_TOTAL, "Segment files open, by state (active or sealed).");
    for state in SEGMENT_STATES {
        gauge!(SEGMENTS_TOTAL, "state" => *state).increment(0.0);
    }
    describe_gauge!(
        OPEN_FILES,
        "Segment files open now (at most the file cache's limit, but for files awaiting their fdatasync)."
    );
    gauge!(OPEN_FILES).increment(0.0);
    let histograms = [
        (
            WRITE_DURATION_SECONDS,
            "Time of one group write call, in seconds.",
        ),
        (
            FSYNC_DURATION_SECONDS,
            "Time of one fdatasync of a segment, in seconds.",
        ),
        (
            RECOVERY_DURATION_SECONDS,
            "Time to recover all partitions at open, in seconds.",
        ),
        (GROUP_COMMIT_BATCHES, "Appended batches per group write."),
        (
            JOURNAL_ROUND_DURATION_SECONDS,
            "Time of one journal round's write and fdatasync, in seconds.",
        ),
        (
            JOURNAL_ROUND_GROUPS,
            "Partition groups made durable by one journal round.",
        ),
    ];
    for (name, help) in histograms {
        describe_histogram!(name, help);
        // Creating the handle is what registers the series; nothing is recorded.
        let _ = histogram!(name);
    }
}

/// One group write: `batches` appends, `bytes` on disk, time for the write call.
pub(crate) fn group_written(batches: usize, bytes: usize, took: Duration) {
    counter!(WRITES_TOTAL).increment(batches as u64);
    counter!(BYTES_WRITTEN_TOTAL).increment(bytes as u64);
    histogram!(GROUP_COMMIT_BATCHES).record(batches as f64);
    histogram!(WRITE_DURATION_SECONDS).record(took.as_secs_f64());
}

/// One journal round: `groups` partition groups in `bytes`, written and fdatasynced in `took`.
pub(crate) fn journal_round(groups: usize, bytes: usize, took: Duration) {
    counter!(JOURNAL_ROUNDS_TOTAL).increment(1);
    counter!(JOURNAL_BYTES_TOTAL).increment(bytes as u64);
    histogram!(JOURNAL_ROUND_GROUPS).record(groups as f64);
    histogram!(JOURNAL_ROUND_DURATION_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn fsync(took: Duration) {
    histogram!(FSYNC_DURATION_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn error(kind: &'static str) {
    debug_assert!(ERROR_KINDS.contains(&kind), "{kind} is missing from ERROR_KINDS");
    counter!(ERRORS_TOTAL, "kind" => kind).increment(1);
}

/// An error returned to a caller. A poisoned partition's refusals are not counted: the poisoning was,
/// once, when it happened (with the failed fdatasync as `fsync`).
pub(crate) fn request_error(e: &crate::Error) {
    if !matches!(e, crate::Error::Poisoned { .. }) {
        error(e.kind_label());
    }
}

/// Zero-filled and synced ahead of an active segment's write position.
pub(crate) fn preallocated(bytes: u64) {
    counter!(PREALLOCATED_BYTES_TOTAL).increment(bytes);
}

/// The file cache opened a segment file.
pub(crate) fn file_opened() {
    counter!(FILE_OPENS_TOTAL).increment(1);
    gauge!(OPEN_FILES).increment(1.0);
}

/// The file cache closed a segment file.
pub(crate) fn file_closed() {
    counter!(FILE_CLOSES_TOTAL).increment(1);
    gauge!(OPEN_FILES).decrement(1.0);
}

pub(crate) fn io_retry() {
    counter!(IO_RETRIES_TOTAL).increment(1);
}

pub(crate) fn checkpoint() {
    counter!(CHECKPOINTS_TOTAL).increment(1);
}

/// `delta` segments entered (positive) or left (negative) a state ("active" or "sealed").
pub(crate) fn segments(state: &'static str, delta: f64) {
    debug_assert!(
        SEGMENT_STATES.contains(&state),
        "{state} is missing from SEGMENT_STATES"
    );
    gauge!(SEGMENTS_TOTAL, "state" => state).increment(delta);
}

pub(crate) fn recovery(took: Duration, bytes_scanned: u64, truncated_bytes: u64) {
    histogram!(RECOVERY_DURATION_SECONDS).record(took.as_secs_f64());
    counter!(RECOVERY_BYTES_SCANNED_TOTAL).increment(bytes_scanned);
    counter!(TRUNCATED_BYTES_TOTAL).increment(truncated_bytes);
}

/// Retention deleted one segment of `bytes`.
pub(crate) fn retention_deleted(bytes: u64) {
    counter!(RETENTION_DELETED_SEGMENTS_TOTAL).increment(1);
    counter!(RETENTION_DELETED_BYTES_TOTAL).increment(bytes);
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::ERROR_KINDS;
    use crate::{config::IoBackend, CorruptionKind, Error, TopicPartition};

    /// `register_defaults` creates a series for each kind listed; an error counted under a kind that is
    /// not listed would appear only when it first happens.
    #[test]
    fn every_error_kind_label_is_listed() {
        let tp = || TopicPartition::new("t", 0);
        let errors = [
            Error::io("writing", "f", io::Error::other("x")),
            Error::io("writing", "f", io::Error::from(io::ErrorKind::StorageFull)),
            Error::corrupt("f", 0, CorruptionKind::BadMagic { found: 0 }),
            Error::Poisoned {
                tp: tp(),
                cause: "x".into(),
            },
            Error::OffsetOutOfRange {
                tp: tp(),
                offset: 0,
                log_start_offset: 0,
                high_watermark: 0,
            },
            Error::PartitionOffline {
                tp: tp(),
                cause: std::sync::Arc::new(Error::io("opening", "f", io::Error::other("x"))),
            },
            Error::UnknownPartition(tp()),
            Error::PartitionExists(tp()),
            Error::PartitionDeleted(tp()),
            Error::BatchTooLarge { size: 2, max: 1 },
            Error::IoBackendUnavailable(crate::io::BackendUnavailable {
                backend: IoBackend::IoUring,
                step: "probe",
                source: io::Error::other("x"),
            }),
            Error::InvalidArgument("x".into()),
        ];
        for e in &errors {
            assert!(ERROR_KINDS.contains(&e.kind_label()), "{e}: {}", e.kind_label());
        }
    }
}
