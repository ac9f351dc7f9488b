//! FindCoordinator: the broker leading the offsets partition of the group (`coordination.rs`); the
//! offsets topic is created on the first request, as Kafka does. A group whose partition has no leader
//! (its broker is fenced) gets COORDINATOR_NOT_AVAILABLE, retriable. Transactions are not supported, so
//! transaction coordinators are reported unavailable.

use std::sync::Arc;

use kafka_protocol::{
    error::ResponseError,
    messages::{
        find_coordinator_response::Coordinator, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse,
    },
    protocol::StrBytes,
};

use crate::{
    broker::{broker_id, Broker},
    config::parse_host_port,
    coordination::OFFSETS_TOPIC,
};

const GROUP: i8 = 0;

/// The coordinator of `group`: (broker id, host, port), or why there is none.
async fn coordinator(broker: &Arc<Broker>, group: &str) -> Result<(i32, String, i32), ResponseError> {
    if broker.group_partition(group).is_none() {
        let partitions = broker.config.offsets_topic_partitions as i32;
        if let Err(e) = broker.registry.create_internal(OFFSETS_TOPIC, partitions).await {
            tracing::warn!(error = %e, "creating the offsets topic failed");
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        // This broker's share of the new topic is ready before the answer sends the client here.
        let ready = match broker.reconcile().await {
            Ok(_) => broker.sync_coordination().await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, "loading the new offsets topic's partitions failed");
        }
    }
    let p = broker
        .group_partition(group)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let leader = broker
        .registry
        .route(OFFSETS_TOPIC, p)
        .and_then(|r| r.leader)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    broker.registry.read(|s| {
        let b = s
            .brokers
            .get(&leader)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let (host, port) =
            parse_host_port(&b.kafka_address).map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        Ok((broker_id(leader), host, port))
    })
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys = if version >= 4 {
        request.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![request.key.to_string()]
    };
    let mut found = Vec::with_capacity(keys.len());
    for key in &keys {
        found.push(match request.key_type {
            GROUP => coordinator(broker, key).await,
            _ => Err(ResponseError::CoordinatorNotAvailable),
        });
    }
    if version >= 4 {
        let coordinators = keys
            .into_iter()
            .zip(found)
            .map(|(key, found)| {
                let c = Coordinator::default().with_key(StrBytes::from_string(key));
                match found {
                    Err(e) => c
                        .with_error_code(e.code())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                    Ok((id, host, port)) => c
                        .with_node_id(BrokerId(id))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match found.into_iter().next() {
        Some(Ok((id, host, port))) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(host))
            .with_port(port),
        other => {
            let e = match other {
                Some(Err(e)) => e,
                _ => ResponseError::CoordinatorNotAvailable,
            };
            FindCoordinatorResponse::default()
                .with_error_code(e.code())
                .with_node_id(BrokerId(-1))
                .with_port(-1)
        }
    }
}
