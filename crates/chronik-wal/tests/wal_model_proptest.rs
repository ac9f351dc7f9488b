//! The WAL against a model: random sequences of appends (synced or only written), reads, timestamp lookups,
//! rotations, checkpoints, clean reopens and simulated power cuts on one `WalManager` with 1-3 partitions
//! and small segments, checked after every step against an in-memory list of the batches each partition
//! should hold. Must hold: appends get dense offsets from the high watermark; reads return exactly the
//! stored batches with the `max_bytes` semantics documented on `PartitionWal::read`; a clean reopen keeps
//! everything; after a power cut every batch acknowledged with `Durability::Sync` (and everything before it)
//! survives byte for byte, of the unsynced suffix exactly the whole frames that lie before the first lost
//! byte survive, recovery cuts the segment file right after them, and nothing else is reported or kept.
//!
//! A power cut is simulated by dropping the manager without `close` and then, for each partition, damaging
//! the last segment file only past the point known durable (the file length after the last synced append,
//! rotation, clean reopen or recovery): truncating it, zeroing its tail, or zeroing a range and keeping later
//! frames (pages written back out of order). Sealed segments were synced when sealed and are left alone.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use chronik_wal::{
    frame::FRAME_HEADER_LEN,
    segment::{parse_segment_file_name, segment_file_name, SEGMENT_HEADER_LEN},
    Batch, CheckpointConfig, Durability, Error, PartitionWal, RotationConfig, StoredBatch, SyncPolicy,
    TopicPartition, WalConfig, WalManager,
};
use proptest::prelude::*;
use tempfile::TempDir;

const TOPIC: &str = "model";
const MAX_PARTITIONS: usize = 3;
const FRAME_HEADER_BYTES: u64 = FRAME_HEADER_LEN as u64;
const SEGMENT_HEADER_BYTES: u64 = SEGMENT_HEADER_LEN as u64;

/// Where a read starts, resolved against the log as it is when the read runs.
#[derive(Debug, Clone, Copy)]
enum ReadFrom {
    LogStart,
    /// An offset inside the log: this fraction (of `u16::MAX`) of the way to the high watermark.
    Inside(u16),
    LastOffset,
    HighWatermark,
    /// One past the high watermark: out of range.
    PastHighWatermark,
    /// Below the log start: out of range.
    Negative,
}

/// The `max_bytes` of a read.
#[derive(Debug, Clone, Copy)]
enum ReadBudget {
    Bytes(u64),
    /// The payload total of the first `batches` batches the read returns, plus `slack` (-1, 0 or 1): the
    /// edges where one more batch just fits or just does not.
    Fits {
        batches: u8,
        slack: i8,
    },
}

/// How a power cut loses the unsynced tail of a segment file.
#[derive(Debug, Clone, Copy)]
enum TailLoss {
    /// The file ends at the cut.
    Truncate,
    /// The length survived but the data from the cut on did not (reads back as zeros).
    ZeroToEnd,
    /// Some pages from the cut on were lost while later ones reached the disk.
    ZeroRange { len: u16 },
}

/// What a power cut does to one partition's last segment.
#[derive(Debug, Clone, Copy)]
struct PowerCut {
    /// Where the cut falls between the durable length and the current length, as a fraction of `u16::MAX`.
    keep: u16,
    loss: TailLoss,
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        partition: u8,
        payload_len: usize,
        payload_seed: u64,
        record_count: u32,
        first_timestamp: i64,
        timestamp_spread: i64,
        sync: bool,
    },
    Read {
        partition: u8,
        from: ReadFrom,
        max_bytes: ReadBudget,
    },
    OffsetForTimestamp {
        partition: u8,
        timestamp: i64,
    },
    Rotate {
        partition: u8,
    },
    Checkpoint,
    /// `close`, then open again.
    Reopen,
    /// Drop without `close`, lose unsynced bytes as described per partition, then open again.
    Crash {
        cuts: Vec<PowerCut>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    partitions: usize,
    max_segment_size: u64,
    index_interval_bytes: u32,
    ops: Vec<Op>,
}

