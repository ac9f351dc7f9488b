//! The checkpoint file: per partition, how far its active segment is known durable. Recovery trusts the
//! log below that point (and every segment before it) and validates only what follows.
//!
//! Written atomically (temp file, fsync, rename, fsync directory), so after a crash the file is either the
//! previous checkpoint or the new one. A checkpoint that fails its CRC is ignored with a warning: recovery
//! then validates everything, which is slower but never wrong.

use std::{collections::HashSet, mem::size_of, path::Path};

use crate::{
    error::CorruptionKind,
    frame::{le_i64, le_u32, le_u64},
    io::{read_file, write_file_atomic, WalIo},
    partition::CheckpointEntry,
    segment::SEGMENT_HEADER_LEN,
    version::FormatVersion,
    Error, Result, TopicPartition,
};

pub const CHECKPOINT_FILE: &str = "checkpoint";
/// `"CHRNKCKP"`.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"CHRNKCKP";
/// Bound on the file size read back (about 4 million partitions).
const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

const VERSION_AT: usize = CHECKPOINT_MAGIC.len();
const COUNT_AT: usize = VERSION_AT + 4;
const BODY_LEN_AT: usize = COUNT_AT + size_of::<u32>();
const CRC_AT: usize = BODY_LEN_AT + size_of::<u32>();
pub const CHECKPOINT_HEADER_LEN: usize = CRC_AT + size_of::<u32>();
/// Bytes of an entry after its topic: partition i32, segment_base i64, position u64, next_offset i64,
/// max_timestamp i64.
const ENTRY_FIXED_LEN: usize = size_of::<i32>() + 4 * size_of::<u64>();
const _: () = assert!(CHECKPOINT_HEADER_LEN == 24);

pub fn encode(entries: &[CheckpointEntry]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in entries {
        let topic = e.tp.topic.as_bytes();
        body.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        body.extend_from_slice(topic);
        body.extend_from_slice(&e.tp.partition.to_le_bytes());
        body.extend_from_slice(&e.segment_base.to_le_bytes());
        body.extend_from_slice(&e.position.to_le_bytes());
        body.extend_from_slice(&e.next_offset.to_le_bytes());
        body.extend_from_slice(&e.max_timestamp.to_le_bytes());
    }
    let mut out = vec![0u8; CHECKPOINT_HEADER_LEN];
    out[..VERSION_AT].copy_from_slice(&CHECKPOINT_MAGIC);
    out[VERSION_AT] = FormatVersion::CURRENT as u8;
    out[COUNT_AT..BODY_LEN_AT].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    out[BODY_LEN_AT..CRC_AT].copy_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..CRC_AT]), &body);
    out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Vec<CheckpointEntry>, CorruptionKind> {
    let bad = CorruptionKind::BadCheckpoint;
    if bytes.len() < CHECKPOINT_HEADER_LEN || bytes[..VERSION_AT] != CHECKPOINT_MAGIC {
        return Err(bad);
    }
    FormatVersion::try_from(bytes[VERSION_AT])?;
    let body = &bytes[CHECKPOINT_HEADER_LEN..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..CRC_AT]), body);
    if body.len() != le_u32(bytes, BODY_LEN_AT) as usize || crc != le_u32(bytes, CRC_AT) {
        return Err(bad);
    }
    let count = le_u32(bytes, COUNT_AT) as usize;
    let mut entries = Vec::with_capacity(count.min(body.len() / (2 + ENTRY_FIXED_LEN)));
    let mut at = 0usize;
    for _ in 0..count {
        let topic_len = body.get(at..at + 2).ok_or(bad.clone())?;
        let topic_len = u16::from_le_bytes([topic_len[0], topic_len[1]]) as usize;
        let rest = body
            .get(at + 2..at + 2 + topic_len + ENTRY_FIXED_LEN)
            .ok_or(bad.clone())?;
        let topic = std::str::from_utf8(&rest[..topic_len]).map_err(|_| bad.clone())?;
        let f = &rest[topic_len..];
        entries.push(CheckpointEntry {
            tp: TopicPartition::new(topic, le_u32(f, 0) as i32),
            segment_base: le_i64(f, 4),
            position: le_u64(f, 12),
            next_offset: le_i64(f, 20),
            max_timestamp: le_i64(f, 28),
        });
        at += 2 + topic_len + ENTRY_FIXED_LEN;
    }
    if at != body.len() || !possible(&entries) {
        return Err(bad);
    }
    Ok(entries)
}

