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

/// A request that closed its connection (malformed, unsupported, internal failure).
pub fn request_failed(reason: &'static str) {
    counter!(REQUEST_ERRORS_TOTAL, "reason" => reason).increment(1);
}

pub fn connection_opened() {
    counter!(CONNECTIONS_TOTAL).increment(1);
    gauge!(CONNECTIONS).increment(1.0);
}

pub fn connection_closed() {
    gauge!(CONNECTIONS).decrement(1.0);
}
