//! Partitions that cannot be opened when the WAL opens: the WAL still opens.
//!
//! Must hold: a partition whose files cannot be opened (a full descriptor table or a refused permission,
//! injected through the I/O trait; or, on real files, a directory where a segment file should be) is
//! reported offline with its typed error and is not loaded, while every other partition opens, serves
//! reads and takes appends. Every call naming the offline partition (append, read, create, reopen) fails
//! with `Error::PartitionOffline`, never `UnknownPartition`, and nothing is created over its directory.
//! Checkpoints written meanwhile keep its entry, so that the next open, with the cause removed, recovers
//! it against the same entry with all its data. Deleting an offline partition removes it for good.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use chronik_wal::{
    checkpoint,
    io::{
        fault::{FaultPlan, FaultyIo},
        OpenMode,
    },
    Batch, CheckpointEntry, Error, TopicPartition, WalConfig, WalManager,
};

/// "Too many open files" (Linux errno).
const EMFILE: i32 = 24;
/// "Permission denied" (Linux errno).
const EACCES: i32 = 13;

/// Fails every file open under one partition's directory with `errno`.
#[derive(Debug)]
struct UnopenablePartition {
    dir_name: String,
    errno: i32,
}

impl FaultPlan for UnopenablePartition {
    fn on_open(&self, path: &Path, _mode: OpenMode) -> Option<io::Error> {
        let in_partition = path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == self.dir_name.as_str());
        in_partition.then(|| io::Error::from_raw_os_error(self.errno))
    }
    fn armed(&self) -> bool {
        false
    }
}

fn tps() -> [TopicPartition; 3] {
    [
        TopicPartition::new("a", 0),
        TopicPartition::new("b", 0),
        TopicPartition::new("c", 0),
    ]
}

/// Three partitions with `records` single-record batches each, closed cleanly (so a checkpoint covers them).
fn populate(root: &Path, records: u32) {
    let wal = common::open_wal(root, WalConfig::default()).unwrap();
    for tp in tps() {
        wal.create_partition(&tp).unwrap();
        for i in 0..records {
            wal.append(
                &tp,
                Batch::new(format!("{tp}:{i}").into_bytes(), 1, 1_000 + i64::from(i)),
            )
            .unwrap();
        }
    }
    wal.close().unwrap();
}

fn payloads(wal: &WalManager, tp: &TopicPartition) -> Vec<String> {
    wal.read(tp, 0, 1 << 20)
        .unwrap()
        .iter()
        .map(|b| String::from_utf8(b.payload.to_vec()).unwrap())
        .collect()
}

fn expected(tp: &TopicPartition, records: u32) -> Vec<String> {
    (0..records).map(|i| format!("{tp}:{i}")).collect()
}

fn claim(root: &Path, tp: &TopicPartition) -> Option<CheckpointEntry> {
    checkpoint::read(&*common::test_io(), root)
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .find(|e| &e.tp == tp)
}

fn assert_offline(result: Result<impl std::fmt::Debug, Error>, tp: &TopicPartition, what: &str) {
    match result {
        Err(Error::PartitionOffline { tp: t, .. }) => assert_eq!(&t, tp, "{what}"),
        other => panic!("{what}: expected PartitionOffline, got {other:?}"),
    }
}

/// The offline partition is reported, refused and kept; the others serve.
fn check_offline_run(wal: &WalManager, broken: &TopicPartition, records: u32) {
    let report = wal.recovery_report();
    assert_eq!(report.partitions, 3);
    assert_eq!(report.offline.len(), 1, "{:?}", report.offline);
    assert_eq!(&report.offline[0].tp, broken);
    assert!(
        matches!(&*report.offline[0].cause, Error::Io { .. }),
        "an open that failed is an I/O error: {}",
        report.offline[0].cause
    );
    let listed: Vec<TopicPartition> = wal.offline_partitions().into_iter().map(|o| o.tp).collect();
    assert_eq!(listed, vec![broken.clone()]);
    assert!(wal.offline_cause(broken).is_some());
    assert!(
        !wal.partitions().contains(broken),
        "not among the loaded partitions"
    );
    assert!(wal.partition(broken).is_none());

    for tp in tps().iter().filter(|tp| *tp != broken) {
        assert_eq!(payloads(wal, tp), expected(tp, records), "{tp} serves");
        let at = wal.append(tp, Batch::new(&b"more"[..], 1, 9_999)).unwrap();
        assert_eq!(at.base_offset, i64::from(records), "{tp} takes appends");
    }

    assert_offline(wal.append(broken, Batch::new(&b"x"[..], 1, 1)), broken, "append");
    assert_offline(wal.read(broken, 0, 1 << 20), broken, "read");
    assert_offline(wal.high_watermark(broken), broken, "high watermark");
    assert_offline(wal.create_partition(broken), broken, "create");
    assert_offline(wal.get_or_create_partition(broken), broken, "get or create");
    assert_offline(wal.reopen_partition(broken), broken, "reopen");
    let message = wal
        .append(broken, Batch::new(&b"x"[..], 1, 1))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("b-0") && message.contains("offline"),
        "the error says which partition and why: {message}"
    );
}

