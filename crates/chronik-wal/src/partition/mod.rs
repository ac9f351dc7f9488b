//! `PartitionWal`: the log of one topic-partition, with group commit.
//!
//! Files: this one holds the state, reads and waits; `commit.rs` appends and group commit; `rotate.rs`
//! sealing, index files and checkpoint entries; `space.rs` preallocation; `retention.rs` deleting old
//! segments.
//!
//! # Group commit (leader/follower)
//! An appender encodes its frame (header, CRC) into the partition's *pending* buffer under the writer lock
//! and joins the pending *group*. If no write is in flight, it becomes the leader: it takes the whole
//! pending buffer, releases the lock, issues one `pwrite` and (if any member asked for it) one
//! `fdatasync` (both through `WalFile::write_all_and_sync_at`, one linked submission under io_uring), then re-takes the lock, publishes the frames to readers and completes the group. Appenders
//! that arrived while the leader was busy wait on a condition variable; when the leader finishes, one of
//! them leads the next group. So under load every fsync serves all appends that queued during the previous
//! one, and at low load an append costs one write and one fdatasync with no hand-off to another thread.
//!
//! Invariants:
//! - At most one group is in flight (`flushing`), so writes land in offset order, each at `written.len`.
//! - Offsets are assigned at enqueue: pending frames hold offsets `written.next_offset..next_offset`.
//!   A failed group write fails every queued append behind it too and rewinds `next_offset`, so offsets stay
//!   dense and nothing with a stale offset is ever written.
//! - Readers see only frames below the active segment's `covered_len`; the high watermark advances after
//!   the frames are written and, for synced groups, after fdatasync. Readers never take the writer lock.
//! - Preallocation (see `prealloc.rs`): the preparer zero-fills only from `Writer::preparing` on, which no
//!   group write reaches while it is set, and only where nothing was written; a failed write is erased to
//!   zeros. So past the last written frame the active segment holds only zeros (or holes), which recovery
//!   reads as the end of the data. Sealing cuts them off.
//! - After a failed fdatasync the partition is poisoned: the page cache may have dropped the dirty pages,
//!   so retrying would report durability that does not exist. Only reopening (recovery from disk) clears it.

mod commit;
mod journaled;
mod retention;

pub(crate) use journaled::JournalEntry;
mod rotate;
mod space;
mod truncate;

use std::{
    mem,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use event_listener::{Event, Listener};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use tracing::{info, warn};

use crate::{
    config::{Durability, RotationConfig, SyncPolicy},
    error::CorruptionKind,
    frame::{FrameHeader, FRAME_HEADER_LEN},
    index::SparseIndex,
    io::{write_file_atomic, CachedFile, OpenMode, WalFile, WriteSyncError},
    metrics,
    retention::{segments_to_delete, RetentionOutcome, RetentionPolicy, SegmentInfo},
    segment::{index_file_name, Segment, NEXT_SEGMENT_FILE, SEGMENT_HEADER_LEN},
    terms::{Assigned, TermMap},
    Batch, Error, Result, StoredBatch, TopicPartition, WalContext,
};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub base_offset: i64,
    /// The last offset of the batch (inclusive).
    pub last_offset: i64,
}

/// An append queued by [`PartitionWal::submit`].
#[derive(Debug)]
#[must_use = "an append is acknowledged only once its ticket is waited on"]
pub struct AppendTicket {
    partition: Arc<PartitionWal>,
    group: Arc<Group>,
    result: AppendResult,
}

impl AppendTicket {
    /// The offsets the batch got (valid only if `wait` succeeds).
    pub fn offsets(&self) -> AppendResult {
        self.result
    }

    /// Whether [`AppendTicket::wait_async`] may be used: a journal thread writes this partition's groups,
    /// so nobody waiting has to lead them.
    pub fn waits_without_leading(&self) -> bool {
        self.partition
            .ctx
            .journal
            .as_ref()
            .is_some_and(|j| j.has_writer_thread())
    }