/// False for entries the WAL never writes: two for one partition, a durable length inside the segment
/// header, offsets below the segment's base. Recovery would act on them (cut a segment's header, say:
/// fuzz regression `checkpoint-position-inside-segment-header`), so such a checkpoint is as unusable as
/// one that fails its CRC.
fn possible(entries: &[CheckpointEntry]) -> bool {
    let header = SEGMENT_HEADER_LEN as u64;
    let mut seen = HashSet::with_capacity(entries.len());
    entries.iter().all(|e| {
        seen.insert(&e.tp)
            && e.segment_base >= 0
            && e.position >= header
            && e.next_offset >= e.segment_base
            && (e.position > header || e.next_offset == e.segment_base)
    })
}

pub fn write(io: &dyn WalIo, root: &Path, entries: &[CheckpointEntry]) -> Result<()> {
    let path = root.join(CHECKPOINT_FILE);
    write_file_atomic(io, &path, &encode(entries)).map_err(|e| Error::io("writing checkpoint", path, e))
}

/// Reads the checkpoint; `Ok(None)` if there is none. A damaged one is an error the caller may ignore.
pub fn read(io: &dyn WalIo, root: &Path) -> Result<Option<Vec<CheckpointEntry>>> {
    let path = root.join(CHECKPOINT_FILE);
    if !io.exists(&path).map_err(|e| Error::io("checking", &path, e))? {
        return Ok(None);
    }
    let bytes = read_file(io, &path, MAX_CHECKPOINT_BYTES).map_err(|e| Error::io("reading", &path, e))?;
    decode(&bytes)
        .map(Some)
        .map_err(|kind| Error::corrupt(path, 0, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let entries = vec![
            CheckpointEntry {
                tp: TopicPartition::new("orders", 3),
                segment_base: 100,
                position: 4096,
                next_offset: 180,
                max_timestamp: 77,
            },
            CheckpointEntry {
                tp: TopicPartition::new("a.b_c-d", 0),
                segment_base: 0,
                position: 32,
                next_offset: 0,
                max_timestamp: i64::MIN,
            },
        ];
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes), Ok(entries));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(decode(&encode(&[])), Ok(vec![]));
    }

    #[test]
    fn entries_the_wal_never_writes_are_refused() {
        let good = CheckpointEntry {
            tp: TopicPartition::new("orders", 3),
            segment_base: 100,
            position: 4096,
            next_offset: 180,
            max_timestamp: 77,
        };
        let empty = CheckpointEntry {
            position: SEGMENT_HEADER_LEN as u64,
            next_offset: 100,
            ..good.clone()
        };
        assert!(decode(&encode(std::slice::from_ref(&good))).is_ok());
        assert!(decode(&encode(std::slice::from_ref(&empty))).is_ok());
        let impossible = [
            vec![good.clone(), empty.clone()],
            vec![CheckpointEntry {
                position: SEGMENT_HEADER_LEN as u64 - 1,
                ..good.clone()
            }],
            vec![CheckpointEntry {
                next_offset: 99,
                ..good.clone()
            }],
            vec![CheckpointEntry {
                segment_base: -1,
                next_offset: 0,
                ..good.clone()
            }],
            vec![CheckpointEntry {
                next_offset: 101,
                ..empty
            }],
        ];
        for entries in impossible {
            assert_eq!(
                decode(&encode(&entries)),
                Err(CorruptionKind::BadCheckpoint),
                "{entries:?}"
            );
        }
    }
}
