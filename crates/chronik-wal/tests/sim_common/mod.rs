//! What the crash simulation tests share: the model of what a partition must and may hold after a power
//! cut, and the checks of an open partition against it.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use chronik_wal::{
    frame::{FrameHeader, FRAME_HEADER_LEN},
    index::SparseIndex,
    io::{
        read_file,
        sim::{SimIo, SimRng},
        OpenMode, WalIo,
    },
    segment::{parse_segment_file_name, segment_file_name, INDEX_SUFFIX},
    CheckpointConfig, PartitionWal, StoredBatch, TopicPartition, WalConfig, WalManager,
};

pub const ROOT: &str = "/data/wal";
pub const TOPIC: &str = "sim";

/// A batch the test submitted, as it must read back.
#[derive(Debug, Clone)]
pub struct Expected {
    pub payload: Bytes,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    /// Submitted with `base_offset_at: Some(8)`: the WAL writes the base offset into bytes 8..16.
    pub patched: bool,
}

impl Expected {
    pub fn matches(&self, b: &StoredBatch) -> bool {
        let mut payload = self.payload.to_vec();
        if self.patched {
            payload[8..16].copy_from_slice(&b.base_offset.to_be_bytes());
        }
        b.payload[..] == payload[..]
            && b.record_count == self.record_count
            && b.first_timestamp == self.first_timestamp
            && b.max_timestamp == self.max_timestamp
    }

    pub fn id(&self) -> u64 {
        u64::from_le_bytes(self.payload[..8].try_into().unwrap())
    }
}

/// What one partition must and may hold.
#[derive(Debug, Clone, Default)]
pub struct PartModel {
    pub log_start: i64,
    /// After a retention pass that failed part-way, the log may start anywhere up to here (a removal
    /// whose directory sync failed may or may not survive). Equals `log_start` otherwise.
    pub log_start_max: i64,
    /// Must survive anything: acknowledged after fdatasync, or kept (and synced) by a recovery.
    pub durable: BTreeMap<i64, Expected>,
    /// The append returned after the write only: present until a power cut, durable after a sync.
    pub written: BTreeMap<i64, Expected>,
    /// Everything submitted since the last recovery, by the offset it was given (a failed group's offsets
    /// are given again). A power cut may keep any of these, whole.
    pub submitted: BTreeMap<i64, Vec<Expected>>,
}

impl PartModel {
    pub fn new(log_start: i64) -> Self {
        Self {
            log_start,
            log_start_max: log_start,
            ..Default::default()
        }
    }

    /// Retention moved the log start to `start`: what lies below it is gone, legitimately.
    pub fn trim_below(&mut self, start: i64) {
        self.log_start = start;
        self.log_start_max = self.log_start_max.max(start);
        self.durable = self.durable.split_off(&start);
        self.written = self.written.split_off(&start);
        self.submitted = self.submitted.split_off(&start);
    }

    /// A failed fdatasync poisoned the partition, which cuts what was written without a sync (the page
    /// cache may hold bytes the disk lost): those appends are no longer promised, only allowed (the cut
    /// itself may have failed, leaving them for the reopen).
    pub fn poisoned(&mut self) {
        for (at, e) in std::mem::take(&mut self.written) {
            self.submitted.entry(at).or_default().push(e);
        }
    }

    /// A truncation to `at` returned: it synced everything written, then cut the log there.
    pub fn cut_from(&mut self, at: i64) {
        self.promote_written();
        self.durable.split_off(&at);
        self.submitted.split_off(&at);
    }

    /// A truncation to `at` failed: its sync may have failed (what was written without one is no longer
    /// promised), and the cut may have got anywhere from the old end down to `at`.
    pub fn cut_failed(&mut self, at: i64) {
        self.poisoned();
        for (o, e) in self.durable.split_off(&at) {
            self.submitted.entry(o).or_default().push(e);
        }
    }

    /// After a recovery that kept `batches` (checked against this model): they are durable, since
    /// recovery synced what it kept, and define the log.
    pub fn settle(&mut self, batches: &[StoredBatch]) {
        let mut durable = BTreeMap::new();
        for b in batches {
            let e = self
                .durable
                .get(&b.base_offset)
                .or_else(|| self.written.get(&b.base_offset))
                .or_else(|| self.submitted.get(&b.base_offset)?.iter().find(|e| e.matches(b)))
                .cloned()
                .unwrap();
            durable.insert(b.base_offset, e);
        }
        self.durable = durable;
        self.written.clear();
        self.submitted.clear();
    }

