//! `WalManager`: the set of partition logs under one root directory, their recovery on open, and the
//! background work (interval syncs and checkpoints).
//!
//! Layout under the root: `checkpoint`, `LOCK`, and `partitions/<topic>-<partition>/` holding segments.
//! Partitions live in a `DashMap`; each has its own locks, so nothing here serialises appends across
//! partitions. Creating and deleting partitions (rare, administrative) take one `admin` lock.
//!
//! # Offline partitions
//! Opening the WAL never fails because of one partition. A partition directory recovery cannot load (an
//! I/O error such as EMFILE or EACCES, a directory where a segment file should be, or damage that leaves
//! nothing to serve) is *offline*: listed in [`RecoveryReport::offline`] and
//! [`WalManager::offline_partitions`] with the error, not in [`WalManager::partitions`]. Invariants:
//! - its directory is left as it is: nothing creates a partition over it ([`WalManager::create_partition`]
//!   fails with [`Error::PartitionOffline`]), and every call naming it gets that error, not
//!   `UnknownPartition`, so that a caller cannot take it for a partition that is missing;
//! - its entry of the checkpoint recovery read is kept in every checkpoint written while it is offline
//!   (as for a refused partition, see `Shared::refused_claims`), so that the next open, with the cause
//!   removed, recovers it against what that checkpoint vouched for;
//! - [`WalManager::delete_partition`] deletes it like any other (its claim goes with it).
//!
//! What an offline partition means to the program on top (an internal partition it cannot do without) is
//! the program's decision: the WAL only reports it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};
use tracing::{info, warn};

use crate::{
    checkpoint,
    config::{SyncPolicy, WalConfig},
    io::{self, parent, WalIo},
    journal::Journal,
    metrics,
    partition::{AppendResult, CheckpointEntry, PartitionWal},
    prealloc::PreallocQueue,
    recovery::{is_partition_file, recover_partition, RecoveryStats},
    segment::Segment,
    Batch, Error, Result, StoredBatch, TopicPartition, WalContext,
};

const PARTITIONS_DIR: &str = "partitions";
const JOURNAL_DIR: &str = "journal";
const CREATING_SUFFIX: &str = ".creating";
const DELETING_SUFFIX: &str = ".deleting";
/// How often the background thread looks at the journal's size.
const JOURNAL_TRIM_POLL: Duration = Duration::from_millis(200);
/// Progress is logged every this many partitions during recovery.
const RECOVERY_PROGRESS_EVERY: usize = 100;

/// A partition's name as `checkpoint_names` holds it: a hash with fixed keys, the same every run.
fn name_hash(tp: &TopicPartition) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(tp)
}

/// A partition recovery made, with what it took, or why it could not.
type Loaded = Result<(Arc<PartitionWal>, RecoveryStats)>;

/// What recovery found when the manager opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub partitions: usize,
    pub stats: RecoveryStats,
    /// Partitions with damage in acknowledged data: served up to the damage, refusing appends (or offline,
    /// if nothing of them could be served).
    pub corrupt: Vec<(TopicPartition, String)>,
    /// Partitions recovery could not load, sorted: not served until the WAL is opened again with the cause
    /// removed (see the module docs).
    pub offline: Vec<OfflinePartition>,
    pub used_checkpoint: bool,
    pub duration: Duration,
}

/// A partition recovery could not load, and why.
#[derive(Debug, Clone)]
pub struct OfflinePartition {
    pub tp: TopicPartition,
    /// The error recovery met ([`Error::Io`] for a file it could not open, [`Error::Corrupt`] for damage).
    pub cause: Arc<Error>,
}

/// What [`WalManager::heal`] found and did.
#[derive(Debug, Clone)]
pub enum Healed {
    /// The handle was healthy: nothing was done.
    Healthy(Arc<PartitionWal>),
    /// Another caller had reopened the partition already: its handle.
    Replaced(Arc<PartitionWal>),
    /// This call reopened the partition from disk: the new handle.
    Reopened(Arc<PartitionWal>),
}

impl Healed {
    /// The handle to append through now.
    pub fn handle(&self) -> &Arc<PartitionWal> {
        match self {
            Healed::Healthy(p) | Healed::Replaced(p) | Healed::Reopened(p) => p,
        }
    }
}

/// What a checkpoint covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSummary {
    pub partitions: usize,
}

struct Shared {
    ctx: Arc<WalContext>,
    root: PathBuf,
    partitions_dir: PathBuf,
    partitions: DashMap<TopicPartition, Arc<PartitionWal>>,
    admin: Mutex<()>,
    /// Serialises [`WalManager::heal`], so that callers sharing a failed handle reopen it once.
    heal_lock: Mutex<()>,
    checkpoint_lock: Mutex<()>,
    /// Checkpoint entries of partitions recovery could not load (damage in what a checkpoint vouched for,
    /// or files it could not open): kept in every later checkpoint, or the next recovery would take the
    /// damage for a torn tail and cut acknowledged data (fuzz regression
    /// `checkpoint-claim-of-a-refused-partition`), or recover a partition offline now without its claim.
    refused_claims: Mutex<Vec<CheckpointEntry>>,
    /// Partitions recovery could not load, with the error: never loaded, created or recreated until the WAL
    /// is opened again. Only `delete_partition` removes one.
    offline: Mutex<BTreeMap<TopicPartition, Arc<Error>>>,
    /// Hashes of the partitions a durable checkpoint file may name: the last one written, and after a
    /// failed write also the one before (either may be the durable one). A creation checks here, not in
    /// the file, whether a checkpoint could recover the new partition against a deleted one's entry:
    /// reading the file for every creation made creating many partitions quadratic. A hash collision
    /// only costs a rewrite.
    checkpoint_names: Mutex<HashSet<u64>>,
}

