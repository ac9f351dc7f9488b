//! Read-only examination of a WAL directory, for operators (`chronik wal inspect` / `verify`): every
//! segment's header and frames are checked, every index is compared with the frames it points at. Nothing
//! is modified, so it is safe on the data directory of a stopped broker.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    checkpoint,
    error::CorruptionKind,
    index::SparseIndex,
    io::{OpenMode, StdIo, WalIo},
    segment::{
        check_segment_header, index_file_name, parse_segment_file_name, scan_frames, SEGMENT_HEADER_LEN,
    },
    CheckpointEntry, Error, Result, TopicPartition,
};

/// The state of a segment's index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexStatus {
    /// Present and every entry names a frame at its position with its offset.
    Ok {
        entries: usize,
        covered_len: u64,
    },
    Missing,
    /// Present but unreadable, or an entry points at no frame / the wrong offset.
    Bad(String),
}

#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub base_offset: i64,
    pub bytes: u64,
    pub frames: u64,
    /// Offset after the last valid frame.
    pub next_offset: i64,
    /// The first problem: byte position and what is wrong. Zeros past the last frame of the last segment
    /// are preallocated space, not a problem; in a sealed segment (trimmed when sealed) they are.
    pub problem: Option<(u64, CorruptionKind)>,
    /// Bytes of zeros after the last frame.
    pub preallocated_bytes: u64,
    pub index: IndexStatus,
}

#[derive(Debug, Clone)]
pub struct PartitionReport {
    pub tp: TopicPartition,
    pub segments: Vec<SegmentReport>,
    pub checkpoint: Option<CheckpointEntry>,
}

impl PartitionReport {
    /// Problems as `file: position: what`, for a precise report.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut expected = self.segments.first().map(|s| s.base_offset);
        for s in &self.segments {
            if let Some(e) = expected.filter(|e| *e != s.base_offset) {
                out.push(format!(
                    "{}: 0: segment starts at offset {} but the previous ends at {e}",
                    s.path.display(),
                    s.base_offset
                ));
            }
            if let Some((pos, kind)) = &s.problem {
                out.push(format!("{}: {pos}: {kind}", s.path.display()));
            }
            if let IndexStatus::Bad(why) = &s.index {
                out.push(format!("{}: index: {why}", s.path.display()));
            }
            expected = Some(s.next_offset);
        }
        out
    }
}

