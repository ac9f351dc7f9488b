//! Topic configs: the Kafka names this broker knows, which of them it enforces, and their validation.
//!
//! Every topic-level config name of Kafka 3.x is known; others are refused (INVALID_CONFIG), as Kafka does.
//! - Enforced: `retention.ms` and `retention.bytes` (segment deletion), `segment.bytes` and `segment.ms`
//!   (when the topic's partitions seal a segment) and `cleanup.policy` (only `delete`: there is no
//!   compaction, so asking for it is refused rather than silently ignored).
//! - No effect (`NO_EFFECT`): accepted, stored and reported back by DescribeConfigs with the stored
//!   value, so that tools which set them keep working, but nothing reads them. Deprecated configs
//!   (`message.format.version`, `message.downconversion.enable`, `message.timestamp.difference.max.ms`),
//!   replication and tiered-storage knobs of a single-replica broker without tiered storage, and tuning
//!   of Kafka's own file layout are here. Their values are checked as Kafka's `LogConfig` checks them
//!   (type and range), so that a value one broker accepts the other accepts too.
//! - Refused values: `remote.storage.enable=true` (there is no tiered storage; Kafka refuses it too on a
//!   cluster without one), like `cleanup.policy=compact`.
//!
//! Invariant: a name is in at most one of the enforced names and `NO_EFFECT`.

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
pub const REMOTE_STORAGE_ENABLE: &str = "remote.storage.enable";

/// The value a no-effect config takes, checked as Kafka checks it.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// `true` or `false`, any case (Kafka's BOOLEAN).
    Bool,
    /// An integer within the bounds (Kafka's INT or LONG with `atLeast` / `between`).
    Int { min: i64, max: i64 },
    /// A decimal between 0 and 1.
    Ratio,
    /// One of these words, exactly.
    OneOf(&'static [&'static str]),
    /// A Kafka version such as `2.8`, `0.10.2` or `3.0-IV1`. Kafka checks it against the versions it
    /// knows; the value has no effect in Kafka 3 either, so only its form is checked here.
    Version,
    /// `*`, or a comma-separated list of `partition:broker` pairs (possibly empty).
    ReplicaList,
}

const INT_MAX: i64 = i32::MAX as i64;

/// A long (Kafka's LONG type) of at least `min`.
const fn long_at_least(min: i64) -> Value {
    Value::Int { min, max: i64::MAX }
}

/// Names accepted, stored and shown, with no effect on this broker.
const NO_EFFECT: &[(&str, Value)] = &[
    ("compression.gzip.level", Value::Int { min: -1, max: 9 }),
    ("compression.lz4.level", Value::Int { min: 1, max: 17 }),
    (
        "compression.type",
        Value::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    ),
    (
        "compression.zstd.level",
        Value::Int {
            min: -131072,
            max: 22,
        },
    ),
    ("delete.retention.ms", long_at_least(0)),
    ("file.delete.delay.ms", long_at_least(0)),
    ("flush.messages", long_at_least(1)),
    ("flush.ms", long_at_least(0)),
    ("follower.replication.throttled.replicas", Value::ReplicaList),
    ("index.interval.bytes", Value::Int { min: 0, max: INT_MAX }),
    ("leader.replication.throttled.replicas", Value::ReplicaList),
    ("local.retention.bytes", long_at_least(-2)),
    ("local.retention.ms", long_at_least(-2)),
    ("max.compaction.lag.ms", long_at_least(1)),
    ("max.message.bytes", Value::Int { min: 0, max: INT_MAX }),
    ("message.downconversion.enable", Value::Bool),
    ("message.format.version", Value::Version),
    ("message.timestamp.after.max.ms", long_at_least(0)),
    ("message.timestamp.before.max.ms", long_at_least(0)),
    ("message.timestamp.difference.max.ms", long_at_least(0)),
    (
        "message.timestamp.type",
        Value::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    ("min.cleanable.dirty.ratio", Value::Ratio),
    ("min.compaction.lag.ms", long_at_least(0)),
    ("min.insync.replicas", Value::Int { min: 1, max: INT_MAX }),
    ("preallocate", Value::Bool),
    ("remote.log.copy.disable", Value::Bool),
    ("remote.log.delete.on.disable", Value::Bool),
    ("segment.index.bytes", Value::Int { min: 4, max: INT_MAX }),
    ("segment.jitter.ms", long_at_least(0)),
    ("unclean.leader.election.enable", Value::Bool),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn parse_bool(value: &str) -> Option<bool> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn is_version(value: &str) -> bool {
    let (version, iv) = match value.split_once("-IV") {
        Some((v, iv)) => (v, Some(iv)),
        None => (value, None),
    };
    let parts: Vec<&str> = version.split('.').collect();
    let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (2..=4).contains(&parts.len()) && parts.iter().all(|p| number(p)) && iv.is_none_or(number)
}

fn is_replica_list(value: &str) -> bool {
    let pair = |p: &str| {
        p.split_once(':').is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        })
    };
    value.trim() == "*" || value.split(',').map(str::trim).all(|p| p.is_empty() || pair(p))
}

