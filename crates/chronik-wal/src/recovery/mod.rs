//! Recovery of one partition directory: discover segments, validate frames from the checkpoint on, rebuild
//! missing or stale indexes, truncate a torn tail, and decide what to do with damage.
//!
//! What is found at a bad frame maps to one [`Decision`] in [`decide`]:
//!
//! | bad frame is in  | below checkpoint | only zeros from it to the end | a later frame proves it was synced | decision       |
//! |------------------|------------------|-------------------------------|------------------------------------|----------------|
//! | a sealed segment | any              | any                           | any                                | `Refuse`       |
//! | the last segment | yes              | any                           | any                                | `Refuse`       |
//! | the last segment | no               | yes                           | (cannot: nothing follows)          | `EndOfData`    |
//! | the last segment | no               | no                            | yes                                | `Refuse`       |
//! | the last segment | no               | no                            | no                                 | `TruncateTail` |
//!
//! A zero tail in the last segment is space preallocated ahead of the writer (see `prealloc.rs`): the log
//! ends there and the space is kept for the appends to come. (With `preallocate_bytes = 0` zeros are not
//! expected, and recovery classifies them as before: a torn tail, cut.) Sealed segments are trimmed to their last
//! frame when sealed, so zeros at the end of one are lost data. A torn tail is the normal result of a
//! crash during a write that was never acknowledged (the group leader had not finished fdatasync). Everything else is damage to acknowledged data: the partition serves
//! the log up to the damage and refuses reads past it and all appends, with an error naming file and byte.
//!
//! One leftover is not damage: an empty last segment whose base offset the segment before it has reached
//! may be a failed rotation's new segment, whose removal a power cut undid, with the segment before it
//! still the active one. That one is then judged as the last segment, and the empty one is removed if
//! the log went past its base offset ([`judge_segment`]).
//!
//! Each segment's saved index is trusted, rewound to the checkpoint, verified by a scan or rebuilt
//! ([`decide_index`]), and written again where recovery found another and the segment stays sealed
//! ([`decide_index_file`]). The tables and their tests are in `table.rs`; this file gathers the facts and
//! carries the decisions out.

mod table;

use std::{
    cmp::Ordering,
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::RwLock;
use tracing::warn;

use crate::{
    error::CorruptionKind,
    frame::{FrameHeader, FRAME_HEADER_LEN},
    index::SparseIndex,
    io::{read_file, OpenMode, WalFile, WalIo},
    partition::{CheckpointEntry, Mark, Recovered},
    segment::{
        check_segment_header, find_durability_proof, index_file_name, parse_index_file_name,
        parse_segment_file_name, scan_frames, segment_file_name, Segment, BROKEN_SUFFIX, INDEX_SUFFIX,
        SEGMENT_HEADER_LEN,
    },
    terms::TermMap,
    Error, Result, WalContext,
};

/// Most bytes of a cut tail copied aside for post-mortem.
const MAX_BROKEN_COPY: u64 = 16 << 20;
/// Index files are far smaller than this; a larger one is damaged.
const MAX_INDEX_FILE: u64 = 256 << 20;

pub use table::{
    decide, decide_index, decide_index_file, judge_segment, BadFrameSite, Coverage, Decision, IndexDecision,
    IndexFileDecision, NextSegment, RecoveredIndexFacts, SavedIndexFacts, SegmentRole,
};

/// Counters of one recovery, summed over partitions in the manager's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub segments: u64,
    /// Bytes read from segment files to validate frames.
    pub bytes_scanned: u64,
    pub frames_scanned: u64,
    pub truncated_bytes: u64,
    pub indexes_rebuilt: u64,
}

impl RecoveryStats {
    pub(crate) fn add(&mut self, other: &RecoveryStats) {
        self.segments += other.segments;
        self.bytes_scanned += other.bytes_scanned;
        self.frames_scanned += other.frames_scanned;
        self.truncated_bytes += other.truncated_bytes;
        self.indexes_rebuilt += other.indexes_rebuilt;
    }
}

