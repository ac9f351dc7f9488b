//! CreateTopics: placed by the controller (replicas spread over the live brokers), committed through it,
//! and answered once this broker has applied it and made its own partitions of the topic.

use std::{collections::BTreeMap, sync::Arc};

use kafka_protocol::{
    error::ResponseError,
    messages::{create_topics_response::CreatableTopicResult, CreateTopicsRequest, CreateTopicsResponse},
    protocol::StrBytes,
};

use super::{topic_error, ApiError};
use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
) -> Result<CreateTopicsResponse, ApiError> {
    let mut seen = std::collections::HashSet::new();
    let duplicated: std::collections::HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.0.to_string())
        .filter(|n| !seen.insert(n.clone()))
        .collect();
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.0.to_string();
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        let fail = |code: ResponseError, message: String| {
            result
                .clone()
                .with_error_code(code.code())
                .with_error_message(Some(StrBytes::from_string(message)))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
        };
        if duplicated.contains(&name) {
            results.push(fail(
                ResponseError::InvalidRequest,
                format!("topic {name} is listed twice"),
            ));
            continue;
        }
        if !t.assignments.is_empty() {
            results.push(fail(
                ResponseError::InvalidRequest,
                "manual replica assignments are not supported; the controller places replicas".into(),
            ));
            continue;
        }
        let partitions = match t.num_partitions {
            -1 => broker.config.default_partitions,
            n => n,
        };
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let created = broker
            .create_topic(
                &name,
                partitions,
                i32::from(t.replication_factor),
                configs,
                request.validate_only,
            )
            .await;
        results.push(match created {
            Ok(info) => result
                .with_topic_id(info.topic_id)
                .with_num_partitions(partitions)
                .with_replication_factor(broker.registry.replication_factor_of(&name).unwrap_or(1))
                .with_configs(Some(Vec::new())),
            Err(e) => {
                let code = topic_error(&e);
                if code == ResponseError::KafkaStorageError || code == ResponseError::UnknownServerError {
                    tracing::warn!(topic = %name, error = %e, "creating topic failed");
                }
                fail(code, e.to_string())
            }
        });
    }
    Ok(CreateTopicsResponse::default().with_topics(results))
}
