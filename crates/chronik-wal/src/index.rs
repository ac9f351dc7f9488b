//! The sparse index of a segment: every `index_interval_bytes` or so, one entry naming a frame's position,
//! its base offset and the largest timestamp of all frames *before* it. One file thus serves as both the
//! offset index (seek to the frame holding offset N) and the time index (seek to the first frame whose
//! max timestamp is >= T). Index files are a cache: recovery rebuilds any that is missing or fails its CRC.
//!
//! Invariants: entries are in increasing position and offset order; `max_ts_before` never decreases.

use std::mem::size_of;

use crate::{
    error::CorruptionKind,
    frame::{le_i64, le_u32, le_u64, FrameHeader},
    segment::SEGMENT_HEADER_LEN,
    version::FormatVersion,
};

/// `"CHRNKIDX"`.
pub const INDEX_MAGIC: [u8; 8] = *b"CHRNKIDX";

const VERSION_AT: usize = INDEX_MAGIC.len();
const COUNT_AT: usize = VERSION_AT + 4; // version u8 + 3 reserved bytes
const BASE_OFFSET_AT: usize = COUNT_AT + size_of::<u32>();
const COVERED_LEN_AT: usize = BASE_OFFSET_AT + size_of::<i64>();
const NEXT_OFFSET_AT: usize = COVERED_LEN_AT + size_of::<u64>();
const MAX_TS_AT: usize = NEXT_OFFSET_AT + size_of::<i64>();
const ENTRIES_CRC_AT: usize = MAX_TS_AT + size_of::<i64>();
const HEADER_CRC_AT: usize = ENTRIES_CRC_AT + size_of::<u32>();
/// Bytes before the first entry.
pub const INDEX_HEADER_LEN: usize = HEADER_CRC_AT + size_of::<u32>();
/// Bytes per entry: relative offset u32, position u32, max_ts_before i64.
pub const INDEX_ENTRY_LEN: usize = 16;

const _: () = assert!(INDEX_HEADER_LEN == 56);
const _: () = assert!(BASE_OFFSET_AT.is_multiple_of(8));

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Frame base offset minus the segment base offset.
    pub relative_offset: u32,
    /// Byte position of the frame in the segment file.
    pub position: u32,
    /// Largest `max_timestamp` of the frames before `position` in this segment (`i64::MIN` if none).
    pub max_ts_before: i64,
}

/// What a segment's index knows: its entries and how far into the segment they reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseIndex {
    pub base_offset: i64,
    pub entries: Vec<IndexEntry>,
    /// Frames below this byte position are indexed.
    pub covered_len: u64,
    /// Offset after the last covered frame.
    pub next_offset: i64,
    /// Largest timestamp of the covered frames (`i64::MIN` if none).
    pub max_timestamp: i64,
    interval: u32,
    last_entry_pos: Option<u64>,
}

impl SparseIndex {
    pub fn new(base_offset: i64, interval: u32) -> Self {
        Self {
            base_offset,
            entries: Vec::new(),
            covered_len: SEGMENT_HEADER_LEN as u64,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            interval,
            last_entry_pos: None,
        }
    }

    /// Records the frame at `position`, which must start at `covered_len`.
    pub fn observe(&mut self, position: u64, header: &FrameHeader) {
        debug_assert_eq!(position, self.covered_len);
        let due = match self.last_entry_pos {
            None => true,
            Some(last) => position - last >= u64::from(self.interval),
        };
        if due {
            self.entries.push(IndexEntry {
                relative_offset: (header.base_offset - self.base_offset) as u32,
                position: position as u32,
                max_ts_before: self.max_timestamp,
            });
            self.last_entry_pos = Some(position);
        }
        self.covered_len = position + header.frame_len();
        self.next_offset = header.next_offset();
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
    }

    /// Makes the frame observed next (at `covered_len`) get an entry if none is there yet, whatever the
    /// interval: recovery resumes scanning at that point, and must be able to resume there again.
    pub fn pin_resume_point(&mut self) {
        if self
            .entries
            .last()
            .is_none_or(|e| u64::from(e.position) != self.covered_len)
        {
            self.last_entry_pos = None;
        }
    }

