//! I/O failures injected under the WAL through its I/O trait (real files underneath).
//!
//! Must hold: a failed fdatasync poisons the partition (the failing append and every later one get
//! `Error::Poisoned`, nothing is retried as if durable) until it is reopened from disk, after which all
//! acknowledged data is there and appends resume; a full disk (ENOSPC, even after a partial write) fails the
//! append with a storage-full error, leaves no partial frame, keeps earlier data, and appends succeed again
//! with dense offsets once space is back. A failed fdatasync by the preallocation thread poisons the
//! partition too, and a group whose own fdatasync succeeded after it is not acknowledged (the failure may
//! have taken the error meant for the group's pages). Other partitions are unaffected throughout. The faults wrap the
//! backend the suite runs over (`CHRONIK_TEST_IO_BACKEND`); with none armed, I/O goes straight through it.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use chronik_wal::{
    frame::FRAME_HEADER_LEN,
    io::fault::{FaultPlan, FaultyIo, WriteFault},
    segment::SEGMENT_HEADER_LEN,
    Batch, CheckpointConfig, Error, Healed, TopicPartition, WalConfig, WalManager,
};

#[derive(Debug, Default)]
struct Faults {
    fail_sync: AtomicBool,
    disk_full: AtomicBool,
    interrupts: AtomicU32,
}

impl FaultPlan for Faults {
    fn on_write(&self, _path: &Path, _len: usize) -> Option<WriteFault> {
        if self.interrupts.load(Ordering::SeqCst) > 0 {
            self.interrupts.fetch_sub(1, Ordering::SeqCst);
            return Some(WriteFault::Fail(io::Error::from(io::ErrorKind::Interrupted)));
        }
        // Part of the buffer lands before the disk fills up.
        self.disk_full
            .load(Ordering::SeqCst)
            .then(|| WriteFault::Partial(io::Error::from_raw_os_error(28)))
    }
    fn on_sync(&self, _path: &Path) -> Option<io::Error> {
        self.fail_sync
            .load(Ordering::SeqCst)
            .then(|| io::Error::from_raw_os_error(5))
    }
    fn armed(&self) -> bool {
        self.fail_sync.load(Ordering::SeqCst)
            || self.disk_full.load(Ordering::SeqCst)
            || self.interrupts.load(Ordering::SeqCst) > 0
    }
}

fn open(dir: &Path) -> (WalManager, Arc<Faults>) {
    // Faults are injected into every write, so no background writes of zeros (and file sizes are exact).
    open_preallocating(dir, 0)
}

fn open_preallocating(dir: &Path, preallocate_bytes: u64) -> (WalManager, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    (open_with_plan(dir, faults.clone(), preallocate_bytes), faults)
}

/// A WAL over the selected backend with `plan`'s faults, no background checkpoints.
fn open_with_plan(dir: &Path, plan: Arc<dyn FaultPlan>, preallocate_bytes: u64) -> WalManager {
    let io = Arc::new(FaultyIo::new(common::test_io(), plan));
    let config = WalConfig {
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        preallocate_bytes,
        ..Default::default()
    };
    WalManager::open_with_io(dir, config, io).unwrap()
}

fn batch(i: u8) -> Batch {
    Batch::new(vec![i; 300], 1, i64::from(i))
}

#[test]
fn failed_fsync_poisons_the_partition_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, faults) = open(dir.path());
    let tp = TopicPartition::new("p", 0);
    let other = TopicPartition::new("q", 0);
    let p = wal.create_partition(&tp).unwrap();
    wal.create_partition(&other).unwrap();
    for i in 0..5 {
        p.append(batch(i)).unwrap();
    }
    faults.fail_sync.store(true, Ordering::SeqCst);
    assert!(
        matches!(p.append(batch(5)), Err(Error::Poisoned { .. })),
        "the failing append is not acknowledged"
    );
    faults.fail_sync.store(false, Ordering::SeqCst);
    // The disk works again, but a failed fsync is never retried as if nothing happened.
    assert!(matches!(p.append(batch(6)), Err(Error::Poisoned { .. })));
    assert!(matches!(p.sync(), Err(Error::Poisoned { .. })));
    assert!(p.is_closed());
    assert_eq!(p.high_watermark(), 5, "the unsynced batch was never made visible");
    wal.append(&other, batch(9)).unwrap();

    let p = wal.reopen_partition(&tp).unwrap();
    let hw = p.high_watermark();
    assert_eq!(
        hw, 5,
        "acknowledged data kept; the batch whose fdatasync failed is cut, not served from the page cache"
    );
    let all = p.read(0, u64::MAX).unwrap();
    for (i, b) in all.iter().enumerate().take(5) {
        assert_eq!(b.payload, batch(i as u8).payload);
    }
    let at = p.append(batch(7)).unwrap();
    assert_eq!(at.base_offset, hw, "appends resume densely after reopening");
}

