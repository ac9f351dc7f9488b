//! Produce: each RecordBatch is validated (magic 2, CRC) and stored verbatim as one WAL batch, the WAL
//! writing the assigned base offset into it. acks=1 and acks=-1 are answered after fdatasync (group commit
//! across all connections); acks=0 gets no response, and its append does not wait for the disk.

use std::sync::Arc;

use chronik_wal::{AppendOptions, Batch, Durability};
use futures_util::future::join_all;
use kafka_protocol::{
    error::ResponseError,
    messages::{
        produce_response::{PartitionProduceResponse, TopicProduceResponse},
        ProduceRequest, ProduceResponse,
    },
    protocol::StrBytes,
};
use tracing::warn;

use super::{wal_error_code, ApiError};
use crate::{
    broker::{blocking, Broker},
    producers::Verdict,
    record_batch::{split_batches, BatchError, ProducedBatch},
};

pub async fn handle(
    broker: &Arc<Broker>,
    request: ProduceRequest,
) -> Result<Option<ProduceResponse>, ApiError> {
    let acks = request.acks;
    let durability = match acks {
        0 => Some(Durability::Written),
        1 | -1 => Some(Durability::Sync),
        _ => None,
    };
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let appends = topic.partition_data.into_iter().map(|data| {
            let broker = Arc::clone(broker);
            let name = name.clone();
            async move {
                let index = data.index;
                let outcome = match durability {
                    None => Err(ResponseError::InvalidRequiredAcks.code()),
                    Some(d) => blocking(move || append(&broker, &name, index, data.records, d)).await?,
                };
                anyhow::Ok(partition_response(index, outcome))
            }
        });
        let partitions = join_all(appends)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        topics.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions),
        );
    }
    if acks == 0 {
        return Ok(None);
    }
    Ok(Some(ProduceResponse::default().with_responses(topics)))
}

/// (base offset, log start offset) or a Kafka error code.
type Outcome = Result<(i64, i64), i16>;

fn append(
    broker: &Broker,
    topic: &str,
    partition: i32,
    records: Option<bytes::Bytes>,
    durability: Durability,
) -> Outcome {
    let wal = broker
        .partition(topic, partition)
        .ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    let batches = split_batches(records.unwrap_or_default()).map_err(|e| {
        warn!(topic, partition, error = %e, "refusing produced records");
        match e {
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
            BatchError::Crc { .. } => ResponseError::CorruptMessage.code(),
            BatchError::Empty | BatchError::Truncated(_) | BatchError::Invalid(_) => {
                ResponseError::InvalidRecord.code()
            }
        }
    })?;
    let options = AppendOptions {
        durability,
        base_offset_at: Some(0),
    };
    let mut first_offset = None;
    for b in batches {
        let write = |b: &ProducedBatch| {
            let batch = Batch {
                payload: b.bytes.clone(),
                record_count: b.offset_count,
                first_timestamp: b.first_timestamp,
                max_timestamp: b.max_timestamp,
            };
            wal.append_with_options(batch, options)
                .map(|at| at.base_offset)
                .map_err(|e| {
                    warn!(topic, partition, error = %e, "append failed");
                    wal_error_code(&e)
                })
        };
        let base_offset = if b.producer_id >= 0 {
            // Check and append under the producer's entry, so a retry racing its original is seen.
            let entry = broker.producers.entry(wal.topic_partition(), b.producer_id);
            let mut entry = entry.lock();
            match entry.check(&b) {
                Verdict::Append => {
                    let at = write(&b)?;
                    entry.record(&b, at);
                    at
                }
                Verdict::Duplicate(at) => at,
                Verdict::Reject(error) => {
                    warn!(topic, partition, producer_id = b.producer_id, epoch = b.producer_epoch,
                        sequence = b.base_sequence, %error, "refusing idempotent batch");
                    return Err(error.code());
                }
            }
        } else {
            write(&b)?
        };
        first_offset.get_or_insert(base_offset);
    }
    Ok((first_offset.unwrap_or(-1), wal.log_start_offset()))
}

fn partition_response(index: i32, outcome: Outcome) -> PartitionProduceResponse {
    let response = PartitionProduceResponse::default()
        .with_index(index)
        .with_log_append_time_ms(-1);
    match outcome {
        Ok((base_offset, log_start_offset)) => response
            .with_base_offset(base_offset)
            .with_log_start_offset(log_start_offset),
        Err(code) => response
            .with_error_code(code)
            .with_base_offset(-1)
            .with_log_start_offset(-1)
            .with_error_message(code_message(code)),
    }
}

fn code_message(code: i16) -> Option<StrBytes> {
    ResponseError::try_from_code(code).map(|e| StrBytes::from_string(e.to_string()))
}