/// The WAL of a broker: one [`PartitionWal`] per topic-partition.
pub struct WalManager {
    shared: Arc<Shared>,
    report: RecoveryReport,
    stop: Arc<(Mutex<bool>, Condvar)>,
    background: Mutex<Option<JoinHandle<()>>>,
    preparer: Mutex<Option<JoinHandle<()>>>,
    journal_writer: Mutex<Option<JoinHandle<()>>>,
    _lock: Box<dyn fmt::Debug + Send + Sync>,
}

impl fmt::Debug for WalManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalManager")
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl WalManager {
    /// Opens (creating if needed) the WAL under `root` on the real file system and recovers every partition.
    /// The I/O backend is built from `config.io_backend` (see [`IoBackend`](crate::IoBackend)); an
    /// explicit `io_uring` the kernel refuses fails with [`Error::IoBackendUnavailable`].
    pub fn open(root: impl Into<PathBuf>, config: WalConfig) -> Result<Self> {
        config.validate()?;
        let io = io::select(config.io_backend)?;
        Self::open_with_io(root, config, io)
    }

    /// Like [`WalManager::open`], with a given I/O backend (`config.io_backend` is then ignored).
    pub fn open_with_io(root: impl Into<PathBuf>, config: WalConfig, io: Arc<dyn WalIo>) -> Result<Self> {
        config.validate()?;
        let root = root.into();
        let partitions_dir = root.join(PARTITIONS_DIR);
        io.create_dir_all(&partitions_dir)
            .map_err(|e| Error::io("creating", &partitions_dir, e))?;
        // A directory entry is durable only once its parent is synced. Recovery serves (and appends to)
        // what it finds, so what it finds must be durable: `partitions/` itself, and the partition
        // directories in it, whose renames a failed create or delete may have left unsynced.
        for dir in [partitions_dir.as_path(), root.as_path(), parent(&root)] {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            io.sync_dir(dir)
                .map_err(|e| Error::io("syncing directory", dir, e))?;
        }
        let lock = io
            .lock_dir(&root)
            .map_err(|e| Error::io("locking (is another broker using it?)", &root, e))?;
        let mut config = config;
        // Nothing waits on a segment's fdatasync with the journal: zeros ahead of it would buy nothing.
        if config.journal {
            config.preallocate_bytes = 0;
        }
        let (journal, replayed) = Journal::open(
            Arc::clone(&io),
            root.join(JOURNAL_DIR),
            partitions_dir.clone(),
            config.journal_file_bytes,
            config.journal,
            // As many as recover partitions: one in the deterministic mode.
            config.recovery_threads,
            config.journal_min_groups,
        )?;
        let ctx = Arc::new(WalContext {
            files: io::FileCache::new(Arc::clone(&io), config.max_open_files),
            io,
            journal: journal.map(Arc::new),
            config,
            prealloc: PreallocQueue::default(),
            read_buffers: Default::default(),
        });
        let shared = Arc::new(Shared {
            ctx,
            root,
            partitions_dir,
            partitions: DashMap::new(),
            admin: Mutex::new(()),
            heal_lock: Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
            refused_claims: Mutex::new(Vec::new()),
            offline: Mutex::new(BTreeMap::new()),
            checkpoint_names: Mutex::new(HashSet::new()),
        });
        let report = shared.recover_all(replayed.failed)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let background = start_background(&shared, &stop)?;
        let preparer = start_preparer(&shared)?;
        let journal_writer = start_journal_writer(&shared)?;
        Ok(Self {
            shared,
            report,
            stop,
            background: Mutex::new(background),
            preparer: Mutex::new(preparer),
            journal_writer: Mutex::new(journal_writer),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    pub fn config(&self) -> &WalConfig {
        &self.shared.ctx.config
    }

    /// The I/O the WAL runs on: what its neighbours in the data directory (small state files) should use
    /// too, so that they see the same disk (and, in tests, the same injected faults).
    pub fn io(&self) -> &Arc<dyn WalIo> {
        &self.shared.ctx.io
    }

    /// Name of the I/O backend in use ("std", "io_uring", ...): the one that runs, not the one configured.
    pub fn io_backend(&self) -> &'static str {
        self.shared.ctx.io.name()
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Creates an empty partition whose first offset is 0.
    pub fn create_partition(&self, tp: &TopicPartition) -> Result<Arc<PartitionWal>> {
        self.create_partition_at(tp, 0)
    }

    /// Creates an empty partition whose first offset is `log_start_offset`.
    pub fn create_partition_at(
        &self,
        tp: &TopicPartition,
        log_start_offset: i64,
    ) -> Result<Arc<PartitionWal>> {
        tp.validate()?;
        if log_start_offset < 0 {
            return Err(Error::InvalidArgument(format!(
                "log start offset {log_start_offset} is negative"
            )));
        }
        let _admin = self.shared.admin.lock();
        if self.shared.partitions.contains_key(tp) {
            return Err(Error::PartitionExists(tp.clone()));
        }
        // Its directory holds data this process could not open: never created over.
        self.shared.require_online(tp)?;
        let io = &*self.shared.ctx.io;
        let dir = self.shared.partitions_dir.join(tp.dir_name());
        let staging = self
            .shared
            .partitions_dir
            .join(format!("{}{CREATING_SUFFIX}", tp.dir_name()));
        if io.exists(&dir).map_err(|e| Error::io("checking", &dir, e))? {
            return Err(Error::PartitionExists(tp.clone()));
        }
        self.shared.forget_in_checkpoint(tp)?;
        self.shared.forget_in_journal(tp)?;
        remove_dir_with_files(io, &staging)?;
        let made = (|| {
            io.create_dir_all(&staging)
                .map_err(|e| Error::io("creating", &staging, e))?;
            drop(Segment::create(
                &self.shared.ctx.files,
                &staging,
                log_start_offset,
                self.shared.ctx.config.index_interval_bytes,
            )?);
            io.rename(&staging, &dir)
                .map_err(|e| Error::io("renaming", &staging, e))?;
            let parent_dir = &self.shared.partitions_dir;
            io.sync_dir(parent_dir)
                .map_err(|e| Error::io("syncing directory", parent_dir, e))?;
            Ok(self.shared.load_partition(tp, &dir, None, false)?.0)
        })();
        let partition = match made {
            Ok(partition) => partition,
            Err(e) => {
                self.shared.abandon_creation(tp, &staging, &dir);
                return Err(e);
            }
        };
        self.shared.partitions.insert(tp.clone(), Arc::clone(&partition));
        info!(topic = %tp.topic, partition = tp.partition, log_start_offset, "WAL partition created");
        Ok(partition)
    }

    /// The partition, creating it (from offset 0) if it does not exist.
    pub fn get_or_create_partition(&self, tp: &TopicPartition) -> Result<Arc<PartitionWal>> {
        if let Some(p) = self.partition(tp) {
            return Ok(p);
        }
        match self.create_partition(tp) {
            Err(Error::PartitionExists(_)) => self
                .partition(tp)
                .ok_or_else(|| Error::UnknownPartition(tp.clone())),
            other => other,
        }
    }

    pub fn partition(&self, tp: &TopicPartition) -> Option<Arc<PartitionWal>> {
        self.shared.partitions.get(tp).map(|p| Arc::clone(&p))
    }

    fn require(&self, tp: &TopicPartition) -> Result<Arc<PartitionWal>> {
        match self.partition(tp) {
            Some(p) => Ok(p),
            None => {
                self.shared.require_online(tp)?;
                Err(Error::UnknownPartition(tp.clone()))
            }
        }
    }

    /// Partitions recovery could not load when the WAL opened, with the error, sorted (see the module
    /// docs). Not in [`WalManager::partitions`].
    pub fn offline_partitions(&self) -> Vec<OfflinePartition> {
        self.shared
            .offline
            .lock()
            .iter()
            .map(|(tp, cause)| OfflinePartition {
                tp: tp.clone(),
                cause: Arc::clone(cause),
            })
            .collect()
    }

    /// The error that keeps `tp` offline, if it is.
    pub fn offline_cause(&self, tp: &TopicPartition) -> Option<Arc<Error>> {
        self.shared.offline.lock().get(tp).cloned()
    }

    /// Loaded partitions, sorted (offline ones are not: see [`WalManager::offline_partitions`]).
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let mut all: Vec<TopicPartition> = self.shared.partitions.iter().map(|e| e.key().clone()).collect();
        all.sort();
        all
    }

    /// How many partitions the WAL holds open (internal ones included; offline ones are not).
    pub fn partition_count(&self) -> usize {
        self.shared.partitions.len()
    }

    /// Deletes a partition and its files durably. Appends and waits on it fail from now on. An offline
    /// partition is deleted too, and its kept checkpoint entry dropped.
    pub fn delete_partition(&self, tp: &TopicPartition) -> Result<()> {
        let _admin = self.shared.admin.lock();
        let dir = match self.shared.partitions.remove(tp) {
            Some((_, partition)) => {
                partition.close_for_delete();
                partition.dir().to_path_buf()
            }
            None if self.shared.offline.lock().contains_key(tp) => {
                self.shared.partitions_dir.join(tp.dir_name())
            }
            None => return Err(Error::UnknownPartition(tp.clone())),
        };
        let io = &*self.shared.ctx.io;
        let doomed = self
            .shared
            .partitions_dir
            .join(format!("{}{DELETING_SUFFIX}", tp.dir_name()));
        // One rename makes the deletion atomic; recovery finishes a removal a crash interrupted.
        io.rename(&dir, &doomed)
            .map_err(|e| Error::io("renaming", &dir, e))?;
        // Gone as a partition from here on (a crash now finishes the deletion at the next open). A claim
        // still in a checkpoint names no directory and is dropped by the next one.
        if self.shared.offline.lock().remove(tp).is_some() {
            self.shared.refused_claims.lock().retain(|c| &c.tp != tp);
        }
        let parent_dir = &self.shared.partitions_dir;
        io.sync_dir(parent_dir)
            .map_err(|e| Error::io("syncing directory", parent_dir, e))?;
        remove_dir_with_files(io, &doomed)?;
        io.sync_dir(parent_dir)
            .map_err(|e| Error::io("syncing directory", parent_dir, e))?;
        info!(topic = %tp.topic, partition = tp.partition, "WAL partition deleted");
        Ok(())
    }

    /// The handle to use after `p` failed (a failed write or fdatasync poisons a partition, a reopen that
    /// failed half way leaves it closed): the one the WAL holds now if it is healthy, `p` itself or a
    /// handle another caller already reopened; else the partition is reopened from disk
    /// ([`WalManager::reopen_partition`], cutting what was never durable). Callers holding the same failed
    /// handle get one reopen between them, whoever comes first. A deleted partition is an error.
    pub fn heal(&self, p: &Arc<PartitionWal>) -> Result<Healed> {
        self.heal_with(p, || ()).map(|(healed, _)| healed)
    }

    /// [`WalManager::heal`], running `before_reopen` first if this call is the one that reopens (while
    /// the partition still refuses appends, and no other heal can run): its result comes back with the
    /// new handle.
    pub fn heal_with<T>(
        &self,
        p: &Arc<PartitionWal>,
        before_reopen: impl FnOnce() -> T,
    ) -> Result<(Healed, Option<T>)> {
        let _serial = self.shared.heal_lock.lock();
        let tp = p.topic_partition();
        let current = self.require(tp)?;
        let healthy = !current.is_poisoned() && !current.is_closed();
        Ok(match (healthy, Arc::ptr_eq(&current, p)) {
            (true, true) => (Healed::Healthy(current), None),
            (true, false) => (Healed::Replaced(current), None),
            (false, _) => {
                let prepared = before_reopen();
                (Healed::Reopened(self.reopen_partition(tp)?), Some(prepared))
            }
        })
    }

    /// Drops a partition's in-memory state and recovers it from disk: the way out of a poisoned state.
    /// The new handle keeps the partition's own rotation settings ([`PartitionWal::set_rotation`]).
    pub fn reopen_partition(&self, tp: &TopicPartition) -> Result<Arc<PartitionWal>> {
        let _admin = self.shared.admin.lock();
        // No checkpoint meanwhile: the new handle is recovered against the old one's claim (see
        // `checkpoint_claim`), which must still be the durable one when it takes over.
        let _checkpoints = self.shared.checkpoint_lock.lock();
        let old = self.require(tp)?;
        old.close_for_delete();
        old.discard_unsynced()?;
        // What only the journal holds goes back into the segments first, as at start.
        if let Some(journal) = &self.shared.ctx.journal {
            journal
                .replay_partition(tp)
                .inspect_err(|_| old.give_up_unsynced())?;
        }
        // Recovered against what the last checkpoint vouched for, as at start.
        let claim = old.checkpoint_claim();
        let (partition, _) = self
            .shared
            .load_partition(tp, old.dir(), claim.as_ref(), true)
            .inspect_err(|_| old.give_up_unsynced())?;
        // The partition's own rotation settings live in memory only: the new handle keeps them.
        partition
            .set_rotation(old.rotation())
            .inspect_err(|_| old.give_up_unsynced())?;
        self.shared.partitions.insert(tp.clone(), Arc::clone(&partition));
        info!(topic = %tp.topic, partition = tp.partition, high_watermark = partition.high_watermark(),
            "WAL partition reopened");
        Ok(partition)
    }

    /// Cuts the partition's log back to `offset`, durably: every batch from `offset` on is gone, and the
    /// next append gets `offset`. `offset` must start a batch (or be the end of the log) and not lie
    /// below the log start. For a log whose tail conflicts with another copy (a Raft follower, a
    /// replica under a new leader); the caller appends nothing to the partition meanwhile (appends that
    /// race it fail). Returns the partition's new handle.
    ///
    /// Crash safety: everything written is synced first, and the partition's checkpoint entry and
    /// journal records are dropped (either could otherwise bring the cut bytes back, or make recovery
    /// refuse the shorter files); the files are then cut newest first, each step durable before the
    /// next. A crash leaves the log cut somewhere from `offset` to its old end, never with a hole.
    pub fn truncate_to(&self, tp: &TopicPartition, offset: i64) -> Result<Arc<PartitionWal>> {
        let _admin = self.shared.admin.lock();
        let old = self.require(tp)?;
        old.cut_point(offset)?;
        // The batches kept must be durable before the log may end after them.
        old.sync()?;
        self.shared.forget_in_journal(tp)?;
        // No retention pass deleting through the old handle's segment list, and no checkpoint (one
        // running would hand the old handle back the claim being dropped) until the new handle is in.
        let _retention = old.retention_guard();
        let _checkpoints = self.shared.checkpoint_lock.lock();
        old.close_for_delete();
        old.hide_from(offset);
        let cut = (|| {
            old.discard_unsynced()?;
            let journal = self.shared.ctx.journal.as_ref();
            if journal.is_some_and(|j| j.has_records_of(tp)) {
                // Appended between the sync and the close, against this method's contract.
                return Err(Error::InvalidArgument(format!(
                    "{tp} was appended to while being truncated"
                )));
            }
            old.forget_checkpoint_claim();
            self.shared.forget_in_checkpoint_locked(tp)?;
            old.cut_files_at(offset)
        })();
        // Loaded from disk either way: cut, or as far as the cut got (a prefix of the old log), with no
        // checkpoint entry (none vouches for it now): every segment is validated.
        let loaded = self.shared.load_partition(tp, old.dir(), None, true);
        // If that fails the old handle stays, closed: a reopen (or restart) loads the partition again.
        // Not `give_up_unsynced`: its cut back to the old handle's durable length would undo this one.
        let (partition, cut) = match (loaded, cut) {
            (Ok((partition, _)), cut) => (partition, cut),
            (Err(e), Ok(())) | (Err(_), Err(e)) => return Err(e),
        };
        partition.set_rotation(old.rotation())?;
        self.shared.partitions.insert(tp.clone(), Arc::clone(&partition));
        cut?;
        Ok(partition)
    }

    pub fn append(&self, tp: &TopicPartition, batch: Batch) -> Result<AppendResult> {
        self.require(tp)?.append(batch)
    }

    pub fn read(&self, tp: &TopicPartition, from_offset: i64, max_bytes: u64) -> Result<Vec<StoredBatch>> {
        self.require(tp)?.read(from_offset, max_bytes)
    }

    pub fn high_watermark(&self, tp: &TopicPartition) -> Result<i64> {
        Ok(self.require(tp)?.high_watermark())
    }

    pub fn log_start_offset(&self, tp: &TopicPartition) -> Result<i64> {
        Ok(self.require(tp)?.log_start_offset())
    }

    pub fn offset_for_timestamp(&self, tp: &TopicPartition, timestamp: i64) -> Result<Option<(i64, i64)>> {
        self.require(tp)?.offset_for_timestamp(timestamp)
    }

    /// Writes a checkpoint now.
    pub fn checkpoint(&self) -> Result<CheckpointSummary> {
        self.shared.checkpoint()
    }

    /// With the journal: fdatasyncs every partition with records in the journal and deletes the journal
    /// files that held them (see `journal/`). Returns the files deleted. Runs in the background by
    /// itself; a test may run it at a chosen point.
    pub fn trim_journal(&self) -> Result<usize> {
        self.shared.trim_journal()
    }

    /// Syncs every partition.
    pub fn sync_all(&self) -> Result<()> {
        for p in self.all_partitions() {
            p.sync()?;
        }
        Ok(())
    }

    fn all_partitions(&self) -> Vec<Arc<PartitionWal>> {
        self.shared.sorted_partitions()
    }

    /// Stops background work, syncs every partition and writes a final checkpoint.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// With `WalConfig::preallocate_manually`: runs up to `steps` queued preallocation steps on this thread
    /// (each zero-fills one step, or creates the next segment's file, for one partition, and may queue
    /// the next); returns how many ran. Otherwise the preparer thread does this and nothing runs here.
    #[cfg(feature = "testkit")]
    pub fn run_preallocation(&self, steps: usize) -> usize {
        if !self.shared.ctx.config.preallocate_manually {
            return 0;
        }
        let mut ran = 0;
        while ran < steps {
            let Some(tp) = self.shared.ctx.prealloc.try_next() else {
                break;
            };
            if let Some(p) = self.partition(&tp) {
                p.prepare_ahead();
            }
            ran += 1;
        }
        ran
    }

    /// [`WalManager::close`] for a manager shared behind an `Arc`: after it returns, appends still work
    /// but are no longer checkpointed, nor given preallocated space, in the background.
    pub fn shutdown(&self) -> Result<()> {
        self.stop_background();
        let mut first_error = None;
        for p in self.all_partitions() {
            if p.is_closed() {
                // A failed reopen whose cut of unsynced bytes failed as well: the restart must not find them.
                if let Err(e) = p.discard_unsynced() {
                    warn!(topic = %p.topic_partition().topic, partition = p.topic_partition().partition,
                        error = %e, "cutting unsynced bytes at close failed");
                    first_error.get_or_insert(e);
                }
                continue;
            }
            if let Err(e) = p.sync() {
                warn!(topic = %p.topic_partition().topic, partition = p.topic_partition().partition, error = %e,
                    "sync at close failed");
                first_error.get_or_insert(e);
            }
        }
        self.shared.checkpoint()?;
        if first_error.is_none() {
            // Every partition is synced: the journal holds nothing a restart needs.
            self.shared.trim_journal()?;
        }
        first_error.map_or(Ok(()), Err)
    }

    fn stop_background(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(handle) = self.background.lock().take() {
            if handle.join().is_err() {
                warn!("WAL background thread panicked");
            }
        }
        self.shared.ctx.prealloc.stop();
        if let Some(handle) = self.preparer.lock().take() {
            if handle.join().is_err() {
                warn!("WAL preallocation thread panicked");
            }
        }
        if let Some(journal) = &self.shared.ctx.journal {
            journal.stop_writer();
        }
        if let Some(handle) = self.journal_writer.lock().take() {
            if handle.join().is_err() {
                warn!("WAL journal thread panicked");
            }
        }
    }
}

impl Drop for WalManager {
    /// Stops the background thread. Does not sync: use [`WalManager::close`] for a clean shutdown.
    fn drop(&mut self) {
        self.stop_background();
    }
}

impl Shared {
    /// Removes what a failed [`WalManager::create_partition_at`] made (the staging directory, or the
    /// partition directory it was renamed to), so that a failed creation leaves nothing behind. Best
    /// effort: what cannot be removed now (the failure may be the file limit itself) is a `.creating` or
    /// `.deleting` leftover, or a partition no topic claims, all of which the next start removes.
    fn abandon_creation(&self, tp: &TopicPartition, staging: &Path, dir: &Path) {
        let io = &*self.ctx.io;
        if let Err(e) = remove_dir_with_files(io, staging) {
            warn!(topic = %tp.topic, partition = tp.partition, error = %e,
                "could not remove the staging directory of a failed partition creation");
        }
        // A directory renamed into place stays: what of it is durable is unknown after the failure (its
        // own fdatasync may be what failed), and removing it then let a power cut leave the partition's
        // directory without its segment (crash simulation, seed 88348). The next start loads it, empty.
        if matches!(io.exists(dir), Ok(true)) {
            warn!(topic = %tp.topic, partition = tp.partition,
                "the directory of a failed partition creation is left for the next start");
        }
    }

    /// `replay_failed`: partitions whose journal records could not be written back; recovered without
    /// them they would lose acknowledged data, so they are offline.
    fn recover_all(&self, mut replay_failed: HashMap<TopicPartition, Error>) -> Result<RecoveryReport> {
        let started = Instant::now();
        let io = &*self.ctx.io;
        let checkpoint = match checkpoint::read(io, &self.root) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "ignoring unreadable checkpoint; validating the whole log");
                metrics::error(e.kind_label());
                None
            }
        };
        let by_tp: HashMap<TopicPartition, CheckpointEntry> = checkpoint
            .iter()
            .flatten()
            .map(|e| (e.tp.clone(), e.clone()))
            .collect();
        *self.checkpoint_names.lock() = by_tp.keys().map(name_hash).collect();
        let mut report = RecoveryReport {
            used_checkpoint: checkpoint.is_some(),
            ..Default::default()
        };
        let entries = io
            .list_dir(&self.partitions_dir)
            .map_err(|e| Error::io("listing", &self.partitions_dir, e))?;
        let mut dirs = Vec::new();
        for entry in entries.into_iter().filter(|e| e.is_dir) {
            let path = self.partitions_dir.join(&entry.name);
            if entry.name.ends_with(CREATING_SUFFIX) || entry.name.ends_with(DELETING_SUFFIX) {
                // Not a partition any more: one that cannot be removed now is left for the next open.
                if let Err(e) = remove_dir_with_files(io, &path) {
                    warn!(dir = %path.display(), error = %e, "leftover of a create or delete not removed");
                    metrics::error(e.kind_label());
                }
                continue;
            }
            match TopicPartition::from_dir_name(&entry.name) {
                Some(tp) => dirs.push((tp, path)),
                None => warn!(dir = %path.display(), "ignoring directory that does not name a partition"),
            }
        }
        dirs.sort();
        let total = dirs.len();
        let loaded = self.load_all(&dirs, &by_tp, &replay_failed);
        for ((tp, _), loaded) in dirs.into_iter().zip(loaded) {
            let loaded = match replay_failed.remove(&tp) {
                Some(e) => Err(e),
                None => loaded,
            };
            let (partition, stats) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    // Nothing of it can be served; the others still can. Its directory stays for an operator,
                    // and its checkpoint entry for the open that recovers it.
                    warn!(topic = %tp.topic, partition = tp.partition, error = %e,
                        "WAL partition offline: could not be opened");
                    metrics::error(e.kind_label());
                    metrics::error("offline");
                    if let Some(claim) = by_tp.get(&tp) {
                        self.refused_claims.lock().push(claim.clone());
                    }
                    if matches!(e, Error::Corrupt { .. }) {
                        report.corrupt.push((tp.clone(), e.to_string()));
                    }
                    let cause = Arc::new(e);
                    self.offline.lock().insert(tp.clone(), Arc::clone(&cause));
                    report.offline.push(OfflinePartition { tp, cause });
                    continue;
                }
            };
            report.stats.add(&stats);
            info!(topic = %tp.topic, partition = tp.partition, segments = stats.segments,
                next_offset = partition.high_watermark(), bytes_scanned = stats.bytes_scanned,
                truncated_bytes = stats.truncated_bytes, corrupt = partition.corruption().is_some(),
                "WAL recovered partition");
            if let Some(e) = partition.corruption() {
                report.corrupt.push((tp.clone(), e.to_string()));
            }
            self.partitions.insert(tp, partition);
        }
        report.partitions = total;
        report.duration = started.elapsed();
        metrics::recovery(
            report.duration,
            report.stats.bytes_scanned,
            report.stats.truncated_bytes,
        );
        info!(
            partitions = total,
            segments = report.stats.segments,
            bytes_scanned = report.stats.bytes_scanned,
            truncated_bytes = report.stats.truncated_bytes,
            corrupt_partitions = report.corrupt.len(),
            offline_partitions = report.offline.len(),
            used_checkpoint = report.used_checkpoint,
            duration_ms = report.duration.as_millis() as u64,
            "WAL recovery finished"
        );
        Ok(report)
    }

    /// Recovers the partitions in `dirs` on `recovery_threads` threads; the results in `dirs` order.
    fn load_all(
        &self,
        dirs: &[(TopicPartition, PathBuf)],
        checkpoint: &HashMap<TopicPartition, CheckpointEntry>,
        skip: &HashMap<TopicPartition, Error>,
    ) -> Vec<Loaded> {
        let total = dirs.len();
        let done = AtomicUsize::new(0);
        let scanned = AtomicU64::new(0);
        let load = |(tp, dir): &(TopicPartition, PathBuf)| {
            if skip.contains_key(tp) {
                return Err(Error::InvalidArgument(format!("{tp}: journal replay failed")));
            }
            let loaded = self.load_partition(tp, dir, checkpoint.get(tp), false);
            if let Ok((_, stats)) = &loaded {
                scanned.fetch_add(stats.bytes_scanned, Ordering::Relaxed);
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(RECOVERY_PROGRESS_EVERY) {
                info!(
                    done = n,
                    total,
                    bytes_scanned = scanned.load(Ordering::Relaxed),
                    "WAL recovery progress"
                );
            }
            loaded
        };
        let threads = self.ctx.config.recovery_threads.clamp(1, total.max(1));
        if threads == 1 {
            return dirs.iter().map(load).collect();
        }
        let next = AtomicUsize::new(0);
        let mut results: Vec<Option<Loaded>> = (0..total).map(|_| None).collect();
        thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(entry) = dirs.get(i) else { break };
                            mine.push((i, load(entry)));
                        }
                        mine
                    })
                })
                .collect();
            for worker in workers {
                // A panic in a worker is re-raised here, as it would be on this thread.
                let mine = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                for (i, loaded) in mine {
                    results[i] = Some(loaded);
                }
            }
        });
        results.into_iter().flatten().collect()
    }

    /// `after_failure`: see [`recover_partition`].
    fn load_partition(
        &self,
        tp: &TopicPartition,
        dir: &Path,
        checkpoint: Option<&CheckpointEntry>,
        after_failure: bool,
    ) -> Loaded {
        let (recovered, stats) = recover_partition(&self.ctx, dir, checkpoint, after_failure)?;
        let partition = Arc::new(PartitionWal::new(
            tp.clone(),
            dir.to_path_buf(),
            Arc::clone(&self.ctx),
            recovered,
        )?);
        partition.register();
        // The checkpoint recovery used is durable: it covers what it covers, as a newly written one would.
        if let Some(entry) = checkpoint {
            partition.checkpoint_written(entry);
        }
        Ok((partition, stats))
    }

    fn checkpoint(&self) -> Result<CheckpointSummary> {
        let _serial = self.checkpoint_lock.lock();
        let mut entries: Vec<CheckpointEntry> = self
            .sorted_partitions()
            .iter()
            .filter_map(|p| p.checkpoint_entry())
            .collect();
        entries.extend(
            self.refused_claims
                .lock()
                .iter()
                .filter(|c| !self.partitions.contains_key(&c.tp))
                .cloned(),
        );
        entries.sort_by(|a, b| a.tp.cmp(&b.tp));
        self.write_checkpoint(&entries)?;
        for entry in &entries {
            if let Some(p) = self.partitions.get(&entry.tp) {
                p.checkpoint_written(entry);
            }
        }
        metrics::checkpoint();
        info!(partitions = entries.len(), "checkpoint written");
        Ok(CheckpointSummary {
            partitions: entries.len(),
        })
    }

    /// Trims the journal (see [`WalManager::trim_journal`]): a partition is synced through the handle
    /// the WAL holds now; one offline cannot be, and keeps the files. One deleted needs nothing once its
    /// deletion is durable: its directory gone by that name, and the rename that took it away synced (a
    /// deletion that failed half-way may have left it unsynced, and a power cut would bring the directory
    /// back without what only the journal held: crash simulation, seed 17011).
    fn trim_journal(&self) -> Result<usize> {
        let Some(journal) = &self.ctx.journal else {
            return Ok(0);
        };
        let dir_synced = std::sync::atomic::AtomicBool::new(false);
        journal.trim(&|tp| match self.partitions.get(tp).map(|p| Arc::clone(&p)) {
            Some(p) => p.sync(),
            None => {
                self.require_online(tp)?;
                let io = &*self.ctx.io;
                let dir = self.partitions_dir.join(tp.dir_name());
                if io.exists(&dir).map_err(|e| Error::io("checking", &dir, e))? {
                    return Err(Error::UnknownPartition(tp.clone()));
                }
                if !dir_synced.load(Ordering::Acquire) {
                    io.sync_dir(&self.partitions_dir)
                        .map_err(|e| Error::io("syncing directory", &self.partitions_dir, e))?;
                    dir_synced.store(true, Ordering::Release);
                }
                Ok(())
            }
        })
    }

    /// Makes sure no journal file holds records of a deleted partition named `tp`, which a replay would
    /// write into a new partition of that name.
    fn forget_in_journal(&self, tp: &TopicPartition) -> Result<()> {
        let Some(journal) = &self.ctx.journal else {
            return Ok(());
        };
        if !journal.has_records_of(tp) {
            return Ok(());
        }
        self.trim_journal()?;
        if journal.has_records_of(tp) {
            return Err(Error::io(
                "trimming",
                self.root.join(JOURNAL_DIR),
                std::io::Error::other(format!(
                    "the journal still holds records of a deleted partition {tp}: a partition of that name cannot be created yet"
                )),
            ));
        }
        Ok(())
    }

    /// `Err(PartitionOffline)` if `tp` is offline.
    fn require_online(&self, tp: &TopicPartition) -> Result<()> {
        match self.offline.lock().get(tp) {
            Some(cause) => Err(Error::PartitionOffline {
                tp: tp.clone(),
                cause: Arc::clone(cause),
            }),
            None => Ok(()),
        }
    }

    /// Makes sure the durable checkpoint has no entry for `tp`. A partition deleted since that checkpoint
    /// keeps its entry there; a new partition of the same name must not be recovered against the old
    /// one's segments and durable length.
    fn forget_in_checkpoint(&self, tp: &TopicPartition) -> Result<()> {
        let _serial = self.checkpoint_lock.lock();
        self.forget_in_checkpoint_locked(tp)
    }

    /// [`Shared::forget_in_checkpoint`] with `checkpoint_lock` held by the caller.
    fn forget_in_checkpoint_locked(&self, tp: &TopicPartition) -> Result<()> {
        self.refused_claims.lock().retain(|c| &c.tp != tp);
        if !self.checkpoint_names.lock().contains(&name_hash(tp)) {
            return Ok(());
        }
        let io = &*self.ctx.io;
        let entries = match checkpoint::read(io, &self.root) {
            Ok(Some(entries)) => entries,
            // Checkpoint files are only ever replaced, never removed: none now means none on disk. A
            // damaged one is ignored by recovery.
            Ok(None) | Err(Error::Corrupt { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        // The file read may be the rename of a checkpoint whose directory sync failed, with an older file
        // naming `tp` still the durable one: written again without it, the one on disk is durable.
        let kept: Vec<CheckpointEntry> = entries.into_iter().filter(|e| e.tp != *tp).collect();
        self.write_checkpoint(&kept)
    }

    /// Writes a checkpoint of `entries` and records the names it holds (see `checkpoint_names`).
    fn write_checkpoint(&self, entries: &[CheckpointEntry]) -> Result<()> {
        let result = checkpoint::write(&*self.ctx.io, &self.root, entries);
        let mut names = self.checkpoint_names.lock();
        match &result {
            Ok(()) => *names = entries.iter().map(|e| name_hash(&e.tp)).collect(),
            Err(e) => {
                metrics::error(e.kind_label());
                names.extend(entries.iter().map(|e| name_hash(&e.tp)));
            }
        }
        result
    }

    /// In topic-partition order, so that the file operations of a checkpoint or a shutdown come in the
    /// same order every run (a seeded crash simulation replays them exactly).
    fn sorted_partitions(&self) -> Vec<Arc<PartitionWal>> {
        let mut all: Vec<Arc<PartitionWal>> = self.partitions.iter().map(|e| Arc::clone(e.value())).collect();
        all.sort_by(|a, b| a.topic_partition().cmp(b.topic_partition()));
        all
    }

    fn sync_dirty(&self) {
        let partitions: Vec<Arc<PartitionWal>> =
            self.partitions.iter().map(|e| Arc::clone(e.value())).collect();
        for p in partitions.iter().filter(|p| p.has_unsynced()) {
            if let Err(e) = p.sync() {
                warn!(topic = %p.topic_partition().topic, partition = p.topic_partition().partition, error = %e,
                    "interval sync failed");
            }
        }
    }
}

/// One thread for all partitions: interval syncs and periodic checkpoints.
fn start_background(
    shared: &Arc<Shared>,
    stop: &Arc<(Mutex<bool>, Condvar)>,
) -> Result<Option<JoinHandle<()>>> {
    let cfg = &shared.ctx.config;
    let sync_every = match cfg.sync_policy {
        SyncPolicy::Interval { interval_ms } => Some(Duration::from_millis(interval_ms)),
        SyncPolicy::Always | SyncPolicy::Never => None,
    };
    let checkpoint_every = cfg
        .checkpoint
        .enabled
        .then(|| Duration::from_millis(cfg.checkpoint.interval_ms));
    // How often the journal's size is looked at: a trim is due after `journal_trim_bytes`.
    let journal_every = shared.ctx.journal.as_ref().map(|_| JOURNAL_TRIM_POLL);
    if sync_every.is_none() && checkpoint_every.is_none() && journal_every.is_none() {
        return Ok(None);
    }
    let trim_bytes = cfg.journal_trim_bytes;
    let root = shared.root.clone();
    let shared = Arc::clone(shared);
    let stop = Arc::clone(stop);
    let handle = std::thread::Builder::new()
        .name("chronik-wal-bg".into())
        .spawn(move || {
            let now = Instant::now();
            let mut next_sync = sync_every.map(|d| now + d);
            let mut next_checkpoint = checkpoint_every.map(|d| now + d);
            let mut next_journal = journal_every.map(|d| now + d);
            loop {
                let due = [next_sync, next_checkpoint, next_journal]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(now);
                {
                    let mut stopped = stop.0.lock();
                    if !*stopped {
                        stop.1.wait_until(&mut stopped, due);
                    }
                    if *stopped {
                        return;
                    }
                }
                let now = Instant::now();
                if let (Some(at), Some(every)) = (next_sync, sync_every) {
                    if now >= at {
                        shared.sync_dirty();
                        next_sync = Some(now + every);
                    }
                }
                let mut trim = false;
                if let (Some(at), Some(every)) = (next_checkpoint, checkpoint_every) {
                    if now >= at {
                        if let Err(e) = shared.checkpoint() {
                            warn!(error = %e, "background checkpoint failed");
                        }
                        next_checkpoint = Some(now + every);
                        trim = true;
                    }
                }
                if let (Some(at), Some(every), Some(journal)) =
                    (next_journal, journal_every, &shared.ctx.journal)
                {
                    if now >= at {
                        // Also when segments written since the last trim hold more descriptors than
                        // the file cache may keep: it closes only synced files.
                        let files = &shared.ctx.files;
                        trim |= journal.live_bytes() >= trim_bytes || files.open_count() > files.limit();
                        next_journal = Some(now + every);
                    }
                }
                if trim {
                    if let Err(e) = shared.trim_journal() {
                        metrics::error(e.kind_label());
                        warn!(error = %e, "journal trim failed");
                    }
                }
            }
        })
        .map_err(|e| Error::io("starting background thread for", root, e))?;
    Ok(Some(handle))
}

/// One thread for all partitions: zero-fills space ahead of active segments (see `prealloc.rs`).
fn start_preparer(shared: &Arc<Shared>) -> Result<Option<JoinHandle<()>>> {
    if shared.ctx.config.preallocate_bytes == 0 || shared.ctx.config.preallocates_manually() {
        return Ok(None);
    }
    let root = shared.root.clone();
    let shared = Arc::clone(shared);
    let handle = std::thread::Builder::new()
        .name("chronik-wal-prealloc".into())
        .spawn(move || {
            while let Some(tp) = shared.ctx.prealloc.next() {
                let partition = shared.partitions.get(&tp).map(|p| Arc::clone(p.value()));
                if let Some(p) = partition {
                    p.prepare_ahead();
                }
            }
        })
        .map_err(|e| Error::io("starting preallocation thread for", root, e))?;
    Ok(Some(handle))
}

/// With the journal: one thread leading its rounds, so that appenders may wait without leading them
/// (asynchronously). Not in the deterministic test mode (`preallocate_manually`), where waiters lead.
fn start_journal_writer(shared: &Arc<Shared>) -> Result<Option<JoinHandle<()>>> {
    let Some(journal) = shared.ctx.journal.clone() else {
        return Ok(None);
    };
    if shared.ctx.config.preallocates_manually() {
        return Ok(None);
    }
    // Marked before the thread runs: a waiter asking right after open must see it.
    journal.mark_writer_thread();
    let root = shared.root.clone();
    let handle = std::thread::Builder::new()
        .name("chronik-wal-journal".into())
        .spawn(move || journal.run_writer())
        .map_err(|e| Error::io("starting journal thread for", root, e))?;
    Ok(Some(handle))
}

/// Removes a directory holding only WAL files (no subdirectories); absent is fine.
fn remove_dir_with_files(io: &dyn WalIo, dir: &Path) -> Result<()> {
    if !io.exists(dir).map_err(|e| Error::io("checking", dir, e))? {
        return Ok(());
    }
    for entry in io.list_dir(dir).map_err(|e| Error::io("listing", dir, e))? {
        let path = dir.join(&entry.name);
        if entry.is_dir || !is_partition_file(&entry.name) {
            warn!(path = %path.display(), "unexpected entry in a partition directory; removing it");
        }
        io.remove_file(&path)
            .map_err(|e| Error::io("removing", &path, e))?;
    }
    io.remove_dir(dir).map_err(|e| Error::io("removing", dir, e))?;
    io.sync_dir(parent(dir))
        .map_err(|e| Error::io("syncing directory", parent(dir), e))
}
