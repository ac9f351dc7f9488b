//! Focused regressions for WAL bugs the crash simulation (`wal_sim_test.rs`) found, each named after the
//! seed that found it and failing deterministically without its fix. Each builds the situation on
//! `SimIo`, cuts the power and checks that recovery neither refuses the partition nor loses an
//! acknowledged append.
#![allow(clippy::unwrap_used)]

mod sim_common;

use std::{io, path::Path, sync::Arc};

use chronik_wal::{
    frame::FRAME_HEADER_LEN,
    io::{
        sim::{SimFaults, SimIo},
        DirEntry, OpenMode, WalFile, WalIo,
    },
    segment::{segment_file_name, SEGMENT_HEADER_LEN},
    Batch, Durability, Error, RetentionPolicy, WalManager,
};
use sim_common::{fresh_wal, open_sim, tp, ROOT};

/// Opens the WAL on `sim` (recovering it after a power cut) and checks that no partition was refused.
fn recover_unrefused(sim: &SimIo, case: &str) -> WalManager {
    let wal = open_sim(sim);
    let refused = &wal.recovery_report().corrupt;
    assert!(refused.is_empty(), "{case}: refused {refused:?}");
    wal
}

/// Seed 0 of the simulation: `partitions/` was created on first open but the root was never synced, so
/// a power cut lost the directory and every acknowledged append in it.
#[test]
fn acknowledged_append_survives_a_power_cut_right_after_the_first_open() {
    let (sim, wal) = fresh_wal(0);
    let at = wal
        .append(&tp(0), Batch::new(&b"acknowledged"[..], 1, 7))
        .unwrap();
    let sim = sim.power_cut_durable_only();
    drop(wal);
    let wal = recover_unrefused(&sim, "");
    let got = wal.read(&tp(0), at.base_offset, 1 << 20).unwrap();
    assert_eq!(&got[0].payload[..], b"acknowledged");
}

/// Seed 15 of the simulation: a deleted partition's entry stayed in the checkpoint, so after a power cut
/// recovery judged the re-created partition by it ("segment ... is missing", or a durable length its
/// files never had) and refused it, acknowledged appends and all.
#[test]
fn recreated_partition_is_not_judged_by_the_deleted_ones_checkpoint() {
    for rotate in [true, false] {
        let (sim, wal) = fresh_wal(0);
        for _ in 0..20 {
            wal.append(&tp(0), Batch::new(vec![1u8; 500], 3, 7)).unwrap();
        }
        if rotate {
            wal.partition(&tp(0)).unwrap().rotate().unwrap();
        }
        wal.checkpoint().unwrap();
        wal.delete_partition(&tp(0)).unwrap();
        wal.create_partition(&tp(0)).unwrap();
        let at = wal.append(&tp(0), Batch::new(&b"new life"[..], 1, 8)).unwrap();
        let sim = sim.power_cut_durable_only();
        drop(wal);
        let wal = recover_unrefused(&sim, &format!("rotate {rotate}"));
        assert_eq!(wal.high_watermark(&tp(0)).unwrap(), 1);
        let got = wal.read(&tp(0), at.base_offset, 1 << 20).unwrap();
        assert_eq!(&got[0].payload[..], b"new life");
    }
}