/// Recovers the partition in `dir`. `checkpoint` is this partition's entry of the last checkpoint, if any.
/// `after_failure`: the partition is reloaded in a running process after a failed operation (a reopen, a
/// truncation), whose failed fdatasync may have dropped a length change the page cache still shows; the
/// last segment's length is then set again before it is synced.
pub(crate) fn recover_partition(
    ctx: &WalContext,
    dir: &Path,
    checkpoint: Option<&CheckpointEntry>,
    after_failure: bool,
) -> Result<(Recovered, RecoveryStats)> {
    let io = &*ctx.io;
    let cfg = &ctx.config;
    let mut stats = RecoveryStats::default();
    let mut bases = Vec::new();
    let mut index_bases = Vec::new();
    // What this listing shows becomes the log, so make it durable first: a removal or creation still in
    // the page cache (retention or a rotation that failed at its directory sync) must not be adopted now
    // and undone by a later power cut.
    io.sync_dir(dir)
        .map_err(|e| Error::io("syncing directory", dir, e))?;
    for entry in io.list_dir(dir).map_err(|e| Error::io("listing", dir, e))? {
        if let Some(base) = parse_segment_file_name(&entry.name) {
            bases.push(base);
        } else if let Some(base) = parse_index_file_name(&entry.name) {
            index_bases.push(base);
        } else if entry.name.ends_with(".tmp") {
            // An atomic write that never reached its rename: it was never part of the log.
            let path = dir.join(&entry.name);
            io.remove_file(&path)
                .map_err(|e| Error::io("removing", &path, e))?;
        }
    }
    bases.sort_unstable();
    let Some(&first_base) = bases.first() else {
        return Err(Error::corrupt(
            dir,
            0,
            CorruptionKind::MissingSegment { base_offset: 0 },
        ));
    };
    // Retention removes a segment, then its index: a crash between the two leaves the index behind.
    for base in index_bases.into_iter().filter(|b| *b < first_base) {
        let path = dir.join(index_file_name(base));
        io.remove_file(&path)
            .map_err(|e| Error::io("removing", &path, e))?;
    }
    let missing =
        |c: &&CheckpointEntry| c.segment_base >= first_base && bases.binary_search(&c.segment_base).is_err();
    if let Some(c) = checkpoint.filter(missing) {
        // The checkpoint vouches for a segment that is not there: acknowledged data was lost outside the
        // WAL. (Retention deletes it only below the first segment, when checkpoints are off and it runs
        // ahead of them; a failed rotation's leftover is never it, see below.) Checked before any segment
        // is judged, so that the answer does not depend on which later segments recovery removes.
        let path = dir.join(segment_file_name(c.segment_base));
        return Err(Error::corrupt(
            path,
            0,
            CorruptionKind::MissingSegment {
                base_offset: c.segment_base,
            },
        ));
    }

    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
    let mut corrupt: Option<(PathBuf, u64, CorruptionKind)> = None;
    let mut active_file_len = 0;
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment_file_name(base));
        let file = ctx
            .files
            .open(&path, OpenMode::ReadWrite)
            .map_err(|e| Error::io("opening", &path, e))?;
        let len = file
            .size()
            .map_err(|e| Error::io("reading length of", &path, e))?;
        let mut file_len = len;
        stats.segments += 1;

        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let header_ok = len >= SEGMENT_HEADER_LEN as u64
            && file.read_exact_at(&mut header, 0).is_ok()
            && check_segment_header(&header, base).is_ok();
        let expected = segments.last().map_or(base, |s| s.next_offset());
        if !header_ok || base != expected {
            let kind = if header_ok {
                CorruptionKind::OffsetGap {
                    expected,
                    found: base,
                }
            } else {
                CorruptionKind::BadSegmentHeader
            };
            corrupt = Some((path, 0, kind));
            break;
        }

        // Bytes below `trusted_len` were durable at the last checkpoint.
        let trusted_len = match checkpoint {
            Some(c) if base < c.segment_base => len,
            Some(c) if base == c.segment_base => c.position,
            _ => SEGMENT_HEADER_LEN as u64,
        };
        if trusted_len > len {
            let kind = CorruptionKind::Truncated {
                needed: trusted_len,
                available: len,
            };
            corrupt = Some((path, len, kind));
            break;
        }

        let index_path = dir.join(index_file_name(base));
        let next_base = bases.get(i + 1).copied();
        let checkpoint_here = checkpoint.filter(|c| c.segment_base == base);
        let saved_index = load_index(io, &index_path, base, cfg.index_interval_bytes);
        let had_index_file = io.exists(&index_path).unwrap_or(false);
        let index_decision = decide_index(
            saved_index
                .as_ref()
                .map(|idx| saved_index_facts(idx, next_base, checkpoint_here, trusted_len)),
        );
        // What the scan's result is compared with: the index file, unless it was rebuilt.
        let baseline = match index_decision {
            IndexDecision::Trust | IndexDecision::RewindToCheckpoint | IndexDecision::Rescan => saved_index,
            IndexDecision::Rebuild => None,
        };
        let mut index = match (index_decision, &baseline) {
            (IndexDecision::Trust, Some(idx)) => idx.clone(),
            (IndexDecision::RewindToCheckpoint, Some(idx)) => idx.rewind(trusted_len),
            _ => SparseIndex::new(base, cfg.index_interval_bytes),
        };
        // What the index covers was trusted, not read: the index written after this scan must let the next
        // recovery resume exactly here (an index can only be rewound to an entry).
        index.pin_resume_point();
        let outcome = scan_frames(
            &file,
            &path,
            index.covered_len,
            len,
            &mut index,
            cfg.max_batch_bytes,
        )?;
        stats.bytes_scanned += outcome.bytes_read;
        stats.frames_scanned += outcome.frames;

        let role = judge_segment(next_segment_facts(
            io,
            dir,
            &bases[i + 1..],
            index.next_offset,
            checkpoint,
            cfg.max_batch_bytes,
        )?);
        let in_last_segment = role.judged_as_last();

        if let Some((pos, kind)) = outcome.bad {
            let below_checkpoint = pos < trusted_len;
            // Zeros past the last frame are expected space only where the WAL preallocates. Without it they
            // are a write whose file size reached the disk but whose data did not: a torn tail, as before.
            let zero_tail = outcome.zero_tail && cfg.preallocate_bytes > 0 && !role.zeros_are_torn();
            let proven_durable = in_last_segment
                && !below_checkpoint
                && !zero_tail
                && find_durability_proof(&file, &path, pos, len, cfg.max_batch_bytes)?.is_some();
            let site = BadFrameSite {
                in_last_segment,
                below_checkpoint,
                zero_tail,
                proven_durable,
            };
            match decide(site) {
                Decision::EndOfData => {}
                Decision::TruncateTail => {
                    save_broken_tail(io, &file, &path, pos, len);
                    file.set_len(pos).map_err(|e| Error::io("truncating", &path, e))?;
                    stats.truncated_bytes += len - pos;
                    file_len = pos;
                    warn!(segment = %path.display(), position = pos, truncated_bytes = len - pos, reason = %kind,
                        "WAL truncated torn tail");
                }
                Decision::Refuse => {
                    warn!(segment = %path.display(), position = pos, reason = %kind, ?site,
                        "WAL damage in acknowledged data; partition will not serve past it");
                    corrupt = Some((path.clone(), pos, kind));
                }
            }
        }
        if in_last_segment || corrupt.is_some() {
            // What recovery keeps is exposed as committed: make sure it is on disk, not only in the page cache.
            if after_failure {
                file.set_len(file_len)
                    .map_err(|e| Error::io("setting length of", &path, e))?;
            }
            file.sync_data().map_err(|e| Error::io("syncing", &path, e))?;
        } else {
            // Synced when it was sealed, before the next segment was created.
            file.assume_durable();
        }
        let changed = baseline.as_ref() != Some(&index);
        if changed && had_index_file {
            stats.indexes_rebuilt += 1;
        }
        let index_file = decide_index_file(RecoveredIndexFacts {
            changed,
            stays_sealed: role.stays_sealed(),
            damaged: corrupt.is_some(),
            runs_into_next_segment: runs_into(&index, next_base),
        });
        match index_file {
            IndexFileDecision::Leave => {}
            IndexFileDecision::Rewrite => {
                if let Err(e) = crate::io::write_file_atomic(io, &index_path, &index.encode()) {
                    warn!(path = %index_path.display(), error = %e, "could not rewrite segment index");
                }
            }
        }
        active_file_len = file_len;
        segments.push(Arc::new(Segment {
            base_offset: base,
            path: file.path(),
            file,
            index: RwLock::new(index),
        }));
        if let (true, Some(leftover)) = (role.removes_next(), next_base) {
            remove_rolled_back_segment(io, dir, leftover)?;
            break;
        }
        if corrupt.is_some() {
            break;
        }
    }

    let Some(last) = segments.last() else {
        // The very first segment is damaged: nothing can be served.
        let (path, pos, kind) = corrupt.unwrap_or((dir.to_path_buf(), 0, CorruptionKind::BadSegmentHeader));
        return Err(Error::corrupt(path, pos, kind));
    };
    let active_end = {
        let idx = last.index.read();
        Mark {
            len: idx.covered_len,
            next_offset: idx.next_offset,
            max_timestamp: idx.max_timestamp,
        }
    };

    // The map may name terms whose batches a crash (or a truncation) took: cut it to the log, durably
    // before anything is appended after it. A damaged log's end is not its real end: leave the file be.
    let mut terms = TermMap::load(io, dir)?;
    let cut = terms.truncate_from(active_end.next_offset);
    let trimmed = terms.trim_before(first_base);
    if (cut || trimmed) && corrupt.is_none() {
        terms.store(io, dir)?;
    }

    Ok((
        Recovered {
            segments,
            log_start_offset: first_base,
            active_end,
            active_file_len,
            corrupt,
            terms,
        },
        stats,
    ))
}

