//! The journal's bytes: file header, rounds, records (specified in `FORMAT.md`, "Journal"), and reading
//! back the valid rounds of a file.

use std::path::Path;

use crate::{io::WalFile, version::FormatVersion, TopicPartition};

pub(crate) const FILE_MAGIC: [u8; 8] = *b"CHRJRNL\0";
/// Bytes of the file header; the first round starts here.
pub(crate) const FILE_HEADER_LEN: u64 = 64;
const FILE_HEADER_CRC_AT: usize = 60;
/// `prev_valid_len` of a file with no predecessor to bound.
pub(crate) const NO_BOUND: u64 = u64::MAX;

pub(crate) const ROUND_MAGIC: u32 = 0x524e_4431; // "RND1"
pub(crate) const ROUND_HEADER_LEN: usize = 32;
/// A round body larger than this is not one the journal wrote.
const MAX_ROUND_BODY: u64 = 1 << 31;
pub(crate) const FILE_SUFFIX: &str = ".journal";

pub(crate) fn file_name(seq: u64) -> String {
    format!("{seq:020}{FILE_SUFFIX}")
}

pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(FILE_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A journal file's header: which file it is, and how much of the file before it is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileHeader {
    pub seq: u64,
    /// The file written before this one (0: none).
    pub prev_seq: u64,
    /// Bytes of file `prev_seq` that hold valid rounds; [`NO_BOUND`] if all its valid rounds count.
    pub prev_valid_len: u64,
}

impl FileHeader {
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN as usize] {
        let mut b = [0u8; FILE_HEADER_LEN as usize];
        b[..8].copy_from_slice(&FILE_MAGIC);
        b[8] = FormatVersion::CURRENT as u8;
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.prev_valid_len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..FILE_HEADER_CRC_AT]);
        b[FILE_HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for anything but a header this version wrote (a prepared file not yet used reads as zeros).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < FILE_HEADER_LEN as usize || b[..8] != FILE_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[FILE_HEADER_CRC_AT..64].try_into().ok()?);
        if crc != crc32c::crc32c(&b[..FILE_HEADER_CRC_AT]) || FormatVersion::try_from(b[8]).is_err() {
            return None;
        }
        Some(Self {
            seq: u64::from_le_bytes(b[16..24].try_into().ok()?),
            prev_seq: u64::from_le_bytes(b[24..32].try_into().ok()?),
            prev_valid_len: u64::from_le_bytes(b[32..40].try_into().ok()?),
        })
    }
}

/// One record: bytes written to a partition's segment at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub tp: TopicPartition,
    pub segment_base: i64,
    pub position: u64,
    pub bytes: Vec<u8>,
}

/// Appends one record's encoding to `out`.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    tp: &TopicPartition,
    segment_base: i64,
    position: u64,
    bytes: &[u8],
) {
    let topic = tp.topic.as_bytes();
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&tp.partition.to_le_bytes());
    out.extend_from_slice(&segment_base.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Starts a round in `out` (its header is filled in by [`finish_round`]).
pub(crate) fn begin_round(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0u8; ROUND_HEADER_LEN]);
    at
}