#[test]
fn heal_reopens_a_failed_partition_once_for_every_holder_of_its_handle() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, faults) = open(dir.path());
    let tp = TopicPartition::new("p", 0);
    let p = wal.create_partition(&tp).unwrap();
    p.append(batch(0)).unwrap();
    let mut prepared = 0;
    let (healed, _) = wal.heal_with(&p, || prepared += 1).unwrap();
    assert!(matches!(healed, Healed::Healthy(h) if Arc::ptr_eq(&h, &p)));
    assert_eq!(prepared, 0, "nothing to prepare for: no reopen");

    faults.fail_sync.store(true, Ordering::SeqCst);
    assert!(p.append(batch(1)).is_err());
    faults.fail_sync.store(false, Ordering::SeqCst);
    let (healed, token) = wal.heal_with(&p, || 7).unwrap();
    let Healed::Reopened(new) = healed else {
        panic!("the first holder of the poisoned handle reopens it: {healed:?}");
    };
    assert_eq!(
        token,
        Some(7),
        "what was prepared before the reopen comes back with it"
    );
    assert_eq!(new.high_watermark(), 1, "the batch whose fdatasync failed is cut");
    // Another holder of the old handle gets the new one; no second reopen.
    let (again, token) = wal.heal_with(&p, || 8).unwrap();
    assert!(
        matches!(&again, Healed::Replaced(h) if Arc::ptr_eq(h, &new)),
        "{again:?}"
    );
    assert_eq!(token, None);
    assert_eq!(new.append(batch(2)).unwrap().base_offset, 1);

    wal.delete_partition(&tp).unwrap();
    assert!(wal.heal(&new).is_err(), "a deleted partition is not brought back");
}

#[test]
fn a_restart_after_a_failed_fsync_does_not_bring_back_the_failed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 0);
    {
        let (wal, faults) = open(dir.path());
        let p = wal.create_partition(&tp).unwrap();
        for i in 0..5 {
            p.append(batch(i)).unwrap();
        }
        faults.fail_sync.store(true, Ordering::SeqCst);
        assert!(matches!(p.append(batch(5)), Err(Error::Poisoned { .. })));
        faults.fail_sync.store(false, Ordering::SeqCst);
        // A clean close (a kill -9 leaves the same files): no reopen_partition ran to cut anything.
        wal.close().unwrap();
    }
    // The failed batch's bytes reached the page cache; had they stayed, recovery would adopt them, and a
    // power cut could later open a hole under acknowledged appends made after it.
    let (wal, _) = open(dir.path());
    assert_eq!(
        wal.recovery_report().stats.truncated_bytes,
        0,
        "nothing left to cut"
    );
    let all = wal.read(&tp, 0, u64::MAX).unwrap();
    let payloads: Vec<_> = all.iter().map(|b| b.payload.clone()).collect();
    assert_eq!(payloads, (0..5).map(|i| batch(i).payload).collect::<Vec<_>>());
    assert_eq!(wal.append(&tp, batch(6)).unwrap().base_offset, 5);
}

#[test]
fn disk_full_fails_the_append_cleanly_and_service_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, faults) = open(dir.path());
    let tp = TopicPartition::new("full", 0);
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..3 {
        p.append(batch(i)).unwrap();
    }
    let segment = dir
        .path()
        .join("partitions")
        .join(tp.dir_name())
        .join(format!("{:020}.wal", 0));
    let size_before = std::fs::metadata(&segment).unwrap().len();

    faults.disk_full.store(true, Ordering::SeqCst);
    let err = p.append(batch(3)).unwrap_err();
    assert!(err.is_storage_full(), "typed storage-full error: {err}");
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        size_before,
        "no partial frame left behind"
    );
    assert!(p.append(batch(3)).unwrap_err().is_storage_full(), "still full");

    faults.disk_full.store(false, Ordering::SeqCst);
    assert_eq!(
        p.append(batch(4)).unwrap().base_offset,
        3,
        "offsets stay dense after failed appends"
    );
    let all = p.read(0, u64::MAX).unwrap();
    let payloads: Vec<u8> = all.iter().map(|b| b.payload[0]).collect();
    assert_eq!(payloads, vec![0, 1, 2, 4]);
    drop(p);
    wal.close().unwrap();
    let (wal, _) = open(dir.path());
    assert_eq!(wal.recovery_report().stats.truncated_bytes, 0);
    assert_eq!(wal.read(&tp, 0, u64::MAX).unwrap(), all);
}

