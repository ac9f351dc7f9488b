//! Making this broker's WAL hold what the metadata assigns it: the partitions of every topic whose
//! replica lists name this broker, and no others.
//!
//! Invariants:
//! - A partition directory is deleted only when the metadata applied here no longer assigns it to this
//!   broker, or assigns it to a newer topic of the same name, and only on metadata at least as new as the
//!   cluster's when this broker started (the registry registers, and so catches up, before the first
//!   reconciliation): a node behind on the log never deletes what a topic it has not heard of yet holds.
//! - The topic id each local topic belongs to is in the file `topic-ids` (written atomically, before the
//!   partitions of a new id are created and after those of the old id are deleted): a topic deleted and
//!   created again under the same name while this broker was away starts empty here, never with the old
//!   topic's records. A partition of a name the file does not list (written by a release before the
//!   cluster) is taken to belong to the topic of that name.
//! - Reconciliations run one at a time; each is idempotent, so running one more changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
};

use chronik_cluster::MetadataState;
use chronik_wal::{io::WalIo, RotationConfig, TopicPartition, WalManager};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use super::RESERVED_PREFIX;
use crate::topic_config;

/// The file naming the topic each local topic's partitions belong to.
const TOPIC_IDS_FILE: &str = "topic-ids";
/// Largest `topic-ids` file read back.
const MAX_TOPIC_IDS_BYTES: u64 = 256 << 20;

/// A topic as far as this broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub topic_id: Uuid,
    /// The partitions whose replicas include this broker.
    pub partitions: BTreeSet<i32>,
    pub configs: BTreeMap<String, String>,
}

