//! The harnesses of the WAL's fuzz targets (`fuzz/fuzz_targets/wal_frame.rs` and `wal_recovery.rs`). They
//! live in the library, not in `fuzz/`, so that `tests/fuzz_corpus.rs` replays the committed corpus and
//! every regression input through exactly the code the fuzzer runs, on every `cargo test`. Not part of
//! the WAL's API.
//!
//! - [`decoders`]: arbitrary bytes as a frame header (+ payload), segment header, index file and
//!   checkpoint file. Each decoder accepts or returns a typed error; what one accepts re-encodes to an
//!   equal value.
//! - [`recovery`]: arbitrary bytes as a whole partition directory (see [`Layout`]), recovered over the
//!   simulated disk ([`SimIo`], in memory, so runs are fast). Properties checked:
//!   - recovery does not panic (refusing the partition, or failing to open, is fine);
//!   - what it keeps reads back densely: the first batch at the log start offset, each next one where
//!     the previous ended, and the high watermark is the end of the last one;
//!   - every batch read back is a frame of the recovered segment files whose header and payload CRCs
//!     check, in file order (checked when no checkpoint vouched for unvalidated bytes);
//!   - no `*.tmp` file nor half-created partition survives recovery;
//!   - recovering the recovered directory again keeps the same log and cuts nothing;
//!   - an append to the recovered partition lands at its high watermark and is there, after the old
//!     log, when the directory is recovered once more.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    checkpoint,
    config::MAX_BATCH_BYTES_LIMIT,
    frame::{
        le_i64, le_u32, le_u64, FrameHeader, BASE_OFFSET_AT, FIRST_TS_AT, FRAME_HEADER_LEN, MAGIC_AT,
        MAX_TS_AT, PAYLOAD_LEN_AT, RECORD_COUNT_AT, SYNCED_POS_AT,
    },
    index::{IndexEntry, SparseIndex, INDEX_ENTRY_LEN},
    io::{OpenMode, SimIo, WalIo},
    segment::{
        check_segment_header, encode_segment_header, index_file_name, parse_segment_file_name,
        segment_file_name, NEXT_SEGMENT_FILE, SEGMENT_HEADER_LEN,
    },
    Batch, CheckpointConfig, CheckpointEntry, TopicPartition, WalConfig, WalManager,
};

// ---------------------------------------------------------------------------------------------------
// wal_frame

