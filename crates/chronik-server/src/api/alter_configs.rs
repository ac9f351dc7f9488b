//! AlterConfigs (replace a topic's whole config set) and IncrementalAlterConfigs (SET / DELETE single
//! configs). Only topics are alterable; broker settings come from the command line, environment or file.
//! Each topic's change is one entry of the replicated metadata log.

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

use super::{topic_error, ApiError};
use crate::{broker::Broker, registry::TopicError, topic_config::ConfigError};

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
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let configs = r
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let (code, message) = apply(
            broker,
            r.resource_type,
            &r.resource_name,
            request.validate_only,
            |_| Ok(configs),
        )
        .await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string)),
        );
    }
    Ok(AlterConfigsResponse::default().with_responses(responses))
}

pub async fn incremental(
    broker: &Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
) -> Result<IncrementalAlterConfigsResponse, ApiError> {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let changes = &r.configs;
        let (code, message) = apply(
            broker,
            r.resource_type,
            &r.resource_name,
            request.validate_only,
            |current| {
                let mut configs = current.clone();
                for c in changes {
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
        )
        .await;
        responses.push(
            IncrementalResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string)),
        );
    }
    Ok(IncrementalAlterConfigsResponse::default().with_responses(responses))
}

/// Computes a topic's new configs from its current ones and commits them; this broker's partitions take
/// the new segment settings before the answer.
async fn apply(
    broker: &Arc<Broker>,
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
    let result = broker.registry.update_configs(name, change, validate_only).await;
    let reconciled = match (&result, validate_only) {
        (Ok(_), false) => broker.reconcile().await.map(drop),
        _ => Ok(()),
    };
    match result {
        Ok(_) => match reconciled {
            Ok(()) => (0, None),
            Err(e) => (ResponseError::UnknownServerError.code(), Some(e.to_string())),
        },
        Err(TopicError::Unknown(n)) => (
            ResponseError::UnknownTopicOrPartition.code(),
            Some(format!("unknown topic {n}")),
        ),
        Err(e) => {
            let code = topic_error(&e);
            if code == ResponseError::KafkaStorageError {
                tracing::warn!(topic = %name, error = %e, "altering topic configs failed");
            }
            (code.code(), Some(e.to_string()))
        }
    }
}
