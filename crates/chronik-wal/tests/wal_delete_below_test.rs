//! `PartitionWal::delete_segments_below(offset)` deletes the oldest sealed segments whose every offset is
//! below `offset`, never the active segment and never one holding `offset` or later, only behind the
//! checkpoint when checkpoints are on; the log start offset moves past them durably, reads below it are
//! out of range, and a power cut at any file operation of the deletion leaves a suffix of the log that
//! starts at a segment boundary no later than the requested offset, with nothing at or above it lost.
#![allow(clippy::unwrap_used)]

mod common;
mod sim_common;

use bytes::Bytes;
use chronik_wal::{
    Batch, CheckpointConfig, Error, PartitionWal, RetentionOutcome, TopicPartition, WalConfig,
};
use sim_common::{fresh_wal, open_sim, tp};

/// Records per sealed segment in these tests.
const PER_SEGMENT: i64 = 5;
/// Sealed segments written by `fill`; the active one (empty) follows them.
const SEALED: i64 = 4;

fn config(checkpoints: bool) -> WalConfig {
    WalConfig {
        checkpoint: CheckpointConfig {
            enabled: checkpoints,
            interval_ms: 3_600_000,
        },
        ..Default::default()
    }
}

fn payload(offset: i64) -> Bytes {
    Bytes::from(offset.to_le_bytes().repeat(40))
}

/// Writes `SEALED` sealed segments of `PER_SEGMENT` one-record batches each: segment `k` holds offsets
/// `k * PER_SEGMENT ..(k + 1) * PER_SEGMENT`. The active segment, empty, starts at `SEALED * PER_SEGMENT`.
fn fill(p: &PartitionWal) {
    for offset in 0..SEALED * PER_SEGMENT {
        p.append(Batch::new(payload(offset), 1, 7)).unwrap();
        if (offset + 1) % PER_SEGMENT == 0 {
            p.rotate().unwrap();
        }
    }
    assert_eq!(p.segment_infos().len() as i64, SEALED + 1);
}

/// Reads the whole log from its start and checks it is dense and holds what `fill` wrote.
fn assert_log_intact(p: &PartitionWal) {
    let mut next = p.log_start_offset();
    while next < p.high_watermark() {
        let batches = p.read(next, 1 << 20).unwrap();
        assert!(!batches.is_empty(), "nothing read at {next}");
        for b in batches {
            assert_eq!(b.base_offset, next);
            assert_eq!(b.payload, payload(next), "payload at {next}");
            next = b.next_offset();
        }
    }
    assert_eq!(next, SEALED * PER_SEGMENT);
}

fn deleted(segments: usize, log_start_offset: i64, awaiting_checkpoint: usize) -> (usize, i64, usize) {
    (segments, log_start_offset, awaiting_checkpoint)
}

fn summary(o: &RetentionOutcome) -> (usize, i64, usize) {
    (o.segments_deleted, o.log_start_offset, o.awaiting_checkpoint)
}

