//! Preallocation: zero-filled space kept ahead of the writer, and the next segment prepared in advance
//! (see `WalConfig::preallocate_bytes`); the work runs on the manager's preparer thread (`prealloc.rs`).
use super::*;

/// Bytes zero-filled (and synced) per preparer step.
const PREP_STEP: u64 = 256 << 10;

/// Group commits at least this large (on average) grow the file instead of asking for prepared space.
/// Why: prepared space saves each fdatasync a fixed cost (persisting the new size and allocation) but
/// costs a second write of every byte. Measured here (durable appends while zeros are written ahead at the
/// same pace), zero-filling wins clearly at 1-4 KiB per fdatasync, ties in throughput from 16 KiB on, and
/// from there only adds p99 latency (an append's fdatasync waits for a step of zeros).
pub(super) const LARGE_GROUP_BYTES: u64 = 32 << 10;

impl PartitionWal {
    /// How far the active segment's file is known to extend in data or prepared zeros (see
    /// `WalConfig::preallocate_bytes`).
    pub fn prepared_len(&self) -> u64 {
        self.writer.lock().prepared_end
    }

    /// Whether the preparer keeps space ahead of this partition's writes now: `preallocate_bytes` is set and
    /// its group commits are small enough to gain from it (see [`LARGE_GROUP_BYTES`]).
    pub fn preallocating(&self) -> bool {
        self.ctx.config.preallocate_bytes > 0 && self.writer.lock().avg_group_bytes < LARGE_GROUP_BYTES
    }

    /// Waits until the active segment has at least `len` bytes of data or prepared zeros, or `timeout`
    /// passes; returns whether it got there. For tests: appends never need to wait for this.
    #[cfg(feature = "testkit")]
    pub fn wait_prepared(&self, len: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut w = self.writer.lock();
        while w.prepared_end < len {
            if self.flushed.wait_until(&mut w, deadline).timed_out() {
                return w.prepared_end >= len;
            }
        }
        true
    }

    /// Cuts the preallocated zeros off a segment being sealed, durably, so that a sealed segment ends at its
    /// last frame (recovery treats a zero tail as clean only in the last segment).
    pub(super) fn trim_sealed(&self, w: &mut MutexGuard<'_, Writer>, segment: &Segment) -> Result<()> {
        let data_end = w.written.len;
        let size = segment
            .file
            .size()
            .map_err(|e| Error::io("reading length of", &segment.path, e))?;
        if size <= data_end {
            return Ok(());
        }
        // Retention ages a segment without record timestamps by its modification time, which this
        // trim would otherwise move to now.
        let modified = segment.file.modified();
        segment
            .file
            .set_len(data_end)
            .map_err(|e| Error::io("trimming preallocated space of", &segment.path, e))?;
        if let Err(e) = modified.and_then(|t| segment.file.set_modified(t)) {
            warn!(path = %segment.path.display(), error = %e, "could not keep the modification time of a sealed segment");
        }
        if let Err(e) = segment.file.sync_data() {
            metrics::error("fsync");
            let cause = format!("fdatasync of {} failed: {e}", segment.path.display());
            self.poison(w, cause.clone());
            return Err(Error::Poisoned {
                tp: self.tp.clone(),
                cause,
            });
        }
        w.prepared_end = data_end;
        Ok(())
    }

    /// Queues this partition for the preparer when less than half of `preallocate_bytes` is prepared
    /// ahead of the queued data. Only bookkeeping: the I/O is in [`PartitionWal::prepare_ahead`].
    pub(super) fn request_space(&self, w: &mut Writer) {
        let chunk = self.ctx.config.preallocate_bytes;
        if w.appends < self.ctx.config.preallocate_after_appends {
            w.appends += 1;
            return;
        }
        if chunk == 0
            || w.prep_requested
            || w.preparing.is_some()
            || w.rotation_failed
            || w.avg_group_bytes >= LARGE_GROUP_BYTES
        {
            return;
        }
        let limit = w.rotation.max_segment_size;
        let next_wanted = w.prepared_end >= limit && w.next_segment.is_none();
        if next_wanted || w.prepared_end < (w.end_len + chunk / 2).min(limit) {
            w.prep_requested = true;
            self.ctx.prealloc.request(self.tp.clone());
        }
    }

