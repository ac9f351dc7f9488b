//! Broker metrics, through the `metrics` facade (exported as Prometheus text on `--metrics-listen`).
//! Labels are bounded: the API name and a short reason, never a client or offset; the per-partition high
//! watermark is bounded by the partitions that exist.
//!
//! [`register_defaults`] describes every metric (the Prometheus `# HELP` line) and creates each series
//! whose label values are known in advance at zero, the WAL's included, so that dashboards and `rate()`
//! alerts see them from the first scrape instead of from the first event. The README's metric list and
//! `tests/python/test_metrics.py` hold the same names.

use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

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

/// Every `reason` of [`REQUEST_ERRORS_TOTAL`]: the labels of the connection errors `server.rs` counts (a
/// connection ended by an I/O error, normally the client going away, is not counted).
pub const REQUEST_ERROR_REASONS: &[&str] = &[
    "bad_length",
    "unknown_api_key",
    "unsupported_version",
    "malformed",
    "idle_timeout",
    "request_body_timeout",
    "write_timeout",
    "internal",
    "too_many_connections",
];

/// `(api, error)` series of [`API_ERRORS_TOTAL`] created at zero: the ones worth an alert from the start
/// (storage failures, consumers reset by retention, commits that could not be stored). Other codes appear
/// when first answered.
pub const API_ERRORS_AT_START: &[(ApiKey, &str)] = &[
    (ApiKey::Produce, "KafkaStorageError"),
    (ApiKey::Fetch, "KafkaStorageError"),
    (ApiKey::Fetch, "OffsetOutOfRange"),
    (ApiKey::OffsetCommit, "NotCoordinator"),
];

/// A request that closed its connection (malformed, unsupported, internal failure).
pub fn request_failed(reason: &'static str) {
    debug_assert!(
        REQUEST_ERROR_REASONS.contains(&reason),
        "{reason} is missing from REQUEST_ERROR_REASONS"
    );
    counter!(REQUEST_ERRORS_TOTAL, "reason" => reason).increment(1);
}

pub const PARTITION_HIGH_WATERMARK: &str = "chronik_partition_high_watermark";
pub const PARTITIONS_OFFLINE: &str = "chronik_partitions_offline";
pub const CONSUMER_GROUPS: &str = "chronik_consumer_groups";
pub const CONSUMER_GROUP_MEMBERS: &str = "chronik_consumer_group_members";

