//! State shared by all connections.

use std::sync::Arc;

use chronik_wal::{PartitionWal, TopicPartition, WalManager};

use crate::{
    config::ServerConfig, groups::Coordinator, offsets::Offsets, producers::Producers, topics::Topics,
};

/// Node id of this (single) broker.
pub const NODE_ID: i32 = 0;

#[derive(Debug)]
pub struct Broker {
    pub config: ServerConfig,
    pub wal: Arc<WalManager>,
    pub topics: Topics,
    pub producers: Producers,
    pub offsets: Offsets,
    pub groups: Coordinator,
    /// (host, port) clients are told to connect to.
    pub advertised: (String, i32),
    /// Becomes `true` when the broker begins shutting down: long-polls return early.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Broker {
    /// The WAL partition of a client-visible topic partition.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<PartitionWal>> {
        let info = self.topics.get(topic)?;
        if partition < 0 || partition >= info.partitions {
            return None;
        }
        self.wal.partition(&TopicPartition::new(info.name, partition))
    }
}

/// Runs blocking work (WAL appends wait for fdatasync) off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("blocking task failed: {e}"))
}
