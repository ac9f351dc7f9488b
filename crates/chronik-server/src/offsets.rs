//! Committed consumer offsets, stored durably through the WAL: each OffsetCommit is one JSON record in the
//! internal partition `__chronik_offsets-0`, appended with fdatasync before the commit is acknowledged, and
//! replayed on start. A commit of several partitions is one record, so it survives a crash whole or not
//! at all.
//!
//! Once enough has been committed since the last snapshot (at least `snapshot_every` records, and at least
//! as many bytes as that snapshot took), the whole state is written to a second internal partition,
//! `__chronik_offsets_snapshot-0`. Recovery loads the latest snapshot and replays only the records after
//! it, so recovery time, and the cost of snapshots per commit, scale with the state rather than with how
//! long the broker has run.
//!
//! Invariants:
//! - The latest durable snapshot covers the offsets log up to `covered`; every record below it is
//!   redundant. After each snapshot both partitions are rotated and trimmed: the offsets log's sealed
//!   segments wholly below `covered` and the snapshot partition's segments below the latest snapshot are
//!   deleted (by the WAL's retention, so only once a WAL checkpoint has moved past them; what waits on one
//!   goes at the next snapshot or retention pass). Disk use is therefore bounded by about two snapshot
//!   intervals of records (or one checkpoint interval's worth, if more) plus two snapshots, whatever the
//!   uptime.
//! - The log never starts above what the latest snapshot covers: loading refuses such a state rather than
//!   silently forget the offsets in between.
//! - One mutex (`writer`) serialises appends, snapshots, trimming and recovery, so the in-memory state
//!   applies records in log order, and nothing else appends to or rotates these partitions while a trim
//!   decides which segments go.
//! - A partition poisoned by a failed write or fdatasync is reopened from disk (cutting what was never
//!   durable), the state reloaded from it, and the append retried once: one disk error does not make every
//!   later commit fail until a restart.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use chronik_wal::{Batch, Durability, PartitionWal, RetentionPolicy, TopicPartition, WalManager};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::topics::now_ms;

/// The internal partition holding committed offsets. Hidden from clients.
pub const OFFSETS_TOPIC: &str = "__chronik_offsets";
/// Internal partition holding snapshots; recovery reads only its last batch.
pub const OFFSETS_SNAPSHOT_TOPIC: &str = "__chronik_offsets_snapshot";
/// Fewest commit records between snapshots. With few groups a snapshot is tiny, and this keeps snapshots
/// (and the segment rotations and deletions that follow each) from running every few commits; recovery
/// replays at most this many records, or as many bytes as the state takes if that is more.
pub const SNAPSHOT_EVERY: u64 = 10_000;

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
    offsets: Vec<PartitionCommit>,
    /// The group's offsets are deleted (DeleteGroups).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    delete: bool,
}

/// (topic, partition, committed), as stored.
type PartitionCommit = (String, i32, Committed);

type GroupOffsets = HashMap<(String, i32), Committed>;
type Groups = HashMap<String, GroupOffsets>;

/// A full copy of the state, and the offsets-log position it covers.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    covers: i64,
    groups: Vec<(String, Vec<PartitionCommit>)>,
}

/// What [`Offsets::trim`] deleted, over both partitions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrimOutcome {
    pub segments: usize,
    pub bytes: u64,
    /// Segments that can go once a WAL checkpoint has moved past them.
    pub awaiting_checkpoint: usize,
}

impl std::ops::Add for TrimOutcome {
    type Output = TrimOutcome;
    fn add(self, other: TrimOutcome) -> TrimOutcome {
        TrimOutcome {
            segments: self.segments + other.segments,
            bytes: self.bytes + other.bytes,
            awaiting_checkpoint: self.awaiting_checkpoint + other.awaiting_checkpoint,
        }
    }
}

/// All groups' committed offsets.
pub struct Offsets {
    wal: Arc<WalManager>,
    groups: RwLock<Groups>,
    writer: Mutex<Writer>,
    snapshot_every: u64,
    /// Records replayed from the log at open (after the snapshot), for tests and the startup log.
    pub replayed: u64,
}

