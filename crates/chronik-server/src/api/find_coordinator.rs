//! FindCoordinator: this broker coordinates every group. Transactions are not supported, so transaction
//! coordinators are reported unavailable.

use kafka_protocol::{
    error::ResponseError,
    messages::{
        find_coordinator_response::Coordinator, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse,
    },
    protocol::StrBytes,
};

use crate::broker::{Broker, NODE_ID};

const GROUP: i8 = 0;

pub fn handle(broker: &Broker, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let host = StrBytes::from_string(broker.advertised.0.clone());
    let port = broker.advertised.1;
    let error = (request.key_type != GROUP).then_some(ResponseError::CoordinatorNotAvailable);
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key);
                match error {
                    Some(e) => c
                        .with_error_code(e.code())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                    None => c
                        .with_node_id(BrokerId(NODE_ID))
                        .with_host(host.clone())
                        .with_port(port),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match error {
        Some(e) => FindCoordinatorResponse::default()
            .with_error_code(e.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1),
        None => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(host)
            .with_port(port),
    }
}
