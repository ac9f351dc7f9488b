//! Lifecycle of a partition log: append -> flush -> fetch across several segment rotations, a clean reopen
//! and a crash reopen. Must hold: offsets are dense from the start offset, every read returns exactly the
//! stored bytes and metadata, reads span sealed and active segments, and everything survives reopening.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, thread, time::Duration};

use bytes::Bytes;
use chronik_wal::{
    Batch, CheckpointConfig, Durability, Error, RotationConfig, StoredBatch, TopicPartition, WalConfig,
    WalManager,
};

fn small_segments() -> WalConfig {
    WalConfig {
        rotation: RotationConfig {
            max_segment_size: 8 * 1024,
            ..Default::default()
        },
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        index_interval_bytes: 512,
        ..Default::default()
    }
}

/// Batch `i`: varied sizes and record counts, content derived from `i`.
fn batch(i: u32) -> Batch {
    let len = (i as usize * 37) % 700 + 1;
    let payload: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
    Batch {
        payload: Bytes::from(payload),
        record_count: i % 4 + 1,
        first_timestamp: 1_000 + i64::from(i) * 10,
        max_timestamp: 1_000 + i64::from(i) * 10 + 5,
    }
}

fn segment_files(root: &std::path::Path, tp: &TopicPartition) -> usize {
    std::fs::read_dir(root.join("partitions").join(tp.dir_name()))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".wal")
        })
        .count()
}

/// Reads the whole log from `from` in reads of at most `max_bytes`.
fn read_all(wal: &WalManager, tp: &TopicPartition, from: i64, max_bytes: u64) -> Vec<StoredBatch> {
    let mut out: Vec<StoredBatch> = Vec::new();
    let mut next = from;
    loop {
        let got = wal.read(tp, next, max_bytes).unwrap();
        if got.is_empty() {
            return out;
        }
        next = got.last().unwrap().next_offset();
        out.extend(got);
    }
}

fn check_log(wal: &WalManager, tp: &TopicPartition, n: u32) {
    let all = read_all(wal, tp, 0, 3000);
    assert_eq!(all.len(), n as usize, "every batch comes back once");
    let mut expected_offset = 0;
    for (i, got) in all.iter().enumerate() {
        let want = batch(i as u32);
        assert_eq!(got.base_offset, expected_offset, "batch {i} offset");
        assert_eq!(got.record_count, want.record_count);
        assert_eq!(got.first_timestamp, want.first_timestamp);
        assert_eq!(got.max_timestamp, want.max_timestamp);
        assert_eq!(got.payload, want.payload, "batch {i} bytes");
        expected_offset += i64::from(want.record_count);
    }
    assert_eq!(wal.high_watermark(tp).unwrap(), expected_offset);
}

#[test]
fn append_fetch_across_rotations_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("orders", 3);
    let n = 200;
    {
        let wal = common::open_wal(dir.path(), small_segments()).unwrap();
        wal.create_partition(&tp).unwrap();
        let mut next = 0;
        for i in 0..n {
            let at = wal.append(&tp, batch(i)).unwrap();
            assert_eq!(at.base_offset, next);
            assert_eq!(at.last_offset, next + i64::from(batch(i).record_count) - 1);
            next = at.last_offset + 1;
        }
        assert!(
            segment_files(dir.path(), &tp) >= 5,
            "the log rotated several times"
        );
        check_log(&wal, &tp, n);
        wal.close().unwrap();
    }
    {
        let wal = common::open_wal(dir.path(), small_segments()).unwrap();
        assert_eq!(wal.partitions(), vec![tp.clone()]);
        check_log(&wal, &tp, n);
        // Appends continue densely after a reopen.
        let at = wal.append(&tp, batch(n)).unwrap();
        assert_eq!(
            at.base_offset,
            read_all(&wal, &tp, 0, 1 << 20)[n as usize - 1].next_offset()
        );
        drop(wal); // crash: no close, no final checkpoint
    }
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    check_log(&wal, &tp, n + 1);
    assert!(
        wal.recovery_report().stats.truncated_bytes == 0,
        "synced appends leave no torn tail"
    );
}

