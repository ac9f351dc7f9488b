//! DescribeConfigs for topics and this broker: the configs a topic has set, and the defaults this broker
//! applies. Configs that change behaviour (see `topic_config`) are reported as not read-only; AlterConfigs
//! and IncrementalAlterConfigs set them.

use std::collections::BTreeMap;

use kafka_protocol::{
    error::ResponseError,
    messages::{
        describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
        DescribeConfigsRequest, DescribeConfigsResponse,
    },
    protocol::StrBytes,
};

use crate::{broker::Broker, topic_config};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// config_source values (KIP-226).
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

pub fn handle(broker: &Broker, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|r| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let configs: BTreeMap<String, (String, i8)> = match r.resource_type {
                TOPIC => match broker.registry.get(&r.resource_name) {
                    Some(info) => {
                        let mut all: BTreeMap<String, (String, i8)> =
                            topic_config::defaults(&broker.config, broker.wal.config().max_batch_bytes)
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), (v, SOURCE_DEFAULT)))
                                .collect();
                        all.extend(info.configs.into_iter().map(|(k, v)| (k, (v, SOURCE_TOPIC))));
                        all
                    }
                    None => return result.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                },
                BROKER => [
                    (
                        "auto.create.topics.enable",
                        broker.config.auto_create_topics.to_string(),
                    ),
                    ("num.partitions", broker.config.default_partitions.to_string()),
                    ("log.retention.ms", broker.config.retention_ms.to_string()),
                    ("log.retention.bytes", broker.config.retention_bytes.to_string()),
                    (
                        "log.retention.check.interval.ms",
                        broker.config.retention_check_interval_ms.to_string(),
                    ),
                    ("log.segment.bytes", broker.config.segment_bytes.to_string()),
                    (
                        "message.max.bytes",
                        broker.wal.config().max_batch_bytes.to_string(),
                    ),
                    (
                        "socket.request.max.bytes",
                        broker.config.max_request_bytes.to_string(),
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), (v, SOURCE_DEFAULT)))
                .collect(),
                _ => return result.with_error_code(ResponseError::InvalidRequest.code()),
            };
            let wanted = r
                .configuration_keys
                .map(|keys| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>());
            let entries = configs
                .into_iter()
                .filter(|(k, _)| wanted.as_ref().is_none_or(|w| w.contains(k)))
                .map(|(name, (value, source))| {
                    let read_only = r.resource_type != TOPIC || !topic_config::is_enforced(&name);
                    DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_string(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_read_only(read_only)
                        .with_config_source(source)
                })
                .collect();
            result.with_configs(entries)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
