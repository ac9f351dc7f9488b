//! Metadata: this broker, and the topics asked for (all when the list is null, or empty in v0). Unknown
//! topics are created when both the request and the configuration allow it.

use std::{collections::BTreeMap, sync::Arc};

use kafka_protocol::{
    error::ResponseError,
    messages::{
        metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
        BrokerId, MetadataRequest, MetadataResponse, TopicName,
    },
    protocol::StrBytes,
};

use super::ApiError;
use crate::{
    broker::{blocking, Broker, NODE_ID},
    registry::{validate_name, TopicError, TopicInfo},
};

pub async fn handle(
    broker: &Arc<Broker>,
    request: MetadataRequest,
    version: i16,
) -> Result<MetadataResponse, ApiError> {
    let wanted: Option<Vec<_>> = match request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let topics = match wanted {
        None => broker
            .registry
            .all()
            .into_iter()
            .map(|t| topic_response(&t))
            .collect(),
        Some(requested) => {
            let mut out = Vec::with_capacity(requested.len());
            for t in requested {
                let by_name = t.name.as_ref().map(|n| n.0.to_string());
                let found = match &by_name {
                    Some(name) => broker.registry.get(name),
                    None => broker.registry.get_by_id(t.topic_id),
                };
                let response = match (found, by_name) {
                    (Some(info), _) => topic_response(&info),
                    (None, Some(name)) => {
                        let create = request.allow_auto_topic_creation && broker.config.auto_create_topics;
                        unknown_topic(broker, name, create).await?
                    }
                    (None, None) => MetadataResponseTopic::default()
                        .with_topic_id(t.topic_id)
                        .with_error_code(ResponseError::UnknownTopicId.code()),
                };
                out.push(response);
            }
            out
        }
    };
    let host = StrBytes::from_string(broker.advertised.0.clone());
    Ok(MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(host)
            .with_port(broker.advertised.1)])
        .with_cluster_id(Some(StrBytes::from_string(broker.registry.cluster_id())))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics))
}

async fn unknown_topic(
    broker: &Arc<Broker>,
    name: String,
    create: bool,
) -> Result<MetadataResponseTopic, ApiError> {
    let error = |code: ResponseError, name: String| {
        Ok(MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name))))
            .with_error_code(code.code()))
    };
    if validate_name(&name).is_err() {
        return error(ResponseError::InvalidTopicException, name);
    }
    if !create {
        return error(ResponseError::UnknownTopicOrPartition, name);
    }
    let b = Arc::clone(broker);
    let partitions = broker.config.default_partitions;
    let n = name.clone();
    match blocking(move || b.registry.create(&n, partitions, BTreeMap::new(), false)).await? {
        Ok(info) => Ok(topic_response(&info)),
        // Another request created it meanwhile.
        Err(TopicError::AlreadyExists(_)) => match broker.registry.get(&name) {
            Some(info) => Ok(topic_response(&info)),
            None => error(ResponseError::UnknownTopicOrPartition, name),
        },
        Err(TopicError::InvalidName(..)) => error(ResponseError::InvalidTopicException, name),
        Err(e @ TopicError::PartitionLimit { .. }) => {
            tracing::info!(topic = %name, error = %e, "auto-creation refused");
            error(ResponseError::PolicyViolation, name)
        }
        Err(e) => {
            tracing::warn!(topic = %name, error = %e, "auto-creating topic failed");
            error(ResponseError::KafkaStorageError, name)
        }
    }
}

fn topic_response(t: &TopicInfo) -> MetadataResponseTopic {
    let partitions = (0..t.partitions)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(NODE_ID))
                .with_leader_epoch(0)
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.to_string()))))
        .with_topic_id(t.topic_id)
        .with_partitions(partitions)
}