/// Seed 1692 of the simulation: a write failed with ENOSPC after part of the frame reached the file; the
/// WAL truncated the part away but never synced the truncation, then sealed the segment (nothing seemed
/// unsynced). A power cut could bring the partial frame back inside a sealed segment, and recovery
/// refused the partition.
#[test]
fn rolled_back_partial_write_stays_rolled_back_after_sealing_and_a_power_cut() {
    for seed in 0..64 {
        let (sim, wal) = fresh_wal(seed);
        wal.append(&tp(0), Batch::new(vec![1u8; 300], 1, 7)).unwrap();
        sim.set_faults(SimFaults {
            write_enospc_per_mille: 1000,
            ..Default::default()
        });
        let failed = wal.append(&tp(0), Batch::new(vec![2u8; 3000], 1, 8));
        assert!(failed.unwrap_err().is_storage_full());
        sim.set_faults(SimFaults::default());
        wal.partition(&tp(0)).unwrap().rotate().unwrap();
        let at = wal.append(&tp(0), Batch::new(&b"after"[..], 1, 9)).unwrap();
        let sim = sim.crash(seed);
        drop(wal);
        let wal = recover_unrefused(&sim, &format!("seed {seed}"));
        let got = wal.read(&tp(0), 0, 1 << 20).unwrap();
        assert_eq!(got.len(), 2, "seed {seed}");
        assert_eq!(got[1].base_offset, at.base_offset);
        assert_eq!(&got[1].payload[..], b"after");
    }
}

/// Seed 4822 of the simulation (found after the fix above): a checkpoint failed at its final directory
/// sync, so the checkpoint file seen (without the deleted partition) was not the durable one (with it);
/// re-creating the partition trusted what it saw, and after a power cut recovery judged the new
/// partition by the old entry and refused it.
#[test]
fn recreated_partition_survives_a_checkpoint_that_failed_at_its_directory_sync() {
    let (sim, wal) = fresh_wal(0);
    for _ in 0..10 {
        wal.append(&tp(0), Batch::new(vec![1u8; 500], 3, 7)).unwrap();
    }
    wal.checkpoint().unwrap();
    wal.delete_partition(&tp(0)).unwrap();
    // With no partition, a checkpoint is one atomic write: create, write, sync, rename, sync directory.
    sim.fail_once_after(4);
    assert!(wal.checkpoint().is_err());
    wal.create_partition(&tp(0)).unwrap();
    wal.append(&tp(0), Batch::new(&b"new life"[..], 1, 8)).unwrap();
    let sim = sim.power_cut_durable_only();
    drop(wal);
    let wal = recover_unrefused(&sim, "");
    let got = wal.read(&tp(0), 0, 1 << 20).unwrap();
    assert_eq!(&got[0].payload[..], b"new life");
}

/// Seed 5508 of the simulation: a rotation whose new segment failed its directory sync removes the
/// segment again, but the removal is not durable either: a power cut may keep the creation and lose the
/// removal, leaving an empty segment whose base offset the log has since passed, and recovery refused
/// the partition (offset gap).
#[test]
fn failed_rotation_leaves_no_segment_behind_after_a_power_cut() {
    for seed in 0..64 {
        let (sim, wal) = fresh_wal(seed);
        wal.append(&tp(0), Batch::new(vec![1u8; 100], 1, 7)).unwrap();
        // Sealing writes the old segment's index (create, write, sync, rename, sync directory), then
        // creates the next segment the same way: fail that last directory sync.
        sim.fail_once_after(9);
        assert!(wal.partition(&tp(0)).unwrap().rotate().is_err(), "seed {seed}");
        let at = wal.append(&tp(0), Batch::new(&b"after"[..], 1, 8)).unwrap();
        let sim = sim.crash(seed);
        drop(wal);
        let wal = recover_unrefused(&sim, &format!("seed {seed}"));
        let got = wal.read(&tp(0), at.base_offset, 1 << 20).unwrap();
        assert_eq!(&got[0].payload[..], b"after", "seed {seed}");
    }
}

