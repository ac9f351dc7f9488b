//! AlterConfigs (replace a topic's whole config set) and IncrementalAlterConfigs (SET / DELETE single
//! configs). Only topics are alterable; broker settings come from the command line, environment or file.
//! Each topic's change is one durable metadata-log record.

use std::{collections::BTreeMap, sync::Arc};

use kafka_protocol::{
    error::ResponseError,
    messages::{
        alter_configs_response::AlterConfigsResourceResponse,
        incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse,
        AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
        IncrementalAlterConfigsResponse,
    },
    protocol::StrBytes,
};

use super::ApiError;
use crate::{
    broker::{blocking, Broker},
    registry::TopicError,
    topic_config::ConfigError,
};

const TOPIC: i8 = 2;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// An error code and message for one resource; `(0, None)` on success.
type Outcome = (i16, Option<String>);

pub async fn alter(
    broker: &Arc<Broker>,
    request: AlterConfigsRequest,
) -> Result<AlterConfigsResponse, ApiError> {
    let b = Arc::clone(broker);
    let responses = blocking(move || {
        request
            .resources
            .into_iter()
            .map(|r| {
                let configs = r
                    .configs
                    .iter()
                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                    .collect();
                let (code, message) = apply(
                    &b,
                    r.resource_type,
                    &r.resource_name,
                    request.validate_only,
                    |_| Ok(configs),
                );
                AlterConfigsResourceResponse::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name)
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_string))
            })
            .collect()
    })
    .await?;
    Ok(AlterConfigsResponse::default().with_responses(responses))
}

pub async fn incremental(
    broker: &Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
) -> Result<IncrementalAlterConfigsResponse, ApiError> {
    let b = Arc::clone(broker);
    let responses = blocking(move || {
        request
            .resources
            .into_iter()
            .map(|r| {
                let (code, message) = apply(
                    &b,
                    r.resource_type,
                    &r.resource_name,
                    request.validate_only,
                    |current| {
                        let mut configs = current.clone();
                        for c in &r.configs {
                            let name = c.name.to_string();
                            match (c.config_operation, &c.value) {
                                (OP_SET, Some(v)) => {
                                    configs.insert(name, v.to_string());
                                }
                                (OP_DELETE, _) => {
                                    configs.remove(&name);
                                }
                                (OP_SET, None) => {
                                    return Err(ConfigError(format!("SET of {name} needs a value")));
                                }
                                (op, _) => {
                                    return Err(ConfigError(format!(
                                        "operation {op} on {name} is not supported (only SET and DELETE)"
                                    )))
                                }
                            }
                        }
                        Ok(configs)
                    },
                );
                IncrementalResourceResponse::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name)
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_string))
            })
            .collect()
    })
    .await?;
    Ok(IncrementalAlterConfigsResponse::default().with_responses(responses))
}

/// Computes a topic's new configs from its current ones and stores them.
fn apply(
    broker: &Broker,
    resource_type: i8,
    name: &StrBytes,
    validate_only: bool,
    change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigError>,
) -> Outcome {
    if resource_type != TOPIC {
        return (
            ResponseError::InvalidRequest.code(),
            Some("only topic configs can be altered; broker settings come from its configuration".into()),
        );
    }
    match broker.registry.update_configs(name, change, validate_only) {
        Ok(_) => (0, None),
        Err(TopicError::Unknown(n)) => (
            ResponseError::UnknownTopicOrPartition.code(),
            Some(format!("unknown topic {n}")),
        ),
        Err(e @ TopicError::InvalidConfig(_)) => (ResponseError::InvalidConfig.code(), Some(e.to_string())),
        Err(e) => {
            tracing::warn!(topic = %name, error = %e, "altering topic configs failed");
            (ResponseError::KafkaStorageError.code(), Some(e.to_string()))
        }
    }
}