/// The `wal_frame` harness: `data` through every decoder of the on-disk format.
pub fn decoders(data: &[u8]) {
    if let Some(h) = data.first_chunk::<FRAME_HEADER_LEN>() {
        if let Ok(header) = FrameHeader::decode(h, MAX_BATCH_BYTES_LIMIT) {
            assert_eq!(
                &header.encode(),
                h,
                "an accepted frame header re-encodes to its bytes"
            );
            let payload = &data[FRAME_HEADER_LEN..];
            let payload = &payload[..payload.len().min(header.payload_len as usize)];
            let _ = header.verify_payload(payload);
        }
    }
    // Segment and index headers name their base offset at the same place; taking it from the input lets
    // a well-formed file be accepted.
    let base_offset = data.get(16..24).map_or(0, |b| le_i64(b, 0));
    let _ = check_segment_header(data, base_offset);
    for interval in [1, 4096] {
        if let Ok(index) = SparseIndex::decode(data, base_offset, interval) {
            assert_eq!(
                SparseIndex::decode(&index.encode(), base_offset, interval).as_ref(),
                Ok(&index),
                "an accepted index re-encodes to an equal index"
            );
            // Seeks stay within what the index covers.
            for probe in [i64::MIN, base_offset, index.next_offset, i64::MAX] {
                assert!(index.seek_offset(probe) <= index.covered_len.max(SEGMENT_HEADER_LEN as u64));
                assert!(index.seek_timestamp(probe) <= index.covered_len.max(SEGMENT_HEADER_LEN as u64));
            }
        }
    }
    if let Ok(entries) = checkpoint::decode(data) {
        assert_eq!(
            checkpoint::decode(&checkpoint::encode(&entries)).as_ref(),
            Ok(&entries),
            "an accepted checkpoint re-encodes to the same entries"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// wal_recovery: the input layout

/// Separates the files of a [`Layout`] in a `wal_recovery` input.
pub const SEPARATOR: &[u8] = b"\xfe\xfdFILE";
/// Files beyond this many are ignored: recovery cost stays proportional to the input.
pub const MAX_FILES: usize = 32;

/// `flags` bit: the WAL preallocates (4 KiB), so zeros after the last frame are kept as prepared space
/// rather than cut as a torn tail.
pub const PREALLOCATE: u8 = 1;
/// `flags` bit: an index entry every 64 bytes instead of every 4 KiB.
pub const SMALL_INDEX_INTERVAL: u8 = 2;
/// `flags` bit: batches of at most 1 KiB, so that longer frames are refused as too large.
pub const SMALL_BATCHES: u8 = 4;

/// The partition every layout describes.
pub fn partition() -> TopicPartition {
    TopicPartition::new("fuzz", 0)
}

/// Where the simulated WAL lives.
pub const ROOT: &str = "/wal";

/// What one chunk of a layout becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkKind {
    /// A segment file (named by the chunk's base offset) holding exactly the content.
    RawSegment = 0,
    /// A segment file: a valid header for the base offset, then the content.
    Segment = 1,
    /// As [`ChunkKind::Segment`], with the content's frames given valid CRCs (see [`reseal_frames`]), so
    /// that a mutated header field gets past the checksums to the checks behind them.
    ResealedSegment = 2,
    /// An index file (named by the base offset) holding exactly the content.
    RawIndex = 3,
    /// An index file with valid CRCs, built from fields in the content: covered_len u64, next_offset
    /// i64, max_timestamp i64, then entries of relative_offset u32, position u32, max_ts_before i64.
    Index = 4,
    /// The WAL's checkpoint file holding exactly the content.
    RawCheckpoint = 5,
    /// A checkpoint file with a valid CRC and one entry for the partition per 32 content bytes:
    /// segment_base i64, position u64, next_offset i64, max_timestamp i64.
    Checkpoint = 6,
    /// A leftover `next-segment.tmp` in the partition directory (an atomic write that never finished).
    TempFile = 7,
    /// A segment file (named by the base offset) in a half-created partition directory.
    Staging = 8,
}

impl ChunkKind {
    const ALL: [ChunkKind; 9] = [
        ChunkKind::RawSegment,
        ChunkKind::Segment,
        ChunkKind::ResealedSegment,
        ChunkKind::RawIndex,
        ChunkKind::Index,
        ChunkKind::RawCheckpoint,
        ChunkKind::Checkpoint,
        ChunkKind::TempFile,
        ChunkKind::Staging,
    ];

    /// Every byte names a kind, so that no mutation of it is wasted.
    fn from_byte(b: u8) -> Self {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    fn has_base_offset(self) -> bool {
        !matches!(
            self,
            ChunkKind::RawCheckpoint | ChunkKind::Checkpoint | ChunkKind::TempFile
        )
    }
}

/// One file of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub kind: ChunkKind,
    /// Names the segment or index file (ignored by the other kinds).
    pub base_offset: i64,
    pub content: Vec<u8>,
}

/// A partition directory (plus the WAL's checkpoint) described by a `wal_recovery` input:
///
/// ```text
/// input := flags chunk*
/// chunk := SEPARATOR kind base_offset content      (base_offset: i64 LE, only for kinds that name a file by it)
/// ```
///
/// `flags` is the first byte before the first separator (0 if none; later bytes there are ignored):
/// [`PREALLOCATE`], [`SMALL_INDEX_INTERVAL`], [`SMALL_BATCHES`]. A chunk runs to the next separator. A
/// later chunk naming the same file replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub flags: u8,
    pub chunks: Vec<Chunk>,
}

impl Layout {
    pub fn parse(data: &[u8]) -> Layout {
        let mut parts = split(data, SEPARATOR);
        let flags = parts.next().and_then(|p| p.first().copied()).unwrap_or(0);
        let chunks = parts
            .take(MAX_FILES)
            .filter_map(|part| {
                let (&kind, rest) = part.split_first()?;
                let kind = ChunkKind::from_byte(kind);
                let (base_offset, content) = if kind.has_base_offset() {
                    let (base, content) = rest.split_first_chunk::<8>()?;
                    (i64::from_le_bytes(*base), content)
                } else {
                    (0, rest)
                };
                Some(Chunk {
                    kind,
                    base_offset,
                    content: content.to_vec(),
                })
            })
            .collect();
        Layout { flags, chunks }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        for c in &self.chunks {
            out.extend_from_slice(SEPARATOR);
            out.push(c.kind as u8);
            if c.kind.has_base_offset() {
                out.extend_from_slice(&c.base_offset.to_le_bytes());
            }
            out.extend_from_slice(&c.content);
        }
        out
    }

    /// The WAL settings the flags select. Checkpoints are off (no background thread): recovery reads
    /// the checkpoint file whether or not the WAL writes new ones, and closing writes one anyway.
    pub fn config(&self) -> WalConfig {
        WalConfig {
            checkpoint: CheckpointConfig {
                enabled: false,
                ..Default::default()
            },
            preallocate_bytes: if self.flags & PREALLOCATE != 0 { 4096 } else { 0 },
            index_interval_bytes: if self.flags & SMALL_INDEX_INTERVAL != 0 {
                64
            } else {
                4096
            },
            max_batch_bytes: if self.flags & SMALL_BATCHES != 0 {
                1024
            } else {
                WalConfig::default().max_batch_bytes
            },
            // Deterministic: a case replays the same operations.
            recovery_threads: 1,
            ..Default::default()
        }
    }

    /// The files the layout describes, by path, and the staging directory if any file goes there.
    fn files(&self) -> (BTreeMap<PathBuf, Vec<u8>>, Option<PathBuf>) {
        let config = self.config();
        let pdir = partition_dir();
        let staging = Path::new(ROOT).join("partitions").join("fuzz-1.creating");
        let mut files = BTreeMap::new();
        let mut staging_used = false;
        for c in &self.chunks {
            let (path, bytes) = match c.kind {
                ChunkKind::RawSegment => (pdir.join(segment_file_name(c.base_offset)), c.content.clone()),
                ChunkKind::Segment | ChunkKind::ResealedSegment => {
                    let mut bytes = encode_segment_header(c.base_offset).to_vec();
                    bytes.extend_from_slice(&c.content);
                    if c.kind == ChunkKind::ResealedSegment {
                        reseal_frames(&mut bytes[SEGMENT_HEADER_LEN..]);
                    }
                    (pdir.join(segment_file_name(c.base_offset)), bytes)
                }
                ChunkKind::RawIndex => (pdir.join(index_file_name(c.base_offset)), c.content.clone()),
                ChunkKind::Index => (
                    pdir.join(index_file_name(c.base_offset)),
                    index_from_fields(c.base_offset, config.index_interval_bytes, &c.content).encode(),
                ),
                ChunkKind::RawCheckpoint => (checkpoint_path(), c.content.clone()),
                ChunkKind::Checkpoint => (
                    checkpoint_path(),
                    checkpoint::encode(&checkpoint_from_fields(&c.content)),
                ),
                ChunkKind::TempFile => (pdir.join(NEXT_SEGMENT_FILE), c.content.clone()),
                ChunkKind::Staging => {
                    staging_used = true;
                    (staging.join(segment_file_name(c.base_offset)), c.content.clone())
                }
            };
            files.insert(path, bytes);
        }
        (files, staging_used.then_some(staging))
    }

    /// Creates the layout's directories and files, all durable, on a fresh simulated disk.
    pub fn build(&self) -> io::Result<SimIo> {
        let sim = SimIo::new(0);
        sim.create_dir_all_durable(&partition_dir())?;
        let (files, staging) = self.files();
        if let Some(dir) = staging {
            sim.create_dir_all_durable(&dir)?;
        }
        for (path, bytes) in &files {
            let file = sim.open(path, OpenMode::CreateNew)?;
            file.write_all_at(bytes, 0)?;
            file.sync_data()?;
            sim.sync_dir(crate::io::parent(path))?;
        }
        Ok(sim)
    }
}

fn partition_dir() -> PathBuf {
    Path::new(ROOT).join("partitions").join(partition().dir_name())
}

fn checkpoint_path() -> PathBuf {
    Path::new(ROOT).join(checkpoint::CHECKPOINT_FILE)
}

/// The parts of `data` between occurrences of `sep` (the first one before any).
fn split<'a>(data: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(sep.len()).position(|w| w == sep) {
            Some(at) => {
                rest = Some(&r[at + sep.len()..]);
                Some(&r[..at])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Gives the frames laid back to back in `bytes` a valid magic, version, header CRC and payload CRC,
/// keeping their other fields; a length running past the end is cut to what is there. Stops at a
/// zero magic: zeros are preallocated space (or a torn tail), and stay as they are.
pub fn reseal_frames(bytes: &mut [u8]) {
    let mut pos = 0usize;
    while let Some(h) = bytes.get(pos..pos + FRAME_HEADER_LEN) {
        if le_u32(h, MAGIC_AT) == 0 {
            return;
        }
        let available = bytes.len() - pos - FRAME_HEADER_LEN;
        let payload_len = (le_u32(h, PAYLOAD_LEN_AT) as usize).min(available);
        let payload_at = pos + FRAME_HEADER_LEN;
        let header = FrameHeader {
            payload_len: payload_len as u32,
            record_count: le_u32(h, RECORD_COUNT_AT),
            base_offset: le_i64(h, BASE_OFFSET_AT),
            first_timestamp: le_i64(h, FIRST_TS_AT),
            max_timestamp: le_i64(h, MAX_TS_AT),
            synced_pos: le_u64(h, SYNCED_POS_AT),
            payload_crc: crc32c::crc32c(&bytes[payload_at..payload_at + payload_len]),
        };
        bytes[pos..payload_at].copy_from_slice(&header.encode());
        pos = payload_at + payload_len;
    }
}

fn index_from_fields(base_offset: i64, interval: u32, fields: &[u8]) -> SparseIndex {
    const HEAD: usize = 24;
    let mut head = [0u8; HEAD];
    let n = fields.len().min(HEAD);
    head[..n].copy_from_slice(&fields[..n]);
    let mut index = SparseIndex::new(base_offset, interval);
    index.covered_len = le_u64(&head, 0);
    index.next_offset = le_i64(&head, 8);
    index.max_timestamp = le_i64(&head, 16);
    index.entries = fields
        .get(HEAD..)
        .unwrap_or_default()
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|e| IndexEntry {
            relative_offset: le_u32(e, 0),
            position: le_u32(e, 4),
            max_ts_before: le_i64(e, 8),
        })
        .collect();
    index
}

fn checkpoint_from_fields(fields: &[u8]) -> Vec<CheckpointEntry> {
    fields
        .chunks_exact(32)
        .map(|f| CheckpointEntry {
            tp: partition(),
            segment_base: le_i64(f, 0),
            position: le_u64(f, 8),
            next_offset: le_i64(f, 16),
            max_timestamp: le_i64(f, 24),
        })
        .collect()
}

/// The chunks that rebuild the WAL directory at [`ROOT`] on `sim` (written by a real WAL): every
/// segment as [`ChunkKind::ResealedSegment`] (or raw, if its header is not valid), every index as raw
/// bytes and the checkpoint as raw bytes. For seed corpora.
pub fn chunks_of(sim: &SimIo) -> io::Result<Vec<Chunk>> {
    let pdir = partition_dir();
    let mut chunks = Vec::new();
    let mut names: Vec<String> = sim.list_dir(&pdir)?.into_iter().map(|e| e.name).collect();
    names.sort();
    for name in names {
        let bytes = crate::io::read_file(sim, &pdir.join(&name), u64::MAX)?;
        if let Some(base_offset) = parse_segment_file_name(&name) {
            let chunk = match check_segment_header(&bytes, base_offset) {
                Ok(()) => Chunk {
                    kind: ChunkKind::ResealedSegment,
                    base_offset,
                    content: bytes[SEGMENT_HEADER_LEN..].to_vec(),
                },
                Err(_) => Chunk {
                    kind: ChunkKind::RawSegment,
                    base_offset,
                    content: bytes,
                },
            };
            chunks.push(chunk);
        } else if let Some(base_offset) = crate::segment::parse_index_file_name(&name) {
            chunks.push(Chunk {
                kind: ChunkKind::RawIndex,
                base_offset,
                content: bytes,
            });
        }
    }
    if sim.exists(&checkpoint_path())? {
        chunks.push(Chunk {
            kind: ChunkKind::RawCheckpoint,
            base_offset: 0,
            content: crate::io::read_file(sim, &checkpoint_path(), u64::MAX)?,
        });
    }
    Ok(chunks)
}

// ---------------------------------------------------------------------------------------------------
// wal_recovery: the harness

/// A recovered partition as read back: what must not change when it is recovered again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    log_start_offset: i64,
    high_watermark: i64,
    /// (base offset, record count, payload) of every batch read, in order.
    batches: Vec<(i64, u32, Vec<u8>)>,
    /// Why reading stopped below the high watermark, if it did.
    stopped: Option<Stopped>,
    /// The damage recovery found, if it serves only up to it.
    corrupt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stopped {
    /// A read failed.
    Error(String),
    /// A read below the high watermark returned no batch.
    Empty { at: i64 },
    /// A batch did not start where the previous one ended.
    NotDense { expected: i64, found: i64 },
}

/// What one open of the simulated WAL saw.
struct Opened {
    /// `None`: the partition was refused (or the WAL did not open).
    snapshot: Option<Snapshot>,
    truncated_bytes: u64,
    /// Offset the extra batch was appended at, when one was asked for and accepted.
    appended_at: Option<i64>,
}

/// Payload of the batch appended after recovery.
const APPENDED: &[u8] = b"appended after recovery";

/// The `wal_recovery` harness, as the fuzz target and the corpus replay run it: the properties in the
/// module docs. `Err` only if the layout could not be written to the simulated disk (a harness bug, not a
/// finding); everything the WAL does wrong panics (or hangs).
///
/// When the input's checkpoint vouches for bytes the input forged (frames with valid CRCs whose offsets
/// do not follow, say), reads may legitimately find nothing or skip: what they find is then recorded and
/// compared between recoveries, not asserted. The WAL bugs it found are fixed; their inputs are in
/// `fuzz/regressions/wal_recovery/` (described in `fuzz/README.md`).
pub fn recovery(data: &[u8]) -> io::Result<()> {
    let layout = Layout::parse(data);
    let config = layout.config();
    let sim = layout.build()?;
    let read = if checkpoint_vouches(&sim) {
        ReadBack::Record
    } else {
        ReadBack::Strict
    };
    let first = open(&sim, &config, read, false);
    check_left_no_debris(&sim, first.snapshot.is_some())?;
    if let Some(s) = first.snapshot.as_ref().filter(|_| read == ReadBack::Strict) {
        let on_disk = valid_frames(&sim, config.max_batch_bytes)?;
        assert!(
            on_disk.starts_with(&s.batches),
            "recovery served batches that are not the valid frames on disk, in order:\nserved {:?}\non disk {:?}",
            s.batches,
            on_disk
        );
    }
    let second = open(&sim, &config, read, true);
    let third = open(&sim, &config, read, false);
    assert_eq!(
        first.snapshot, second.snapshot,
        "recovering a recovered partition changed it"
    );
    assert_eq!(
        second.truncated_bytes, 0,
        "recovering a recovered partition cut bytes"
    );
    match (second.snapshot, second.appended_at) {
        (Some(mut expected), Some(at)) => {
            expected.high_watermark = at + 1;
            if expected.stopped.is_none() {
                expected.batches.push((at, 1, APPENDED.to_vec()));
            }
            let third = third
                .snapshot
                .expect("a partition that took an append was refused when recovered again");
            if read == ReadBack::Strict {
                assert_eq!(
                    third, expected,
                    "a batch appended after recovery is not where it was acknowledged"
                );
            } else {
                assert_eq!(
                    third.high_watermark, expected.high_watermark,
                    "a batch appended after recovery was lost"
                );
            }
        }
        (expected, _) => assert_eq!(
            third.snapshot, expected,
            "recovering a partition that took no append changed it"
        ),
    }
    Ok(())
}

/// True if the checkpoint file on `sim` is valid and names the partition.
fn checkpoint_vouches(sim: &SimIo) -> bool {
    crate::io::read_file(sim, &checkpoint_path(), u64::MAX)
        .ok()
        .and_then(|bytes| checkpoint::decode(&bytes).ok())
        .is_some_and(|entries| entries.iter().any(|e| e.tp == partition()))
}

/// How a recovered partition is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadBack {
    /// Every byte was validated by recovery: reads must be dense and reach the high watermark.
    Strict,
    /// The input's checkpoint vouches for bytes recovery did not validate: what reads find is recorded.
    Record,
}

