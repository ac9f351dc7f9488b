//! Produce: each RecordBatch is validated (magic 2, CRC) and stored verbatim as one WAL batch, the WAL
//! writing the assigned base offset into it. acks=1 and acks=-1 are answered after fdatasync (group commit
//! across all connections); acks=0 gets no response, and its append is synced all the same (consumers see
//! only what is durable), by a task nobody waits for.
//!
//! Two phases keep a pipelining client fast and ordered: `prepare` validates and queues the batches (in
//! request order, so offsets follow the order requests arrived), and the returned future waits for
//! durability while the connection goes on reading requests, whose appends join the same group commit.
//! A small request whose partitions would take it without waiting is queued on the connection's task (a
//! thread hand-off per request cost more than the work: librdkafka sends one partition per request);
//! others on a blocking thread. With the WAL's journal thread the waits take no thread either
//! (`AppendTicket::wait_async`); without it, each wait leads its partition's group commit on a blocking
//! thread.

use std::sync::Arc;

use chronik_wal::{AppendOptions, AppendTicket, Batch, Durability, PartitionWal};
use kafka_protocol::{
    error::ResponseError,
    messages::{
        produce_response::{PartitionProduceResponse, TopicProduceResponse},
        ProduceRequest, ProduceResponse, ResponseKind, TopicName,
    },
    protocol::StrBytes,
};
use parking_lot::Mutex;
use tracing::warn;

use super::{wal_error_code, ApiError, Prepared};
use crate::{
    broker::{blocking, Broker},
    producers::{ProducerEntry, Verdict},
    record_batch::{split_batches, BatchError, ProducedBatch},
    telemetry,
};

/// Byte position of a RecordBatch's partition leader epoch (after base offset and batch length).
const PARTITION_LEADER_EPOCH_AT: u32 = 12;

/// One queued batch: its ticket, and the producer to forget if it fails.
struct Queued {
    ticket: AppendTicket,
    /// The producer id and the state the batch was recorded in.
    idempotent_producer: Option<(i64, Arc<Mutex<ProducerEntry>>)>,
}

/// What the ordered phase leaves for a partition.
enum PartitionState {
    /// Refused or fully answered already: base offset or error code.
    Settled(Result<i64, i16>),
    /// First offset known if all goes well; waits pending. A duplicate batch contributes no ticket.
    /// `error`: a later batch of the request was refused; the queued ones are still waited on.
    Queued {
        wal: Arc<PartitionWal>,
        first_offset: Option<i64>,
        queued: Vec<Queued>,
        error: Option<i16>,
    },
}

pub async fn prepare(broker: &Arc<Broker>, request: ProduceRequest) -> Result<Prepared, ApiError> {
    let acks = request.acks;
    // acks=0 too is synced (nobody waits for it): consumers see records only once durable, so an
    // unsynced record would stay invisible until some later fdatasync.
    let durability = match acks {
        -1..=1 => Some(Durability::Sync),
        _ => None,
    };
    let inline = durability.is_some() && queues_without_waiting(broker, &request);
    let b = Arc::clone(broker);
    let work = move || {
        request
            .topic_data
            .into_iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let partitions = topic
                    .partition_data
                    .into_iter()
                    .map(|data| {
                        let state = match durability {
                            None => PartitionState::Settled(Err(ResponseError::InvalidRequiredAcks.code())),
                            Some(d) => queue(&b, &name, data.index, data.records, d),
                        };
                        (data.index, state)
                    })
                    .collect();
                (topic.name, partitions)
            })
            .collect()
    };
    // A thread hand-off costs more than queueing a small request: librdkafka sends one partition per
    // request, so a producer spread over many partitions sends many small ones on one connection, each
    // prepared in turn.
    let topics: Vec<(TopicName, Vec<(i32, PartitionState)>)> =
        if inline { work() } else { blocking(work).await? };

    let b = Arc::clone(broker);
    let finish = async move {
        let topics = respond_all(&b, topics).await?;
        Ok(Some(
            ResponseKind::from(ProduceResponse::default().with_responses(topics)).into(),
        ))
    };
    if acks == 0 {
        // Nobody waits for the answer, but someone must drive the queued writes.
        tokio::spawn(async move {
            if let Err(e) = finish.await {
                let e: ApiError = e;
                warn!(error = %e, "acks=0 produce failed");
            }
        });
        return Ok(Prepared::NoResponse);
    }
    Ok(Prepared::Later(Box::pin(finish)))
}

/// Requests holding at most this many bytes of records are queued on the connection's task when no
/// partition they name would make the append wait (see [`queues_without_waiting`]).
const INLINE_PREPARE_BYTES: usize = 1 << 20;

/// Whether queueing `request` can run on an async task: small, and every partition it names ready to
/// take its records without waiting (no rotation, no backpressure; [`PartitionWal::ready_for`]). A
/// hint: an append racing it may still make one wait for a rotation, which is rare and short.
fn queues_without_waiting(broker: &Broker, request: &ProduceRequest) -> bool {
    let mut total = 0;
    for topic in &request.topic_data {
        for data in &topic.partition_data {
            let bytes = data.records.as_ref().map_or(0, |r| r.len());
            total += bytes;
            if total > INLINE_PREPARE_BYTES {
                return false;
            }
            if let Ok(wal) = broker.partition(&topic.name.0, data.index) {
                if !wal.ready_for(bytes as u64) {
                    return false;
                }
            }
        }
    }
    true
}