/// What the metadata assigns `broker`, topic by topic.
pub fn assigned_to(state: &MetadataState, broker: u64) -> BTreeMap<String, Assigned> {
    state
        .topics
        .iter()
        .filter_map(|(name, t)| {
            let partitions: BTreeSet<i32> = t
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.replicas.contains(&broker))
                .map(|(i, _)| i as i32)
                .collect();
            (!partitions.is_empty()).then(|| {
                let assigned = Assigned {
                    topic_id: Uuid::from_bytes(t.topic_id),
                    partitions,
                    configs: t.configs.clone(),
                };
                (name.clone(), assigned)
            })
        })
        .collect()
}

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub created: Vec<TopicPartition>,
    pub deleted: Vec<TopicPartition>,
    /// Partitions that could not be created or deleted, and why (retried by the next reconciliation).
    pub failed: Vec<(TopicPartition, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TopicIds {
    topics: BTreeMap<String, Uuid>,
}

#[derive(Debug, Default)]
struct Held {
    ids: TopicIds,
    /// The rotation each local topic's partitions were last given.
    rotations: HashMap<String, RotationConfig>,
}

/// This broker's side of the metadata: its WAL partitions.
pub struct Local {
    wal: Arc<WalManager>,
    io: Arc<dyn WalIo>,
    ids_path: PathBuf,
    held: Mutex<Held>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}

/// Why the `topic-ids` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TopicIdsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not decode: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Local {
    pub fn open(wal: Arc<WalManager>) -> Result<Self, TopicIdsError> {
        let io = Arc::clone(wal.io());
        let ids_path = wal.root().join(TOPIC_IDS_FILE);
        let io_error = |source| TopicIdsError::Io {
            path: ids_path.clone(),
            source,
        };
        let ids = if io.exists(&ids_path).map_err(io_error)? {
            let bytes = chronik_wal::io::read_file(&*io, &ids_path, MAX_TOPIC_IDS_BYTES).map_err(io_error)?;
            serde_json::from_slice(&bytes).map_err(|source| TopicIdsError::Corrupt {
                path: ids_path.clone(),
                source,
            })?
        } else {
            TopicIds::default()
        };
        Ok(Self {
            wal,
            io,
            ids_path,
            held: Mutex::new(Held {
                ids,
                rotations: HashMap::new(),
            }),
        })
    }

    pub fn wal(&self) -> &Arc<WalManager> {
        &self.wal
    }

    /// Makes the WAL hold the partitions of `wanted()` (see [`assigned_to`]) and no other client
    /// partition. `wanted` is read once this reconciliation holds the lock, so none acts on metadata
    /// older than what one before it acted on (a late pass on old metadata would delete a topic just
    /// created). Blocking.
    pub fn reconcile(&self, wanted: impl FnOnce() -> BTreeMap<String, Assigned>) -> Reconciled {
        let mut held = self.held.lock();
        let wanted = wanted();
        let mut done = Reconciled::default();
        let on_disk = self
            .wal
            .partitions()
            .into_iter()
            .chain(self.wal.offline_partitions().into_iter().map(|o| o.tp))
            .filter(|tp| !tp.topic.starts_with(RESERVED_PREFIX));
        let stale = |tp: &TopicPartition| match wanted.get(&*tp.topic) {
            None => true,
            Some(w) => {
                let older = held
                    .ids
                    .topics
                    .get(&*tp.topic)
                    .is_some_and(|id| *id != w.topic_id);
                older || !w.partitions.contains(&tp.partition)
            }
        };
        let doomed: Vec<TopicPartition> = on_disk.filter(|tp| stale(tp)).collect();
        for tp in doomed {
            warn!(topic = %tp.topic, partition = tp.partition,
                "deleting a partition the metadata no longer assigns to this broker");
            match self.wal.delete_partition(&tp) {
                Ok(()) | Err(chronik_wal::Error::UnknownPartition(_)) => done.deleted.push(tp),
                Err(e) => done.failed.push((tp, e.to_string())),
            }
        }
        // A name whose old partitions are not all gone keeps its old id, and gets no new partition: the
        // file must never say a directory of the old topic belongs to the new one.
        let blocked: BTreeSet<Arc<str>> = done.failed.iter().map(|(tp, _)| Arc::clone(&tp.topic)).collect();
        let ids: BTreeMap<String, Uuid> = wanted
            .iter()
            .map(|(n, w)| match held.ids.topics.get(n) {
                Some(old) if blocked.contains(n.as_str()) => (n.clone(), *old),
                _ => (n.clone(), w.topic_id),
            })
            .collect();
        if ids != held.ids.topics {
            let file = TopicIds { topics: ids };
            match self.write_ids(&file) {
                Ok(()) => held.ids = file,
                Err(e) => {
                    warn!(error = %e, "recording the local topics' ids failed; their new partitions wait")
                }
            }
        }
        for (name, w) in &wanted {
            let topic: Arc<str> = name.as_str().into();
            let recorded = held.ids.topics.get(name) == Some(&w.topic_id);
            for &p in &w.partitions {
                let tp = TopicPartition::new(Arc::clone(&topic), p);
                // An offline partition is there, on disk: not missing, and never recreated over its data.
                if self.wal.partition(&tp).is_some() || self.wal.offline_cause(&tp).is_some() {
                    continue;
                }
                if !recorded {
                    done.failed
                        .push((tp, "its topic's id could not be recorded yet".into()));
                    continue;
                }
                match self.wal.create_partition(&tp) {
                    Ok(_) => done.created.push(tp),
                    Err(e) => done.failed.push((tp, e.to_string())),
                }
            }
            let rotation = topic_config::rotation(&w.configs, self.wal.config().rotation);
            let created_here = done.created.iter().any(|tp| tp.topic == topic);
            if created_here || held.rotations.get(name) != Some(&rotation) {
                for &p in &w.partitions {
                    if let Some(wal) = self.wal.partition(&TopicPartition::new(Arc::clone(&topic), p)) {
                        if let Err(e) = wal.set_rotation(rotation) {
                            warn!(topic = name, partition = p, error = %e, "segment settings refused");
                        }
                    }
                }
                held.rotations.insert(name.clone(), rotation);
            }
        }
        held.rotations.retain(|name, _| wanted.contains_key(name));
        if !done.created.is_empty() || !done.deleted.is_empty() {
            info!(
                created = done.created.len(),
                deleted = done.deleted.len(),
                failed = done.failed.len(),
                "partitions reconciled with the metadata"
            );
        }
        done
    }

    fn write_ids(&self, ids: &TopicIds) -> Result<(), TopicIdsError> {
        let bytes = serde_json::to_vec(ids).map_err(|source| TopicIdsError::Corrupt {
            path: self.ids_path.clone(),
            source,
        })?;
        chronik_wal::io::write_file_atomic(&*self.io, &self.ids_path, &bytes).map_err(|source| {
            TopicIdsError::Io {
                path: self.ids_path.clone(),
                source,
            }
        })
    }
}