fn read_from() -> impl Strategy<Value = ReadFrom> {
    prop_oneof![
        2 => Just(ReadFrom::LogStart),
        6 => any::<u16>().prop_map(ReadFrom::Inside),
        2 => Just(ReadFrom::LastOffset),
        2 => Just(ReadFrom::HighWatermark),
        1 => Just(ReadFrom::PastHighWatermark),
        1 => Just(ReadFrom::Negative),
    ]
}

fn max_bytes() -> impl Strategy<Value = ReadBudget> {
    prop_oneof![
        1 => Just(ReadBudget::Bytes(0)),
        1 => Just(ReadBudget::Bytes(1)),
        4 => (0u64..12_000).prop_map(ReadBudget::Bytes),
        2 => Just(ReadBudget::Bytes(u64::MAX)),
        4 => (1u8..12, -1i8..=1).prop_map(|(batches, slack)| ReadBudget::Fits { batches, slack }),
    ]
}

fn power_cut() -> impl Strategy<Value = PowerCut> {
    let loss = prop_oneof![
        3 => Just(TailLoss::Truncate),
        1 => Just(TailLoss::ZeroToEnd),
        2 => (1u16..4096).prop_map(|len| TailLoss::ZeroRange { len }),
    ];
    // Often nothing is lost: the page cache reached the disk before the power went.
    let keep = prop_oneof![1 => Just(u16::MAX), 3 => any::<u16>()];
    (keep, loss).prop_map(|(keep, loss)| PowerCut { keep, loss })
}