    /// [`AppendTicket::wait`] without blocking a thread; only where
    /// [`AppendTicket::waits_without_leading`] (else nobody might write the group).
    pub async fn wait_async(self) -> Result<AppendResult> {
        let result = loop {
            if let Some(outcome) = self.group.outcome.get() {
                break match outcome {
                    Ok(()) => Ok(self.result),
                    Err(f) => Err(f.to_error(&self.partition.tp)),
                };
            }
            let listener = self.group.done.listen();
            if self.group.outcome.get().is_some() {
                continue;
            }
            listener.await;
        };
        if let Err(e) = &result {
            metrics::request_error(e);
        }
        result
    }

    /// Blocks until the batch is as durable as asked, or its group failed.
    pub fn wait(self) -> Result<AppendResult> {
        let mut w = self.partition.writer.lock();
        let result = self.partition.wait_group(&mut w, &self.group, self.result);
        if let Err(e) = &result {
            metrics::request_error(e);
        }
        result
    }
}

/// Options of one append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOptions {
    pub durability: Durability,
    /// If set, the WAL writes the batch's assigned base offset as a big-endian i64 at this byte position of
    /// the stored payload. A Kafka RecordBatch starts with its base offset, so the broker stores batches that
    /// read back ready to serve, without a copy on the fetch path.
    pub base_offset_at: Option<u32>,
    /// The term (a replicated log's leader epoch) the batch belongs to. A term newer than the
    /// partition's latest starts at this batch, durably before it is written (see
    /// [`PartitionWal::terms`]); an older one is refused with [`Error::TermBehind`].
    pub term: Option<i32>,
    /// With `term`: the WAL writes the term as a big-endian i32 at this byte position of the stored
    /// payload (a Kafka RecordBatch's partition leader epoch, outside its CRC).
    pub term_at: Option<u32>,
    /// The batch must get this base offset, else it is refused with [`Error::OffsetMismatch`]: a replica
    /// copying the leader's batches at the leader's offsets.
    pub at_offset: Option<i64>,
}

/// A point in the active segment: byte length and the offset and max timestamp reached there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub len: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
}

/// What a checkpoint records for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub tp: TopicPartition,
    /// Base offset of the segment the position refers to.
    pub segment_base: i64,
    /// Bytes of that segment known durable.
    pub position: u64,
    /// The offset after the last frame below `position`.
    pub next_offset: i64,
    /// The largest timestamp of the frames below `position` (`i64::MIN` if none).
    pub max_timestamp: i64,
}

/// A [`CheckpointEntry`] without its partition's name (the partition knows it): one allocation less
/// for each of many partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    segment_base: i64,
    position: u64,
    next_offset: i64,
    max_timestamp: i64,
}

/// Why a partition no longer accepts appends.
#[derive(Debug, Clone)]
enum Failure {
    /// A write failed (ENOSPC, EIO...) and was rolled back; later appends may succeed.
    Write {
        path: PathBuf,
        kind: std::io::ErrorKind,
        message: String,
    },
    Poisoned {
        cause: String,
    },
    Deleted,
    /// Recovery found damage in the interior of the log.
    Corrupt {
        path: PathBuf,
        position: u64,
        kind: CorruptionKind,
    },
}

impl Failure {
    fn to_error(&self, tp: &TopicPartition) -> Error {
        match self {
            Failure::Write { path, kind, message } => Error::io(
                "writing",
                path.clone(),
                std::io::Error::new(*kind, message.clone()),
            ),
            Failure::Poisoned { cause } => Error::Poisoned {
                tp: tp.clone(),
                cause: cause.clone(),
            },
            Failure::Deleted => Error::PartitionDeleted(tp.clone()),
            Failure::Corrupt { path, position, kind } => {
                Error::corrupt(path.clone(), *position, kind.clone())
            }
        }
    }
}

/// Appends that share one write and one fdatasync. Its outcome is set once, by the leader.
#[derive(Debug, Default)]
struct Group {
    outcome: OnceLock<Result<(), Failure>>,
    /// Notified once the outcome is set (for [`AppendTicket::wait_async`]).
    done: Event,
}

