//! CreatePartitions: raise a topic's partition count.

use std::sync::Arc;

use kafka_protocol::{
    error::ResponseError,
    messages::{
        create_partitions_response::CreatePartitionsTopicResult, CreatePartitionsRequest,
        CreatePartitionsResponse,
    },
    protocol::StrBytes,
};

use super::ApiError;
use crate::{
    broker::{blocking, Broker},
    registry::TopicError,
};

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
) -> Result<CreatePartitionsResponse, ApiError> {
    let b = Arc::clone(broker);
    let results = blocking(move || {
        request
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let result = CreatePartitionsTopicResult::default().with_name(t.name);
                let (code, e) = match b.registry.add_partitions(&name, t.count, request.validate_only) {
                    Ok(_) => return result,
                    Err(e @ TopicError::Unknown(_)) => (ResponseError::UnknownTopicOrPartition, e),
                    Err(e @ (TopicError::InvalidPartitions(_) | TopicError::PartitionLimit { .. })) => {
                        (ResponseError::InvalidPartitions, e)
                    }
                    Err(e) => {
                        tracing::warn!(topic = %name, error = %e, "adding partitions failed");
                        (ResponseError::KafkaStorageError, e)
                    }
                };
                result
                    .with_error_code(code.code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string())))
            })
            .collect()
    })
    .await?;
    Ok(CreatePartitionsResponse::default().with_results(results))
}
