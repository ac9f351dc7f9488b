//! Fetch: stored batches returned as they were produced (no re-encoding), with long-poll: when fewer
//! than `min_bytes` are available the request waits, woken by the append that moves a high watermark,
//! until `max_wait_ms` passes or the broker shuts down.
//!
//! Sessions (KIP-227) are not kept: every response has session id 0, which tells clients to send full
//! fetch requests. Fetch v13+ names topics by id.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chronik_wal::PartitionWal;
use futures_util::future::select_all;
use kafka_protocol::{
    error::ResponseError,
    messages::{
        fetch_response::{FetchableTopicResponse, PartitionData},
        BrokerId, FetchRequest, FetchResponse, TopicName,
    },
    protocol::StrBytes,
};
use uuid::Uuid;

use super::{wal_error_code, ApiError};
use crate::{
    broker::{blocking, Broker},
    frame_buf::RecordSets,
};

/// Longest wait honoured, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

struct Wanted {
    name: Option<String>,
    topic_id: Uuid,
    partitions: Vec<(i32, i64, i32)>,
}

/// What one read of one partition found.
struct Found {
    partition: i32,
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    /// The stored batches, slices of the WAL's read buffers.
    records: Vec<Bytes>,
}

/// The response, and the record data it refers to (emitted without copying, see `frame_buf`).
pub async fn handle(
    broker: &Arc<Broker>,
    request: FetchRequest,
    version: i16,
) -> Result<(FetchResponse, RecordSets), ApiError> {
    let by_id = version >= 13;
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .map(|t| {
            let name = if by_id {
                broker.topics.get_by_id(t.topic_id).map(|i| i.name.to_string())
            } else {
                Some(t.topic.0.to_string())
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| (p.partition, p.fetch_offset, p.partition_max_bytes))
                .collect();
            Wanted {
                name,
                topic_id: t.topic_id,
                partitions,
            }
        })
        .collect();
    let wanted = Arc::new(wanted);
    let max_bytes = i64::from(request.max_bytes.clamp(
        0,
        i32::try_from(broker.config.fetch_max_bytes).unwrap_or(i32::MAX),
    ));
    let min_bytes = i64::from(request.min_bytes.max(0));
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let mut stop = broker.stop.clone();

    let found = loop {
        let b = Arc::clone(broker);
        let w = Arc::clone(&wanted);
        let (found, total, waits) = blocking(move || read_all(&b, &w, max_bytes)).await?;
        let errors = found.iter().flatten().any(|f| f.error_code != 0);
        let now = Instant::now();
        if total >= min_bytes || errors || now >= deadline || waits.is_empty() || *stop.borrow() {
            break found;
        }
        // Woken when a high watermark moves past what this read saw: there is more for the client.
        let wakeups = waits
            .iter()
            .map(|(p, seen)| Box::pin(async move { p.wait_past(*seen).await }));
        tokio::select! {
            _ = select_all(wakeups) => {}
            () = tokio::time::sleep_until(deadline.into()) => {}
            _ = stop.changed() => {}
        }
    };

    let mut sets = RecordSets::default();
    let responses = wanted
        .iter()
        .zip(found)
        .map(|(w, parts)| {
            let partitions = parts
                .into_iter()
                .map(|f| partition_data(f, request.isolation_level, &mut sets))
                .collect();
            let topic = FetchableTopicResponse::default().with_partitions(partitions);
            if by_id {
                topic.with_topic_id(w.topic_id)
            } else {
                topic.with_topic(TopicName(StrBytes::from_string(
                    w.name.clone().unwrap_or_default(),
                )))
            }
        })
        .collect();
    Ok((
        FetchResponse::default()
            .with_session_id(0)
            .with_responses(responses),
        sets,
    ))
}

type ReadResult = (Vec<Vec<Found>>, i64, Vec<(Arc<PartitionWal>, i64)>);

/// Reads every wanted partition within the byte budgets. Also returns, for partitions read up to their
/// high watermark, what to wait on for more.
fn read_all(broker: &Broker, wanted: &[Wanted], max_bytes: i64) -> ReadResult {
    let mut total = 0i64;
    let mut waits = Vec::new();
    let found = wanted
        .iter()
        .map(|w| {
            w.partitions
                .iter()
                .map(|&(partition, offset, partition_max)| {
                    let missing = |code: ResponseError| Found {
                        partition,
                        error_code: code.code(),
                        high_watermark: -1,
                        log_start_offset: -1,
                        records: Vec::new(),
                    };
                    let Some(name) = &w.name else {
                        return missing(ResponseError::UnknownTopicId);
                    };
                    let Some(wal) = broker.partition(name, partition) else {
                        return missing(ResponseError::UnknownTopicOrPartition);
                    };
                    let high_watermark = wal.high_watermark();
                    let log_start_offset = wal.log_start_offset();
                    // The first batch is returned whole even past the budgets (KIP-74), so a consumer
                    // always makes progress; later partitions get nothing once the response is full.
                    let budget = i64::from(partition_max.max(0)).min(max_bytes - total);
                    let read = if budget <= 0 && total > 0 {
                        Ok(Vec::new())
                    } else {
                        wal.read(offset, budget.max(0) as u64)
                    };
                    match read {
                        Ok(batches) => {
                            let len: usize = batches.iter().map(|b| b.payload.len()).sum();
                            total += len as i64;
                            waits.push((Arc::clone(&wal), high_watermark.max(offset)));
                            Found {
                                partition,
                                error_code: 0,
                                high_watermark,
                                log_start_offset,
                                records: batches.into_iter().map(|b| b.payload).collect(),
                            }
                        }
                        Err(e) => Found {
                            partition,
                            error_code: wal_error_code(&e),
                            high_watermark,
                            log_start_offset,
                            records: Vec::new(),
                        },
                    }
                })
                .collect()
        })
        .collect();
    (found, total, waits)
}

fn partition_data(f: Found, isolation_level: i8, sets: &mut RecordSets) -> PartitionData {
    crate::telemetry::api_error(kafka_protocol::messages::ApiKey::Fetch, f.error_code);
    PartitionData::default()
        .with_partition_index(f.partition)
        .with_error_code(f.error_code)
        .with_high_watermark(f.high_watermark)
        .with_last_stable_offset(f.high_watermark)
        .with_log_start_offset(f.log_start_offset)
        .with_aborted_transactions((isolation_level == 1).then(Vec::new))
        .with_preferred_read_replica(BrokerId(-1))
        // Empty, never null: some librdkafka versions reject a null record set.
        .with_records(Some(sets.add(f.records)))
}
