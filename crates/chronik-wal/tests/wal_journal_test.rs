//! The shared journal (`WalConfig::journal`) on the simulated disk.
//!
//! Must hold: an append acknowledged through the journal survives the worst power cut (nothing unsynced
//! kept) although its segment was never fdatasynced; one journal round serves the groups of many
//! partitions; a trim makes the segments durable and deletes the journal; a partition created under a
//! deleted one's name never gets the deleted one's records back; a failed journal round is never replayed
//! over what was written after it.
#![cfg(feature = "testkit")]
#![allow(clippy::unwrap_used)]

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use chronik_wal::{
    io::{SimIo, WalIo},
    AppendOptions, Batch, CheckpointConfig, Durability, Error, TopicPartition, WalConfig, WalManager,
};

const ROOT: &str = "/wal";

fn config() -> WalConfig {
    WalConfig {
        journal: true,
        journal_file_bytes: 8192,
        // Every round through the journal, however few groups it carries: these tests are about it.
        journal_min_groups: 1,
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        recovery_threads: 1,
        ..Default::default()
    }
}

/// The WAL in the deterministic mode: no journal thread, waiters lead the rounds.
fn open(sim: &SimIo) -> WalManager {
    let io: Arc<dyn WalIo> = Arc::new(sim.clone());
    let config = WalConfig {
        preallocate_manually: true,
        ..config()
    };
    WalManager::open_with_io(ROOT, config, io).unwrap()
}

fn new_sim() -> SimIo {
    let sim = SimIo::new(7);
    sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
    sim
}

fn batch(text: &str) -> Batch {
    Batch::new(Bytes::copy_from_slice(text.as_bytes()), 1, 1_700_000_000_000)
}

fn payloads(wal: &WalManager, tp: &TopicPartition) -> Vec<String> {
    wal.read(tp, wal.log_start_offset(tp).unwrap(), u64::MAX)
        .unwrap()
        .iter()
        .map(|b| String::from_utf8(b.payload.to_vec()).unwrap())
        .collect()
}

/// The worst power cut (nothing unsynced survives), then the WAL opened again on what is left.
fn reopen_after_the_worst_power_cut(sim: &SimIo, wal: WalManager) -> WalManager {
    let after = sim.power_cut_durable_only();
    drop(wal);
    open(&after)
}

fn journal_files(sim: &SimIo) -> usize {
    let all = sim.list_dir(&Path::new(ROOT).join("journal")).unwrap();
    all.iter().filter(|e| e.name.ends_with(".journal")).count()
}

fn recycled_file(sim: &SimIo) -> bool {
    let all = sim.list_dir(&Path::new(ROOT).join("journal")).unwrap();
    all.iter().any(|e| e.name == "recycled.journal.tmp")
}

#[test]
fn acknowledged_appends_survive_the_worst_power_cut_through_the_journal_alone() {
    let sim = new_sim();
    let wal = open(&sim);
    let tps: Vec<TopicPartition> = (0..8).map(|p| TopicPartition::new("t", p)).collect();
    for tp in &tps {
        wal.create_partition(tp).unwrap();
    }
    // Queued on every partition first, then waited on: one round can carry all eight groups.
    for round in 0..3 {
        let tickets: Vec<_> = tps
            .iter()
            .map(|tp| {
                let p = wal.partition(tp).unwrap();
                let options = AppendOptions {
                    durability: Durability::Sync,
                    ..Default::default()
                };
                p.submit(batch(&format!("{tp} #{round}")), options).unwrap()
            })
            .collect();
        for t in tickets {
            t.wait().unwrap();
        }
    }
    for tp in &tps {
        let p = wal.partition(tp).unwrap();
        assert_eq!(p.synced_offset(), 3, "{tp}: acknowledged as durable");
    }
    // Nothing unsynced survives: what the segments hold now is only what an fdatasync of them covered.
    let after = sim.power_cut_durable_only();
    drop(wal);
    let wal = open(&after);
    for tp in &tps {
        let want: Vec<String> = (0..3).map(|r| format!("{tp} #{r}")).collect();
        assert_eq!(payloads(&wal, tp), want, "{tp}");
    }
    // The replay went into the segments: the journal it came from is gone.
    assert_eq!(journal_files(&after), 1, "only the new, empty journal file");
}

#[test]
fn a_trim_syncs_the_segments_and_deletes_the_journal_before_it() {
    let sim = new_sim();
    let wal = open(&sim);
    let tp = TopicPartition::new("t", 0);
    wal.create_partition(&tp).unwrap();
    wal.append(&tp, batch("one")).unwrap();
    wal.append(&tp, batch("two")).unwrap();
    assert_eq!(wal.trim_journal().unwrap(), 1, "the first file is deleted");
    assert_eq!(journal_files(&sim), 1);
    assert!(recycled_file(&sim), "kept to be the next file");
    // Nothing left to trim.
    assert_eq!(wal.trim_journal().unwrap(), 0);
    // With the journal gone, only the segment's own fdatasync can have kept the records.
    let wal = reopen_after_the_worst_power_cut(&sim, wal);
    assert_eq!(payloads(&wal, &tp), ["one", "two"]);
}

