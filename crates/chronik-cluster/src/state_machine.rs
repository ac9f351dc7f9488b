//! The metadata state machine: what every node builds by applying the committed log, and its snapshots.

use std::{
    collections::{BTreeMap, BTreeSet},
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

/// One partition: where its replicas are and who leads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Brokers holding the partition, preferred leader first.
    pub replicas: Vec<u64>,
    /// `None`: no in-sync replica is available (offline, LEADER_NOT_AVAILABLE).
    pub leader: Option<u64>,
    /// Bumped at every change of leader, so a deposed leader's requests can be told apart.
    pub leader_epoch: i32,
    /// The replicas with everything the leader acknowledged.
    pub isr: Vec<u64>,
    /// Bumped at every change of leader, leader epoch or ISR: an ISR change proposed against an older
    /// one is refused.
    #[serde(default)]
    pub partition_epoch: i32,
}

impl PartitionState {
    /// Moves leadership to `leader` (or none: offline) in a new leader epoch.
    fn elect(&mut self, leader: Option<u64>, changes: &mut u64) {
        self.leader = leader;
        self.leader_epoch += 1;
        self.partition_epoch += 1;
        *changes += 1;
    }
}

/// A topic and where its partitions live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub topic_id: [u8; 16],
    pub partitions: Vec<PartitionState>,
    pub configs: BTreeMap<String, String>,
}

/// The cluster metadata as of some log index.
///
/// Invariants, after any sequence of commands: a partition's leader is in its ISR and not fenced; its ISR
/// is a non-empty subset of its replicas; its leader epoch grows by one when the leader changes or
/// restarts, and never otherwise; its partition epoch grows by one at every command that changes the
/// partition; producer id blocks never overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    pub cluster_id: Option<String>,
    pub brokers: BTreeMap<u64, BrokerInfo>,
    /// Registered brokers that stopped heartbeating.
    pub fenced: BTreeSet<u64>,
    pub topics: BTreeMap<String, TopicInfo>,
    /// Producer ids below this are handed out.
    pub producer_ids_end: i64,
    /// Times a partition's leader changed (a leader epoch bump), over the cluster's life.
    #[serde(default)]
    pub leader_changes: u64,
}

impl MetadataState {
    /// A broker that may lead: registered and not fenced.
    pub fn is_live(&self, broker: u64) -> bool {
        self.brokers.contains_key(&broker) && !self.fenced.contains(&broker)
    }

    fn new_partition(&self, replicas: &[u64]) -> PartitionState {
        PartitionState {
            replicas: replicas.to_vec(),
            leader: replicas.iter().copied().find(|&b| self.is_live(b)),
            leader_epoch: 0,
            isr: replicas.to_vec(),
            partition_epoch: 0,
        }
    }