impl Group {
    fn settle(&self, outcome: Result<(), Failure>) {
        let _ = self.outcome.set(outcome);
        self.done.notify(usize::MAX);
    }
}

/// Groups kept for reuse while their last waiters wake up: with many writers, the waiters of the group
/// just written are still waking when the next one is led.
const IDLE_GROUPS: usize = 4;

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    frames: Vec<(u64, FrameHeader)>,
    needs_sync: bool,
    group: Arc<Group>,
}

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    active_opened: Instant,
    next_offset: i64,
    /// Length of the active segment counting frames in flight and pending.
    end_len: u64,
    written: Mark,
    synced: Mark,
    pending: Pending,
    flushing: bool,
    /// A rotation is under way (possibly syncing without the lock): appenders wait.
    rotating: bool,
    failure: Option<Failure>,
    /// The last written group, kept for reuse (buffers, and its `Arc` once its waiters let go), so that
    /// steady-state appends do not allocate.
    spare: Option<Pending>,
    /// Groups whose waiters had not all let go when they could have been reused; taken again once they
    /// have (at most [`IDLE_GROUPS`]).
    idle_groups: Vec<Arc<Group>>,
    /// The active segment's file is at least this long, and every byte in it past `written.len` is zero
    /// (or a hole): space the preparer zero-filled, or left from before recovery.
    prepared_end: u64,
    /// Start of the range the preparer is zero-filling now (without the lock); no group may reach it.
    preparing: Option<u64>,
    /// Zero-fill steps started so far (tells a waiter the step it waited for from a later one).
    prep_steps: u64,
    /// A rotation of the active segment failed after sealing it: it gets no more prepared space.
    rotation_failed: bool,
    /// This partition is queued for the preparer.
    prep_requested: bool,
    /// Poisoned, and the bytes past `synced` not yet cut (see [`PartitionWal::cut_unsynced`]).
    needs_cut: bool,
    /// When the active segment is sealed: `WalConfig::rotation` unless set for this partition.
    rotation: RotationConfig,
    /// Moving average of the bytes each group commit writes (weight 1/8 per group); the preparer is asked
    /// for space only while it is below [`space::LARGE_GROUP_BYTES`].
    avg_group_bytes: u64,
    /// Appends queued since the partition was opened (counted up to `preallocate_after_appends`).
    appends: u64,
    /// The file the next segment will use, zero-filled by the preparer once the active segment is
    /// prepared up to its size limit.
    next_segment: Option<PreparedFile>,
    /// With the journal: the round that completes the group in flight, or leads the kicked pending one.
    journal_round: Option<u64>,
    /// With the journal: queued for the next round.
    kicked: bool,
    /// With the journal: the active segment holds writes no fdatasync of it has covered yet (they are
    /// durable in the journal).
    file_dirty: bool,
    /// Syncs waiting for the group in flight: rounds leave the pending group alone until they have run.
    sync_waiting: u32,
    /// The write in flight (`flushing`) is an fdatasync of the segment (`sync_locked`), not a group.
    syncing: bool,
}

impl Writer {
    /// Something written to the active segment that no fdatasync of it has covered: past the durable
    /// mark, or (with the journal) durable only in the journal.
    fn unsynced(&self) -> bool {
        self.synced.len < self.written.len || self.file_dirty
    }
}

/// A not yet named file, zero-filled and synced over its first `len` bytes.
#[derive(Debug)]
struct PreparedFile {
    file: CachedFile,
    len: u64,
}

/// What the preparer does for a partition.
enum PrepJob {
    /// Zero-fill `from..to` of the active segment.
    Range { from: u64, to: u64 },
    /// Create and zero-fill the next segment's file.
    NextSegment,
}

/// The state recovery hands to a partition.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub log_start_offset: i64,
    /// How far the active (last) segment is known durable: recovery synced what it kept.
    pub active_end: Mark,
    /// Length of the active segment's file: zeros from `active_end.len` on are preallocated space.
    pub active_file_len: u64,
    pub corrupt: Option<(PathBuf, u64, CorruptionKind)>,
    /// The term map, cut to the recovered log.
    pub terms: TermMap,
}

