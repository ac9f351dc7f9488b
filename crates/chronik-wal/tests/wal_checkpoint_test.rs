//! Checkpoints bound recovery work. After a checkpoint, reopening validates only the bytes written after
//! it; without one, recovery validates every byte. Measured as bytes read by recovery, not as time.
//! Also: checkpoints are written in the background at the configured interval, and damage below the
//! checkpoint (not re-read by recovery) is still caught by the CRC on read.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chronik_wal::{
    frame::FRAME_HEADER_LEN, segment::SEGMENT_HEADER_LEN, Batch, CheckpointConfig, Error, RotationConfig,
    TopicPartition, WalConfig,
};

fn config(checkpoint: CheckpointConfig) -> WalConfig {
    WalConfig {
        rotation: RotationConfig {
            max_segment_size: 64 * 1024,
            ..Default::default()
        },
        checkpoint,
        // Counts recovery's bytes read exactly: no preallocated space past the frames to read.
        preallocate_bytes: 0,
        ..Default::default()
    }
}

fn manual() -> CheckpointConfig {
    CheckpointConfig {
        enabled: false,
        ..Default::default()
    }
}

fn batch(i: usize) -> Batch {
    Batch::new(Bytes::from(vec![(i % 251) as u8; 900 + i % 200]), 1, i as i64)
}

fn frame_bytes(i: usize) -> u64 {
    (FRAME_HEADER_LEN + 900 + i % 200) as u64
}

fn partition_dir(root: &Path, tp: &TopicPartition) -> std::path::PathBuf {
    root.join("partitions").join(tp.dir_name())
}

#[test]
fn recovery_after_checkpoint_reads_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("c", 0);
    let (before, after) = (300, 7);
    {
        let wal = common::open_wal(dir.path(), config(manual())).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..before {
            wal.append(&tp, batch(i)).unwrap();
        }
        assert_eq!(wal.checkpoint().unwrap().partitions, 1);
        for i in before..before + after {
            wal.append(&tp, batch(i)).unwrap();
        }
        // Crash: dropped without close, so no final checkpoint.
    }
    let tail: u64 = (before..before + after).map(frame_bytes).sum();
    let all: u64 = (0..before + after).map(frame_bytes).sum();
    {
        let wal = common::open_wal(dir.path(), config(manual())).unwrap();
        let report = wal.recovery_report();
        assert!(report.used_checkpoint);
        assert!(
            report.stats.segments >= 4,
            "several segments: {}",
            report.stats.segments
        );
        assert_eq!(
            report.stats.bytes_scanned, tail,
            "only the bytes after the checkpoint are validated"
        );
        assert_eq!(report.stats.frames_scanned, after as u64);
        assert_eq!(wal.high_watermark(&tp).unwrap(), (before + after) as i64);
        assert_eq!(wal.read(&tp, 0, u64::MAX).unwrap().len(), before + after);
    }
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let wal = common::open_wal(dir.path(), config(manual())).unwrap();
    let report = wal.recovery_report();
    assert!(!report.used_checkpoint);
    assert_eq!(
        report.stats.bytes_scanned, all,
        "without a checkpoint every frame is validated"
    );
    assert_eq!(report.stats.frames_scanned, (before + after) as u64);
    let segments = report.stats.segments;
    assert!(all > segments * SEGMENT_HEADER_LEN as u64);
}

#[test]
fn corrupt_checkpoint_falls_back_to_full_validation() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("c", 1);
    {
        let wal = common::open_wal(dir.path(), config(manual())).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..20 {
            wal.append(&tp, batch(i)).unwrap();
        }
        wal.close().unwrap();
    }
    let path = dir.path().join("checkpoint");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();
    let wal = common::open_wal(dir.path(), config(manual())).unwrap();
    assert!(!wal.recovery_report().used_checkpoint);
    assert_eq!(
        wal.recovery_report().stats.bytes_scanned,
        (0..20).map(frame_bytes).sum::<u64>()
    );
    assert_eq!(wal.high_watermark(&tp).unwrap(), 20);
}

