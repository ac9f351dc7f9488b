//! Retention deletes whole sealed segments, oldest first, only behind the checkpoint, and never the active
//! one; the log start offset moves past them durably, reads below it are out of range, and disk use stays
//! bounded under a steady stream of appends.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use chronik_wal::{
    io::SimIo, Batch, CheckpointConfig, Error, RetentionPolicy, RotationConfig, TopicPartition, WalConfig,
    WalManager,
};

const SEGMENT: u64 = 16 * 1024;

fn config(background_checkpoints: bool) -> WalConfig {
    WalConfig {
        rotation: RotationConfig {
            max_segment_size: SEGMENT,
            ..Default::default()
        },
        checkpoint: CheckpointConfig {
            enabled: background_checkpoints,
            interval_ms: 3_600_000,
        },
        ..Default::default()
    }
}

fn batch(i: i64, timestamp: i64) -> Batch {
    Batch::new(Bytes::from(vec![(i % 251) as u8; 1000]), 1, timestamp)
}

fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    for entry in walkdir(root) {
        total += fs::metadata(&entry).unwrap().len();
    }
    total
}

fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn segment_files(root: &Path, tp: &TopicPartition) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join("partitions").join(tp.dir_name()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

#[test]
fn size_retention_deletes_oldest_segments_and_advances_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("r", 0);
    let wal = common::open_wal(dir.path(), config(true)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..200 {
        p.append(batch(i, i)).unwrap();
    }
    let infos = p.segment_infos();
    assert!(infos.len() > 5, "expected several segments, got {}", infos.len());
    let policy = RetentionPolicy::from_kafka(-1, 3 * SEGMENT as i64);

    // Nothing is covered by a checkpoint yet: nothing may go.
    let outcome = p.apply_retention(&policy, 0).unwrap();
    assert_eq!(outcome.segments_deleted, 0);
    assert_eq!(p.log_start_offset(), 0);

    wal.checkpoint().unwrap();
    let outcome = p.apply_retention(&policy, 0).unwrap();
    assert!(outcome.segments_deleted > 0);
    let left = p.segment_infos();
    let kept: u64 = left.iter().map(|s| s.bytes).sum();
    assert!(
        kept >= 3 * SEGMENT,
        "kept {kept} bytes, less than retention.bytes"
    );
    assert!(
        kept - left[0].bytes < 3 * SEGMENT,
        "one more segment could have gone"
    );
    let start = left[0].base_offset;
    assert_eq!(outcome.log_start_offset, start);
    assert_eq!(p.log_start_offset(), start);
    assert_eq!(segment_files(dir.path(), &tp).len(), left.len());

    // Below the start is out of range; the start itself reads.
    match p.read(start - 1, 1 << 20) {
        Err(Error::OffsetOutOfRange { log_start_offset, .. }) => assert_eq!(log_start_offset, start),
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    assert_eq!(p.read(start, 1 << 20).unwrap()[0].base_offset, start);

    // The new start survives a restart, and offsets continue densely.
    drop(p);
    wal.close().unwrap();
    let wal = common::open_wal(dir.path(), config(true)).unwrap();
    let p = wal.partition(&tp).unwrap();
    assert_eq!(p.log_start_offset(), start);
    assert_eq!(p.high_watermark(), 200);
    assert_eq!(p.append(batch(200, 200)).unwrap().base_offset, 200);
    let mut next = start;
    while next < p.high_watermark() {
        for b in p.read(next, 1 << 20).unwrap() {
            assert_eq!(b.base_offset, next);
            next = b.next_offset();
        }
    }
    wal.close().unwrap();
}

#[test]
fn the_active_segment_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("r", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..50 {
        p.append(batch(i, 0)).unwrap();
    }
    let policy = RetentionPolicy::from_kafka(0, 0);
    let outcome = p.apply_retention(&policy, i64::MAX).unwrap();
    let infos = p.segment_infos();
    assert_eq!(infos.len(), 1, "only the active segment is left");
    assert!(!infos[0].sealed);
    assert!(outcome.segments_deleted > 0);
    assert_eq!(p.log_start_offset(), infos[0].base_offset);
    // The active segment's records still read.
    let b = p.read(p.log_start_offset(), 1 << 20).unwrap();
    assert_eq!(b[0].base_offset, infos[0].base_offset);
    wal.close().unwrap();
}

#[test]
fn age_retention_uses_each_segments_newest_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("r", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    // Timestamps rise with the offset: 1_000 per batch.
    for i in 0..100 {
        p.append(batch(i, i * 1_000)).unwrap();
    }
    let infos = p.segment_infos();
    let keep_from = infos[infos.len() / 2].max_timestamp;
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_millis(10_000)),
        max_bytes: None,
    };
    // Everything with newest timestamp < keep_from goes.
    p.apply_retention(&policy, keep_from + 10_000).unwrap();
    let left = p.segment_infos();
    assert_eq!(left.len(), infos.len() - infos.len() / 2);
    assert!(left.iter().all(|s| s.max_timestamp >= keep_from));
    wal.close().unwrap();
}

