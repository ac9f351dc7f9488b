//! Committed consumer offsets, stored durably through the WAL: each OffsetCommit is one JSON record in the
//! internal partition `__chronik_offsets-0`, appended with fdatasync before the commit is acknowledged, and
//! replayed on start. A commit of several partitions is one record, so it survives a crash whole or not
//! at all.
//!
//! Commits are queued ([`Offsets::queue_commit`]) to one writer thread, which appends everything queued
//! meanwhile as one round and waits for one fdatasync for all of it: every group's commits on the broker
//! share fdatasyncs, as producers' batches do. A connection queues its commits in the order they arrive,
//! so pipelined commits are stored in that order.
//!
//! Once enough has been committed since the last snapshot (at least `snapshot_every` records, and at least
//! as many bytes as that snapshot took), the whole state is written to a second internal partition,
//! `__chronik_offsets_snapshot-0`. Recovery loads the latest snapshot and replays only the records after
//! it, so recovery time, and the cost of snapshots per commit, scale with the state rather than with how
//! long the broker has run.
//!
//! Invariants:
//! - Records are appended in the order they were queued, and a commit becomes visible (to OffsetFetch)
//!   only once durable, in log order: a reader never sees a commit that a crash could take back, nor an
//!   earlier commit after a later one.
//! - The latest durable snapshot covers the offsets log up to `covered`; every record below it is
//!   redundant. After each snapshot both partitions are rotated and trimmed: the offsets log's sealed
//!   segments wholly below `covered` and the snapshot partition's segments below the latest snapshot are
//!   deleted (`PartitionWal::delete_segments_below`, only once a WAL checkpoint has moved past them; what waits on one goes at the next snapshot
//!   or retention pass). Disk use is therefore bounded by about two snapshot intervals of records (or one
//!   checkpoint interval's worth, if more) plus two snapshots, whatever the uptime.
//! - The log never starts above what the latest snapshot covers: loading refuses such a state rather than
//!   silently forget the offsets in between.
//! - One mutex (`writer`) serialises appends, snapshots, trimming and recovery, so the in-memory state
//!   applies records in log order, and nothing else appends to or rotates these partitions while a trim
//!   decides which segments go.
//! - A partition poisoned by a failed write or fdatasync is reopened from disk (cutting what was never
//!   durable), the state reloaded from it, and the round appended again once, in the same order: one disk
//!   error does not make every later commit fail until a restart.
//! - What waits in the queue is bounded by the connections' in-flight limits (each commit queued is a
//!   request in flight).

use std::{
    collections::HashMap,
    sync::{mpsc, Arc},
    thread::JoinHandle,
};

use bytes::Bytes;
use chronik_wal::{AppendOptions, Batch, Durability, PartitionWal, TopicPartition, WalManager};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock::now_ms;

/// The internal partition holding committed offsets. Hidden from clients.
pub const OFFSETS_TOPIC: &str = "__chronik_offsets";
/// Internal partition holding snapshots; recovery reads only its last batch.
pub const OFFSETS_SNAPSHOT_TOPIC: &str = "__chronik_offsets_snapshot";
/// Fewest commit records between snapshots. With few groups a snapshot is tiny, and this keeps snapshots
/// (and the segment rotations and deletions that follow each) from running every few commits; recovery
/// replays at most this many records, or as many bytes as the state takes if that is more.
pub const SNAPSHOT_EVERY: u64 = 10_000;
/// Most commits one round appends before it waits for their fdatasync.
const MAX_ROUND: usize = 1024;

/// Why the store could not take a commit, or could not load.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetsError {
    /// The offsets log could not be written or read (I/O failure, full disk, a poisoned partition).
    #[error("the offsets log failed: {0}")]
    Wal(#[source] Arc<chronik_wal::Error>),
    /// One commit is larger than a WAL batch may be; refused alone.
    #[error("a commit record of {size} bytes is over the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// What is on disk does not decode, or is inconsistent (at load).
    #[error("the stored offsets are damaged: {0}")]
    Corrupt(String),
    /// The store has shut down.
    #[error("the offsets store has stopped")]
    Stopped,
    /// The writer thread could not be started.
    #[error("starting the offsets writer thread failed: {0}")]
    Thread(#[source] Arc<std::io::Error>),
}

impl From<chronik_wal::Error> for OffsetsError {
    fn from(e: chronik_wal::Error) -> Self {
        match e {
            chronik_wal::Error::BatchTooLarge { size, max } => OffsetsError::TooLarge { size, max },
            e => OffsetsError::Wal(Arc::new(e)),
        }
    }
}

impl From<serde_json::Error> for OffsetsError {
    fn from(e: serde_json::Error) -> Self {
        OffsetsError::Corrupt(e.to_string())
    }
}

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
    store: Arc<Store>,
    /// Into the writer thread; `None` once shut down.
    queue: Mutex<Option<mpsc::Sender<Queued>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Records replayed from the log at open (after the snapshot), for tests and the startup log.
    pub replayed: u64,
}