/// Seed 121434 of the simulation: as above, but what followed the failed rotation was only written, not
/// synced, and the power cut tore it: the old segment's valid frames end exactly at the empty segment's
/// base offset, followed by a torn frame, which recovery took for damage in a sealed segment.
#[test]
fn failed_rotation_then_a_torn_unsynced_append() {
    for seed in 0..64 {
        let (sim, wal) = fresh_wal(seed);
        wal.append(&tp(0), Batch::new(vec![1u8; 100], 1, 7)).unwrap();
        sim.fail_once_after(9);
        assert!(wal.partition(&tp(0)).unwrap().rotate().is_err(), "seed {seed}");
        let p = wal.partition(&tp(0)).unwrap();
        p.append_with(Batch::new(vec![2u8; 2000], 1, 8), Durability::Written)
            .unwrap();
        let sim = sim.crash(seed);
        drop(wal);
        let wal = recover_unrefused(&sim, &format!("seed {seed}"));
        let got = wal.read(&tp(0), 0, 1 << 20).unwrap();
        assert_eq!(&got[0].payload[..], &[1u8; 100][..], "seed {seed}");
        assert!(got.len() <= 2, "seed {seed}");
        let at = wal.append(&tp(0), Batch::new(&b"next"[..], 1, 9)).unwrap();
        assert_eq!(at.base_offset, got.len() as i64, "seed {seed}");
    }
}

/// `SimIo`, except that nothing can be renamed to a `.deleting` name: a failed partition creation then
/// cannot remove the directory it made.
#[derive(Debug)]
struct NoRemovalOfFailedCreations(SimIo);

impl WalIo for NoRemovalOfFailedCreations {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        self.0.open(path, mode)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.0.list_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.to_string_lossy().ends_with(".deleting") {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.0.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.0.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.0.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.0.exists(path)
    }
    fn name(&self) -> &'static str {
        "sim"
    }
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        self.0.lock_dir(path)
    }
}

/// Seed 1620 of the simulation: creating a partition failed at its directory sync, so its directory
/// was there but not durably; a restart without a power cut (the page cache kept it) recovered the
/// partition and acknowledged appends to it, and a later power cut took the directory and them away.
/// (A failed creation now removes its directory; here that removal fails too, as it may.)
#[test]
fn partition_found_by_recovery_is_durable_before_appends_are_acknowledged() {
    let sim = SimIo::new(0);
    sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
    let wal = WalManager::open_with_io(
        ROOT,
        sim_common::sim_config(),
        Arc::new(NoRemovalOfFailedCreations(sim.clone())),
    )
    .unwrap();
    // create_dir_all(staging), then the segment (create, write, sync, rename, sync staging), then the
    // rename to the partition's name and the sync of `partitions/`: fail that last one.
    sim.fail_once_after(7);
    assert!(wal.create_partition(&tp(0)).is_err());
    drop(wal);
    let wal = open_sim(&sim);
    let at = wal
        .append(&tp(0), Batch::new(&b"acknowledged"[..], 1, 7))
        .unwrap();
    let sim = sim.power_cut_durable_only();
    drop(wal);
    let wal = open_sim(&sim);
    let got = wal.read(&tp(0), at.base_offset, 1 << 20).unwrap();
    assert_eq!(&got[0].payload[..], b"acknowledged");
}

/// Found by the long crash-simulation run (seed 827): a retention pass unlinked the oldest segment, then
/// failed to sync the directory, so it kept the segment listed (a crash could bring it back). The next
/// pass tried to unlink the file again, failed on NotFound, and retention was stuck for that partition
/// while its log start stayed wrong after a reopen.
#[test]
fn retention_finishes_a_removal_whose_directory_sync_failed() {
    let (sim, wal) = fresh_wal(0);
    let p = wal.partition(&tp(0)).unwrap();
    for _ in 0..3 {
        p.append(Batch::new(vec![1u8; 300], 1, 7)).unwrap();
        p.rotate().unwrap();
    }
    let policy = RetentionPolicy::from_kafka(-1, 0);
    // Unlink the segment, unlink its index, then fail the directory sync.
    sim.fail_once_after(2);
    assert!(p.apply_retention(&policy, 0).is_err());
    assert_eq!(p.log_start_offset(), 0, "the failed removal is not taken as done");
    let outcome = p.apply_retention(&policy, 0).unwrap();
    assert_eq!(outcome.segments_deleted, 3);
    assert_eq!(p.log_start_offset(), 3);
    assert_eq!(p.segment_infos().len(), 1);
    drop(p);
    let sim = sim.power_cut_durable_only();
    drop(wal);
    let wal = open_sim(&sim);
    assert_eq!(wal.partition(&tp(0)).unwrap().log_start_offset(), 3);
}

