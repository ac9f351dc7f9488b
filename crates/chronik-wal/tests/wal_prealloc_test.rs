//! Segment preallocation (`WalConfig::preallocate_bytes`): a background thread keeps zero-filled space
//! ahead of the active segment's write position.
//!
//! Must hold: the space past the last frame is all zeros; recovery takes a zeroed tail of the last segment
//! for the end of the data (no truncation, no `.broken` copy, nothing reported) and appends resume right
//! after the last frame, overwriting the zeros; a torn frame followed by zeros is still cut as a torn tail;
//! sealed segments are trimmed to their last frame, so zeros at the end of one are damage; a failed write
//! is erased back to zeros without giving the space up; `inspect` reports a zeroed active tail as clean.
#![allow(clippy::unwrap_used)]

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use chronik_wal::{
    frame::FRAME_HEADER_LEN,
    inspect,
    io::{DirEntry, OpenMode, StdIo, WalFile, WalIo},
    segment::SEGMENT_HEADER_LEN,
    Batch, CheckpointConfig, Error, RotationConfig, TopicPartition, WalConfig, WalManager,
};

const PREALLOC: u64 = 64 * 1024;
/// Generous: the preparer writes 64 KiB. Only a hung preparer makes a test wait this long.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

fn config() -> WalConfig {
    WalConfig {
        checkpoint: CheckpointConfig {
            enabled: false,
            ..Default::default()
        },
        preallocate_bytes: PREALLOC,
        index_interval_bytes: 256,
        ..Default::default()
    }
}

fn payload(i: usize) -> Bytes {
    Bytes::from(vec![(i % 250 + 1) as u8; 100 + i % 37])
}

fn frame_len(i: usize) -> u64 {
    (FRAME_HEADER_LEN + 100 + i % 37) as u64
}

/// End of the data after frames `0..n` in one segment.
fn data_end(n: usize) -> u64 {
    SEGMENT_HEADER_LEN as u64 + (0..n).map(frame_len).sum::<u64>()
}

fn segment_path(root: &Path, tp: &TopicPartition, base: i64) -> PathBuf {
    root.join("partitions")
        .join(tp.dir_name())
        .join(format!("{base:020}.wal"))
}

fn broken_files(root: &Path, tp: &TopicPartition) -> Vec<PathBuf> {
    fs::read_dir(root.join("partitions").join(tp.dir_name()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".broken"))
        .collect()
}

fn assert_zeros_from(path: &Path, from: u64) {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.len() as u64 > from,
        "{}: no space past {from}",
        path.display()
    );
    assert!(
        bytes[from as usize..].iter().all(|&b| b == 0),
        "{}: only zeros past the last frame at {from}",
        path.display()
    );
}

fn assert_log(wal: &WalManager, tp: &TopicPartition, n: usize) {
    let got = wal.read(tp, 0, u64::MAX).unwrap();
    assert_eq!(got.len(), n);
    for (i, b) in got.iter().enumerate() {
        assert_eq!((b.base_offset, &b.payload), (i as i64, &payload(i)), "batch {i}");
    }
}

/// `n` synced appends, then waits for the preparer to have zero-filled space ahead of them.
fn write_prepared(root: &Path, tp: &TopicPartition, n: usize) -> WalManager {
    let wal = WalManager::open(root, config()).unwrap();
    let p = wal.create_partition(tp).unwrap();
    for i in 0..n {
        assert_eq!(
            p.append(Batch::new(payload(i), 1, 0)).unwrap().base_offset,
            i as i64
        );
    }
    assert!(
        p.wait_prepared(data_end(n) + PREALLOC / 2, PREPARE_TIMEOUT),
        "the preparer zero-fills space ahead of the writer"
    );
    wal
}

