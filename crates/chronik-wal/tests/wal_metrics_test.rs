//! The WAL reports through the `metrics` facade under the names operators scrape. After known work the
//! counters, histograms and gauges must have moved by exactly the right amounts.
#![allow(clippy::unwrap_used)]

mod common;

use chronik_wal::{
    frame::FRAME_HEADER_LEN, metrics as m, Batch, CheckpointConfig, RotationConfig, TopicPartition, WalConfig,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

type Snapshot = Vec<(metrics_util::CompositeKey, DebugValue)>;

/// Takes a snapshot. The debugging recorder resets every value when read, so each snapshot holds what
/// happened since the previous one.
fn snapshot(s: &Snapshotter) -> Snapshot {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect()
}

fn value<'a>(snap: &'a Snapshot, name: &str, label: Option<(&str, &str)>) -> Option<&'a DebugValue> {
    snap.iter().find_map(|(key, v)| {
        let k = key.key();
        let label_ok = label.is_none_or(|(n, val)| k.labels().any(|l| l.key() == n && l.value() == val));
        (k.name() == name && label_ok).then_some(v)
    })
}

fn counter(s: &Snapshot, name: &str, label: Option<(&str, &str)>) -> u64 {
    match value(s, name, label) {
        Some(DebugValue::Counter(c)) => *c,
        other => panic!("{name}: expected a counter, got {other:?}"),
    }
}

fn histogram_len(s: &Snapshot, name: &str) -> usize {
    match value(s, name, None) {
        Some(DebugValue::Histogram(h)) => h.len(),
        other => panic!("{name}: expected a histogram, got {other:?}"),
    }
}

fn gauge(s: &Snapshot, name: &str, label: (&str, &str)) -> f64 {
    gauge_of(s, name, Some(label))
}

fn gauge_of(s: &Snapshot, name: &str, label: Option<(&str, &str)>) -> f64 {
    match value(s, name, label) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name}: expected a gauge, got {other:?}"),
    }
}

#[test]
fn wal_metrics_count_the_work_done() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let config = WalConfig {
            rotation: RotationConfig {
                max_segment_size: 4096,
                ..Default::default()
            },
            checkpoint: CheckpointConfig {
                enabled: false,
                ..Default::default()
            },
            max_open_files: 2,
            // The preparer thread would create the next segments, out of this thread's recorder.
            preallocate_bytes: 0,
            ..Default::default()
        };
        let wal = common::open_wal(dir.path(), config).unwrap();
        let tp = TopicPartition::new("m", 0);
        wal.create_partition(&tp).unwrap();
        let appends = 20u64;
        for i in 0..appends {
            wal.append(&tp, Batch::new(vec![1u8; 1000], 1, i as i64)).unwrap();
        }
        let snap = snapshot(&snapshotter);
        assert_eq!(
            histogram_len(&snap, m::RECOVERY_DURATION_SECONDS),
            1,
            "recovery timed once"
        );
        assert_eq!(counter(&snap, m::WRITES_TOTAL, None), appends);
        assert_eq!(
            counter(&snap, m::BYTES_WRITTEN_TOTAL, None),
            appends * (1000 + FRAME_HEADER_LEN as u64)
        );
        assert_eq!(
            histogram_len(&snap, m::WRITE_DURATION_SECONDS),
            appends as usize,
            "one write per group"
        );
        // Each lone append syncs once. Creating a segment at rotation syncs its header and the directory:
        // set-up work, not counted as log fsyncs.
        assert_eq!(histogram_len(&snap, m::FSYNC_DURATION_SECONDS), appends as usize);
        let sealed = gauge(&snap, m::SEGMENTS_TOTAL, ("state", "sealed"));
        assert!(sealed >= 5.0, "segments sealed by rotation: {sealed}");
        assert_eq!(gauge(&snap, m::SEGMENTS_TOTAL, ("state", "active")), 1.0);
        // Every segment (and prepared next segment) was opened; the cache closed all but two.
        let opened = counter(&snap, m::FILE_OPENS_TOTAL, None);
        let closed = counter(&snap, m::FILE_CLOSES_TOTAL, None);
        assert!(opened as f64 > sealed, "opened {opened}");
        assert_eq!(gauge_of(&snap, m::OPEN_FILES, None), (opened - closed) as f64);
        assert!(opened - closed <= 2, "open {}", opened - closed);

        assert!(wal.append(&tp, Batch::new(vec![1u8; 10], 0, 0)).is_err());
        wal.close().unwrap();
        let snap = snapshot(&snapshotter);
        assert_eq!(
            counter(&snap, m::ERRORS_TOTAL, Some(("kind", "invalid_argument"))),
            1
        );
        assert_eq!(
            counter(&snap, m::CHECKPOINTS_TOTAL, None),
            1,
            "close writes a final checkpoint"
        );
    });
}

