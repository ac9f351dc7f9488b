//! `WalManager::truncate_to`: cutting a log back to an offset, as a Raft follower or a replica with a
//! divergent tail must.
//!
//! Must hold: after it returns, the batches below the offset are intact, none from it on is readable,
//! and the next append gets the offset, across restarts and the worst power cut; a checkpoint written
//! before it, or journal records of the cut bytes, never bring them back nor make recovery refuse the
//! shorter files; a power cut at any file operation inside it leaves the log cut somewhere between the
//! offset and its old end, never with a hole and never refused; offsets that no batch starts at, or
//! outside the log, are caller mistakes that change nothing.
#![cfg(feature = "testkit")]
#![allow(clippy::unwrap_used)]

use std::{path::Path, sync::Arc};

use chronik_wal::{
    io::{SimIo, WalIo},
    Batch, CheckpointConfig, Error, RotationConfig, TopicPartition, WalConfig, WalManager,
};

const ROOT: &str = "/wal";

fn config(journal: bool) -> WalConfig {
    WalConfig {
        rotation: RotationConfig {
            max_segment_size: 4096,
            ..Default::default()
        },
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        journal,
        journal_file_bytes: 8192,
        journal_min_groups: 1,
        preallocate_bytes: 4096,
        preallocate_manually: true,
        recovery_threads: 1,
        ..Default::default()
    }
}

fn open(sim: &SimIo, journal: bool) -> WalManager {
    let io: Arc<dyn WalIo> = Arc::new(sim.clone());
    WalManager::open_with_io(ROOT, config(journal), io).unwrap()
}

fn tp() -> TopicPartition {
    TopicPartition::new("t", 0)
}

/// Batch `i`: two records, a payload naming it.
fn batch(i: usize) -> Batch {
    Batch::new(
        format!("batch {i:04} {}", "x".repeat(1000)).into_bytes(),
        2,
        1_000 + i as i64,
    )
}

/// A fresh WAL holding batches 0..n (offsets 0, 2, 4, ...) over several segments, with preallocated
/// space, a checkpoint, and the last batches written after it.
fn filled(journal: bool, n: usize) -> (SimIo, WalManager) {
    let sim = SimIo::new(11);
    sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
    let wal = open(&sim, journal);
    wal.create_partition(&tp()).unwrap();
    for i in 0..n {
        wal.append(&tp(), batch(i)).unwrap();
        wal.run_preallocation(4);
        if i == n - 3 {
            wal.checkpoint().unwrap();
        }
    }
    (sim, wal)
}

/// The batch numbers the log holds, in order.
fn batches(wal: &WalManager) -> Vec<usize> {
    let read = wal
        .read(&tp(), wal.log_start_offset(&tp()).unwrap(), u64::MAX)
        .unwrap();
    read.iter()
        .enumerate()
        .map(|(at, b)| {
            let i: usize = std::str::from_utf8(&b.payload[6..10]).unwrap().parse().unwrap();
            assert_eq!(b.base_offset, 2 * i as i64, "batch {i} at its offset");
            assert_eq!(i, at, "no hole before batch {i}");
            i
        })
        .collect()
}

fn recover(sim: &SimIo, journal: bool) -> WalManager {
    let wal = open(sim, journal);
    let refused = &wal.recovery_report().corrupt;
    assert!(refused.is_empty(), "refused {refused:?}");
    wal
}

#[test]
fn a_cut_keeps_what_is_below_and_the_next_append_takes_its_offset() {
    for journal in [false, true] {
        for cut in [0, 1, 5, 9, 10, 13, 20] {
            let (sim, wal) = filled(journal, 20);
            let p = wal.truncate_to(&tp(), 2 * cut as i64).unwrap();
            assert_eq!(p.high_watermark(), 2 * cut as i64);
            assert_eq!(
                batches(&wal),
                (0..cut).collect::<Vec<_>>(),
                "journal {journal}, cut {cut}"
            );
            let at = wal.append(&tp(), batch(cut)).unwrap();
            assert_eq!(at.base_offset, 2 * cut as i64);
            if cut % 2 == 1 {
                // A checkpoint after the cut vouches for the shorter files only.
                wal.checkpoint().unwrap();
            }
            // The worst power cut: only what is durable is there, and nothing cut comes back.
            let sim = sim.power_cut_durable_only();
            drop((p, wal));
            let wal = recover(&sim, journal);
            assert_eq!(
                batches(&wal),
                (0..=cut).collect::<Vec<_>>(),
                "journal {journal}, cut {cut}"
            );
        }
    }
}