/// Opens the WAL on `sim`, reads the partition back, optionally appends one batch, and closes it.
fn open(sim: &SimIo, config: &WalConfig, read: ReadBack, append: bool) -> Opened {
    let tp = partition();
    let mut opened = Opened {
        snapshot: None,
        truncated_bytes: 0,
        appended_at: None,
    };
    let Ok(wal) = WalManager::open_with_io(ROOT, config.clone(), Arc::new(sim.clone())) else {
        return opened;
    };
    opened.truncated_bytes = wal.recovery_report().stats.truncated_bytes;
    if let Some(p) = wal.partition(&tp) {
        opened.snapshot = Some(read_back(&p, read));
        if append {
            let hw = p.high_watermark();
            if let Ok(at) = p.append(Batch::new(APPENDED, 1, 1)) {
                assert_eq!(at.base_offset, hw, "an append lands at the high watermark");
                opened.appended_at = Some(at.base_offset);
            }
        }
    }
    // A failed close loses nothing acknowledged (every append above was synced); the next open shows it.
    let _ = wal.close();
    opened
}

/// Reads the whole partition back.
fn read_back(p: &crate::PartitionWal, read: ReadBack) -> Snapshot {
    let log_start_offset = p.log_start_offset();
    let high_watermark = p.high_watermark();
    assert!(
        log_start_offset <= high_watermark,
        "log start offset {log_start_offset} is past the high watermark {high_watermark}"
    );
    let mut batches = Vec::new();
    let mut stopped = None;
    let mut next = log_start_offset;
    'reading: while next < high_watermark {
        let read = match p.read(next, 1 << 20) {
            Ok(read) if read.is_empty() => {
                stopped = Some(Stopped::Empty { at: next });
                break;
            }
            Ok(read) => read,
            Err(e) => {
                stopped = Some(Stopped::Error(e.to_string()));
                break;
            }
        };
        for b in read {
            if b.base_offset != next || b.record_count == 0 {
                stopped = Some(Stopped::NotDense {
                    expected: next,
                    found: b.base_offset,
                });
                break 'reading;
            }
            next = b.next_offset();
            batches.push((b.base_offset, b.record_count, b.payload.to_vec()));
        }
    }
    if read == ReadBack::Strict {
        assert_eq!(stopped, None, "reading back what recovery validated stopped");
        assert_eq!(
            next, high_watermark,
            "the high watermark is not the end of the last batch read"
        );
    }
    Snapshot {
        log_start_offset,
        high_watermark,
        batches,
        stopped,
        corrupt: p.corruption().map(|e| e.to_string()),
    }
}

