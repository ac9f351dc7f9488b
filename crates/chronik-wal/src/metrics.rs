//! Metric names and recording helpers, through the `metrics` facade: the embedding program chooses the
//! exporter (the server exports Prometheus). Labels are bounded: no topic, partition or offset labels here.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

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

/// One group write: `batches` appends, `bytes` on disk, time for the write call.
pub(crate) fn group_written(batches: usize, bytes: usize, took: Duration) {
    counter!(WRITES_TOTAL).increment(batches as u64);
    counter!(BYTES_WRITTEN_TOTAL).increment(bytes as u64);
    histogram!(GROUP_COMMIT_BATCHES).record(batches as f64);
    histogram!(WRITE_DURATION_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn fsync(took: Duration) {
    histogram!(FSYNC_DURATION_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn error(kind: &'static str) {
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

pub(crate) fn io_retry() {
    counter!(IO_RETRIES_TOTAL).increment(1);
}

pub(crate) fn checkpoint() {
    counter!(CHECKPOINTS_TOTAL).increment(1);
}

/// `delta` segments entered (positive) or left (negative) a state ("active" or "sealed").
pub(crate) fn segments(state: &'static str, delta: f64) {
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