#[test]
fn a_partition_whose_files_cannot_be_opened_is_offline_and_recovered_once_they_can() {
    for errno in [EMFILE, EACCES] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let records = 20;
        populate(root, records);
        let broken = TopicPartition::new("b", 0);
        let before = claim(root, &broken).expect("the clean close checkpointed b-0");

        let plan = Arc::new(UnopenablePartition {
            dir_name: broken.dir_name(),
            errno,
        });
        let io = Arc::new(FaultyIo::new(common::test_io(), plan));
        let wal = WalManager::open_with_io(root, WalConfig::default(), io).unwrap();
        check_offline_run(&wal, &broken, records);
        match &*wal.offline_cause(&broken).unwrap() {
            Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(errno)),
            other => panic!("expected the open's error, got {other}"),
        }
        wal.checkpoint().unwrap();
        assert_eq!(
            claim(root, &broken).as_ref(),
            Some(&before),
            "a checkpoint written while it is offline keeps its entry"
        );
        wal.close().unwrap();
        assert_eq!(
            claim(root, &broken).as_ref(),
            Some(&before),
            "and so does the last one"
        );

        // The cause is gone: the next open recovers it against the same entry, with all its data.
        let wal = common::open_wal(root, WalConfig::default()).unwrap();
        assert!(wal.recovery_report().offline.is_empty());
        assert!(wal.recovery_report().used_checkpoint);
        assert_eq!(payloads(&wal, &broken), expected(&broken, records));
        let at = wal.append(&broken, Batch::new(&b"after"[..], 1, 1)).unwrap();
        assert_eq!(at.base_offset, i64::from(records));
        for tp in tps().iter().filter(|tp| **tp != broken) {
            assert_eq!(wal.high_watermark(tp).unwrap(), i64::from(records) + 1);
        }
        wal.close().unwrap();
    }
}

#[test]
fn a_directory_in_place_of_a_segment_makes_its_partition_offline_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let records = 10;
    populate(root, records);
    let broken = TopicPartition::new("b", 0);
    let segment = segment_path(root, &broken);
    let aside = root.join("segment-aside");
    std::fs::rename(&segment, &aside).unwrap();
    std::fs::create_dir(&segment).unwrap();

    let wal = common::open_wal(root, WalConfig::default()).unwrap();
    check_offline_run(&wal, &broken, records);
    wal.close().unwrap();
    assert!(
        segment.is_dir(),
        "nothing was created or removed over the offline partition"
    );

    std::fs::remove_dir(&segment).unwrap();
    std::fs::rename(&aside, &segment).unwrap();
    let wal = common::open_wal(root, WalConfig::default()).unwrap();
    assert!(wal.recovery_report().offline.is_empty());
    assert_eq!(payloads(&wal, &broken), expected(&broken, records));
    wal.close().unwrap();
}

#[test]
fn an_offline_partition_can_be_deleted_and_created_anew() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    populate(root, 5);
    let broken = TopicPartition::new("b", 0);
    let plan = Arc::new(UnopenablePartition {
        dir_name: broken.dir_name(),
        errno: EACCES,
    });
    let io = Arc::new(FaultyIo::new(common::test_io(), plan));
    let wal = WalManager::open_with_io(root, WalConfig::default(), io).unwrap();
    assert_eq!(wal.offline_partitions().len(), 1);
    wal.delete_partition(&broken).unwrap();
    assert!(wal.offline_partitions().is_empty());
    assert!(matches!(
        wal.append(&broken, Batch::new(&b"x"[..], 1, 1)),
        Err(Error::UnknownPartition(_))
    ));
    assert!(!root.join("partitions").join(broken.dir_name()).exists());
    wal.checkpoint().unwrap();
    assert!(claim(root, &broken).is_none(), "its entry went with it");
    wal.close().unwrap();

    let wal = common::open_wal(root, WalConfig::default()).unwrap();
    assert!(wal.partition(&broken).is_none());
    wal.create_partition(&broken).unwrap();
    assert_eq!(wal.high_watermark(&broken).unwrap(), 0, "a new, empty partition");
    wal.close().unwrap();
}

fn segment_path(root: &Path, tp: &TopicPartition) -> PathBuf {
    root.join("partitions")
        .join(tp.dir_name())
        .join("00000000000000000000.wal")
}