/// Classifies a segment's saved index against the files and the checkpoint. `next_base`: the next
/// segment's base offset; `checkpoint_here`: the checkpoint, if it points into this segment;
/// `trusted_len`: the bytes of the segment the checkpoint vouches for.
fn saved_index_facts(
    idx: &SparseIndex,
    next_base: Option<i64>,
    checkpoint_here: Option<&CheckpointEntry>,
    trusted_len: u64,
) -> SavedIndexFacts {
    let coverage = if idx.covered_len >= SEGMENT_HEADER_LEN as u64 && idx.covered_len <= trusted_len {
        Coverage::Vouched
    } else if checkpoint_here.is_some() && idx.covered_len > trusted_len {
        Coverage::PastCheckpoint
    } else {
        Coverage::Unvouched
    };
    let contradicts_checkpoint = checkpoint_here.is_some_and(|c| match idx.covered_len.cmp(&c.position) {
        Ordering::Equal => idx.next_offset != c.next_offset,
        Ordering::Less => idx.next_offset > c.next_offset,
        Ordering::Greater => false,
    });
    SavedIndexFacts {
        runs_into_next_segment: runs_into(idx, next_base),
        contradicts_checkpoint,
        coverage,
    }
}

/// True if `idx` claims offsets of the segment starting at `next_base`.
fn runs_into(idx: &SparseIndex, next_base: Option<i64>) -> bool {
    next_base.is_some_and(|next| idx.next_offset > next)
}

