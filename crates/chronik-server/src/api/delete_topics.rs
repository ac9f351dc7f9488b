//! DeleteTopics: committed through the controller; every broker holding the topic's partitions deletes
//! them when it applies the change (this one before answering).

use std::sync::Arc;

use kafka_protocol::{
    error::ResponseError,
    messages::{
        delete_topics_response::DeletableTopicResult, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
    },
    protocol::StrBytes,
};
use uuid::Uuid;

use super::{topic_error, ApiError};
use crate::{broker::Broker, registry::TopicError};

pub async fn handle(
    broker: &Arc<Broker>,
    request: DeleteTopicsRequest,
    version: i16,
) -> Result<DeleteTopicsResponse, ApiError> {
    // v6 names topics by name or id; older versions by name only.
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut results = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let name = name.or_else(|| broker.registry.get_by_id(id).map(|t| t.name.to_string()));
        let result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
            .with_topic_id(id);
        let Some(name) = name else {
            results.push(result.with_error_code(ResponseError::UnknownTopicId.code()));
            continue;
        };
        results.push(match broker.registry.delete(&name).await {
            Ok(info) => result.with_topic_id(info.topic_id),
            Err(e) => {
                if !matches!(e, TopicError::Unknown(_)) {
                    tracing::warn!(topic = %name, error = %e, "deleting topic failed");
                }
                result
                    .with_error_code(topic_error(&e).code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string())))
            }
        });
    }
    // This broker's partitions of the topics go now; other brokers' when they apply the deletion.
    broker.reconcile().await?;
    Ok(DeleteTopicsResponse::default().with_responses(results))
}