/// Threads one Produce request waits on its partitions with at most. Each partition's wait leads its
/// own group write and fdatasync; waiting in turn would serialize them. Run side by side, the file system
/// merges their journal commits and cache flushes: `cargo bench -p chronik-wal --bench many_partitions`
/// measured 1,000 partition files synced 3-4x faster by 16 threads than by one (README, "Many
/// partitions"), and more threads gained little.
const MAX_PARALLEL_WAITS: usize = 32;

/// The waiting phase of a request: every partition's outcome, in request order. Partitions with writes
/// queued are waited on by up to [`MAX_PARALLEL_WAITS`] blocking tasks at once.
async fn respond_all(
    broker: &Arc<Broker>,
    topics: Vec<(TopicName, Vec<(i32, PartitionState)>)>,
) -> anyhow::Result<Vec<TopicProduceResponse>> {
    let queued = topics
        .iter()
        .flat_map(|(_, partitions)| partitions)
        .filter(|(_, state)| matches!(state, PartitionState::Queued { .. }))
        .count();
    // With the journal's writer thread, nobody waiting has to lead a write: wait without threads.
    let without_threads =
        topics
            .iter()
            .flat_map(|(_, partitions)| partitions)
            .all(|(_, state)| match state {
                PartitionState::Settled(_) => true,
                PartitionState::Queued { queued, .. } => {
                    queued.iter().all(|q| q.ticket.waits_without_leading())
                }
            });
    if without_threads {
        let mut out = Vec::with_capacity(topics.len());
        for (name, partitions) in topics {
            let mut responses = Vec::with_capacity(partitions.len());
            for (index, state) in partitions {
                responses.push(respond_async(broker, index, state).await?);
            }
            out.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(responses),
            );
        }
        return Ok(out);
    }
    let stripes = queued.clamp(1, MAX_PARALLEL_WAITS);
    let mut shape = Vec::with_capacity(topics.len());
    let mut work: Vec<Vec<(usize, i32, PartitionState)>> = (0..stripes).map(|_| Vec::new()).collect();
    let mut at = 0;
    for (name, partitions) in topics {
        shape.push((name, partitions.len()));
        for (index, state) in partitions {
            work[at % stripes].push((at, index, state));
            at += 1;
        }
    }
    let waits = work.into_iter().map(|stripe| {
        let b = Arc::clone(broker);
        blocking(move || {
            stripe
                .into_iter()
                .map(|(at, index, state)| (at, respond(&b, index, state)))
                .collect::<Vec<_>>()
        })
    });
    let mut responses: Vec<Option<PartitionProduceResponse>> = (0..at).map(|_| None).collect();
    for stripe in futures_util::future::try_join_all(waits).await? {
        for (at, response) in stripe {
            responses[at] = Some(response);
        }
    }
    let mut responses = responses.into_iter().flatten();
    Ok(shape
        .into_iter()
        .map(|(name, n)| {
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(responses.by_ref().take(n).collect())
        })
        .collect())
}

/// The ordered phase for one partition: validate, check idempotence, queue.
fn queue(
    broker: &Broker,
    topic: &str,
    partition: i32,
    records: Option<bytes::Bytes>,
    durability: Durability,
) -> PartitionState {
    let (wal, leader_epoch) = match broker.partition_with_epoch(topic, partition, -1) {
        Ok(found) => found,
        Err(e) => return PartitionState::Settled(Err(e.code())),
    };
    let batches = match split_batches(records.unwrap_or_default()) {
        Ok(b) => b,
        Err(e) => {
            warn!(topic, partition, error = %e, "refusing produced records");
            let code = match e {
                BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
                BatchError::Crc { .. } => ResponseError::CorruptMessage,
                BatchError::Empty | BatchError::Truncated(_) | BatchError::Invalid(_) => {
                    ResponseError::InvalidRecord
                }
            };
            return PartitionState::Settled(Err(code.code()));
        }
    };
    // Every batch carries the leader epoch it was appended under (a replica learns from it where each
    // epoch began, see `chronik_wal::TermMap`), stamped where a RecordBatch keeps it, outside its CRC.
    let options = AppendOptions {
        durability,
        base_offset_at: Some(0),
        term: Some(leader_epoch),
        term_at: Some(PARTITION_LEADER_EPOCH_AT),
        at_offset: None,
    };
    let submit = |b: &ProducedBatch| {
        let batch = Batch {
            payload: b.bytes.clone(),
            record_count: b.offset_count,
            first_timestamp: b.first_timestamp,
            max_timestamp: b.max_timestamp,
        };
        wal.submit(batch, options).map_err(|e| {
            warn!(topic, partition, error = %e, "append failed");
            wal_error_code(&e)
        })
    };
    let mut first_offset = None;
    let mut queued = Vec::with_capacity(batches.len());
    for b in batches {
        if b.producer_id < 0 {
            match submit(&b) {
                Ok(ticket) => {
                    first_offset.get_or_insert(ticket.offsets().base_offset);
                    queued.push(Queued {
                        ticket,
                        idempotent_producer: None,
                    });
                }
                Err(code) => return refused_after(wal, first_offset, queued, code),
            }
            continue;
        }
        // Check, queue and record under the producer's entry, so its next batch is checked against this one.
        let shared_entry = broker.producers.entry(wal.topic_partition(), b.producer_id);
        let mut entry = shared_entry.lock();
        let failures = wal.write_failures();
        match broker
            .producers
            .check(wal.topic_partition(), &entry, &b, failures)
        {
            Verdict::Append => match submit(&b) {
                Ok(ticket) => {
                    entry.record(&b, ticket.offsets().base_offset, failures);
                    first_offset.get_or_insert(ticket.offsets().base_offset);
                    queued.push(Queued {
                        ticket,
                        idempotent_producer: Some((b.producer_id, Arc::clone(&shared_entry))),
                    });
                }
                Err(code) => return refused_after(wal, first_offset, queued, code),
            },
            Verdict::Duplicate(at) => {
                first_offset.get_or_insert(at);
            }
            Verdict::Reject(error) => {
                warn!(topic, partition, producer_id = b.producer_id, epoch = b.producer_epoch,
                    sequence = b.base_sequence, %error, "refusing idempotent batch");
                if error == ResponseError::UnknownProducerId {
                    *entry = Default::default();
                }
                return refused_after(wal, first_offset, queued, error.code());
            }
        }
    }
    PartitionState::Queued {
        wal,
        first_offset,
        queued,
        error: None,
    }
}