#[test]
fn disk_full_where_zeros_cannot_be_written_either_cuts_the_file_instead_of_poisoning() {
    const PREALLOC: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let (wal, faults) = open_preallocating(dir.path(), PREALLOC);
    let tp = TopicPartition::new("full-prepared", 0);
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..3 {
        p.append(batch(i)).unwrap();
    }
    assert!(p.wait_prepared(PREALLOC, std::time::Duration::from_secs(30)));
    let data_end = (SEGMENT_HEADER_LEN + 3 * (FRAME_HEADER_LEN + 300)) as u64;
    let segment = dir
        .path()
        .join("partitions")
        .join(tp.dir_name())
        .join(format!("{:020}.wal", 0));
    assert!(
        std::fs::metadata(&segment).unwrap().len() > data_end,
        "space prepared ahead"
    );

    // Every write fails, the rollback's zeros too (as where prepared space is a hole on a full disk).
    faults.disk_full.store(true, Ordering::SeqCst);
    let err = p.append(batch(3)).unwrap_err();
    assert!(err.is_storage_full(), "typed storage-full error: {err}");
    assert!(
        !p.is_poisoned() && !p.is_closed(),
        "a full disk is not a failed fdatasync"
    );
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        data_end,
        "the partial frame is cut off with the prepared space after it"
    );

    faults.disk_full.store(false, Ordering::SeqCst);
    assert_eq!(
        p.append(batch(4)).unwrap().base_offset,
        3,
        "service resumes densely"
    );
    drop(p);
    wal.close().unwrap();
    let (wal, _) = open(dir.path());
    let payloads: Vec<u8> = wal
        .read(&tp, 0, u64::MAX)
        .unwrap()
        .iter()
        .map(|b| b.payload[0])
        .collect();
    assert_eq!(payloads, vec![0, 1, 2, 4]);
}

#[test]
fn interrupted_writes_are_retried_transparently() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, faults) = open(dir.path());
    let tp = TopicPartition::new("eintr", 0);
    let p = wal.create_partition(&tp).unwrap();
    faults.interrupts.store(3, Ordering::SeqCst);
    assert_eq!(p.append(batch(1)).unwrap().base_offset, 0);
    assert_eq!(
        faults.interrupts.load(Ordering::SeqCst),
        0,
        "the three EINTRs were consumed by retries"
    );
    faults.interrupts.store(50, Ordering::SeqCst);
    let err = p.append(batch(2)).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::Interrupted),
        "{err}"
    );
    faults.interrupts.store(0, Ordering::SeqCst);
    assert_eq!(
        p.append(batch(3)).unwrap().base_offset,
        1,
        "bounded retries, then a clean failure"
    );
}

/// The WAL's preallocation thread (see `WalManager::open`).
const PREPARER_THREAD: &str = "chronik-wal-prealloc";

fn on_preparer() -> bool {
    std::thread::current().name() == Some(PREPARER_THREAD)
}

fn is_segment(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wal")
}

/// Fails the preparer's fdatasync of a segment, and holds every other write to a segment until it has:
/// the log's own fdatasync then runs after the failed one and succeeds, as it may on Linux, where a
/// writeback error is reported once per open file.
#[derive(Debug, Default)]
struct PreparerSyncFails {
    armed: AtomicBool,
    failed: Mutex<bool>,
    failed_cv: Condvar,
}

impl FaultPlan for PreparerSyncFails {
    fn on_write(&self, path: &Path, _len: usize) -> Option<WriteFault> {
        if self.armed.load(Ordering::SeqCst) && !on_preparer() && is_segment(path) {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut failed = self.failed.lock().unwrap();
            while !*failed && Instant::now() < deadline {
                failed = self
                    .failed_cv
                    .wait_timeout(failed, deadline - Instant::now())
                    .unwrap()
                    .0;
            }
        }
        None
    }
    fn on_sync(&self, path: &Path) -> Option<io::Error> {
        if !(self.armed.load(Ordering::SeqCst) && on_preparer() && is_segment(path)) {
            return None;
        }
        *self.failed.lock().unwrap() = true;
        self.failed_cv.notify_all();
        Some(io::Error::from_raw_os_error(5))
    }
    fn armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }
}

