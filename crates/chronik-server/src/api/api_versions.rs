//! ApiVersions: the APIs and versions this broker implements. An unknown request version is answered
//! in version 0 with UNSUPPORTED_VERSION and the list, so the client can retry with one we know.

use kafka_protocol::{
    error::ResponseError,
    messages::{api_versions_response::ApiVersion, ApiVersionsRequest, ApiVersionsResponse},
};

use super::SUPPORTED;

pub fn handle(request: Option<ApiVersionsRequest>) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    let error_code = if request.is_some() {
        0
    } else {
        ResponseError::UnsupportedVersion.code()
    };
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}
