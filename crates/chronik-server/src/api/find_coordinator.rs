//! FindCoordinator. Committed offsets and group state live on one broker for now: the registered broker
//! with the lowest id coordinates every group, and while it is fenced, groups get
//! COORDINATOR_NOT_AVAILABLE (retriable) rather than a stand-in that does not hold their offsets.
//! Transactions are not supported, so transaction coordinators are reported unavailable.

use kafka_protocol::{
    error::ResponseError,
    messages::{
        find_coordinator_response::Coordinator, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse,
    },
    protocol::StrBytes,
};

use crate::{broker::broker_id, broker::Broker, config::parse_host_port};

const GROUP: i8 = 0;

/// The broker coordinating every group (id, host, port), or why none does.
pub fn coordinator(broker: &Broker) -> Result<(i32, String, i32), ResponseError> {
    broker.registry.read(|s| {
        let first = s
            .brokers
            .values()
            .next()
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        if !s.is_live(first.id) {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let (host, port) =
            parse_host_port(&first.kafka_address).map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        Ok((broker_id(first.id), host, port))
    })
}

pub fn handle(broker: &Broker, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let found = match request.key_type {
        GROUP => coordinator(broker),
        _ => Err(ResponseError::CoordinatorNotAvailable),
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key);
                match &found {
                    Err(e) => c
                        .with_error_code(e.code())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                    Ok((id, host, port)) => c
                        .with_node_id(BrokerId(*id))
                        .with_host(StrBytes::from_string(host.clone()))
                        .with_port(*port),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match found {
        Err(e) => FindCoordinatorResponse::default()
            .with_error_code(e.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1),
        Ok((id, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(host))
            .with_port(port),
    }
}
