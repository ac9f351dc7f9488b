//! Committed consumer offsets, stored durably through the WAL: each OffsetCommit is one JSON record in the
//! internal partition `__chronik_offsets-0`, appended with fdatasync before the commit is acknowledged, and
//! replayed on start. A commit of several partitions is one record, so it survives a crash whole or not
//! at all.
//!
//! Every `SNAPSHOT_EVERY` records the whole state is written to a second internal partition, and recovery
//! loads the latest snapshot and replays only the records after it, so recovery time stays bounded. (The
//! old records and snapshots stay on disk until WAL retention exists.)

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use chronik_wal::{Batch, Durability, PartitionWal, TopicPartition, WalManager};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::topics::now_ms;

/// The internal partition holding committed offsets. Hidden from clients.
pub const OFFSETS_TOPIC: &str = "__chronik_offsets";

/// One committed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CommitRecord {
    group: String,
    /// (topic, partition, committed)
    offsets: Vec<(String, i32, Committed)>,
    /// The group's offsets are deleted (DeleteGroups).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    delete: bool,
}

type GroupOffsets = HashMap<(String, i32), Committed>;

/// All groups' committed offsets.
pub struct Offsets {
    log: Arc<PartitionWal>,
    snapshots: Arc<PartitionWal>,
    groups: RwLock<HashMap<String, GroupOffsets>>,
    /// Serialises appends so the in-memory state applies them in log order; holds the records written
    /// since the last snapshot.
    writes: Mutex<u64>,
    snapshot_every: u64,
    /// Records replayed from the log at open (after the snapshot), for tests and the startup log.
    pub replayed: u64,
}

/// A full copy of the state, and the offsets-log position it covers.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    covers: i64,
    groups: Vec<(String, Vec<PartitionCommit>)>,
}

/// (topic, partition, committed), as stored.
type PartitionCommit = (String, i32, Committed);

/// Internal partition holding snapshots; recovery reads only its last batch.
pub const OFFSETS_SNAPSHOT_TOPIC: &str = "__chronik_offsets_snapshot";
/// Commit records between snapshots: bounds what recovery replays.
pub const SNAPSHOT_EVERY: u64 = 10_000;

impl std::fmt::Debug for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offsets")
            .field("groups", &self.groups.read().len())
            .finish_non_exhaustive()
    }
}

impl Offsets {
    pub fn open(wal: &WalManager) -> Result<Self, anyhow::Error> {
        Self::open_with(wal, SNAPSHOT_EVERY)
    }

    /// Loads the latest snapshot and replays the offsets log after it.
    pub fn open_with(wal: &WalManager, snapshot_every: u64) -> Result<Self, anyhow::Error> {
        let log = wal.get_or_create_partition(&TopicPartition::new(OFFSETS_TOPIC, 0))?;
        let snapshots = wal.get_or_create_partition(&TopicPartition::new(OFFSETS_SNAPSHOT_TOPIC, 0))?;
        let mut groups: HashMap<String, GroupOffsets> = HashMap::new();
        let mut next = log.log_start_offset();
        let last_snapshot = snapshots.high_watermark() - 1;
        if last_snapshot >= snapshots.log_start_offset() {
            if let Some(b) = snapshots.read(last_snapshot, 1)?.last() {
                let snapshot: Snapshot = serde_json::from_slice(&b.payload)?;
                next = snapshot.covers;
                for (group, offsets) in snapshot.groups {
                    apply(
                        &mut groups,
                        CommitRecord {
                            group,
                            offsets,
                            delete: false,
                        },
                    );
                }
            }
        }
        let mut replayed = 0;
        loop {
            let batches = log.read(next, 4 << 20)?;
            let Some(last) = batches.last() else { break };
            next = last.next_offset();
            for b in &batches {
                let record: CommitRecord = serde_json::from_slice(&b.payload)?;
                apply(&mut groups, record);
                replayed += 1;
            }
        }
        Ok(Offsets {
            log,
            snapshots,
            groups: RwLock::new(groups),
            writes: Mutex::new(replayed),
            snapshot_every: snapshot_every.max(1),
            replayed,
        })
    }

    /// Stores a group's commit durably, then makes it visible. Blocking (fdatasync).
    pub fn commit(&self, group: &str, offsets: Vec<(String, i32, Committed)>) -> Result<(), anyhow::Error> {
        self.append(CommitRecord {
            group: group.to_string(),
            offsets,
            delete: false,
        })
    }

    /// Forgets everything a group committed, durably.
    pub fn delete_group(&self, group: &str) -> Result<(), anyhow::Error> {
        self.append(CommitRecord {
            group: group.to_string(),
            offsets: Vec::new(),
            delete: true,
        })
    }

