//! CreateTopics: one broker, so the replication factor must be 1 (or -1 for the default).

use std::{collections::BTreeMap, sync::Arc};

use kafka_protocol::{
    error::ResponseError,
    messages::{create_topics_response::CreatableTopicResult, CreateTopicsRequest, CreateTopicsResponse},
    protocol::StrBytes,
};

use super::ApiError;
use crate::{
    broker::{blocking, Broker},
    registry::TopicError,
};

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
) -> Result<CreateTopicsResponse, ApiError> {
    let b = Arc::clone(broker);
    let results = blocking(move || {
        let mut seen = std::collections::HashSet::new();
        let duplicated: std::collections::HashSet<String> = request
            .topics
            .iter()
            .map(|t| t.name.0.to_string())
            .filter(|n| !seen.insert(n.clone()))
            .collect();
        request
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let result = CreatableTopicResult::default()
                    .with_name(t.name.clone())
                    .with_replication_factor(1);
                let fail = |code: ResponseError, message: String| {
                    result
                        .clone()
                        .with_error_code(code.code())
                        .with_error_message(Some(StrBytes::from_string(message)))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                };
                if duplicated.contains(&name) {
                    return fail(
                        ResponseError::InvalidRequest,
                        format!("topic {name} is listed twice"),
                    );
                }
                if t.replication_factor != -1 && t.replication_factor != 1 {
                    return fail(
                        ResponseError::InvalidReplicationFactor,
                        format!(
                            "replication factor {} is not possible with one broker",
                            t.replication_factor
                        ),
                    );
                }
                let partitions = match (t.num_partitions, t.assignments.len()) {
                    (-1, 0) => b.config.default_partitions,
                    (-1, n) => n as i32,
                    (n, _) => n,
                };
                let configs: BTreeMap<String, String> = t
                    .configs
                    .iter()
                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                    .collect();
                match b
                    .registry
                    .create(&name, partitions, configs, request.validate_only)
                {
                    Ok(info) => result
                        .with_topic_id(info.topic_id)
                        .with_num_partitions(partitions)
                        .with_configs(Some(Vec::new())),
                    Err(e @ TopicError::AlreadyExists(_)) => {
                        fail(ResponseError::TopicAlreadyExists, e.to_string())
                    }
                    Err(e @ TopicError::InvalidName(..)) => {
                        fail(ResponseError::InvalidTopicException, e.to_string())
                    }
                    Err(e @ TopicError::InvalidPartitions(_)) => {
                        fail(ResponseError::InvalidPartitions, e.to_string())
                    }
                    Err(e @ TopicError::InvalidConfig(_)) => {
                        fail(ResponseError::InvalidConfig, e.to_string())
                    }
                    Err(e @ TopicError::PartitionLimit { .. }) => {
                        fail(ResponseError::PolicyViolation, e.to_string())
                    }
                    Err(e) => {
                        tracing::warn!(topic = %name, error = %e, "creating topic failed");
                        fail(ResponseError::KafkaStorageError, e.to_string())
                    }
                }
            })
            .collect()
    })
    .await?;
    Ok(CreateTopicsResponse::default().with_topics(results))
}