#[test]
fn a_partition_created_under_a_deleted_ones_name_never_gets_its_records() {
    let sim = new_sim();
    let wal = open(&sim);
    let tp = TopicPartition::new("t", 0);
    wal.create_partition(&tp).unwrap();
    for text in ["old-a", "old-b", "old-c"] {
        wal.append(&tp, batch(text)).unwrap();
    }
    wal.delete_partition(&tp).unwrap();
    wal.create_partition(&tp).unwrap();
    wal.append(&tp, batch("new")).unwrap();
    let wal = reopen_after_the_worst_power_cut(&sim, wal);
    assert_eq!(payloads(&wal, &tp), ["new"]);
}

#[test]
fn a_clean_close_leaves_an_empty_journal() {
    let sim = new_sim();
    let wal = open(&sim);
    let tp = TopicPartition::new("t", 0);
    wal.create_partition(&tp).unwrap();
    wal.append(&tp, batch("kept")).unwrap();
    wal.close().unwrap();
    assert_eq!(
        journal_files(&sim),
        1,
        "only the file written last, trimmed of all it held"
    );
    let after = sim.power_cut_durable_only();
    let wal = open(&after);
    assert_eq!(payloads(&wal, &tp), ["kept"]);
}

#[test]
fn a_failed_journal_round_poisons_its_partitions_and_is_never_replayed() {
    let sim = new_sim();
    let wal = open(&sim);
    let tp = TopicPartition::new("t", 0);
    wal.create_partition(&tp).unwrap();
    wal.append(&tp, batch("acked")).unwrap();
    // The round's write to the segment, its write to the journal, then its fdatasync: that one fails,
    // dropping what it should have made durable.
    sim.fail_once_after_dropping_writes(2);
    let failed = wal.append(&tp, batch("failed-round"));
    assert!(matches!(failed, Err(Error::Poisoned { .. })), "{failed:?}");
    let p = wal.partition(&tp).unwrap();
    let healed = wal.heal(&p).unwrap();
    assert_eq!(
        healed.handle().high_watermark(),
        1,
        "only the acknowledged record"
    );
    // Written where the failed round's record would have gone.
    wal.append(&tp, batch("after")).unwrap();
    let after = sim.power_cut_durable_only();
    drop(wal);
    let wal = open(&after);
    assert_eq!(payloads(&wal, &tp), ["acked", "after"]);
}

/// Polls `f` on this thread, parking between wake-ups: enough of an executor for a ticket's wait, which
/// is woken by another thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut f = std::pin::pin!(f);
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn the_journal_thread_writes_groups_that_asynchronous_waiters_never_lead() {
    let sim = new_sim();
    let io: Arc<dyn WalIo> = Arc::new(sim.clone());
    // Not the deterministic mode: the WAL starts its journal thread.
    let wal = WalManager::open_with_io(ROOT, config(), io).unwrap();
    let tps: Vec<TopicPartition> = (0..8).map(|p| TopicPartition::new("t", p)).collect();
    for tp in &tps {
        wal.create_partition(tp).unwrap();
    }
    for round in 0..3 {
        let tickets: Vec<_> = tps
            .iter()
            .map(|tp| {
                let p = wal.partition(tp).unwrap();
                p.submit(batch(&format!("{tp} #{round}")), AppendOptions::default())
                    .unwrap()
            })
            .collect();
        for t in tickets {
            assert!(t.waits_without_leading());
            block_on(t.wait_async()).unwrap();
        }
    }
    let wal = reopen_after_the_worst_power_cut(&sim, wal);
    for tp in &tps {
        let want: Vec<String> = (0..3).map(|r| format!("{tp} #{r}")).collect();
        assert_eq!(payloads(&wal, tp), want, "{tp}");
    }
}

#[test]
fn a_recycled_journal_file_never_replays_what_it_held_before() {
    let sim = new_sim();
    let wal = open(&sim);
    let tp = TopicPartition::new("t", 0);
    wal.create_partition(&tp).unwrap();
    for text in ["old-a", "old-b"] {
        wal.append(&tp, batch(text)).unwrap();
    }
    wal.delete_partition(&tp).unwrap();
    // The creation trims: the file holding the old records is kept for recycling.
    wal.create_partition(&tp).unwrap();
    assert!(recycled_file(&sim));
    wal.append(&tp, batch("new-a")).unwrap();
    // This trim's new file is the recycled one, still holding the old records past its header.
    assert_eq!(wal.trim_journal().unwrap(), 1);
    wal.append(&tp, batch("new-b")).unwrap();
    let after = sim.power_cut_durable_only();
    drop(wal);
    let wal = open(&after);
    assert_eq!(payloads(&wal, &tp), ["new-a", "new-b"]);
}