/// What the writer thread and readers share.
struct Store {
    wal: Arc<WalManager>,
    groups: RwLock<Groups>,
    writer: Mutex<Writer>,
    snapshot_every: u64,
}

/// A record waiting for the writer thread, and where its outcome goes.
struct Queued {
    record: CommitRecord,
    payload: Bytes,
    done: oneshot::Sender<Result<(), OffsetsError>>,
}

/// A commit queued by [`Offsets::queue_commit`]: resolves once it is durable and visible, or refused.
#[must_use = "a commit is acknowledged only once its ticket says it is durable"]
pub struct CommitTicket(oneshot::Receiver<Result<(), OffsetsError>>);

impl CommitTicket {
    pub async fn wait(self) -> Result<(), OffsetsError> {
        self.0.await.unwrap_or(Err(OffsetsError::Stopped))
    }

    /// As [`CommitTicket::wait`], blocking the thread; not from inside an async task.
    pub fn wait_blocking(self) -> Result<(), OffsetsError> {
        self.0.blocking_recv().unwrap_or(Err(OffsetsError::Stopped))
    }

    fn settled(result: Result<(), OffsetsError>) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        CommitTicket(rx)
    }
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
            .field("groups", &self.store.groups.read().len())
            .finish_non_exhaustive()
    }
}

impl Offsets {
    /// The store of offsets partition 0.
    pub fn open(wal: &Arc<WalManager>) -> Result<Self, OffsetsError> {
        Self::open_with(wal, SNAPSHOT_EVERY)
    }

    /// The store of offsets partition `partition` (WAL partitions `__chronik_offsets-P` and
    /// `__chronik_offsets_snapshot-P`, created if missing).
    pub fn open_partition(wal: &Arc<WalManager>, partition: i32) -> Result<Self, OffsetsError> {
        Self::open_partition_with(wal, partition, SNAPSHOT_EVERY)
    }

    /// [`Offsets::open`] with `snapshot_every`, the fewest records between snapshots ([`SNAPSHOT_EVERY`]
    /// in the broker; small in tests).
    pub fn open_with(wal: &Arc<WalManager>, snapshot_every: u64) -> Result<Self, OffsetsError> {
        Self::open_partition_with(wal, 0, snapshot_every)
    }

    /// Loads the latest snapshot and replays the offsets log after it.
    fn open_partition_with(
        wal: &Arc<WalManager>,
        partition: i32,
        snapshot_every: u64,
    ) -> Result<Self, OffsetsError> {
        let log = wal.get_or_create_partition(&TopicPartition::new(OFFSETS_TOPIC, partition))?;
        let snapshots =
            wal.get_or_create_partition(&TopicPartition::new(OFFSETS_SNAPSHOT_TOPIC, partition))?;
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
        let store = Arc::new(Store {
            wal: Arc::clone(wal),
            groups: RwLock::new(groups),
            writer: Mutex::new(writer),
            snapshot_every: snapshot_every.max(1),
        });
        let (tx, rx) = mpsc::channel();
        let thread = {
            let store = Arc::clone(&store);
            std::thread::Builder::new()
                .name("offsets-writer".into())
                .spawn(move || store.write_rounds(&rx))
                .map_err(|e| OffsetsError::Thread(Arc::new(e)))?
        };
        Ok(Offsets {
            store,
            queue: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            replayed,
        })
    }

    /// Queues a group's commit; the ticket resolves once it is durable and visible. Commits are stored in
    /// the order they are queued.
    pub fn queue_commit(&self, group: &str, offsets: Vec<PartitionCommit>) -> CommitTicket {
        self.queue(CommitRecord {
            group: group.to_string(),
            offsets,
            delete: false,
        })
    }

    /// Queues the deletion of everything a group committed.
    pub fn queue_delete_group(&self, group: &str) -> CommitTicket {
        self.queue(CommitRecord {
            group: group.to_string(),
            offsets: Vec::new(),
            delete: true,
        })
    }

