//! OffsetForLeaderEpoch: where the log's part written under a leader epoch ends, from the partition's
//! term map (`chronik_wal::TermMap::end_of`). A consumer that saw a leader change asks it to learn
//! whether the records it read were truncated (KIP-320); a follower asks it to find where its log stops
//! agreeing with the leader's. Versions 2-4, as Kafka 4 serves (KIP-896 removed 0-1).

use std::sync::Arc;

use kafka_protocol::messages::{
    offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult},
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::ApiError;
use crate::broker::{blocking, Broker};

/// Kafka's answer for an epoch the log cannot place: undefined epoch and offset, no error.
const UNDEFINED: (i32, i64) = (-1, -1);

pub async fn handle(
    broker: &Arc<Broker>,
    request: OffsetForLeaderEpochRequest,
) -> Result<OffsetForLeaderEpochResponse, ApiError> {
    let b = Arc::clone(broker);
    let topics = blocking(move || {
        request
            .topics
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let r = EpochEndOffset::default().with_partition(p.partition);
                        match b.partition_at(&t.topic.0, p.partition, p.current_leader_epoch) {
                            Ok(wal) => {
                                let (epoch, end) = wal.term_end(p.leader_epoch).unwrap_or(UNDEFINED);
                                r.with_leader_epoch(epoch).with_end_offset(end)
                            }
                            Err(e) => r
                                .with_error_code(e.code())
                                .with_leader_epoch(-1)
                                .with_end_offset(-1),
                        }
                    })
                    .collect();
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await?;
    Ok(OffsetForLeaderEpochResponse::default().with_topics(topics))
}
