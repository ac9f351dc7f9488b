//! ListOffsets: earliest (-2), latest (-1), or the first record whose timestamp is at least the one given.
//! The WAL finds the first batch whose max timestamp qualifies; the batch is then decoded (decompressed if
//! needed) to find the exact record, as Kafka answers.

use std::sync::Arc;

use kafka_protocol::{
    error::ResponseError,
    messages::{
        list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
        ListOffsetsRequest, ListOffsetsResponse,
    },
    records::RecordBatchDecoder,
};

use super::{wal_error_code, ApiError};
use crate::broker::{blocking, Broker};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub async fn handle(
    broker: &Arc<Broker>,
    request: ListOffsetsRequest,
    version: i16,
) -> Result<ListOffsetsResponse, ApiError> {
    let b = Arc::clone(broker);
    let topics = blocking(move || {
        request
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let r =
                            ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
                        let asked_epoch = if version >= 4 { p.current_leader_epoch } else { -1 };
                        match lookup(&b, &name, p.partition_index, asked_epoch, p.timestamp) {
                            // The leader epoch field exists from v4; setting it in older versions cannot
                            // be encoded.
                            Ok((offset, timestamp, epoch)) => r
                                .with_offset(offset)
                                .with_timestamp(timestamp)
                                .with_leader_epoch(if version >= 4 { epoch } else { -1 }),
                            Err(code) => r.with_error_code(code).with_offset(-1).with_timestamp(-1),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await?;
    Ok(ListOffsetsResponse::default().with_topics(topics))
}

/// (offset, timestamp, leader epoch) for the query, or a Kafka error code. `leader_epoch` is the one the
/// client knows (-1: none).
fn lookup(
    broker: &Broker,
    topic: &str,
    partition: i32,
    leader_epoch: i32,
    timestamp: i64,
) -> Result<(i64, i64, i32), i16> {
    let (wal, epoch) = broker
        .partition_with_epoch(topic, partition, leader_epoch)
        .map_err(|e| e.code())?;
    let (offset, found_timestamp) = match timestamp {
        // The high watermark: what consumers can read. Not yet known to a new leader (it could be below
        // one its predecessor showed): the client retries.
        LATEST => match broker
            .replicas
            .visible_high_watermark(wal.topic_partition(), &wal)
        {
            Some(hw) => Ok((hw, -1)),
            None => Err(ResponseError::OffsetNotAvailable.code()),
        },
        EARLIEST => Ok((wal.log_start_offset(), -1)),
        t if t < 0 => Err(ResponseError::UnsupportedVersion.code()),
        t => {
            let hw = broker
                .replicas
                .high_watermark(wal.topic_partition(), &wal)
                .ok_or(ResponseError::NotLeaderOrFollower.code())?;
            // Only what consumers can read counts: records at or past the high watermark do not exist yet.
            let found = wal.offset_for_timestamp(t).map_err(|e| wal_error_code(&e))?;
            let Some((base, _)) = found.filter(|&(base, _)| base < hw) else {
                return Ok((-1, -1, epoch));
            };
            let batches = wal.read(base, 1).map_err(|e| wal_error_code(&e))?;
            let Some(batch) = batches.first() else {
                return Ok((-1, -1, epoch));
            };
            let mut bytes = batch.payload.clone();
            let records =
                RecordBatchDecoder::decode(&mut bytes).map_err(|_| ResponseError::CorruptMessage.code())?;
            let hit = records
                .records
                .iter()
                .find(|r| r.timestamp >= t && r.offset >= base);
            Ok(hit.map_or((-1, -1), |r| (r.offset, r.timestamp)))
        }
    }?;
    Ok((offset, found_timestamp, epoch))
}