#[test]
fn reads_start_inside_a_batch_and_respect_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    let tp = TopicPartition::new("t", 0);
    let p = wal.create_partition(&tp).unwrap();
    for _ in 0..10 {
        p.append(Batch::new(Bytes::from(vec![7u8; 100]), 5, 1)).unwrap();
    }
    // Offset 12 is inside the batch [10, 15): that batch comes back first.
    let got = p.read(12, 250).unwrap();
    assert_eq!(
        got.iter().map(|b| b.base_offset).collect::<Vec<_>>(),
        vec![10, 15]
    );
    // A batch larger than max_bytes still comes back, alone.
    assert_eq!(p.read(0, 1).unwrap().len(), 1);
    assert!(
        p.read(50, 1000).unwrap().is_empty(),
        "reading at the high watermark is empty"
    );
    assert!(matches!(
        p.read(51, 1000),
        Err(Error::OffsetOutOfRange {
            high_watermark: 50,
            ..
        })
    ));
    assert!(matches!(p.read(-1, 1000), Err(Error::OffsetOutOfRange { .. })));
}

#[test]
fn partition_created_at_a_start_offset() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    let tp = TopicPartition::new("moved", 1);
    wal.create_partition_at(&tp, 1000).unwrap();
    assert_eq!(wal.append(&tp, batch(0)).unwrap().base_offset, 1000);
    assert_eq!(wal.log_start_offset(&tp).unwrap(), 1000);
    assert!(matches!(
        wal.read(&tp, 999, 100),
        Err(Error::OffsetOutOfRange {
            log_start_offset: 1000,
            ..
        })
    ));
    wal.close().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    assert_eq!(wal.log_start_offset(&tp).unwrap(), 1000);
    assert_eq!(wal.read(&tp, 1000, 100).unwrap()[0].payload, batch(0).payload);
}

#[test]
fn offset_for_timestamp_finds_first_batch_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    let tp = TopicPartition::new("ts", 0);
    wal.create_partition(&tp).unwrap();
    let mut bases = Vec::new();
    for i in 0..100 {
        bases.push(wal.append(&tp, batch(i)).unwrap().base_offset);
    }
    // batch(i).max_timestamp = 1005 + 10 i
    for (i, &base) in bases.iter().enumerate() {
        let ts = 1005 + 10 * i as i64;
        assert_eq!(
            wal.offset_for_timestamp(&tp, ts).unwrap(),
            Some((base, ts)),
            "exact ts of batch {i}"
        );
        assert_eq!(
            wal.offset_for_timestamp(&tp, ts - 3).unwrap().map(|r| r.0),
            Some(base)
        );
    }
    assert_eq!(wal.offset_for_timestamp(&tp, 0).unwrap().map(|r| r.0), Some(0));
    assert_eq!(wal.offset_for_timestamp(&tp, 1_000_000).unwrap(), None);
}

#[test]
fn waiters_are_woken_by_appends() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    let tp = TopicPartition::new("w", 0);
    let p = wal.create_partition(&tp).unwrap();
    assert!(
        !p.wait_past_timeout(0, Duration::from_millis(1)),
        "nothing appended yet"
    );
    let waiter = {
        let p = Arc::clone(&p);
        thread::spawn(move || p.wait_past_timeout(4, Duration::from_secs(60)))
    };
    p.append(Batch::new(&b"a"[..], 5, 1)).unwrap();
    assert!(
        waiter.join().unwrap(),
        "woken once the high watermark passed offset 4"
    );
}

#[test]
fn deleted_partition_is_gone_from_disk_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("doomed", 0);
    let keep = TopicPartition::new("kept", 0);
    {
        let wal = common::open_wal(dir.path(), small_segments()).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        wal.create_partition(&keep).unwrap();
        for i in 0..50 {
            wal.append(&tp, batch(i)).unwrap();
            wal.append(&keep, batch(i)).unwrap();
        }
        wal.delete_partition(&tp).unwrap();
        assert!(matches!(p.append(batch(0)), Err(Error::PartitionDeleted(_))));
        assert!(matches!(wal.read(&tp, 0, 10), Err(Error::UnknownPartition(_))));
        assert!(!dir.path().join("partitions").join(tp.dir_name()).exists());
        // The name can be reused, starting from offset 0 again.
        wal.create_partition(&tp).unwrap();
        assert_eq!(wal.append(&tp, batch(7)).unwrap().base_offset, 0);
        wal.delete_partition(&tp).unwrap();
    }
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    assert_eq!(wal.partitions(), vec![keep.clone()]);
    check_log(&wal, &keep, 50);
}