/// Fails every fdatasync while set.
#[derive(Debug, Default)]
struct FailSync(std::sync::atomic::AtomicBool);

impl chronik_wal::io::fault::FaultPlan for FailSync {
    fn on_sync(&self, _path: &std::path::Path) -> Option<std::io::Error> {
        self.0
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| std::io::Error::from_raw_os_error(5))
    }
    fn armed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_failed_fdatasync_counts_once_as_fsync_and_once_as_poisoned() {
    use std::sync::{atomic::Ordering, Arc};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let plan = Arc::new(FailSync::default());
        let io = Arc::new(chronik_wal::io::fault::FaultyIo::new(
            common::test_io(),
            plan.clone(),
        ));
        let config = WalConfig {
            checkpoint: CheckpointConfig {
                enabled: false,
                ..Default::default()
            },
            preallocate_bytes: 0,
            ..Default::default()
        };
        let wal = chronik_wal::WalManager::open_with_io(dir.path(), config, io).unwrap();
        let tp = TopicPartition::new("m", 0);
        let p = wal.create_partition(&tp).unwrap();
        p.append(Batch::new(vec![1; 100], 1, 0)).unwrap();
        let _ = snapshot(&snapshotter);

        plan.0.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(p.append(Batch::new(vec![2; 100], 1, 0)).is_err());
        }
        plan.0.store(false, Ordering::SeqCst);
        assert!(
            p.append(Batch::new(vec![3; 100], 1, 0)).is_err(),
            "still poisoned"
        );

        let s = snapshot(&snapshotter);
        let errors = |kind| counter(&s, m::ERRORS_TOTAL, Some(("kind", kind)));
        assert_eq!(errors("fsync"), 1, "one fdatasync failed");
        assert_eq!(
            errors("poisoned"),
            1,
            "one poisoning, however many appends it refused"
        );
    });
}

/// Before any WAL exists, `register_defaults` has described every metric and created each series at zero,
/// with every label value the WAL uses: a dashboard's `rate()` sees them from the first scrape.
#[test]
fn register_defaults_creates_every_series_at_zero_with_help() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, m::register_defaults);
    let all = snapshotter.snapshot().into_vec();
    let with_help: Vec<String> = all
        .iter()
        .filter(|(_, _, help, _)| help.as_ref().is_some_and(|h| !h.is_empty()))
        .map(|(k, _, _, _)| k.key().name().to_string())
        .collect();
    let described = |name: &str| with_help.iter().any(|n| n == name);
    let counters = [
        m::WRITES_TOTAL,
        m::BYTES_WRITTEN_TOTAL,
        m::IO_RETRIES_TOTAL,
        m::CHECKPOINTS_TOTAL,
        m::RECOVERY_BYTES_SCANNED_TOTAL,
        m::TRUNCATED_BYTES_TOTAL,
        m::RETENTION_DELETED_SEGMENTS_TOTAL,
        m::RETENTION_DELETED_BYTES_TOTAL,
        m::PREALLOCATED_BYTES_TOTAL,
        m::FILE_OPENS_TOTAL,
        m::FILE_CLOSES_TOTAL,
        m::JOURNAL_ROUNDS_TOTAL,
        m::JOURNAL_BYTES_TOTAL,
    ];
    let s: Snapshot = all.into_iter().map(|(k, _, _, v)| (k, v)).collect();
    for name in counters {
        assert_eq!(counter(&s, name, None), 0, "{name}");
        assert!(described(name), "{name} has no help text");
    }
    for kind in m::ERROR_KINDS {
        assert_eq!(
            counter(&s, m::ERRORS_TOTAL, Some(("kind", kind))),
            0,
            "kind {kind}"
        );
    }
    assert!(described(m::ERRORS_TOTAL));
    for state in m::SEGMENT_STATES {
        assert_eq!(
            gauge(&s, m::SEGMENTS_TOTAL, ("state", state)),
            0.0,
            "state {state}"
        );
    }
    assert!(described(m::SEGMENTS_TOTAL));
    assert_eq!(gauge_of(&s, m::OPEN_FILES, None), 0.0);
    assert!(described(m::OPEN_FILES));
    for name in [
        m::WRITE_DURATION_SECONDS,
        m::FSYNC_DURATION_SECONDS,
        m::RECOVERY_DURATION_SECONDS,
        m::GROUP_COMMIT_BATCHES,
        m::JOURNAL_ROUND_DURATION_SECONDS,
        m::JOURNAL_ROUND_GROUPS,
    ] {
        assert_eq!(histogram_len(&s, name), 0, "{name}");
        assert!(described(name), "{name} has no help text");
    }
    let series = 14 + m::ERROR_KINDS.len() + m::SEGMENT_STATES.len() + 6;
    assert_eq!(s.len(), series, "a series nobody checks: {s:#?}");
}