/// The two partitions and the snapshot schedule; only touched with `Offsets::writer` held.
struct Writer {
    log: Arc<PartitionWal>,
    snapshots: Arc<PartitionWal>,
    /// Offsets-log position the latest durable snapshot covers (0 without one): records below are redundant.
    covered: i64,
    /// Offset of the latest durable snapshot (0 without one): snapshots below are redundant.
    snapshot_at: i64,
    /// Payload bytes of the latest snapshot: the next waits until at least this much more was logged.
    snapshot_bytes: u64,
    /// Records and payload bytes appended since the last snapshot attempt.
    records_since: u64,
    bytes_since: u64,
}

/// What loading found on disk.
struct Loaded {
    groups: Groups,
    covered: i64,
    snapshot_at: i64,
    snapshot_bytes: u64,
    replayed: u64,
    replayed_bytes: u64,
}

impl std::fmt::Debug for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offsets")
            .field("groups", &self.groups.read().len())
            .finish_non_exhaustive()
    }
}

impl Offsets {
    pub fn open(wal: &Arc<WalManager>) -> Result<Self, anyhow::Error> {
        Self::open_with(wal, SNAPSHOT_EVERY)
    }

    /// Loads the latest snapshot and replays the offsets log after it. `snapshot_every` is the fewest
    /// records between snapshots ([`SNAPSHOT_EVERY`] in the broker; small in tests).
    pub fn open_with(wal: &Arc<WalManager>, snapshot_every: u64) -> Result<Self, anyhow::Error> {
        let log = wal.get_or_create_partition(&TopicPartition::new(OFFSETS_TOPIC, 0))?;
        let snapshots = wal.get_or_create_partition(&TopicPartition::new(OFFSETS_SNAPSHOT_TOPIC, 0))?;
        let loaded = load(&log, &snapshots)?;
        let replayed = loaded.replayed;
        let mut writer = Writer {
            log,
            snapshots,
            covered: 0,
            snapshot_at: 0,
            snapshot_bytes: 0,
            records_since: 0,
            bytes_since: 0,
        };
        let groups = writer.adopt(loaded);
        Ok(Offsets {
            wal: Arc::clone(wal),
            groups: RwLock::new(groups),
            writer: Mutex::new(writer),
            snapshot_every: snapshot_every.max(1),
            replayed,
        })
    }

    /// Stores a group's commit durably, then makes it visible. Blocking (fdatasync).
    pub fn commit(&self, group: &str, offsets: Vec<PartitionCommit>) -> Result<(), anyhow::Error> {
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
        let len = payload.len() as u64;
        let batch = Batch::new(payload, 1, now_ms());
        let mut w = self.writer.lock();
        if let Err(e) = w.log.append_with(batch.clone(), Durability::Sync) {
            if !self.needs_reopen(&w.log) {
                return Err(e.into());
            }
            // The record was not acknowledged; the reopen cuts whatever of it was never durable. Appending
            // it again is safe even if it did survive: applying a commit twice in a row changes nothing.
            warn!(error = %e, "appending to the offsets log failed; recovering from disk, retrying once");
            self.recover(&mut w)?;
            w.log.append_with(batch, Durability::Sync)?;
        }
        apply(&mut self.groups.write(), record);
        w.records_since += 1;
        w.bytes_since += len;
        if w.records_since >= self.snapshot_every && w.bytes_since >= w.snapshot_bytes {
            // Counted from the attempt, so that a failing snapshot is retried an interval later, not on
            // every commit. Best effort: without it recovery replays more, but nothing is lost.
            w.records_since = 0;
            w.bytes_since = 0;
            if let Err(e) = self.snapshot(&mut w) {
                warn!(error = %e, "writing an offsets snapshot failed; will retry after the next interval");
            }
        }
        Ok(())
    }