/// A handle kept past the deletion reads through the file cache: once the cache has closed the files,
/// the read reports the deletion, not an I/O error about missing files.
#[test]
fn a_handle_read_after_its_deletion_reports_the_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        max_open_files: 1,
        ..small_segments()
    };
    let wal = common::open_wal(dir.path(), config).unwrap();
    let tp = TopicPartition::new("doomed", 0);
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..20 {
        p.append(batch(i)).unwrap();
    }
    wal.delete_partition(&tp).unwrap();
    // Another partition's files take the one descriptor.
    let other = wal.create_partition(&TopicPartition::new("other", 0)).unwrap();
    other.append(batch(0)).unwrap();
    assert!(matches!(p.read(0, 1 << 20), Err(Error::PartitionDeleted(_))));
}

#[test]
fn written_durability_is_visible_and_survives_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("fast", 0);
    {
        let wal = common::open_wal(dir.path(), small_segments()).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        for i in 0..30 {
            p.append_with(batch(i), Durability::Written).unwrap();
        }
        check_log(&wal, &tp, 30);
        wal.close().unwrap();
    }
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    check_log(&wal, &tp, 30);
}

#[test]
fn caller_mistakes_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    assert!(matches!(
        wal.create_partition(&TopicPartition::new("bad/name", 0)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        wal.create_partition(&TopicPartition::new("ok", -1)),
        Err(Error::InvalidArgument(_))
    ));
    let tp = TopicPartition::new("ok", 0);
    wal.create_partition(&tp).unwrap();
    assert!(matches!(
        wal.create_partition(&tp),
        Err(Error::PartitionExists(_))
    ));
    assert!(matches!(
        wal.append(&tp, Batch::new(&b"x"[..], 0, 1)),
        Err(Error::InvalidArgument(_))
    ));
    let huge = Batch::new(Bytes::from(vec![0u8; 16 * 1024 * 1024 + 1]), 1, 1);
    assert!(matches!(wal.append(&tp, huge), Err(Error::BatchTooLarge { .. })));
    assert!(matches!(
        wal.append(&TopicPartition::new("nope", 0), batch(0)),
        Err(Error::UnknownPartition(_))
    ));
    let bad_config = WalConfig {
        index_interval_bytes: 0,
        ..Default::default()
    };
    assert!(matches!(
        common::open_wal(dir.path().join("x"), bad_config),
        Err(Error::InvalidArgument(_))
    ));
    // A second manager on the same directory is refused while the first holds it.
    assert!(matches!(
        common::open_wal(dir.path(), small_segments()),
        Err(Error::Io { .. })
    ));
}

#[test]
fn segments_rotate_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        rotation: RotationConfig {
            max_segment_age_ms: 1,
            ..Default::default()
        },
        ..small_segments()
    };
    let wal = common::open_wal(dir.path(), config).unwrap();
    let tp = TopicPartition::new("aged", 0);
    wal.create_partition(&tp).unwrap();
    for i in 0..3 {
        wal.append(&tp, batch(i)).unwrap();
        // Let the active segment outlive its maximum age; the next append must start a new one.
        thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(
        segment_files(dir.path(), &tp),
        3,
        "one segment per append once each is too old"
    );
    check_log(&wal, &tp, 3);
}

