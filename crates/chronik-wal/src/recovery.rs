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
//! the log went past its base offset.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::RwLock;
use tracing::warn;

use crate::{
    error::CorruptionKind,
    frame::{FrameHeader, FRAME_HEADER_LEN},
    index::SparseIndex,
    io::{read_file, OpenMode, WalIo},
    partition::{CheckpointEntry, Mark, Recovered},
    segment::{
        check_segment_header, find_durability_proof, index_file_name, parse_index_file_name,
        parse_segment_file_name, scan_frames, segment_file_name, Segment, BROKEN_SUFFIX, INDEX_SUFFIX,
        SEGMENT_HEADER_LEN,
    },
    Error, Result, WalContext,
};

/// Most bytes of a cut tail copied aside for post-mortem.
const MAX_BROKEN_COPY: u64 = 16 << 20;
/// Index files are far smaller than this; a larger one is damaged.
const MAX_INDEX_FILE: u64 = 256 << 20;

/// What to do about a bad frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Preallocated zeros: the log ends here; nothing is cut or reported.
    EndOfData,
    /// Cut the file at the bad frame: it was never acknowledged.
    TruncateTail,
    /// Damage to data that was durable: stop serving at this point and report it.
    Refuse,
}

/// Where a bad frame was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrameSite {
    pub in_last_segment: bool,
    pub below_checkpoint: bool,
    /// Every byte from the bad frame to the end of the file is zero.
    pub zero_tail: bool,
    pub proven_durable: bool,
}

