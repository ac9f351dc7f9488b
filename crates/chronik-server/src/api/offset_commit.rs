//! OffsetCommit: acknowledged only once the commit is durable (one record in the offsets log, fdatasynced).
//! The ordered phase (`prepare`) checks membership and queues the commit, so a connection's pipelined
//! commits are stored in the order they arrived while their fdatasyncs are shared.
//! A commit inside a generation must come from a current member of that generation (else
//! UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS); one outside any generation (simple
//! consumers: generation -1, as with `assign()`) is accepted only while the group has no members.
//!
//! A failure to store answers as Kafka's group coordinator does when its offsets log cannot be written:
//! NOT_COORDINATOR (INVALID_COMMIT_OFFSET_SIZE for a record over the batch limit). Clients treat
//! NOT_COORDINATOR as retriable: they look the coordinator up again and resend the commit. The Java
//! consumer treats KAFKA_STORAGE_ERROR here as unexpected and `commitSync` throws.

use std::sync::Arc;

use kafka_protocol::{
    error::ResponseError,
    messages::{
        offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
        OffsetCommitRequest, OffsetCommitResponse,
    },
};

use super::Prepared;
use crate::{
    broker::Broker,
    offsets::{Committed, OffsetsError},
    registry::RESERVED_PREFIX,
};

/// Checks the commit and queues it; the returned future answers once it is durable.
pub fn prepare(broker: &Arc<Broker>, request: OffsetCommitRequest) -> Prepared {
    let group = request.group_id.0.to_string();
    let store = broker.coordinator_of(&group);
    let membership = match &store {
        Err(e) => Some(*e),
        Ok(_) => {
            broker
                .groups
                .validate_commit(&group, request.generation_id_or_member_epoch, &request.member_id)
        }
    };
    // Per partition: the error to answer with, if any.
    let verdicts: Vec<Vec<Option<ResponseError>>> = request
        .topics
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| {
                    if group.is_empty() {
                        Some(ResponseError::InvalidGroupId)
                    } else if let Some(e) = membership {
                        Some(e)
                    } else if t.name.0.starts_with(RESERVED_PREFIX)
                        || broker.registry.route(&t.name.0, p.partition_index).is_none()
                    {
                        // The partition may be led by another broker, or offline: an offset for it is
                        // fine as long as it exists.
                        Some(ResponseError::UnknownTopicOrPartition)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .collect();
    let accepted: Vec<(String, i32, Committed)> = request
        .topics
        .iter()
        .zip(&verdicts)
        .flat_map(|(t, v)| {
            t.partitions
                .iter()
                .zip(v)
                .filter(|(_, e)| e.is_none())
                .map(|(p, _)| {
                    let committed = Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    };
                    (t.name.0.to_string(), p.partition_index, committed)
                })
        })
        .collect();
    let ticket = match store {
        Ok(offsets) if !accepted.is_empty() => Some(offsets.queue_commit(&group, accepted)),
        _ => None,
    };
    Prepared::Later(Box::pin(async move {
        let stored = match ticket {
            None => None,
            Some(ticket) => Some(ticket.wait().await.map_err(|e| {
                tracing::warn!(group = %group, error = %e, "storing committed offsets failed");
                storage_failure(&e)
            })),
        };
        Ok(Some(respond(request, verdicts, stored).into()))
    }))
}

fn respond(
    request: OffsetCommitRequest,
    verdicts: Vec<Vec<Option<ResponseError>>>,
    stored: Option<Result<(), ResponseError>>,
) -> kafka_protocol::messages::ResponseKind {
    let topics = request
        .topics
        .into_iter()
        .zip(verdicts)
        .map(|(t, v)| {
            let partitions = t
                .partitions
                .iter()
                .zip(v)
                .map(|(p, e)| {
                    let code = match (e, &stored) {
                        (Some(e), _) => e.code(),
                        (None, Some(Err(failure))) => failure.code(),
                        (None, _) => 0,
                    };
                    crate::telemetry::api_error(kafka_protocol::messages::ApiKey::OffsetCommit, code);
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics).into()
}

/// The answer to a commit the offsets store could not take (see the module doc).
fn storage_failure(e: &OffsetsError) -> ResponseError {
    match e {
        OffsetsError::TooLarge { .. } => ResponseError::InvalidCommitOffsetSize,
        _ => ResponseError::NotCoordinator,
    }
}