#[test]
fn one_partition_rotates_by_its_own_settings() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    let own = TopicPartition::new("own", 0);
    let other = TopicPartition::new("other", 0);
    let p = wal.create_partition(&own).unwrap();
    wal.create_partition(&other).unwrap();
    let small = RotationConfig {
        max_segment_size: 4096,
        ..Default::default()
    };
    p.set_rotation(small).unwrap();
    assert_eq!(p.rotation(), small);
    for i in 0..60 {
        wal.append(&own, batch(i)).unwrap();
        wal.append(&other, batch(i)).unwrap();
    }
    let sizes = |tp| wal.partition(tp).unwrap().segment_infos();
    assert!(
        sizes(&own).iter().all(|s| s.bytes <= 4096),
        "sealed at its own 4 KiB"
    );
    assert!(
        sizes(&own).len() > sizes(&other).len(),
        "the other partition keeps the WAL's 8 KiB"
    );
    assert!(sizes(&other).iter().any(|s| s.bytes > 4096));
    check_log(&wal, &own, 60);
    check_log(&wal, &other, 60);

    let invalid = RotationConfig {
        max_segment_size: 100,
        ..Default::default()
    };
    assert!(matches!(p.set_rotation(invalid), Err(Error::InvalidArgument(_))));
    assert_eq!(p.rotation(), small, "a refused setting changes nothing");
}

#[test]
fn a_reopened_partition_keeps_its_own_rotation_settings() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    let tp = TopicPartition::new("own", 0);
    let small = RotationConfig {
        max_segment_size: 4096,
        ..Default::default()
    };
    wal.create_partition(&tp).unwrap().set_rotation(small).unwrap();
    let p = wal.reopen_partition(&tp).unwrap();
    assert_eq!(p.rotation(), small);
    for i in 0..60 {
        wal.append(&tp, batch(i)).unwrap();
    }
    let infos = p.segment_infos();
    assert!(infos.len() > 1, "rotated at all");
    assert!(
        infos.iter().all(|s| s.bytes <= 4096),
        "sealed at its own 4 KiB after the reopen, not the WAL's 8 KiB"
    );
    check_log(&wal, &tp, 60);
}

#[test]
fn interval_policy_syncs_in_the_background_and_never_policy_does_not() {
    use chronik_wal::SyncPolicy;
    let dir = tempfile::tempdir().unwrap();
    let interval = WalConfig {
        sync_policy: SyncPolicy::Interval { interval_ms: 5 },
        ..small_segments()
    };
    let wal = common::open_wal(dir.path().join("interval"), interval).unwrap();
    let tp = TopicPartition::new("i", 0);
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..5 {
        p.append(batch(i)).unwrap();
    }
    let hw = p.high_watermark();
    // Wait for the condition, not for a time: the background thread must make the appends durable.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.synced_offset() < hw {
        assert!(
            std::time::Instant::now() < deadline,
            "interval sync never happened"
        );
        thread::yield_now();
    }

    let never = WalConfig {
        sync_policy: SyncPolicy::Never,
        ..small_segments()
    };
    let wal = common::open_wal(dir.path().join("never"), never).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..5 {
        p.append(batch(i)).unwrap();
    }
    assert_eq!(p.high_watermark(), hw, "page-cache appends are readable at once");
    assert_eq!(p.synced_offset(), 0, "and not synced by the never policy");
    p.append_with(batch(5), Durability::Sync).unwrap();
    assert_eq!(
        p.synced_offset(),
        p.high_watermark(),
        "a per-call sync covers everything before it"
    );
    p.append(batch(6)).unwrap();
    p.sync().unwrap();
    assert_eq!(p.synced_offset(), p.high_watermark());
}

#[test]
fn an_oversized_first_batch_is_returned_alone_even_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    let tp = TopicPartition::new("big", 0);
    let p = wal.create_partition(&tp).unwrap();
    p.append(Batch::new(Bytes::from(vec![1u8; 500]), 1, 1)).unwrap();
    p.rotate().unwrap();
    p.append(Batch::new(Bytes::from(vec![2u8; 10]), 1, 1)).unwrap();
    let got = p.read(0, 100).unwrap();
    assert_eq!(
        got.len(),
        1,
        "the budget is spent by the first batch; the next segment adds nothing"
    );
    // Empty batches fit any remaining budget, in the same segment or the next.
    p.rotate().unwrap();
    let empty = p.append(Batch::new(Bytes::new(), 1, 1)).unwrap();
    let got = p.read(1, 10).unwrap();
    assert_eq!(
        got.iter().map(|b| b.base_offset).collect::<Vec<_>>(),
        vec![1, empty.base_offset]
    );
}