/// The recovery decision table (see the module docs).
pub fn decide(site: BadFrameSite) -> Decision {
    match (
        site.in_last_segment,
        site.below_checkpoint,
        site.zero_tail,
        site.proven_durable,
    ) {
        (false, _, _, _) => Decision::Refuse,
        (true, true, _, _) => Decision::Refuse,
        (true, false, true, _) => Decision::EndOfData,
        (true, false, false, true) => Decision::Refuse,
        (true, false, false, false) => Decision::TruncateTail,
    }
}

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
pub(crate) fn recover_partition(
    ctx: &WalContext,
    dir: &Path,
    checkpoint: Option<&CheckpointEntry>,
) -> Result<(Recovered, RecoveryStats)> {
    let io = &*ctx.io;
    let cfg = &ctx.config;
    let mut stats = RecoveryStats::default();
    let mut bases = Vec::new();
    let mut index_bases = Vec::new();
    // What this listing shows becomes the log, so make it durable first: a removal or creation still in
    // the page cache (retention or a rotation that failed at its directory sync) must not be adopted now
    // and undone by a later power cut (found by the crash simulation, seed 9758).
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
        // ahead of them; a failed rotation's leftover is never it, see below.) Fuzzing found one missing
        // between two others accepted once, and refused after the later one was removed as a leftover.
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
        let mut in_last_segment = i + 1 == bases.len();
        let path = dir.join(segment_file_name(base));
        let file = io
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
        let saved_index = load_index(io, &index_path, base, cfg.index_interval_bytes);
        let had_index_file = io.exists(&index_path).unwrap_or(false);
        // An index is trusted only as far as the log below it is: never past the checkpoint. One that
        // claims offsets of the next segment contradicts the files (the segments are the truth) and is
        // rebuilt: trusted, it could make that segment look like a failed rotation's leftover (below).
        let fits = |idx: &SparseIndex| bases.get(i + 1).is_none_or(|&next| idx.next_offset <= next);
        // Nor one that contradicts the checkpoint where both describe the same bytes (fuzzing found an
        // index's next offset trusted over the checkpoint's, and an append there lost by the next recovery).
        let agrees = |idx: &SparseIndex| {
            checkpoint.filter(|c| c.segment_base == base).is_none_or(|c| {
                if idx.covered_len == c.position {
                    idx.next_offset == c.next_offset
                } else {
                    idx.covered_len > c.position || idx.next_offset <= c.next_offset
                }
            })
        };
        let saved_index = saved_index.filter(|idx| fits(idx) && agrees(idx));
        let mut index = match (&saved_index, checkpoint) {
            (Some(idx), _)
                if idx.covered_len >= SEGMENT_HEADER_LEN as u64 && idx.covered_len <= trusted_len =>
            {
                idx.clone()
            }
            // Sealed after the checkpoint: keep the part the checkpoint vouches for, validate the rest
            // from the last entry below it (the checkpoint's position is a frame boundary only if both
            // files are right; fuzzing found a forged one inside a frame).
            (Some(idx), Some(c)) if c.segment_base == base && idx.covered_len > trusted_len => {
                idx.rewind(trusted_len)
            }
            _ => SparseIndex::new(base, cfg.index_interval_bytes),
        };
        // What the index covers was trusted, not read: the index written after this scan must let the next
        // recovery resume exactly here (an index can only be rewound to an entry; fuzzing found the next
        // recovery rewinding further and disagreeing).
        index.pin_resume_point();
        let outcome = scan_frames(
            &*file,
            &path,
            index.covered_len,
            len,
            &mut index,
            cfg.max_batch_bytes,
        )?;
        stats.bytes_scanned += outcome.bytes_read;
        stats.frames_scanned += outcome.frames;

        // A rotation whose new segment failed its directory sync removes it again, but that removal may
        // not be durable either: after a power cut the empty segment can be back although this one went on
        // (perhaps only with unsynced, torn writes) from its base offset. Then this segment is the last
        // one: if it went past the empty one, that one is removed; if its frames end exactly there, what
        // follows them holds no offset the log needs and is cut as a torn tail.
        // Never one the checkpoint vouches for: its rotation was durable (fuzzing found a forged index
        // making recovery remove such a segment).
        let empty_next = match bases.get(i + 1) {
            Some(&next)
                if i + 2 == bases.len()
                    && next <= index.next_offset
                    && checkpoint.is_none_or(|c| c.segment_base < next) =>
            {
                holds_no_frame(io, &dir.join(segment_file_name(next)), cfg.max_batch_bytes)?.then_some(next)
            }
            _ => None,
        };
        let rolled_back = empty_next.filter(|&next| next < index.next_offset);
        in_last_segment |= empty_next.is_some();

        if let Some((pos, kind)) = outcome.bad {
            let below_checkpoint = pos < trusted_len;
            // Zeros past the last frame are expected space only where the WAL preallocates. Without it they
            // are a write whose file size reached the disk but whose data did not: a torn tail, as before.
            // Nor in a segment that stays sealed because the empty one after it stays: sealed segments end
            // at their last frame, and the next recovery would call the zeros damage (found by fuzzing).
            let stays_before_empty = empty_next.is_some() && rolled_back.is_none();
            let zero_tail = outcome.zero_tail && cfg.preallocate_bytes > 0 && !stays_before_empty;
            let proven_durable = in_last_segment
                && !below_checkpoint
                && !zero_tail
                && find_durability_proof(&*file, &path, pos, len, cfg.max_batch_bytes)?.is_some();
            let site = BadFrameSite {
                in_last_segment,
                below_checkpoint,
                zero_tail,
                proven_durable,
            };
            match decide(site) {
                Decision::EndOfData => {}
                Decision::TruncateTail => {
                    save_broken_tail(io, &*file, &path, pos, len);
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
            file.sync_data().map_err(|e| Error::io("syncing", &path, e))?;
        }
        if saved_index.as_ref() != Some(&index) {
            if had_index_file {
                stats.indexes_rebuilt += 1;
            }
            // Sealed, it keeps this index: also when an empty segment after it was judged with it but stays
            // (fuzzing found the old, wrong index trusted by the next recovery, the segment now sealed).
            // One that runs into the next segment's offsets would be refused by the next recovery, which
            // would then read what this one trusted (fuzzing found the two disagreeing); the damage is
            // reported at the next segment anyway.
            let stays_sealed = i + 1 < bases.len() && rolled_back.is_none();
            if stays_sealed && corrupt.is_none() && fits(&index) {
                if let Err(e) = crate::io::write_file_atomic(io, &index_path, &index.encode()) {
                    warn!(path = %index_path.display(), error = %e, "could not rewrite segment index");
                }
            }
        }
        active_file_len = file_len;
        segments.push(Arc::new(Segment {
            base_offset: base,
            path,
            file,
            index: RwLock::new(index),
        }));
        if let Some(stale) = rolled_back {
            remove_rolled_back_segment(io, dir, stale)?;
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

    Ok((
        Recovered {
            segments,
            log_start_offset: first_base,
            active_end,
            active_file_len,
            corrupt,
        },
        stats,
    ))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table_rows() {
        let site = |in_last_segment, below_checkpoint, proven_durable| BadFrameSite {
            in_last_segment,
            below_checkpoint,
            zero_tail: false,
            proven_durable,
        };
        let zeros = |in_last_segment, below_checkpoint| BadFrameSite {
            in_last_segment,
            below_checkpoint,
            zero_tail: true,
            proven_durable: false,
        };
        for below in [false, true] {
            for proven in [false, true] {
                assert_eq!(
                    decide(site(false, below, proven)),
                    Decision::Refuse,
                    "sealed segment"
                );
            }
            assert_eq!(
                decide(zeros(false, below)),
                Decision::Refuse,
                "zeros at the end of a sealed segment"
            );
        }
        assert_eq!(
            decide(zeros(true, true)),
            Decision::Refuse,
            "zeros below the checkpoint: acknowledged data lost"
        );
        assert_eq!(
            decide(zeros(true, false)),
            Decision::EndOfData,
            "preallocated zeros past the last frame"
        );
        assert_eq!(
            decide(site(true, true, false)),
            Decision::Refuse,
            "below checkpoint"
        );
        assert_eq!(
            decide(site(true, true, true)),
            Decision::Refuse,
            "below checkpoint, proven"
        );
        assert_eq!(
            decide(site(true, false, true)),
            Decision::Refuse,
            "later frame proves it was synced"
        );
        assert_eq!(
            decide(site(true, false, false)),
            Decision::TruncateTail,
            "torn tail"
        );
    }
}