/// Recovery removes unfinished atomic writes and half-created partitions.
fn check_left_no_debris(sim: &SimIo, opened: bool) -> io::Result<()> {
    if !opened {
        return Ok(());
    }
    let partitions = Path::new(ROOT).join("partitions");
    for entry in sim.list_dir(&partitions)? {
        assert!(!entry.name.ends_with(".creating"), "recovery left {}", entry.name);
    }
    for entry in sim.list_dir(&partition_dir())? {
        assert!(!entry.name.ends_with(".tmp"), "recovery left {}", entry.name);
    }
    Ok(())
}

/// The frames of the partition's segment files, in order, each segment up to its first frame whose
/// header or payload does not check: what a strict reader of the files finds.
fn valid_frames(sim: &SimIo, max_payload: u32) -> io::Result<Vec<(i64, u32, Vec<u8>)>> {
    let pdir = partition_dir();
    let mut bases: Vec<i64> = sim
        .list_dir(&pdir)?
        .iter()
        .filter_map(|e| parse_segment_file_name(&e.name))
        .collect();
    bases.sort_unstable();
    let mut out = Vec::new();
    for base in bases {
        let bytes = crate::io::read_file(sim, &pdir.join(segment_file_name(base)), u64::MAX)?;
        let mut pos = SEGMENT_HEADER_LEN;
        while let Some(h) = bytes.get(pos..).and_then(|b| b.first_chunk::<FRAME_HEADER_LEN>()) {
            let Ok(header) = FrameHeader::decode(h, max_payload) else {
                break;
            };
            let at = pos + FRAME_HEADER_LEN;
            let Some(payload) = bytes.get(at..at + header.payload_len as usize) else {
                break;
            };
            if header.verify_payload(payload).is_err() {
                break;
            }
            out.push((header.base_offset, header.record_count, payload.to_vec()));
            pos = at + payload.len();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let layout = Layout {
            flags: PREALLOCATE | SMALL_BATCHES,
            chunks: ChunkKind::ALL
                .iter()
                .enumerate()
                .map(|(i, &kind)| Chunk {
                    kind,
                    base_offset: if kind.has_base_offset() { i as i64 * 7 } else { 0 },
                    content: vec![i as u8; i * 3],
                })
                .collect(),
        };
        assert_eq!(Layout::parse(&layout.encode()), layout);
        assert_eq!(Layout::parse(b"").chunks, vec![]);
    }

    #[test]
    fn resealed_frames_decode() {
        let mut bytes = vec![0xAB; 200];
        bytes[..4].copy_from_slice(&[1, 2, 3, 4]);
        bytes[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 4].copy_from_slice(&10u32.to_le_bytes());
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&1u32.to_le_bytes());
        bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&5i64.to_le_bytes());
        reseal_frames(&mut bytes);
        let h = bytes
            .first_chunk::<FRAME_HEADER_LEN>()
            .map(|h| FrameHeader::decode(h, 1024));
        let Some(Ok(header)) = h else {
            panic!("resealed header does not decode: {h:?}")
        };
        assert_eq!((header.payload_len, header.base_offset), (10, 5));
        assert_eq!(
            header.verify_payload(&bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 10]),
            Ok(())
        );
    }
}
