//! A partition's term map (`terms.rs`): where each term (a replicated log's leader epoch) began.
//!
//! Must hold: a batch appended in a term is stamped with it where asked and its frame still passes its
//! CRC; a term never goes back; after any power cut, at any operation of appends, new terms and
//! truncations, the map agrees with the log: every batch's stamped term is the term of the last map
//! entry starting at or before it, and no entry starts at or past the log's end.
#![cfg(feature = "testkit")]
#![allow(clippy::unwrap_used)]

use std::{path::Path, sync::Arc};

use chronik_wal::{
    io::{sim::SimRng, SimIo, WalIo},
    AppendOptions, Batch, CheckpointConfig, Durability, Error, RotationConfig, TermStart, TopicPartition,
    WalConfig, WalManager,
};

const ROOT: &str = "/wal";
const TERM_AT: usize = 12;

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

/// Batch `i`: two records; bytes 0..8 and 12..16 are left for the offset and the term.
fn batch(i: usize) -> Batch {
    let mut payload = vec![0xEE; 20];
    payload.extend_from_slice(format!("batch {i:04} {}", "x".repeat(300)).as_bytes());
    Batch::new(payload, 2, 1_000 + i as i64)
}

fn in_term(term: i32, durability: Durability) -> AppendOptions {
    AppendOptions {
        durability,
        base_offset_at: Some(0),
        term: Some(term),
        term_at: Some(TERM_AT as u32),
        at_offset: None,
    }
}

/// Every batch of the log: (base offset, stamped term), checking the offset stamp on the way.
fn stamped(wal: &WalManager) -> Vec<(i64, i32)> {
    let p = wal.partition(&tp()).unwrap();
    p.read(p.log_start_offset(), u64::MAX)
        .unwrap()
        .iter()
        .map(|b| {
            let offset = i64::from_be_bytes(b.payload[..8].try_into().unwrap());
            assert_eq!(offset, b.base_offset);
            assert_eq!(b.payload[8..12], [0xEE; 4], "bytes around the stamps untouched");
            let term = i32::from_be_bytes(b.payload[TERM_AT..TERM_AT + 4].try_into().unwrap());
            (b.base_offset, term)
        })
        .collect()
}

/// The map agrees with the log (see the file doc).
fn check_agreement(wal: &WalManager, case: &str) {
    let p = wal.partition(&tp()).unwrap();
    let terms = p.terms();
    let entries = terms.entries();
    for e in entries {
        assert!(
            e.start_offset < p.high_watermark(),
            "{case}: {e:?} at or past the end"
        );
    }
    for (offset, term) in stamped(wal) {
        let floor = entries.iter().rev().find(|e| e.start_offset <= offset);
        assert_eq!(
            floor.map(|e| e.term),
            Some(term),
            "{case}: batch at {offset} of term {term}, map {entries:?}"
        );
    }
}

fn recover(sim: &SimIo, journal: bool) -> WalManager {
    let wal = open(sim, journal);
    let refused = &wal.recovery_report().corrupt;
    assert!(refused.is_empty(), "refused {refused:?}");
    wal
}

