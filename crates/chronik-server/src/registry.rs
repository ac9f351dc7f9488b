//! The broker's metadata registry: the cluster id, the topics (id, partition count, configs) and the
//! blocks of producer ids handed out. It is persisted through the WAL itself: every change is a JSON
//! record appended (and fdatasynced) to the internal partition `__chronik_metadata-0` before it takes
//! effect, and the registry is rebuilt on start by replaying that log.
//!
//! Invariants:
//! - A topic is in the registry only once all its partitions exist in the WAL: a client never sees a
//!   topic, or a partition count, that the disk does not hold.
//! - The WAL holds at most `max_partitions` partitions (internal ones included) through this registry:
//!   creations are admitted, or refused whole, before anything is made, under the `changes` lock, so
//!   concurrent creations cannot exceed it together. Start-up never refuses what is already on disk.
//!
//! Order of effects, so that a failure or a crash at any point leaves a consistent state:
//! - create (and add partitions): create the WAL partitions, then append the record. A failure before the
//!   record is durable deletes the partitions just made (the WAL removes the staging directory of the one
//!   that failed), so nothing is left; a crash leaves partitions no record claims, which [`Registry::open`]
//!   deletes. A record whose append failed may still be durable: `open` then creates the partitions it
//!   names that are missing (empty: nothing was acknowledged in them).
//! - delete: append the record, then delete the WAL partitions. A failure or crash half-way leaves
//!   partitions no record claims: `open` deletes them, and a topic created again under the same name
//!   before that deletes them first, so it never sees the old data.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use chronik_wal::{Batch, Durability, PartitionWal, TopicPartition, WalManager};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    clock::now_ms,
    topic_config::{self, ConfigError},
};

/// The internal partition holding the registry's log. Hidden from clients.
pub const METADATA_TOPIC: &str = "__chronik_metadata";
/// Topic names clients may not use.
pub const RESERVED_PREFIX: &str = "__chronik";
/// Upper bound on partitions per topic (bounds the work one CreateTopics can ask for).
pub const MAX_PARTITIONS: i32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum MetadataRecord {
    Cluster {
        cluster_id: String,
    },
    CreateTopic {
        name: String,
        topic_id: Uuid,
        partitions: i32,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    SetPartitions {
        name: String,
        partitions: i32,
    },
    /// Replaces a topic's configs.
    SetConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Producer ids below `end` may have been handed out; a restarted broker continues from `end`.
    ProducerIds {
        end: i64,
    },
}

/// What the broker knows of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: Arc<str>,
    pub topic_id: Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
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
    Wal(#[from] chronik_wal::Error),
    #[error("metadata log record could not be encoded or decoded: {0}")]
    Codec(#[from] serde_json::Error),
}

#[derive(Debug, Default)]
struct State {
    by_name: BTreeMap<String, TopicInfo>,
    by_id: HashMap<Uuid, String>,
    cluster_id: String,
    /// Next producer id to hand out, and the end of the block reserved in the log.
    next_producer_id: i64,
    producer_ids_end: i64,
}

/// Producer ids reserved per metadata-log record.
const PRODUCER_ID_BLOCK: i64 = 1000;

impl State {
    fn apply(&mut self, record: MetadataRecord) {
        match record {
            MetadataRecord::Cluster { cluster_id } => self.cluster_id = cluster_id,
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                partitions,
                configs,
            } => {
                self.by_id.insert(topic_id, name.clone());
                let info = TopicInfo {
                    name: name.as_str().into(),
                    topic_id,
                    partitions,
                    configs,
                };
                self.by_name.insert(name, info);
            }
            MetadataRecord::DeleteTopic { name } => {
                if let Some(info) = self.by_name.remove(&name) {
                    self.by_id.remove(&info.topic_id);
                }
            }
            MetadataRecord::SetPartitions { name, partitions } => {
                if let Some(info) = self.by_name.get_mut(&name) {
                    info.partitions = partitions;
                }
            }
            MetadataRecord::SetConfigs { name, configs } => {
                if let Some(info) = self.by_name.get_mut(&name) {
                    info.configs = configs;
                }
            }
            MetadataRecord::ProducerIds { end } => {
                self.next_producer_id = self.producer_ids_end;
                self.producer_ids_end = end;
            }
        }
    }
}

/// The metadata log of a data directory written before the cluster (`__chronik_metadata-0`), as the
/// commands that give the replicated metadata the same cluster id, topics (with their ids, partition
/// counts and configs) and producer-id blocks, every partition on `node_id`: what a node takes over
/// once, when it first starts on such a directory. Empty if there is no such log.
pub fn migration_commands(
    wal: &WalManager,
    node_id: u64,
) -> Result<Vec<chronik_cluster::Command>, TopicError> {
    use chronik_cluster::Command;
    let Some(log) = wal.partition(&TopicPartition::new(METADATA_TOPIC, 0)) else {
        return Ok(Vec::new());
    };
    // Replayed alongside, for the counts a record changes from.
    let mut state = State::default();
    let mut commands = Vec::new();
    replay(&log, |record| {
        let on_this_node = |n: i32| vec![vec![node_id]; n.max(0) as usize];
        commands.push(match &record {
            MetadataRecord::Cluster { cluster_id } => Command::SetClusterId {
                cluster_id: cluster_id.clone(),
            },
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                partitions,
                configs,
            } => Command::CreateTopic {
                name: name.clone(),
                topic_id: topic_id.into_bytes(),
                replicas: on_this_node(*partitions),
                configs: configs.clone(),
            },
            MetadataRecord::DeleteTopic { name } => Command::DeleteTopic { name: name.clone() },
            MetadataRecord::SetPartitions { name, partitions } => {
                let had = state.by_name.get(name).map_or(0, |t| t.partitions);
                Command::AddPartitions {
                    name: name.clone(),
                    replicas: on_this_node(partitions - had),
                }
            }
            MetadataRecord::SetConfigs { name, configs } => Command::SetConfigs {
                name: name.clone(),
                configs: configs.clone(),
            },
            MetadataRecord::ProducerIds { end } => Command::AllocateProducerIds {
                count: end - state.producer_ids_end,
            },
        });
        state.apply(record);
        Ok(())
    })?;
    Ok(commands)
}

