//! The Kafka APIs this broker answers, one file each, and the table of versions it advertises.
//!
//! The versions are the ones implemented and tested, not all `kafka-protocol` can decode: clients pick
//! the highest version both sides list, so advertising more than we honour breaks them.

mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_topics;
mod describe_configs;
mod fetch;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod produce;

use std::{ops::RangeInclusive, sync::Arc};

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

/// Runs one request. `Ok(None)`: the request takes no response (produce with acks=0).
pub async fn dispatch(
    broker: &Arc<Broker>,
    key: ApiKey,
    version: i16,
    mut body: Bytes,
) -> Result<Option<ResponseKind>, ApiError> {
    let response = match key {
        ApiKey::ApiVersions => {
            let request = if supported(key).is_some_and(|r| r.contains(&version)) {
                Some(decode(&mut body, version)?)
            } else {
                None
            };
            api_versions::handle(request).into()
        }
        ApiKey::Metadata => metadata::handle(broker, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::Produce => match produce::handle(broker, decode(&mut body, version)?).await? {
            Some(r) => r.into(),
            None => return Ok(None),
        },
        ApiKey::Fetch => fetch::handle(broker, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::ListOffsets => list_offsets::handle(broker, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::CreateTopics => create_topics::handle(broker, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::DeleteTopics => delete_topics::handle(broker, decode(&mut body, version)?, version)
            .await?
            .into(),
        ApiKey::InitProducerId => init_producer_id::handle(broker, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::CreatePartitions => create_partitions::handle(broker, decode(&mut body, version)?)
            .await?
            .into(),
        ApiKey::DescribeConfigs => describe_configs::handle(broker, decode(&mut body, version)?).into(),
        other => return Err(ApiError::Malformed(format!("{other:?} is not served"))),
    };
    Ok(Some(response))
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
