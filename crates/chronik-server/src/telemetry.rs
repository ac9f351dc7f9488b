//! Broker metrics, through the `metrics` facade (exported as Prometheus text on `--metrics-listen`).
//! Labels are bounded: the API name and a short reason, never a topic, client or offset.

use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use metrics::{counter, gauge, histogram};

pub const REQUESTS_TOTAL: &str = "chronik_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "chronik_request_duration_seconds";
pub const REQUEST_ERRORS_TOTAL: &str = "chronik_request_errors_total";
pub const CONNECTIONS: &str = "chronik_connections";
pub const CONNECTIONS_TOTAL: &str = "chronik_connections_total";

fn api(key: ApiKey) -> String {
    format!("{key:?}")
}

pub fn request_started(key: ApiKey) {
    counter!(REQUESTS_TOTAL, "api" => api(key)).increment(1);
}

pub fn request_finished(key: ApiKey, took: Duration) {
    histogram!(REQUEST_DURATION_SECONDS, "api" => api(key)).record(took.as_secs_f64());
}

pub const API_ERRORS_TOTAL: &str = "chronik_api_errors_total";

/// An error code a response carries (per partition or per request), by API and Kafka error name.
pub fn api_error(key: ApiKey, code: i16) {
    if code == 0 {
        return;
    }
    let error = kafka_protocol::error::ResponseError::try_from_code(code)
        .map_or_else(|| code.to_string(), |e| format!("{e:?}"));
    counter!(API_ERRORS_TOTAL, "api" => api(key), "error" => error).increment(1);
}

/// A request that closed its connection (malformed, unsupported, internal failure).
pub fn request_failed(reason: &'static str) {
    counter!(REQUEST_ERRORS_TOTAL, "reason" => reason).increment(1);
}

pub const PARTITION_HIGH_WATERMARK: &str = "chronik_partition_high_watermark";
pub const CONSUMER_GROUPS: &str = "chronik_consumer_groups";
pub const CONSUMER_GROUP_MEMBERS: &str = "chronik_consumer_group_members";

/// One series per partition (bounded by the partitions that exist), set after appends.
pub fn high_watermark(topic: &str, partition: i32, offset: i64) {
    gauge!(PARTITION_HIGH_WATERMARK, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(offset as f64);
}

/// Groups by state, and members in all groups.
pub fn groups(by_state: &[(&'static str, usize)], members: usize) {
    for (state, n) in by_state {
        gauge!(CONSUMER_GROUPS, "state" => *state).set(*n as f64);
    }
    gauge!(CONSUMER_GROUP_MEMBERS).set(members as f64);
}

pub fn connection_opened() {
    counter!(CONNECTIONS_TOTAL).increment(1);
    gauge!(CONNECTIONS).increment(1.0);
}

pub fn connection_closed() {
    gauge!(CONNECTIONS).decrement(1.0);
}
