//! The metadata state machine: what every node builds by applying the committed log, and its snapshots.

use std::{
    collections::BTreeMap,
    io::Cursor,
    path::{Path, PathBuf},
    sync::Arc,
};

use chronik_wal::io::{read_file, write_file_atomic, WalIo};
use openraft::{
    storage::{RaftStateMachine, Snapshot},
    BasicNode, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::{BrokerInfo, Command, CommandResult, Entry, LogId, MetaRaft, StorageError};

/// Largest snapshot file read back.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// A topic and where its partitions live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub topic_id: [u8; 16],
    /// `replicas[p]`: the brokers holding partition `p`, preferred leader first.
    pub replicas: Vec<Vec<u64>>,
    pub configs: BTreeMap<String, String>,
}

/// The cluster metadata as of some log index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    pub brokers: BTreeMap<u64, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
}

impl MetadataState {
    /// Applies one command. Deterministic: the same state and command give the same result on every node.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::RegisterBroker(broker) => {
                self.brokers.insert(broker.id, broker.clone());
                CommandResult::Applied
            }
            Command::CreateTopic {
                name,
                topic_id,
                replicas,
                configs,
            } => {
                if self.topics.contains_key(name) {
                    return CommandResult::Refused(format!("topic {name} exists"));
                }
                if replicas.is_empty() || replicas.iter().any(Vec::is_empty) {
                    return CommandResult::Refused(format!("topic {name}: every partition needs a replica"));
                }
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        topic_id: *topic_id,
                        replicas: replicas.clone(),
                        configs: configs.clone(),
                    },
                );
                CommandResult::Applied
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => CommandResult::Applied,
                None => CommandResult::Refused(format!("no topic {name}")),
            },
        }
    }
}

/// A snapshot as stored: what it covers, and the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    state: MetadataState,
}

/// A snapshot's metadata and its data as sent to followers.
type EncodedSnapshot = (SnapshotMeta<u64, BasicNode>, Vec<u8>);

#[derive(Debug, Default)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    state: MetadataState,
}

#[derive(Debug)]
struct Inner {
    io: Arc<dyn WalIo>,
    snapshot_path: PathBuf,
    applied: Mutex<Applied>,
    /// The last snapshot made durable (built or installed), encoded as sent to followers.
    snapshot: Mutex<Option<EncodedSnapshot>>,
    /// Makes snapshot ids unique within this process (with the log id they cover).
    built: Mutex<u64>,
}

/// openraft's state machine: [`MetadataState`] in memory, rebuilt at open from the last snapshot (Raft
/// re-applies the committed entries after it). Cheap to clone: clones share it.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn snapshot_error(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_snapshot(None, e).into()
}

impl StateMachineStore {
    /// Opens the state machine whose snapshots are kept at `snapshot_path` on `io`.
    pub fn open(io: Arc<dyn WalIo>, snapshot_path: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let snapshot_path = snapshot_path.into();
        let stored = read_snapshot(&*io, &snapshot_path)?;
        let mut applied = Applied::default();
        let mut snapshot = None;
        if let Some(stored) = stored {
            applied = Applied {
                last: stored.meta.last_log_id,
                membership: stored.meta.last_membership.clone(),
                state: stored.state.clone(),
            };
            let data = serde_json::to_vec(&stored.state).map_err(|e| snapshot_error(&e))?;
            snapshot = Some((stored.meta, data));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                io,
                snapshot_path,
                applied: Mutex::new(applied),
                snapshot: Mutex::new(snapshot),
                built: Mutex::new(0),
            }),
        })
    }

    /// A copy of the metadata as applied so far.
    pub fn state(&self) -> MetadataState {
        self.inner.applied.lock().state.clone()
    }

    /// Makes `stored` the durable snapshot, then the current one.
    fn keep_snapshot(&self, stored: &StoredSnapshot, data: Vec<u8>) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(stored).map_err(|e| snapshot_error(&e))?;
        write_file_atomic(&*self.inner.io, &self.inner.snapshot_path, &bytes)
            .map_err(|e| snapshot_error(&e))?;
        *self.inner.snapshot.lock() = Some((stored.meta.clone(), data));
        Ok(())
    }
}

fn read_snapshot(io: &dyn WalIo, path: &Path) -> Result<Option<StoredSnapshot>, StorageError> {
    let read_error = |e: &dyn std::fmt::Display| -> StorageError {
        StorageIOError::read_snapshot(None, &std::io::Error::other(format!("{}: {e}", path.display()))).into()
    };
    match io.exists(path) {
        Ok(false) => return Ok(None),
        Ok(true) => {}
        Err(e) => return Err(read_error(&e)),
    }
    let bytes = read_file(io, path, MAX_SNAPSHOT_BYTES).map_err(|e| read_error(&e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| read_error(&e))
}

/// Runs blocking file work off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| snapshot_error(&std::io::Error::other(e.to_string())))?
}

impl RaftSnapshotBuilder<MetaRaft> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<MetaRaft>, StorageError> {
        let stored = {
            let applied = self.inner.applied.lock();
            let mut built = self.inner.built.lock();
            *built += 1;
            let last = applied.last;
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: applied.membership.clone(),
                    snapshot_id: format!(
                        "{}-{}-{}",
                        last.map_or(0, |l| l.leader_id.term),
                        last.map_or(0, |l| l.index),
                        *built
                    ),
                },
                state: applied.state.clone(),
            }
        };
        let data = serde_json::to_vec(&stored.state).map_err(|e| snapshot_error(&e))?;
        let store = self.clone();
        let (meta, kept) = (stored.meta.clone(), data.clone());
        blocking(move || store.keep_snapshot(&stored, kept)).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<MetaRaft> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError> {
        let applied = self.inner.applied.lock();
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.inner.applied.lock();
        let mut results = Vec::new();
        for entry in entries {
            applied.last = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(command) => applied.state.apply(&command),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::None
                }
            });
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: MetadataState = serde_json::from_slice(&data)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state: state.clone(),
        };
        let store = self.clone();
        // Durable before the state is replaced: a restart finds this snapshot or the state it replaces.
        blocking(move || store.keep_snapshot(&stored, data)).await?;
        let mut applied = self.inner.applied.lock();
        applied.last = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.state = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<MetaRaft>>, StorageError> {
        Ok(self.inner.snapshot.lock().clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