    /// Run by the preparer thread: zero-fills and syncs up to `preallocate_bytes` past everything written
    /// or queued in the active segment, without the writer lock, then publishes it as prepared.
    pub(crate) fn prepare_ahead(&self) {
        let cfg = &self.ctx.config;
        let (segment, job, limit) = {
            let mut w = self.writer.lock();
            w.prep_requested = false;
            if w.failure.is_some() || w.rotating || w.preparing.is_some() || w.rotation_failed {
                return;
            }
            // Leave the writer a stretch to grow into meanwhile (as after a rotation, when nothing is
            // prepared): a group that reached a range being filled would have to wait for it.
            let limit = w.rotation.max_segment_size;
            let to = (w.end_len + cfg.preallocate_bytes).min(limit);
            let from = w.prepared_end.max(w.end_len + to.saturating_sub(w.end_len) / 4);
            // One step at a time, each synced before the next: the log's own fdatasyncs flush every dirty
            // page of the file, so zeros written ahead of them must stay few (the preparer re-queues itself
            // until enough is prepared).
            let to = to.min(from.saturating_add(PREP_STEP));
            let job = if to > from {
                w.preparing = Some(from);
                w.prep_steps += 1;
                PrepJob::Range { from, to }
            } else if w.prepared_end >= limit && w.next_segment.is_none() {
                // No group ever reaches this mark; a rotation waits for the file.
                w.preparing = Some(u64::MAX);
                PrepJob::NextSegment
            } else {
                return;
            };
            (Arc::clone(&w.active), job, limit)
        };
        let (from, to) = match job {
            PrepJob::Range { from, to } => (from, to),
            PrepJob::NextSegment => return self.prepare_next_segment(limit),
        };
        let filled = self
            .ctx
            .retry_transient(|| segment.file.zero_fill(from, to - from));
        // Not timed as a log fsync: like creating a segment, it is set-up work no append waits for.
        let synced = match filled {
            Ok(()) => segment.file.sync_data(),
            Err(_) => Ok(()),
        };
        let mut w = self.writer.lock();
        w.preparing = None;
        match (filled, synced) {
            (Ok(()), Ok(())) => {
                if Arc::ptr_eq(&w.active, &segment) {
                    w.prepared_end = w.prepared_end.max(to);
                }
                metrics::preallocated(to - from);
                // The writer may have moved on meanwhile, or the next segment's file be due.
                self.request_space(&mut w);
            }
            (Err(e), _) => {
                // Not fatal: whatever was written is zeros, and appends grow the file instead.
                metrics::error("preallocate");
                warn!(topic = %self.tp.topic, partition = self.tp.partition, error = %e,
                    "could not preallocate segment space");
            }
            (Ok(()), Err(e)) => {
                // The failed fdatasync may have consumed an error meant for the appends' own data.
                metrics::error("fsync");
                self.poison(
                    &mut w,
                    format!("fdatasync of {} failed: {e}", segment.path.display()),
                );
            }
        }
        self.flushed.notify_all();
    }

    /// Creates the next segment's file under a temporary name and zero-fills its first
    /// `preallocate_bytes`, so that a rotation only has to write a header and rename it.
    pub(super) fn prepare_next_segment(&self, max_segment_size: u64) {
        let cfg = &self.ctx.config;
        let io = &*self.ctx.io;
        let path = self.dir.join(NEXT_SEGMENT_FILE);
        let len = cfg.preallocate_bytes.min(max_segment_size);
        let created = (|| {
            if io.exists(&path)? {
                io.remove_file(&path)?;
            }
            let file = self.ctx.files.open(&path, OpenMode::CreateNew)?;
            self.ctx.retry_transient(|| file.zero_fill(0, len))?;
            // Its own file: a failure here cannot hide one of the log's write errors.
            file.sync_data()?;
            Ok::<_, std::io::Error>(file)
        })();
        let mut w = self.writer.lock();
        w.preparing = None;
        match created {
            Ok(file) if w.failure.is_none() => {
                metrics::preallocated(len);
                w.next_segment = Some(PreparedFile { file, len });
            }
            // Failed or deleted meanwhile: the file is left for recovery (or the deletion) to remove.
            Ok(_) => {}
            Err(e) => {
                metrics::error("preallocate");
                warn!(topic = %self.tp.topic, partition = self.tp.partition, error = %e,
                    "could not prepare the next segment file");
            }
        }
        self.flushed.notify_all();
    }

    /// Waits until the next segment's file is prepared (see [`PartitionWal::prepare_ahead`]), or `timeout`
    /// passes; returns whether it is. For tests: a rotation without one creates the file itself.
    #[cfg(feature = "testkit")]
    pub fn wait_next_segment_prepared(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut w = self.writer.lock();
        while w.next_segment.is_none() {
            if self.flushed.wait_until(&mut w, deadline).timed_out() {
                return w.next_segment.is_some();
            }
        }
        true
    }
}
