//! Metadata: the live brokers, this broker as the controller (it forwards admin requests), and the topics asked for (all when the list is null, or
//! empty in v0) with each partition's leader, leader epoch, replicas and in-sync replicas, as this broker
//! has applied them. Unknown topics are created when both the request and the configuration allow it.

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
    broker::{broker_id, Broker},
    config::parse_host_port,
    registry::{validate_name, TopicError, RESERVED_PREFIX},
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
        None => broker.registry.read(|s| {
            s.topics
                .iter()
                .filter(|(name, _)| !name.starts_with(RESERVED_PREFIX))
                .map(|(name, t)| topic_response(s, name, t))
                .collect()
        }),
        Some(requested) => {
            let mut out = Vec::with_capacity(requested.len());
            for t in requested {
                let by_name = t.name.as_ref().map(|n| n.0.to_string());
                let found = match &by_name {
                    Some(name) => described(broker, name),
                    None => broker
                        .registry
                        .get_by_id(t.topic_id)
                        .and_then(|info| described(broker, &info.name)),
                };
                let response = match (found, by_name) {
                    (Some(described), _) => described,
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
    let brokers = broker.registry.read(|s| {
        s.brokers
            .values()
            .filter(|b| s.is_live(b.id))
            .filter_map(|b| {
                let (host, port) = parse_host_port(&b.kafka_address).ok()?;
                Some(
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(broker_id(b.id)))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port),
                )
            })
            .collect()
    });
    // Every broker takes admin requests and forwards them to the Raft leader, so clients are told this
    // broker is the controller (as KRaft brokers name a live broker, not the quorum's leader): an admin
    // client never waits on a controller that just died.
    Ok(MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(broker.registry.cluster_id())))
        .with_controller_id(BrokerId(broker.node_id()))
        .with_topics(topics))
}

/// The response entry of topic `name`, if it exists.
fn described(broker: &Broker, name: &str) -> Option<MetadataResponseTopic> {
    if name.starts_with(RESERVED_PREFIX) {
        return None;
    }
    broker
        .registry
        .read(|s| s.topics.get(name).map(|t| topic_response(s, name, t)))
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
    let partitions = broker.config.default_partitions;
    let created = broker
        .create_topic(&name, partitions, -1, BTreeMap::new(), false)
        .await;
    match created {
        Ok(_) => match described(broker, &name) {
            Some(t) => Ok(t),
            None => error(ResponseError::UnknownTopicOrPartition, name),
        },
        // Another request created it meanwhile.
        Err(TopicError::AlreadyExists(_)) => match described(broker, &name) {
            Some(t) => Ok(t),
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

fn topic_response(
    state: &chronik_cluster::MetadataState,
    name: &str,
    t: &chronik_cluster::state_machine::TopicInfo,
) -> MetadataResponseTopic {
    let ids =
        |brokers: &[u64]| -> Vec<BrokerId> { brokers.iter().map(|&b| BrokerId(broker_id(b))).collect() };
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let offline: Vec<u64> = p
                .replicas
                .iter()
                .copied()
                .filter(|&b| !state.is_live(b))
                .collect();
            let error = match p.leader {
                Some(_) => 0,
                None => ResponseError::LeaderNotAvailable.code(),
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(i as i32)
                .with_leader_id(BrokerId(p.leader.map_or(-1, broker_id)))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_topic_id(uuid::Uuid::from_bytes(t.topic_id))
        .with_partitions(partitions)
}