#[test]
fn batches_carry_their_term_and_the_map_survives_a_restart() {
    for journal in [false, true] {
        let sim = SimIo::new(3);
        sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
        let wal = open(&sim, journal);
        let p = wal.create_partition(&tp()).unwrap();
        assert_eq!(p.latest_term(), None);
        for (i, term) in [1, 1, 3, 3, 3, 4].into_iter().enumerate() {
            p.append_with_options(batch(i), in_term(term, Durability::Sync))
                .unwrap();
        }
        // A leader that takes office records its term even before any batch of it.
        p.begin_term(6).unwrap();
        let expected = [
            TermStart {
                term: 1,
                start_offset: 0,
            },
            TermStart {
                term: 3,
                start_offset: 4,
            },
            TermStart {
                term: 4,
                start_offset: 10,
            },
            TermStart {
                term: 6,
                start_offset: 12,
            },
        ];
        assert_eq!(p.terms().entries(), &expected);
        assert_eq!(p.term_end(3), Some((3, 10)));
        assert_eq!(p.term_end(5), Some((4, 12)));
        assert_eq!(p.term_end(6), Some((6, 12)));
        // A deposed leader's term is refused and leaves the log as it was.
        let err = p
            .append_with_options(batch(9), in_term(5, Durability::Sync))
            .unwrap_err();
        assert!(matches!(err, Error::TermBehind { term: 5, latest: 6 }), "{err:?}");
        assert!(matches!(p.begin_term(2), Err(Error::TermBehind { .. })));
        assert_eq!(p.high_watermark(), 12);
        // The frames pass their CRCs when recovery validates them all (no checkpoint), and term 6,
        // which got no batch, is gone with the restart: it starts at the log's end.
        drop(p);
        wal.close().unwrap();
        let wal = recover(&sim, journal);
        let p = wal.partition(&tp()).unwrap();
        assert_eq!(p.terms().entries(), &expected[..3], "journal {journal}");
        assert_eq!(
            stamped(&wal).iter().map(|s| s.1).collect::<Vec<_>>(),
            [1, 1, 3, 3, 3, 4]
        );
        check_agreement(&wal, "after restart");
    }
}

