//! The broker's view of the cluster metadata: the cluster id, the brokers, the topics (ids, partition
//! assignments, leaders, configs) and producer-id blocks. The metadata is the replicated state machine of
//! `chronik-cluster` (openraft over an internal WAL partition); a single broker is a cluster of one voter.
//! Changes are proposed through whichever node leads the quorum and answered once committed and applied
//! on this node; `local.rs` then makes this broker's WAL hold the partitions assigned to it.
//!
//! Invariants:
//! - Reads see the metadata as applied on this node, which is at least as new as the cluster's when the
//!   broker started (it registers, and so catches up, before it serves) and includes every change this
//!   node answered.
//! - Creations are admitted, or refused whole, against this broker's partition limit before they are
//!   proposed, under the `changes` lock, so concurrent creations through this node cannot exceed it
//!   together. Start-up never refuses what is already on disk.
//! - A topic whose partitions this broker could not create is deleted again before the creation is
//!   answered (with the error): a client is not told of a topic this broker cannot hold.
//! - Producer ids come from blocks reserved in the metadata log; a block is never handed out twice, even
//!   across restarts and controller changes (ids of a block a broker did not use up are skipped).

mod legacy;
mod local;

use std::{collections::BTreeMap, ops::Range, sync::Arc, time::Duration};

use chronik_cluster::{
    place, Command, CommandResult, MetaNode, MetadataState, NodeConfig, PlacementError, ProposeError,
    StartError,
};
use chronik_wal::{TopicPartition, WalManager};
use tokio::net::TcpListener;
use tracing::{info, warn};
use uuid::Uuid;

#[cfg(any(test, feature = "testkit"))]
pub use legacy::write_old_log;
pub use legacy::{LegacyError, MetadataRecord, METADATA_TOPIC};
pub use local::{Reconciled, TopicIdsError};

use crate::topic_config::{self, ConfigError};

/// Topic names clients may not use.
pub const RESERVED_PREFIX: &str = "__chronik";
/// Upper bound on partitions per topic (bounds the work one CreateTopics can ask for).
pub const MAX_PARTITIONS: i32 = 10_000;
/// Producer ids reserved per metadata-log entry.
const PRODUCER_ID_BLOCK: i64 = 1000;
/// The replication factor topics get at most until partitions are replicated: a second replica that
/// holds none of the leader's records must never be made leader.
pub const MAX_REPLICATION_FACTOR: usize = 1;
/// How long a change waits for a controller leader to take it.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one attempt to register at start waits for a quorum before it tries again (and looks whether
/// a voter refused this node as one of another cluster).
const REGISTER_ATTEMPT: Duration = Duration::from_secs(2);

/// What the broker knows of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: Arc<str>,
    pub topic_id: Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// Where one partition is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `None`: no in-sync replica is available.
    pub leader: Option<u64>,
    pub leader_epoch: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    #[error("unknown topic {0:?}")]
    Unknown(String),
    #[error("invalid topic name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("invalid partition count {0} (must be 1..={MAX_PARTITIONS})")]
    InvalidPartitions(i32),
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    /// Creating `requested` partitions would take the broker past its partition limit.
    #[error(
        "the broker holds {current} partitions (internal ones included) and may hold at most {limit} \
         (max-partitions): {requested} more do not fit"
    )]
    PartitionLimit {
        limit: usize,
        current: usize,
        requested: usize,
    },
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error(
        "replication factor {0}: partitions have at most {MAX_REPLICATION_FACTOR} replica until replicated \
         partitions are supported"
    )]
    ReplicationUnsupported(i32),
    /// The controller quorum did not take the change (no leader, timeout).
    #[error("the controller did not take the change: {0}")]
    Controller(#[from] ProposeError),
    /// The metadata state machine refused the change (it raced with another).
    #[error("the controller refused the change: {0}")]
    Refused(String),
    #[error(transparent)]
    Wal(#[from] chronik_wal::Error),
    /// This broker could not make its partitions of the topic.
    #[error("partition {partition} of {topic} could not be made on this broker: {why}")]
    Local {
        topic: String,
        partition: i32,
        why: String,
    },
}

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    TopicIds(#[from] TopicIdsError),
    #[error("reading the metadata log of the previous release: {0}")]
    Legacy(#[from] LegacyError),
    #[error("taking over the metadata log of the previous release: {0}")]
    Migration(ProposeError),
    #[error(
        "this data directory belongs to cluster {ours}, the controller quorum to cluster {theirs}: a node \
         joins only the cluster its data was written in"
    )]
    OtherCluster { ours: String, theirs: String },
    #[error("removing the migrated metadata log: {0}")]
    Wal(#[from] chronik_wal::Error),
    #[error(
        "this data directory was written by the release before the cluster: only the voter with the \
         lowest id takes such a directory over (start it as that node, or alone)"
    )]
    LegacyNotBootstrap,
}