/// Fills in the header of the round started at `at`, whose body runs to the end of `out`.
pub(crate) fn finish_round(out: &mut [u8], at: usize, file_seq: u64, round_no: u64, records: u32) {
    let body_len = (out.len() - at - ROUND_HEADER_LEN) as u32;
    let h = &mut out[at..at + ROUND_HEADER_LEN];
    h[0..4].copy_from_slice(&ROUND_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&body_len.to_le_bytes());
    h[8..16].copy_from_slice(&file_seq.to_le_bytes());
    h[16..24].copy_from_slice(&round_no.to_le_bytes());
    h[28..32].copy_from_slice(&records.to_le_bytes());
    let crc = round_crc(&out[at..]);
    out[at + 24..at + 28].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C of a round: its header without the CRC field, then its body.
fn round_crc(round: &[u8]) -> u32 {
    let c = crc32c::crc32c(&round[..24]);
    let c = crc32c::crc32c_append(c, &round[28..ROUND_HEADER_LEN]);
    crc32c::crc32c_append(c, &round[ROUND_HEADER_LEN..])
}

fn decode_records(mut body: &[u8], count: u32) -> Option<Vec<Record>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let topic_len = u16::from_le_bytes(take(&mut body, 2)?.try_into().ok()?) as usize;
        let topic = std::str::from_utf8(take(&mut body, topic_len)?).ok()?;
        let partition = i32::from_le_bytes(take(&mut body, 4)?.try_into().ok()?);
        let segment_base = i64::from_le_bytes(take(&mut body, 8)?.try_into().ok()?);
        let position = u64::from_le_bytes(take(&mut body, 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(take(&mut body, 4)?.try_into().ok()?) as usize;
        let bytes = take(&mut body, len)?.to_vec();
        let tp = TopicPartition::new(topic, partition);
        tp.validate().ok()?;
        out.push(Record {
            tp,
            segment_base,
            position,
            bytes,
        });
    }
    body.is_empty().then_some(out)
}

/// What reading a journal file found.
#[derive(Debug, Default)]
pub(crate) struct FileRounds {
    pub header: Option<FileHeader>,
    /// Records of the valid rounds, in journal order.
    pub records: Vec<Record>,
    /// End of the last valid round (the header's end if none; 0 without a header).
    pub valid_len: u64,
    /// Why reading stopped before the end of the data, if it met something other than zeros or the
    /// bound: damage, or the torn tail of a round that was never acknowledged.
    pub stopped: Option<String>,
}

/// Reads the valid rounds of journal file `seq`, up to `bound` bytes, keeping the records `keep` accepts.
/// A round is valid if its header names this file and the next round number and its CRC matches; the first
/// one that is not ends the file (the rounds after it were never acknowledged: each round's fdatasync
/// covered every round before it).
pub(crate) fn read_file(
    file: &dyn WalFile,
    path: &Path,
    seq: u64,
    bound: u64,
    keep: &mut dyn FnMut(&TopicPartition) -> bool,
) -> std::io::Result<FileRounds> {
    let mut out = FileRounds::default();
    let size = file.size()?.min(bound);
    if size < FILE_HEADER_LEN {
        return Ok(out);
    }
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)?;
    let header = match FileHeader::decode(&header) {
        Some(h) if h.seq == seq => h,
        _ => return Ok(out),
    };
    out.header = Some(header);
    let mut pos = FILE_HEADER_LEN;
    let mut round_no = 1;
    loop {
        out.valid_len = pos;
        if pos + ROUND_HEADER_LEN as u64 > size {
            return Ok(out);
        }
        let mut h = [0u8; ROUND_HEADER_LEN];
        file.read_exact_at(&mut h, pos)?;
        let field = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let body_len = u64::from(u32::from_le_bytes([h[4], h[5], h[6], h[7]]));
        let count = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
        let end = pos + ROUND_HEADER_LEN as u64 + body_len;
        if magic != ROUND_MAGIC || field(8) != seq {
            // What the file this one was recycled from held (or zeros): the end of this one's rounds.
            return Ok(out);
        }
        if field(16) != round_no {
            out.stopped = Some(format!("{}: no round {round_no} at byte {pos}", path.display()));
            return Ok(out);
        }
        if body_len > MAX_ROUND_BODY || end > size {
            out.stopped = Some(format!(
                "{}: round {round_no} at byte {pos} runs past the end",
                path.display()
            ));
            return Ok(out);
        }
        let mut round = vec![0u8; (end - pos) as usize];
        file.read_exact_at(&mut round, pos)?;
        let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
        if crc != round_crc(&round) {
            out.stopped = Some(format!(
                "{}: round {round_no} at byte {pos} fails its CRC",
                path.display()
            ));
            return Ok(out);
        }
        let Some(records) = decode_records(&round[ROUND_HEADER_LEN..], count) else {
            out.stopped = Some(format!(
                "{}: round {round_no} at byte {pos} holds malformed records",
                path.display()
            ));
            return Ok(out);
        };
        out.records.extend(records.into_iter().filter(|r| keep(&r.tp)));
        round_no += 1;
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_others_are_refused() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("42.journal"), None);
        assert_eq!(parse_file_name("00000000000000000042.wal"), None);
    }

    #[test]
    fn headers_round_trip_and_damage_is_refused() {
        let h = FileHeader {
            seq: 7,
            prev_seq: 5,
            prev_valid_len: 4096,
        };
        let mut b = h.encode();
        assert_eq!(FileHeader::decode(&b), Some(h));
        b[20] ^= 1;
        assert_eq!(FileHeader::decode(&b), None);
        assert_eq!(FileHeader::decode(&[0u8; 64]), None);
    }

    #[test]
    fn records_round_trip_through_a_round() {
        let tp = TopicPartition::new("orders", 3);
        let mut buf = Vec::new();
        let at = begin_round(&mut buf);
        encode_record(&mut buf, &tp, 100, 32, b"frame-bytes");
        encode_record(&mut buf, &tp, 100, 43, b"more");
        finish_round(&mut buf, at, 1, 1, 2);
        let records = decode_records(&buf[ROUND_HEADER_LEN..], 2).expect("decodes");
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].position, 43);
        assert_eq!(records[1].bytes, b"more");
        assert_eq!(
            round_crc(&buf),
            u32::from_le_bytes(buf[24..28].try_into().unwrap())
        );
        assert!(decode_records(&buf[ROUND_HEADER_LEN..], 3).is_none());
        assert!(decode_records(&buf[ROUND_HEADER_LEN..], 1).is_none());
    }
}
