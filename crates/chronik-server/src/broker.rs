//! State shared by all connections.

use std::sync::Arc;

use chronik_wal::{Healed, PartitionWal, TopicPartition, WalManager};
use kafka_protocol::error::ResponseError;

use crate::{
    config::ServerConfig, groups::Coordinator, offsets::Offsets, producers::Producers, registry::Registry,
};

/// Node id of this (single) broker.
pub const NODE_ID: i32 = 0;

#[derive(Debug)]
pub struct Broker {
    pub config: ServerConfig,
    pub wal: Arc<WalManager>,
    pub registry: Registry,
    pub producers: Producers,
    pub offsets: Offsets,
    pub groups: Coordinator,
    /// (host, port) clients are told to connect to.
    pub advertised: (String, i32),
    /// Becomes `true` when the broker begins shutting down: long-polls return early.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Broker {
    /// The WAL partition of a client-visible topic partition, or the error its requests are answered with:
    /// UNKNOWN_TOPIC_OR_PARTITION if the registry has no such partition, KAFKA_STORAGE_ERROR if it exists
    /// but is offline (its files could not be opened at start: see `WalManager::offline_partitions`).
    pub fn partition(&self, topic: &str, partition: i32) -> Result<Arc<PartitionWal>, ResponseError> {
        let info = self
            .registry
            .get(topic)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        if partition < 0 || partition >= info.partitions {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        let tp = TopicPartition::new(info.name, partition);
        match self.wal.partition(&tp) {
            Some(wal) => Ok(wal),
            None if self.wal.offline_cause(&tp).is_some() => Err(ResponseError::KafkaStorageError),
            None => Err(ResponseError::UnknownTopicOrPartition),
        }
    }
}

impl Broker {
    /// Publishes the WAL's offline partitions: the `chronik_partitions_offline` gauge and the `/ready` body.
    pub fn publish_offline(&self) {
        let offline = self.wal.offline_partitions();
        crate::telemetry::partitions_offline(offline.len());
        crate::http::set_offline(
            offline
                .into_iter()
                .map(|o| (o.tp.to_string(), o.cause.to_string())),
        );
    }

    /// A partition whose fdatasync failed accepts nothing more (fsyncgate): recover it from disk, cutting
    /// what was never durable, and rebuild its idempotent-producer state from what survived. Producers got
    /// a retriable error for every batch that was cut and send them again. Blocking.
    pub fn heal_if_poisoned(&self, wal: &Arc<PartitionWal>) {
        if !wal.is_poisoned() {
            return;
        }
        let tp = wal.topic_partition();
        // Idempotent batches wait until the rebuild has read the log: a retry of one already there would
        // not be recognised before. Taken only by the request that reopens the partition.
        match self.wal.heal_with(wal, || self.producers.hold_for_rebuild(tp)) {
            Ok((Healed::Reopened(healed), Some(hold))) => {
                if let Err(e) = self.producers.rebuild(std::slice::from_ref(&healed)) {
                    tracing::error!(topic = %tp.topic, partition = tp.partition, error = %e,
                        "rebuilding producer state after recovery failed; idempotent producers are refused on \
                         this partition until the broker restarts");
                    hold.keep();
                    return;
                }
                tracing::warn!(topic = %tp.topic, partition = tp.partition,
                    high_watermark = healed.high_watermark(), "partition recovered from disk after a failed fdatasync");
            }
            // Healed by another request (whose rebuild holds the partition's batches), or healthy.
            Ok(_) => {}
            Err(e) => tracing::error!(topic = %tp.topic, partition = tp.partition, error = %e,
                "recovering a poisoned partition failed; it stays unavailable"),
        }
    }
}

/// Runs blocking work (WAL appends wait for fdatasync) off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("blocking task failed: {e}"))
}