#[test]
fn damage_below_the_checkpoint_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("c", 2);
    {
        let wal = common::open_wal(dir.path(), config(manual())).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..10 {
            wal.append(&tp, batch(i)).unwrap();
        }
        wal.checkpoint().unwrap();
    }
    let segment = partition_dir(dir.path(), &tp).join(format!("{:020}.wal", 0));
    let mut bytes = fs::read(&segment).unwrap();
    let third = SEGMENT_HEADER_LEN as u64 + frame_bytes(0) + frame_bytes(1);
    bytes[(third + FRAME_HEADER_LEN as u64 + 5) as usize] ^= 0x20;
    fs::write(&segment, bytes).unwrap();
    let wal = common::open_wal(dir.path(), config(manual())).unwrap();
    assert_eq!(
        wal.recovery_report().stats.bytes_scanned,
        0,
        "below the checkpoint nothing is re-read"
    );
    assert_eq!(wal.read(&tp, 0, 1).unwrap().len(), 1);
    let err = wal.read(&tp, 2, 1).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { position, .. } if position == third),
        "{err}"
    );
}

#[test]
fn background_checkpoints_follow_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("bg", 0);
    let wal = common::open_wal(
        dir.path(),
        config(CheckpointConfig {
            enabled: true,
            interval_ms: 20,
        }),
    )
    .unwrap();
    wal.create_partition(&tp).unwrap();
    for i in 0..30 {
        wal.append(&tp, batch(i)).unwrap();
    }
    let expected = chronik_wal::CheckpointEntry {
        tp: tp.clone(),
        segment_base: 0,
        position: SEGMENT_HEADER_LEN as u64 + (0..30).map(frame_bytes).sum::<u64>(),
        next_offset: 30,
        max_timestamp: 29,
    };
    // Wait for the condition (a checkpoint that covers all appends), bounded by a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = dir.path().join("checkpoint");
    loop {
        let entries = fs::read(&path)
            .ok()
            .and_then(|b| chronik_wal::checkpoint::decode(&b).ok());
        if entries.as_deref() == Some(std::slice::from_ref(&expected)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no background checkpoint covering the appends: {entries:?}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn rotations_after_the_checkpoint_are_validated_and_nothing_before() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("c", 3);
    let (before, after) = (30, 200);
    {
        let wal = common::open_wal(dir.path(), config(manual())).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..before {
            wal.append(&tp, batch(i)).unwrap();
        }
        wal.checkpoint().unwrap();
        for i in before..before + after {
            wal.append(&tp, batch(i)).unwrap();
        }
    }
    let wal = common::open_wal(dir.path(), config(manual())).unwrap();
    let report = wal.recovery_report();
    assert!(
        report.stats.segments >= 3,
        "the checkpointed segment was sealed and others followed"
    );
    let tail: u64 = (before..before + after).map(frame_bytes).sum();
    assert_eq!(
        report.stats.bytes_scanned, tail,
        "validation starts exactly at the checkpoint"
    );
    let all = wal.read(&tp, 0, u64::MAX).unwrap();
    assert_eq!(all.len(), before + after);
    for (i, b) in all.iter().enumerate() {
        assert_eq!(b.payload, batch(i).payload);
        assert_eq!(
            wal.read(&tp, b.base_offset, 1).unwrap()[0].base_offset,
            b.base_offset
        );
    }
}

/// A checkpoint rewrites the index file of a partition only if its durable point moved: idle partitions
/// cost it nothing but their entry (rewriting every index made a checkpoint O(partitions) syncs).
#[test]
fn a_checkpoint_rewrites_only_the_indexes_of_partitions_that_moved() {
    let dir = tempfile::tempdir().unwrap();
    let (idle, busy) = (TopicPartition::new("idle", 0), TopicPartition::new("busy", 0));
    let empty = TopicPartition::new("empty", 0);
    let wal = common::open_wal(dir.path(), config(manual())).unwrap();
    wal.create_partition(&empty).unwrap();
    for tp in [&idle, &busy] {
        wal.create_partition(tp).unwrap();
        wal.append(tp, batch(0)).unwrap();
    }
    wal.checkpoint().unwrap();
    let index = |tp: &TopicPartition| partition_dir(dir.path(), tp).join("00000000000000000000.index");
    assert!(index(&idle).exists() && index(&busy).exists());
    assert!(!index(&empty).exists(), "an empty segment has nothing to index");
    fs::remove_file(index(&idle)).unwrap();
    fs::remove_file(index(&busy)).unwrap();
    wal.append(&busy, batch(1)).unwrap();
    wal.checkpoint().unwrap();
    assert!(
        !index(&idle).exists(),
        "the idle partition's index was written again"
    );
    assert!(index(&busy).exists());
    drop(wal);
    // Recovery does without the missing index file (it is a cache).
    let wal = common::open_wal(dir.path(), config(manual())).unwrap();
    assert_eq!(wal.high_watermark(&idle).unwrap(), 1);
    assert_eq!(wal.high_watermark(&busy).unwrap(), 2);
    assert_eq!(wal.high_watermark(&empty).unwrap(), 0);
}