#[test]
fn zeroed_tail_of_a_preallocated_segment_is_the_end_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 0);
    let segment = segment_path(dir.path(), &tp, 0);
    drop(write_prepared(dir.path(), &tp, 10)); // a crash: no close
    assert_zeros_from(&segment, data_end(10));
    let prepared_len = fs::metadata(&segment).unwrap().len();

    // Without index files too: the index is rebuilt by the same scan.
    for entry in fs::read_dir(segment.parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "index") {
            fs::remove_file(path).unwrap();
        }
    }
    let wal = WalManager::open(dir.path(), config()).unwrap();
    let report = wal.recovery_report();
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(report.stats.truncated_bytes, 0, "zeros are not a torn tail");
    assert!(broken_files(dir.path(), &tp).is_empty(), "nothing copied aside");
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        prepared_len,
        "the space is kept"
    );
    assert_eq!(wal.high_watermark(&tp).unwrap(), 10);
    assert_log(&wal, &tp, 10);

    // The next append overwrites the zeros right after the last frame.
    assert_eq!(
        wal.append(&tp, Batch::new(payload(10), 1, 0))
            .unwrap()
            .base_offset,
        10
    );
    let bytes = fs::read(&segment).unwrap();
    let at = data_end(10) as usize;
    assert_eq!(
        &bytes[at..at + 4],
        b"CKWF",
        "the frame lands at the end of the data"
    );
    assert_zeros_from(&segment, data_end(11));
    drop(wal);
    let wal = WalManager::open(dir.path(), config()).unwrap();
    assert_eq!(wal.recovery_report().stats.truncated_bytes, 0);
    assert_log(&wal, &tp, 11);
}

#[test]
fn torn_frame_followed_by_zeros_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 1);
    let segment = segment_path(dir.path(), &tp, 0);
    drop(write_prepared(dir.path(), &tp, 8));
    // A crash during the 9th write into prepared space: the first part of its frame reached the disk.
    let mut bytes = fs::read(&segment).unwrap();
    let torn_at = data_end(7) as usize;
    let frame_7: Vec<u8> = bytes[torn_at..data_end(8) as usize].to_vec();
    bytes[torn_at..data_end(8) as usize].fill(0);
    bytes[torn_at..torn_at + frame_7.len() / 2].copy_from_slice(&frame_7[..frame_7.len() / 2]);
    let len = bytes.len() as u64;
    fs::write(&segment, &bytes).unwrap();

    let wal = WalManager::open(dir.path(), config()).unwrap();
    let report = wal.recovery_report();
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(
        report.stats.truncated_bytes,
        len - torn_at as u64,
        "cut at the torn frame, zeros and all"
    );
    let broken = broken_files(dir.path(), &tp);
    assert_eq!(broken.len(), 1, "the torn bytes are kept aside");
    assert_eq!(
        fs::read(&broken[0]).unwrap(),
        frame_7[..frame_7.len() / 2],
        "the copy holds the torn bytes, not the zeros after them"
    );
    assert_eq!(fs::metadata(&segment).unwrap().len(), torn_at as u64);
    assert_log(&wal, &tp, 7);
    assert_eq!(
        wal.append(&tp, Batch::new(payload(7), 1, 0)).unwrap().base_offset,
        7
    );
    assert_log(&wal, &tp, 8);
}

#[test]
fn zeros_with_a_frame_fragment_after_them_are_a_torn_tail() {
    // A torn write whose first page was lost but a later one landed: not a clean zero tail.
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 2);
    let segment = segment_path(dir.path(), &tp, 0);
    drop(write_prepared(dir.path(), &tp, 5));
    let mut bytes = fs::read(&segment).unwrap();
    let end = data_end(5) as usize;
    bytes[end + 5000..end + 5100].fill(0x5a);
    let len = bytes.len() as u64;
    fs::write(&segment, &bytes).unwrap();
    let wal = WalManager::open(dir.path(), config()).unwrap();
    assert_eq!(wal.recovery_report().stats.truncated_bytes, len - end as u64);
    assert_eq!(broken_files(dir.path(), &tp).len(), 1);
    assert_log(&wal, &tp, 5);
}