#[test]
fn a_clean_restart_after_a_cut_recovers_the_cut_log() {
    let (sim, wal) = filled(false, 12);
    wal.truncate_to(&tp(), 8).unwrap();
    wal.close().unwrap();
    let wal = recover(&sim, false);
    assert_eq!(batches(&wal), vec![0, 1, 2, 3]);
    assert_eq!(wal.append(&tp(), batch(4)).unwrap().base_offset, 8);
}

#[test]
fn offsets_no_batch_starts_at_are_refused_and_change_nothing() {
    let (_sim, wal) = filled(false, 10);
    for (offset, invalid) in [(3, true), (19, true), (21, false), (22, false), (-1, false)] {
        let err = wal.truncate_to(&tp(), offset).unwrap_err();
        if invalid {
            assert!(matches!(err, Error::InvalidArgument(_)), "{offset}: {err:?}");
        } else {
            assert!(matches!(err, Error::OffsetOutOfRange { .. }), "{offset}: {err:?}");
        }
        assert_eq!(batches(&wal), (0..10).collect::<Vec<_>>());
    }
    assert_eq!(wal.append(&tp(), batch(10)).unwrap().base_offset, 20);
}

#[test]
fn a_power_cut_inside_a_cut_leaves_a_prefix_of_the_log_at_least_as_long_as_asked() {
    for journal in [false, true] {
        for cut in [0, 3, 7] {
            let mut ops = 0;
            loop {
                let (sim, wal) = filled(journal, 12);
                sim.crash_after(ops);
                let done = wal.truncate_to(&tp(), 2 * cut as i64).is_ok();
                let mut rng = chronik_wal::io::sim::SimRng::new(ops);
                let sim = sim.power_cut(&mut rng);
                drop(wal);
                let wal = recover(&sim, journal);
                let kept = batches(&wal);
                let case = format!("journal {journal}, cut {cut}, power cut after {ops} operations");
                assert!(kept.len() >= cut && kept.len() <= 12, "{case}: {kept:?}");
                if done {
                    assert_eq!(kept.len(), cut, "{case}: returned, so cut");
                    break;
                }
                // Whatever is left, the log goes on from its end.
                let end = kept.len();
                assert_eq!(
                    wal.append(&tp(), batch(end)).unwrap().base_offset,
                    2 * end as i64,
                    "{case}"
                );
                ops += 1;
                assert!(ops < 200, "{case}: never completed");
            }
        }
    }
}

/// Crash-simulation seed 29023: journal files are numbered from the ones listed at open, so once every
/// file was gone (replayed and deleted at an open whose next step, reusing the recycled file, was lost
/// to a power cut) numbering restarted at 1, and the recycled file, still holding the rounds it had as
/// file 1, became file 1 again: its old rounds were valid, and the next open wrote bytes of a cut log
/// back into the partition.
#[test]
fn a_recycled_journal_file_never_takes_its_old_number_again() {
    let (sim, wal) = filled(true, 6);
    // File 1's rounds hold the batches; the trim retires it as the recycled file.
    wal.trim_journal().unwrap();
    wal.truncate_to(&tp(), 0).unwrap();
    let sim = sim.power_cut_durable_only();
    drop(wal);
    // As the power cut in the seed left it: no numbered file, only the recycled one.
    let journal = Path::new(ROOT).join("journal");
    for entry in sim.list_dir(&journal).unwrap() {
        if entry.name.ends_with(".journal") {
            sim.remove_file(&journal.join(&entry.name)).unwrap();
        }
    }
    sim.sync_dir(&journal).unwrap();
    let wal = recover(&sim, true);
    assert_eq!(wal.high_watermark(&tp()).unwrap(), 0);
    wal.close().unwrap();
    let wal = recover(&sim, true);
    assert_eq!(
        wal.high_watermark(&tp()).unwrap(),
        0,
        "nothing of the cut log comes back"
    );
}

#[test]
fn a_handle_taken_before_a_cut_serves_nothing_past_it() {
    let (_sim, wal) = filled(false, 12);
    let old = wal.partition(&tp()).unwrap();
    let new = wal.truncate_to(&tp(), 10).unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    assert_eq!(old.high_watermark(), 10);
    let seen: Vec<i64> = old
        .read(0, u64::MAX)
        .map(|b| b.iter().map(|b| b.base_offset).collect())
        .unwrap_or_default();
    assert!(seen.iter().all(|&o| o < 10), "{seen:?}");
    assert!(old.append(batch(99)).is_err(), "the old handle takes no appends");
    assert_eq!(new.append(batch(5)).unwrap().base_offset, 10);
}
