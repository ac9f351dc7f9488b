//! The committed-offsets store over a long run and under disk faults.
//!
//! Scenario: groups commit over and over, far more than one snapshot interval, on a WAL with small segments.
//! What must hold:
//! - Disk use of the two internal partitions (`__chronik_offsets-0`, `__chronik_offsets_snapshot-0`) stays
//!   under a fixed bound while the number of commits grows tenfold: the log is trimmed behind each durable
//!   snapshot and old snapshots go too, but only once a WAL checkpoint has moved past them.
//! - After a crash (no clean close) the store reopens from a log whose start is past 0 and serves exactly
//!   the latest commit of every group and partition; a log that starts past what the snapshot covers is
//!   refused rather than loaded with offsets missing.
//! - A failed fdatasync on the offsets log does not make later commits fail: the store reopens the
//!   partition from disk and retries once.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io,
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
};

use chronik_server::offsets::{Committed, Offsets, OFFSETS_SNAPSHOT_TOPIC, OFFSETS_TOPIC};
use chronik_wal::{
    io::{
        fault::{FaultPlan, FaultyIo},
        StdIo,
    },
    CheckpointConfig, RotationConfig, TopicPartition, WalConfig, WalManager,
};

const GROUPS: u64 = 20;
const PARTITIONS: u64 = 4;

/// Small segments; background checkpoints far apart, so only the test's explicit checkpoints (standing in
/// for them) make segments deletable.
fn config() -> WalConfig {
    WalConfig {
        rotation: RotationConfig {
            max_segment_size: 16 << 10,
            ..RotationConfig::default()
        },
        checkpoint: CheckpointConfig {
            enabled: true,
            interval_ms: 3_600_000,
        },
        ..WalConfig::default()
    }
}

fn committed(offset: i64) -> Committed {
    Committed {
        offset,
        leader_epoch: -1,
        metadata: Some(format!("m{offset}")),
    }
}

/// Commit `i` of a run: which group and partition, and the offset it stores.
fn commit_n(offsets: &Offsets, model: &mut HashMap<(String, i32), i64>, i: u64) {
    let group = format!("g{}", i % GROUPS);
    let partition = ((i / GROUPS) % PARTITIONS) as i32;
    let offset = i as i64;
    offsets
        .commit(&group, vec![("t".into(), partition, committed(offset))])
        .expect("commit");
    model.insert((group, partition), offset);
}

fn assert_matches_model(offsets: &Offsets, model: &HashMap<(String, i32), i64>) {
    for ((group, partition), offset) in model {
        assert_eq!(
            offsets.get(group, "t", *partition),
            Some(committed(*offset)),
            "group {group} partition {partition}"
        );
    }
}