#[test]
fn sealed_segments_hold_no_preallocated_space_and_zeros_in_one_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 3);
    let wal = write_prepared(dir.path(), &tp, 6);
    let first = segment_path(dir.path(), &tp, 0);
    assert!(
        fs::metadata(&first).unwrap().len() > data_end(6),
        "prepared before sealing"
    );
    wal.partition(&tp).unwrap().rotate().unwrap();
    assert_eq!(
        fs::metadata(&first).unwrap().len(),
        data_end(6),
        "sealing trims the segment to its last frame"
    );
    for i in 6..9 {
        wal.append(&tp, Batch::new(payload(i), 1, 0)).unwrap();
    }
    wal.close().unwrap();
    let wal = WalManager::open(dir.path(), config()).unwrap();
    assert_eq!(wal.recovery_report().stats.truncated_bytes, 0);
    assert_log(&wal, &tp, 9);
    let problems: Vec<String> = inspect::inspect(dir.path(), |_, _| {})
        .unwrap()
        .iter()
        .flat_map(|p| p.problems())
        .collect();
    assert!(problems.is_empty(), "verify is clean: {problems:?}");
    drop(wal);

    // Zeros after the last frame of a sealed segment cannot be preallocated space.
    let mut bytes = fs::read(&first).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    fs::write(&first, &bytes).unwrap();
    let wal = WalManager::open(dir.path(), config()).unwrap();
    assert_eq!(wal.recovery_report().corrupt.len(), 1, "reported as damage");
    assert!(matches!(
        wal.append(&tp, Batch::new(&b"x"[..], 1, 0)),
        Err(Error::Corrupt { .. })
    ));
    drop(wal);
    let reports = inspect::inspect(dir.path(), |_, _| {}).unwrap();
    let problems = reports[0].problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&format!(": {}: ", data_end(6))),
        "{problems:?}"
    );
}

#[test]
fn inspect_reports_a_zeroed_active_tail_as_clean_space() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 4);
    let wal = write_prepared(dir.path(), &tp, 4);
    wal.close().unwrap();
    let reports = inspect::inspect(dir.path(), |_, _| {}).unwrap();
    let segment = &reports[0].segments[0];
    assert_eq!(segment.problem, None);
    assert_eq!(segment.frames, 4);
    assert_eq!(segment.preallocated_bytes, segment.bytes - data_end(4));
    assert!(segment.preallocated_bytes > 0);
    let mut dumped = 0;
    let end = inspect::dump_segment(&segment_path(dir.path(), &tp, 0), 0, |_| {
        dumped += 1;
        true
    })
    .unwrap();
    assert_eq!((end, dumped), (None, 4), "dump ends cleanly at the zeros");
}

#[test]
fn checkpoint_and_rotation_work_over_preallocated_segments() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 5);
    let cfg = WalConfig {
        rotation: RotationConfig {
            max_segment_size: 16 * 1024,
            ..Default::default()
        },
        preallocate_bytes: 8 * 1024,
        ..config()
    };
    let n = 400;
    {
        let wal = WalManager::open(dir.path(), cfg.clone()).unwrap();
        wal.create_partition(&tp).unwrap();
        for i in 0..n / 2 {
            wal.append(&tp, Batch::new(payload(i), 1, 0)).unwrap();
        }
        wal.checkpoint().unwrap();
        for i in n / 2..n {
            wal.append(&tp, Batch::new(payload(i), 1, 0)).unwrap();
        }
        // Crash.
    }
    let wal = WalManager::open(dir.path(), cfg.clone()).unwrap();
    let report = wal.recovery_report();
    assert!(report.used_checkpoint);
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(report.stats.truncated_bytes, 0);
    assert!(report.stats.segments >= 4, "{} segments", report.stats.segments);
    assert_log(&wal, &tp, n);
    // Every sealed segment ends at its last frame: no zeros at all before the active one.
    let problems: Vec<String> = inspect::inspect(dir.path(), |_, _| {})
        .unwrap()
        .iter()
        .flat_map(|p| p.problems())
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
    let reports = inspect::inspect(dir.path(), |_, _| {}).unwrap();
    let (active, sealed) = reports[0].segments.split_last().unwrap();
    assert!(sealed.iter().all(|s| s.preallocated_bytes == 0));
    assert_eq!(active.problem, None);
}

/// Fails frame writes (non-zero buffers) after writing half of them, while `fail` is set.
#[derive(Debug)]
struct FailingIo {
    fail: Arc<AtomicBool>,
}

#[derive(Debug)]
struct FailingFile {
    inner: Arc<dyn WalFile>,
    fail: Arc<AtomicBool>,
}

impl WalIo for FailingIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(FailingFile {
            inner: StdIo.open(path, mode)?,
            fail: Arc::clone(&self.fail),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdIo.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        StdIo.list_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdIo.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdIo.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        StdIo.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdIo.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        StdIo.exists(path)
    }
    fn name(&self) -> &'static str {
        "failing"
    }
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        StdIo.lock_dir(path)
    }
}