    /// An append returned: with `sync`, it and everything written before it are durable (one
    /// fdatasync covers the whole file; earlier segments were synced when sealed).
    pub fn acknowledge(&mut self, at: i64, e: Expected, sync: bool) {
        if sync {
            let later = self.written.split_off(&at);
            self.promote_written();
            self.written = later;
            self.durable.insert(at, e);
        } else {
            self.written.insert(at, e);
        }
    }

    /// A sync covering everything written so far returned.
    pub fn promote_written(&mut self) {
        self.durable.append(&mut self.written);
    }
}

/// How much a check may assume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// Between steps: every batch whose append returned is readable, and nothing else.
    Live,
    /// Recovered from files that saw no power cut: every batch whose append returned is there; a batch
    /// whose append failed may be too (its write may have reached the file before the error).
    Reopened,
    /// Recovered after a power cut: only what was acknowledged durable must be there.
    AfterPowerCut,
}

pub type Check = Result<(), String>;

pub fn tp(n: i32) -> TopicPartition {
    TopicPartition::new(TOPIC, n)
}

/// Checks one open partition against its model; returns how many batches it holds.
pub fn check_partition(
    sim: &SimIo,
    p: &PartitionWal,
    m: &PartModel,
    mode: CheckMode,
    index_interval: u32,
    rng: &mut SimRng,
) -> Result<u64, String> {
    if let Some(e) = p.corruption() {
        return Err(format!("corrupt after recovery: {e}"));
    }
    let start = p.log_start_offset();
    if start < m.log_start || start > m.log_start_max {
        return Err(format!(
            "log start {start} outside {}..={} (where creation and retention left it)",
            m.log_start, m.log_start_max
        ));
    }
    let batches = read_all(p)?;
    let hw = p.high_watermark();
    let mut next = start;
    for b in &batches {
        if b.base_offset != next {
            return Err(format!(
                "offsets not dense: expected a batch at {next}, found one at {}",
                b.base_offset
            ));
        }
        next = b.next_offset();
        let must = m.durable.get(&b.base_offset).or(m.written.get(&b.base_offset));
        let ok = match must {
            Some(e) => e.matches(b),
            None if mode == CheckMode::Live => false,
            None => m
                .submitted
                .get(&b.base_offset)
                .is_some_and(|c| c.iter().any(|e| e.matches(b))),
        };
        if !ok {
            return Err(format!(
                "batch at {} ({} B, {} records, id {:?}) is not what was {} there",
                b.base_offset,
                b.payload.len(),
                b.record_count,
                b.payload
                    .get(..8)
                    .map(|id| u64::from_le_bytes(id.try_into().unwrap())),
                if must.is_some() {
                    "acknowledged"
                } else {
                    "submitted"
                },
            ));
        }
    }
    if next != hw {
        return Err(format!("batches end at {next}, high watermark is {hw}"));
    }
    let present: BTreeSet<i64> = batches.iter().map(|b| b.base_offset).collect();
    let mut required: Vec<i64> = m.durable.range(start..).map(|(k, _)| *k).collect();
    if mode != CheckMode::AfterPowerCut {
        required.extend(m.written.range(start..).map(|(k, _)| *k));
    }
    if let Some(at) = required.iter().find(|at| !present.contains(at)) {
        return Err(format!(
            "acknowledged batch at {at} is missing (high watermark {hw})"
        ));
    }
    check_lookups(p, &batches, rng)?;
    check_index_files(sim, p.topic_partition(), index_interval)?;
    Ok(batches.len() as u64)
}

pub fn read_all(p: &PartitionWal) -> Result<Vec<StoredBatch>, String> {
    let hw = p.high_watermark();
    let mut next = p.log_start_offset();
    let mut out = Vec::new();
    while next < hw {
        let got = p
            .read(next, 64 << 10)
            .map_err(|e| format!("read at {next}: {e}"))?;
        let Some(last) = got.last() else {
            return Err(format!(
                "read at {next} below high watermark {hw} returned nothing"
            ));
        };
        next = last.next_offset();
        out.extend(got);
    }
    Ok(out)
}