/// Fails every fdatasync of a journal file in phase 1, and in phase 2 every one after the first of
/// journal file 2 (the file a trim prepares, whose header goes out with its first round).
#[derive(Debug, Default)]
struct JournalSyncFaults {
    phase: std::sync::atomic::AtomicU32,
    syncs: parking_lot::Mutex<std::collections::HashMap<std::path::PathBuf, u32>>,
}

impl chronik_wal::io::fault::FaultPlan for JournalSyncFaults {
    fn on_sync(&self, path: &Path) -> Option<std::io::Error> {
        let n = {
            let mut syncs = self.syncs.lock();
            let n = syncs.entry(path.to_path_buf()).or_default();
            *n += 1;
            *n
        };
        let journal = path.starts_with(Path::new(ROOT).join("journal"));
        match self.phase.load(std::sync::atomic::Ordering::SeqCst) {
            1 if journal => Some(std::io::Error::other("injected")),
            2 if path.ends_with("00000000000000000002.journal") && n >= 2 => {
                Some(std::io::Error::other("injected"))
            }
            _ => None,
        }
    }
}

/// A round fails, its replacement file cannot be made, then the first round into the file a trim
/// prepared fails too: that file's header was the failed file's only bound. Found by review: the failed
/// round came back after a restart, behind an acknowledged record.
#[test]
fn a_failed_round_stays_bounded_when_the_next_files_round_fails_too() {
    use std::sync::atomic::Ordering::SeqCst;
    let sim = new_sim();
    let faults = Arc::new(JournalSyncFaults::default());
    let io: Arc<dyn WalIo> = Arc::new(chronik_wal::io::fault::FaultyIo::new(
        Arc::new(sim.clone()),
        faults.clone(),
    ));
    let config = WalConfig {
        preallocate_manually: true,
        ..config()
    };
    let wal = WalManager::open_with_io(ROOT, config, io).unwrap();
    let tp = TopicPartition::new("t", 0);
    wal.create_partition(&tp).unwrap();
    wal.append(&tp, batch("acked")).unwrap();
    let p = wal.partition(&tp).unwrap();
    faults.phase.store(1, SeqCst);
    let sync = AppendOptions {
        durability: Durability::Sync,
        ..Default::default()
    };
    let first = p.submit(batch("fail1"), sync).unwrap();
    let second = p.submit(batch("fail2"), sync).unwrap();
    assert!(first.wait().is_err());
    assert!(second.wait().is_err());
    faults.phase.store(0, SeqCst);
    // The failed rounds reach the disk after all: a failed fdatasync says nothing about the data.
    sim.open(
        &Path::new(ROOT).join("journal/00000000000000000001.journal"),
        chronik_wal::io::OpenMode::ReadWrite,
    )
    .unwrap()
    .sync_data()
    .unwrap();
    faults.syncs.lock().clear();
    faults.phase.store(2, SeqCst);
    let _ = wal.trim_journal();
    faults.phase.store(0, SeqCst);
    wal.heal(&p).unwrap();
    wal.append(&tp, batch("after")).unwrap();
    let after = sim.power_cut_durable_only();
    drop(wal);
    let wal = open(&after);
    assert_eq!(payloads(&wal, &tp), ["acked", "after"]);
}

#[test]
fn a_partition_written_alone_is_synced_in_its_segment_not_journaled() {
    let sim = new_sim();
    let io: Arc<dyn WalIo> = Arc::new(sim.clone());
    let config = WalConfig {
        journal_min_groups: 2,
        preallocate_manually: true,
        ..config()
    };
    let wal = WalManager::open_with_io(ROOT, config, io).unwrap();
    let tp = TopicPartition::new("t", 0);
    wal.create_partition(&tp).unwrap();
    for text in ["one", "two", "three"] {
        wal.append(&tp, batch(text)).unwrap();
    }
    let after = sim.power_cut_durable_only();
    drop(wal);
    // Without the journal at all, the segment holds them: each was its own round's only group.
    for entry in after.list_dir(&Path::new(ROOT).join("journal")).unwrap() {
        after
            .remove_file(&Path::new(ROOT).join("journal").join(&entry.name))
            .unwrap();
    }
    let wal = open(&after);
    assert_eq!(payloads(&wal, &tp), ["one", "two", "three"]);
}
