//! The fixed header of a Kafka RecordBatch (magic 2), enough to validate a produced batch and to index it
//! in the WAL without decompressing or re-encoding it.
//!
//! ```text
//! 0  baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8 | 17 crc u32 (CRC32C of
//! bytes 21..) | 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64 | 35 maxTimestamp i64 |
//! 43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32 | 57 recordCount i32 | 61 records...
//! ```

use bytes::Bytes;

pub const HEADER_LEN: usize = 61;
const LENGTH_FIELDS: usize = 12; // baseOffset + batchLength: not counted in batchLength
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

/// Why a produced batch is refused. Each maps to a Kafka error code at the API edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record set is empty")]
    Empty,
    #[error("truncated record batch: {0}")]
    Truncated(&'static str),
    #[error("unsupported record batch magic {0} (only 2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc { stored: u32, computed: u32 },
    #[error("inconsistent record batch header: {0}")]
    Invalid(&'static str),
}

/// A validated batch: its bytes (verbatim) and what the WAL indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedBatch {
    pub bytes: Bytes,
    /// Offsets the batch spans: lastOffsetDelta + 1.
    pub offset_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub record_count: i32,
    /// -1 unless the producer is idempotent.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducedBatch {
    /// Sequence number of the batch's last record (sequences wrap at `i32::MAX`).
    pub fn last_sequence(&self) -> i32 {
        seq_add(self.base_sequence, self.offset_count as i32 - 1)
    }
}

/// `a + n` in Kafka's wrapping sequence space.
pub fn seq_add(a: i32, n: i32) -> i32 {
    ((i64::from(a) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Reads the header of a stored batch (already validated when it was produced).
pub fn stored_header(bytes: &Bytes) -> Option<ProducedBatch> {
    (bytes.len() >= HEADER_LEN).then(|| header_fields(bytes.clone()))
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Splits a produced record set into validated batches (a set may hold several).
pub fn split_batches(mut records: Bytes) -> Result<Vec<ProducedBatch>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut out = Vec::new();
    while !records.is_empty() {
        if records.len() < LENGTH_FIELDS {
            return Err(BatchError::Truncated("length fields"));
        }
        let batch_len = i32_at(&records, 8);
        if batch_len < (HEADER_LEN - LENGTH_FIELDS) as i32 {
            return Err(BatchError::Invalid("batchLength smaller than the header"));
        }
        let total = LENGTH_FIELDS + batch_len as usize;
        if total > records.len() {
            return Err(BatchError::Truncated("batchLength runs past the record set"));
        }
        out.push(validate(records.split_to(total))?);
    }
    Ok(out)
}

fn validate(b: Bytes) -> Result<ProducedBatch, BatchError> {
    let magic = b[MAGIC_AT] as i8;
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    let stored = u32::from_be_bytes([b[CRC_AT], b[CRC_AT + 1], b[CRC_AT + 2], b[CRC_AT + 3]]);
    let computed = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
    if stored != computed {
        return Err(BatchError::Crc { stored, computed });
    }
    let last_offset_delta = i32_at(&b, LAST_OFFSET_DELTA_AT);
    let record_count = i32_at(&b, RECORD_COUNT_AT);
    if last_offset_delta < 0 || record_count < 0 || record_count > last_offset_delta.saturating_add(1) {
        return Err(BatchError::Invalid("record count and lastOffsetDelta disagree"));
    }
    Ok(header_fields(b))
}

fn header_fields(b: Bytes) -> ProducedBatch {
    ProducedBatch {
        offset_count: i32_at(&b, LAST_OFFSET_DELTA_AT).max(0) as u32 + 1,
        first_timestamp: i64_at(&b, BASE_TIMESTAMP_AT),
        max_timestamp: i64_at(&b, MAX_TIMESTAMP_AT),
        record_count: i32_at(&b, RECORD_COUNT_AT),
        producer_id: i64_at(&b, PRODUCER_ID_AT),
        producer_epoch: i16::from_be_bytes([b[PRODUCER_EPOCH_AT], b[PRODUCER_EPOCH_AT + 1]]),
        base_sequence: i32_at(&b, BASE_SEQUENCE_AT),
        bytes: b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::{
        protocol::StrBytes,
        records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
    };

    fn encoded(n: usize, compression: Compression) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: -1,
                timestamp: 1000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: [(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"x")))]
                    .into_iter()
                    .collect(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    #[test]
    fn accepts_client_batches_and_reads_their_header() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            // The encoder may cut the records into several batches; together they hold all five.
            let batches = split_batches(encoded(5, compression)).expect("valid");
            assert_eq!(batches.iter().map(|b| b.offset_count).sum::<u32>(), 5);
            assert_eq!(batches.iter().map(|b| b.record_count).sum::<i32>(), 5);
            assert_eq!(batches.first().map(|b| b.first_timestamp), Some(1000));
            assert_eq!(batches.iter().map(|b| b.max_timestamp).max(), Some(1004));
        }
        let mut two = encoded(2, Compression::None).to_vec();
        two.extend_from_slice(&encoded(3, Compression::None));
        let both = split_batches(Bytes::from(two)).expect("two record sets");
        assert_eq!(both.iter().map(|b| b.offset_count).sum::<u32>(), 5);
    }

    #[test]
    fn refuses_damaged_batches() {
        let good = encoded(3, Compression::None);
        let mut flipped = good.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            split_batches(Bytes::from(flipped)),
            Err(BatchError::Crc { .. })
        ));
        let mut magic1 = good.to_vec();
        magic1[MAGIC_AT] = 1;
        assert_eq!(
            split_batches(Bytes::from(magic1)),
            Err(BatchError::UnsupportedMagic(1))
        );
        assert!(matches!(
            split_batches(good.slice(..good.len() - 1)),
            Err(BatchError::Truncated(_))
        ));
        assert!(matches!(
            split_batches(good.slice(..10)),
            Err(BatchError::Truncated(_))
        ));
        assert_eq!(split_batches(Bytes::new()), Err(BatchError::Empty));
    }
}