fn op() -> impl Strategy<Value = Op> {
    let append = (
        any::<u8>(),
        prop_oneof![1 => Just(0usize), 6 => 1usize..1000, 2 => 1000usize..3000],
        any::<u64>(),
        1u32..5,
        0i64..10_000,
        0i64..100,
        prop::bool::weighted(0.35),
    )
        .prop_map(
            |(
                partition,
                payload_len,
                payload_seed,
                record_count,
                first_timestamp,
                timestamp_spread,
                sync,
            )| {
                Op::Append {
                    partition,
                    payload_len,
                    payload_seed,
                    record_count,
                    first_timestamp,
                    timestamp_spread,
                    sync,
                }
            },
        );
    prop_oneof![
        12 => append,
        4 => (any::<u8>(), read_from(), max_bytes())
            .prop_map(|(partition, from, max_bytes)| Op::Read { partition, from, max_bytes }),
        1 => (any::<u8>(), -10i64..10_200)
            .prop_map(|(partition, timestamp)| Op::OffsetForTimestamp { partition, timestamp }),
        1 => any::<u8>().prop_map(|partition| Op::Rotate { partition }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        2 => prop::collection::vec(power_cut(), MAX_PARTITIONS).prop_map(|cuts| Op::Crash { cuts }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1..=MAX_PARTITIONS,
        prop::sample::select(vec![4096u64, 8192, 16384]),
        prop::sample::select(vec![64u32, 1024, 4096]),
        prop::collection::vec(op(), 1..80),
    )
        .prop_map(|(partitions, max_segment_size, index_interval_bytes, ops)| Case {
            partitions,
            max_segment_size,
            index_interval_bytes,
            ops,
        })
}

/// Deterministic payload bytes (xorshift64*) so a failing case prints small.
fn payload(seed: u64, len: usize) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A batch the model expects, and where its frame lies.
#[derive(Debug, Clone)]
struct ModelBatch {
    stored: StoredBatch,
    /// Base offset of the segment file holding the frame.
    segment: i64,
    /// Byte position just past the frame in that file.
    end: u64,
}

#[derive(Debug)]
struct PartitionModel {
    tp: TopicPartition,
    dir: PathBuf,
    batches: Vec<ModelBatch>,
    /// Bytes of the last segment file that are known durable: a power cut cannot take them.
    durable_len: u64,
    /// Every offset below this is durable: what `PartitionWal::synced_offset` must report.
    synced_next: i64,
}

impl PartitionModel {
    fn next_offset(&self) -> i64 {
        self.batches.last().map_or(0, |b| b.stored.next_offset())
    }

    /// What `read(from, max_bytes)` must return, following its documentation: the batch holding `from`,
    /// then following ones while the payload total stays within `max_bytes`; empty at the high watermark.
    fn expected_read(&self, from: i64, max_bytes: u64) -> Vec<StoredBatch> {
        let Some(first) = self
            .batches
            .iter()
            .position(|b| b.stored.base_offset <= from && from < b.stored.next_offset())
        else {
            return Vec::new();
        };
        let mut out = vec![self.batches[first].stored.clone()];
        let mut used = self.batches[first].stored.payload.len() as u64;
        for b in &self.batches[first + 1..] {
            let len = b.stored.payload.len() as u64;
            if used + len > max_bytes {
                break;
            }
            used += len;
            out.push(b.stored.clone());
        }
        out
    }
}

/// The segment file with the highest base offset in a partition directory, and its length.
fn last_segment(dir: &Path) -> (i64, u64) {
    let base = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| parse_segment_file_name(&e.unwrap().file_name().to_string_lossy()))
        .max()
        .expect("a partition directory holds at least one segment");
    let len = fs::metadata(dir.join(segment_file_name(base))).unwrap().len();
    (base, len)
}

struct Harness {
    root: TempDir,
    config: WalConfig,
    wal: Option<WalManager>,
    parts: Vec<PartitionModel>,
}

impl Harness {
    fn new(case: &Case) -> Self {
        let root = tempfile::tempdir().unwrap();
        let config = WalConfig {
            rotation: RotationConfig {
                max_segment_size: case.max_segment_size,
                ..Default::default()
            },
            checkpoint: CheckpointConfig {
                enabled: false,
                ..Default::default()
            },
            sync_policy: SyncPolicy::Always,
            index_interval_bytes: case.index_interval_bytes,
            // The model predicts each segment's file length from its frames: no preallocated space.
            preallocate_bytes: 0,
            ..Default::default()
        };
        let wal = common::open_wal(root.path(), config.clone()).unwrap();
        let parts = (0..case.partitions)
            .map(|p| {
                let tp = TopicPartition::new(TOPIC, p as i32);
                let partition = wal.create_partition(&tp).unwrap();
                PartitionModel {
                    dir: partition.dir().to_path_buf(),
                    tp,
                    batches: Vec::new(),
                    durable_len: SEGMENT_HEADER_BYTES,
                    synced_next: 0,
                }
            })
            .collect();
        Self {
            root,
            config,
            wal: Some(wal),
            parts,
        }
    }

    fn wal(&self) -> &WalManager {
        self.wal.as_ref().expect("the manager is open between steps")
    }

    fn model(&self, partition: u8) -> usize {
        usize::from(partition) % self.parts.len()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append {
                partition,
                payload_len,
                payload_seed,
                record_count,
                first_timestamp,
                timestamp_spread,
                sync,
            } => {
                let i = self.model(partition);
                let batch = Batch {
                    payload: payload(payload_seed, payload_len),
                    record_count,
                    first_timestamp,
                    max_timestamp: first_timestamp + timestamp_spread,
                };
                self.append(i, batch, sync);
            }
            Op::Read {
                partition,
                from,
                max_bytes,
            } => self.check_read(self.model(partition), from, max_bytes),
            Op::OffsetForTimestamp { partition, timestamp } => {
                self.check_offset_for_timestamp(self.model(partition), timestamp)
            }
            Op::Rotate { partition } => self.rotate(self.model(partition)),
            Op::Checkpoint => {
                let summary = self.wal().checkpoint().unwrap();
                assert_eq!(
                    summary.partitions,
                    self.parts.len(),
                    "a checkpoint covers every partition"
                );
            }
            Op::Reopen => self.reopen(),
            Op::Crash { ref cuts } => self.crash(cuts),
        }
        for i in 0..self.parts.len() {
            self.check_offsets(i);
        }
    }

    fn append(&mut self, i: usize, batch: Batch, sync: bool) {
        let m = &self.parts[i];
        let partition = self.wal().partition(&m.tp).unwrap();
        let (segment_before, _) = last_segment(&m.dir);
        let durability = if sync {
            Durability::Sync
        } else {
            Durability::Written
        };
        let at = partition.append_with(batch.clone(), durability).unwrap();
        let m = &mut self.parts[i];
        let base_offset = m.next_offset();
        assert_eq!(
            at.base_offset, base_offset,
            "{}: offsets continue densely from the high watermark",
            m.tp
        );
        assert_eq!(at.last_offset, base_offset + i64::from(batch.record_count) - 1);
        let (segment, len) = last_segment(&m.dir);
        let start = m
            .batches
            .last()
            .filter(|b| b.segment == segment)
            .map_or(SEGMENT_HEADER_BYTES, |b| b.end);
        assert_eq!(
            len,
            start + FRAME_HEADER_BYTES + batch.payload.len() as u64,
            "{}: the frame is written right after the previous one in segment {segment}",
            m.tp
        );
        if sync {
            // fdatasync covered every byte written to this segment so far.
            m.durable_len = len;
            m.synced_next = base_offset + i64::from(batch.record_count);
        } else if segment != segment_before {
            // The append rotated: the old segment was sealed (synced) and only the new header is durable.
            m.durable_len = SEGMENT_HEADER_BYTES;
            m.synced_next = base_offset;
        }
        m.batches.push(ModelBatch {
            stored: StoredBatch {
                base_offset,
                record_count: batch.record_count,
                first_timestamp: batch.first_timestamp,
                max_timestamp: batch.max_timestamp,
                payload: batch.payload,
            },
            segment,
            end: len,
        });
    }

    fn rotate(&mut self, i: usize) {
        let m = &self.parts[i];
        let (segment_before, _) = last_segment(&m.dir);
        let active_has_frames = m.batches.last().is_some_and(|b| b.segment == segment_before);
        self.wal().partition(&m.tp).unwrap().rotate().unwrap();
        let m = &mut self.parts[i];
        let (segment, len) = last_segment(&m.dir);
        if active_has_frames {
            assert_eq!(
                (segment, len),
                (m.next_offset(), SEGMENT_HEADER_BYTES),
                "{}: rotate starts an empty segment at the high watermark",
                m.tp
            );
            m.durable_len = SEGMENT_HEADER_BYTES;
            m.synced_next = m.next_offset();
        } else {
            assert_eq!(
                segment, segment_before,
                "{}: rotating an empty segment does nothing",
                m.tp
            );
        }
    }

    fn check_offsets(&self, i: usize) {
        let m = &self.parts[i];
        let partition = self.wal().partition(&m.tp).unwrap();
        assert_eq!(
            partition.high_watermark(),
            m.next_offset(),
            "{}: high watermark",
            m.tp
        );
        assert_eq!(partition.log_start_offset(), 0, "{}: log start offset", m.tp);
        assert_eq!(
            partition.synced_offset(),
            m.synced_next,
            "{}: synced offset (high watermark {})",
            m.tp,
            m.next_offset()
        );
    }

    fn check_read(&self, i: usize, from: ReadFrom, max_bytes: ReadBudget) {
        let m = &self.parts[i];
        let hw = m.next_offset();
        let from = match from {
            ReadFrom::LogStart => 0,
            ReadFrom::Inside(f) => hw * i64::from(f) / (i64::from(u16::MAX) + 1),
            ReadFrom::LastOffset => (hw - 1).max(0),
            ReadFrom::HighWatermark => hw,
            ReadFrom::PastHighWatermark => hw + 1,
            ReadFrom::Negative => -1,
        };
        let max_bytes = match max_bytes {
            ReadBudget::Bytes(n) => n,
            ReadBudget::Fits { batches, slack } => {
                let fits: u64 = m
                    .batches
                    .iter()
                    .filter(|b| b.stored.next_offset() > from)
                    .take(usize::from(batches))
                    .map(|b| b.stored.payload.len() as u64)
                    .sum();
                fits.saturating_add_signed(i64::from(slack))
            }
        };
        let got = self.wal().read(&m.tp, from, max_bytes);
        if !(0..=hw).contains(&from) {
            assert!(
                matches!(got, Err(Error::OffsetOutOfRange { offset, .. }) if offset == from),
                "{}: read({from}) outside 0..={hw} must be OffsetOutOfRange, got {got:?}",
                m.tp
            );
            return;
        }
        let got = got.unwrap();
        let want = m.expected_read(from, max_bytes);
        assert!(
            got == want,
            "{}: read(from {from}, max_bytes {max_bytes}) with high watermark {hw}:\n got  {}\n want {}",
            m.tp,
            describe(&got),
            describe(&want)
        );
    }

    fn check_offset_for_timestamp(&self, i: usize, timestamp: i64) {
        let m = &self.parts[i];
        let want = m
            .batches
            .iter()
            .find(|b| b.stored.max_timestamp >= timestamp)
            .map(|b| (b.stored.base_offset, b.stored.max_timestamp));
        let got = self.wal().offset_for_timestamp(&m.tp, timestamp).unwrap();
        assert_eq!(
            got, want,
            "{}: offset_for_timestamp({timestamp}) is the first batch whose max timestamp reaches it",
            m.tp
        );
    }

    /// Reads each whole partition in one call and compares it with the model.
    fn check_everything(&self) {
        for m in &self.parts {
            let got = self.wal().read(&m.tp, 0, u64::MAX).unwrap();
            let want: Vec<StoredBatch> = m.batches.iter().map(|b| b.stored.clone()).collect();
            assert!(
                got == want,
                "{}: whole log:\n got  {}\n want {}",
                m.tp,
                describe(&got),
                describe(&want)
            );
        }
    }

    fn open(&mut self) {
        let wal = common::open_wal(self.root.path(), self.config.clone()).unwrap();
        let report = wal.recovery_report().clone();
        assert!(
            report.corrupt.is_empty(),
            "losing unsynced bytes is not corruption: {:?}",
            report.corrupt
        );
        assert_eq!(report.partitions, self.parts.len());
        self.wal = Some(wal);
    }

    fn reopen(&mut self) {
        self.wal.take().unwrap().close().unwrap();
        self.open();
        assert_eq!(
            self.wal().recovery_report().stats.truncated_bytes,
            0,
            "after a clean close recovery truncates nothing"
        );
        for m in &mut self.parts {
            m.durable_len = last_segment(&m.dir).1;
            m.synced_next = m.next_offset();
        }
        self.check_everything();
    }

    fn crash(&mut self, cuts: &[PowerCut]) {
        drop(self.wal.take());
        let mut expected_truncation = 0;
        let mut expected_lens = Vec::new();
        for (m, cut) in self.parts.iter_mut().zip(cuts) {
            let (segment, len) = last_segment(&m.dir);
            assert!(m.durable_len <= len, "{}: durable length past the end", m.tp);
            let at = m.durable_len + (len - m.durable_len) * u64::from(cut.keep) / u64::from(u16::MAX);
            let path = m.dir.join(segment_file_name(segment));
            let first_lost = lose_tail(&path, at, len, cut.loss);
            // Whole frames before the first lost byte survive; recovery cuts the file right after them.
            let survivors = m
                .batches
                .iter()
                .take_while(|b| b.segment < segment || b.end <= first_lost)
                .count();
            m.batches.truncate(survivors);
            let new_len = m
                .batches
                .last()
                .filter(|b| b.segment == segment)
                .map_or(SEGMENT_HEADER_BYTES, |b| b.end);
            let len_on_disk = fs::metadata(&path).unwrap().len();
            expected_truncation += len_on_disk - new_len;
            expected_lens.push((path, new_len));
        }
        self.open();
        assert_eq!(
            self.wal().recovery_report().stats.truncated_bytes,
            expected_truncation,
            "recovery cuts exactly the damaged tails"
        );
        for (m, (path, new_len)) in self.parts.iter_mut().zip(expected_lens) {
            let len = fs::metadata(&path).unwrap().len();
            assert_eq!(
                len,
                new_len,
                "{}: recovery cuts {} right after the last whole frame",
                m.tp,
                path.display()
            );
            // Recovery synced what it kept.
            m.durable_len = len;
            m.synced_next = m.next_offset();
        }
        self.check_everything();
    }
}