/// Found by the long crash-simulation run (seed 9758): after a retention pass failed at its directory
/// sync, reopening the partition adopted the directory as the page cache showed it (segment gone, log
/// start moved on) without making that durable; a later power cut brought the segment back and the log
/// start went backwards past what the reopened partition had reported.
#[test]
fn a_reopen_makes_the_directory_it_adopts_durable() {
    let (sim, wal) = fresh_wal(0);
    let p = wal.partition(&tp(0)).unwrap();
    for _ in 0..3 {
        p.append(Batch::new(vec![1u8; 300], 1, 7)).unwrap();
        p.rotate().unwrap();
    }
    sim.fail_once_after(2);
    assert!(p.apply_retention(&RetentionPolicy::from_kafka(-1, 0), 0).is_err());
    drop(p);
    let start = wal.reopen_partition(&tp(0)).unwrap().log_start_offset();
    assert_eq!(
        start, 1,
        "the reopened partition starts after the unlinked segment"
    );
    let sim = sim.power_cut_durable_only();
    drop(wal);
    let wal = open_sim(&sim);
    assert_eq!(wal.partition(&tp(0)).unwrap().log_start_offset(), start);
}

/// A reopen that failed at an fdatasync of the partition's segment (recovery syncs what it keeps) leaves
/// what was written but never synced in doubt: the failed sync may have dropped those pages while reads
/// still see them. The next reopen cuts them, as after a failed append's fdatasync (found by the long
/// crash simulation, seed 13472, once failed syncs could drop writes; seed 6479 had asked for the
/// opposite when a failed sync kept them).
#[test]
fn a_reopen_after_one_whose_sync_failed_cuts_what_was_never_synced() {
    let (sim, wal) = fresh_wal(0);
    let p = wal.partition(&tp(0)).unwrap();
    let synced = p.append(Batch::new(&b"synced"[..], 1, 6)).unwrap();
    let written = p
        .append_with(Batch::new(&b"written"[..], 1, 7), Durability::Written)
        .unwrap();
    // Recovery syncs the directory, then what it keeps: fail that second sync.
    sim.fail_once_after(1);
    assert!(wal.reopen_partition(&tp(0)).is_err());
    let p = wal.reopen_partition(&tp(0)).unwrap();
    assert_eq!(
        p.high_watermark(),
        written.base_offset,
        "the unsynced batch is cut"
    );
    let got = p.read(synced.base_offset, 1 << 20).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"synced");
}

/// Seed 85798 of the simulation: as above, but the WAL was closed and opened again instead of reopening
/// the partition. The failed fdatasync had dropped the unsynced batch; the restart found it in the page
/// cache, its recovery's fdatasync succeeded (the error is reported once) and called it durable, and an
/// append acknowledged after it landed behind a hole on disk. The failed reopen now cuts it at once.
#[test]
fn a_restart_after_a_failed_reopen_does_not_bring_back_what_was_never_synced() {
    let (sim, wal) = fresh_wal(0);
    let p = wal.partition(&tp(0)).unwrap();
    p.append(Batch::new(&b"synced"[..], 1, 6)).unwrap();
    let written = p
        .append_with(Batch::new(&b"written"[..], 1, 7), Durability::Written)
        .unwrap();
    // Recovery syncs the directory, then what it keeps: fail that second sync, dropping the write.
    sim.fail_once_after_dropping_writes(1);
    assert!(wal.reopen_partition(&tp(0)).is_err());
    wal.close().unwrap();
    let wal = open_sim(&sim);
    assert_eq!(
        wal.high_watermark(&tp(0)).unwrap(),
        written.base_offset,
        "the batch never synced is cut"
    );
    let after = wal.append(&tp(0), Batch::new(&b"after"[..], 1, 8)).unwrap();
    let sim = sim.power_cut_durable_only();
    drop(wal);
    let wal = recover_unrefused(&sim, "");
    let got = wal.read(&tp(0), after.base_offset, 1 << 20).unwrap();
    assert_eq!(&got[0].payload[..], b"after");
}