#[test]
fn a_failed_fdatasync_in_the_preparer_fails_the_group_synced_after_it() {
    const PREALLOC: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(PreparerSyncFails::default());
    let wal = open_with_plan(dir.path(), faults.clone(), PREALLOC);
    let tp = TopicPartition::new("prep", 0);
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..3 {
        p.append(batch(i)).unwrap();
    }
    assert!(
        p.wait_prepared(PREALLOC, Duration::from_secs(30)),
        "the first space is prepared"
    );

    // A group past half of the prepared space asks the preparer for more; the preparer's fdatasync fails
    // while the group's write is held, then the group's own fdatasync succeeds.
    faults.armed.store(true, Ordering::SeqCst);
    let big = Batch::new(vec![7; 40 << 10], 1, 3);
    let err = p.append(big).unwrap_err();
    assert!(
        *faults.failed.lock().unwrap(),
        "the preparer's fdatasync ran and failed"
    );
    assert!(
        matches!(err, Error::Poisoned { .. }),
        "not acknowledged after the preparer's failed fdatasync: {err}"
    );
    assert!(p.is_closed());
    assert!(matches!(p.append(batch(4)), Err(Error::Poisoned { .. })));
    assert_eq!(p.high_watermark(), 3);

    faults.armed.store(false, Ordering::SeqCst);
    let p = wal.reopen_partition(&tp).unwrap();
    assert_eq!(p.high_watermark(), 3, "acknowledged data kept, nothing more");
    let all = p.read(0, u64::MAX).unwrap();
    let payloads: Vec<_> = all.iter().map(|b| b.payload.clone()).collect();
    assert_eq!(payloads, (0..3).map(|i| batch(i).payload).collect::<Vec<_>>());
    assert_eq!(
        p.append(batch(5)).unwrap().base_offset,
        3,
        "appends resume densely"
    );
}

/// Holds the preparer's fdatasync of a segment until another thread's fdatasync has started, then fails
/// it, and holds that other fdatasync until then: the preparer's failure lands while a sync of the log
/// is in flight.
#[derive(Debug, Default)]
struct PreparerFailsDuringSync {
    armed: AtomicBool,
    /// (the log's sync started, the preparer's sync failed)
    steps: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl PreparerFailsDuringSync {
    fn wait_for(&self, done: impl Fn(&(bool, bool)) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut steps = self.steps.lock().unwrap();
        while !done(&steps) && Instant::now() < deadline {
            steps = self
                .changed
                .wait_timeout(steps, deadline - Instant::now())
                .unwrap()
                .0;
        }
    }

    fn set(&self, f: impl Fn(&mut (bool, bool))) {
        f(&mut self.steps.lock().unwrap());
        self.changed.notify_all();
    }
}

impl FaultPlan for PreparerFailsDuringSync {
    fn on_sync(&self, path: &Path) -> Option<io::Error> {
        if !self.armed.load(Ordering::SeqCst) || !is_segment(path) {
            return None;
        }
        if on_preparer() {
            self.wait_for(|s| s.0);
            self.set(|s| s.1 = true);
            Some(io::Error::from_raw_os_error(5))
        } else {
            self.set(|s| s.0 = true);
            self.wait_for(|s| s.1);
            None
        }
    }
    fn armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }
}

#[test]
fn a_preparer_failure_during_an_explicit_sync_cuts_the_unsynced_bytes() {
    const PREALLOC: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("written", 0);
    {
        let faults = Arc::new(PreparerFailsDuringSync::default());
        let wal = open_with_plan(dir.path(), faults.clone(), PREALLOC);
        let p = wal.create_partition(&tp).unwrap();
        for i in 0..3 {
            p.append(batch(i)).unwrap();
        }
        assert!(p.wait_prepared(PREALLOC, Duration::from_secs(30)));

        faults.armed.store(true, Ordering::SeqCst);
        // Written, not synced; large enough to send the preparer to work.
        let big = Batch::new(vec![7; 40 << 10], 1, 3);
        p.append_with(big, chronik_wal::Durability::Written).unwrap();
        let err = p.sync().unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
        assert!(faults.steps.lock().unwrap().1, "the preparer's fdatasync failed");
        faults.armed.store(false, Ordering::SeqCst);
        // A restart without any reopen of the partition (a kill -9 leaves the same files).
        wal.close().unwrap();
    }
    let (wal, _) = open(dir.path());
    let firsts: Vec<u8> = wal
        .read(&tp, 0, u64::MAX)
        .unwrap()
        .iter()
        .map(|b| b.payload[0])
        .collect();
    assert_eq!(
        firsts,
        vec![0, 1, 2],
        "the batch never synced is not recovered from the page cache"
    );
}