    /// Position of a frame at or before the one that holds `offset`, to start a scan from.
    pub fn seek_offset(&self, offset: i64) -> u64 {
        let rel = offset
            .saturating_sub(self.base_offset)
            .clamp(0, i64::from(u32::MAX)) as u32;
        let i = self.entries.partition_point(|e| e.relative_offset <= rel);
        self.scan_start(i)
    }

    /// Position of a frame at or before the first one whose max timestamp is >= `ts`.
    pub fn seek_timestamp(&self, ts: i64) -> u64 {
        let i = self.entries.partition_point(|e| e.max_ts_before < ts);
        self.scan_start(i)
    }

    fn scan_start(&self, entries_before: usize) -> u64 {
        match entries_before.checked_sub(1) {
            Some(i) => u64::from(self.entries[i].position),
            None => SEGMENT_HEADER_LEN as u64,
        }
    }

    /// The index rewound to its last entry at or below `len`, covering only the frames before that entry
    /// (a fresh index if there is none): where recovery resumes scanning when the index reaches past what
    /// the checkpoint vouches for. Unlike [`SparseIndex::prefix`] it needs no frame boundary at `len`,
    /// only the index's own entries. That entry is kept (scanning on does not add it again), so the index
    /// written after the scan rewinds to the same place next time, whatever the interval.
    pub fn rewind(&self, len: u64) -> SparseIndex {
        let keep = self.entries.partition_point(|e| u64::from(e.position) <= len);
        let Some(at) = keep.checked_sub(1).map(|i| self.entries[i]) else {
            return SparseIndex::new(self.base_offset, self.interval);
        };
        let entries = self.entries[..keep].to_vec();
        SparseIndex {
            base_offset: self.base_offset,
            last_entry_pos: Some(u64::from(at.position)),
            entries,
            covered_len: u64::from(at.position),
            next_offset: self.base_offset + i64::from(at.relative_offset),
            max_timestamp: at.max_ts_before,
            interval: self.interval,
        }
    }