/// Bytes of every file in the store's two partition directories, as the file system reports them.
fn store_bytes(root: &Path) -> u64 {
    [OFFSETS_TOPIC, OFFSETS_SNAPSHOT_TOPIC]
        .iter()
        .map(|topic| {
            let dir = root.join("partitions").join(format!("{topic}-0"));
            std::fs::read_dir(&dir)
                .expect("list partition directory")
                .map(|e| e.expect("directory entry").metadata().expect("metadata").len())
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn disk_use_stays_bounded_while_commits_grow_tenfold() {
    const SNAPSHOT_EVERY: u64 = 50;
    const ROUNDS: u64 = 10;
    const PER_ROUND: u64 = 300;
    const BOUND: u64 = 160 << 10;
    let dir = tempfile::tempdir().unwrap();
    let mut model = HashMap::new();
    let mut per_round = Vec::new();
    {
        let wal = Arc::new(WalManager::open(dir.path(), config()).unwrap());
        let offsets = Offsets::open_with(&wal, SNAPSHOT_EVERY).unwrap();
        for i in 0..ROUNDS * PER_ROUND {
            commit_n(&offsets, &mut model, i);
            if (i + 1) % SNAPSHOT_EVERY == 0 {
                wal.checkpoint().unwrap();
            }
            if (i + 1) % PER_ROUND == 0 {
                per_round.push(store_bytes(dir.path()));
            }
        }
        let log_start = wal
            .log_start_offset(&TopicPartition::new(OFFSETS_TOPIC, 0))
            .unwrap();
        println!(
            "store bytes after each {PER_ROUND} commits: {per_round:?}; log start {log_start} of {}",
            ROUNDS * PER_ROUND
        );
        assert!(log_start > 0, "the offsets log was trimmed");
        // Dropped without close: a crash.
    }
    let first = per_round[0];
    let max = *per_round.iter().max().unwrap();
    assert!(
        max <= BOUND,
        "store grew to {max} bytes (bound {BOUND}): {per_round:?}"
    );
    assert!(
        max <= 2 * first,
        "store after {} commits ({max} bytes) is not within twice its size after {PER_ROUND} ({first} bytes)",
        ROUNDS * PER_ROUND
    );

    let wal = Arc::new(WalManager::open(dir.path(), config()).unwrap());
    let offsets = Offsets::open_with(&wal, SNAPSHOT_EVERY).unwrap();
    assert_matches_model(&offsets, &model);
    assert_eq!(model.len() as u64, GROUPS * PARTITIONS);
    assert!(
        offsets.replayed < 2 * SNAPSHOT_EVERY,
        "recovery replayed {} records: it starts from the latest snapshot",
        offsets.replayed
    );
}

#[test]
fn trimming_waits_for_a_checkpoint_and_a_missing_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = HashMap::new();
    let offsets_tp = TopicPartition::new(OFFSETS_TOPIC, 0);
    {
        let wal = Arc::new(WalManager::open(dir.path(), config()).unwrap());
        let offsets = Offsets::open_with(&wal, 20).unwrap();
        for i in 0..200 {
            commit_n(&offsets, &mut model, i);
        }
        assert_eq!(
            wal.log_start_offset(&offsets_tp).unwrap(),
            0,
            "nothing is deleted before a checkpoint has moved past it"
        );
        let waiting = offsets.trim().unwrap();
        assert_eq!(waiting.segments, 0);
        assert!(waiting.awaiting_checkpoint > 0, "{waiting:?}");
        wal.checkpoint().unwrap();
        let trimmed = offsets.trim().unwrap();
        assert_eq!(trimmed.segments, waiting.awaiting_checkpoint, "{trimmed:?}");
        assert_eq!(trimmed.awaiting_checkpoint, 0);
        assert!(wal.log_start_offset(&offsets_tp).unwrap() > 0);
        assert_matches_model(&offsets, &model);
    }
    {
        let wal = Arc::new(WalManager::open(dir.path(), config()).unwrap());
        let offsets = Offsets::open_with(&wal, 20).unwrap();
        assert_matches_model(&offsets, &model);
    }
    // Without its snapshots, the trimmed log cannot say what was committed before its start.
    let snapshots = dir
        .path()
        .join("partitions")
        .join(format!("{OFFSETS_SNAPSHOT_TOPIC}-0"));
    std::fs::remove_dir_all(snapshots).unwrap();
    let wal = Arc::new(WalManager::open(dir.path(), config()).unwrap());
    let refused = Offsets::open_with(&wal, 20).expect_err("a log missing its snapshot is refused");
    assert!(
        refused
            .to_string()
            .contains("committed offsets in between are missing"),
        "{refused}"
    );
}

/// Fails the fdatasync of the offsets log's segment files while `failures` is above zero, counting down.
#[derive(Debug, Default)]
struct FailOffsetsSync {
    failures: AtomicU32,
    fired: AtomicU32,
}

impl FaultPlan for FailOffsetsSync {
    fn on_sync(&self, path: &Path) -> Option<io::Error> {
        // Segment files are created as `*.wal.tmp` and renamed; the wrapper keeps the name they were
        // opened by.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ours = (name.ends_with(".wal") || name.ends_with(".wal.tmp"))
            && path.to_string_lossy().contains(&format!("{OFFSETS_TOPIC}-0/"));
        let take = |n: u32| n.checked_sub(1);
        (ours
            && self
                .failures
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, take)
                .is_ok())
        .then(|| {
            self.fired.fetch_add(1, Ordering::AcqRel);
            io::Error::from_raw_os_error(libc::EIO)
        })
    }
}

fn open_faulty(root: &Path, plan: &Arc<FailOffsetsSync>) -> Arc<WalManager> {
    // No preallocation: its background fdatasyncs would race the appends for the injected fault.
    let config = WalConfig {
        preallocate_bytes: 0,
        ..config()
    };
    let io = Arc::new(FaultyIo::new(
        Arc::new(StdIo),
        Arc::clone(plan) as Arc<dyn FaultPlan>,
    ));
    Arc::new(WalManager::open_with_io(root, config, io).unwrap())
}

#[test]
fn a_failed_fdatasync_on_the_offsets_log_is_recovered_from() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FailOffsetsSync::default());
    let mut model = HashMap::new();
    {
        let wal = open_faulty(dir.path(), &plan);
        let offsets = Offsets::open_with(&wal, 20).unwrap();
        for i in 0..30 {
            commit_n(&offsets, &mut model, i);
        }

        // One EIO: the store reopens the partition and retries, so the commit is acknowledged.
        plan.failures.store(1, Ordering::Release);
        commit_n(&offsets, &mut model, 30);
        assert_eq!(plan.fired.load(Ordering::Acquire), 1, "the fault fired");
        commit_n(&offsets, &mut model, 31);
        assert_matches_model(&offsets, &model);

        // A disk that keeps failing: the commit is refused (and not applied) ...
        plan.failures.store(u32::MAX, Ordering::Release);
        let refused = offsets.commit("g0", vec![("t".into(), 0, committed(999))]);
        assert!(refused.is_err(), "a commit that is not durable is refused");
        assert_matches_model(&offsets, &model);
        // ... and once it recovers, commits succeed again without a restart.
        plan.failures.store(0, Ordering::Release);
        for i in 32..80 {
            commit_n(&offsets, &mut model, i);
        }
        assert_matches_model(&offsets, &model);
    }
    let wal = open_faulty(dir.path(), &plan);
    let offsets = Offsets::open_with(&wal, 20).unwrap();
    assert_matches_model(&offsets, &model);
}