/// The write-ahead log of one topic-partition.
#[derive(Debug)]
pub struct PartitionWal {
    tp: TopicPartition,
    dir: PathBuf,
    ctx: Arc<WalContext>,
    writer: Mutex<Writer>,
    flushed: Condvar,
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    high_watermark: AtomicI64,
    /// Every offset below it is durable (`Writer::synced`, readable without the lock).
    synced_offset: AtomicI64,
    log_start_offset: AtomicI64,
    /// Notified when the high watermark or the synced offset moves, and when the partition closes.
    hw_changed: Event,
    /// Set once the partition is deleted or poisoned; read by waiters without the writer lock.
    closed: AtomicBool,
    /// Group writes that failed (and failed every append queued with them) since the partition opened.
    write_failures: AtomicU64,
    /// Damage recovery found: reads at or past it fail. Fixed for the life of this handle.
    corrupt: Option<Failure>,
    /// Serialises index-file writes (rotation and checkpoint) so an older index never replaces a newer one.
    index_writes: Mutex<()>,
    /// Base offset of the segment the last written checkpoint points into (`i64::MIN`: none yet). Retention
    /// deletes only segments below it.
    checkpointed_segment: AtomicI64,
    /// The last checkpoint entry known durable for this partition: the one recovery used, then each one
    /// written. A partition that cannot vouch for a new one (damaged, poisoned) keeps this one in later
    /// checkpoints: dropped, the next recovery would take damage to acknowledged data for a torn tail and
    /// cut it (fuzz regressions `checkpoint-claim-*`).
    checkpoint_claim: Mutex<Option<Claim>>,
    /// Serialises retention passes.
    retention: Mutex<()>,
    /// Set when the partition is poisoned: bytes past the synced mark may be in the page cache only.
    unsynced_suspect: AtomicBool,
    /// This partition's own `Arc`, for the journal's queue of partitions to write.
    me: OnceLock<Weak<PartitionWal>>,
    /// Where each term began (`terms.rs`). Taken after the writer lock when both are held.
    terms: Mutex<TermMap>,
}