/// Applies a power cut's loss to `path` from byte `at` (current length `len`). Returns the first byte whose
/// content changed (`len` if none did): a zeroed byte that already was zero is no loss.
fn lose_tail(path: &Path, at: u64, len: u64, loss: TailLoss) -> u64 {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let zero_to = match loss {
        TailLoss::Truncate => {
            file.set_len(at).unwrap();
            return at;
        }
        TailLoss::ZeroToEnd => len,
        TailLoss::ZeroRange { len: n } => (at + u64::from(n)).min(len),
    };
    let mut old = vec![0u8; (zero_to - at) as usize];
    file.read_exact_at(&mut old, at).unwrap();
    file.write_all_at(&vec![0u8; old.len()], at).unwrap();
    old.iter().position(|&b| b != 0).map_or(len, |i| at + i as u64)
}

/// A compact rendering of batches for failure messages: `[base+count:payload_len]`.
fn describe(batches: &[StoredBatch]) -> String {
    let items: Vec<String> = batches
        .iter()
        .map(|b| format!("{}+{}:{}", b.base_offset, b.record_count, b.payload.len()))
        .collect();
    format!("[{}]", items.join(" "))
}

/// The model's reading of the `max_bytes` rule, pinned on the smallest cases proptest found. The budget
/// counts payload bytes: once it is used up exactly, a following zero-length batch still fits; once the
/// first batch alone exceeds it, nothing follows, not even a zero-length batch. Segment boundaries are
/// invisible to readers, so both hold whether the next batch lies in the same segment or the next one.
#[test]
fn read_budget_treats_zero_length_batches_alike_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::open_wal(dir.path(), WalConfig::default()).unwrap();
    let offsets = |partition: &PartitionWal, from| -> Vec<i64> {
        let batches = partition.read(from, 0).unwrap();
        batches.iter().map(|b| b.base_offset).collect()
    };

    let exact = wal.create_partition(&TopicPartition::new(TOPIC, 0)).unwrap();
    exact.append(Batch::new(Bytes::new(), 1, 0)).unwrap();
    exact.append(Batch::new(Bytes::new(), 1, 0)).unwrap();
    exact.rotate().unwrap();
    exact.append(Batch::new(Bytes::new(), 1, 0)).unwrap();
    assert_eq!(
        offsets(&exact, 1),
        vec![1, 2],
        "budget used up exactly: an empty batch after a rotation fits"
    );
    assert_eq!(
        offsets(&exact, 0),
        vec![0, 1, 2],
        "budget used up exactly: empty batches fit"
    );

    let over = wal.create_partition(&TopicPartition::new(TOPIC, 1)).unwrap();
    over.append(Batch::new(&b"xy"[..], 1, 0)).unwrap();
    over.rotate().unwrap();
    over.append(Batch::new(Bytes::new(), 1, 0)).unwrap();
    assert_eq!(
        offsets(&over, 0),
        vec![0],
        "first batch over budget: nothing follows it"
    );
    wal.close().unwrap();
}

proptest! {
    // 64 cases by default; PROPTEST_CASES overrides it.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn wal_behaves_like_the_model(case in case()) {
        let mut h = Harness::new(&case);
        for op in &case.ops {
            h.apply(op);
        }
        h.reopen();
    }
}
