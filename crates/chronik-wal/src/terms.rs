//! The term map of a partition: for each term (a replicated log's leader epoch) the offset its first
//! batch got. A replica compares its map with the leader's to find where its log stops agreeing with
//! the leader's ([`TermMap::end_of`]), and cuts the rest with `WalManager::truncate_to`.
//!
//! # Invariants
//! - Terms and start offsets both strictly increase along the map: a new term replaces every entry that
//!   starts at or after it (a term that got no batch before the next began leaves no entry).
//! - **An entry is durable before any batch of its term:** the file (`terms`, in the partition's
//!   directory) is written atomically, and synced, before the frame that starts the term is queued. So
//!   after a crash the map may name a term whose first batch was lost, never miss one the log holds.
//! - **The map never runs past the log:** recovery (and so truncation, which recovers the cut log)
//!   drops the entries starting at or after the log's end and writes the file again before the partition
//!   takes appends; retention clamps the first entry to the log start.

use std::{mem::size_of, path::Path};

use crate::{
    error::CorruptionKind,
    frame::{le_i64, le_u32},
    io::{read_file, write_file_atomic, WalIo},
    version::FormatVersion,
    Error, Result,
};

pub const TERMS_FILE: &str = "terms";
/// `"CHRNKTRM"`.
pub const TERMS_MAGIC: [u8; 8] = *b"CHRNKTRM";
/// Bound on the file read back (about 87,000 terms).
const MAX_TERMS_BYTES: u64 = 1 << 20;
const VERSION_AT: usize = TERMS_MAGIC.len();
const COUNT_AT: usize = VERSION_AT + 4;
const CRC_AT: usize = COUNT_AT + size_of::<u32>();
pub const TERMS_HEADER_LEN: usize = CRC_AT + size_of::<u32>();
const ENTRY_LEN: usize = size_of::<i32>() + size_of::<i64>();

/// One term and the offset of its first batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermStart {
    pub term: i32,
    pub start_offset: i64,
}

/// A partition's terms, oldest first (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TermMap {
    entries: Vec<TermStart>,
}

/// What [`TermMap::assign`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// The term is the latest already.
    Same,
    /// A new latest term: the map changed and must be written.
    New,
}

impl TermMap {
    pub fn entries(&self) -> &[TermStart] {
        &self.entries
    }

    /// The latest term, if any batch (or [`crate::PartitionWal::begin_term`]) named one.
    pub fn latest(&self) -> Option<i32> {
        self.entries.last().map(|e| e.term)
    }

    /// Makes `term` the latest, starting at `start_offset`. Refused if a later term is known: a log
    /// never goes back to an older term (the caller is a deposed leader, or copies a stale one).
    pub fn assign(&mut self, term: i32, start_offset: i64) -> Result<Assigned> {
        if term < 0 {
            return Err(Error::InvalidArgument(format!("term {term} is negative")));
        }
        match self.latest() {
            Some(latest) if term < latest => return Err(Error::TermBehind { term, latest }),
            Some(latest) if term == latest => return Ok(Assigned::Same),
            _ => {}
        }
        self.entries.retain(|e| e.start_offset < start_offset);
        self.entries.push(TermStart { term, start_offset });
        Ok(Assigned::New)
    }