/// Examines every partition under `root`; `progress(done, total)` is called after each partition.
pub fn inspect(root: &Path, mut progress: impl FnMut(usize, usize)) -> Result<Vec<PartitionReport>> {
    let io = StdIo;
    let checkpoint = checkpoint::read(&io, root).ok().flatten().unwrap_or_default();
    let partitions_dir = root.join("partitions");
    let mut dirs: Vec<(TopicPartition, PathBuf)> = fs::read_dir(&partitions_dir)
        .map_err(|e| Error::io("listing", &partitions_dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((TopicPartition::from_dir_name(&name)?, e.path()))
        })
        .collect();
    dirs.sort();
    let total = dirs.len();
    let mut reports = Vec::with_capacity(total);
    for (n, (tp, dir)) in dirs.into_iter().enumerate() {
        let mut bases: Vec<i64> = fs::read_dir(&dir)
            .map_err(|e| Error::io("listing", &dir, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| parse_segment_file_name(&name))
            .collect();
        bases.sort_unstable();
        let last = bases.last().copied();
        let segments = bases
            .into_iter()
            .map(|base| inspect_segment(&io, &dir, base, Some(base) == last))
            .collect::<Result<Vec<_>>>()?;
        let checkpoint = checkpoint.iter().find(|c| c.tp == tp).cloned();
        reports.push(PartitionReport {
            tp,
            segments,
            checkpoint,
        });
        progress(n + 1, total);
    }
    Ok(reports)
}

/// `is_last`: the partition's active segment, whose zeroed tail is preallocated space, not a problem.
fn inspect_segment(io: &dyn WalIo, dir: &Path, base: i64, is_last: bool) -> Result<SegmentReport> {
    let path = dir.join(crate::segment::segment_file_name(base));
    let file = io
        .open(&path, OpenMode::ReadOnly)
        .map_err(|e| Error::io("opening", &path, e))?;
    let bytes = file
        .size()
        .map_err(|e| Error::io("reading length of", &path, e))?;
    let mut report = SegmentReport {
        path: path.clone(),
        base_offset: base,
        bytes,
        frames: 0,
        next_offset: base,
        problem: None,
        preallocated_bytes: 0,
        index: IndexStatus::Missing,
    };
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    if bytes < SEGMENT_HEADER_LEN as u64 || file.read_exact_at(&mut header, 0).is_err() {
        report.problem = Some((0, CorruptionKind::BadSegmentHeader));
        return Ok(report);
    }
    if let Err(kind) = check_segment_header(&header, base) {
        report.problem = Some((0, kind));
        return Ok(report);
    }
    // Rebuild with a fine interval: every frame becomes an entry, so any index entry can be checked.
    let mut rebuilt = SparseIndex::new(base, 1);
    let outcome = scan_frames(
        &*file,
        &path,
        SEGMENT_HEADER_LEN as u64,
        bytes,
        &mut rebuilt,
        crate::config::MAX_BATCH_BYTES_LIMIT,
    )?;
    report.frames = outcome.frames;
    report.next_offset = rebuilt.next_offset;
    report.preallocated_bytes = match outcome.bad {
        Some((pos, _)) if outcome.zero_tail => bytes - pos,
        _ => 0,
    };
    report.problem = outcome.bad.filter(|_| !(outcome.zero_tail && is_last));
    let index_path = dir.join(index_file_name(base));
    report.index = match fs::read(&index_path) {
        Err(_) => IndexStatus::Missing,
        Ok(b) => match SparseIndex::decode(&b, base, 1) {
            Err(kind) => IndexStatus::Bad(kind.to_string()),
            Ok(idx) => {
                let wrong = idx.entries.iter().find(|e| !rebuilt.entries.contains(e));
                match wrong {
                    Some(e) => IndexStatus::Bad(format!(
                        "entry for offset {} at byte {} matches no frame",
                        base + i64::from(e.relative_offset),
                        e.position
                    )),
                    None if idx.covered_len > outcome.valid_end => IndexStatus::Bad(format!(
                        "covers {} bytes but valid frames end at {}",
                        idx.covered_len, outcome.valid_end
                    )),
                    None => IndexStatus::Ok {
                        entries: idx.entries.len(),
                        covered_len: idx.covered_len,
                    },
                }
            }
        },
    };
    Ok(report)
}

/// One frame of a segment, as `chronik wal dump` shows it.
#[derive(Debug, Clone)]
pub struct DumpedFrame {
    pub position: u64,
    pub header: crate::frame::FrameHeader,
    pub payload: bytes::Bytes,
}

/// Calls `each` for every valid frame of the segment file at `path` whose offsets reach `from_offset`,
/// in order; returns the first invalid frame's position and problem, if the file does not end cleanly.
/// Zeros after the last frame (preallocated space) end the file cleanly.
pub fn dump_segment(
    path: &Path,
    from_offset: i64,
    mut each: impl FnMut(&DumpedFrame) -> bool,
) -> Result<Option<(u64, CorruptionKind)>> {
    use crate::frame::{FrameHeader, FRAME_HEADER_LEN};
    let io = StdIo;
    let file = io
        .open(path, OpenMode::ReadOnly)
        .map_err(|e| Error::io("opening", path, e))?;
    let len = file.size().map_err(|e| Error::io("reading length of", path, e))?;
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_file_name)
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not named like a segment", path.display())))?;
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    if len < SEGMENT_HEADER_LEN as u64 || file.read_exact_at(&mut header, 0).is_err() {
        return Ok(Some((0, CorruptionKind::BadSegmentHeader)));
    }
    if let Err(kind) = check_segment_header(&header, base) {
        return Ok(Some((0, kind)));
    }
    let mut pos = SEGMENT_HEADER_LEN as u64;
    // The end of the frames, unless only zeros (preallocated space) follow.
    let stop = |pos: u64, kind: CorruptionKind| -> Result<Option<(u64, CorruptionKind)>> {
        let zeros = crate::segment::is_zero_tail(&*file, path, pos, len)?;
        Ok((!zeros).then_some((pos, kind)))
    };
    while pos < len {
        if pos + FRAME_HEADER_LEN as u64 > len {
            return stop(
                pos,
                CorruptionKind::Truncated {
                    needed: FRAME_HEADER_LEN as u64,
                    available: len - pos,
                },
            );
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        file.read_exact_at(&mut h, pos)
            .map_err(|e| Error::io("reading", path, e))?;
        let header = match FrameHeader::decode(&h, crate::config::MAX_BATCH_BYTES_LIMIT) {
            Ok(header) => header,
            Err(kind) => return stop(pos, kind),
        };
        if pos + header.frame_len() > len {
            return Ok(Some((
                pos,
                CorruptionKind::Truncated {
                    needed: header.frame_len(),
                    available: len - pos,
                },
            )));
        }
        let next = pos + header.frame_len();
        if header.next_offset() > from_offset {
            let mut payload = vec![0u8; header.payload_len as usize];
            file.read_exact_at(&mut payload, pos + FRAME_HEADER_LEN as u64)
                .map_err(|e| Error::io("reading", path, e))?;
            if let Err(kind) = header.verify_payload(&payload) {
                return Ok(Some((pos, kind)));
            }
            if !each(&DumpedFrame {
                position: pos,
                header,
                payload: payload.into(),
            }) {
                return Ok(None);
            }
        }
        pos = next;
    }
    Ok(None)
}

/// One frame as a copy comparison sees it: offsets, record count and a CRC32C of the stored payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDigest {
    pub base_offset: i64,
    pub record_count: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
}

/// Calls `each` for every valid frame of partition `tp` under `root` whose offsets reach `from_offset`,
/// across its segments in order, until it returns `false`. Returns the first problem met (file,
/// position, what), after which nothing more is read: a damaged copy is compared up to its damage.
pub fn partition_frames(
    root: &Path,
    tp: &TopicPartition,
    from_offset: i64,
    mut each: impl FnMut(FrameDigest) -> bool,
) -> Result<Option<(PathBuf, u64, CorruptionKind)>> {
    let dir = root.join("partitions").join(tp.dir_name());
    let mut segments: Vec<(i64, PathBuf)> = fs::read_dir(&dir)
        .map_err(|e| Error::io("listing", &dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            parse_segment_file_name(&name).map(|base| (base, e.path()))
        })
        .collect();
    segments.sort();
    let mut more = true;
    for (i, (_, path)) in segments.iter().enumerate() {
        // Segments wholly before `from_offset` are skipped by their successor's base offset.
        if segments.get(i + 1).is_some_and(|(next, _)| *next <= from_offset) {
            continue;
        }
        let problem = dump_segment(path, from_offset, |f| {
            more = each(FrameDigest {
                base_offset: f.header.base_offset,
                record_count: f.header.record_count,
                payload_len: f.header.payload_len,
                payload_crc: crc32c::crc32c(&f.payload),
            });
            more
        })?;
        if let Some((pos, kind)) = problem {
            return Ok(Some((path.clone(), pos, kind)));
        }
        if !more {
            break;
        }
    }
    Ok(None)
}