impl PartitionWal {
    pub(crate) fn new(
        tp: TopicPartition,
        dir: PathBuf,
        ctx: Arc<WalContext>,
        rec: Recovered,
    ) -> Result<Self> {
        let active = rec
            .segments
            .last()
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("partition {tp} has no segment")))?;
        let end = rec.active_end;
        metrics::segments("active", 1.0);
        metrics::segments("sealed", (rec.segments.len() - 1) as f64);
        let corrupt = rec
            .corrupt
            .map(|(path, position, kind)| Failure::Corrupt { path, position, kind });
        Ok(Self {
            writer: Mutex::new(Writer {
                active,
                active_opened: Instant::now(),
                next_offset: end.next_offset,
                end_len: end.len,
                written: end,
                synced: end,
                pending: Pending::default(),
                flushing: false,
                rotating: false,
                failure: corrupt.clone(),
                spare: None,
                idle_groups: Vec::new(),
                prepared_end: rec.active_file_len.max(end.len),
                preparing: None,
                prep_steps: 0,
                rotation_failed: false,
                needs_cut: false,
                rotation: ctx.config.rotation,
                prep_requested: false,
                avg_group_bytes: 0,
                appends: 0,
                next_segment: None,
                journal_round: None,
                kicked: false,
                file_dirty: false,
                sync_waiting: 0,
                syncing: false,
            }),
            flushed: Condvar::new(),
            segments: RwLock::new(Arc::new(rec.segments)),
            high_watermark: AtomicI64::new(end.next_offset),
            synced_offset: AtomicI64::new(end.next_offset),
            log_start_offset: AtomicI64::new(rec.log_start_offset),
            hw_changed: Event::new(),
            closed: AtomicBool::new(false),
            write_failures: AtomicU64::new(0),
            corrupt,
            index_writes: Mutex::new(()),
            checkpointed_segment: AtomicI64::new(i64::MIN),
            checkpoint_claim: Mutex::new(None),
            retention: Mutex::new(()),
            unsynced_suspect: AtomicBool::new(false),
            me: OnceLock::new(),
            terms: Mutex::new(rec.terms),
            tp,
            dir,
            ctx,
        })
    }

    /// Registers the `Arc` this partition lives in (the journal queues partitions by it).
    pub(crate) fn register(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The offset the next appended batch will get, as visible to readers: every offset below it is readable.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Every offset below this is known durable (fdatasync returned). Trails the high watermark only for
    /// appends made with `Durability::Written` or under the interval and never policies.
    pub fn synced_offset(&self) -> i64 {
        self.synced_offset.load(Ordering::Acquire)
    }

    /// Publishes a new synced mark to readers and waiters (called with the writer lock held, after
    /// `Writer::synced` moved).
    pub(super) fn publish_synced(&self, next_offset: i64) {
        if self.synced_offset.fetch_max(next_offset, Ordering::AcqRel) < next_offset {
            self.hw_changed.notify(usize::MAX);
        }
    }

    /// Waits (asynchronously) until the synced offset is above `offset`, or the partition is closed.
    pub async fn wait_synced_past(&self, offset: i64) {
        self.wait_above(Self::synced_offset, offset).await;
    }

    /// Waits until `mark` (the high watermark or the synced offset, both moved under `hw_changed`) is
    /// above `offset`, or the partition is closed. Woken by the change, not by polling.
    async fn wait_above(&self, mark: fn(&Self) -> i64, offset: i64) {
        loop {
            if mark(self) > offset || self.is_closed() {
                return;
            }
            let listener = self.hw_changed.listen();
            if mark(self) > offset || self.is_closed() {
                return;
            }
            listener.await;
        }
    }

    /// The partition's term map: where each term's batches begin.
    pub fn terms(&self) -> TermMap {
        self.terms.lock().clone()
    }

    /// The latest term a batch (or [`PartitionWal::begin_term`]) named.
    pub fn latest_term(&self) -> Option<i32> {
        self.terms.lock().latest()
    }

    /// Where this log's part of `term` ends: see [`TermMap::end_of`].
    pub fn term_end(&self, term: i32) -> Option<(i32, i64)> {
        let w = self.writer.lock();
        self.terms.lock().end_of(term, w.next_offset)
    }

    /// Starts `term` at the log's end, durably, before any batch of it: a replica that becomes leader
    /// records where its term begins, even if no batch follows. Refused with [`Error::TermBehind`] if
    /// a later term is known; nothing to do if `term` is the latest.
    pub fn begin_term(&self, term: i32) -> Result<()> {
        let w = self.writer.lock();
        self.enter_term(term, w.next_offset)
    }

    /// How many group writes have failed since the partition was opened. A caller that keeps state derived
    /// from queued appends (e.g. producer sequence numbers) compares it to learn that some of them failed.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Acquire)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Reads batches from `from_offset` on: the batch holding `from_offset` (which may start before it), then
    /// following ones while the payload total stays within `max_bytes`. At least one batch is returned when
    /// `from_offset` is below the high watermark, however large. An empty result means `from_offset` is the
    /// high watermark.
    pub fn read(&self, from_offset: i64, max_bytes: u64) -> Result<Vec<StoredBatch>> {
        self.read_below(from_offset, max_bytes, i64::MAX)
    }

    /// [`PartitionWal::read`] of the batches starting below `end` only (a replicated log's high
    /// watermark, or the synced offset): a read from `end` up to the high watermark is empty rather than
    /// out of range. `end` should be a batch boundary.
    pub fn read_below(&self, from_offset: i64, max_bytes: u64, end: i64) -> Result<Vec<StoredBatch>> {
        // The high watermark first, so that the list read after it holds everything below it. The list and
        // the log start as one consistent pair: retention moves the start while it holds the list's write
        // lock, and a start read apart from the list could let the read skip a deleted segment.
        let high_watermark = self.high_watermark();
        let (segments, log_start_offset) = {
            let list = self.segments.read();
            (Arc::clone(&list), self.log_start_offset())
        };
        if from_offset < log_start_offset || from_offset > high_watermark {
            return Err(Error::OffsetOutOfRange {
                tp: self.tp.clone(),
                offset: from_offset,
                log_start_offset,
                high_watermark,
            });
        }
        if from_offset == high_watermark {
            if let Some(f) = &self.corrupt {
                return Err(f.to_error(&self.tp));
            }
            return Ok(Vec::new());
        }
        let high_watermark = high_watermark.min(end);
        if from_offset >= high_watermark {
            return Ok(Vec::new());
        }
        let first = segments
            .partition_point(|s| s.base_offset <= from_offset)
            .saturating_sub(1);
        let mut out = Vec::new();
        let mut used = 0u64;
        let mut next = from_offset;
        let max_payload = self.ctx.config.max_batch_bytes;
        for segment in &segments[first..] {
            if next >= high_watermark {
                break;
            }
            // `used` may exceed `max_bytes` when the first batch alone is larger.
            let budget = max_bytes.saturating_sub(used);
            let (added, exhausted) = segment
                .read(
                    next,
                    high_watermark,
                    budget,
                    max_payload,
                    &self.ctx.read_buffers,
                    &mut out,
                )
                .map_err(|e| self.deleted_or(e))?;
            used += added;
            if !exhausted || used > max_bytes {
                break;
            }
            if let Some(last) = out.last() {
                next = last.next_offset();
            }
        }
        Ok(out)
    }

    /// The first batch whose max timestamp is >= `timestamp`, as (base offset, max timestamp).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        let high_watermark = self.high_watermark();
        let segments = Arc::clone(&self.segments.read());
        for segment in segments.iter() {
            if segment.base_offset >= high_watermark {
                break;
            }
            if segment.max_timestamp() < timestamp {
                continue;
            }
            if let Some(h) =
                segment.find_timestamp(timestamp, high_watermark, self.ctx.config.max_batch_bytes)?
            {
                return Ok(Some((h.base_offset, h.max_timestamp)));
            }
        }
        Ok(None)
    }

    /// Waits (asynchronously) until the high watermark is above `offset`, or the partition is closed.
    /// Woken by the append that moves the high watermark, not by polling.
    pub async fn wait_past(&self, offset: i64) {
        self.wait_above(Self::high_watermark, offset).await;
    }

    /// Blocking form of [`PartitionWal::wait_past`]; returns whether the high watermark passed `offset`.
    pub fn wait_past_timeout(&self, offset: i64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.high_watermark() > offset {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            let listener = self.hw_changed.listen();
            if self.high_watermark() > offset {
                return true;
            }
            if listener.wait_deadline(deadline).is_none() {
                return self.high_watermark() > offset;
            }
        }
    }

    /// The damage recovery found in this partition's acknowledged data, if any.
    pub fn corruption(&self) -> Option<Error> {
        self.corrupt.as_ref().map(|f| f.to_error(&self.tp))
    }

    /// True after a failed fdatasync (or a failed rollback of a write), until a reopen has cut what was
    /// never durable: nothing more is accepted by this handle; [`crate::WalManager::reopen_partition`]
    /// recovers the partition from disk.
    pub fn is_poisoned(&self) -> bool {
        self.unsynced_suspect.load(Ordering::Acquire)
    }

    /// True once the partition is deleted or poisoned: waiting on it is pointless.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `e`, or if the partition was closed for deletion meanwhile the deletion: a read racing a deletion
    /// finds its files gone once the file cache has closed them, which is the deletion, not an I/O
    /// failure. (A handle closed by a reopen that failed keeps serving reads: its files are there.)
    fn deleted_or(&self, e: Error) -> Error {
        if self.is_closed() && matches!(self.writer.lock().failure, Some(Failure::Deleted)) {
            Error::PartitionDeleted(self.tp.clone())
        } else {
            e
        }
    }

    /// After a failed fdatasync, cuts the active segment back to the last point known durable: bytes past
    /// it were written but their sync failed, so the page cache may hold data the disk lost (fsyncgate).
    /// Called before recovering the partition from disk, and at close. Usually the cut was made when the
    /// partition was poisoned; this retries one that failed then.
    pub(crate) fn discard_unsynced(&self) -> Result<()> {
        if !self.unsynced_suspect.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut w = self.writer.lock();
        // A write in flight could land after the cut (at close the partition need not be closed yet).
        self.wait_idle(&mut w);
        self.cut_unsynced(&mut w)?;
        self.unsynced_suspect.store(false, Ordering::Release);
        Ok(())
    }

    /// A reopen of this partition failed, possibly at an fdatasync of its files: what it never synced can
    /// no longer be trusted from the page cache (the failed sync may have dropped it). It is cut now, as
    /// after a failed append's fdatasync, or by the next reopen if this cut fails: a restart must not
    /// find it either (`a_reopen_after_one_whose_sync_failed_cuts_what_was_never_synced`,
    /// `a_restart_after_a_failed_reopen_does_not_bring_back_what_was_never_synced`).
    pub(crate) fn give_up_unsynced(&self) {
        let mut w = self.writer.lock();
        w.needs_cut = true;
        self.unsynced_suspect.store(true, Ordering::Release);
        self.cut_unsynced_if_idle(&mut w);
    }

    /// The cut of [`PartitionWal::discard_unsynced`], made as soon as no write is in flight after the
    /// partition is poisoned. Why not only at reopen: a restart (clean or kill -9) would otherwise recover
    /// the failed bytes from the page cache, and since the kernel reports a writeback error once, later
    /// fdatasyncs succeed over the hole the disk may have there, behind acknowledged data.
    fn cut_unsynced(&self, w: &mut Writer) -> Result<()> {
        if !w.needs_cut {
            return Ok(());
        }
        let segment = &w.active;
        let len = segment
            .file
            .size()
            .map_err(|e| Error::io("reading length of", &segment.path, e))?;
        if self.corrupt.is_none() && len > w.synced.len {
            warn!(topic = %self.tp.topic, partition = self.tp.partition, path = %segment.path.display(),
                durable_len = w.synced.len, "discarding bytes whose fdatasync failed");
            // Readers first: frames written without a sync (`Durability::Written`) were visible. The high
            // watermark before the index, so that a read never looks for offsets the index no longer has.
            let synced = w.synced;
            self.high_watermark
                .fetch_min(synced.next_offset, Ordering::AcqRel);
            {
                let mut index = segment.index.write();
                *index = index.prefix(synced.len, synced.next_offset, synced.max_timestamp);
            }
            w.written = synced;
            w.end_len = synced.len;
            w.next_offset = synced.next_offset;
        }
        if self.corrupt.is_none() {
            // Even when the length shown is already the durable one: a failed sync may have dropped a
            // length change (a seal's cut of prepared zeros), and the disk may still hold the old length.
            segment
                .file
                .set_len(w.synced.len)
                .and_then(|()| segment.file.sync_data())
                .map_err(|e| Error::io("cutting back", &segment.path, e))?;
            w.prepared_end = w.synced.len;
        }
        w.needs_cut = false;
        Ok(())
    }

    /// [`PartitionWal::cut_unsynced`] once no write is in flight; a failure is left for the reopen.
    fn cut_unsynced_if_idle(&self, w: &mut Writer) {
        if w.flushing || !w.needs_cut {
            return;
        }
        if let Err(e) = self.cut_unsynced(w) {
            metrics::error(e.kind_label());
            warn!(topic = %self.tp.topic, partition = self.tp.partition, error = %e,
                "could not cut back bytes whose fdatasync failed; the reopen will retry");
        }
    }

    /// Marks the partition deleted after any in-flight write or preallocation, and wakes all waiters.
    pub(crate) fn close_for_delete(&self) {
        let mut w = self.writer.lock();
        // Also no zero-fill in flight: a reopened partition may write where it would land.
        self.wait_idle(&mut w);
        let queued = mem::take(&mut w.pending);
        queued.group.settle(Err(Failure::Deleted));
        self.set_failure(&mut w, Failure::Deleted);
        let segments = self.segments.read().len();
        metrics::segments("active", -1.0);
        metrics::segments("sealed", -((segments - 1) as f64));
    }
}