/// A later batch of the request was refused: the partition answers with the error once the batches
/// queued before it are settled.
fn refused_after(
    wal: Arc<PartitionWal>,
    first_offset: Option<i64>,
    queued: Vec<Queued>,
    code: i16,
) -> PartitionState {
    PartitionState::Queued {
        wal,
        first_offset,
        queued,
        error: Some(code),
    }
}

/// The waiting phase for one partition, blocking its thread.
fn respond(broker: &Broker, index: i32, state: PartitionState) -> PartitionProduceResponse {
    let outcome = match state {
        PartitionState::Settled(r) => r.map(|offset| (offset, -1)),
        PartitionState::Queued {
            wal,
            first_offset,
            queued,
            error,
        } => {
            let mut result = error.map_or(Ok(first_offset.unwrap_or(-1)), Err);
            for q in queued {
                let waited = q.ticket.wait();
                settle(broker, &wal, &q.idempotent_producer, waited, &mut result);
            }
            broker.heal_if_poisoned(&wal);
            written(&wal, result)
        }
    };
    response(index, outcome)
}

/// [`respond`] without blocking a thread (see [`AppendTicket::wait_async`]); a failed partition is
/// healed on a blocking thread.
async fn respond_async(
    broker: &Arc<Broker>,
    index: i32,
    state: PartitionState,
) -> anyhow::Result<PartitionProduceResponse> {
    let outcome = match state {
        PartitionState::Settled(r) => r.map(|offset| (offset, -1)),
        PartitionState::Queued {
            wal,
            first_offset,
            queued,
            error,
        } => {
            let mut result = error.map_or(Ok(first_offset.unwrap_or(-1)), Err);
            for q in queued {
                let waited = q.ticket.wait_async().await;
                settle(broker, &wal, &q.idempotent_producer, waited, &mut result);
            }
            if wal.is_poisoned() || wal.is_closed() {
                let (b, w) = (Arc::clone(broker), Arc::clone(&wal));
                blocking(move || b.heal_if_poisoned(&w)).await?;
            }
            written(&wal, result)
        }
    };
    Ok(response(index, outcome))
}

/// Folds one batch's wait into the partition's result; a failed idempotent batch is forgotten.
fn settle(
    broker: &Broker,
    wal: &PartitionWal,
    producer: &Option<(i64, Arc<Mutex<ProducerEntry>>)>,
    waited: chronik_wal::Result<chronik_wal::AppendResult>,
    result: &mut Result<i64, i16>,
) {
    if let Err(e) = waited {
        if let Some((pid, entry)) = producer {
            broker.producers.forget(wal.topic_partition(), *pid, entry);
        }
        if result.is_ok() {
            *result = Err(wal_error_code(&e));
        }
    }
}

/// The partition's answer once its batches are settled: base offset and log start, or the error.
fn written(wal: &PartitionWal, result: Result<i64, i16>) -> Result<(i64, i64), i16> {
    let tp = wal.topic_partition();
    telemetry::high_watermark(&tp.topic, tp.partition, wal.synced_offset());
    result.map(|offset| (offset, wal.log_start_offset()))
}

fn response(index: i32, outcome: Result<(i64, i64), i16>) -> PartitionProduceResponse {
    if let Err(code) = &outcome {
        telemetry::api_error(kafka_protocol::messages::ApiKey::Produce, *code);
    }
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
            .with_error_message(
                ResponseError::try_from_code(code).map(|e| StrBytes::from_string(e.to_string())),
            ),
    }
}