    /// Writes the whole state, covering the log up to its current end, then trims what it makes redundant.
    fn snapshot(&self, w: &mut Writer) -> Result<(), anyhow::Error> {
        if self.needs_reopen(&w.snapshots) || self.needs_reopen(&w.log) {
            self.recover(w)?;
        }
        let covers = w.log.high_watermark();
        let payload = {
            let groups = self.groups.read();
            let snapshot = Snapshot {
                covers,
                groups: groups
                    .iter()
                    .map(|(g, offsets)| {
                        let offsets = offsets
                            .iter()
                            .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                            .collect();
                        (g.clone(), offsets)
                    })
                    .collect(),
            };
            Bytes::from(serde_json::to_vec(&snapshot)?)
        };
        let len = payload.len() as u64;
        // Rotations put everything made redundant into sealed segments, which retention can delete. Failing
        // one only delays trimming until the segment rotates by size or age.
        if let Err(e) = w.snapshots.rotate() {
            warn!(error = %e, "rotating the offsets snapshot partition failed");
        }
        let at = w
            .snapshots
            .append_with(Batch::new(payload, 1, now_ms()), Durability::Sync)?;
        w.covered = covers;
        w.snapshot_at = at.base_offset;
        w.snapshot_bytes = len;
        if let Err(e) = w.log.rotate() {
            warn!(error = %e, "rotating the offsets log after a snapshot failed");
        }
        match self.trim_locked(w) {
            Ok(t) if t.segments > 0 => {
                info!(
                    segments = t.segments,
                    bytes = t.bytes,
                    "trimmed the offsets log behind a snapshot"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "trimming the offsets log failed; will retry"),
        }
        Ok(())
    }

    /// Deletes the segments the latest snapshot made redundant, as far as the last WAL checkpoint allows
    /// (the retention task calls this, then checkpoints and calls it again if segments await that).
    /// Blocking (file removals and directory fsyncs).
    pub fn trim(&self) -> Result<TrimOutcome, chronik_wal::Error> {
        let mut w = self.writer.lock();
        self.trim_locked(&mut w)
    }

    fn trim_locked(&self, w: &mut Writer) -> Result<TrimOutcome, chronik_wal::Error> {
        let log = delete_below(&w.log, w.covered)?;
        let snapshots = delete_below(&w.snapshots, w.snapshot_at)?;
        Ok(log + snapshots)
    }

    /// True if `p` can no longer be appended to through this handle: poisoned by a failed write or
    /// fdatasync, closed by a reopen that failed half way, or replaced in the WAL by a reopen.
    fn needs_reopen(&self, p: &Arc<PartitionWal>) -> bool {
        p.is_poisoned()
            || p.is_closed()
            || !self
                .wal
                .partition(p.topic_partition())
                .is_some_and(|current| Arc::ptr_eq(&current, p))
    }

    /// Recovers both partitions from disk where needed and reloads the state from what is durable, which is
    /// what was acknowledged (plus, perhaps, the unacknowledged record whose append failed).
    fn recover(&self, w: &mut Writer) -> Result<(), anyhow::Error> {
        w.log = self.reopened(&w.log)?;
        w.snapshots = self.reopened(&w.snapshots)?;
        let loaded = load(&w.log, &w.snapshots)?;
        *self.groups.write() = w.adopt(loaded);
        warn!(
            high_watermark = w.log.high_watermark(),
            "committed offsets recovered from disk after a failed write"
        );
        Ok(())
    }

    /// `p`, reopened from disk if it needs it (or the handle the WAL now holds, if it was reopened already).
    fn reopened(&self, p: &Arc<PartitionWal>) -> Result<Arc<PartitionWal>, chronik_wal::Error> {
        let tp = p.topic_partition();
        match self.wal.partition(tp) {
            Some(current) if !current.is_poisoned() && !current.is_closed() => Ok(current),
            _ => self.wal.reopen_partition(tp),
        }
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.groups
            .read()
            .get(group)?
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Everything a group has committed, sorted by topic and partition.
    pub fn all(&self, group: &str) -> Vec<PartitionCommit> {
        let groups = self.groups.read();
        let mut all: Vec<_> = groups
            .get(group)
            .map(|g| g.iter().map(|((t, p), c)| (t.clone(), *p, c.clone())).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }
}

impl Writer {
    /// Takes the positions and schedule from what was loaded; returns the state.
    fn adopt(&mut self, loaded: Loaded) -> Groups {
        self.covered = loaded.covered;
        self.snapshot_at = loaded.snapshot_at;
        self.snapshot_bytes = loaded.snapshot_bytes;
        self.records_since = loaded.replayed;
        self.bytes_since = loaded.replayed_bytes;
        loaded.groups
    }
}

/// Loads the latest snapshot and replays the log after it.
fn load(log: &PartitionWal, snapshots: &PartitionWal) -> Result<Loaded, anyhow::Error> {
    let mut loaded = Loaded {
        groups: HashMap::new(),
        covered: 0,
        snapshot_at: 0,
        snapshot_bytes: 0,
        replayed: 0,
        replayed_bytes: 0,
    };
    let last_snapshot = snapshots.high_watermark() - 1;
    if last_snapshot >= snapshots.log_start_offset() {
        if let Some(b) = snapshots.read(last_snapshot, 1)?.last() {
            let snapshot: Snapshot = serde_json::from_slice(&b.payload)?;
            loaded.covered = snapshot.covers;
            loaded.snapshot_at = b.base_offset;
            loaded.snapshot_bytes = b.payload.len() as u64;
            for (group, offsets) in snapshot.groups {
                apply(
                    &mut loaded.groups,
                    CommitRecord {
                        group,
                        offsets,
                        delete: false,
                    },
                );
            }
        }
    }
    // Trimming deletes only records a durable snapshot covers; a log starting past it lost commits.
    let log_start = log.log_start_offset();
    anyhow::ensure!(
        log_start <= loaded.covered,
        "the offsets log starts at {log_start} but the latest snapshot covers only offsets below {}: \
         committed offsets in between are missing",
        loaded.covered
    );
    let mut next = loaded.covered;
    loop {
        let batches = log.read(next, 4 << 20)?;
        let Some(last) = batches.last() else { break };
        next = last.next_offset();
        for b in &batches {
            let record: CommitRecord = serde_json::from_slice(&b.payload)?;
            apply(&mut loaded.groups, record);
            loaded.replayed += 1;
            loaded.replayed_bytes += b.payload.len() as u64;
        }
    }
    Ok(loaded)
}

/// Deletes the sealed segments of `wal` that hold only offsets below `below`, as far as the WAL's last
/// durable checkpoint allows.
///
/// The WAL deletes segments only under a retention policy, which has no "below this offset" rule. Age
/// retention with a chosen clock does the job: it deletes the oldest sealed segments while their newest
/// record is older than the cutoff and stops at the first that is not, so a cutoff no later than the
/// newest record of the first segment to keep can never reach that segment. If that segment is empty it is
/// the active one, which retention never deletes. Called with the writer lock held: nothing appends to or
/// rotates `wal` meanwhile. A clock that went backwards only makes it delete less.
fn delete_below(wal: &PartitionWal, below: i64) -> Result<TrimOutcome, chronik_wal::Error> {
    let infos = wal.segment_infos();
    let doomed = infos
        .iter()
        .take_while(|s| s.sealed && s.next_offset <= below)
        .count();
    let Some(keep) = infos.get(doomed) else {
        return Ok(TrimOutcome::default());
    };
    let keep_is_empty = keep.max_timestamp == i64::MIN;
    if doomed == 0 || (keep_is_empty && keep.sealed) {
        return Ok(TrimOutcome::default());
    }
    let newest_doomed = infos[..doomed]
        .iter()
        .map(|s| s.max_timestamp)
        .max()
        .unwrap_or(i64::MIN);
    let mut cutoff = newest_doomed.saturating_add(1);
    if !keep_is_empty {
        cutoff = cutoff.min(keep.max_timestamp);
    }
    let by_age = RetentionPolicy {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    let outcome = wal.apply_retention(&by_age, cutoff)?;
    debug_assert!(outcome.log_start_offset <= below);
    Ok(TrimOutcome {
        segments: outcome.segments_deleted,
        bytes: outcome.bytes_deleted,
        awaiting_checkpoint: outcome.awaiting_checkpoint,
    })
}

fn apply(groups: &mut Groups, record: CommitRecord) {
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
            let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
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
        let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
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
            let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
            let offsets = Offsets::open_with(&wal, 10).expect("open");
            for i in 0..25 {
                offsets
                    .commit("g", vec![("t".into(), i % 3, c(i64::from(i)))])
                    .expect("commit");
            }
            offsets.delete_group("gone").expect("delete");
        }
        let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
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
