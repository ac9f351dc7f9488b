//! A segment: one file of consecutive frames, named by the base offset of its first frame.
//!
//! A partition has one active segment (appended to by the group-commit leader) and zero or more sealed
//! ones (synced, indexed, read-only). Both kinds are read through the same [`Segment`] handle: readers take
//! the index's read lock for a moment to learn how far the segment is published, then read with `pread`, so
//! they never wait on a write or an fsync.

use std::{mem::size_of, path::Path, sync::Arc};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::buffers::BufferPool;
use crate::{
    error::CorruptionKind,
    frame::{le_i64, le_u32, FrameHeader, FRAME_HEADER_LEN, FRAME_MAGIC},
    index::SparseIndex,
    io::{parent, CachedFile, FileCache, OpenMode, WalFile},
    version::FormatVersion,
    Error, Result, StoredBatch,
};

/// `"CHRNKSEG"`.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CHRNKSEG";

const VERSION_AT: usize = SEGMENT_MAGIC.len();
const BASE_OFFSET_AT: usize = 16;
const HEADER_CRC_AT: usize = BASE_OFFSET_AT + size_of::<i64>() + size_of::<u32>();
/// Bytes before the first frame.
pub const SEGMENT_HEADER_LEN: usize = HEADER_CRC_AT + size_of::<u32>();
const _: () = assert!(SEGMENT_HEADER_LEN == 32);

pub const SEGMENT_SUFFIX: &str = ".wal";
pub const INDEX_SUFFIX: &str = ".index";
pub const BROKEN_SUFFIX: &str = ".broken";
/// The next segment's file, zero-filled ahead of need; named when the active segment is sealed. A
/// `.tmp` file, so recovery removes it.
pub const NEXT_SEGMENT_FILE: &str = "next-segment.tmp";

/// Extra bytes read beyond the payload budget, to cover frame headers in the same read.
const READ_SLACK: u64 = 16 * 1024;
/// Chunk size for sequential scans during recovery.
const SCAN_CHUNK: usize = 1 << 20;

pub fn segment_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{SEGMENT_SUFFIX}")
}

pub fn index_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{INDEX_SUFFIX}")
}