/// One series per partition (bounded by the partitions that exist), set after appends.
pub fn high_watermark(topic: &str, partition: i32, offset: i64) {
    gauge!(PARTITION_HIGH_WATERMARK, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(offset as f64);
}

/// Partitions whose files could not be opened at start, and are not served.
pub fn partitions_offline(n: usize) {
    gauge!(PARTITIONS_OFFLINE).set(n as f64);
}

/// Groups by state, and members in all groups.
pub fn groups(by_state: &[(&'static str, usize)], members: usize) {
    for (state, n) in by_state {
        gauge!(CONSUMER_GROUPS, "state" => *state).set(*n as f64);
    }
    gauge!(CONSUMER_GROUP_MEMBERS).set(members as f64);
}

pub const CONTROLLER_ACTIVE: &str = "chronik_controller_active";
pub const RAFT_TERM: &str = "chronik_raft_term";
pub const RAFT_LAST_LOG_INDEX: &str = "chronik_raft_last_log_index";
pub const RAFT_APPLIED_INDEX: &str = "chronik_raft_applied_index";
pub const CLUSTER_BROKERS: &str = "chronik_cluster_brokers";
pub const CLUSTER_PARTITIONS_OFFLINE: &str = "chronik_cluster_partitions_offline";
pub const LEADERSHIP_CHANGES_TOTAL: &str = "chronik_leadership_changes_total";

/// The controller quorum and the cluster as this node sees them.
pub fn controller(status: &chronik_cluster::ControllerStatus) {
    gauge!(CONTROLLER_ACTIVE).set(if status.active { 1.0 } else { 0.0 });
    gauge!(RAFT_TERM).set(status.term as f64);
    gauge!(RAFT_LAST_LOG_INDEX).set(status.last_log_index.map_or(0.0, |i| i as f64));
    gauge!(RAFT_APPLIED_INDEX).set(status.last_applied_index.map_or(0.0, |i| i as f64));
    gauge!(CLUSTER_BROKERS, "state" => "live").set(status.live_brokers as f64);
    gauge!(CLUSTER_BROKERS, "state" => "fenced").set(status.fenced_brokers as f64);
    gauge!(CLUSTER_PARTITIONS_OFFLINE).set(status.offline_partitions as f64);
    counter!(LEADERSHIP_CHANGES_TOTAL).absolute(status.leader_changes);
}

pub fn connection_opened() {
    counter!(CONNECTIONS_TOTAL).increment(1);
    gauge!(CONNECTIONS).increment(1.0);
}

pub fn connection_closed() {
    gauge!(CONNECTIONS).decrement(1.0);
}

/// Describes every metric and creates the series with known label values at zero (histograms empty),
/// the WAL's too. Call once, after installing the recorder and before serving.
pub fn register_defaults() {
    chronik_wal::metrics::register_defaults();

    describe_counter!(REQUESTS_TOTAL, "Requests received, by Kafka API.");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        "Time from a request's arrival to its response being ready to write (including the wait for \
         earlier requests of its connection), by Kafka API, in seconds."
    );
    for (key, _, _) in crate::api::SUPPORTED {
        counter!(REQUESTS_TOTAL, "api" => api(*key)).increment(0);
        // Creating the handle registers the series; nothing is recorded.
        let _ = histogram!(REQUEST_DURATION_SECONDS, "api" => api(*key));
    }
    describe_counter!(
        REQUEST_ERRORS_TOTAL,
        "Connections closed because of a request or the connection's state, by reason."
    );
    for reason in REQUEST_ERROR_REASONS {
        counter!(REQUEST_ERRORS_TOTAL, "reason" => *reason).increment(0);
    }
    describe_counter!(
        API_ERRORS_TOTAL,
        "Error codes carried in responses (per partition or per request), by Kafka API and error name."
    );
    for (key, error) in API_ERRORS_AT_START {
        counter!(API_ERRORS_TOTAL, "api" => api(*key), "error" => *error).increment(0);
    }
    describe_gauge!(CONNECTIONS, "Client connections open now.");
    gauge!(CONNECTIONS).increment(0.0);
    describe_counter!(CONNECTIONS_TOTAL, "Client connections accepted.");
    counter!(CONNECTIONS_TOTAL).increment(0);
    describe_gauge!(
        PARTITION_HIGH_WATERMARK,
        "The offset after the last record of each partition, from start-up and after each append."
    );
    describe_gauge!(
        PARTITIONS_OFFLINE,
        "Partitions whose files could not be opened at start: not served (KAFKA_STORAGE_ERROR) until the \
         cause is removed and the broker restarted."
    );
    gauge!(PARTITIONS_OFFLINE).set(0.0);
    describe_gauge!(CONSUMER_GROUPS, "Consumer groups, by state.");
    for state in crate::groups::GroupState::ALL {
        gauge!(CONSUMER_GROUPS, "state" => state.name()).increment(0.0);
    }
    describe_gauge!(
        CONTROLLER_ACTIVE,
        "1 on the node that is the controller (the Raft leader), else 0."
    );
    describe_gauge!(
        RAFT_TERM,
        "The controller quorum's Raft term, as this node knows it."
    );
    describe_gauge!(
        RAFT_LAST_LOG_INDEX,
        "The last metadata log index this node holds."
    );
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "The last committed metadata log index this node has applied."
    );
    describe_gauge!(CLUSTER_BROKERS, "Registered brokers, by state (live, fenced).");
    describe_gauge!(
        CLUSTER_PARTITIONS_OFFLINE,
        "Partitions of the cluster without a leader (no in-sync replica available): LEADER_NOT_AVAILABLE."
    );
    describe_counter!(
        LEADERSHIP_CHANGES_TOTAL,
        "Times a partition's leader changed (leader epoch bumps), over the cluster's life."
    );
    gauge!(CONTROLLER_ACTIVE).set(0.0);
    gauge!(RAFT_TERM).set(0.0);
    gauge!(RAFT_LAST_LOG_INDEX).set(0.0);
    gauge!(RAFT_APPLIED_INDEX).set(0.0);
    for state in ["live", "fenced"] {
        gauge!(CLUSTER_BROKERS, "state" => state).set(0.0);
    }
    gauge!(CLUSTER_PARTITIONS_OFFLINE).set(0.0);
    counter!(LEADERSHIP_CHANGES_TOTAL).absolute(0);
    describe_gauge!(CONSUMER_GROUP_MEMBERS, "Members in all consumer groups.");
    gauge!(CONSUMER_GROUP_MEMBERS).increment(0.0);
}
