//! Topic configs: the Kafka names this broker knows, which of them it enforces, and their validation.
//!
//! Enforced: `retention.ms` and `retention.bytes` (segment deletion), `segment.bytes` and `segment.ms` (when
//! the topic's partitions seal a segment) and `cleanup.policy` (only `delete`: there is no compaction, so
//! asking for it is refused rather than silently ignored). Other well-known Kafka
//! topic configs are accepted and stored so that tools which set them keep working; they are reported back
//! by DescribeConfigs but have no effect. Unknown names are refused, as Kafka does.

use std::{collections::BTreeMap, time::Duration};

use chronik_wal::{
    config::{MAX_SEGMENT_SIZE_LIMIT, MIN_SEGMENT_SIZE},
    RetentionPolicy, RotationConfig,
};

use crate::config::ServerConfig;

pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const CLEANUP_POLICY: &str = "cleanup.policy";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const SEGMENT_MS: &str = "segment.ms";

/// Names accepted and stored but not acted on.
const STORED_ONLY: &[&str] = &[
    "compression.type",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.downconversion.enable",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.difference.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "segment.index.bytes",
    "segment.jitter.ms",
    "unclean.leader.election.enable",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Checks one name and value.
pub fn validate_entry(name: &str, value: &str) -> Result<(), ConfigError> {
    match name {
        RETENTION_MS | RETENTION_BYTES => match value.trim().parse::<i64>() {
            Ok(v) if v >= -1 => Ok(()),
            _ => Err(ConfigError(format!(
                "{name} must be an integer of at least -1 (-1: unlimited), not {value:?}"
            ))),
        },
        SEGMENT_BYTES => match value.trim().parse::<u64>() {
            Ok(v) if (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE_LIMIT).contains(&v) => Ok(()),
            _ => Err(ConfigError(format!(
                "segment.bytes must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE_LIMIT}, not {value:?}"
            ))),
        },
        SEGMENT_MS => match value.trim().parse::<u64>() {
            Ok(v) if v >= 1 => Ok(()),
            _ => Err(ConfigError(format!(
                "segment.ms must be a positive integer, not {value:?}"
            ))),
        },
        CLEANUP_POLICY => match value.trim() {
            "delete" => Ok(()),
            other => Err(ConfigError(format!(
                "cleanup.policy {other:?} is not supported: this broker deletes old segments but does not compact"
            ))),
        },
        n if STORED_ONLY.contains(&n) => Ok(()),
        n => Err(ConfigError(format!("unknown topic config {n:?}"))),
    }
}

/// Checks a whole set of topic configs.
pub fn validate(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    configs.iter().try_for_each(|(k, v)| validate_entry(k, v))
}

/// The retention a topic gets: its own settings, else the broker's defaults.
pub fn retention_policy(configs: &BTreeMap<String, String>, broker: &ServerConfig) -> RetentionPolicy {
    let get = |name: &str, default: i64| {
        configs
            .get(name)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(default)
    };
    RetentionPolicy::from_kafka(
        get(RETENTION_MS, broker.retention_ms),
        get(RETENTION_BYTES, broker.retention_bytes),
    )
}

/// When a topic's partitions seal a segment: its own `segment.bytes` / `segment.ms`, else `default` (the
/// broker's).
pub fn rotation(configs: &BTreeMap<String, String>, default: RotationConfig) -> RotationConfig {
    // A value stored before these were enforced may be out of range: it falls back to the default
    // rather than keeping the broker from starting.
    let get = |name: &str, default: u64| match configs.get(name) {
        Some(v) if validate_entry(name, v).is_ok() => v.trim().parse::<u64>().unwrap_or(default),
        Some(v) => {
            tracing::warn!(config = name, value = %v, "ignoring an out-of-range stored topic config");
            default
        }
        None => default,
    };
    RotationConfig {
        max_segment_size: get(SEGMENT_BYTES, default.max_segment_size),
        max_segment_age_ms: get(SEGMENT_MS, default.max_segment_age_ms),
    }
}

/// The values a topic has unless set otherwise, as DescribeConfigs reports them.
pub fn defaults(broker: &ServerConfig, max_message_bytes: u32) -> Vec<(&'static str, String)> {
    vec![
        (CLEANUP_POLICY, "delete".into()),
        ("compression.type", "producer".into()),
        ("max.message.bytes", max_message_bytes.to_string()),
        ("message.timestamp.type", "CreateTime".into()),
        ("min.insync.replicas", "1".into()),
        (RETENTION_BYTES, broker.retention_bytes.to_string()),
        (RETENTION_MS, broker.retention_ms.to_string()),
        (SEGMENT_BYTES, broker.segment_bytes.to_string()),
        (SEGMENT_MS, broker.segment_ms.to_string()),
    ]
}

/// True for configs whose value changes what the broker does (DescribeConfigs marks the rest read-only).
pub fn is_enforced(name: &str) -> bool {
    matches!(
        name,
        RETENTION_MS | RETENTION_BYTES | SEGMENT_BYTES | SEGMENT_MS | CLEANUP_POLICY
    )
}

/// How often retention runs, from milliseconds.
pub fn check_interval(broker: &ServerConfig) -> Duration {
    Duration::from_millis(broker.retention_check_interval_ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate_entry(RETENTION_MS, "-1").is_ok());
        assert!(validate_entry(RETENTION_BYTES, "1048576").is_ok());
        assert!(validate_entry(RETENTION_MS, "-2").is_err());
        assert!(validate_entry(RETENTION_MS, "soon").is_err());
        assert!(validate_entry(CLEANUP_POLICY, "compact").is_err());
        assert!(validate_entry(SEGMENT_BYTES, "1048576").is_ok());
        assert!(validate_entry(SEGMENT_BYTES, "1000").is_err(), "below a page");
        assert!(validate_entry(SEGMENT_MS, "0").is_err());
        assert!(validate_entry("segment.jitter.ms", "1000").is_ok(), "stored only");
    }

    #[test]
    fn stored_segment_settings_out_of_range_fall_back_to_the_default() {
        let default = RotationConfig::default();
        let stored = |bytes: &str, ms: &str| {
            BTreeMap::from([
                (SEGMENT_BYTES.to_string(), bytes.to_string()),
                (SEGMENT_MS.to_string(), ms.to_string()),
            ])
        };
        let own = rotation(&stored("65536", "1000"), default);
        assert_eq!((own.max_segment_size, own.max_segment_age_ms), (65536, 1000));
        // Accepted (and stored) before segment.bytes / segment.ms were enforced.
        assert_eq!(rotation(&stored("1000", "0"), default), default);
        assert!(validate_entry("no.such.config", "1").is_err());
    }
}
