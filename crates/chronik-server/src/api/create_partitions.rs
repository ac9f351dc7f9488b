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

use super::{topic_error, ApiError};
use crate::{broker::Broker, registry::TopicError};

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
) -> Result<CreatePartitionsResponse, ApiError> {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.0.to_string();
        let result = CreatePartitionsTopicResult::default().with_name(t.name);
        if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            results.push(
                result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "manual replica assignments are not supported; the controller places replicas",
                    ))),
            );
            continue;
        }
        let added = broker
            .registry
            .add_partitions(&name, t.count, request.validate_only)
            .await;
        results.push(match added {
            Ok(_) => result,
            Err(e) => {
                let code = match &e {
                    TopicError::PartitionLimit { .. } => ResponseError::InvalidPartitions,
                    e => topic_error(e),
                };
                if code == ResponseError::KafkaStorageError {
                    tracing::warn!(topic = %name, error = %e, "adding partitions failed");
                }
                result
                    .with_error_code(code.code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string())))
            }
        });
    }
    // This broker's new partitions exist before the answer.
    broker.reconcile().await?;
    Ok(CreatePartitionsResponse::default().with_results(results))
}
