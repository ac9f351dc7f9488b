//! DescribeCluster (KIP-700): the cluster id, the live brokers (v2 on request the fenced ones too,
//! flagged), and this broker as the controller, as Metadata names it (it forwards admin requests to the
//! Raft leader). Controllers are not a separate endpoint here: asking for them is UNSUPPORTED_ENDPOINT_TYPE,
//! as a Kafka broker answers.

use kafka_protocol::{
    error::ResponseError,
    messages::{
        describe_cluster_response::DescribeClusterBroker, BrokerId, DescribeClusterRequest,
        DescribeClusterResponse,
    },
    protocol::StrBytes,
};

use crate::{
    broker::{broker_id, Broker},
    config::parse_host_port,
};

const BROKERS: i8 = 1;
/// Kafka's "authorized operations not requested".
const NOT_REQUESTED: i32 = i32::MIN;
/// What may be done to the cluster resource while there are no ACLs: ALTER (7), CLUSTER_ACTION (9),
/// CREATE (5), DESCRIBE (8), DESCRIBE_CONFIGS (10), ALTER_CONFIGS (11), IDEMPOTENT_WRITE (12).
const CLUSTER_OPERATIONS: i32 = (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub fn handle(broker: &Broker, request: DescribeClusterRequest, version: i16) -> DescribeClusterResponse {
    let endpoint_type = if version >= 1 {
        request.endpoint_type
    } else {
        BROKERS
    };
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(endpoint_type)
        .with_cluster_id(StrBytes::from_string(broker.registry.cluster_id()))
        .with_controller_id(BrokerId(broker.node_id()))
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            NOT_REQUESTED
        });
    if endpoint_type != BROKERS {
        return response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "controllers are reached through the brokers, which forward admin requests",
            )))
            .with_controller_id(BrokerId(-1));
    }
    let with_fenced = version >= 2 && request.include_fenced_brokers;
    let brokers = broker.registry.read(|s| {
        s.brokers
            .values()
            .filter(|b| with_fenced || s.is_live(b.id))
            .filter_map(|b| {
                let (host, port) = parse_host_port(&b.kafka_address).ok()?;
                Some(
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(broker_id(b.id)))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port)
                        .with_is_fenced(!s.is_live(b.id)),
                )
            })
            .collect()
    });
    response.with_brokers(brokers)
}
