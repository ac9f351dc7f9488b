//! The frame: one appended batch as it lies in a segment file. See FORMAT.md for the byte table.
//!
//! Invariants:
//! - A frame is valid only if its magic, version, reserved bytes, header CRC, length bound and payload CRC
//!   all check; so a torn or overwritten frame is detected from the frame alone.
//! - The header CRC covers the length, so a corrupt length is caught before it is used to read anything.

use std::mem::size_of;

use crate::{config::MAX_BATCH_BYTES_LIMIT, error::CorruptionKind, version::FormatVersion};

/// `"CKWF"` read as a little-endian u32: Chronik WAL Frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"CKWF");

// Field offsets within the frame header (all little-endian).
pub(crate) const MAGIC_AT: usize = 0;
pub(crate) const VERSION_AT: usize = MAGIC_AT + size_of::<u32>();
pub(crate) const FLAGS_AT: usize = VERSION_AT + size_of::<u8>();
pub(crate) const RESERVED_AT: usize = FLAGS_AT + size_of::<u8>();
pub(crate) const PAYLOAD_LEN_AT: usize = RESERVED_AT + size_of::<u16>();
pub(crate) const RECORD_COUNT_AT: usize = PAYLOAD_LEN_AT + size_of::<u32>();
pub(crate) const BASE_OFFSET_AT: usize = RECORD_COUNT_AT + size_of::<u32>();
pub(crate) const FIRST_TS_AT: usize = BASE_OFFSET_AT + size_of::<i64>();
pub(crate) const MAX_TS_AT: usize = FIRST_TS_AT + size_of::<i64>();
pub(crate) const SYNCED_POS_AT: usize = MAX_TS_AT + size_of::<i64>();
pub(crate) const PAYLOAD_CRC_AT: usize = SYNCED_POS_AT + size_of::<u64>();
pub(crate) const HEADER_CRC_AT: usize = PAYLOAD_CRC_AT + size_of::<u32>();
/// Bytes before the payload.
pub const FRAME_HEADER_LEN: usize = HEADER_CRC_AT + size_of::<u32>();

const _: () = assert!(FRAME_HEADER_LEN == 56);
const _: () = assert!(
    BASE_OFFSET_AT.is_multiple_of(8),
    "64-bit fields are naturally aligned"
);
const _: () = assert!((MAX_BATCH_BYTES_LIMIT as u64) < u32::MAX as u64 - FRAME_HEADER_LEN as u64);

/// The decoded header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    /// Number of offsets the batch occupies: `[base_offset, base_offset + record_count)`. At least 1.
    pub record_count: u32,
    pub base_offset: i64,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    /// How many bytes of this segment were known durable when the frame was written. A valid frame whose
    /// `synced_pos` lies past a bad frame proves the bad frame was once durable: damage, not a torn write.
    pub synced_pos: u64,
    pub payload_crc: u32,
}

impl FrameHeader {
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.record_count)
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[MAGIC_AT..VERSION_AT].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        h[VERSION_AT] = FormatVersion::CURRENT as u8;
        h[PAYLOAD_LEN_AT..RECORD_COUNT_AT].copy_from_slice(&self.payload_len.to_le_bytes());
        h[RECORD_COUNT_AT..BASE_OFFSET_AT].copy_from_slice(&self.record_count.to_le_bytes());
        h[BASE_OFFSET_AT..FIRST_TS_AT].copy_from_slice(&self.base_offset.to_le_bytes());
        h[FIRST_TS_AT..MAX_TS_AT].copy_from_slice(&self.first_timestamp.to_le_bytes());
        h[MAX_TS_AT..SYNCED_POS_AT].copy_from_slice(&self.max_timestamp.to_le_bytes());
        h[SYNCED_POS_AT..PAYLOAD_CRC_AT].copy_from_slice(&self.synced_pos.to_le_bytes());
        h[PAYLOAD_CRC_AT..HEADER_CRC_AT].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
        h[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header. `max_payload` bounds the length before anyone allocates for it.
    pub fn decode(h: &[u8; FRAME_HEADER_LEN], max_payload: u32) -> Result<Self, CorruptionKind> {
        let magic = le_u32(h, MAGIC_AT);
        if magic != FRAME_MAGIC {
            return Err(CorruptionKind::BadMagic { found: magic });
        }
        FormatVersion::try_from(h[VERSION_AT])?;
        let stored = le_u32(h, HEADER_CRC_AT);
        let computed = crc32c::crc32c(&h[..HEADER_CRC_AT]);
        if stored != computed {
            return Err(CorruptionKind::HeaderChecksum { stored, computed });
        }
        if h[FLAGS_AT] != 0 || h[RESERVED_AT] != 0 || h[RESERVED_AT + 1] != 0 {
            return Err(CorruptionKind::BadField { field: "flags" });
        }
        let header = FrameHeader {
            payload_len: le_u32(h, PAYLOAD_LEN_AT),
            record_count: le_u32(h, RECORD_COUNT_AT),
            base_offset: le_i64(h, BASE_OFFSET_AT),
            first_timestamp: le_i64(h, FIRST_TS_AT),
            max_timestamp: le_i64(h, MAX_TS_AT),
            synced_pos: le_u64(h, SYNCED_POS_AT),
            payload_crc: le_u32(h, PAYLOAD_CRC_AT),
        };
        if header.payload_len > max_payload {
            return Err(CorruptionKind::FrameTooLarge {
                len: u64::from(header.payload_len),
                max: u64::from(max_payload),
            });
        }
        if header.record_count == 0 {
            return Err(CorruptionKind::BadField {
                field: "record_count",
            });
        }
        if header.base_offset < 0
            || header
                .base_offset
                .checked_add(i64::from(header.record_count))
                .is_none()
        {
            return Err(CorruptionKind::BadField { field: "base_offset" });
        }
        Ok(header)
    }

    /// Checks the payload against the header's CRC.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), CorruptionKind> {
        let computed = crc32c::crc32c(payload);
        if computed != self.payload_crc {
            return Err(CorruptionKind::PayloadChecksum {
                stored: self.payload_crc,
                computed,
            });
        }
        Ok(())
    }
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn le_i64(b: &[u8], at: usize) -> i64 {
    le_u64(b, at) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FrameHeader {
        FrameHeader {
            payload_len: 5,
            record_count: 3,
            base_offset: 42,
            first_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_009,
            synced_pos: 4096,
            payload_crc: crc32c::crc32c(b"hello"),
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(FrameHeader::decode(&h.encode(), 1024), Ok(h));
        assert_eq!(h.verify_payload(b"hello"), Ok(()));
        assert!(matches!(
            h.verify_payload(b"hellp"),
            Err(CorruptionKind::PayloadChecksum { .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_in_the_header_is_detected() {
        let enc = sample().encode();
        for bit in 0..FRAME_HEADER_LEN * 8 {
            let mut h = enc;
            h[bit / 8] ^= 1 << (bit % 8);
            assert!(
                FrameHeader::decode(&h, 1024).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn zeroed_header_is_not_a_frame() {
        assert_eq!(
            FrameHeader::decode(&[0u8; FRAME_HEADER_LEN], 1024),
            Err(CorruptionKind::BadMagic { found: 0 })
        );
    }

    #[test]
    fn oversized_length_is_rejected_before_use() {
        let mut h = sample();
        h.payload_len = 2048;
        assert!(matches!(
            FrameHeader::decode(&h.encode(), 1024),
            Err(CorruptionKind::FrameTooLarge { .. })
        ));
    }
}
