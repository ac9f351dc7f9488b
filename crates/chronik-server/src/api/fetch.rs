//! Fetch: stored batches returned as they were produced (no re-encoding), with long-poll: when fewer
//! than `min_bytes` are available the request waits, woken by the fdatasync that moves a high watermark,
//! until `max_wait_ms` passes or the broker shuts down.
//!
//! The high watermark is the leader's (`replication::leader`): below it every record is durable on
//! every in-sync replica, so none a consumer saw can vanish with a failed fdatasync, a crash or a
//! failover. A fetch between it and the log end gets nothing yet.
//!
//! Memory: a fetch reads only what a share of the response memory (`fetch_memory::FetchMemory`) covers, and
//! holds nothing while it long-polls. When memory is short it returns less; the first batch is returned
//! whole even past every limit (KIP-74), so when it is larger than the share the fetch waits for a share
//! that covers it and reads again. Only that first batch may exceed the limits: a later one that does not
//! fit waits for the next fetch.
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
    fetch_memory::{FetchMemory, MemoryShare},
    frame_buf::RecordSets,
};

/// Longest wait honoured, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

struct Wanted {
    name: Option<String>,
    topic_id: Uuid,
    /// (partition, fetch offset, partition max bytes, the leader epoch the consumer knows or -1).
    partitions: Vec<(i32, i64, i32, i32)>,
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
    memory: &FetchMemory,
) -> Result<(FetchResponse, RecordSets), ApiError> {
    let by_id = version >= 13;
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .map(|t| {
            let name = if by_id {
                broker.registry.get_by_id(t.topic_id).map(|i| i.name.to_string())
            } else {
                Some(t.topic.0.to_string())
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    (
                        p.partition,
                        p.fetch_offset,
                        p.partition_max_bytes,
                        p.current_leader_epoch,
                    )
                })
                .collect();
            Wanted {
                name,
                topic_id: t.topic_id,
                partitions,
            }
        })
        .collect();
    let wanted = Arc::new(wanted);
    // The most this fetch may return (a larger first batch aside): the response cap, and what its
    // partitions may return together.
    let partitions_max: i64 = wanted
        .iter()
        .flat_map(|w| &w.partitions)
        .map(|&(_, _, partition_max, _)| i64::from(partition_max.max(0)))
        .sum();
    let want = u32::try_from(
        i64::from(request.max_bytes.max(0))
            .min(partitions_max)
            .min(i64::from(broker.config.fetch_max_bytes)),
    )
    .unwrap_or(u32::MAX);
    let min_bytes = i64::from(request.min_bytes.max(0));
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let mut stop = broker.stop.clone();

    let (found, share) = loop {
        let ((found, total, waits), share) = read_within(broker, &wanted, memory, want).await?;
        let errors = found.iter().flatten().any(|f| f.error_code != 0);
        let now = Instant::now();
        // A share smaller than `min_bytes` (memory is short) is as much as this fetch can wait for.
        let enough = min_bytes.min(i64::from(share.bytes()));
        if total >= enough || errors || now >= deadline || waits.is_empty() || *stop.borrow() {
            break (found, share);
        }
        // Nothing is held while waiting for data.
        drop((found, share));
        // Woken when a high watermark moves past what this read saw: there is more for the client.
        let wakeups = waits
            .iter()
            .map(|(p, seen)| Box::pin(async move { p.wait_synced_past(*seen).await }));
        tokio::select! {
            _ = select_all(wakeups) => {}
            () = tokio::time::sleep_until(deadline.into()) => {}
            _ = stop.changed() => {}
        }
    };

    let mut sets = RecordSets::default();
    sets.hold(share);
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

/// Reads every wanted partition within a share of at most `want` bytes (less when memory is short), and
/// returns the share, which covers what was read.
async fn read_within(
    broker: &Arc<Broker>,
    wanted: &Arc<Vec<Wanted>>,
    memory: &FetchMemory,
    want: u32,
) -> Result<(ReadResult, MemoryShare), ApiError> {
    let out_of_memory = |e| anyhow::anyhow!("fetch memory budget: {e}");
    let mut share = memory.up_to(want).await.map_err(out_of_memory)?;
    loop {
        let (b, w) = (Arc::clone(broker), Arc::clone(wanted));
        let budget = i64::from(share.bytes());
        let read = blocking(move || read_all(&b, &w, budget)).await?;
        let total = u32::try_from(read.1).unwrap_or(u32::MAX);
        if read.1 <= budget || memory.try_grow(&mut share, total) {
            return Ok((read, share));
        }
        // The first batch alone is larger than the share and the rest is not free now: let go of both
        // (a fetch waits holding nothing), then read again under a share that covers it.
        drop((read, share));
        share = memory.at_least(total).await.map_err(out_of_memory)?;
    }
}

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
                .map(|&(partition, offset, partition_max, leader_epoch)| {
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
                    let wal = match broker.partition_at(name, partition, leader_epoch) {
                        Ok(wal) => wal,
                        Err(e) => return missing(e),
                    };
                    // Only what is below the high watermark (durable, on every in-sync replica) is served:
                    // no record a consumer saw can be cut by a failed fdatasync, a crash or a failover.
                    let Some(high_watermark) = broker.replicas.high_watermark(wal.topic_partition(), &wal)
                    else {
                        return missing(ResponseError::NotLeaderOrFollower);
                    };
                    let log_start_offset = wal.log_start_offset();
                    // The response's first batch is returned whole even past the budgets (KIP-74), so a
                    // consumer always makes progress; a later one only if it fits.
                    let budget = i64::from(partition_max.max(0)).min(max_bytes - total);
                    let read = if budget <= 0 && total > 0 {
                        Ok(Vec::new())
                    } else {
                        wal.read_below(offset, budget.max(0) as u64, high_watermark)
                    };
                    match read {
                        Ok(mut batches) => {
                            // The WAL returns a partition's first batch however large, but only the response's
                            // first may exceed the budgets: this one waits for the next fetch.
                            if total > 0 && batches.first().is_some_and(|b| b.payload.len() as i64 > budget) {
                                batches.clear();
                            }
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