/// Records without timestamps (-1) age by their segment file's modification time, as in Kafka: they are
/// kept for the retention period after they were written, not deleted at the first pass.
#[test]
fn segments_without_timestamps_age_by_their_files_modification_time() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("untimed", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..40 {
        p.append(batch(i, -1)).unwrap();
    }
    let now_ms = || {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        i64::try_from(since_epoch.as_millis()).unwrap()
    };
    let infos = p.segment_infos();
    assert!(infos.len() > 2, "{infos:?}");
    assert!(infos.iter().all(|s| s.modified_ms.is_some()), "{infos:?}");
    let day = RetentionPolicy::from_kafka(86_400_000, -1);
    assert!(!p.roll_expired(&day, now_ms()).unwrap());
    assert_eq!(p.apply_retention(&day, now_ms()).unwrap().segments_deleted, 0);
    let two_days_on = now_ms() + 2 * 86_400_000;
    assert!(p.roll_expired(&day, two_days_on).unwrap());
    let outcome = p.apply_retention(&day, two_days_on).unwrap();
    assert_eq!(outcome.segments_deleted, infos.len());
    assert_eq!(p.log_start_offset(), 40);
    wal.close().unwrap();
}

/// Sealing an idle segment without timestamps trims its preallocated zeros; that must not make it look
/// freshly written, or the segment sealed for retention would be kept for another whole period.
#[test]
fn sealing_keeps_the_modification_time_retention_ages_by() {
    let sim = SimIo::new(0);
    sim.create_dir_all_durable(Path::new("/wal")).unwrap();
    let config = WalConfig {
        preallocate_bytes: 64 * 1024,
        preallocate_manually: true,
        ..config(false)
    };
    let wal = WalManager::open_with_io("/wal", config, Arc::new(sim.clone())).unwrap();
    let tp = TopicPartition::new("untimed", 0);
    let p = wal.create_partition(&tp).unwrap();
    sim.set_clock(1_000_000);
    for i in 0..3 {
        p.append(batch(i, -1)).unwrap();
        wal.run_preallocation(8);
    }
    assert_eq!(p.segment_infos()[0].modified_ms, Some(1_000_000));
    sim.set_clock(2_000_000);
    let policy = RetentionPolicy::from_kafka(500_000, -1);
    assert!(p.roll_expired(&policy, 2_000_000).unwrap());
    assert_eq!(p.segment_infos()[0].modified_ms, Some(1_000_000));
    let outcome = p.apply_retention(&policy, 2_000_000).unwrap();
    assert_eq!(outcome.segments_deleted, 1, "sealed because expired, so deleted");
    assert_eq!(p.log_start_offset(), 3);
    wal.close().unwrap();
}

#[test]
fn an_expired_active_segment_is_sealed_so_that_retention_can_delete_it() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("idle", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..5 {
        p.append(batch(i, 1_000 + i)).unwrap();
    }
    let policy = RetentionPolicy::from_kafka(10_000, -1);
    assert!(!p.roll_expired(&policy, 5_000).unwrap(), "not expired yet");
    assert!(
        !p.roll_expired(&RetentionPolicy::from_kafka(-1, 0), i64::MAX)
            .unwrap(),
        "a size limit never seals the active segment"
    );
    assert_eq!(p.segment_infos().len(), 1);

    assert!(p.roll_expired(&policy, 20_000).unwrap());
    let outcome = p.apply_retention(&policy, 20_000).unwrap();
    assert_eq!(outcome.segments_deleted, 1);
    let infos = p.segment_infos();
    assert_eq!(infos.len(), 1, "a new, empty active segment");
    assert_eq!(infos[0].base_offset, 5);
    assert_eq!((p.log_start_offset(), p.high_watermark()), (5, 5));
    assert!(
        !p.roll_expired(&policy, 20_000).unwrap(),
        "an empty segment stays"
    );
    assert_eq!(p.append(batch(5, 20_000)).unwrap().base_offset, 5);
    wal.close().unwrap();
}

#[test]
fn an_index_left_behind_by_a_crash_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("r", 0);
    let pdir = dir.path().join("partitions").join(tp.dir_name());
    {
        let wal = common::open_wal(dir.path(), config(false)).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        for i in 0..60 {
            p.append(batch(i, 0)).unwrap();
        }
        p.apply_retention(&RetentionPolicy::from_kafka(-1, 0), 0).unwrap();
        wal.close().unwrap();
    }
    // As if a crash struck between removing a segment and removing its index.
    let orphan = pdir.join(format!("{:020}.index", 0));
    fs::write(&orphan, b"stale").unwrap();
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    assert!(!orphan.exists());
    assert!(wal.partition(&tp).unwrap().log_start_offset() > 0);
    wal.close().unwrap();
}

#[test]
fn disk_use_stays_bounded_with_retention_on() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("r", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    let policy = RetentionPolicy::from_kafka(-1, 4 * SEGMENT as i64);
    let mut peak = 0;
    for i in 0..3_000 {
        p.append(batch(i, i)).unwrap();
        if i % 50 == 0 {
            p.apply_retention(&policy, 0).unwrap();
            peak = peak.max(dir_bytes(dir.path()));
        }
    }
    // ~3 MB appended; retention keeps 4 segments plus the active one and their indexes.
    assert!(p.log_start_offset() > 2_500, "log start {}", p.log_start_offset());
    assert!(peak < 8 * SEGMENT, "disk use peaked at {peak} bytes");
    wal.close().unwrap();
}