impl WalFile for FailingFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) && buf.iter().any(|&b| b != 0) {
            self.inner.write_all_at(&buf[..buf.len() / 2], pos)?;
            return Err(io::Error::from_raw_os_error(5));
        }
        self.inner.write_all_at(buf, pos)
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn modified(&self) -> io::Result<std::time::SystemTime> {
        self.inner.modified()
    }
    fn set_modified(&self, time: std::time::SystemTime) -> io::Result<()> {
        self.inner.set_modified(time)
    }
}

#[test]
fn a_failed_write_into_prepared_space_is_erased_to_zeros_and_the_space_kept() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 6);
    let fail = Arc::new(AtomicBool::new(false));
    let io = Arc::new(FailingIo {
        fail: Arc::clone(&fail),
    });
    let segment = segment_path(dir.path(), &tp, 0);
    let wal = WalManager::open_with_io(dir.path(), config(), io.clone()).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..3 {
        p.append(Batch::new(payload(i), 1, 0)).unwrap();
    }
    assert!(p.wait_prepared(data_end(3) + PREALLOC / 2, PREPARE_TIMEOUT));
    let prepared_len = fs::metadata(&segment).unwrap().len();

    fail.store(true, Ordering::SeqCst);
    assert!(p.append(Batch::new(payload(3), 1, 0)).is_err());
    fail.store(false, Ordering::SeqCst);
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        prepared_len,
        "the prepared space is not given up"
    );
    assert_zeros_from(&segment, data_end(3));

    assert_eq!(p.append(Batch::new(payload(3), 1, 0)).unwrap().base_offset, 3);
    drop(p);
    drop(wal); // crash
    let wal = WalManager::open_with_io(dir.path(), config(), io).unwrap();
    assert_eq!(wal.recovery_report().stats.truncated_bytes, 0);
    assert!(broken_files(dir.path(), &tp).is_empty());
    assert_log(&wal, &tp, 4);
}

/// A partition written now and then gets no prepared space: only once it has taken
/// `preallocate_after_appends` appends.
#[test]
fn a_partition_is_given_prepared_space_only_after_its_first_appends() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 8);
    let cfg = WalConfig {
        preallocate_after_appends: 8,
        // The test runs the preparer's steps itself: what was asked for is exactly what runs.
        preallocate_manually: true,
        ..config()
    };
    let wal = WalManager::open(dir.path(), cfg).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    for i in 0..8 {
        p.append(Batch::new(payload(i), 1, 0)).unwrap();
    }
    assert_eq!(wal.run_preallocation(100), 0, "nothing asked for in 8 appends");
    assert!(p.prepared_len() <= data_end(8), "no zeros past the data");
    p.append(Batch::new(payload(8), 1, 0)).unwrap();
    assert!(wal.run_preallocation(100) > 0);
    assert!(p.prepared_len() >= data_end(9) + PREALLOC / 2);
}

#[test]
fn preallocation_never_reaches_past_the_segment_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 7);
    let cfg = WalConfig {
        rotation: RotationConfig {
            max_segment_size: 8 * 1024,
            ..Default::default()
        },
        ..config()
    };
    let wal = WalManager::open(dir.path(), cfg).unwrap();
    let p = wal.create_partition(&tp).unwrap();
    p.append(Batch::new(payload(0), 1, 0)).unwrap();
    assert!(p.wait_prepared(8 * 1024, PREPARE_TIMEOUT));
    assert_eq!(p.prepared_len(), 8 * 1024);
    assert_eq!(
        fs::metadata(segment_path(dir.path(), &tp, 0)).unwrap().len(),
        8 * 1024
    );
}