/// Parses `00000000000000000042.wal` into 42.
pub fn parse_segment_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses `00000000000000000042.index` into 42.
pub fn parse_index_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(INDEX_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn encode_segment_header(base_offset: i64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..VERSION_AT].copy_from_slice(&SEGMENT_MAGIC);
    h[VERSION_AT] = FormatVersion::CURRENT as u8;
    h[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header and that it names `base_offset`.
pub fn check_segment_header(h: &[u8], base_offset: i64) -> Result<(), CorruptionKind> {
    if h.len() < SEGMENT_HEADER_LEN || h[..VERSION_AT] != SEGMENT_MAGIC {
        return Err(CorruptionKind::BadSegmentHeader);
    }
    FormatVersion::try_from(h[VERSION_AT])?;
    if le_u32(h, HEADER_CRC_AT) != crc32c::crc32c(&h[..HEADER_CRC_AT])
        || le_i64(h, BASE_OFFSET_AT) != base_offset
    {
        return Err(CorruptionKind::BadSegmentHeader);
    }
    Ok(())
}

/// A segment file and what is known of its contents.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    pub path: Arc<Path>,
    /// Opened on demand through the WAL's [`FileCache`].
    pub file: CachedFile,
    /// The index also says how far the segment is published to readers (`covered_len`).
    pub index: RwLock<SparseIndex>,
}

impl Segment {
    /// Creates a new, empty segment durably: temp file with header, fsync, rename, fsync directory.
    pub fn create(files: &FileCache, dir: &Path, base_offset: i64, index_interval: u32) -> Result<Segment> {
        let io = files.io();
        let path = dir.join(segment_file_name(base_offset));
        let tmp = crate::io::tmp_path(&path);
        if io.exists(&tmp).map_err(|e| Error::io("checking", &tmp, e))? {
            io.remove_file(&tmp)
                .map_err(|e| Error::io("removing stale", &tmp, e))?;
        }
        let file = files
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| Error::io("creating", &tmp, e))?;
        Self::install(files, dir, base_offset, index_interval, file)
    }

    /// Makes `file`, not yet named (empty, or zero-filled ahead of need), the segment `base_offset`:
    /// header, fsync, rename, fsync directory.
    pub fn install(
        files: &FileCache,
        dir: &Path,
        base_offset: i64,
        index_interval: u32,
        file: CachedFile,
    ) -> Result<Segment> {
        let io = files.io();
        let tmp = file.path();
        let path = dir.join(segment_file_name(base_offset));
        let step = |op, p: &Path, r: std::io::Result<()>| r.map_err(|e| Error::io(op, p, e));
        step(
            "writing header of",
            &tmp,
            file.write_all_at(&encode_segment_header(base_offset), 0),
        )?;
        step("syncing", &tmp, file.sync_data())?;
        step("renaming", &tmp, file.rename(&path))?;
        if let Err(e) = io.sync_dir(parent(&path)) {
            // Not durably created: take it back, or a crash could leave a segment the log never used.
            let _ = io.remove_file(&path);
            return Err(Error::io("syncing directory", dir, e));
        }
        Ok(Segment {
            base_offset,
            path: file.path(),
            file,
            index: RwLock::new(SparseIndex::new(base_offset, index_interval)),
        })
    }

    /// Bytes of this segment visible to readers.
    pub fn published_len(&self) -> u64 {
        self.index.read().covered_len
    }

    pub fn next_offset(&self) -> i64 {
        self.index.read().next_offset
    }

    pub fn max_timestamp(&self) -> i64 {
        self.index.read().max_timestamp
    }

    fn read_header(&self, pos: u64, max_payload: u32) -> Result<FrameHeader> {
        let mut h = [0u8; FRAME_HEADER_LEN];
        self.file
            .read_exact_at(&mut h, pos)
            .map_err(|e| Error::io("reading frame header of", &self.path, e))?;
        FrameHeader::decode(&h, max_payload).map_err(|k| Error::corrupt(&self.path, pos, k))
    }

    /// Reads the batches holding offsets `from_offset..limit_offset`: the first in full even if it is larger
    /// than `budget` payload bytes, then as many whole ones as fit. Payloads are slices of the read buffers.
    /// Returns the payload bytes added and whether the read stopped at the end of what this segment holds.
    pub(crate) fn read(
        &self,
        from_offset: i64,
        limit_offset: i64,
        budget: u64,
        max_payload: u32,
        buffers: &Arc<BufferPool>,
        out: &mut Vec<StoredBatch>,
    ) -> Result<(u64, bool)> {
        let (mut pos, end) = {
            let idx = self.index.read();
            (idx.seek_offset(from_offset), idx.covered_len)
        };
        let mut next_len = loop {
            if pos >= end {
                return Ok((0, true));
            }
            let h = self.read_header(pos, max_payload)?;
            if h.base_offset >= limit_offset {
                return Ok((0, true));
            }
            if h.next_offset() > from_offset {
                break h.frame_len();
            }
            pos += h.frame_len();
        };
        let mut used = 0u64;
        while pos < end {
            // One read for what the budget may still take (plus room for headers), never less than a frame.
            let room = (budget.saturating_sub(used)).saturating_add(READ_SLACK);
            let want = (end - pos).min(room.max(next_len));
            let mut buf = buffers.take(want as usize);
            self.file
                .read_exact_at(&mut buf, pos)
                .map_err(|e| Error::io("reading", &self.path, e))?;
            let buf: Bytes = buf.freeze();
            let mut at = 0usize;
            loop {
                if at + FRAME_HEADER_LEN > buf.len() {
                    next_len = FRAME_HEADER_LEN as u64;
                    break;
                }
                let mut hb = [0u8; FRAME_HEADER_LEN];
                hb.copy_from_slice(&buf[at..at + FRAME_HEADER_LEN]);
                let frame_pos = pos + at as u64;
                let h = FrameHeader::decode(&hb, max_payload)
                    .map_err(|k| Error::corrupt(&self.path, frame_pos, k))?;
                if h.base_offset >= limit_offset {
                    return Ok((used, true));
                }
                if !out.is_empty() && used + u64::from(h.payload_len) > budget {
                    return Ok((used, false));
                }
                let payload_end = at + h.frame_len() as usize;
                if payload_end > buf.len() {
                    next_len = h.frame_len();
                    break;
                }
                let payload = buf.slice(at + FRAME_HEADER_LEN..payload_end);
                h.verify_payload(&payload)
                    .map_err(|k| Error::corrupt(&self.path, frame_pos, k))?;
                used += u64::from(h.payload_len);
                out.push(StoredBatch {
                    base_offset: h.base_offset,
                    record_count: h.record_count,
                    first_timestamp: h.first_timestamp,
                    max_timestamp: h.max_timestamp,
                    payload,
                });
                at = payload_end;
            }
            if at == 0 {
                // Not even the first frame fits below `end`: the published length ends inside a frame
                // (a checkpoint vouched for more than the file holds). Reading on would spin here.
                return Err(Error::corrupt(
                    &self.path,
                    pos,
                    CorruptionKind::Truncated {
                        needed: next_len,
                        available: end - pos,
                    },
                ));
            }
            pos += at as u64;
        }
        Ok((used, true))
    }

    /// Where the batch starting at `offset` begins in this segment, or its published end if `offset` is
    /// where the segment ends. `None` if no batch starts there (the offset lies inside one, or past the
    /// end).
    pub(crate) fn batch_position(&self, offset: i64, max_payload: u32) -> Result<Option<u64>> {
        let (mut pos, end, next) = {
            let idx = self.index.read();
            (idx.seek_offset(offset), idx.covered_len, idx.next_offset)
        };
        while pos < end {
            let h = self.read_header(pos, max_payload)?;
            if h.base_offset == offset {
                return Ok(Some(pos));
            }
            if h.base_offset > offset {
                return Ok(None);
            }
            pos += h.frame_len();
        }
        Ok((pos == end && next == offset).then_some(end))
    }

    /// The first batch in this segment whose max timestamp is >= `ts`, below `limit_offset`.
    pub fn find_timestamp(
        &self,
        ts: i64,
        limit_offset: i64,
        max_payload: u32,
    ) -> Result<Option<FrameHeader>> {
        let (mut pos, end) = {
            let idx = self.index.read();
            (idx.seek_timestamp(ts), idx.covered_len)
        };
        while pos < end {
            let h = self.read_header(pos, max_payload)?;
            if h.base_offset >= limit_offset {
                break;
            }
            if h.max_timestamp >= ts {
                return Ok(Some(h));
            }
            pos += h.frame_len();
        }
        Ok(None)
    }
}