#[test]
fn assigned_base_offset_is_written_into_the_payload_when_asked() {
    use chronik_wal::AppendOptions;
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("patched", 0);
    let options = AppendOptions {
        base_offset_at: Some(4),
        ..Default::default()
    };
    let mut expected = Vec::new();
    {
        let wal = common::open_wal(dir.path(), small_segments()).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        for i in 0..40u32 {
            let mut payload = vec![0xAB; 4];
            payload.extend_from_slice(&[0u8; 8]);
            payload.extend((0..i * 13).map(|j| j as u8));
            let at = p
                .append_with_options(Batch::new(payload.clone(), 3, 0), options)
                .unwrap();
            payload[4..12].copy_from_slice(&at.base_offset.to_be_bytes());
            expected.push(payload);
        }
        let short = p.append_with_options(Batch::new(vec![0u8; 11], 1, 0), options);
        assert!(
            matches!(short, Err(Error::InvalidArgument(_))),
            "no room for the offset"
        );
    }
    // Reopened after a crash: recovery validates the CRCs of the patched frames.
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    assert_eq!(wal.recovery_report().stats.truncated_bytes, 0);
    let got: Vec<Vec<u8>> = read_all(&wal, &tp, 0, 1 << 20)
        .iter()
        .map(|b| b.payload.to_vec())
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn submitted_appends_keep_call_order_and_share_a_sync() {
    use chronik_wal::AppendOptions;
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("pipelined", 0);
    {
        let wal = common::open_wal(dir.path(), small_segments()).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        let tickets: Vec<_> = (0..20)
            .map(|i| p.submit(batch(i), AppendOptions::default()).unwrap())
            .collect();
        let expected: Vec<i64> = tickets.iter().map(|t| t.offsets().base_offset).collect();
        assert!(
            expected.windows(2).all(|w| w[0] < w[1]),
            "offsets follow submission order"
        );
        // Waited in reverse: the first wait writes and syncs everything queued so far.
        let got: Vec<i64> = tickets
            .into_iter()
            .rev()
            .map(|t| t.wait().unwrap().base_offset)
            .collect();
        assert_eq!(got.into_iter().rev().collect::<Vec<_>>(), expected);
        assert_eq!(p.synced_offset(), p.high_watermark(), "all durable once waited");
    }
    let wal = common::open_wal(dir.path(), small_segments()).unwrap();
    check_log(&wal, &tp, 20);
}

/// The synced offset is what a broker serves up to: appends made without an fdatasync stay above it,
/// `read_below` it leaves them out (and a read from between it and the log end is empty, not out of
/// range), and a sync moves it and wakes its waiters.
#[test]
fn the_synced_offset_bounds_reads_and_wakes_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let wal = WalManager::open(dir.path(), small_segments()).unwrap();
    let tp = TopicPartition::new("synced", 0);
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..3 {
        p.append_with(batch(i), Durability::Sync).unwrap();
    }
    let durable = p.high_watermark();
    assert_eq!(p.synced_offset(), durable);
    for i in 3..6 {
        p.append_with(batch(i), Durability::Written).unwrap();
    }
    assert!(p.high_watermark() > durable);
    assert_eq!(p.synced_offset(), durable, "written, not synced");
    let below = p.read_below(0, u64::MAX, p.synced_offset()).unwrap();
    assert_eq!(below.last().map(StoredBatch::next_offset), Some(durable));
    assert!(p.read_below(durable, u64::MAX, durable).unwrap().is_empty());
    assert!(matches!(
        p.read_below(p.high_watermark() + 1, u64::MAX, durable),
        Err(Error::OffsetOutOfRange { .. })
    ));
    let waiter = {
        let p = Arc::clone(&p);
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(p.wait_synced_past(durable));
            p.synced_offset()
        })
    };
    p.sync().unwrap();
    assert_eq!(waiter.join().unwrap(), p.high_watermark());
    assert_eq!(
        p.read_below(durable, u64::MAX, p.synced_offset()).unwrap().len(),
        3
    );
}