#[test]
fn zeros_below_the_checkpoint_are_lost_data_not_space() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 8);
    let segment = segment_path(dir.path(), &tp, 0);
    {
        let wal = write_prepared(dir.path(), &tp, 6);
        wal.checkpoint().unwrap();
        // Crash.
    }
    // The disk lost the last two checkpointed frames: zeros from there on.
    let mut bytes = fs::read(&segment).unwrap();
    bytes[data_end(4) as usize..].fill(0);
    fs::write(&segment, &bytes).unwrap();

    // With the index saved at the checkpoint, recovery does not re-read below it; reads catch the loss.
    let wal = WalManager::open(dir.path(), config()).unwrap();
    assert!(wal.recovery_report().used_checkpoint);
    let e = wal.read(&tp, 4, 1).unwrap_err();
    assert!(
        matches!(e, Error::Corrupt { position, .. } if position == data_end(4)),
        "{e}"
    );
    assert_eq!(
        wal.read(&tp, 0, 1).unwrap().len(),
        1,
        "frames before the loss still read"
    );
    drop(wal);

    // Without it, recovery scans from the start and finds zeros where the checkpoint vouches for frames.
    for entry in fs::read_dir(segment.parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "index") {
            fs::remove_file(path).unwrap();
        }
    }
    let wal = WalManager::open(dir.path(), config()).unwrap();
    let report = wal.recovery_report();
    assert!(report.used_checkpoint);
    assert_eq!(report.corrupt.len(), 1, "acknowledged frames are missing");
    assert_eq!(report.stats.truncated_bytes, 0, "nothing is cut");
    assert_eq!(
        wal.read(&tp, 0, u64::MAX).unwrap().len(),
        4,
        "served up to the damage"
    );
    assert!(matches!(
        wal.append(&tp, Batch::new(&b"x"[..], 1, 0)),
        Err(Error::Corrupt { position, .. }) if position == data_end(4)
    ));
}

#[test]
fn the_next_segment_file_is_prepared_ahead_and_used_at_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("p", 9);
    let cfg = WalConfig {
        rotation: RotationConfig {
            max_segment_size: 16 * 1024,
            ..Default::default()
        },
        preallocate_bytes: 8 * 1024,
        ..config()
    };
    let part = dir.path().join("partitions").join(tp.dir_name());
    let next = part.join("next-segment.tmp");
    {
        let wal = WalManager::open(dir.path(), cfg.clone()).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        // Close enough to the size limit that the space prepared ahead reaches it.
        let mut n = 0;
        while data_end(n) < 12 * 1024 {
            p.append(Batch::new(payload(n), 1, 0)).unwrap();
            n += 1;
        }
        assert!(p.wait_prepared(16 * 1024, PREPARE_TIMEOUT));
        assert_eq!(p.prepared_len(), 16 * 1024, "never past the limit");
        assert!(p.wait_next_segment_prepared(PREPARE_TIMEOUT));
        assert_eq!(fs::metadata(&next).unwrap().len(), 8 * 1024);
        assert_zeros_from(&next, 0);

        // Fill the segment until it rotates.
        let first_segment_frames = loop {
            let at = p.append(Batch::new(payload(n), 1, 0)).unwrap();
            n += 1;
            if segment_path(dir.path(), &tp, at.base_offset).exists() {
                break at.base_offset as usize;
            }
        };
        assert!(!next.exists(), "the prepared file became the new segment");
        let second = segment_path(dir.path(), &tp, first_segment_frames as i64);
        assert!(
            fs::metadata(&second).unwrap().len() >= 8 * 1024,
            "the new segment starts with its space prepared"
        );
        assert_zeros_from(
            &second,
            SEGMENT_HEADER_LEN as u64 + frame_len(first_segment_frames),
        );
        assert_eq!(
            fs::metadata(segment_path(dir.path(), &tp, 0)).unwrap().len(),
            data_end(first_segment_frames),
            "the sealed segment is trimmed"
        );
        assert_log(&wal, &tp, n);
        // Crash.
    }
    let wal = WalManager::open(dir.path(), cfg).unwrap();
    let report = wal.recovery_report();
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(report.stats.truncated_bytes, 0);
    assert!(
        wal.read(&tp, 0, u64::MAX).unwrap().len() >= 2,
        "the log reopens across the prepared segment"
    );
}

#[test]
fn preallocate_bytes_is_off_or_at_least_a_page() {
    let with = |preallocate_bytes| {
        WalConfig {
            preallocate_bytes,
            ..WalConfig::default()
        }
        .validate()
    };
    assert!(with(0).is_ok(), "0 turns preallocation off");
    assert!(with(4096).is_ok());
    assert!(matches!(with(100), Err(Error::InvalidArgument(_))));
    assert!(matches!(with(u64::MAX), Err(Error::InvalidArgument(_))));
}