/// Outcome of scanning a segment from some position.
#[derive(Debug)]
pub struct ScanOutcome {
    /// Position after the last valid frame.
    pub valid_end: u64,
    /// The first invalid frame, if the scan stopped before the end of the file.
    pub bad: Option<(u64, CorruptionKind)>,
    /// Every byte from the bad position to the end of the file is zero: preallocated space past the last
    /// frame, not a frame (whether that is clean depends on where it is; see `recovery::decide`).
    pub zero_tail: bool,
    pub bytes_read: u64,
    pub frames: u64,
}

/// Sequential buffered reader over a segment file for recovery scans.
struct ChunkReader<'a> {
    file: &'a dyn WalFile,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
    bytes_read: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a dyn WalFile, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
            bytes_read: 0,
        }
    }

    /// Bytes `[pos, pos + n)`, or `None` if the file ends first.
    fn get(&mut self, pos: u64, n: usize) -> std::io::Result<Option<&[u8]>> {
        if pos + n as u64 > self.file_len {
            return Ok(None);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if pos < self.buf_start || pos + n as u64 > buf_end {
            let len = (self.file_len - pos).min(SCAN_CHUNK.max(n) as u64) as usize;
            // What is buffered from `pos` on (a frame the last chunk cut in two) moves to the front and is
            // not read again.
            let kept = if (self.buf_start..buf_end).contains(&pos) {
                let at = (pos - self.buf_start) as usize;
                self.buf.copy_within(at.., 0);
                self.buf.len() - at
            } else {
                0
            };
            self.buf.resize(len, 0);
            self.buf_start = pos;
            if let Err(e) = self.file.read_exact_at(&mut self.buf[kept..], pos + kept as u64) {
                self.buf.clear();
                return Err(e);
            }
            self.bytes_read += (len - kept) as u64;
        }
        let at = (pos - self.buf_start) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }

    /// True if every byte from `pos` to the end of the file is zero.
    fn zeros_to_end(&mut self, mut pos: u64) -> std::io::Result<bool> {
        while pos < self.file_len {
            let n = (self.file_len - pos).min(SCAN_CHUNK as u64) as usize;
            match self.get(pos, n)? {
                Some(bytes) if bytes.iter().all(|&b| b == 0) => pos += n as u64,
                _ => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// True if every byte of `file` from `pos` to `file_len` is zero (preallocated space past the last frame).
pub fn is_zero_tail(file: &dyn WalFile, path: &Path, pos: u64, file_len: u64) -> Result<bool> {
    ChunkReader::new(file, file_len)
        .zeros_to_end(pos)
        .map_err(|e| Error::io("scanning", path, e))
}

/// Validates frames from `start`, feeding each valid one to `index`, and stops at the first invalid one.
pub fn scan_frames(
    file: &dyn WalFile,
    path: &Path,
    start: u64,
    file_len: u64,
    index: &mut SparseIndex,
    max_payload: u32,
) -> Result<ScanOutcome> {
    let mut reader = ChunkReader::new(file, file_len);
    let mut pos = start;
    let mut frames = 0;
    let io_err = |e| Error::io("scanning", path, e);
    let bad = loop {
        if pos == file_len {
            break None;
        }
        let Some(hb) = reader.get(pos, FRAME_HEADER_LEN).map_err(io_err)? else {
            break Some(truncated(pos, FRAME_HEADER_LEN as u64, file_len));
        };
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(hb);
        let header = match FrameHeader::decode(&h, max_payload) {
            Ok(header) => header,
            Err(kind) => break Some((pos, kind)),
        };
        let Some(payload) = reader
            .get(pos + FRAME_HEADER_LEN as u64, header.payload_len as usize)
            .map_err(io_err)?
        else {
            break Some(truncated(pos, header.frame_len(), file_len));
        };
        if let Err(kind) = header.verify_payload(payload) {
            break Some((pos, kind));
        }
        if header.base_offset != index.next_offset {
            break Some((
                pos,
                CorruptionKind::OffsetGap {
                    expected: index.next_offset,
                    found: header.base_offset,
                },
            ));
        }
        index.observe(pos, &header);
        frames += 1;
        pos += header.frame_len();
    };
    let zero_tail = match bad {
        Some((at, _)) => reader.zeros_to_end(at).map_err(io_err)?,
        None => false,
    };
    Ok(ScanOutcome {
        valid_end: pos,
        bad,
        zero_tail,
        bytes_read: reader.bytes_read,
        frames,
    })
}

fn truncated(pos: u64, needed: u64, file_len: u64) -> (u64, CorruptionKind) {
    (
        pos,
        CorruptionKind::Truncated {
            needed,
            available: file_len - pos,
        },
    )
}

/// Looks past a bad frame at `bad_pos` for a valid frame written after the bad one was synced. Finding one
/// proves the bad frame was durable once, so the damage is not a torn write. Returns its position.
pub fn find_durability_proof(
    file: &dyn WalFile,
    path: &Path,
    bad_pos: u64,
    file_len: u64,
    max_payload: u32,
) -> Result<Option<u64>> {
    let mut reader = ChunkReader::new(file, file_len);
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut pos = bad_pos + 1;
    while pos + FRAME_HEADER_LEN as u64 <= file_len {
        let Some(hb) = reader
            .get(pos, FRAME_HEADER_LEN)
            .map_err(|e| Error::io("scanning", path, e))?
        else {
            break;
        };
        if hb[..4] == magic {
            let mut h = [0u8; FRAME_HEADER_LEN];
            h.copy_from_slice(hb);
            if let Ok(header) = FrameHeader::decode(&h, max_payload) {
                if header.synced_pos > bad_pos {
                    let payload = reader
                        .get(pos + FRAME_HEADER_LEN as u64, header.payload_len as usize)
                        .map_err(|e| Error::io("scanning", path, e))?;
                    if payload.is_some_and(|p| header.verify_payload(p).is_ok()) {
                        return Ok(Some(pos));
                    }
                }
            }
        }
        pos += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::io::{OpenMode, SimIo, WalIo};

    /// A sequential scan reads every byte once, including frames that a chunk boundary cuts in two, and
    /// returns the right bytes wherever a request falls.
    #[test]
    fn chunk_reader_returns_exact_bytes_and_reads_each_byte_once() {
        let io = SimIo::new(7);
        let path = Path::new("/seg");
        let file = io.open(path, OpenMode::CreateNew).unwrap();
        let len = 3 * SCAN_CHUNK + 12_345;
        let content: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        file.write_all_at(&content, 0).unwrap();

        let mut reader = ChunkReader::new(&*file, len as u64);
        // Pieces of 70,000 bytes: many straddle a 1 MiB chunk boundary.
        let piece = 70_000;
        let mut pos = 0;
        while pos < len {
            let n = piece.min(len - pos);
            let got = reader.get(pos as u64, n).unwrap().unwrap();
            assert_eq!(got, &content[pos..pos + n], "bytes at {pos}");
            pos += n;
        }
        assert_eq!(reader.bytes_read, len as u64, "every byte read exactly once");
        assert!(reader.get(len as u64 - 10, 11).unwrap().is_none(), "past the end");

        // Going back re-reads (recovery does not, but the reader must stay correct).
        let got = reader.get(5, 100).unwrap().unwrap();
        assert_eq!(got, &content[5..105]);
    }
}
