//! The periodic housekeeping task. Every `retention_check_interval_ms`, each client-visible partition drops
//! the sealed segments its topic's `retention.ms` / `retention.bytes` (or the broker defaults) let go, and
//! idempotent-producer state idle for `producer_id_expiration_ms` is dropped. An active segment whose records have all
//! passed `retention.ms` is sealed first, so that a partition that stopped receiving data empties too.
//!
//! Internal partitions hold state the broker rebuilds from them on start, so no age or size policy applies
//! to them. The committed-offsets log is trimmed behind its latest snapshot instead
//! ([`crate::offsets::Offsets::trim`]): after each snapshot and, for segments that were waiting on a
//! checkpoint, here. The metadata registry's log is not trimmed (it grows only with administrative changes).

use std::sync::Arc;

use chronik_wal::TopicPartition;
use tracing::warn;

use crate::{broker::Broker, clock::now_ms, registry::RESERVED_PREFIX, topic_config};

/// What one pass deleted, over all partitions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassOutcome {
    pub segments: usize,
    pub bytes: u64,
    pub awaiting_checkpoint: usize,
}

/// One retention pass. Blocking (file removals and directory fsyncs): run it off the async workers.
/// Segments the policy releases but the last checkpoint does not yet cover get a checkpoint written for
/// them (cheap: sealed segments are already synced) and are deleted in the same pass.
pub fn run_once(broker: &Broker) -> PassOutcome {
    let idle = std::time::Duration::from_millis(broker.config.producer_id_expiration_ms);
    let expired = broker.producers.expire(idle);
    if expired > 0 {
        tracing::info!(
            expired,
            left = broker.producers.len(),
            "expired idle producer state"
        );
    }
    let first = pass(broker);
    if first.awaiting_checkpoint == 0 {
        return first;
    }
    if let Err(e) = broker.wal.checkpoint() {
        warn!(error = %e, "checkpoint before retention failed; will retry next pass");
        return first;
    }
    let second = pass(broker);
    PassOutcome {
        segments: first.segments + second.segments,
        bytes: first.bytes + second.bytes,
        awaiting_checkpoint: second.awaiting_checkpoint,
    }
}

fn pass(broker: &Broker) -> PassOutcome {
    let mut total = PassOutcome::default();
    for (partition, offsets) in broker.offsets.all() {
        match offsets.trim() {
            Ok(t) => {
                total.segments += t.segments;
                total.bytes += t.bytes;
                total.awaiting_checkpoint += t.awaiting_checkpoint;
            }
            Err(e) => warn!(partition, error = %e,
                "trimming a committed-offsets log failed; will retry next pass"),
        }
    }
    let now = now_ms();
    for topic in broker.registry.all() {
        if topic.name.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let policy = topic_config::retention_policy(&topic.configs, &broker.config);
        if policy.is_unlimited() {
            continue;
        }
        for p in 0..topic.partitions {
            let tp = TopicPartition::new(Arc::clone(&topic.name), p);
            let Some(wal) = broker.wal.partition(&tp) else {
                continue;
            };
            // An idle partition's last segment, all expired, is sealed now and deleted below (or in the
            // second pass, once a checkpoint covers it).
            if let Err(e) = wal.roll_expired(&policy, now) {
                warn!(topic = %tp.topic, partition = p, error = %e, "sealing an expired segment failed");
            }
            match wal.apply_retention(&policy, now) {
                Ok(outcome) => {
                    total.segments += outcome.segments_deleted;
                    total.bytes += outcome.bytes_deleted;
                    total.awaiting_checkpoint += outcome.awaiting_checkpoint;
                }
                Err(e) => {
                    warn!(topic = %tp.topic, partition = p, error = %e, "retention failed; will retry next pass");
                }
            }
        }
    }
    total
}