/// How this broker takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node: NodeConfig,
    /// Replicas of topics created without a replication factor; 0: min(3, live brokers).
    pub default_replication_factor: usize,
}

impl ClusterSettings {
    /// Node 0 as the only voter (no controller listener is opened), clients told `kafka_address`.
    pub fn alone(kafka_address: &str) -> Self {
        let voters = [(0, "127.0.0.1:9093".to_string())].into();
        Self {
            node: NodeConfig::new(0, voters, kafka_address),
            default_replication_factor: 0,
        }
    }
}

/// Checks a client-supplied topic name against Kafka's rules and our reserved prefix.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    let bad = |why| Err(TopicError::InvalidName(name.to_string(), why));
    if name.is_empty() || name.len() > 249 {
        return bad("must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with(RESERVED_PREFIX) {
        return bad("the __chronik prefix is reserved");
    }
    Ok(())
}

/// The registry: the metadata node and this broker's partitions.
pub struct Registry {
    node: MetaNode,
    local: Arc<local::Local>,
    max_partitions: usize,
    default_replication_factor: usize,
    /// Serialises this node's changes, so that admission and read-modify-write of configs see each other.
    changes: tokio::sync::Mutex<()>,
    /// The rest of the block of producer ids this node reserved last.
    producer_ids: tokio::sync::Mutex<Range<i64>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("node", &self.node.id())
            .finish_non_exhaustive()
    }
}

fn info_of(name: &str, t: &chronik_cluster::state_machine::TopicInfo) -> TopicInfo {
    TopicInfo {
        name: name.into(),
        topic_id: Uuid::from_bytes(t.topic_id),
        partitions: t.partitions.len() as i32,
        configs: t.configs.clone(),
    }
}

impl Registry {
    /// Starts the metadata node on `wal` (answering the other voters on `controller`, none for a cluster
    /// of one), registers this broker and waits until the metadata here has caught up with the cluster's,
    /// takes over the metadata log of a previous release once, and names a new cluster. Waits as long as
    /// no quorum is reachable (saying so in the log). Creations that would take the WAL past
    /// `max_partitions` partitions are refused from then on.
    pub async fn open(
        wal: Arc<WalManager>,
        settings: ClusterSettings,
        controller: Option<TcpListener>,
        max_partitions: usize,
    ) -> Result<Self, OpenError> {
        let local = Arc::new(local::Local::open(Arc::clone(&wal))?);
        let io = Arc::clone(wal.io());
        let root = wal.root().to_path_buf();
        let node = MetaNode::start(settings.node.clone(), Arc::clone(&wal), io, &root, controller).await?;
        let registry = Self {
            node,
            local,
            max_partitions,
            default_replication_factor: settings.default_replication_factor,
            changes: tokio::sync::Mutex::new(()),
            producer_ids: tokio::sync::Mutex::new(0..0),
        };
        if let Err(e) = registry.join().await {
            registry.node.shutdown().await;
            return Err(e);
        }
        info!(
            node_id = registry.node.id(),
            cluster_id = %registry.cluster_id(),
            max_partitions,
            "metadata caught up; broker registered"
        );
        Ok(registry)
    }

