//! Retention: deleting a partition's oldest sealed segments by age or total size.
//!
//! Only whole sealed segments go, oldest first, and only those a checkpoint has moved past (when
//! checkpoints are on), so recovery never needs them. The active segment is never deleted. Each removal is
//! made durable (directory fsync) before the next, so after a crash the files left always form a suffix of
//! the log: the log start offset is the first remaining segment's base, and offsets stay dense.
//!
//! The same deletion, under the same rules, also runs by offset instead of a policy
//! ([`crate::PartitionWal::delete_segments_below`]): for an owner that knows which offsets it no longer
//! needs.

use std::time::Duration;

/// How much of a partition to keep. `None` keeps everything on that axis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete a sealed segment once its newest record timestamp is older than this (Kafka `retention.ms`);
    /// a segment whose records carry no timestamp ages by its file's modification time.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the partition's bytes exceed this, as long as what remains
    /// is still at least this big (Kafka `retention.bytes`).
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// A policy from Kafka-style settings, where any negative value means "unlimited".
    pub fn from_kafka(retention_ms: i64, retention_bytes: i64) -> Self {
        Self {
            max_age: u64::try_from(retention_ms).ok().map(Duration::from_millis),
            max_bytes: u64::try_from(retention_bytes).ok(),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.max_age.is_none() && self.max_bytes.is_none()
    }
}

/// What one segment of a partition holds, as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: i64,
    /// The offset after its last record.
    pub next_offset: i64,
    /// File bytes (header and frames).
    pub bytes: u64,
    /// Largest record timestamp in it (`i64::MIN` if none).
    pub max_timestamp: i64,
    /// The file's modification time (ms since the epoch), read only where `max_timestamp` is negative:
    /// no record has a timestamp. `None` if unknown or not read.
    pub modified_ms: Option<i64>,
    pub sealed: bool,
}

impl SegmentInfo {
    /// The time age-based retention judges the segment by: its newest record's timestamp, or where
    /// records carry none (-1), the file's modification time, as Kafka does. Unknown counts as new:
    /// such a segment is never deleted by age.
    pub fn age_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            self.max_timestamp
        } else {
            self.modified_ms.unwrap_or(i64::MAX)
        }
    }
}

/// What [`crate::PartitionWal::apply_retention`] or [`crate::PartitionWal::delete_segments_below`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    /// The log start offset afterwards.
    pub log_start_offset: i64,
    /// Further segments the policy would delete once a checkpoint moves past them
    /// ([`crate::WalManager::checkpoint`] makes them eligible at once: sealed segments are already synced).
    pub awaiting_checkpoint: usize,
}

/// How many of the oldest segments `policy` lets go at wall-clock time `now_ms`. `deletable` is how many
/// of the oldest segments may be deleted at all (sealed and covered by the checkpoint).
pub(crate) fn segments_to_delete(
    segments: &[SegmentInfo],
    deletable: usize,
    policy: &RetentionPolicy,
    now_ms: i64,
) -> usize {
    let deletable = deletable.min(segments.iter().take_while(|s| s.sealed).count());
    let mut count = 0;
    if let Some(age) = policy.max_age {
        let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        count = segments[..deletable]
            .iter()
            .take_while(|s| s.age_timestamp() < cutoff)
            .count();
    }
    if let Some(max_bytes) = policy.max_bytes {
        let mut remaining: u64 = segments.iter().map(|s| s.bytes).sum();
        let mut by_size = 0;
        for s in &segments[..deletable] {
            // Kafka deletes a segment only if what is left still holds at least `retention.bytes`.
            if remaining.saturating_sub(s.bytes) < max_bytes || remaining < max_bytes {
                break;
            }
            remaining -= s.bytes;
            by_size += 1;
        }
        count = count.max(by_size);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, bytes: u64, ts: i64, sealed: bool) -> SegmentInfo {
        SegmentInfo {
            base_offset: base,
            next_offset: base + 10,
            bytes,
            max_timestamp: ts,
            modified_ms: None,
            sealed,
        }
    }

    #[test]
    fn age_deletes_only_old_sealed_prefix() {
        let segs = [
            seg(0, 100, 1_000, true),
            seg(10, 100, 5_000, true),
            seg(20, 100, 1_500, true),
            seg(30, 100, 1_000, false),
        ];
        let p = RetentionPolicy::from_kafka(3_000, -1);
        // Cutoff 7_000: the first three are old, the active one is never counted.
        assert_eq!(segments_to_delete(&segs, 4, &p, 10_000), 3);
        // Cutoff 3_000: the second segment is young and stops the prefix, though the third is old.
        assert_eq!(segments_to_delete(&segs, 4, &p, 6_000), 1);
        // Nothing beyond what the checkpoint covers.
        assert_eq!(segments_to_delete(&segs, 0, &p, 10_000), 0);
    }

    #[test]
    fn segments_without_timestamps_age_by_modification_time() {
        let p = RetentionPolicy::from_kafka(3_000, -1);
        let untimed = |modified_ms| SegmentInfo {
            modified_ms,
            ..seg(0, 100, -1, true)
        };
        let active = seg(10, 100, 9_000, false);
        assert_eq!(
            segments_to_delete(&[untimed(Some(8_000)), active], 2, &p, 10_000),
            0,
            "written 2 s ago: kept"
        );
        assert_eq!(
            segments_to_delete(&[untimed(Some(6_000)), active], 2, &p, 10_000),
            1,
            "written 4 s ago: deleted"
        );
        assert_eq!(
            segments_to_delete(&[untimed(None), active], 2, &p, i64::MAX),
            0,
            "unknown age: never deleted by age"
        );
    }

    #[test]
    fn size_keeps_at_least_the_limit() {
        let segs = [
            seg(0, 100, 0, true),
            seg(10, 100, 0, true),
            seg(20, 100, 0, true),
            seg(30, 50, 0, false),
        ];
        // 350 bytes; keep >= 150: deleting two leaves 150.
        assert_eq!(
            segments_to_delete(&segs, 3, &RetentionPolicy::from_kafka(-1, 150), 0),
            2
        );
        // Keep >= 151: only one can go (250 left), a second would leave 150.
        assert_eq!(
            segments_to_delete(&segs, 3, &RetentionPolicy::from_kafka(-1, 151), 0),
            1
        );
        assert_eq!(
            segments_to_delete(&segs, 3, &RetentionPolicy::from_kafka(-1, 0), 0),
            3
        );
        assert_eq!(segments_to_delete(&segs, 3, &RetentionPolicy::default(), 0), 0);
    }
}