    fn append(&self, record: CommitRecord) -> Result<(), anyhow::Error> {
        let payload = Bytes::from(serde_json::to_vec(&record)?);
        let mut since_snapshot = self.writes.lock();
        self.log
            .append_with(Batch::new(payload, 1, now_ms()), Durability::Sync)?;
        apply(&mut self.groups.write(), record);
        *since_snapshot += 1;
        if *since_snapshot >= self.snapshot_every {
            // Best effort: without it recovery replays more, but nothing is lost.
            match self.snapshot() {
                Ok(()) => *since_snapshot = 0,
                Err(e) => tracing::warn!(error = %e, "writing an offsets snapshot failed"),
            }
        }
        Ok(())
    }

    /// Writes the whole state, covering the log up to its current end. Called with `writes` held.
    fn snapshot(&self) -> Result<(), anyhow::Error> {
        let groups = self.groups.read();
        let snapshot = Snapshot {
            covers: self.log.high_watermark(),
            groups: groups
                .iter()
                .map(|(g, offsets)| {
                    (
                        g.clone(),
                        offsets
                            .iter()
                            .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                            .collect(),
                    )
                })
                .collect(),
        };
        let payload = Bytes::from(serde_json::to_vec(&snapshot)?);
        drop(groups);
        self.snapshots
            .append_with(Batch::new(payload, 1, now_ms()), Durability::Sync)?;
        Ok(())
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.groups
            .read()
            .get(group)?
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Everything a group has committed, sorted by topic and partition.
    pub fn all(&self, group: &str) -> Vec<(String, i32, Committed)> {
        let groups = self.groups.read();
        let mut all: Vec<_> = groups
            .get(group)
            .map(|g| g.iter().map(|((t, p), c)| (t.clone(), *p, c.clone())).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }
}

fn apply(groups: &mut HashMap<String, GroupOffsets>, record: CommitRecord) {
    if record.delete {
        groups.remove(&record.group);
        return;
    }
    let group = groups.entry(record.group).or_default();
    for (topic, partition, committed) in record.offsets {
        group.insert((topic, partition), committed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_wal::WalConfig;

    #[test]
    fn commits_survive_a_crash_and_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = |offset| Committed {
            offset,
            leader_epoch: 0,
            metadata: Some("m".into()),
        };
        {
            let wal = WalManager::open(dir.path(), WalConfig::default()).expect("wal");
            let offsets = Offsets::open(&wal).expect("open");
            offsets
                .commit("g", vec![("t".into(), 0, c(10)), ("t".into(), 1, c(20))])
                .expect("commit");
            offsets.commit("g", vec![("t".into(), 0, c(15))]).expect("commit");
            offsets
                .commit("other", vec![("t".into(), 0, c(1))])
                .expect("commit");
            // Dropped without close: a crash.
        }
        let wal = WalManager::open(dir.path(), WalConfig::default()).expect("wal");
        let offsets = Offsets::open(&wal).expect("open");
        assert_eq!(offsets.get("g", "t", 0), Some(c(15)));
        assert_eq!(
            offsets.all("g"),
            vec![("t".into(), 0, c(15)), ("t".into(), 1, c(20))]
        );
        assert_eq!(offsets.get("other", "t", 0).map(|c| c.offset), Some(1));
        assert_eq!(offsets.get("nobody", "t", 0), None);
        offsets.delete_group("g").expect("delete");
        drop(offsets);
        let offsets = Offsets::open(&wal).expect("reopen");
        assert_eq!(offsets.all("g"), vec![], "the deletion is durable");
        assert_eq!(offsets.get("other", "t", 0).map(|c| c.offset), Some(1));
    }

    #[test]
    fn recovery_starts_from_the_latest_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = |offset| Committed {
            offset,
            leader_epoch: -1,
            metadata: None,
        };
        {
            let wal = WalManager::open(dir.path(), WalConfig::default()).expect("wal");
            let offsets = Offsets::open_with(&wal, 10).expect("open");
            for i in 0..25 {
                offsets
                    .commit("g", vec![("t".into(), i % 3, c(i64::from(i)))])
                    .expect("commit");
            }
            offsets.delete_group("gone").expect("delete");
        }
        let wal = WalManager::open(dir.path(), WalConfig::default()).expect("wal");
        let offsets = Offsets::open_with(&wal, 10).expect("open");
        assert_eq!(
            offsets.replayed, 6,
            "snapshots after 10 and 20 records: only the last 6 are replayed"
        );
        assert_eq!(
            offsets.all("g"),
            vec![
                ("t".into(), 0, c(24)),
                ("t".into(), 1, c(22)),
                ("t".into(), 2, c(23))
            ]
        );
    }
}