    /// Stores a group's commit durably, then makes it visible. Blocking (fdatasync); not from async code.
    pub fn commit(&self, group: &str, offsets: Vec<PartitionCommit>) -> Result<(), OffsetsError> {
        self.queue_commit(group, offsets).wait_blocking()
    }

    /// Forgets everything a group committed, durably. Blocking, as [`Offsets::commit`].
    pub fn delete_group(&self, group: &str) -> Result<(), OffsetsError> {
        self.queue_delete_group(group).wait_blocking()
    }

    fn queue(&self, record: CommitRecord) -> CommitTicket {
        let payload = match serde_json::to_vec(&record) {
            Ok(p) => Bytes::from(p),
            Err(e) => return CommitTicket::settled(Err(e.into())),
        };
        let (done, rx) = oneshot::channel();
        let queued = Queued {
            record,
            payload,
            done,
        };
        match self.queue.lock().as_ref().map(|q| q.send(queued)) {
            Some(Ok(())) => CommitTicket(rx),
            _ => CommitTicket::settled(Err(OffsetsError::Stopped)),
        }
    }

    /// Deletes the segments the latest snapshot made redundant, as far as the last WAL checkpoint allows
    /// (the retention task calls this, then checkpoints and calls it again if segments await that).
    /// Blocking (file removals and directory fsyncs).
    pub fn trim(&self) -> Result<TrimOutcome, chronik_wal::Error> {
        let mut w = self.store.writer.lock();
        w.trim()
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.store
            .groups
            .read()
            .get(group)?
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Everything a group has committed, sorted by topic and partition.
    pub fn all(&self, group: &str) -> Vec<PartitionCommit> {
        let groups = self.store.groups.read();
        let mut all: Vec<_> = groups
            .get(group)
            .map(|g| g.iter().map(|((t, p), c)| (t.clone(), *p, c.clone())).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }
}

impl Offsets {
    /// Stops taking commits (later ones fail with [`OffsetsError::Stopped`]), lets the writer finish what
    /// is queued, and waits for it. Blocking. Another store may then be opened on the same partitions.
    pub fn close(&self) {
        drop(self.queue.lock().take());
        if let Some(thread) = self.writer_thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Offsets {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store {
    /// The writer thread: takes everything queued as one round, until the queue closes.
    fn write_rounds(&self, queue: &mpsc::Receiver<Queued>) {
        while let Ok(first) = queue.recv() {
            let mut round = vec![first];
            while round.len() < MAX_ROUND {
                match queue.try_recv() {
                    Ok(next) => round.push(next),
                    Err(_) => break,
                }
            }
            self.write_round(round);
        }
    }

    /// Appends a round in queue order, waits for its fdatasync, applies it, and answers every commit.
    fn write_round(&self, round: Vec<Queued>) {
        let mut w = self.writer.lock();
        let payloads: Vec<Bytes> = round.iter().map(|q| q.payload.clone()).collect();
        let outcome = match append_durably(&w.log, &payloads) {
            Err(e) if self.needs_reopen(&w.log) => {
                // Nothing of the round was acknowledged; the reopen cuts whatever of it was never durable.
                // Appending the round again, in order, is safe even if part of it survived: it ends in the
                // same state as the round applied once.
                warn!(error = %e, "appending to the offsets log failed; recovering from disk, retrying once");
                self.recover(&mut w)
                    .and_then(|()| append_durably(&w.log, &payloads).map_err(OffsetsError::from))
            }
            other => other.map_err(OffsetsError::from),
        };
        let refusals = match outcome {
            Ok(refusals) => refusals,
            Err(e) => {
                for q in round {
                    let _ = q.done.send(Err(e.clone()));
                }
                return;
            }
        };
        {
            let mut groups = self.groups.write();
            for (q, refusal) in round.into_iter().zip(refusals) {
                if let Some(e) = refusal {
                    let _ = q.done.send(Err(e.into()));
                    continue;
                }
                w.records_since += 1;
                w.bytes_since += q.payload.len() as u64;
                apply(&mut groups, q.record);
                let _ = q.done.send(Ok(()));
            }
        }
        if w.records_since >= self.snapshot_every && w.bytes_since >= w.snapshot_bytes {
            // Counted from the attempt, so that a failing snapshot is retried an interval later, not on
            // every commit. Best effort: without it recovery replays more, but nothing is lost.
            w.records_since = 0;
            w.bytes_since = 0;
            if let Err(e) = self.snapshot(&mut w) {
                warn!(error = %e, "writing an offsets snapshot failed; will retry after the next interval");
            }
        }
    }

    /// Writes the whole state, covering the log up to its current end, then trims what it makes redundant.
    fn snapshot(&self, w: &mut Writer) -> Result<(), OffsetsError> {
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
        match w.trim() {
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
    fn recover(&self, w: &mut Writer) -> Result<(), OffsetsError> {
        w.log = Arc::clone(self.wal.heal(&w.log)?.handle());
        w.snapshots = Arc::clone(self.wal.heal(&w.snapshots)?.handle());
        let loaded = load(&w.log, &w.snapshots)?;
        *self.groups.write() = w.adopt(loaded);
        warn!(
            high_watermark = w.log.high_watermark(),
            "committed offsets recovered from disk after a failed write"
        );
        Ok(())
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

    /// Deletes the segments the latest snapshot made redundant, as far as the last WAL checkpoint allows.
    fn trim(&mut self) -> Result<TrimOutcome, chronik_wal::Error> {
        let log = delete_below(&self.log, self.covered)?;
        let snapshots = delete_below(&self.snapshots, self.snapshot_at)?;
        Ok(log + snapshots)
    }
}

/// Appends `payloads` to `log` in order, one batch each, and waits until all are durable (one shared
/// fdatasync, as a rule). Per payload: `None` if durable, the error if it was refused alone (too large);
/// `Err` if the partition failed, when none of them may be taken as durable.
fn append_durably(
    log: &Arc<PartitionWal>,
    payloads: &[Bytes],
) -> Result<Vec<Option<chronik_wal::Error>>, chronik_wal::Error> {
    let options = AppendOptions {
        durability: Durability::Sync,
        ..Default::default()
    };
    let mut refusals: Vec<Option<chronik_wal::Error>> = Vec::with_capacity(payloads.len());
    let mut tickets = Vec::with_capacity(payloads.len());
    let mut failure = None;
    for payload in payloads {
        match log.submit(Batch::new(payload.clone(), 1, now_ms()), options) {
            Ok(ticket) => {
                tickets.push(ticket);
                refusals.push(None);
            }
            Err(e @ (chronik_wal::Error::BatchTooLarge { .. } | chronik_wal::Error::InvalidArgument(_))) => {
                refusals.push(Some(e));
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Every ticket is waited on, also after a failure: a queued append is written only when someone leads
    // its group.
    for ticket in tickets {
        if let Err(e) = ticket.wait() {
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(refusals),
    }
}

/// Loads the latest snapshot and replays the log after it.
fn load(log: &PartitionWal, snapshots: &PartitionWal) -> Result<Loaded, OffsetsError> {
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
    if log_start > loaded.covered {
        return Err(OffsetsError::Corrupt(format!(
            "the offsets log starts at {log_start} but the latest snapshot covers only offsets below {}: \
             committed offsets in between are missing",
            loaded.covered
        )));
    }
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
/// durable checkpoint allows. Called with the writer lock held: nothing appends to or rotates `wal`
/// meanwhile.
fn delete_below(wal: &PartitionWal, below: i64) -> Result<TrimOutcome, chronik_wal::Error> {
    let outcome = wal.delete_segments_below(below)?;
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

    /// A committed offset without epoch or metadata.
    fn c(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: -1,
            metadata: None,
        }
    }

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
    fn queued_commits_are_stored_in_queue_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).expect("wal"));
        let offsets = Offsets::open(&wal).expect("open");
        // Queued without waiting, as a connection pipelining commits does; answered in any order.
        let tickets: Vec<_> = (0..500)
            .map(|i| offsets.queue_commit("g", vec![("t".into(), 0, c(i))]))
            .collect();
        for ticket in tickets.into_iter().rev() {
            ticket.wait_blocking().expect("durable");
        }
        assert_eq!(offsets.get("g", "t", 0), Some(c(499)));
        let log = wal
            .partition(&TopicPartition::new(OFFSETS_TOPIC, 0))
            .expect("offsets log");
        assert_eq!(log.high_watermark(), 500, "one record per commit");
        drop(offsets);
        let offsets = Offsets::open(&wal).expect("reopen");
        assert_eq!(
            offsets.get("g", "t", 0),
            Some(c(499)),
            "the log holds them in queue order"
        );
    }

    #[test]
    fn recovery_starts_from_the_latest_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
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
