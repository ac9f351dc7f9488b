//! The Kafka APIs this broker answers, one file each, and the table of versions it advertises.
//!
//! The versions are the ones implemented and tested, not all `kafka-protocol` can decode: clients pick
//! the highest version both sides list, so advertising more than we honour breaks them.

mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_topics;
mod describe_configs;
mod fetch;
mod find_coordinator;
mod groups;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_fetch;
mod produce;

use std::{future::Future, ops::RangeInclusive, pin::Pin, sync::Arc};

use bytes::Bytes;
use kafka_protocol::{
    error::ResponseError,
    messages::{ApiKey, ResponseKind},
    protocol::Decodable,
};

use crate::broker::Broker;

/// (API, lowest version, highest version) advertised in ApiVersions.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::JoinGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 3),
    (ApiKey::Heartbeat, 0, 3),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::ListGroups, 0, 3),
    (ApiKey::DescribeGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
];

pub fn supported(key: ApiKey) -> Option<RangeInclusive<i16>> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| min..=max)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request body does not decode: the connection is closed.
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, ApiError> {
    T::decode(body, version).map_err(|e| ApiError::Malformed(format!("{e:#}")))
}

/// A request whose order-sensitive part has run.
pub enum Prepared {
    /// No response is sent (produce with acks=0).
    NoResponse,
    /// The answer, once this completes; later requests on the connection may start meanwhile.
    Later(Pin<Box<dyn Future<Output = Result<Option<ResponseKind>, ApiError>> + Send>>),
}

/// Starts one request. Produce queues its appends now, so that the offsets follow the order requests
/// arrive on the connection; everything else runs in the returned future.
pub async fn prepare(
    broker: &Arc<Broker>,
    key: ApiKey,
    version: i16,
    mut body: Bytes,
) -> Result<Prepared, ApiError> {
    if key == ApiKey::Produce {
        return produce::prepare(broker, decode(&mut body, version)?).await;
    }
    let broker = Arc::clone(broker);
    Ok(Prepared::Later(Box::pin(async move {
        dispatch(&broker, key, version, body).await.map(Some)
    })))
}

/// Runs one request other than Produce.
async fn dispatch(
    broker: &Arc<Broker>,
    key: ApiKey,
    version: i16,
    mut body: Bytes,
) -> Result<ResponseKind, ApiError> {
    let b = broker;
    Ok(match key {
        ApiKey::ApiVersions => {
            let known = supported(key).is_some_and(|r| r.contains(&version));
            let request = if known {
                Some(decode(&mut body, version)?)
            } else {
                None
            };
            api_versions::handle(request).into()
        }
        ApiKey::Metadata => metadata::handle(b, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::Fetch => fetch::handle(b, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::ListOffsets => list_offsets::handle(b, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::CreateTopics => create_topics::handle(b, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::DeleteTopics => delete_topics::handle(b, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::InitProducerId => init_producer_id::handle(b, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::CreatePartitions => create_partitions::handle(b, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::DescribeConfigs => describe_configs::handle(b, decode(&mut body, version)?).into(),
        ApiKey::AlterConfigs => alter_configs::alter(b, decode(&mut body, version)?).await?.into(),
        ApiKey::IncrementalAlterConfigs => alter_configs::incremental(b, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::FindCoordinator => find_coordinator::handle(b, decode(&mut body, version)?, version).into(),
        ApiKey::OffsetCommit => offset_commit::handle(b, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::OffsetFetch => offset_fetch::handle(b, decode(&mut body, version)?, version).into(),
        ApiKey::JoinGroup => groups::join(b, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::SyncGroup => groups::sync(b, decode(&mut body, version)?).await?.into(),
        ApiKey::Heartbeat => groups::heartbeat(b, decode(&mut body, version)?).into(),
        ApiKey::LeaveGroup => groups::leave(b, decode(&mut body, version)?, version).into(),
        ApiKey::ListGroups => groups::list(b, decode(&mut body, version)?).into(),
        ApiKey::DescribeGroups => groups::describe(b, decode(&mut body, version)?).into(),
        ApiKey::DeleteGroups => groups::delete(b, decode(&mut body, version)?).await?.into(),
        other => return Err(ApiError::Malformed(format!("{other:?} is not served"))),
    })
}

/// Kafka error code for a WAL failure seen by a client request.
fn wal_error_code(e: &chronik_wal::Error) -> i16 {
    use chronik_wal::Error as E;
    match e {
        E::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        E::UnknownPartition(_) | E::PartitionDeleted(_) => ResponseError::UnknownTopicOrPartition.code(),
        E::BatchTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        E::InvalidArgument(_) => ResponseError::InvalidRequest.code(),
        // I/O failure, full disk, damage, poisoned partition: the client retries elsewhere or later.
        _ => ResponseError::KafkaStorageError.code(),
    }
}