/// Calls `f` with each record of the metadata log `log`, in order.
fn replay(
    log: &PartitionWal,
    mut f: impl FnMut(MetadataRecord) -> Result<(), TopicError>,
) -> Result<(), TopicError> {
    let mut next = log.log_start_offset();
    loop {
        let batches = log.read(next, 4 << 20)?;
        let Some(last) = batches.last() else {
            return Ok(());
        };
        next = last.next_offset();
        for b in &batches {
            f(serde_json::from_slice(&b.payload)?)?;
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

/// The registry. Its methods do blocking I/O (appends with fdatasync): call them off the async runtime.
pub struct Registry {
    wal: Arc<WalManager>,
    log: Arc<PartitionWal>,
    state: RwLock<State>,
    /// Serialises changes so the log order is the order they take effect, and so that the partition
    /// limit is checked and acted on as one step.
    changes: Mutex<()>,
    /// Partitions the WAL may hold at most (internal ones included); creations beyond it are refused.
    max_partitions: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("topics", &self.state.read().by_name.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Replays the metadata log and reconciles the WAL's partitions with it. Creations that would take the
    /// WAL past `max_partitions` partitions are refused from then on.
    pub fn open(wal: Arc<WalManager>, max_partitions: usize) -> Result<Self, TopicError> {
        let log = wal.get_or_create_partition(&TopicPartition::new(METADATA_TOPIC, 0))?;
        let mut state = State::default();
        replay(&log, |record| {
            state.apply(record);
            Ok(())
        })?;
        // Ids of the last reserved block may have been handed out before a crash: start after it.
        state.next_producer_id = state.producer_ids_end;
        let topics = Registry {
            wal,
            log,
            state: RwLock::new(state),
            changes: Mutex::new(()),
            max_partitions,
        };
        if topics.state.read().cluster_id.is_empty() {
            topics.append(&MetadataRecord::Cluster {
                cluster_id: Uuid::new_v4().simple().to_string(),
            })?;
        }
        topics.reconcile()?;
        info!(
            max_partitions = topics.max_partitions,
            partitions = topics.wal.partition_count(),
            "partition limit"
        );
        Ok(topics)
    }

    /// Deletes partitions no record claims (a creation a crash interrupted before its record, a deletion
    /// interrupted after it) and creates the missing partitions of a record whose append was reported
    /// failed yet is durable.
    fn reconcile(&self) -> Result<(), TopicError> {
        let state = self.state.read();
        for tp in self.wal.partitions() {
            if tp.topic.starts_with(RESERVED_PREFIX) {
                continue;
            }
            let wanted = state
                .by_name
                .get(&*tp.topic)
                .is_some_and(|t| tp.partition < t.partitions);
            if !wanted {
                warn!(topic = %tp.topic, partition = tp.partition, "removing partition of a deleted topic");
                self.wal.delete_partition(&tp)?;
            }
        }
        for t in state.by_name.values() {
            for p in 0..t.partitions {
                let tp = TopicPartition::new(Arc::clone(&t.name), p);
                // An offline partition is there, on disk: not missing, and never recreated over its data.
                if self.wal.partition(&tp).is_none() && self.wal.offline_cause(&tp).is_none() {
                    info!(topic = %tp.topic, partition = p, "creating partition the metadata log names");
                    self.wal.create_partition(&tp)?;
                }
            }
            self.apply_rotation(t)?;
            self.publish_high_watermarks(t, 0);
        }
        Ok(())
    }

    /// Sets the high-watermark gauge of the topic's partitions from `from` on, so that a partition is in
    /// the metrics from the moment it exists (or the broker starts), not from its first append.
    fn publish_high_watermarks(&self, info: &TopicInfo, from: i32) {
        for p in from..info.partitions {
            if let Some(wal) = self
                .wal
                .partition(&TopicPartition::new(Arc::clone(&info.name), p))
            {
                crate::telemetry::high_watermark(&info.name, p, wal.high_watermark());
            }
        }
    }

    /// Gives each of a topic's WAL partitions the topic's segment size and age (they live in memory only:
    /// set again on start and on any change; a reopened partition keeps them).
    pub fn apply_rotation(&self, info: &TopicInfo) -> Result<(), TopicError> {
        let rotation = topic_config::rotation(&info.configs, self.wal.config().rotation);
        for p in 0..info.partitions {
            if let Some(wal) = self
                .wal
                .partition(&TopicPartition::new(Arc::clone(&info.name), p))
            {
                wal.set_rotation(rotation)?;
            }
        }
        Ok(())
    }

    fn append(&self, record: &MetadataRecord) -> Result<(), TopicError> {
        let payload = Bytes::from(serde_json::to_vec(record)?);
        let now = now_ms();
        self.log
            .append_with(Batch::new(payload, 1, now), Durability::Sync)?;
        self.state.write().apply(record.clone());
        Ok(())
    }

    /// A producer id never handed out before, even across restarts.
    pub fn allocate_producer_id(&self) -> Result<i64, TopicError> {
        let _serial = self.changes.lock();
        let exhausted = {
            let state = self.state.read();
            state.next_producer_id >= state.producer_ids_end
        };
        if exhausted {
            let end = self.state.read().producer_ids_end + PRODUCER_ID_BLOCK;
            self.append(&MetadataRecord::ProducerIds { end })?;
        }
        let mut state = self.state.write();
        state.next_producer_id += 1;
        Ok(state.next_producer_id - 1)
    }

    pub fn cluster_id(&self) -> String {
        self.state.read().cluster_id.clone()
    }

    pub fn get(&self, name: &str) -> Option<TopicInfo> {
        self.state.read().by_name.get(name).cloned()
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<TopicInfo> {
        let state = self.state.read();
        state
            .by_id
            .get(&id)
            .and_then(|name| state.by_name.get(name))
            .cloned()
    }

    /// All client-visible topics, by name.
    pub fn all(&self) -> Vec<TopicInfo> {
        self.state.read().by_name.values().cloned().collect()
    }

    /// Creates a topic durably; `validate_only` checks without creating.
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        validate_name(name)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(TopicError::InvalidPartitions(partitions));
        }
        topic_config::validate(&configs)?;
        let _serial = self.changes.lock();
        if self.get(name).is_some() {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        let info = TopicInfo {
            name: name.into(),
            topic_id: Uuid::new_v4(),
            partitions,
            configs,
        };
        self.admit(partitions)?;
        if validate_only {
            return Ok(info);
        }
        self.create_partitions(&info.name, 0..partitions, || {
            self.append(&MetadataRecord::CreateTopic {
                name: name.to_string(),
                topic_id: info.topic_id,
                partitions,
                configs: info.configs.clone(),
            })
        })?;
        self.apply_rotation(&info)?;
        self.publish_high_watermarks(&info, 0);
        info!(topic = name, partitions, "topic created");
        Ok(info)
    }

    /// Raises a topic's partition count (Kafka never lowers it).
    pub fn add_partitions(
        &self,
        name: &str,
        partitions: i32,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        let _serial = self.changes.lock();
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        if partitions <= info.partitions || partitions > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(partitions));
        }
        self.admit(partitions - info.partitions)?;
        if validate_only {
            return Ok(TopicInfo { partitions, ..info });
        }
        self.create_partitions(&info.name, info.partitions..partitions, || {
            self.append(&MetadataRecord::SetPartitions {
                name: name.to_string(),
                partitions,
            })
        })?;
        let added_from = info.partitions;
        let info = TopicInfo { partitions, ..info };
        self.apply_rotation(&info)?;
        self.publish_high_watermarks(&info, added_from);
        info!(topic = name, partitions, "partitions added");
        Ok(info)
    }

    /// Replaces a topic's configs durably with what `change` makes of the current ones; `validate_only`
    /// checks without changing anything. `change` runs under the registry's lock, so two concurrent
    /// incremental changes cannot lose each other's updates.
    pub fn update_configs(
        &self,
        name: &str,
        change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigError>,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        let _serial = self.changes.lock();
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let configs = change(&info.configs)?;
        topic_config::validate_changes(&info.configs, &configs)?;
        if validate_only {
            return Ok(TopicInfo { configs, ..info });
        }
        self.append(&MetadataRecord::SetConfigs {
            name: name.to_string(),
            configs: configs.clone(),
        })?;
        let info = TopicInfo { configs, ..info };
        self.apply_rotation(&info)?;
        info!(topic = name, configs = ?info.configs, "topic configs changed");
        Ok(info)
    }

    /// Deletes a topic and its data durably.
    pub fn delete(&self, name: &str) -> Result<TopicInfo, TopicError> {
        let _serial = self.changes.lock();
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        self.append(&MetadataRecord::DeleteTopic {
            name: name.to_string(),
        })?;
        // The topic is gone once the record is durable; partitions left by a failure here are deleted by
        // the next start, or by a creation of the same name.
        let mut first_error = None;
        for p in 0..info.partitions {
            let tp = TopicPartition::new(Arc::clone(&info.name), p);
            match self.wal.delete_partition(&tp) {
                Ok(()) | Err(chronik_wal::Error::UnknownPartition(_)) => {}
                Err(e) => {
                    warn!(topic = name, partition = p, error = %e, "deleting a partition of a deleted topic failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        info!(topic = name, "topic deleted");
        Ok(info)
    }

    /// Refuses `requested` more partitions if the WAL would then hold more than `max_partitions`. Called
    /// under the `changes` lock, so that nothing is created between the check and the creation.
    fn admit(&self, requested: i32) -> Result<(), TopicError> {
        let current = self.wal.partition_count();
        let requested = usize::try_from(requested).unwrap_or(0);
        if current.saturating_add(requested) > self.max_partitions {
            return Err(TopicError::PartitionLimit {
                limit: self.max_partitions,
                current,
                requested,
            });
        }
        Ok(())
    }

    /// Creates the WAL partitions `range` of `topic`, then runs `commit` (the append of the record that
    /// makes them part of the topic). If a creation or `commit` fails, the partitions made here are
    /// deleted again, so that a failure leaves nothing behind.
    fn create_partitions(
        &self,
        topic: &Arc<str>,
        range: std::ops::Range<i32>,
        commit: impl FnOnce() -> Result<(), TopicError>,
    ) -> Result<(), TopicError> {
        let mut made = Vec::with_capacity(range.len());
        let mut result = Ok(());
        for p in range {
            let tp = TopicPartition::new(Arc::clone(topic), p);
            match self.create_fresh_partition(&tp) {
                Ok(()) => made.push(tp),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let result = result.and_then(|()| commit());
        if result.is_err() {
            for tp in &made {
                if let Err(e) = self.wal.delete_partition(tp) {
                    warn!(topic = %tp.topic, partition = tp.partition, error = %e,
                        "could not roll back a partition of a failed creation; the next start removes it");
                }
            }
        }
        result
    }

    /// Creates an empty partition. One that exists already belongs to no topic (the caller checked the
    /// registry): it is left by a deletion that failed half-way, and is deleted first so that its data
    /// does not reappear in the new topic.
    fn create_fresh_partition(&self, tp: &TopicPartition) -> Result<(), TopicError> {
        if self.wal.partition(tp).is_some() {
            warn!(topic = %tp.topic, partition = tp.partition,
                "deleting the leftover of a deleted topic before creating the partition again");
            self.wal.delete_partition(tp)?;
        }
        self.wal.create_partition(tp)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{io, path::Path};

    use super::*;
    use chronik_wal::{
        io::{
            fault::{FaultPlan, FaultyIo},
            OpenMode, StdIo,
        },
        WalConfig,
    };

    #[test]
    fn the_metadata_log_migrates_to_commands_that_rebuild_the_same_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, topics) = open(dir.path());
        topics.create("kept", 3, BTreeMap::new(), false).expect("create");
        topics.create("gone", 2, BTreeMap::new(), false).expect("create");
        topics.add_partitions("kept", 5, false).expect("add");
        let retention = BTreeMap::from([("retention.ms".to_string(), "60000".to_string())]);
        topics
            .update_configs("kept", |_| Ok(retention.clone()), false)
            .expect("configs");
        topics.delete("gone").expect("delete");
        let first = topics.allocate_producer_id().expect("producer id");
        let mut migrated = chronik_cluster::MetadataState::default();
        for command in migration_commands(&wal, 7).expect("migration") {
            let result = migrated.apply(&command);
            assert_ne!(
                std::mem::discriminant(&result),
                std::mem::discriminant(&chronik_cluster::CommandResult::Refused(String::new())),
                "{command:?}: {result:?}"
            );
        }
        assert_eq!(migrated.cluster_id.as_deref(), Some(topics.cluster_id().as_str()));
        assert_eq!(migrated.topics.keys().collect::<Vec<_>>(), vec!["kept"]);
        let kept = &migrated.topics["kept"];
        let info = topics.get("kept").expect("kept");
        assert_eq!(kept.topic_id, info.topic_id.into_bytes());
        assert_eq!(kept.partitions.len(), 5);
        assert!(kept.partitions.iter().all(|p| p.replicas == vec![7]));
        assert_eq!(kept.configs, retention);
        // Every id the old registry may have handed out is reserved in the migrated state.
        assert!(
            migrated.producer_ids_end > first,
            "{} <= {first}",
            migrated.producer_ids_end
        );
        drop(topics);
        let empty = tempfile::tempdir().expect("tempdir");
        let fresh = WalManager::open(empty.path(), WalConfig::default()).expect("wal");
        assert!(migration_commands(&fresh, 7).expect("migration").is_empty());
    }

    fn open(dir: &std::path::Path) -> (Arc<WalManager>, Registry) {
        let wal = Arc::new(WalManager::open(dir, WalConfig::default()).expect("wal"));
        let topics = Registry::open(Arc::clone(&wal), usize::MAX).expect("topics");
        (wal, topics)
    }

    /// The real file system, except that opening a file in the directory named `failing` fails with
    /// "Too many open files", as it did half-way through the creation of a large topic.
    #[derive(Debug)]
    struct OutOfDescriptorsIn {
        failing: String,
    }

    impl FaultPlan for OutOfDescriptorsIn {
        fn on_open(&self, path: &Path, _mode: OpenMode) -> Option<io::Error> {
            let dir = path.parent().and_then(Path::file_name);
            dir.is_some_and(|d| d.to_str() == Some(self.failing.as_str()))
                .then(|| io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    /// A registry whose WAL cannot open files in the staging directory of `failing` (e.g. `big-5`).
    fn open_failing_in(dir: &Path, failing: &str) -> (Arc<WalManager>, Registry) {
        let plan = Arc::new(OutOfDescriptorsIn {
            failing: format!("{failing}.creating"),
        });
        let io = Arc::new(FaultyIo::new(Arc::new(StdIo), plan));
        let wal = Arc::new(WalManager::open_with_io(dir, WalConfig::default(), io).expect("wal"));
        let topics = Registry::open(Arc::clone(&wal), usize::MAX).expect("topics");
        (wal, topics)
    }

    /// Names of the entries of the WAL's partition directory that belong to `topic`, leftovers included.
    fn dirs_of(dir: &Path, topic: &str) -> Vec<String> {
        let prefix = format!("{topic}-");
        let mut names: Vec<String> = std::fs::read_dir(dir.join("partitions"))
            .expect("list partitions")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creation_failing_half_way_leaves_no_topic_and_no_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (wal, topics) = open_failing_in(dir.path(), "big-5");
            let err = topics
                .create("big", 10, BTreeMap::new(), false)
                .expect_err("partition 5 cannot be created");
            assert!(
                matches!(&err, TopicError::Wal(e) if e.to_string().contains("Too many open files")),
                "{err}"
            );
            assert!(topics.get("big").is_none(), "the topic was not registered");
            assert!(topics.all().is_empty());
            assert_eq!(
                dirs_of(dir.path(), "big"),
                Vec::<String>::new(),
                "nothing left on disk"
            );
            assert!((0..10).all(|p| wal.partition(&TopicPartition::new("big", p)).is_none()));
            assert_eq!(wal.partition_count(), 1, "only the metadata log");
        }
        let (wal, topics) = open(dir.path());
        assert!(topics.get("big").is_none(), "still no topic after a restart");
        assert_eq!(dirs_of(dir.path(), "big"), Vec::<String>::new());
        assert_eq!(wal.partition_count(), 1);
    }

    #[test]
    fn adding_partitions_failing_half_way_leaves_the_count_and_the_disk_as_they_were() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (_wal, topics) = open_failing_in(dir.path(), "grow-5");
            topics.create("grow", 2, BTreeMap::new(), false).expect("create");
            assert!(matches!(
                topics.add_partitions("grow", 8, false),
                Err(TopicError::Wal(_))
            ));
            assert_eq!(topics.get("grow").map(|t| t.partitions), Some(2));
            assert_eq!(dirs_of(dir.path(), "grow"), vec!["grow-0", "grow-1"]);
        }
        let (_wal, topics) = open(dir.path());
        assert_eq!(topics.get("grow").map(|t| t.partitions), Some(2));
        assert_eq!(dirs_of(dir.path(), "grow"), vec!["grow-0", "grow-1"]);
    }

    #[test]
    fn crash_between_partitions_and_record_leaves_nothing_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (wal, _topics) = open(dir.path());
            // What a creation has made when the crash comes before its record is appended.
            for p in 0..3 {
                wal.create_partition(&TopicPartition::new("half", p))
                    .expect("partition");
            }
        }
        let (wal, topics) = open(dir.path());
        assert!(topics.get("half").is_none());
        assert_eq!(dirs_of(dir.path(), "half"), Vec::<String>::new());
        assert_eq!(wal.partition_count(), 1);
    }

    #[test]
    fn deletion_interrupted_after_its_record_is_completed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (_wal, topics) = open(dir.path());
            topics.create("gone", 3, BTreeMap::new(), false).expect("create");
            topics.create("kept", 1, BTreeMap::new(), false).expect("create");
            // The record is durable, the partitions are not deleted yet: the crash.
            topics
                .append(&MetadataRecord::DeleteTopic {
                    name: "gone".to_string(),
                })
                .expect("record");
            assert_eq!(dirs_of(dir.path(), "gone").len(), 3);
        }
        let (wal, topics) = open(dir.path());
        assert!(topics.get("gone").is_none());
        assert_eq!(
            dirs_of(dir.path(), "gone"),
            Vec::<String>::new(),
            "deletion completed"
        );
        assert_eq!(dirs_of(dir.path(), "kept"), vec!["kept-0"]);
        assert_eq!(wal.partition_count(), 2);
    }

    #[test]
    fn a_topic_created_again_after_an_interrupted_deletion_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, topics) = open(dir.path());
        topics.create("again", 1, BTreeMap::new(), false).expect("create");
        let tp = TopicPartition::new("again", 0);
        wal.append(&tp, Batch::new(Bytes::from_static(b"old"), 1, 0))
            .expect("append");
        topics
            .append(&MetadataRecord::DeleteTopic {
                name: "again".to_string(),
            })
            .expect("record");
        topics
            .create("again", 1, BTreeMap::new(), false)
            .expect("create again");
        assert_eq!(wal.high_watermark(&tp).expect("hw"), 0, "the old data is gone");
    }

    #[test]
    fn creations_over_the_partition_limit_are_refused_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
        // The metadata log is one of the five.
        let topics = Registry::open(Arc::clone(&wal), 5).expect("topics");
        topics.create("a", 3, BTreeMap::new(), false).expect("fits");
        let refused = |r: Result<TopicInfo, TopicError>| match r {
            Err(TopicError::PartitionLimit {
                limit: 5,
                current: 4,
                requested: 2,
            }) => {}
            other => panic!("expected the partition limit, got {other:?}"),
        };
        refused(topics.create("b", 2, BTreeMap::new(), false));
        refused(topics.create("b", 2, BTreeMap::new(), true));
        refused(topics.add_partitions("a", 5, false));
        refused(topics.add_partitions("a", 5, true));
        assert!(topics.get("b").is_none());
        assert_eq!(topics.get("a").map(|t| t.partitions), Some(3));
        assert_eq!(dirs_of(dir.path(), "b"), Vec::<String>::new());
        assert_eq!(wal.partition_count(), 4);
        topics
            .create("b", 1, BTreeMap::new(), false)
            .expect("the last one fits");
        let message = topics
            .create("c", 1, BTreeMap::new(), false)
            .expect_err("full")
            .to_string();
        assert!(
            message.contains("at most 5") && message.contains("holds 5"),
            "{message}"
        );
    }

    #[test]
    fn topics_survive_restart_and_deletes_remove_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cluster, id) = {
            let (wal, topics) = open(dir.path());
            let a = topics.create("a", 3, BTreeMap::new(), false).expect("create a");
            topics.create("b", 1, BTreeMap::new(), false).expect("create b");
            assert!(matches!(
                topics.create("a", 1, BTreeMap::new(), false),
                Err(TopicError::AlreadyExists(_))
            ));
            assert!(matches!(
                topics.create("__chronik_x", 1, BTreeMap::new(), false),
                Err(TopicError::InvalidName(..))
            ));
            assert!(matches!(
                topics.create("c", 0, BTreeMap::new(), false),
                Err(TopicError::InvalidPartitions(0))
            ));
            topics.delete("b").expect("delete b");
            assert!(wal.partition(&TopicPartition::new("b", 0)).is_none());
            (topics.cluster_id(), a.topic_id)
        };
        let (wal, topics) = open(dir.path());
        assert_eq!(topics.cluster_id(), cluster, "cluster id is stable");
        assert_eq!(
            topics.all().iter().map(|t| &*t.name).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(topics.get_by_id(id).map(|t| t.partitions), Some(3));
        assert_eq!(
            wal.partitions().len(),
            4,
            "three partitions of a plus the metadata log"
        );
    }

    #[test]
    fn recovery_reconciles_partitions_with_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (wal, topics) = open(dir.path());
            topics.create("kept", 2, BTreeMap::new(), false).expect("create");
            // As if a crash hit between the record and the partitions: one is missing, one is orphaned.
            wal.delete_partition(&TopicPartition::new("kept", 1))
                .expect("delete");
            wal.create_partition(&TopicPartition::new("orphan", 0))
                .expect("orphan");
        }
        let (wal, _topics) = open(dir.path());
        assert!(
            wal.partition(&TopicPartition::new("kept", 1)).is_some(),
            "missing partition recreated"
        );
        assert!(
            wal.partition(&TopicPartition::new("orphan", 0)).is_none(),
            "orphan removed"
        );
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first: Vec<i64> = {
            let (_wal, topics) = open(dir.path());
            (0..3)
                .map(|_| topics.allocate_producer_id().expect("id"))
                .collect()
        };
        assert_eq!(first, vec![0, 1, 2]);
        let (_wal, topics) = open(dir.path());
        let next = topics.allocate_producer_id().expect("id");
        assert!(
            next > 2,
            "ids of the reserved block are skipped after a restart: {next}"
        );
    }

    #[test]
    fn added_partitions_persist_and_counts_never_shrink() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (_wal, topics) = open(dir.path());
            topics.create("grow", 2, BTreeMap::new(), false).expect("create");
            assert!(matches!(
                topics.add_partitions("grow", 2, false),
                Err(TopicError::InvalidPartitions(2))
            ));
            assert_eq!(
                topics
                    .add_partitions("grow", 4, true)
                    .expect("validate")
                    .partitions,
                4
            );
            assert_eq!(
                topics.get("grow").map(|t| t.partitions),
                Some(2),
                "validate_only changes nothing"
            );
            topics.add_partitions("grow", 4, false).expect("grow");
        }
        let (wal, topics) = open(dir.path());
        assert_eq!(topics.get("grow").map(|t| t.partitions), Some(4));
        assert!(wal.partition(&TopicPartition::new("grow", 3)).is_some());
    }
}