    /// Applies one command. Deterministic: the same state and command give the same result on every node.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::SetClusterId { cluster_id } => match &self.cluster_id {
                Some(id) if id != cluster_id => CommandResult::Refused(format!("the cluster is {id}")),
                _ => {
                    self.cluster_id = Some(cluster_id.clone());
                    CommandResult::Applied
                }
            },
            Command::RegisterBroker(broker) => {
                let id = broker.id;
                let restarted = self
                    .brokers
                    .get(&id)
                    .is_some_and(|known| known.incarnation != broker.incarnation);
                self.brokers.insert(id, broker.clone());
                self.fenced.remove(&id);
                let changes = &mut self.leader_changes;
                for p in self.topics.values_mut().flat_map(|t| t.partitions.iter_mut()) {
                    // Every ISR member holds everything acknowledged: one may lead a partition that
                    // has no leader (fencing leaves a leaderless partition its last member only).
                    let orphaned = p.leader.is_none() && p.isr.contains(&id);
                    if orphaned || (restarted && p.leader == Some(id)) {
                        p.elect(Some(id), changes);
                    }
                }
                CommandResult::Applied
            }
            Command::FenceBroker { id } => {
                if !self.brokers.contains_key(id) {
                    return CommandResult::Refused(format!("no broker {id}"));
                }
                self.fenced.insert(*id);
                let fenced = &self.fenced;
                let brokers = &self.brokers;
                let changes = &mut self.leader_changes;
                for p in self.topics.values_mut().flat_map(|t| t.partitions.iter_mut()) {
                    if !p.isr.contains(id) {
                        continue;
                    }
                    // The last member stays: it holds everything acknowledged, and the partition waits
                    // for it (no unclean election).
                    let shrink = p.isr.len() > 1;
                    if shrink {
                        p.isr.retain(|b| b != id);
                    }
                    if p.leader == Some(*id) {
                        let next = p
                            .isr
                            .iter()
                            .copied()
                            .find(|b| b != id && brokers.contains_key(b) && !fenced.contains(b));
                        p.elect(next, changes);
                    } else if shrink {
                        p.partition_epoch += 1;
                    }
                }
                CommandResult::Applied
            }
            Command::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let live: BTreeSet<u64> = self
                    .brokers
                    .keys()
                    .copied()
                    .filter(|b| !self.fenced.contains(b))
                    .collect();
                let Some(p) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                else {
                    return CommandResult::Refused(format!("no partition {topic}-{partition}"));
                };
                if p.leader != Some(*leader) || p.leader_epoch != *leader_epoch {
                    return CommandResult::Refused(format!(
                        "{topic}-{partition}: {leader} does not lead it in epoch {leader_epoch}"
                    ));
                }
                if p.partition_epoch != *partition_epoch {
                    return CommandResult::Refused(format!(
                        "{topic}-{partition} is at partition epoch {}, not {partition_epoch}",
                        p.partition_epoch
                    ));
                }
                let distinct: BTreeSet<u64> = isr.iter().copied().collect();
                let valid = distinct.len() == isr.len()
                    && isr.contains(leader)
                    && isr.iter().all(|b| p.replicas.contains(b) && live.contains(b));
                if !valid {
                    return CommandResult::Refused(format!(
                        "{topic}-{partition}: ISR {isr:?} must hold the leader and only live replicas"
                    ));
                }
                p.isr = isr.clone();
                p.partition_epoch += 1;
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
                if let Some(why) = bad_replicas(name, replicas, true) {
                    return CommandResult::Refused(why);
                }
                let partitions = replicas.iter().map(|r| self.new_partition(r)).collect();
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        topic_id: *topic_id,
                        partitions,
                        configs: configs.clone(),
                    },
                );
                CommandResult::Applied
            }
            Command::AddPartitions { name, replicas, from } => {
                let Some(current) = self.topics.get(name).map(|t| t.partitions.len()) else {
                    return CommandResult::Refused(format!("no topic {name}"));
                };
                if let Some(from) = from.filter(|&f| f as usize != current) {
                    return CommandResult::Refused(format!(
                        "topic {name} has {current} partitions, not {from}"
                    ));
                }
                if let Some(why) = bad_replicas(name, replicas, false) {
                    return CommandResult::Refused(why);
                }
                let added: Vec<PartitionState> = replicas.iter().map(|r| self.new_partition(r)).collect();
                if let Some(t) = self.topics.get_mut(name) {
                    t.partitions.extend(added);
                }
                CommandResult::Applied
            }
            Command::SetConfigs { name, configs } => match self.topics.get_mut(name) {
                Some(t) => {
                    t.configs = configs.clone();
                    CommandResult::Applied
                }
                None => CommandResult::Refused(format!("no topic {name}")),
            },
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => CommandResult::Applied,
                None => CommandResult::Refused(format!("no topic {name}")),
            },
            Command::AllocateProducerIds { count } => {
                if *count <= 0 {
                    return CommandResult::Refused(format!("cannot reserve {count} producer ids"));
                }
                let start = self.producer_ids_end;
                let Some(end) = start.checked_add(*count) else {
                    return CommandResult::Refused("producer ids exhausted".into());
                };
                self.producer_ids_end = end;
                CommandResult::ProducerIds { start, end }
            }
        }
    }
}

/// Why these replica lists cannot be a topic's (new) partitions, if they cannot.
fn bad_replicas(name: &str, replicas: &[Vec<u64>], whole_topic: bool) -> Option<String> {
    if whole_topic && replicas.is_empty() {
        return Some(format!("topic {name}: no partitions"));
    }
    for r in replicas {
        if r.is_empty() {
            return Some(format!("topic {name}: every partition needs a replica"));
        }
        let distinct: BTreeSet<u64> = r.iter().copied().collect();
        if distinct.len() != r.len() {
            return Some(format!(
                "topic {name}: a broker listed twice among a partition's replicas"
            ));
        }
    }
    None
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
        self.read(MetadataState::clone)
    }

    /// `f` of the metadata as applied so far, without copying it (apply waits meanwhile: keep `f` short).
    pub fn read<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        f(&self.inner.applied.lock().state)
    }

    /// Makes `stored` the durable snapshot, then the current one, unless the current one is newer: a build
    /// runs beside the state machine, and an install of a later snapshot (with the log purged up to it)
    /// may finish first; going back to the build's would leave a restart with a gap before the log.
    fn keep_snapshot(&self, stored: &StoredSnapshot, data: Vec<u8>) -> Result<(), StorageError> {
        let mut current = self.inner.snapshot.lock();
        if current
            .as_ref()
            .is_some_and(|(meta, _)| meta.last_log_id > stored.meta.last_log_id)
        {
            return Ok(());
        }
        let bytes = serde_json::to_vec(stored).map_err(|e| snapshot_error(&e))?;
        write_file_atomic(&*self.inner.io, &self.inner.snapshot_path, &bytes)
            .map_err(|e| snapshot_error(&e))?;
        *current = Some((stored.meta.clone(), data));
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