    /// Registers (catching up with the cluster), takes over a previous release's metadata log and names
    /// a new cluster: the last two on the bootstrap voter only, so that a new name can never race the
    /// old one a migration brings.
    async fn join(&self) -> Result<(), OpenError> {
        let legacy = legacy::old_log(self.local.wal()).is_some();
        if legacy && !self.node.is_bootstrap_voter() {
            return Err(OpenError::LegacyNotBootstrap);
        }
        // A majority of the other voters saying they are another cluster: this node's data is not theirs.
        let others = self.node.voter_count().saturating_sub(1);
        let refusals_needed = others / 2 + 1;
        for attempt in 1.. {
            match self.node.register(REGISTER_ATTEMPT).await {
                Ok(()) => break,
                Err(e) => {
                    let refused = self.node.refused_by();
                    if others > 0 && refused.len() >= refusals_needed {
                        return Err(OpenError::OtherCluster {
                            ours: refused[0].ours.clone(),
                            theirs: refused[0].theirs.clone(),
                        });
                    }
                    if attempt % 5 == 0 {
                        warn!(error = %e, voters = self.node.voter_count(),
                            "waiting for a controller quorum to register with");
                    }
                }
            }
        }
        if !self.node.is_bootstrap_voter() {
            // The bootstrap voter names the cluster once it has registered; wait for that.
            let mut changes = self.node.changes();
            while self.node.read(|s| s.cluster_id.is_none()) {
                if changes.changed().await.is_err() {
                    break;
                }
            }
            return Ok(());
        }
        self.migrate().await?;
        if self.node.read(|s| s.cluster_id.is_none()) {
            let cluster_id = Uuid::new_v4().simple().to_string();
            self.submit(Command::SetClusterId { cluster_id })
                .await
                .map_err(OpenError::Migration)?;
        }
        Ok(())
    }

    /// Takes over the metadata log a previous release left in this data directory, then deletes it.
    async fn migrate(&self) -> Result<(), OpenError> {
        let wal = Arc::clone(self.local.wal());
        let Some(log) = legacy::old_log(&wal) else {
            return Ok(());
        };
        let me = self.node.id();
        let commands = crate::broker::blocking(move || legacy::migration_commands(&log, me))
            .await
            .map_err(|e| OpenError::Migration(ProposeError::Raft(e.to_string())))??;
        info!(
            commands = commands.len(),
            "taking over the metadata log of the previous release"
        );
        for command in commands {
            let result = self
                .node
                .submit(command.clone(), SUBMIT_TIMEOUT)
                .await
                .map_err(OpenError::Migration)?;
            if let (Command::SetClusterId { cluster_id }, CommandResult::Refused(_)) = (&command, &result) {
                return Err(OpenError::OtherCluster {
                    ours: cluster_id.clone(),
                    theirs: self.cluster_id(),
                });
            }
        }
        crate::broker::blocking(move || wal.delete_partition(&TopicPartition::new(METADATA_TOPIC, 0)))
            .await
            .map_err(|e| OpenError::Migration(ProposeError::Raft(e.to_string())))??;
        info!("metadata log of the previous release taken over and removed");
        Ok(())
    }

    pub fn node(&self) -> &MetaNode {
        &self.node
    }

    /// This broker's id.
    pub fn node_id(&self) -> u64 {
        self.node.id()
    }

