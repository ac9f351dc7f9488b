//! State shared by all connections.

use std::sync::Arc;

use std::collections::BTreeMap;

use chronik_wal::{Healed, PartitionWal, TopicPartition, WalManager};
use kafka_protocol::error::ResponseError;

use crate::{
    config::ServerConfig,
    coordination::{partition_for, OffsetShards, OFFSETS_TOPIC},
    groups::Coordinator,
    offsets::Offsets,
    producers::Producers,
    registry::{Reconciled, Registry, TopicError, TopicInfo},
    replication::{
        leader::DEFAULT_REPLICA_LAG_TIME_MAX_MS,
        replicas::{assignments, Replicas},
    },
};

#[derive(Debug)]
pub struct Broker {
    pub config: ServerConfig,
    pub wal: Arc<WalManager>,
    pub registry: Registry,
    pub producers: Producers,
    /// Each local partition's role: leader (with its high watermark) or follower.
    pub replicas: Replicas,
    /// The committed-offsets stores of the offsets partitions this broker leads.
    pub offsets: OffsetShards,
    /// The groups this broker coordinates (see `coordination.rs`).
    pub groups: Coordinator,
    /// (host, port) clients are told to connect to.
    pub advertised: (String, i32),
    /// Becomes `true` when the broker begins shutting down: long-polls return early.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Broker {
    /// A broker over `wal` and `registry`; it coordinates no group until its first
    /// [`Broker::sync_coordination`] loads the offsets stores of the partitions it leads.
    pub fn new(
        config: ServerConfig,
        wal: Arc<WalManager>,
        registry: Registry,
        producers: Producers,
        groups: Coordinator,
        advertised: (String, i32),
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            offsets: OffsetShards::new(Arc::clone(&wal)),
            replicas: Replicas::new(
                registry.node_id(),
                Arc::clone(&wal),
                DEFAULT_REPLICA_LAG_TIME_MAX_MS,
            ),
            wal,
            registry,
            producers,
            groups,
            advertised,
            stop,
        }
    }

    /// This broker's id in the cluster, as Kafka's protocol carries it.
    pub fn node_id(&self) -> i32 {
        broker_id(self.registry.node_id())
    }

    /// The WAL partition of a client-visible topic partition this broker leads, or the error its
    /// requests are answered with: UNKNOWN_TOPIC_OR_PARTITION if the metadata has no such partition,
    /// NOT_LEADER_OR_FOLLOWER if another broker (or none) leads it, KAFKA_STORAGE_ERROR if it is offline
    /// here (its files could not be opened at start: see `WalManager::offline_partitions`).
    pub fn partition(&self, topic: &str, partition: i32) -> Result<Arc<PartitionWal>, ResponseError> {
        self.partition_at(topic, partition, -1)
    }

    /// [`Broker::partition`], for a request that names the leader epoch it knows (-1: none):
    /// FENCED_LEADER_EPOCH if it is older than this broker's, UNKNOWN_LEADER_EPOCH if newer (this broker
    /// has not applied the change yet), as Kafka answers.
    pub fn partition_at(
        &self,
        topic: &str,
        partition: i32,
        leader_epoch: i32,
    ) -> Result<Arc<PartitionWal>, ResponseError> {
        self.partition_with_epoch(topic, partition, leader_epoch)
            .map(|(wal, _)| wal)
    }

    /// [`Broker::partition_at`], with the partition's current leader epoch.
    pub fn partition_with_epoch(
        &self,
        topic: &str,
        partition: i32,
        leader_epoch: i32,
    ) -> Result<(Arc<PartitionWal>, i32), ResponseError> {
        if topic.starts_with(crate::registry::RESERVED_PREFIX) {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        let route = self
            .registry
            .route(topic, partition)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        if route.leader != Some(self.registry.node_id()) {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        if leader_epoch >= 0 && leader_epoch < route.leader_epoch {
            return Err(ResponseError::FencedLeaderEpoch);
        }
        if leader_epoch > route.leader_epoch {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
        let tp = TopicPartition::new(topic, partition);
        let wal = match self.wal.partition(&tp) {
            Some(wal) => wal,
            None if self.wal.offline_cause(&tp).is_some() => return Err(ResponseError::KafkaStorageError),
            // Assigned here by metadata this broker has not reconciled yet.
            None => return Err(ResponseError::UnknownTopicOrPartition),
        };
        // Led here once this broker has taken office in that epoch (`Replicas::sync`, right after the
        // metadata change): until then the client retries.
        let leading = self.replicas.get(&tp).and_then(|r| r.leading_epoch());
        if leading != Some(route.leader_epoch) {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        Ok((wal, route.leader_epoch))
    }

    /// Brings the replicas' roles in step with the metadata applied here (see `Replicas::sync`); a
    /// partition whose change failed on a poisoned log is healed (the next pass takes office). Returns
    /// the partitions whose change failed, and why. Blocking.
    pub fn sync_replicas(&self) -> Vec<(TopicPartition, String)> {
        let me = self.registry.node_id();
        let done = self.replicas.sync(|| self.registry.read(|s| assignments(s, me)));
        if !done.became_leader.is_empty() || !done.became_follower.is_empty() {
            tracing::debug!(
                leader = done.became_leader.len(),
                follower = done.became_follower.len(),
                "partition roles changed"
            );
        }
        for (tp, e) in &done.failed {
            tracing::error!(topic = %tp.topic, partition = tp.partition, error = %e,
                "taking or leaving partition leadership failed; retried shortly");
            if let Some(wal) = self.wal.partition(tp) {
                self.heal_if_poisoned(&wal);
            }
        }
        done.failed
    }

    /// Makes the WAL hold the partitions the metadata assigns this broker, and forgets the producer state
    /// of the partitions deleted. Runs in the blocking pool.
    pub async fn reconcile(self: &Arc<Self>) -> anyhow::Result<Reconciled> {
        let b = Arc::clone(self);
        blocking(move || {
            let mut done = b.registry.reconcile();
            let roles_failed = b.sync_replicas();
            for tp in &done.deleted {
                b.producers.forget_partition(tp);
            }
            for tp in &done.created {
                if let Some(wal) = b.wal.partition(tp) {
                    crate::telemetry::high_watermark(&tp.topic, tp.partition, wal.synced_offset());
                }
            }
            for (tp, e) in &done.failed {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e,
                    "a partition assigned to this broker could not be made (or removed); retried at the next \
                     metadata change");
            }
            if !done.deleted.is_empty() {
                // A deleted topic's offline partitions are gone with it.
                b.publish_offline();
            }
            // Failed role changes (logged by `sync_replicas`) count as failures of the pass: the
            // reconciler tries again.
            done.failed.extend(roles_failed);
            done
        })
        .await
    }

    /// The offsets partition of `group`, once the offsets topic exists.
    pub fn group_partition(&self, group: &str) -> Option<i32> {
        let partitions = self.registry.internal_partitions(OFFSETS_TOPIC)?;
        Some(partition_for(group, partitions))
    }

    /// The offsets store of `group` if this broker coordinates it; else NOT_COORDINATOR (the client looks
    /// the coordinator up again), or COORDINATOR_LOAD_IN_PROGRESS while its store loads.
    pub fn coordinator_of(&self, group: &str) -> Result<Arc<Offsets>, ResponseError> {
        let p = self.group_partition(group).ok_or(ResponseError::NotCoordinator)?;
        let route = self.registry.route(OFFSETS_TOPIC, p);
        if route.and_then(|r| r.leader) != Some(self.registry.node_id()) {
            return Err(ResponseError::NotCoordinator);
        }
        self.offsets
            .get(p)
            .ok_or(ResponseError::CoordinatorLoadInProgress)
    }

    /// Loads the offsets stores of the offsets partitions this broker leads now and drops the others,
    /// forgetting the groups of those. Returns whether every store it leads is loaded. Runs in the
    /// blocking pool.
    pub async fn sync_coordination(self: &Arc<Self>) -> anyhow::Result<bool> {
        let b = Arc::clone(self);
        blocking(move || {
            let done = b.offsets.sync(|| b.registry.led_partitions(OFFSETS_TOPIC));
            for (p, e) in &done.failed {
                tracing::error!(partition = p, error = %e,
                    "loading the committed offsets of a partition this broker leads failed; its groups get \
                     COORDINATOR_LOAD_IN_PROGRESS until the next metadata change retries");
            }
            if !done.closed.is_empty() {
                let closed: std::collections::BTreeSet<i32> = done.closed.iter().copied().collect();
                let forgotten = b
                    .groups
                    .forget_where(|g| b.group_partition(g).is_none_or(|p| closed.contains(&p)));
                tracing::info!(partitions = ?done.closed, groups = forgotten,
                    "no longer coordinating the groups of offsets partitions led elsewhere now");
            }
            if !done.opened.is_empty() {
                tracing::info!(partitions = ?done.opened, "coordinating the groups of offsets partitions");
            }
            done.failed.is_empty()
        })
        .await
    }

    /// Creates a topic and, before answering, its partitions on this broker; if they cannot be made
    /// here, the topic is deleted again and the error returned.
    pub async fn create_topic(
        self: &Arc<Self>,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        let info = self
            .registry
            .create(name, partitions, replication_factor, configs, validate_only)
            .await?;
        if validate_only {
            return Ok(info);
        }
        let done = self
            .reconcile()
            .await
            .map_err(|e| TopicError::Refused(e.to_string()))?;
        // Every partition assigned here must exist (or be offline: there, on disk) before the answer.
        let missing = self.registry.assigned_here(name).into_iter().find(|&p| {
            let tp = TopicPartition::new(name, p);
            self.wal.partition(&tp).is_none() && self.wal.offline_cause(&tp).is_none()
        });
        if let Some(partition) = missing {
            let why = done
                .failed
                .into_iter()
                .find(|(tp, _)| *tp.topic == *name && tp.partition == partition)
                .map_or_else(|| "not made".to_string(), |(_, why)| why);
            tracing::warn!(topic = name, partition, error = %why,
                "a partition of a new topic could not be made here; deleting the topic again");
            if let Err(undo) = self.registry.delete(name).await {
                tracing::warn!(topic = name, error = %undo, "deleting the topic again failed");
            }
            self.reconcile()
                .await
                .map_err(|e| TopicError::Refused(e.to_string()))?;
            return Err(TopicError::Local {
                topic: name.to_string(),
                partition,
                why,
            });
        }
        Ok(info)
    }
}

/// A cluster node id as Kafka's protocol carries broker ids.
pub fn broker_id(node: u64) -> i32 {
    i32::try_from(node).unwrap_or(i32::MAX)
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
