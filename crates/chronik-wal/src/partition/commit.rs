//! Appends and group commit: enqueueing frames, leading a group's write and fdatasync, failures.
use super::*;

/// Payload bytes after a patched base offset above which its CRC is combined rather than read again
/// under the writer lock (see `enqueue`).
const COMBINE_CRC_AFTER: usize = 64 << 10;

impl PartitionWal {
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
            metrics::request_error(e);
        }
        result
    }

    pub(super) fn append_inner(&self, batch: Batch, options: AppendOptions) -> Result<AppendResult> {
        let (mut w, group, result) = self.enqueue(batch, options)?;
        self.wait_group(&mut w, &group, result)
    }

    /// Queues a batch for the next group write without waiting for it: the offsets are assigned now, in
    /// call order, and [`AppendTicket::wait`] returns once the batch is durable. Lets a caller keep the
    /// order of several appends while their fdatasyncs overlap (a pipelining network connection).
    pub fn submit(self: &Arc<Self>, batch: Batch, options: AppendOptions) -> Result<AppendTicket> {
        match self.enqueue(batch, options) {
            Ok((mut w, group, result)) => {
                // With the journal, queued for the next round now: a caller submitting to many
                // partitions before waiting on any gets them all written by one round.
                self.kick_pending(&mut w);
                drop(w);
                Ok(AppendTicket {
                    partition: Arc::clone(self),
                    group,
                    result,
                })
            }
            Err(e) => {
                metrics::request_error(&e);
                Err(e)
            }
        }
    }

    /// Whether an append of `bytes` would be queued now without waiting: no rotation under way or due,
    /// no backpressure. A hint (another append may change it): a caller that must not block for long
    /// (an async task) appends inline when it holds and hands the append to a thread when it does not.
    pub fn ready_for(&self, bytes: u64) -> bool {
        let w = self.writer.lock();
        let frame_len = FRAME_HEADER_LEN as u64 + bytes;
        let has_frames = w.end_len > SEGMENT_HEADER_LEN as u64;
        let rotate = has_frames
            && (w.end_len + frame_len > w.rotation.max_segment_size
                || w.active_opened.elapsed() >= w.rotation.max_segment_age());
        let backpressure = w.pending.buf.len() as u64 + frame_len > self.ctx.config.max_pending_bytes;
        !w.rotating && !rotate && !backpressure
    }

    /// Validates and queues a batch; returns with the writer lock still held.
    pub(super) fn enqueue(
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
        let stamp = match (options.term, options.term_at) {
            (_, None) => None,
            (None, Some(_)) => {
                return Err(Error::InvalidArgument("term_at without a term".into()));
            }
            (Some(term), Some(at)) => {
                let at = at as usize;
                let clear_of_offset = patch_at.is_none_or(|p| at + 4 <= p || at >= p + 8);
                if at as u64 + 4 > payload_len || !clear_of_offset {
                    return Err(Error::InvalidArgument(format!(
                        "term_at {at} must leave 4 bytes in a {payload_len}-byte payload, clear of \
                         base_offset_at"
                    )));
                }
                Some((at, term.to_be_bytes()))
            }
        };
        let want_sync = match options.durability {
            Durability::Sync => true,
            Durability::Written => false,
            Durability::Default => cfg.sync_policy == SyncPolicy::Always,
        };
        // CRCs are computed before taking the lock; a patched offset is folded in under it, by
        // `crc32c_combine` after a large payload, else by reading the rest again: combining costs about
        // 13 us whatever the length (a fifth of the broker's CPU with one small batch per request),
        // reading 1 KiB about 0.1 us.
        let payload = &batch.payload[..];
        let (crc_before, crc_after) = match patch_at {
            Some(at) if payload.len() - at - 8 > COMBINE_CRC_AFTER => (
                crc_stamped(0, &payload[..at], 0, stamp),
                Some(crc_stamped(0, &payload[at + 8..], at + 8, stamp)),
            ),
            Some(at) => (crc_stamped(0, &payload[..at], 0, stamp), None),
            None => (crc_stamped(0, payload, 0, stamp), None),
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
                && (w.end_len + frame_len > w.rotation.max_segment_size
                    || w.active_opened.elapsed() >= w.rotation.max_segment_age());
            let backpressure = !w.pending.frames.is_empty()
                && w.pending.buf.len() as u64 + frame_len > cfg.max_pending_bytes;
            if !rotate && !backpressure {
                break;
            }
            if w.flushing || w.kicked || !w.pending.frames.is_empty() {
                self.advance(&mut w);
            } else {
                self.rotate_locked(&mut w)?;
            }
        }

        let base_offset = w.next_offset;
        if let Some(expected) = options.at_offset.filter(|&o| o != base_offset) {
            return Err(Error::OffsetMismatch {
                expected,
                next: base_offset,
            });
        }
        if let Some(term) = options.term {
            self.enter_term(term, base_offset)?;
        }
        let payload_crc = match patch_at {
            Some(at) => {
                let with_offset = crc32c::crc32c_append(crc_before, &base_offset.to_be_bytes());
                match crc_after {
                    Some(after) => crc32c::crc32c_combine(with_offset, after, payload.len() - at - 8),
                    None => crc_stamped(with_offset, &payload[at + 8..], at + 8, stamp),
                }
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
        let start = w.pending.buf.len();
        w.pending.buf.extend_from_slice(payload);
        if let Some(at) = patch_at {
            w.pending.buf[start + at..start + at + 8].copy_from_slice(&base_offset.to_be_bytes());
        }
        if let Some((at, bytes)) = stamp {
            w.pending.buf[start + at..start + at + 4].copy_from_slice(&bytes);
        }
        w.pending.frames.push((position, header));
        w.pending.needs_sync |= want_sync;
        w.next_offset = header.next_offset();
        w.end_len += frame_len;
        self.request_space(&mut w);
        let group = Arc::clone(&w.pending.group);
        let result = AppendResult {
            base_offset: header.base_offset,
            last_offset: header.next_offset() - 1,
        };
        Ok((w, group, result))
    }

    /// Makes `term` the partition's latest term from `start_offset` on, its file durable first (see
    /// `terms.rs`); nothing to do if it is the latest already. Called with the writer lock held, so the
    /// offset is the next batch's.
    pub(super) fn enter_term(&self, term: i32, start_offset: i64) -> Result<()> {
        if self.terms.lock().latest() == Some(term) {
            // Every append of a leader: no copy of the map.
            return Ok(());
        }
        self.update_terms(|t| t.assign(term, start_offset).map(|a| a == Assigned::New))
    }

    /// Drops the terms starting at or after `offset`, durably: the batches that began them were never
    /// written. Called with the writer lock held.
    pub(super) fn cut_terms_from(&self, offset: i64) -> Result<()> {
        self.update_terms(|t| Ok(t.truncate_from(offset)))
    }

    /// Applies `change` to a copy of the term map and, if it changed anything, makes the file durable
    /// before the map in memory takes the copy: memory never runs ahead of the disk.
    pub(super) fn update_terms(&self, change: impl FnOnce(&mut TermMap) -> Result<bool>) -> Result<()> {
        let mut terms = self.terms.lock();
        let mut next = terms.clone();
        if change(&mut next)? {
            next.store(&*self.ctx.io, &self.dir)?;
            *terms = next;
        }
        Ok(())
    }

    /// Waits until `group` is written (leading the write if nobody else is) and returns its outcome.
    pub(super) fn wait_group(
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
            // Nobody is writing and our group is not done, so it is the pending one: lead it.
            self.advance(w);
        }
    }

    /// Moves the group in flight or the pending one forward, or waits for another thread that does: with
    /// the journal, waits on (or leads) the journal round that writes them; else waits for the write in
    /// flight, or leads the pending group. The caller re-checks its condition after.
    pub(super) fn advance(&self, w: &mut MutexGuard<'_, Writer>) {
        let Some(journal) = &self.ctx.journal else {
            if w.flushing {
                self.flushed.wait(w);
            } else if !w.pending.frames.is_empty() {
                self.lead(w);
            }
            return;
        };
        if w.syncing || w.rotating || w.sync_waiting > 0 {
            // A segment fdatasync, a rotation or a sync about to run: each notifies when done, and no
            // round writes this partition meanwhile (its round may pass it by: it is kicked again after).
            self.flushed.wait(w);
            return;
        }
        if !w.flushing && !w.pending.frames.is_empty() {
            self.kick(w);
        }
        if let Some(round) = w.journal_round.filter(|_| w.flushing || w.kicked) {
            MutexGuard::unlocked(w, || journal.wait_round(round));
        }
    }

    /// Waits until no write, sync or zero-fill is in flight.
    pub(super) fn wait_idle(&self, w: &mut MutexGuard<'_, Writer>) {
        while w.flushing || w.preparing.is_some() {
            if w.flushing && !w.syncing {
                self.advance_in_flight(w);
            } else {
                self.flushed.wait(w);
            }
        }
    }

    /// Writes the pending group. Called with the lock held, no write in flight and a non-empty group.
    /// Returns without writing if the group would reach space being zero-filled: the caller loops.
    pub(super) fn lead(&self, w: &mut MutexGuard<'_, Writer>) {
        debug_assert!(!w.flushing && !w.pending.frames.is_empty());
        if w.preparing.is_some_and(|from| w.end_len > from) {
            // Rare: the writer caught up with the preparer (it writes zeros there without the lock).
            self.flushed.wait(w);
            return;
        }
        let (group, segment, pos) = self.begin_group(w);
        let result = match &w.failure {
            // Queued before the preparer's fdatasync failed: nothing more goes into the suspect file.
            Some(f @ Failure::Poisoned { .. }) => Err(f.clone()),
            _ => match MutexGuard::unlocked(w, || self.write_group(&segment, &group, pos)) {
                Ok(true) => self.confirm_sync(w).map(|()| true),
                other => other,
            },
        };
        self.finish_group(w, group, &segment, pos, result);
    }

    /// Takes the pending group for writing: from here the group is in flight (`flushing`).
    pub(super) fn begin_group(&self, w: &mut MutexGuard<'_, Writer>) -> (Pending, Arc<Segment>, u64) {
        w.flushing = true;
        // The spare's buffers were cleared when it was put aside; only its group needs a second look.
        let next = match w.spare.take() {
            Some(mut spare) => {
                spare.group = w.reusable_group(spare.group);
                spare
            }
            None => Pending::default(),
        };
        let group = mem::replace(&mut w.pending, next);
        w.avg_group_bytes = (w.avg_group_bytes * 7 + group.buf.len() as u64) / 8;
        (group, Arc::clone(&w.active), w.written.len)
    }

    /// Completes the group in flight with the outcome of its write (`Ok(true)`: and of its fdatasync, or
    /// its journal round): publishes it, or fails it and everything queued behind it.
    pub(super) fn finish_group(
        &self,
        w: &mut MutexGuard<'_, Writer>,
        group: Pending,
        segment: &Arc<Segment>,
        pos: u64,
        result: Result<bool, Failure>,
    ) {
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
                // The high watermark before the synced offset: a reader that sees the synced offset move
                // must find the frames below it readable (else it reads nothing and waits for the next).
                self.high_watermark.store(mark.next_offset, Ordering::Release);
                if synced {
                    w.synced = mark;
                    self.publish_synced(mark.next_offset);
                }
                self.hw_changed.notify(usize::MAX);
                group.group.settle(Ok(()));
            }
            Err(failure) => {
                self.write_failures.fetch_add(1, Ordering::AcqRel);
                // Everything queued behind the failed group holds offsets after it: fail it too.
                let queued = mem::take(&mut w.pending);
                queued.group.settle(Err(failure.clone()));
                group.group.settle(Err(failure.clone()));
                w.next_offset = w.written.next_offset;
                w.end_len = w.written.len;
                let write_failed = matches!(failure, Failure::Write { .. });
                self.set_failure(w, failure);
                // A term begun by a failed batch begins at the next append instead.
                if let Err(e) = self.cut_terms_from(w.next_offset) {
                    self.poison(w, format!("cutting the term map after a failed write: {e}"));
                }
                if write_failed {
                    // Remove any partial frame so that only zeros follow the last good one.
                    let prepared_end = w.prepared_end;
                    match erase_failed_write(&segment.file, pos, group.buf.len() as u64, prepared_end) {
                        Ok(kept) => w.prepared_end = kept,
                        Err(e) => self.poison(
                            w,
                            format!("erasing a failed write in {}: {e}", segment.path.display()),
                        ),
                    }
                }
            }
        }
        let mut recycled = group;
        recycled.buf.clear();
        recycled.frames.clear();
        recycled.needs_sync = false;
        w.spare = Some(recycled);
        w.flushing = false;
        w.journal_round = None;
        // Poisoned while the group was in flight (the preparer's fdatasync failed meanwhile).
        self.cut_unsynced_if_idle(w);
        self.flushed.notify_all();
    }

    /// The I/O of one group, run without the lock. Returns whether it synced.
    pub(super) fn write_group(&self, segment: &Segment, group: &Pending, pos: u64) -> Result<bool, Failure> {
        let write_failed = |e: std::io::Error| Failure::Write {
            path: segment.path.to_path_buf(),
            kind: e.kind(),
            message: e.to_string(),
        };
        let started = Instant::now();
        if !group.needs_sync {
            self.ctx
                .retry_transient(|| segment.file.write_all_at(&group.buf, pos))
                .map_err(write_failed)?;
            metrics::group_written(group.frames.len(), group.buf.len(), started.elapsed());
            return Ok(false);
        }
        // Write and fdatasync in one call (one linked submission under io_uring). Only a failed write is
        // retried (the sync did not run then); the sync's result is kept for below, never retried.
        let outcome =
            self.ctx
                .retry_transient(|| match segment.file.write_all_and_sync_at(&group.buf, pos) {
                    Ok(wrote) => Ok(Ok(wrote)),
                    Err(WriteSyncError::Write(e)) => Err(e),
                    Err(WriteSyncError::Sync(e)) => Ok(Err(e)),
                });
        let wrote = outcome.map_err(write_failed)?;
        match wrote {
            Ok(wrote) => {
                metrics::group_written(group.frames.len(), group.buf.len(), wrote);
                metrics::fsync(started.elapsed().saturating_sub(wrote));
                Ok(true)
            }
            Err(e) => {
                // The write went through; how the time split between it and the sync is unknown.
                metrics::group_written(group.frames.len(), group.buf.len(), started.elapsed());
                metrics::fsync(started.elapsed());
                metrics::error("fsync");
                warn!(topic = %self.tp.topic, partition = self.tp.partition, error = %e,
                    "fdatasync failed; partition is poisoned until reopened");
                Err(Failure::Poisoned {
                    cause: format!("fdatasync of {} failed: {e}", segment.path.display()),
                })
            }
        }
    }

    /// Whether an fdatasync of the active segment that just succeeded may be believed. The preparer
    /// syncs the same file without the lock, and the kernel reports a writeback error once per open
    /// file: if its fdatasync failed, that failure may have taken the error meant for our pages, and
    /// ours then succeeds over data the page cache dropped. So this waits out a zero-fill step in flight
    /// and fails if the partition was poisoned meanwhile (also when the preparer's sync came too late to
    /// matter: failing a durable write is safe, acknowledging a lost one is not).
    pub(super) fn confirm_sync(&self, w: &mut MutexGuard<'_, Writer>) -> Result<(), Failure> {
        // `u64::MAX` marks the next segment being prepared: another file, whose errors are its own. Only
        // the step in flight now matters: one that starts after this returned cannot hide our error.
        let step = w.prep_steps;
        while w.preparing.is_some_and(|from| from != u64::MAX) && w.prep_steps == step {
            self.flushed.wait(w);
        }
        match &w.failure {
            Some(f @ Failure::Poisoned { .. }) => Err(f.clone()),
            _ => Ok(()),
        }
    }

    pub(super) fn poison(&self, w: &mut MutexGuard<'_, Writer>, cause: String) {
        warn!(topic = %self.tp.topic, partition = self.tp.partition, %cause, "partition poisoned");
        self.set_failure(w, Failure::Poisoned { cause });
    }

    pub(super) fn set_failure(&self, w: &mut MutexGuard<'_, Writer>, failure: Failure) {
        if matches!(failure, Failure::Poisoned { .. }) {
            if !matches!(w.failure, Some(Failure::Poisoned { .. })) {
                // Once per poisoning; the requests it fails are not counted again (`request_error`).
                metrics::error("poisoned");
            }
            self.unsynced_suspect.store(true, Ordering::Release);
            w.needs_cut = true;
        }
        if matches!(failure, Failure::Poisoned { .. } | Failure::Deleted) {
            self.closed.store(true, Ordering::Release);
            self.hw_changed.notify(usize::MAX);
        }
        w.failure = Some(failure);
        self.cut_unsynced_if_idle(w);
    }

    /// Makes everything written so far durable (used by the interval policy, sealing and shutdown).
    pub fn sync(&self) -> Result<()> {
        let mut w = self.writer.lock();
        let mut waiting = false;
        let result = loop {
            if let Some(f @ (Failure::Poisoned { .. } | Failure::Deleted)) = &w.failure {
                break Err(f.to_error(&self.tp));
            }
            if w.flushing {
                // With the journal, a partition written without pause would otherwise never be idle
                // when this looks: its rounds let it go (`sync_waiting`) until this sync has run.
                if !waiting && self.ctx.journal.is_some() {
                    waiting = true;
                    w.sync_waiting += 1;
                }
                if w.syncing {
                    self.flushed.wait(&mut w);
                } else {
                    self.advance_in_flight(&mut w);
                }
                continue;
            }
            if !w.unsynced() {
                break Ok(());
            }
            break self.sync_locked(&mut w);
        };
        if waiting {
            w.sync_waiting -= 1;
            // Appenders held back by it (`advance`) look again.
            self.flushed.notify_all();
        }
        self.kick_pending(&mut w);
        result
    }

    /// With the journal: waits for the round that completes the group in flight.
    fn advance_in_flight(&self, w: &mut MutexGuard<'_, Writer>) {
        match (&self.ctx.journal, w.journal_round) {
            (Some(journal), Some(round)) => MutexGuard::unlocked(w, || journal.wait_round(round)),
            _ => self.flushed.wait(w),
        }
    }

    /// fdatasync of the active segment with no write in flight; I/O happens without the lock.
    pub(super) fn sync_locked(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        w.flushing = true;
        w.syncing = true;
        let target = w.written;
        let segment = Arc::clone(&w.active);
        let result = MutexGuard::unlocked(w, || sync_file(&segment.file));
        let confirmed = result.is_ok().then(|| self.confirm_sync(w));
        w.flushing = false;
        w.syncing = false;
        // Poisoned while the sync was in flight (the preparer's fdatasync failed meanwhile).
        self.cut_unsynced_if_idle(w);
        self.flushed.notify_all();
        match (result, confirmed) {
            (Ok(()), Some(Err(failure))) => Err(failure.to_error(&self.tp)),
            (Ok(()), _) => {
                w.synced = target;
                self.publish_synced(target.next_offset);
                w.file_dirty = false;
                Ok(())
            }
            (Err(e), _) => {
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
}

/// Undoes a group write that failed at `pos`, which may have left part of it on disk: zeros where the space
/// was prepared (so it stays prepared), and a shorter file where the write grew it; then fdatasync.
/// Returns how far the file is still prepared.
pub(super) fn erase_failed_write(
    file: &dyn WalFile,
    pos: u64,
    len: u64,
    prepared_end: u64,
) -> std::io::Result<u64> {
    let end = pos + len;
    let zero_to = end.min(prepared_end);
    let zeroed = zero_to <= pos
        || match file.zero_fill(pos, zero_to - pos) {
            Ok(()) => true,
            // Prepared space may be a hole (the preparer leaves the writer a stretch to grow into), and a
            // full disk refuses zeros there; cutting the file at `pos` needs no space, and only gives up
            // the prepared space past it.
            Err(e) if crate::error::is_storage_full(&e) => false,
            Err(e) => return Err(e),
        };
    let prepared_end = if zeroed { prepared_end } else { pos };
    if end > prepared_end {
        file.set_len(pos.max(prepared_end))?;
    }
    // Durably: a sealed segment is not synced again, and a power cut must not bring the partial frame back
    // (`rolled_back_partial_write_stays_rolled_back_after_sealing_and_a_power_cut`).
    sync_file(file)?;
    Ok(prepared_end)
}

pub(super) fn sync_file(file: &dyn WalFile) -> std::io::Result<()> {
    let started = Instant::now();
    let result = file.sync_data();
    metrics::fsync(started.elapsed());
    result
}

impl Writer {
    /// A group for the next pending batches without allocating in steady state: `last` (the group written
    /// before) if all its waiters have seen its outcome, else an idle one whose waiters have since; `last`
    /// then waits among the idle ones.
    fn reusable_group(&mut self, mut last: Arc<Group>) -> Arc<Group> {
        if reset_if_released(&mut last) {
            return last;
        }
        let fresh = match self.idle_groups.iter_mut().position(reset_if_released) {
            Some(i) => self.idle_groups.swap_remove(i),
            None => Arc::default(),
        };
        if self.idle_groups.len() < IDLE_GROUPS {
            self.idle_groups.push(last);
        }
        fresh
    }
}

/// Clears a group's outcome for reuse if nobody else holds it. Nobody clones a group that is no longer
/// pending, so a group seen released stays released.
fn reset_if_released(group: &mut Arc<Group>) -> bool {
    match Arc::get_mut(group) {
        Some(g) => {
            g.outcome = OnceLock::new();
            true
        }
        None => false,
    }
}

/// CRC32C of `data`, which is the payload from byte `from` on, continued from `crc`, with the stamp (a
/// position in the payload and the bytes written there) applied where it falls inside `data`. A stamp
/// lies wholly inside or outside each piece the caller passes (`enqueue` checks it clears the offset).
fn crc_stamped(crc: u32, data: &[u8], from: usize, stamp: Option<(usize, [u8; 4])>) -> u32 {
    match stamp {
        Some((at, bytes)) if at >= from && at + 4 <= from + data.len() => {
            let i = at - from;
            let crc = crc32c::crc32c_append(crc, &data[..i]);
            let crc = crc32c::crc32c_append(crc, &bytes);
            crc32c::crc32c_append(crc, &data[i + 4..])
        }
        _ => crc32c::crc32c_append(crc, data),
    }
}