#[test]
fn an_append_that_must_land_at_an_offset_is_refused_elsewhere() {
    let sim = SimIo::new(4);
    sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
    let wal = open(&sim, false);
    let p = wal.create_partition(&tp()).unwrap();
    let at = |offset| AppendOptions {
        at_offset: Some(offset),
        ..AppendOptions::default()
    };
    p.append_with_options(batch(0), at(0)).unwrap();
    let err = p.append_with_options(batch(1), at(4)).unwrap_err();
    assert!(
        matches!(err, Error::OffsetMismatch { expected: 4, next: 2 }),
        "{err:?}"
    );
    assert_eq!(p.append_with_options(batch(1), at(2)).unwrap().base_offset, 2);
    // A term stamp needs its term, and room clear of the offset.
    let bad = AppendOptions {
        term_at: Some(12),
        ..AppendOptions::default()
    };
    assert!(matches!(
        p.append_with_options(batch(2), bad),
        Err(Error::InvalidArgument(_))
    ));
    let overlapping = AppendOptions {
        term_at: Some(4),
        ..in_term(1, Durability::Sync)
    };
    assert!(matches!(
        p.append_with_options(batch(2), overlapping),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(p.high_watermark(), 4);
}

#[test]
fn truncation_cuts_the_map_with_the_log() {
    let sim = SimIo::new(5);
    sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
    let wal = open(&sim, false);
    let p = wal.create_partition(&tp()).unwrap();
    for (i, term) in [1, 2, 2, 5, 5].into_iter().enumerate() {
        p.append_with_options(batch(i), in_term(term, Durability::Sync))
            .unwrap();
    }
    // A follower whose term-5 tail the new leader never had: cut at its start.
    let p = wal.truncate_to(&tp(), 6).unwrap();
    assert_eq!(p.latest_term(), Some(2));
    // The new leader's term 6 follows term 2 directly.
    p.append_with_options(batch(3), in_term(6, Durability::Sync))
        .unwrap();
    check_agreement(&wal, "after the cut");
    let sim = sim.power_cut_durable_only();
    drop((p, wal));
    let wal = recover(&sim, false);
    let entries: Vec<(i32, i64)> = wal
        .partition(&tp())
        .unwrap()
        .terms()
        .entries()
        .iter()
        .map(|e| (e.term, e.start_offset))
        .collect();
    assert_eq!(entries, [(1, 0), (2, 2), (6, 6)]);
    check_agreement(&wal, "after a power cut");
}

#[test]
fn retention_forgets_the_terms_below_the_log_start() {
    let sim = SimIo::new(6);
    sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
    let wal = open(&sim, false);
    let p = wal.create_partition(&tp()).unwrap();
    for i in 0..30 {
        p.append_with_options(batch(i), in_term(i as i32 / 4, Durability::Sync))
            .unwrap();
    }
    let out = p.delete_segments_below(30).unwrap();
    assert!(out.segments_deleted > 0);
    let first = p.terms().entries()[0];
    assert_eq!(first.start_offset, p.log_start_offset());
    check_agreement(&wal, "after retention");
    drop(p);
    wal.close().unwrap();
    let wal = recover(&sim, false);
    assert_eq!(wal.partition(&tp()).unwrap().terms().entries()[0], first);
}

/// One scripted history of a replica: terms begun, batches synced and not, a cut, more terms.
fn history(wal: &WalManager) -> chronik_wal::Result<()> {
    let p = wal.partition(&tp()).unwrap();
    for i in 0..3 {
        p.append_with_options(batch(i), in_term(1, Durability::Sync))?;
    }
    p.begin_term(2)?;
    p.append_with_options(batch(3), in_term(2, Durability::Sync))?;
    p.append_with_options(batch(4), in_term(3, Durability::Written))?;
    p.append_with_options(batch(5), in_term(3, Durability::Sync))?;
    let p = wal.truncate_to(&tp(), 8)?;
    p.append_with_options(batch(4), in_term(4, Durability::Written))?;
    p.append_with_options(batch(5), in_term(4, Durability::Sync))?;
    p.begin_term(7)?;
    Ok(())
}

#[test]
fn after_a_power_cut_at_any_operation_the_map_agrees_with_the_log() {
    for journal in [false, true] {
        let mut ops = 0;
        loop {
            let sim = SimIo::new(7);
            sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
            let wal = open(&sim, journal);
            wal.create_partition(&tp()).unwrap();
            sim.crash_after(ops);
            let done = history(&wal).is_ok();
            for seed in 0..3 {
                let sim = sim.power_cut(&mut SimRng::new(ops * 10 + seed));
                let wal = recover(&sim, journal);
                let case = format!("journal {journal}, power cut after {ops} operations, seed {seed}");
                check_agreement(&wal, &case);
                // The log goes on in its latest surviving term, past where a dropped term had begun:
                // the map recovery cut must be the one on disk, or the next restart brings it back.
                let p = wal.partition(&tp()).unwrap();
                let latest = p.latest_term().unwrap_or(0);
                for i in 0..3 {
                    p.append_with_options(batch(6 + i), in_term(latest, Durability::Sync))
                        .unwrap();
                }
                let sim = sim.power_cut_durable_only();
                drop((p, wal));
                let wal = recover(&sim, journal);
                check_agreement(&wal, &case);
                // A newer term may begin after whatever survived.
                let p = wal.partition(&tp()).unwrap();
                p.append_with_options(batch(9), in_term(8, Durability::Sync))
                    .unwrap();
                check_agreement(&wal, &case);
            }
            if done {
                break;
            }
            ops += 1;
            assert!(ops < 400, "journal {journal}: the history never completed");
        }
    }
}

/// A failed write of the batch that began a term leaves no entry for it: the term begins with the
/// next batch that is written (else the map would start it past the log's end, and an append in the
/// older term, as a replica copying its leader makes, would be refused).
#[test]
fn a_failed_append_leaves_no_term_behind() {
    let mut failed = 0;
    for ops in 0..16 {
        let sim = SimIo::new(9);
        sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
        let wal = open(&sim, false);
        let p = wal.create_partition(&tp()).unwrap();
        p.append_with_options(batch(0), in_term(1, Durability::Sync))
            .unwrap();
        sim.fail_once_after(ops);
        let r = p.append_with_options(batch(1), in_term(2, Durability::Sync));
        sim.disarm();
        let p = match r {
            Ok(_) => continue,
            Err(_) if p.is_poisoned() => wal.reopen_partition(&tp()).unwrap(),
            Err(_) => p,
        };
        failed += 1;
        assert_eq!(p.latest_term(), Some(1), "failure after {ops} operations");
        p.append_with_options(batch(2), in_term(1, Durability::Sync))
            .unwrap_or_else(|e| panic!("failure after {ops} operations: {e}"));
        check_agreement(&wal, &format!("failure after {ops} operations"));
    }
    assert!(failed > 3, "only {failed} of the appends failed");
}