    /// Runs `f` on the metadata as applied here (keep it short: it holds the state machine's lock).
    pub fn read<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        self.node.read(f)
    }

    /// Makes this broker's WAL hold the partitions the metadata assigns it (and no others). Blocking.
    pub fn reconcile(&self) -> Reconciled {
        let me = self.node.id();
        self.local
            .reconcile(|| self.node.read(|s| local::assigned_to(s, me)))
    }

    /// The partitions of `topic` the metadata assigns this broker.
    pub fn assigned_here(&self, topic: &str) -> Vec<i32> {
        let me = self.node.id();
        self.node.read(|s| {
            s.topics.get(topic).map_or_else(Vec::new, |t| {
                let here = t
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.replicas.contains(&me));
                here.map(|(i, _)| i as i32).collect()
            })
        })
    }

    pub fn cluster_id(&self) -> String {
        self.node.read(|s| s.cluster_id.clone().unwrap_or_default())
    }

    /// A client-visible topic (internal ones are not).
    pub fn get(&self, name: &str) -> Option<TopicInfo> {
        if name.starts_with(RESERVED_PREFIX) {
            return None;
        }
        self.node.read(|s| s.topics.get(name).map(|t| info_of(name, t)))
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<TopicInfo> {
        let id = id.into_bytes();
        self.node.read(|s| {
            s.topics
                .iter()
                .find(|(name, t)| t.topic_id == id && !name.starts_with(RESERVED_PREFIX))
                .map(|(name, t)| info_of(name, t))
        })
    }

    /// All client-visible topics, by name.
    pub fn all(&self) -> Vec<TopicInfo> {
        self.node.read(|s| {
            s.topics
                .iter()
                .filter(|(name, _)| !name.starts_with(RESERVED_PREFIX))
                .map(|(name, t)| info_of(name, t))
                .collect()
        })
    }

    /// The partition count of internal topic `name`, if it exists.
    pub fn internal_partitions(&self, name: &str) -> Option<i32> {
        self.node
            .read(|s| s.topics.get(name).map(|t| t.partitions.len() as i32))
    }

    /// The partitions of `topic` this broker leads.
    pub fn led_partitions(&self, topic: &str) -> std::collections::BTreeSet<i32> {
        let me = Some(self.node.id());
        self.node.read(|s| {
            s.topics.get(topic).map_or_else(Default::default, |t| {
                let led = t.partitions.iter().enumerate().filter(|(_, p)| p.leader == me);
                led.map(|(i, _)| i as i32).collect()
            })
        })
    }

    /// Creates internal topic `name` with `partitions` partitions placed over the live brokers, unless it
    /// exists (then, or if another broker created it meanwhile, `Ok`).
    pub async fn create_internal(&self, name: &str, partitions: i32) -> Result<(), TopicError> {
        debug_assert!(name.starts_with(RESERVED_PREFIX));
        let _serial = self.changes.lock().await;
        if self.internal_partitions(name).is_some() {
            return Ok(());
        }
        let factor = self.replication_factor(-1)?;
        let replicas = self.node.read(|s| place(s, partitions.max(1) as usize, factor))?;
        let command = Command::CreateTopic {
            name: name.to_string(),
            topic_id: Uuid::new_v4().into_bytes(),
            replicas,
            configs: BTreeMap::new(),
        };
        match self.submit(command).await? {
            CommandResult::Refused(_) if self.internal_partitions(name).is_some() => Ok(()),
            CommandResult::Refused(why) => Err(TopicError::Refused(why)),
            _ => {
                info!(topic = name, partitions, "internal topic created");
                Ok(())
            }
        }
    }

    /// Where partition `partition` of `topic` is served from; `None` if there is no such partition.
    pub fn route(&self, topic: &str, partition: i32) -> Option<Route> {
        let index = usize::try_from(partition).ok()?;
        self.node.read(|s| {
            let p = s.topics.get(topic)?.partitions.get(index)?;
            Some(Route {
                leader: p.leader,
                leader_epoch: p.leader_epoch,
            })
        })
    }

    /// The partitions this broker leads.
    pub fn leading(&self) -> std::collections::BTreeSet<(String, i32)> {
        let me = Some(self.node.id());
        self.node.read(|s| {
            s.topics
                .iter()
                .flat_map(|(name, t)| {
                    let led = t.partitions.iter().enumerate().filter(|(_, p)| p.leader == me);
                    led.map(|(i, _)| (name.clone(), i as i32))
                })
                .collect()
        })
    }

    /// The replication factor of `topic` (its first partition's replica count).
    pub fn replication_factor_of(&self, topic: &str) -> Option<i16> {
        self.node.read(|s| {
            let first = s.topics.get(topic)?.partitions.first()?;
            i16::try_from(first.replicas.len()).ok()
        })
    }

    /// Proposes `command` through the controller leader; a refusal is an error.
    async fn submit(&self, command: Command) -> Result<CommandResult, ProposeError> {
        self.node.submit(command, SUBMIT_TIMEOUT).await
    }

    async fn submit_change(&self, command: Command) -> Result<CommandResult, TopicError> {
        match self.submit(command).await? {
            CommandResult::Refused(why) => Err(TopicError::Refused(why)),
            done => Ok(done),
        }
    }

    /// The replication factor a topic gets: `asked` (-1: the default), checked.
    fn replication_factor(&self, asked: i32) -> Result<usize, TopicError> {
        let factor = match asked {
            -1 => match self.default_replication_factor {
                0 => {
                    let live = self
                        .node
                        .read(|s| s.brokers.keys().filter(|b| s.is_live(**b)).count());
                    live.clamp(1, 3).min(MAX_REPLICATION_FACTOR)
                }
                n => n,
            },
            n if n < 1 => return Err(PlacementError::BadReplicationFactor(0).into()),
            n => n as usize,
        };
        if factor > MAX_REPLICATION_FACTOR {
            return Err(TopicError::ReplicationUnsupported(factor as i32));
        }
        Ok(factor)
    }

    /// Creates a topic (committed and applied here once this returns; its partitions on this broker are
    /// the caller's to reconcile); `validate_only` checks without creating. `replication_factor` -1 is
    /// the default.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        validate_name(name)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(TopicError::InvalidPartitions(partitions));
        }
        topic_config::validate(&configs)?;
        let factor = self.replication_factor(replication_factor)?;
        let _serial = self.changes.lock().await;
        if self.get(name).is_some() {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        let replicas = self.node.read(|s| place(s, partitions as usize, factor))?;
        self.admit(&replicas)?;
        let info = TopicInfo {
            name: name.into(),
            topic_id: Uuid::new_v4(),
            partitions,
            configs,
        };
        if validate_only {
            return Ok(info);
        }
        let command = Command::CreateTopic {
            name: name.to_string(),
            topic_id: info.topic_id.into_bytes(),
            replicas,
            configs: info.configs.clone(),
        };
        match self.submit(command).await? {
            // A retry of this very proposal after its answer was lost finds the topic it made.
            CommandResult::Refused(_) if self.get(name).map(|t| t.topic_id) == Some(info.topic_id) => {
                Ok(info)
            }
            CommandResult::Refused(_) if self.get(name).is_some() => {
                Err(TopicError::AlreadyExists(name.to_string()))
            }
            CommandResult::Refused(why) => Err(TopicError::Refused(why)),
            _ => {
                info!(
                    topic = name,
                    partitions,
                    replication_factor = factor,
                    "topic created"
                );
                Ok(info)
            }
        }
    }

    /// Raises a topic's partition count (Kafka never lowers it).
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: i32,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        let _serial = self.changes.lock().await;
        let (info, factor) = self
            .node
            .read(|s| {
                let t = s.topics.get(name)?;
                let factor = t.partitions.first().map_or(1, |p| p.replicas.len());
                Some((info_of(name, t), factor))
            })
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        if partitions <= info.partitions || partitions > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(partitions));
        }
        let added = (partitions - info.partitions) as usize;
        let replicas = self.node.read(|s| place(s, added, factor))?;
        self.admit(&replicas)?;
        if validate_only {
            return Ok(TopicInfo { partitions, ..info });
        }
        let command = Command::AddPartitions {
            name: name.to_string(),
            replicas,
            from: u32::try_from(info.partitions).ok(),
        };
        match self.submit(command).await? {
            // A retry of this very proposal after its answer was lost finds the count it set.
            CommandResult::Refused(_) if self.get(name).map(|t| t.partitions) == Some(partitions) => {}
            CommandResult::Refused(why) => return Err(TopicError::Refused(why)),
            _ => {}
        }
        info!(topic = name, partitions, "partitions added");
        Ok(TopicInfo { partitions, ..info })
    }

    /// Replaces a topic's configs with what `change` makes of the current ones; `validate_only` checks
    /// without changing anything. Changes through this node are serialised, so two concurrent
    /// incremental changes here cannot lose each other's updates.
    pub async fn update_configs(
        &self,
        name: &str,
        change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigError>,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        let _serial = self.changes.lock().await;
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let configs = change(&info.configs)?;
        topic_config::validate_changes(&info.configs, &configs)?;
        if validate_only {
            return Ok(TopicInfo { configs, ..info });
        }
        self.submit_change(Command::SetConfigs {
            name: name.to_string(),
            configs: configs.clone(),
        })
        .await?;
        info!(topic = name, configs = ?configs, "topic configs changed");
        Ok(TopicInfo { configs, ..info })
    }

    /// Deletes a topic (its partitions go at the next reconciliation of each broker holding them).
    pub async fn delete(&self, name: &str) -> Result<TopicInfo, TopicError> {
        let _serial = self.changes.lock().await;
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        match self
            .submit(Command::DeleteTopic {
                name: name.to_string(),
            })
            .await?
        {
            CommandResult::Refused(_) if self.get(name).is_none() => {
                Err(TopicError::Unknown(name.to_string()))
            }
            CommandResult::Refused(why) => Err(TopicError::Refused(why)),
            _ => {
                info!(topic = name, "topic deleted");
                Ok(info)
            }
        }
    }

    /// A producer id never handed out before, in this cluster, even across restarts.
    pub async fn allocate_producer_id(&self) -> Result<i64, TopicError> {
        let mut block = self.producer_ids.lock().await;
        if block.is_empty() {
            match self
                .submit_change(Command::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })
                .await?
            {
                CommandResult::ProducerIds { start, end } => *block = start..end,
                other => return Err(TopicError::Refused(format!("unexpected answer {other:?}"))),
            }
        }
        let id = block.start;
        block.start += 1;
        Ok(id)
    }

    /// Refuses `replicas` if the partitions they put on this broker would take it past `max_partitions`.
    /// Called under the `changes` lock, on the metadata (not the disk), so that concurrent creations
    /// through this node see each other.
    fn admit(&self, replicas: &[Vec<u64>]) -> Result<(), TopicError> {
        let me = self.node.id();
        let requested = replicas.iter().filter(|r| r.contains(&me)).count();
        // What the metadata assigns here, whether made on disk yet or not (a creation answered a moment
        // ago may not be), plus the internal partitions on disk.
        let internal = self
            .local
            .wal()
            .partitions()
            .iter()
            .filter(|tp| tp.topic.starts_with(RESERVED_PREFIX))
            .count();
        let assigned: usize = self.node.read(|s| {
            s.topics
                .iter()
                .filter(|(name, _)| !name.starts_with(RESERVED_PREFIX))
                .map(|(_, t)| t.partitions.iter().filter(|p| p.replicas.contains(&me)).count())
                .sum()
        });
        let current = internal + assigned;
        if current.saturating_add(requested) > self.max_partitions {
            return Err(TopicError::PartitionLimit {
                limit: self.max_partitions,
                current,
                requested,
            });
        }
        Ok(())
    }

    /// Stops the metadata node.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
