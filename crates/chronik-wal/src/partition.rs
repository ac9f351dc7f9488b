//! `PartitionWal`: the log of one topic-partition, with group commit.
//!
//! # Group commit (leader/follower)
//! An appender encodes its frame (header, CRC) into the partition's *pending* buffer under the writer lock
//! and joins the pending *group*. If no write is in flight, it becomes the leader: it takes the whole
//! pending buffer, releases the lock, issues one `pwrite` and (if any member asked for it) one
//! `fdatasync`, then re-takes the lock, publishes the frames to readers and completes the group. Appenders
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
//! - After a failed fdatasync the partition is poisoned: the page cache may have dropped the dirty pages,
//!   so retrying would report durability that does not exist. Only reopening (recovery from disk) clears it.

use std::{
    mem,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use event_listener::{Event, Listener};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use tracing::{info, warn};

use crate::{
    config::{Durability, SyncPolicy},
    error::CorruptionKind,
    frame::{FrameHeader, FRAME_HEADER_LEN},
    index::SparseIndex,
    io::{write_file_atomic, WalFile},
    metrics,
    segment::{index_file_name, Segment, SEGMENT_HEADER_LEN},
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

    /// Blocks until the batch is as durable as asked, or its group failed.
    pub fn wait(self) -> Result<AppendResult> {
        let mut w = self.partition.writer.lock();
        let result = self.partition.wait_group(&mut w, &self.group, self.result);
        if let Err(e) = &result {
            metrics::error(e.kind_label());
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
}

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
    /// A drained pending buffer kept for reuse, so steady-state appends do not allocate.
    spare: Pending,
}

/// The state recovery hands to a partition.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub log_start_offset: i64,
    /// How far the active (last) segment is known durable: recovery synced what it kept.
    pub active_end: Mark,
    pub corrupt: Option<(PathBuf, u64, CorruptionKind)>,
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
    log_start_offset: AtomicI64,
    hw_changed: Event,
    /// Set once the partition is deleted or poisoned; read by waiters without the writer lock.
    closed: AtomicBool,
    /// Group writes that failed (and failed every append queued with them) since the partition opened.
    write_failures: AtomicU64,
    /// Damage recovery found: reads at or past it fail. Fixed for the life of this handle.
    corrupt: Option<Failure>,
    /// Serialises index-file writes (rotation and checkpoint) so an older index never replaces a newer one.
    index_writes: Mutex<()>,
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
                spare: Pending::default(),
            }),
            flushed: Condvar::new(),
            segments: RwLock::new(Arc::new(rec.segments)),
            high_watermark: AtomicI64::new(end.next_offset),
            log_start_offset: AtomicI64::new(rec.log_start_offset),
            hw_changed: Event::new(),
            closed: AtomicBool::new(false),
            write_failures: AtomicU64::new(0),
            corrupt,
            index_writes: Mutex::new(()),
            tp,
            dir,
            ctx,
        })
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
        self.writer.lock().synced.next_offset
    }

    /// How many group writes have failed since the partition was opened. A caller that keeps state derived
    /// from queued appends (e.g. producer sequence numbers) compares it to learn that some of them failed.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Acquire)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Appends a batch with the configured durability. See [`PartitionWal::append_with`].
    pub fn append(&self, batch: Batch) -> Result<AppendResult> {
        self.append_with(batch, Durability::Default)
    }

    /// Appends a batch and returns once it is as durable as `durability` asks; the WAL assigns its offsets.
    pub fn append_with(&self, batch: Batch, durability: Durability) -> Result<AppendResult> {
        self.append_with_options(
            batch,
            AppendOptions {
                durability,
                ..Default::default()
            },
        )
    }

    /// Appends a batch with all options. See [`AppendOptions`].
    pub fn append_with_options(&self, batch: Batch, options: AppendOptions) -> Result<AppendResult> {
        let result = self.append_inner(batch, options);
        if let Err(e) = &result {
            metrics::error(e.kind_label());
        }
        result
    }

    fn append_inner(&self, batch: Batch, options: AppendOptions) -> Result<AppendResult> {
        let (mut w, group, result) = self.enqueue(batch, options)?;
        self.wait_group(&mut w, &group, result)
    }

    /// Queues a batch for the next group write without waiting for it: the offsets are assigned now, in
    /// call order, and [`AppendTicket::wait`] returns once the batch is durable. Lets a caller keep the
    /// order of several appends while their fdatasyncs overlap (a pipelining network connection).
    pub fn submit(self: &Arc<Self>, batch: Batch, options: AppendOptions) -> Result<AppendTicket> {
        match self.enqueue(batch, options) {
            Ok((w, group, result)) => {
                drop(w);
                Ok(AppendTicket {
                    partition: Arc::clone(self),
                    group,
                    result,
                })
            }
            Err(e) => {
                metrics::error(e.kind_label());
                Err(e)
            }
        }
    }

    /// Validates and queues a batch; returns with the writer lock still held.
    fn enqueue(
        &self,
        batch: Batch,
        options: AppendOptions,
    ) -> Result<(MutexGuard<'_, Writer>, Arc<Group>, AppendResult)> {
        let cfg = &self.ctx.config;
        if batch.record_count == 0 {
            return Err(Error::InvalidArgument(
                "a batch must hold at least one record".into(),
            ));
        }
        let payload_len = batch.payload.len() as u64;
        if payload_len > u64::from(cfg.max_batch_bytes) {
            return Err(Error::BatchTooLarge {
                size: payload_len,
                max: u64::from(cfg.max_batch_bytes),
            });
        }
        let patch_at = match options.base_offset_at {
            Some(at) if at as u64 + 8 > payload_len => {
                return Err(Error::InvalidArgument(format!(
                    "base_offset_at {at} does not leave 8 bytes in a {payload_len}-byte payload"
                )));
            }
            other => other.map(|at| at as usize),
        };
        let want_sync = match options.durability {
            Durability::Sync => true,
            Durability::Written => false,
            Durability::Default => cfg.sync_policy == SyncPolicy::Always,
        };
        // CRCs are computed before taking the lock; a patched offset is folded in with `crc32c_combine`.
        let (crc_before, crc_after) = match patch_at {
            Some(at) => (
                crc32c::crc32c(&batch.payload[..at]),
                crc32c::crc32c(&batch.payload[at + 8..]),
            ),
            None => (crc32c::crc32c(&batch.payload), 0),
        };
        let frame_len = FRAME_HEADER_LEN as u64 + payload_len;

        let mut w = self.writer.lock();
        loop {
            if let Some(f) = &w.failure {
                if !matches!(f, Failure::Write { .. }) {
                    return Err(f.to_error(&self.tp));
                }
                w.failure = None;
            }
            if w.rotating {
                self.flushed.wait(&mut w);
                continue;
            }
            let has_frames = w.end_len > SEGMENT_HEADER_LEN as u64;
            let rotate = has_frames
                && (w.end_len + frame_len > cfg.rotation.max_segment_size
                    || w.active_opened.elapsed() >= cfg.max_segment_age());
            let backpressure = !w.pending.frames.is_empty()
                && w.pending.buf.len() as u64 + frame_len > cfg.max_pending_bytes;
            if !rotate && !backpressure {
                break;
            }
            if w.flushing {
                self.flushed.wait(&mut w);
            } else if !w.pending.frames.is_empty() {
                self.lead(&mut w);
            } else {
                self.rotate_locked(&mut w)?;
            }
        }

        let base_offset = w.next_offset;
        let payload_crc = match patch_at {
            Some(at) => {
                let with_offset = crc32c::crc32c_append(crc_before, &base_offset.to_be_bytes());
                crc32c::crc32c_combine(with_offset, crc_after, batch.payload.len() - at - 8)
            }
            None => crc_before,
        };
        let header = FrameHeader {
            payload_len: payload_len as u32,
            record_count: batch.record_count,
            base_offset,
            first_timestamp: batch.first_timestamp,
            max_timestamp: batch.max_timestamp,
            synced_pos: w.synced.len,
            payload_crc,
        };
        let position = w.end_len;
        w.pending.buf.extend_from_slice(&header.encode());
        match patch_at {
            Some(at) => {
                w.pending.buf.extend_from_slice(&batch.payload[..at]);
                w.pending.buf.extend_from_slice(&base_offset.to_be_bytes());
                w.pending.buf.extend_from_slice(&batch.payload[at + 8..]);
            }
            None => w.pending.buf.extend_from_slice(&batch.payload),
        }
        w.pending.frames.push((position, header));
        w.pending.needs_sync |= want_sync;
        w.next_offset = header.next_offset();
        w.end_len += frame_len;
        let group = Arc::clone(&w.pending.group);
        let result = AppendResult {
            base_offset: header.base_offset,
            last_offset: header.next_offset() - 1,
        };
        Ok((w, group, result))
    }

    /// Waits until `group` is written (leading the write if nobody else is) and returns its outcome.
    fn wait_group(
        &self,
        w: &mut MutexGuard<'_, Writer>,
        group: &Group,
        result: AppendResult,
    ) -> Result<AppendResult> {
        loop {
            if let Some(outcome) = group.outcome.get() {
                return match outcome {
                    Ok(()) => Ok(result),
                    Err(f) => Err(f.to_error(&self.tp)),
                };
            }
            if w.flushing {
                self.flushed.wait(w);
            } else {
                // Nobody is writing and our group is not done, so it is the pending one: lead it.
                self.lead(w);
            }
        }
    }

    /// Writes the pending group. Called with the lock held, no write in flight and a non-empty group.
    fn lead(&self, w: &mut MutexGuard<'_, Writer>) {
        debug_assert!(!w.flushing && !w.pending.frames.is_empty());
        w.flushing = true;
        let spare = mem::take(&mut w.spare);
        let group = mem::replace(
            &mut w.pending,
            Pending {
                group: Arc::default(),
                ..spare
            },
        );
        let segment = Arc::clone(&w.active);
        let pos = w.written.len;

        let result = MutexGuard::unlocked(w, || self.write_group(&segment, &group, pos));

        match result {
            Ok(synced) => {
                let mut mark = w.written;
                {
                    let mut index = segment.index.write();
                    for (position, header) in &group.frames {
                        index.observe(*position, header);
                    }
                    mark.len = index.covered_len;
                    mark.next_offset = index.next_offset;
                    mark.max_timestamp = index.max_timestamp;
                }
                w.written = mark;
                if synced {
                    w.synced = mark;
                }
                self.high_watermark.store(mark.next_offset, Ordering::Release);
                self.hw_changed.notify(usize::MAX);
                let _ = group.group.outcome.set(Ok(()));
            }
            Err(failure) => {
                self.write_failures.fetch_add(1, Ordering::AcqRel);
                // Everything queued behind the failed group holds offsets after it: fail it too.
                let queued = mem::take(&mut w.pending);
                let _ = queued.group.outcome.set(Err(failure.clone()));
                let _ = group.group.outcome.set(Err(failure.clone()));
                w.next_offset = w.written.next_offset;
                w.end_len = w.written.len;
                let write_failed = matches!(failure, Failure::Write { .. });
                self.set_failure(w, failure);
                if write_failed {
                    // Remove any partial frame so the file ends at the last good one, durably: a sealed
                    // segment is not synced again, and a power cut must not bring the partial frame back.
                    let rolled_back = segment.file.set_len(pos).and_then(|()| sync_file(&*segment.file));
                    if let Err(e) = rolled_back {
                        self.poison(
                            w,
                            format!("truncating {} after a failed write: {e}", segment.path.display()),
                        );
                    }
                }
            }
        }
        let mut recycled = group;
        recycled.buf.clear();
        recycled.frames.clear();
        recycled.needs_sync = false;
        w.spare = recycled;
        w.flushing = false;
        self.flushed.notify_all();
    }

    /// The I/O of one group, run without the lock. Returns whether it synced.
    fn write_group(&self, segment: &Segment, group: &Pending, pos: u64) -> Result<bool, Failure> {
        let started = Instant::now();
        self.ctx
            .retry_transient(|| segment.file.write_all_at(&group.buf, pos))
            .map_err(|e| Failure::Write {
                path: segment.path.clone(),
                kind: e.kind(),
                message: e.to_string(),
            })?;
        metrics::group_written(group.frames.len(), group.buf.len(), started.elapsed());
        let sync = group.needs_sync;
        if sync {
            sync_file(&*segment.file).map_err(|e| {
                warn!(topic = %self.tp.topic, partition = self.tp.partition, error = %e,
                    "fdatasync failed; partition is poisoned until reopened");
                Failure::Poisoned {
                    cause: format!("fdatasync of {} failed: {e}", segment.path.display()),
                }
            })?;
        }
        Ok(sync)
    }

    fn poison(&self, w: &mut MutexGuard<'_, Writer>, cause: String) {
        warn!(topic = %self.tp.topic, partition = self.tp.partition, %cause, "partition poisoned");
        self.set_failure(w, Failure::Poisoned { cause });
    }

    fn set_failure(&self, w: &mut MutexGuard<'_, Writer>, failure: Failure) {
        if matches!(failure, Failure::Poisoned { .. } | Failure::Deleted) {
            self.closed.store(true, Ordering::Release);
            self.hw_changed.notify(usize::MAX);
        }
        w.failure = Some(failure);
    }

    /// Makes everything written so far durable (used by the interval policy, sealing and shutdown).
    pub fn sync(&self) -> Result<()> {
        let mut w = self.writer.lock();
        loop {
            if let Some(f @ (Failure::Poisoned { .. } | Failure::Deleted)) = &w.failure {
                return Err(f.to_error(&self.tp));
            }
            if w.flushing {
                self.flushed.wait(&mut w);
                continue;
            }
            if w.synced.len >= w.written.len {
                return Ok(());
            }
            return self.sync_locked(&mut w);
        }
    }

    /// fdatasync of the active segment with no write in flight; I/O happens without the lock.
    fn sync_locked(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        w.flushing = true;
        let target = w.written;
        let segment = Arc::clone(&w.active);
        let result = MutexGuard::unlocked(w, || sync_file(&*segment.file));
        w.flushing = false;
        self.flushed.notify_all();
        match result {
            Ok(()) => {
                w.synced = target;
                Ok(())
            }
            Err(e) => {
                let cause = format!("fdatasync of {} failed: {e}", segment.path.display());
                self.poison(w, cause.clone());
                metrics::error("fsync");
                Err(Error::Poisoned {
                    tp: self.tp.clone(),
                    cause,
                })
            }
        }
    }

    /// Seals the active segment and starts a new one, if the active one holds any frame.
    pub fn rotate(&self) -> Result<()> {
        let mut w = self.writer.lock();
        loop {
            if let Some(f) = &w.failure {
                if !matches!(f, Failure::Write { .. }) {
                    return Err(f.to_error(&self.tp));
                }
            }
            if w.flushing || w.rotating {
                self.flushed.wait(&mut w);
            } else if !w.pending.frames.is_empty() {
                self.lead(&mut w);
            } else if w.end_len > SEGMENT_HEADER_LEN as u64 {
                return self.rotate_locked(&mut w);
            } else {
                return Ok(());
            }
        }
    }

    /// Seals the active segment (sync, write its index) and creates the next. Called with the lock held and
    /// nothing pending or in flight; the lock stays held, so appenders wait for the rotation (rare: once per
    /// segment) while readers go on.
    fn rotate_locked(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        // The old segment's final sync runs without the lock: appenders must not queue frames meant for
        // it meanwhile, or they would be written into the new one.
        w.rotating = true;
        let result = self.seal_and_start_next(w);
        w.rotating = false;
        self.flushed.notify_all();
        result
    }

    fn seal_and_start_next(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        if w.synced.len < w.written.len {
            self.sync_locked(w)?;
        }
        let old = Arc::clone(&w.active);
        self.persist_index(&old, None);
        let new = Segment::create(
            &*self.ctx.io,
            &self.dir,
            w.next_offset,
            self.ctx.config.index_interval_bytes,
        )
        .inspect_err(|e| metrics::error(e.kind_label()))?;
        let new = Arc::new(new);
        {
            let mut segments = self.segments.write();
            let mut list = Vec::clone(&segments);
            list.push(Arc::clone(&new));
            *segments = Arc::new(list);
        }
        let start = Mark {
            len: SEGMENT_HEADER_LEN as u64,
            next_offset: w.next_offset,
            max_timestamp: i64::MIN,
        };
        w.active = new;
        w.active_opened = Instant::now();
        w.end_len = start.len;
        w.written = start;
        w.synced = start;
        metrics::segments("sealed", 1.0);
        info!(topic = %self.tp.topic, partition = self.tp.partition, segment_id = start.next_offset,
            sealed_segment_id = old.base_offset, sealed_bytes = old.published_len(), "WAL segment rotated");
        Ok(())
    }

    /// Writes a segment's index file; `limit` restricts it to a durable prefix. Best effort: an index is a
    /// cache that recovery rebuilds, so a failure is logged and counted, not returned.
    fn persist_index(&self, segment: &Segment, limit: Option<Mark>) {
        let _serial = self.index_writes.lock();
        let index: SparseIndex = {
            let idx = segment.index.read();
            match limit {
                Some(m) => idx.prefix(m.len, m.next_offset, m.max_timestamp),
                None => idx.clone(),
            }
        };
        let path = self.dir.join(index_file_name(segment.base_offset));
        if let Err(e) = write_file_atomic(&*self.ctx.io, &path, &index.encode()) {
            metrics::error("index");
            warn!(path = %path.display(), error = %e, "could not write segment index; recovery will rebuild it");
        }
    }

    /// Records what a checkpoint needs and persists the active segment's index up to the durable point, so
    /// that recovery can start scanning there.
    pub(crate) fn checkpoint_entry(&self) -> Option<CheckpointEntry> {
        let (segment, synced) = {
            let w = self.writer.lock();
            if w.failure
                .as_ref()
                .is_some_and(|f| !matches!(f, Failure::Write { .. }))
            {
                return None;
            }
            (Arc::clone(&w.active), w.synced)
        };
        self.persist_index(&segment, Some(synced));
        Some(CheckpointEntry {
            tp: self.tp.clone(),
            segment_base: segment.base_offset,
            position: synced.len,
            next_offset: synced.next_offset,
            max_timestamp: synced.max_timestamp,
        })
    }

    /// True if something was written but not yet synced.
    pub(crate) fn has_unsynced(&self) -> bool {
        let w = self.writer.lock();
        w.synced.len < w.written.len
    }

    /// Reads batches from `from_offset` on: the batch holding `from_offset` (which may start before it), then
    /// following ones while the payload total stays within `max_bytes`. At least one batch is returned when
    /// `from_offset` is below the high watermark, however large. An empty result means `from_offset` is the
    /// high watermark.
    pub fn read(&self, from_offset: i64, max_bytes: u64) -> Result<Vec<StoredBatch>> {
        let high_watermark = self.high_watermark();
        let log_start_offset = self.log_start_offset();
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
        let segments = Arc::clone(&self.segments.read());
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
            let (added, exhausted) = segment.read(next, high_watermark, budget, max_payload, &mut out)?;
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
        loop {
            if self.high_watermark() > offset || self.is_closed() {
                return;
            }
            let listener = self.hw_changed.listen();
            if self.high_watermark() > offset || self.is_closed() {
                return;
            }
            listener.await;
        }
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

    /// True once the partition is deleted or poisoned: waiting on it is pointless.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the partition deleted after any in-flight write, and wakes all waiters.
    pub(crate) fn close_for_delete(&self) {
        let mut w = self.writer.lock();
        while w.flushing {
            self.flushed.wait(&mut w);
        }
        let queued = mem::take(&mut w.pending);
        let _ = queued.group.outcome.set(Err(Failure::Deleted));
        self.set_failure(&mut w, Failure::Deleted);
        let segments = self.segments.read().len();
        metrics::segments("active", -1.0);
        metrics::segments("sealed", -((segments - 1) as f64));
    }
}

fn sync_file(file: &dyn WalFile) -> std::io::Result<()> {
    let started = Instant::now();
    let result = file.sync_data();
    metrics::fsync(started.elapsed());
    result
}