/// Reads at each batch's first and last offset, and timestamp lookups, go through the sparse index.
pub fn check_lookups(p: &PartitionWal, batches: &[StoredBatch], rng: &mut SimRng) -> Check {
    for b in batches {
        for at in [b.base_offset, b.last_offset()] {
            let got = p.read(at, 0).map_err(|e| format!("read at {at}: {e}"))?;
            if got.first() != Some(b) {
                return Err(format!(
                    "read at {at} returned {:?} instead of the batch at {}",
                    got.first().map(|g| g.base_offset),
                    b.base_offset
                ));
            }
        }
    }
    let mut probes: Vec<i64> = (0..8)
        .filter_map(|_| batches.get(rng.below(batches.len() as u64 + 1) as usize))
        .map(|b| b.max_timestamp)
        .collect();
    probes.extend([i64::MIN, 0, i64::MAX]);
    if let Some(b) = batches.last() {
        probes.push(b.max_timestamp + 1);
    }
    for ts in probes {
        let want = batches
            .iter()
            .find(|b| b.max_timestamp >= ts)
            .map(|b| (b.base_offset, b.max_timestamp));
        let got = p
            .offset_for_timestamp(ts)
            .map_err(|e| format!("offset_for_timestamp({ts}): {e}"))?;
        if got != want {
            return Err(format!("offset_for_timestamp({ts}) = {got:?}, expected {want:?}"));
        }
    }
    Ok(())
}

/// Every index file decodes, belongs to a segment, and each entry names a frame that starts there with
/// the offset the entry says.
pub fn check_index_files(sim: &SimIo, tp: &TopicPartition, interval: u32) -> Check {
    let dir = PathBuf::from(ROOT).join("partitions").join(tp.dir_name());
    let names: Vec<String> = sim
        .list_dir(&dir)
        .map_err(|e| format!("listing {}: {e}", dir.display()))?
        .into_iter()
        .map(|e| e.name)
        .collect();
    for name in &names {
        let Some(digits) = name.strip_suffix(INDEX_SUFFIX) else {
            continue;
        };
        let base = parse_segment_file_name(&format!("{digits}.wal"))
            .ok_or(format!("index file {name} names no segment"))?;
        let seg_path = dir.join(segment_file_name(base));
        if !names.contains(&segment_file_name(base)) {
            return Err(format!("index file {name} has no segment"));
        }
        let bytes = read_file(sim, &dir.join(name), 1 << 30).map_err(|e| e.to_string())?;
        let index = SparseIndex::decode(&bytes, base, interval)
            .map_err(|k| format!("index file {name} does not decode: {k}"))?;
        let seg = sim
            .open(&seg_path, OpenMode::ReadOnly)
            .map_err(|e| e.to_string())?;
        let len = seg.size().map_err(|e| e.to_string())?;
        if index.covered_len > len {
            return Err(format!(
                "index {name} covers {} bytes of a {len}-byte segment",
                index.covered_len
            ));
        }
        for e in &index.entries {
            let mut h = [0u8; FRAME_HEADER_LEN];
            seg.read_exact_at(&mut h, u64::from(e.position))
                .map_err(|err| format!("index {name}: entry at {}: {err}", e.position))?;
            let header = FrameHeader::decode(&h, 8192)
                .map_err(|k| format!("index {name}: no frame at {}: {k}", e.position))?;
            if header.base_offset != base + i64::from(e.relative_offset) {
                return Err(format!(
                    "index {name}: entry at {} says offset {}, the frame there has {}",
                    e.position,
                    base + i64::from(e.relative_offset),
                    header.base_offset
                ));
            }
        }
    }
    Ok(())
}

pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

pub fn sim_config() -> WalConfig {
    WalConfig {
        checkpoint: CheckpointConfig {
            enabled: false,
            interval_ms: 1000,
        },
        // The preparer is a background thread: its timing is not the seed's. The threaded variant runs
        // with preallocation on.
        preallocate_bytes: 0,
        // A seed's power cut inside recovery must fall on the same operation every run.
        recovery_threads: 1,
        ..Default::default()
    }
}

/// A fresh simulated disk with the WAL root on it, the WAL open, and partition `tp(0)` created.
pub fn fresh_wal(seed: u64) -> (SimIo, WalManager) {
    let sim = SimIo::new(seed);
    sim.create_dir_all_durable(Path::new(ROOT)).unwrap();
    let wal = open_sim(&sim);
    wal.create_partition(&tp(0)).unwrap();
    (sim, wal)
}

pub fn open_sim(sim: &SimIo) -> WalManager {
    WalManager::open_with_io(ROOT, sim_config(), Arc::new(sim.clone())).unwrap()
}