    /// Drops the terms starting at or after `offset` (the log was cut there, or ends there). Returns
    /// whether the map changed.
    pub fn truncate_from(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < offset);
        self.entries.len() != before
    }

    /// Forgets what lies below `log_start`: the last term starting at or before it now starts there.
    /// Returns whether the map changed.
    pub fn trim_before(&mut self, log_start: i64) -> bool {
        let keep_from = self.entries.iter().rposition(|e| e.start_offset <= log_start);
        let Some(first) = keep_from else {
            return false;
        };
        let changed = first > 0 || self.entries[first].start_offset != log_start;
        self.entries.drain(..first);
        self.entries[0].start_offset = log_start;
        changed
    }

    /// Where the log's part written in `term` (or, if this log has no such term, in the latest term
    /// before it) ends, as Kafka's OffsetForLeaderEpoch answers: `(term found, end offset)`, where the
    /// end is the next term's start offset, or `log_end` for the latest term. `None` when this log knows
    /// no term at or before `term` that it could vouch for (the caller's term is newer than this log's
    /// latest, or the map is empty).
    pub fn end_of(&self, term: i32, log_end: i64) -> Option<(i32, i64)> {
        let latest = self.latest()?;
        if term == latest {
            return Some((term, log_end));
        }
        let higher = self.entries.iter().position(|e| e.term > term)?;
        let end = self.entries[higher].start_offset;
        match higher.checked_sub(1) {
            Some(floor) => Some((self.entries[floor].term, end)),
            // Older than every term here: nothing of this log belongs to it.
            None => Some((term, end)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; TERMS_HEADER_LEN];
        out[..VERSION_AT].copy_from_slice(&TERMS_MAGIC);
        out[VERSION_AT] = FormatVersion::CURRENT as u8;
        out[COUNT_AT..CRC_AT].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.term.to_le_bytes());
            out.extend_from_slice(&e.start_offset.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..CRC_AT]), &out[TERMS_HEADER_LEN..]);
        out[CRC_AT..TERMS_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, CorruptionKind> {
        let bad = CorruptionKind::BadTerms;
        if bytes.len() < TERMS_HEADER_LEN || bytes[..VERSION_AT] != TERMS_MAGIC {
            return Err(bad);
        }
        FormatVersion::try_from(bytes[VERSION_AT])?;
        let body = &bytes[TERMS_HEADER_LEN..];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..CRC_AT]), body);
        let count = le_u32(bytes, COUNT_AT) as usize;
        if crc != le_u32(bytes, CRC_AT) || Some(body.len()) != count.checked_mul(ENTRY_LEN) {
            return Err(bad);
        }
        let mut entries: Vec<TermStart> = Vec::with_capacity(count);
        for chunk in body.chunks_exact(ENTRY_LEN) {
            let term = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let start_offset = le_i64(chunk, 4);
            let ordered = entries
                .last()
                .is_none_or(|p| p.term < term && p.start_offset < start_offset);
            if term < 0 || start_offset < 0 || !ordered {
                return Err(bad);
            }
            entries.push(TermStart { term, start_offset });
        }
        Ok(Self { entries })
    }

    /// Reads the map of the partition in `dir`; a partition without the file has no terms yet.
    pub fn load(io: &dyn WalIo, dir: &Path) -> Result<Self> {
        let path = dir.join(TERMS_FILE);
        if !io.exists(&path).map_err(|e| Error::io("checking", &path, e))? {
            return Ok(Self::default());
        }
        let bytes = read_file(io, &path, MAX_TERMS_BYTES).map_err(|e| Error::io("reading", &path, e))?;
        Self::decode(&bytes).map_err(|kind| Error::corrupt(&path, 0, kind))
    }

    /// Replaces the partition's file with this map, durably.
    pub fn store(&self, io: &dyn WalIo, dir: &Path) -> Result<()> {
        let path = dir.join(TERMS_FILE);
        write_file_atomic(io, &path, &self.encode()).map_err(|e| Error::io("writing", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(i32, i64)]) -> TermMap {
        let mut m = TermMap::default();
        for &(term, start) in entries {
            assert_eq!(m.assign(term, start).unwrap(), Assigned::New);
        }
        m
    }

    #[test]
    fn assign_keeps_terms_and_starts_increasing() {
        let mut m = map(&[(0, 0), (2, 10)]);
        assert_eq!(m.assign(2, 15).unwrap(), Assigned::Same);
        assert!(matches!(
            m.assign(1, 20),
            Err(Error::TermBehind { term: 1, latest: 2 })
        ));
        // Term 3 began where term 2 did: term 2 got no batch and leaves no entry.
        m.assign(3, 10).unwrap();
        assert_eq!(
            m.entries(),
            &[
                TermStart {
                    term: 0,
                    start_offset: 0
                },
                TermStart {
                    term: 3,
                    start_offset: 10
                }
            ]
        );
        assert!(m.assign(-1, 30).is_err());
    }

    #[test]
    fn end_of_answers_as_kafka_does() {
        let m = map(&[(1, 0), (3, 10), (5, 25)]);
        assert_eq!(m.end_of(5, 40), Some((5, 40)));
        assert_eq!(m.end_of(3, 40), Some((3, 25)));
        // A term this log skipped: the one before it, ending where the next began.
        assert_eq!(m.end_of(4, 40), Some((3, 25)));
        assert_eq!(m.end_of(2, 40), Some((1, 10)));
        // Older than every term here.
        assert_eq!(m.end_of(0, 40), Some((0, 0)));
        // Newer than this log knows.
        assert_eq!(m.end_of(6, 40), None);
        assert_eq!(TermMap::default().end_of(1, 0), None);
    }

    #[test]
    fn truncation_and_trimming() {
        let mut m = map(&[(1, 0), (3, 10), (5, 25)]);
        assert!(!m.truncate_from(26));
        assert!(m.truncate_from(25));
        assert_eq!(m.latest(), Some(3));
        assert!(!m.trim_before(0));
        assert!(m.trim_before(12));
        assert_eq!(
            m.entries(),
            &[TermStart {
                term: 3,
                start_offset: 12
            }]
        );
        assert!(!m.trim_before(12));
        // Below every entry: nothing to forget.
        let mut n = map(&[(2, 5)]);
        assert!(!n.trim_before(3));
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let m = map(&[(1, 0), (3, 10), (5, 25)]);
        let bytes = m.encode();
        assert_eq!(TermMap::decode(&bytes).unwrap(), m);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(TermMap::decode(&bad).is_err(), "flipped byte {i} accepted");
        }
        assert!(TermMap::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            TermMap::decode(&TermMap::default().encode()).unwrap(),
            TermMap::default()
        );
    }
}
