//! InitProducerId for idempotent producers: a producer id never handed out before (reserved in blocks in
//! the metadata log), epoch 0. A known producer asking again (v3+) gets its epoch bumped. Transactions
//! are not supported: a transactional id is refused.

use std::sync::Arc;

use kafka_protocol::{
    error::ResponseError,
    messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId},
};

use super::ApiError;
use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
) -> Result<InitProducerIdResponse, ApiError> {
    let response = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        return Ok(response
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1));
    }
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        return Ok(match request.producer_epoch.checked_add(1) {
            Some(epoch) if epoch < i16::MAX => response
                .with_producer_id(request.producer_id)
                .with_producer_epoch(epoch),
            _ => response
                .with_error_code(ResponseError::InvalidProducerEpoch.code())
                .with_producer_id(ProducerId(-1)),
        });
    }
    match broker.registry.allocate_producer_id().await {
        Ok(id) => Ok(response.with_producer_id(ProducerId(id)).with_producer_epoch(0)),
        Err(e) => {
            tracing::warn!(error = %e, "allocating a producer id failed");
            // Retriable: the client asks again (the controller may be changing).
            Ok(response
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_producer_id(ProducerId(-1)))
        }
    }
}
