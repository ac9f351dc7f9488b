//! The Kafka APIs this broker answers, one file each, and the table of versions it advertises.
//!
//! The versions are the ones implemented and tested, not all `kafka-protocol` can decode: clients pick
//! the highest version both sides list, so advertising more than we honour breaks them.

mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod fetch;
mod find_coordinator;
mod groups;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;

use std::{future::Future, ops::RangeInclusive, pin::Pin, sync::Arc};

use bytes::Bytes;
use kafka_protocol::{
    error::ResponseError,
    messages::{ApiKey, RequestHeader, RequestKind, ResponseKind},
    protocol::Decodable,
};

use crate::{broker::Broker, fetch_memory::FetchMemory, frame_buf::RecordSets};

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
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
];

pub fn supported(key: ApiKey) -> Option<RangeInclusive<i16>> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| min..=max)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Why a request frame cannot be served; each closes its connection, as Kafka does.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("unsupported version {1} of {0:?}")]
    UnsupportedVersion(ApiKey, i16),
    #[error("malformed {0:?} v{1} request: {2}")]
    Malformed(ApiKey, i16, String),
}

/// A request frame, decoded.
#[derive(Debug)]
pub struct ParsedRequest {
    pub key: ApiKey,
    pub version: i16,
    /// The version to answer with (ApiVersions of an unknown version is answered in v0).
    pub response_version: i16,
    pub header: RequestHeader,
    /// `None` only for ApiVersions of a version we do not know: answered with UNSUPPORTED_VERSION.
    pub body: Option<RequestKind>,
}

/// Decodes one request frame (without its length prefix): API key, header, a version this broker
/// serves, and the whole body. Everything a client sends passes through here first.
pub fn parse(mut frame: Bytes) -> Result<ParsedRequest, RequestError> {
    if frame.len() < 4 {
        return Err(RequestError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(raw_key).map_err(|()| RequestError::UnknownApiKey(raw_key))?;
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| RequestError::Malformed(key, version, format!("header: {e:#}")))?;
    let known = supported(key).is_some_and(|r| r.contains(&version));
    if !known {
        // ApiVersions answers any version (with an error for unknown ones) so clients can negotiate.
        return if key == ApiKey::ApiVersions {
            Ok(ParsedRequest {
                key,
                version,
                response_version: 0,
                header,
                body: None,
            })
        } else {
            Err(RequestError::UnsupportedVersion(key, version))
        };
    }
    let body = RequestKind::decode(key, &mut frame, version)
        .map_err(|e| RequestError::Malformed(key, version, format!("{e:#}")))?;
    Ok(ParsedRequest {
        key,
        version,
        response_version: version,
        header,
        body: Some(body),
    })
}

/// A response, and the record data it refers to that is to be sent without copying (Fetch).
pub struct Response {
    pub kind: ResponseKind,
    pub records: RecordSets,
}

impl From<ResponseKind> for Response {
    fn from(kind: ResponseKind) -> Self {
        Self {
            kind,
            records: RecordSets::default(),
        }
    }
}

/// How a request is ordered against the earlier requests of its connection (see `server.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequencing {
    /// Starts once every earlier request of the connection has been answered, and later ones wait for it.
    Alone,
    /// May start while earlier requests of the same API still wait for the disk: it queues its effects
    /// in arrival order when it starts (`prepare`), and only its wait for durability overlaps theirs.
    Queued,
}

/// The ordering rule of each API (the audit is in `server.rs`'s module doc).
pub fn sequencing(key: ApiKey) -> Sequencing {
    match key {
        ApiKey::Produce | ApiKey::OffsetCommit => Sequencing::Queued,
        _ => Sequencing::Alone,
    }
}

/// A request whose order-sensitive part has run.
pub enum Prepared {
    /// No response is sent (produce with acks=0).
    NoResponse,
    /// The answer, once this completes.
    Later(Pin<Box<dyn Future<Output = Result<Option<Response>, ApiError>> + Send>>),
}

