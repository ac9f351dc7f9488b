//! DeleteTopics: the topic's record in the metadata log, then its data, durably.

use std::sync::Arc;

use kafka_protocol::{
    error::ResponseError,
    messages::{
        delete_topics_response::DeletableTopicResult, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
    },
    protocol::StrBytes,
};
use uuid::Uuid;

use super::ApiError;
use crate::{
    broker::{blocking, Broker},
    registry::TopicError,
};

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
    let b = Arc::clone(broker);
    let results = blocking(move || {
        let results = targets
            .into_iter()
            .map(|(name, id)| {
                let name = name.or_else(|| b.registry.get_by_id(id).map(|t| t.name.to_string()));
                let result = DeletableTopicResult::default()
                    .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
                    .with_topic_id(id);
                let Some(name) = name else {
                    return result.with_error_code(ResponseError::UnknownTopicId.code());
                };
                match b.registry.delete(&name) {
                    Ok(info) => {
                        for p in 0..info.partitions {
                            b.producers
                                .forget_partition(&chronik_wal::TopicPartition::new(info.name.clone(), p));
                        }
                        result.with_topic_id(info.topic_id)
                    }
                    Err(TopicError::Unknown(_)) => {
                        result.with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    }
                    Err(e) => {
                        tracing::warn!(topic = %name, error = %e, "deleting topic failed");
                        result
                            .with_error_code(ResponseError::KafkaStorageError.code())
                            .with_error_message(Some(StrBytes::from_string(e.to_string())))
                    }
                }
            })
            .collect();
        // A deleted topic's offline partitions are gone with it.
        b.publish_offline();
        results
    })
    .await?;
    Ok(DeleteTopicsResponse::default().with_responses(results))
}