    /// The index limited to frames below `len` (used when checkpointing an active segment).
    pub fn prefix(&self, len: u64, next_offset: i64, max_timestamp: i64) -> SparseIndex {
        let entries: Vec<IndexEntry> = self
            .entries
            .iter()
            .copied()
            .take_while(|e| u64::from(e.position) < len)
            .collect();
        SparseIndex {
            base_offset: self.base_offset,
            last_entry_pos: entries.last().map(|e| u64::from(e.position)),
            entries,
            covered_len: len,
            next_offset,
            max_timestamp,
            interval: self.interval,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_LEN);
        for e in &self.entries {
            body.extend_from_slice(&e.relative_offset.to_le_bytes());
            body.extend_from_slice(&e.position.to_le_bytes());
            body.extend_from_slice(&e.max_ts_before.to_le_bytes());
        }
        let mut out = vec![0u8; INDEX_HEADER_LEN];
        out[..VERSION_AT].copy_from_slice(&INDEX_MAGIC);
        out[VERSION_AT] = FormatVersion::CURRENT as u8;
        out[COUNT_AT..BASE_OFFSET_AT].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out[BASE_OFFSET_AT..COVERED_LEN_AT].copy_from_slice(&self.base_offset.to_le_bytes());
        out[COVERED_LEN_AT..NEXT_OFFSET_AT].copy_from_slice(&self.covered_len.to_le_bytes());
        out[NEXT_OFFSET_AT..MAX_TS_AT].copy_from_slice(&self.next_offset.to_le_bytes());
        out[MAX_TS_AT..ENTRIES_CRC_AT].copy_from_slice(&self.max_timestamp.to_le_bytes());
        out[ENTRIES_CRC_AT..HEADER_CRC_AT].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        let crc = crc32c::crc32c(&out[..HEADER_CRC_AT]);
        out[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes an index file, checking it belongs to the segment with `base_offset`.
    pub fn decode(bytes: &[u8], base_offset: i64, interval: u32) -> Result<SparseIndex, CorruptionKind> {
        if bytes.len() < INDEX_HEADER_LEN || bytes[..VERSION_AT] != INDEX_MAGIC {
            return Err(CorruptionKind::BadIndex);
        }
        FormatVersion::try_from(bytes[VERSION_AT])?;
        if le_u32(bytes, HEADER_CRC_AT) != crc32c::crc32c(&bytes[..HEADER_CRC_AT]) {
            return Err(CorruptionKind::BadIndex);
        }
        let count = le_u32(bytes, COUNT_AT) as usize;
        let body = &bytes[INDEX_HEADER_LEN..];
        if body.len() != count * INDEX_ENTRY_LEN
            || le_u32(bytes, ENTRIES_CRC_AT) != crc32c::crc32c(body)
            || le_i64(bytes, BASE_OFFSET_AT) != base_offset
        {
            return Err(CorruptionKind::BadIndex);
        }
        let entries: Vec<IndexEntry> = body
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(|c| IndexEntry {
                relative_offset: le_u32(c, 0),
                position: le_u32(c, 4),
                max_ts_before: le_i64(c, 8),
            })
            .collect();
        let ordered = entries.windows(2).all(|w| {
            w[0].position < w[1].position
                && w[0].relative_offset < w[1].relative_offset
                && w[0].max_ts_before <= w[1].max_ts_before
        });
        let covered_len = le_u64(bytes, COVERED_LEN_AT);
        let next_offset = le_i64(bytes, NEXT_OFFSET_AT);
        let max_timestamp = le_i64(bytes, MAX_TS_AT);
        let header = SEGMENT_HEADER_LEN as u64;
        // A checksummed file can still describe an impossible segment (written by a bug, or forged): every
        // frame holds at least one offset, and entries point at frames inside what is covered.
        let consistent = next_offset >= base_offset
            && covered_len >= header
            && (covered_len == header) == (next_offset == base_offset)
            // The first frame always has an entry.
            && (covered_len == header) == entries.is_empty()
            && entries.first().is_none_or(|e| {
                u64::from(e.position) == header && e.relative_offset == 0 && e.max_ts_before == i64::MIN
            })
            && entries.last().is_none_or(|e| {
                u64::from(e.position) < covered_len
                    && base_offset.saturating_add(i64::from(e.relative_offset)) < next_offset
                    && e.max_ts_before <= max_timestamp
            });
        if !ordered || !consistent {
            return Err(CorruptionKind::BadIndex);
        }
        Ok(SparseIndex {
            base_offset,
            last_entry_pos: entries.last().map(|e| u64::from(e.position)),
            entries,
            covered_len,
            next_offset,
            max_timestamp,
            interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(base: i64, count: u32, len: u32, ts: i64) -> FrameHeader {
        FrameHeader {
            payload_len: len,
            record_count: count,
            base_offset: base,
            first_timestamp: ts,
            max_timestamp: ts,
            synced_pos: 0,
            payload_crc: 0,
        }
    }

    fn build() -> SparseIndex {
        let mut idx = SparseIndex::new(100, 1000);
        let mut pos = SEGMENT_HEADER_LEN as u64;
        for i in 0..50 {
            let h = frame(100 + i * 2, 2, 444, 1000 + i);
            idx.observe(pos, &h);
            pos += h.frame_len();
        }
        idx
    }

    #[test]
    fn encode_decode_round_trip_and_detects_damage() {
        let idx = build();
        let bytes = idx.encode();
        assert_eq!(SparseIndex::decode(&bytes, 100, 1000), Ok(idx.clone()));
        assert_eq!(
            SparseIndex::decode(&bytes, 101, 1000),
            Err(CorruptionKind::BadIndex)
        );
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                SparseIndex::decode(&b, 100, 1000).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(SparseIndex::decode(&bytes[..bytes.len() - 1], 100, 1000).is_err());
    }

    #[test]
    fn a_pinned_resume_point_gets_one_entry() {
        let mut idx = SparseIndex::new(100, 1000);
        let mut pos = SEGMENT_HEADER_LEN as u64;
        for i in 0..3 {
            let h = frame(100 + i, 1, 100, 1000 + i);
            idx.observe(pos, &h);
            pos += h.frame_len();
        }
        assert_eq!(idx.entries.len(), 1, "within the interval");
        idx.pin_resume_point();
        idx.observe(pos, &frame(103, 1, 100, 1003));
        assert_eq!(
            idx.entries
                .last()
                .map(|e| (u64::from(e.position), e.relative_offset)),
            Some((pos, 3))
        );
        // Rewound to that entry, pinning adds no second one.
        let mut rewound = idx.rewind(pos);
        rewound.pin_resume_point();
        rewound.observe(pos, &frame(103, 1, 100, 1003));
        assert_eq!(rewound, idx);
    }

    #[test]
    fn checksummed_but_impossible_indexes_are_refused() {
        let idx = build();
        let last = *idx.entries.last().unwrap();
        let impossible = [
            SparseIndex {
                next_offset: 99,
                ..idx.clone()
            },
            SparseIndex {
                covered_len: u64::from(last.position),
                ..idx.clone()
            },
            SparseIndex {
                next_offset: 100 + i64::from(last.relative_offset),
                ..idx.clone()
            },
            // Its next entry would be out of order (max_ts_before going down), and so would the file.
            SparseIndex {
                max_timestamp: last.max_ts_before - 1,
                ..idx.clone()
            },
            // The first frame has no entry, or one elsewhere.
            SparseIndex {
                entries: idx.entries[1..].to_vec(),
                ..idx.clone()
            },
            SparseIndex {
                entries: std::iter::once(IndexEntry {
                    position: 39,
                    ..idx.entries[0]
                })
                .chain(idx.entries[1..].iter().copied())
                .collect(),
                ..idx.clone()
            },
        ];
        for bad in impossible {
            assert_eq!(
                SparseIndex::decode(&bad.encode(), 100, 1000),
                Err(CorruptionKind::BadIndex),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rewinding_and_scanning_on_rebuilds_the_same_index() {
        let full = build();
        let frames: Vec<(u64, FrameHeader)> = {
            let mut pos = SEGMENT_HEADER_LEN as u64;
            (0..50)
                .map(|i| {
                    let h = frame(100 + i * 2, 2, 444, 1000 + i);
                    let at = pos;
                    pos += h.frame_len();
                    (at, h)
                })
                .collect()
        };
        for len in [0, 31, 32, 33, 1000, 4567, full.covered_len - 1, full.covered_len] {
            let mut idx = full.rewind(len);
            assert!(idx.covered_len <= len.max(SEGMENT_HEADER_LEN as u64), "len {len}");
            let from = idx.covered_len;
            for (at, h) in frames.iter().filter(|(at, _)| *at >= from) {
                idx.observe(*at, h);
            }
            assert_eq!(idx, full, "rewound to {len}");
        }
        // Read back with another interval (the setting changed): the entries up to the rewind point
        // stay, so the next rewind lands where this one did.
        let other = SparseIndex {
            interval: 4096,
            ..full.clone()
        };
        let len = 4567;
        let rewound = other.rewind(len);
        let mut idx = rewound.clone();
        let from = idx.covered_len;
        for (at, h) in frames.iter().filter(|(at, _)| *at >= from) {
            idx.observe(*at, h);
        }
        assert_eq!(idx.rewind(len), rewound);
    }

    #[test]
    fn seeks_never_overshoot() {
        let idx = build();
        assert!(idx.entries.len() > 5 && idx.entries.len() < 50, "index is sparse");
        for target in 100..200 {
            let pos = idx.seek_offset(target);
            let e = idx.entries.iter().find(|e| u64::from(e.position) == pos);
            let start_offset = e.map_or(100, |e| 100 + i64::from(e.relative_offset));
            assert!(start_offset <= target);
        }
        for ts in 990..1060 {
            let pos = idx.seek_timestamp(ts);
            if let Some(e) = idx.entries.iter().find(|e| u64::from(e.position) == pos) {
                assert!(e.max_ts_before < ts);
            }
        }
    }
}