/// Starts one request. Produce and OffsetCommit queue their writes now, so that they are stored in the
/// order requests arrive on the connection; everything else runs in the returned future. `fetch_memory`
/// is the connection's share of the response memory, which a Fetch reads under.
pub async fn prepare(
    broker: &Arc<Broker>,
    version: i16,
    body: Option<RequestKind>,
    fetch_memory: &FetchMemory,
) -> Result<Prepared, ApiError> {
    let broker = Arc::clone(broker);
    let body = match body {
        Some(RequestKind::Produce(request)) => return produce::prepare(&broker, request).await,
        Some(RequestKind::OffsetCommit(request)) => return Ok(offset_commit::prepare(&broker, request)),
        Some(RequestKind::Fetch(request)) => {
            let memory = fetch_memory.clone();
            return Ok(Prepared::Later(Box::pin(async move {
                let (response, records) = fetch::handle(&broker, request, version, &memory).await?;
                Ok(Some(Response {
                    kind: response.into(),
                    records,
                }))
            })));
        }
        other => other,
    };
    Ok(Prepared::Later(Box::pin(async move {
        dispatch(&broker, version, body)
            .await
            .map(|kind| Some(kind.into()))
    })))
}

/// Runs one request other than Produce, OffsetCommit and Fetch.
async fn dispatch(
    broker: &Arc<Broker>,
    version: i16,
    body: Option<RequestKind>,
) -> Result<ResponseKind, ApiError> {
    use RequestKind as R;
    let b = broker;
    let Some(body) = body else {
        return Ok(api_versions::handle(None).into());
    };
    Ok(match body {
        R::ApiVersions(r) => api_versions::handle(Some(r)).into(),
        R::Metadata(r) => metadata::handle(b, r, version).await?.into(),
        R::ListOffsets(r) => list_offsets::handle(b, r, version).await?.into(),
        R::CreateTopics(r) => create_topics::handle(b, r).await?.into(),
        R::DeleteTopics(r) => delete_topics::handle(b, r, version).await?.into(),
        R::InitProducerId(r) => init_producer_id::handle(b, r).await?.into(),
        R::CreatePartitions(r) => create_partitions::handle(b, r).await?.into(),
        R::DescribeConfigs(r) => describe_configs::handle(b, r).into(),
        R::AlterConfigs(r) => alter_configs::alter(b, r).await?.into(),
        R::IncrementalAlterConfigs(r) => alter_configs::incremental(b, r).await?.into(),
        R::FindCoordinator(r) => find_coordinator::handle(b, r, version).await.into(),
        R::OffsetFetch(r) => offset_fetch::handle(b, r, version).into(),
        R::JoinGroup(r) => groups::join(b, r, version).await?.into(),
        R::SyncGroup(r) => groups::sync(b, r).await?.into(),
        R::Heartbeat(r) => groups::heartbeat(b, r).into(),
        R::LeaveGroup(r) => groups::leave(b, r, version).into(),
        R::ListGroups(r) => groups::list(b, r).into(),
        R::DescribeGroups(r) => groups::describe(b, r).into(),
        R::DeleteGroups(r) => groups::delete(b, r).await?.into(),
        R::DescribeCluster(r) => describe_cluster::handle(b, r, version).into(),
        R::OffsetForLeaderEpoch(r) => offset_for_leader_epoch::handle(b, r).await?.into(),
        // `parse` admits only the APIs in SUPPORTED, all handled above or in `prepare`.
        other => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "{:?} passed parse but has no handler",
                std::mem::discriminant(&other)
            )))
        }
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
        // This broker's term (leader epoch) was overtaken: it no longer leads the partition.
        E::TermBehind { .. } => ResponseError::NotLeaderOrFollower.code(),
        // I/O failure, full disk, damage, poisoned or offline partition: the client retries elsewhere or
        // later.
        _ => ResponseError::KafkaStorageError.code(),
    }
}

/// Kafka error for a metadata change that failed; handlers map the errors particular to their API first.
fn topic_error(e: &crate::registry::TopicError) -> ResponseError {
    use crate::registry::TopicError as T;
    use chronik_cluster::ProposeError as P;
    match e {
        T::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        T::Unknown(_) => ResponseError::UnknownTopicOrPartition,
        T::InvalidName(..) => ResponseError::InvalidTopicException,
        T::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        T::InvalidConfig(_) => ResponseError::InvalidConfig,
        T::PartitionLimit { .. } => ResponseError::PolicyViolation,
        T::Placement(_) | T::ReplicationUnsupported(_) => ResponseError::InvalidReplicationFactor,
        // Retriable: the client looks the controller up again, or waits and retries.
        T::Controller(P::NotLeader { .. }) => ResponseError::NotController,
        T::Controller(P::Timeout(_)) => ResponseError::RequestTimedOut,
        T::Controller(P::Raft(_)) => ResponseError::UnknownServerError,
        T::Refused(_) => ResponseError::InvalidRequest,
        T::Wal(_) | T::Local { .. } => ResponseError::KafkaStorageError,
    }
}
