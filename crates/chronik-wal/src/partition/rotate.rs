//! Sealing the active segment and starting the next; index files and checkpoint entries.
use super::*;

impl PartitionWal {
    /// When this partition's active segment is sealed.
    pub fn rotation(&self) -> RotationConfig {
        self.writer.lock().rotation
    }

    /// Seals this partition's segments by `rotation` instead of `WalConfig::rotation` (a topic's own
    /// segment size and age), from the next append on. In memory only: kept by
    /// [`WalManager::reopen_partition`](crate::WalManager::reopen_partition), set again by the owner after
    /// a restart. Prepared space past a smaller size is cut when the segment is sealed.
    pub fn set_rotation(&self, rotation: RotationConfig) -> Result<()> {
        rotation.validate()?;
        self.writer.lock().rotation = rotation;
        Ok(())
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
            if w.rotating {
                self.flushed.wait(&mut w);
            } else if w.flushing || w.kicked || !w.pending.frames.is_empty() {
                self.advance(&mut w);
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
    pub(super) fn rotate_locked(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        // The old segment's final sync runs without the lock: appenders must not queue frames meant for
        // it meanwhile, or they would be written into the new one.
        w.rotating = true;
        let result = self.seal_and_start_next(w);
        w.rotating = false;
        self.flushed.notify_all();
        result
    }

    pub(super) fn seal_and_start_next(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        if w.unsynced() {
            self.sync_locked(w)?;
        }
        while w.preparing.is_some() {
            self.flushed.wait(w);
        }
        // The step waited for may have failed its fdatasync: nothing is sealed on top of that.
        if let Some(f @ Failure::Poisoned { .. }) = &w.failure {
            return Err(f.to_error(&self.tp));
        }
        let old = Arc::clone(&w.active);
        self.trim_sealed(w, &old)?;
        self.persist_index(&old, None);
        let (files, interval) = (&self.ctx.files, self.ctx.config.index_interval_bytes);
        let (new, prepared_end) = match w.next_segment.take() {
            Some(next) => (
                Segment::install(files, &self.dir, w.next_offset, interval, next.file),
                next.len,
            ),
            None => (
                Segment::create(files, &self.dir, w.next_offset, interval),
                SEGMENT_HEADER_LEN as u64,
            ),
        };
        let new = match new {
            Ok(segment) => Arc::new(segment),
            Err(e) => {
                metrics::error(e.kind_label());
                // The new file may still come back after a power cut, leaving the old segment sealed:
                // zeros written past its data from now on would then be damage in a sealed segment. No
                // more preallocation in it until a rotation succeeds.
                w.rotation_failed = true;
                return Err(e);
            }
        };
        w.rotation_failed = false;
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
        self.publish_synced(start.next_offset);
        w.prepared_end = prepared_end.max(start.len);
        metrics::segments("sealed", 1.0);
        info!(topic = %self.tp.topic, partition = self.tp.partition, segment_id = start.next_offset,
            sealed_segment_id = old.base_offset, sealed_bytes = old.published_len(), "WAL segment rotated");
        Ok(())
    }

    /// Writes a segment's index file; `limit` restricts it to a durable prefix. Best effort: an index is a
    /// cache that recovery rebuilds, so a failure is logged and counted, not returned.
    pub(super) fn persist_index(&self, segment: &Segment, limit: Option<Mark>) {
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
    /// that recovery can start scanning there. A partition whose durable point has not moved since the
    /// last checkpoint has its index file already, and an empty segment needs none (there is nothing to
    /// scan): rewriting it (a file, two syncs) for every idle partition made a checkpoint cost
    /// O(partitions) syncs.
    pub(crate) fn checkpoint_entry(&self) -> Option<CheckpointEntry> {
        let (segment, synced) = {
            let w = self.writer.lock();
            match &w.failure {
                None | Some(Failure::Write { .. }) => {}
                // Nothing new can be vouched for; the last claim still holds. A deleted partition has left
                // the manager before it is closed, so a closed one asked here is one whose reopen failed:
                // its files are still the partition's.
                Some(Failure::Poisoned { .. } | Failure::Corrupt { .. } | Failure::Deleted) => {
                    return self.checkpoint_claim()
                }
            }
            (Arc::clone(&w.active), w.synced)
        };
        let unmoved = self
            .checkpoint_claim
            .lock()
            .is_some_and(|c| c.segment_base == segment.base_offset && c.position == synced.len);
        if !unmoved && synced.len > SEGMENT_HEADER_LEN as u64 {
            self.persist_index(&segment, Some(synced));
        }
        Some(CheckpointEntry {
            tp: self.tp.clone(),
            segment_base: segment.base_offset,
            position: synced.len,
            next_offset: synced.next_offset,
            max_timestamp: synced.max_timestamp,
        })
    }

    /// Called once a checkpoint holding `entry` is durable (and by recovery with the entry it used).
    pub(crate) fn checkpoint_written(&self, entry: &CheckpointEntry) {
        self.checkpointed_segment
            .fetch_max(entry.segment_base, Ordering::AcqRel);
        *self.checkpoint_claim.lock() = Some(Claim {
            segment_base: entry.segment_base,
            position: entry.position,
            next_offset: entry.next_offset,
            max_timestamp: entry.max_timestamp,
        });
    }

    /// From now on no checkpoint carries an entry for this partition from this handle (a truncation is
    /// about to make its files shorter than the entry says).
    pub(crate) fn forget_checkpoint_claim(&self) {
        *self.checkpoint_claim.lock() = None;
    }

    /// The last checkpoint entry known durable for this partition (see `checkpoint_claim`).
    pub(crate) fn checkpoint_claim(&self) -> Option<CheckpointEntry> {
        self.checkpoint_claim.lock().map(|c| CheckpointEntry {
            tp: self.tp.clone(),
            segment_base: c.segment_base,
            position: c.position,
            next_offset: c.next_offset,
            max_timestamp: c.max_timestamp,
        })
    }

    /// True if something was written but not yet synced.
    pub(crate) fn has_unsynced(&self) -> bool {
        let w = self.writer.lock();
        w.unsynced()
    }
}
