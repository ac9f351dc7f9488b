//! The broker's metadata registry: the cluster id, the topics (id, partition count, configs) and the
//! blocks of producer ids handed out. It is persisted through the WAL itself: every change is a JSON
//! record appended (and fdatasynced) to the internal partition `__chronik_metadata-0` before it takes
//! effect, and the registry is rebuilt on start by replaying that log.
//!
//! Order of effects, so that a crash at any point recovers to a consistent state:
//! - create: append the record, then create the WAL partitions. Recovery creates partitions a crash left
//!   missing.
//! - delete: append the record, then delete the WAL partitions. Recovery deletes partitions of topics the
//!   log says are gone.

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
    /// Serialises changes so the log order is the order they take effect.
    changes: Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("topics", &self.state.read().by_name.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Replays the metadata log and reconciles the WAL's partitions with it.
    pub fn open(wal: Arc<WalManager>) -> Result<Self, TopicError> {
        let log = wal.get_or_create_partition(&TopicPartition::new(METADATA_TOPIC, 0))?;
        let mut state = State::default();
        let mut next = log.log_start_offset();
        loop {
            let batches = log.read(next, 4 << 20)?;
            let Some(last) = batches.last() else { break };
            next = last.next_offset();
            for b in &batches {
                state.apply(serde_json::from_slice(&b.payload)?);
            }
        }
        // Ids of the last reserved block may have been handed out before a crash: start after it.
        state.next_producer_id = state.producer_ids_end;
        let topics = Registry {
            wal,
            log,
            state: RwLock::new(state),
            changes: Mutex::new(()),
        };
        if topics.state.read().cluster_id.is_empty() {
            topics.append(&MetadataRecord::Cluster {
                cluster_id: Uuid::new_v4().simple().to_string(),
            })?;
        }
        topics.reconcile()?;
        Ok(topics)
    }

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
                if self.wal.partition(&tp).is_none() {
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
        if validate_only {
            return Ok(info);
        }
        self.append(&MetadataRecord::CreateTopic {
            name: name.to_string(),
            topic_id: info.topic_id,
            partitions,
            configs: info.configs.clone(),
        })?;
        for p in 0..partitions {
            let tp = TopicPartition::new(Arc::clone(&info.name), p);
            if self.wal.partition(&tp).is_none() {
                self.wal.create_partition(&tp)?;
            }
        }
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
        if validate_only {
            return Ok(TopicInfo { partitions, ..info });
        }
        self.append(&MetadataRecord::SetPartitions {
            name: name.to_string(),
            partitions,
        })?;
        for p in info.partitions..partitions {
            let tp = TopicPartition::new(Arc::clone(&info.name), p);
            if self.wal.partition(&tp).is_none() {
                self.wal.create_partition(&tp)?;
            }
        }
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
        for p in 0..info.partitions {
            let tp = TopicPartition::new(Arc::clone(&info.name), p);
            match self.wal.delete_partition(&tp) {
                Ok(()) | Err(chronik_wal::Error::UnknownPartition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        info!(topic = name, "topic deleted");
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_wal::WalConfig;

    fn open(dir: &std::path::Path) -> (Arc<WalManager>, Registry) {
        let wal = Arc::new(WalManager::open(dir, WalConfig::default()).expect("wal"));
        let topics = Registry::open(Arc::clone(&wal)).expect("topics");
        (wal, topics)
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
