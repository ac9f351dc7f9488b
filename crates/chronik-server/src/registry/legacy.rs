//! The metadata log of data directories written before the cluster: every change was a JSON record
//! appended (with fdatasync) to the internal partition `__chronik_metadata-0`. A node starting on such a
//! directory takes it over once ([`migration_commands`]), then deletes it.

use std::collections::BTreeMap;

use chronik_cluster::Command;
use chronik_wal::{PartitionWal, TopicPartition, WalManager};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The internal partition that held the metadata log before the cluster.
pub const METADATA_TOPIC: &str = "__chronik_metadata";

/// One record of the old metadata log, as the previous release wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetadataRecord {
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
    /// Producer ids below `end` may have been handed out.
    ProducerIds {
        end: i64,
    },
}

/// A topic as the old log leaves it.
#[derive(Debug, Clone)]
struct OldTopic {
    topic_id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

/// What replaying the whole old log leaves.
#[derive(Debug, Default)]
struct OldState {
    cluster_id: Option<String>,
    topics: BTreeMap<String, OldTopic>,
    producer_ids_end: i64,
}

impl OldState {
    fn apply(&mut self, record: MetadataRecord) {
        match record {
            MetadataRecord::Cluster { cluster_id } => self.cluster_id = Some(cluster_id),
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                partitions,
                configs,
            } => {
                let topic = OldTopic {
                    topic_id,
                    partitions,
                    configs,
                };
                self.topics.insert(name, topic);
            }
            MetadataRecord::DeleteTopic { name } => {
                self.topics.remove(&name);
            }
            MetadataRecord::SetPartitions { name, partitions } => {
                if let Some(t) = self.topics.get_mut(&name) {
                    t.partitions = partitions;
                }
            }
            MetadataRecord::SetConfigs { name, configs } => {
                if let Some(t) = self.topics.get_mut(&name) {
                    t.configs = configs;
                }
            }
            MetadataRecord::ProducerIds { end } => self.producer_ids_end = end,
        }
    }
}

/// Why the old log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error(transparent)]
    Wal(#[from] chronik_wal::Error),
    #[error("a record of the old metadata log does not decode: {0}")]
    Codec(#[from] serde_json::Error),
}

/// The old metadata log of `wal`, if it has one.
pub fn old_log(wal: &WalManager) -> Option<std::sync::Arc<PartitionWal>> {
    wal.partition(&TopicPartition::new(METADATA_TOPIC, 0))
}

/// The commands that give the replicated metadata what the old log `log` ends with: its cluster id, its
/// topics (same ids, partition counts and configs, every partition on `node_id`) and every producer id it
/// may have handed out reserved. Describing the end state rather than the history makes a migration that
/// a crash interrupted safe to run again whole: a topic already there is refused unchanged, and reserving
/// producer ids twice only skips some.
pub fn migration_commands(log: &PartitionWal, node_id: u64) -> Result<Vec<Command>, LegacyError> {
    let mut state = OldState::default();
    let mut next = log.log_start_offset();
    loop {
        let batches = log.read(next, 4 << 20)?;
        let Some(last) = batches.last() else {
            break;
        };
        next = last.next_offset();
        for b in &batches {
            state.apply(serde_json::from_slice(&b.payload)?);
        }
    }
    let mut commands = Vec::new();
    if let Some(cluster_id) = state.cluster_id {
        commands.push(Command::SetClusterId { cluster_id });
    }
    for (name, t) in state.topics {
        commands.push(Command::CreateTopic {
            name,
            topic_id: t.topic_id.into_bytes(),
            replicas: vec![vec![node_id]; t.partitions.max(0) as usize],
            configs: t.configs,
        });
    }
    // Its committed offsets are in `__chronik_offsets-0`: they become the one partition of the offsets
    // topic, so every group keeps its offsets (a topic of several would send most groups elsewhere).
    commands.push(Command::CreateTopic {
        name: crate::offsets::OFFSETS_TOPIC.to_string(),
        topic_id: Uuid::new_v4().into_bytes(),
        replicas: vec![vec![node_id]],
        configs: BTreeMap::new(),
    });
    if state.producer_ids_end > 0 {
        commands.push(Command::AllocateProducerIds {
            count: state.producer_ids_end,
        });
    }
    Ok(commands)
}

/// Appends `records` to a fresh old-style metadata log of `wal`, as the previous release did: for tests
/// of the migration.
#[cfg(any(test, feature = "testkit"))]
pub fn write_old_log(wal: &WalManager, records: &[MetadataRecord]) -> Result<(), LegacyError> {
    let log = wal.get_or_create_partition(&TopicPartition::new(METADATA_TOPIC, 0))?;
    for r in records {
        let payload = bytes::Bytes::from(serde_json::to_vec(r)?);
        log.append_with(
            chronik_wal::Batch::new(payload, 1, crate::clock::now_ms()),
            chronik_wal::Durability::Sync,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_cluster::{CommandResult, MetadataState};
    use chronik_wal::WalConfig;

    #[test]
    fn the_old_log_migrates_to_commands_that_rebuild_its_end_state_even_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = WalManager::open(dir.path(), WalConfig::default()).expect("wal");
        let kept = Uuid::new_v4();
        let retention = BTreeMap::from([("retention.ms".to_string(), "60000".to_string())]);
        let create = |name: &str, topic_id, partitions| MetadataRecord::CreateTopic {
            name: name.into(),
            topic_id,
            partitions,
            configs: BTreeMap::new(),
        };
        write_old_log(
            &wal,
            &[
                MetadataRecord::Cluster {
                    cluster_id: "abc".into(),
                },
                create("kept", kept, 3),
                create("gone", Uuid::new_v4(), 2),
                MetadataRecord::SetPartitions {
                    name: "kept".into(),
                    partitions: 5,
                },
                MetadataRecord::SetConfigs {
                    name: "kept".into(),
                    configs: retention.clone(),
                },
                MetadataRecord::DeleteTopic { name: "gone".into() },
                MetadataRecord::ProducerIds { end: 2000 },
            ],
        )
        .expect("old log");
        let commands = migration_commands(&old_log(&wal).expect("log"), 7).expect("migration");
        let mut migrated = MetadataState::default();
        for command in &commands {
            let result = migrated.apply(command);
            assert!(
                !matches!(result, CommandResult::Refused(_)),
                "{command:?}: {result:?}"
            );
        }
        // A migration interrupted half-way runs again whole: the end state is the same.
        let once = migrated.clone();
        for command in &commands {
            migrated.apply(command);
        }
        assert_eq!(migrated.topics, once.topics);
        assert_eq!(migrated.cluster_id.as_deref(), Some("abc"));
        assert_eq!(
            migrated.topics.keys().collect::<Vec<_>>(),
            vec!["__chronik_offsets", "kept"]
        );
        assert_eq!(migrated.topics["__chronik_offsets"].partitions.len(), 1);
        let t = &migrated.topics["kept"];
        assert_eq!(t.topic_id, kept.into_bytes());
        assert_eq!(t.partitions.len(), 5);
        assert!(t.partitions.iter().all(|p| p.replicas == vec![7]));
        assert_eq!(t.configs, retention);
        assert!(migrated.producer_ids_end >= 2000, "{}", migrated.producer_ids_end);
    }
}