fn check(name: &str, kind: Value, value: &str) -> Result<(), ConfigError> {
    let ok = match kind {
        Value::Bool => parse_bool(value).is_some(),
        Value::Int { min, max } => value
            .trim()
            .parse::<i64>()
            .is_ok_and(|v| (min..=max).contains(&v)),
        Value::Ratio => value
            .trim()
            .parse::<f64>()
            .is_ok_and(|v| (0.0..=1.0).contains(&v)),
        Value::OneOf(words) => words.contains(&value.trim()),
        Value::Version => is_version(value.trim()),
        Value::ReplicaList => is_replica_list(value),
    };
    if ok {
        return Ok(());
    }
    let wanted = match kind {
        Value::Bool => "true or false".to_string(),
        Value::Int { min, max } if max == i64::MAX || max == INT_MAX => {
            format!("an integer of at least {min}")
        }
        Value::Int { min, max } => format!("an integer from {min} to {max}"),
        Value::Ratio => "a number from 0 to 1".to_string(),
        Value::OneOf(words) => format!("one of {}", words.join(", ")),
        Value::Version => "a Kafka version such as 2.8 or 3.0-IV1".to_string(),
        Value::ReplicaList => "* or a list of partition:broker pairs".to_string(),
    };
    Err(ConfigError(format!("{name} must be {wanted}, not {value:?}")))
}

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
        REMOTE_STORAGE_ENABLE => match parse_bool(value) {
            Some(false) => Ok(()),
            Some(true) => Err(ConfigError(
                "remote.storage.enable=true is not supported: this broker has no tiered storage".into(),
            )),
            None => Err(ConfigError(format!(
                "{name} must be true or false, not {value:?}"
            ))),
        },
        n => match NO_EFFECT.iter().find(|(known, _)| *known == n) {
            Some(&(_, kind)) => check(n, kind, value),
            None => Err(ConfigError(format!("unknown topic config {n:?}"))),
        },
    }
}

/// Checks a whole set of topic configs.
pub fn validate(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    configs.iter().try_for_each(|(k, v)| validate_entry(k, v))
}

/// Checks the entries of `new` that are not in `old` with the same value. A value stored by an older
/// version that checked less stays as it is rather than blocking every later change to the topic.
pub fn validate_changes(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .try_for_each(|(k, v)| validate_entry(k, v))
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
    fn no_effect_configs_are_checked_as_kafka_checks_them() {
        let ok = [
            ("message.format.version", "2.8"),
            ("message.format.version", "0.10.2"),
            ("message.format.version", "0.8.2.1"),
            ("message.format.version", "3.0-IV1"),
            ("message.downconversion.enable", "false"),
            ("message.downconversion.enable", " TRUE "),
            ("preallocate", "true"),
            ("remote.storage.enable", "false"),
            ("min.cleanable.dirty.ratio", "0.5"),
            ("compression.type", "zstd"),
            ("message.timestamp.type", "CreateTime"),
            ("leader.replication.throttled.replicas", "*"),
            ("follower.replication.throttled.replicas", "0:1, 1:1"),
            ("follower.replication.throttled.replicas", ""),
            ("local.retention.ms", "-2"),
            ("min.insync.replicas", "2"),
            ("compression.gzip.level", "-1"),
        ];
        for (name, value) in ok {
            assert_eq!(validate_entry(name, value), Ok(()), "{name}={value}");
        }
        let refused = [
            ("message.format.version", "latest"),
            ("message.format.version", "3."),
            ("message.format.version", "3.0-IV"),
            ("message.downconversion.enable", "yes"),
            ("preallocate", "1"),
            ("remote.storage.enable", "true"),
            ("remote.storage.enable", "maybe"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("compression.type", "brotli"),
            ("message.timestamp.type", "createtime"),
            ("leader.replication.throttled.replicas", "0-1"),
            ("local.retention.ms", "-3"),
            ("min.insync.replicas", "0"),
            ("max.message.bytes", "3000000000"),
            ("flush.messages", "0"),
            ("compression.lz4.level", "18"),
        ];
        for (name, value) in refused {
            let e = validate_entry(name, value).expect_err(&format!("{name}={value}"));
            assert!(e.0.contains(name), "{e}");
        }
        assert!(validate_entry("no.such.config", "1").is_err());
    }

    #[test]
    fn no_name_is_both_enforced_and_without_effect() {
        for (name, _) in NO_EFFECT {
            assert!(!is_enforced(name), "{name}");
            assert!(
                ![
                    RETENTION_MS,
                    RETENTION_BYTES,
                    SEGMENT_BYTES,
                    SEGMENT_MS,
                    CLEANUP_POLICY,
                    REMOTE_STORAGE_ENABLE
                ]
                .contains(name),
                "{name}"
            );
        }
    }

    #[test]
    fn only_changed_entries_are_checked() {
        let old = BTreeMap::from([("segment.ms".to_string(), "0".to_string())]);
        let mut new = old.clone();
        new.insert("preallocate".into(), "true".into());
        assert_eq!(
            validate_changes(&old, &new),
            Ok(()),
            "the old value is kept as it was"
        );
        new.insert("segment.ms".into(), "-5".into());
        assert!(
            validate_changes(&old, &new).is_err(),
            "a changed value is checked"
        );
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