#[test]
fn deletes_only_segments_wholly_below_the_offset_and_moves_the_log_start_durably() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("d", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    fill(&p);
    let before = p.segment_infos();

    // Offset 12 lies in the third segment (10..15): the first two go, the third stays.
    let outcome = p.delete_segments_below(12).unwrap();
    assert_eq!(summary(&outcome), deleted(2, 10, 0));
    assert_eq!(outcome.bytes_deleted, before[0].bytes + before[1].bytes);
    assert_eq!(p.log_start_offset(), 10);
    match p.read(9, 1 << 20) {
        Err(Error::OffsetOutOfRange { log_start_offset, .. }) => assert_eq!(log_start_offset, 10),
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    assert_log_intact(&p);

    // Again at the same offset, or at the log start: nothing more to delete.
    assert_eq!(summary(&p.delete_segments_below(12).unwrap()), deleted(0, 10, 0));
    assert_eq!(summary(&p.delete_segments_below(10).unwrap()), deleted(0, 10, 0));
    // Exactly the next segment's end: it goes.
    assert_eq!(summary(&p.delete_segments_below(15).unwrap()), deleted(1, 15, 0));

    drop(p);
    wal.close().unwrap();
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.partition(&tp).unwrap();
    assert_eq!(p.log_start_offset(), 15, "the new log start survives a restart");
    assert_log_intact(&p);
    assert_eq!(
        p.append(Batch::new(payload(20), 1, 7)).unwrap().base_offset,
        SEALED * PER_SEGMENT
    );
    wal.close().unwrap();
}

#[test]
fn offsets_at_or_below_the_first_segments_end_delete_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("d", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    fill(&p);
    for offset in [i64::MIN, -1, 0, 1, PER_SEGMENT - 1] {
        assert_eq!(
            summary(&p.delete_segments_below(offset).unwrap()),
            deleted(0, 0, 0),
            "below {offset}"
        );
    }
    assert_eq!(p.segment_infos().len() as i64, SEALED + 1);
    assert_log_intact(&p);
    wal.close().unwrap();
}

#[test]
fn the_active_segment_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("d", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    fill(&p);
    // The active segment holds records too, all below the offset asked for.
    p.append(Batch::new(payload(20), 1, 7)).unwrap();
    let outcome = p.delete_segments_below(i64::MAX).unwrap();
    assert_eq!(summary(&outcome), deleted(SEALED as usize, 20, 0));
    let infos = p.segment_infos();
    assert_eq!(infos.len(), 1, "only the active segment is left");
    assert!(!infos[0].sealed);
    assert_eq!(p.read(20, 1 << 20).unwrap()[0].payload, payload(20));
    wal.close().unwrap();
}

#[test]
fn with_checkpoints_on_only_segments_behind_the_checkpoint_go() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("d", 0);
    let wal = common::open_wal(dir.path(), config(true)).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    fill(&p);

    // No checkpoint has moved past any segment yet: all three wait for one.
    assert_eq!(summary(&p.delete_segments_below(15).unwrap()), deleted(0, 0, 3));
    assert_eq!(p.segment_infos().len() as i64, SEALED + 1);

    wal.checkpoint().unwrap();
    assert_eq!(summary(&p.delete_segments_below(15).unwrap()), deleted(3, 15, 0));
    assert_log_intact(&p);
    wal.close().unwrap();
}

#[test]
fn a_closed_partition_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("d", 0);
    let wal = common::open_wal(dir.path(), config(false)).unwrap();
    let old = wal.create_partition(&tp).unwrap();
    fill(&old);
    // A reopen closes the handle it replaces.
    let new = wal.reopen_partition(&tp).unwrap();
    assert!(old.is_closed());
    assert_eq!(summary(&old.delete_segments_below(15).unwrap()), deleted(0, 0, 0));
    assert_eq!(new.segment_infos().len() as i64, SEALED + 1);
    wal.close().unwrap();
}

/// Crash simulation: the power goes off at each file operation of the deletion in turn (and, for the
/// largest counts, after it returned), under several seeds of what unsynced state survives.
#[test]
fn a_power_cut_at_any_point_of_the_deletion_leaves_a_suffix_of_the_log() {
    let mut completed = 0;
    for seed in 0..16 {
        for ops in 0..10 {
            let case = format!("seed {seed}, power off after {ops} operations");
            let (sim, wal) = fresh_wal(seed);
            let p = wal.partition(&tp(0)).unwrap();
            fill(&p);
            sim.crash_after(ops);
            let reported = p.delete_segments_below(12).ok().map(|o| o.log_start_offset);
            completed += usize::from(reported.is_some());
            drop(p);
            let sim = sim.crash(seed);
            drop(wal);

            let wal = open_sim(&sim);
            let refused = &wal.recovery_report().corrupt;
            assert!(refused.is_empty(), "{case}: refused {refused:?}");
            let p = wal.partition(&tp(0)).unwrap();
            let start = p.log_start_offset();
            assert!([0, 5, 10].contains(&start), "{case}: log start {start}");
            if let Some(reported) = reported {
                assert_eq!(reported, 10, "{case}");
                assert_eq!(start, reported, "{case}: a completed deletion is durable");
            }
            assert_eq!(p.high_watermark(), SEALED * PER_SEGMENT, "{case}");
            assert_log_intact(&p);
        }
    }
    assert!(completed > 0, "no deletion ran to completion");
    assert!(completed < 16 * 10, "the power never went off during a deletion");
}