/// Found in review: the handle a failed reopen leaves behind counted as deleted, so the next checkpoint
/// dropped the partition's entry, and the following recovery, with nothing vouched for, cut damage to the
/// last acknowledged frame as a torn tail instead of refusing it.
#[test]
fn a_failed_reopen_keeps_the_partitions_checkpoint_entry() {
    let (sim, wal) = fresh_wal(0);
    for i in 0..3 {
        wal.append(&tp(0), Batch::new(vec![i; 100], 1, 7)).unwrap();
    }
    wal.checkpoint().unwrap();
    sim.fail_once_after(1);
    assert!(wal.reopen_partition(&tp(0)).is_err());
    // Its final checkpoint is written without the partition's entry if the claim is lost.
    wal.close().unwrap();
    let segment = Path::new(ROOT)
        .join("partitions")
        .join(tp(0).dir_name())
        .join(segment_file_name(0));
    let last_payload = SEGMENT_HEADER_LEN + 2 * (FRAME_HEADER_LEN + 100) + FRAME_HEADER_LEN;
    let file = sim.open(&segment, OpenMode::ReadWrite).unwrap();
    file.write_all_at(&[0xEE], last_payload as u64 + 50).unwrap();
    file.sync_data().unwrap();
    let wal = open_sim(&sim);
    assert_eq!(
        wal.recovery_report().stats.truncated_bytes,
        0,
        "nothing acknowledged is cut"
    );
    assert_eq!(wal.high_watermark(&tp(0)).unwrap(), 3);
    // Recovery trusted what the checkpoint vouches for; the read finds the damage and says so.
    let err = wal.read(&tp(0), 2, 1 << 20).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

/// Seed 412391 of the simulation: sealing a preallocated segment cuts its zeros off, and the fdatasync
/// after the cut failed, dropping the length change. The poisoned partition's cut back to the durable
/// length was skipped because the length shown was already that length; the disk kept the zeros, and
/// after a power cut recovery refused the sealed segment with zeros after its last frame.
#[test]
fn a_seal_whose_sync_dropped_the_cut_of_prepared_zeros_is_cut_again() {
    for fail_at in 0..8 {
        let sim = SimIo::new(fail_at);
        sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
        let config = chronik_wal::WalConfig {
            preallocate_bytes: 4096,
            preallocate_manually: true,
            ..sim_common::sim_config()
        };
        let wal = WalManager::open_with_io(ROOT, config, Arc::new(sim.clone())).unwrap();
        wal.create_partition(&tp(0)).unwrap();
        let p = wal.partition(&tp(0)).unwrap();
        let first = p.append(Batch::new(vec![1u8; 300], 1, 7)).unwrap();
        wal.run_preallocation(16);
        sim.fail_once_after_dropping_writes(fail_at);
        if p.rotate().is_err() {
            wal.reopen_partition(&tp(0)).unwrap();
        }
        let p = wal.partition(&tp(0)).unwrap();
        p.rotate().unwrap();
        let last = p.append(Batch::new(vec![2u8; 300], 1, 8)).unwrap();
        let sim = sim.power_cut_durable_only();
        drop((p, wal));
        let wal = recover_unrefused(&sim, &format!("failure at operation {fail_at}"));
        for at in [first, last] {
            let got = wal.read(&tp(0), at.base_offset, 1 << 20).unwrap();
            assert_eq!(got[0].base_offset, at.base_offset, "failure at {fail_at}");
        }
    }
}