/// What follows a segment whose valid frames end at offset `end_offset`; `later_bases` are the base
/// offsets of the segments after it. Reads the next segment's first frame only where the other facts
/// leave it a candidate leftover.
fn next_segment_facts(
    io: &dyn WalIo,
    dir: &Path,
    later_bases: &[i64],
    end_offset: i64,
    checkpoint: Option<&CheckpointEntry>,
    max_payload: u32,
) -> Result<Option<NextSegment>> {
    let Some(&next) = later_bases.first() else {
        return Ok(None);
    };
    let is_last = later_bases.len() == 1;
    let base = next.cmp(&end_offset);
    let vouched_by_checkpoint = checkpoint.is_some_and(|c| c.segment_base >= next);
    let candidate = is_last && base != Ordering::Greater && !vouched_by_checkpoint;
    let holds_no_frame = candidate && holds_no_frame(io, &dir.join(segment_file_name(next)), max_payload)?;
    Ok(Some(NextSegment {
        is_last,
        base,
        vouched_by_checkpoint,
        holds_no_frame,
    }))
}

/// True if no valid frame starts where a segment's first frame would.
fn holds_no_frame(io: &dyn WalIo, path: &Path, max_payload: u32) -> Result<bool> {
    let file = io
        .open(path, OpenMode::ReadOnly)
        .map_err(|e| Error::io("opening", path, e))?;
    let mut h = [0u8; FRAME_HEADER_LEN];
    match file.read_exact_at(&mut h, SEGMENT_HEADER_LEN as u64) {
        Ok(()) => Ok(FrameHeader::decode(&h, max_payload).is_err()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

fn remove_rolled_back_segment(io: &dyn WalIo, dir: &Path, base: i64) -> Result<()> {
    let segment = dir.join(segment_file_name(base));
    warn!(segment = %segment.display(), "removing an empty segment left by a failed rotation");
    io.remove_file(&segment)
        .map_err(|e| Error::io("removing", &segment, e))?;
    let index = dir.join(index_file_name(base));
    if io.exists(&index).map_err(|e| Error::io("checking", &index, e))? {
        io.remove_file(&index)
            .map_err(|e| Error::io("removing", &index, e))?;
    }
    io.sync_dir(dir)
        .map_err(|e| Error::io("syncing directory", dir, e))
}

fn load_index(io: &dyn WalIo, path: &Path, base: i64, interval: u32) -> Option<SparseIndex> {
    let bytes = read_file(io, path, MAX_INDEX_FILE).ok()?;
    SparseIndex::decode(&bytes, base, interval).ok()
}

/// Keeps a copy of the bytes about to be cut, for post-mortem (etcd does the same). Best effort.
fn save_broken_tail(io: &dyn WalIo, file: &dyn crate::io::WalFile, path: &Path, pos: u64, len: u64) {
    let n = (len - pos).min(MAX_BROKEN_COPY) as usize;
    let mut buf = vec![0u8; n];
    if file.read_exact_at(&mut buf, pos).is_err() {
        return;
    }
    // Zeros after the torn bytes are preallocated space, not evidence.
    let Some(last) = buf.iter().rposition(|&b| b != 0) else {
        return;
    };
    buf.truncate(last + 1);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{pos}{BROKEN_SUFFIX}"));
    let broken = PathBuf::from(name);
    let written = io
        .open(&broken, OpenMode::CreateNew)
        .and_then(|f| f.write_all_at(&buf, 0).and_then(|()| f.sync_data()));
    if let Err(e) = written {
        warn!(path = %broken.display(), error = %e, "could not save the cut tail");
    }
}

/// True for files recovery owns in a partition directory.
pub(crate) fn is_partition_file(name: &str) -> bool {
    parse_segment_file_name(name).is_some()
        || name.ends_with(INDEX_SUFFIX)
        || name.ends_with(BROKEN_SUFFIX)
        || name.ends_with(".tmp")
        || name == crate::terms::TERMS_FILE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicPartition;

    const BASE: i64 = 100;
    const HEADER: u64 = SEGMENT_HEADER_LEN as u64;

    fn index(covered_len: u64, next_offset: i64) -> SparseIndex {
        let mut idx = SparseIndex::new(BASE, 4096);
        idx.covered_len = covered_len;
        idx.next_offset = next_offset;
        idx
    }

    fn checkpoint_at(position: u64, next_offset: i64) -> CheckpointEntry {
        CheckpointEntry {
            tp: TopicPartition::new("t", 0),
            segment_base: BASE,
            position,
            next_offset,
            max_timestamp: 0,
        }
    }

    #[test]
    fn index_naming_another_next_offset_at_the_checkpoint_position_contradicts_it() {
        let c = checkpoint_at(HEADER + 200, 110);
        let facts = saved_index_facts(&index(HEADER + 200, 111), None, Some(&c), c.position);
        assert!(facts.contradicts_checkpoint);
        assert_eq!(decide_index(Some(facts)), IndexDecision::Rebuild);
        let agreeing = saved_index_facts(&index(HEADER + 200, 110), None, Some(&c), c.position);
        assert!(!agreeing.contradicts_checkpoint);
        assert_eq!(decide_index(Some(agreeing)), IndexDecision::Trust);
    }

    #[test]
    fn index_covering_less_than_the_checkpoint_but_naming_a_later_offset_contradicts_it() {
        let c = checkpoint_at(HEADER + 200, 110);
        let facts = saved_index_facts(&index(HEADER + 100, 111), None, Some(&c), c.position);
        assert!(facts.contradicts_checkpoint);
        let behind = saved_index_facts(&index(HEADER + 100, 105), None, Some(&c), c.position);
        assert!(!behind.contradicts_checkpoint);
        assert_eq!(behind.coverage, Coverage::Vouched);
    }

    #[test]
    fn index_reaching_past_the_checkpoint_position_is_rewound_not_contradicting() {
        let c = checkpoint_at(HEADER + 200, 110);
        let facts = saved_index_facts(&index(HEADER + 300, 120), None, Some(&c), c.position);
        assert_eq!(
            facts,
            SavedIndexFacts {
                runs_into_next_segment: false,
                contradicts_checkpoint: false,
                coverage: Coverage::PastCheckpoint,
            }
        );
    }

    #[test]
    fn index_written_into_the_next_segments_offsets_runs_into_it() {
        let into = saved_index_facts(&index(HEADER + 300, 121), Some(120), None, u64::MAX);
        assert!(into.runs_into_next_segment);
        let up_to = saved_index_facts(&index(HEADER + 300, 120), Some(120), None, u64::MAX);
        assert!(!up_to.runs_into_next_segment);
        assert_eq!(
            up_to.coverage,
            Coverage::Vouched,
            "below the checkpoint's segment"
        );
    }

    #[test]
    fn index_without_a_checkpoint_is_unvouched() {
        let facts = saved_index_facts(&index(HEADER + 300, 120), None, None, HEADER);
        assert!(!facts.contradicts_checkpoint);
        assert_eq!(facts.coverage, Coverage::Unvouched);
        assert_eq!(decide_index(Some(facts)), IndexDecision::Rescan);
    }
}
