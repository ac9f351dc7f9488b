//! Cutting a partition's log back to an offset (`WalManager::truncate_to`): the files' part.
use super::*;
use crate::segment::index_file_name;

impl PartitionWal {
    /// Where the log cut at `offset` ends: the segment that keeps the batches below it and the length
    /// it keeps. A caller mistake (`InvalidArgument`, `OffsetOutOfRange`) if no batch starts at `offset`.
    pub(crate) fn cut_point(&self, offset: i64) -> Result<(Arc<Segment>, u64)> {
        let high_watermark = self.high_watermark();
        let segments = Arc::clone(&self.segments.read());
        let log_start_offset = self.log_start_offset();
        if offset < log_start_offset || offset > high_watermark {
            return Err(Error::OffsetOutOfRange {
                tp: self.tp.clone(),
                offset,
                log_start_offset,
                high_watermark,
            });
        }
        let at = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let segment = Arc::clone(&segments[at]);
        match segment
            .batch_position(offset, self.ctx.config.max_batch_bytes)
            .map_err(|e| self.deleted_or(e))?
        {
            Some(pos) => Ok((segment, pos)),
            None => Err(Error::InvalidArgument(format!(
                "no batch of {} starts at offset {offset}: a log is cut only between batches",
                self.tp
            ))),
        }
    }

    /// Serialises with retention passes (held across a truncation).
    pub(crate) fn retention_guard(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.retention.lock()
    }

    /// After the close that begins a truncation: waits for a rotation in flight (it could still create a
    /// segment), and stops readers of this handle at `offset`, so that nothing past the cut is served.
    pub(crate) fn hide_from(&self, offset: i64) {
        let mut w = self.writer.lock();
        while w.rotating {
            self.flushed.wait(&mut w);
        }
        self.high_watermark.fetch_min(offset, Ordering::AcqRel);
    }

    /// Removes every batch from `offset` on from disk, durably, newest first: the segments after the one
    /// holding `offset` (each removal synced in the directory before the next, so a crash leaves a
    /// prefix of the log, never a hole), then that segment's saved index (recovery rebuilds it) and
    /// its tail. The partition must be closed (no write, no preallocation in flight); this handle
    /// is not updated: load the partition from disk afterwards.
    pub(crate) fn cut_files_at(&self, offset: i64) -> Result<()> {
        debug_assert!(self.is_closed());
        let (keep, len) = self.cut_point(offset)?;
        let segments = Arc::clone(&self.segments.read());
        let io = &*self.ctx.io;
        let sync_dir = || {
            io.sync_dir(&self.dir)
                .map_err(|e| Error::io("syncing directory", &self.dir, e))
        };
        let remove = |path: &Path| match io.remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", path, e)),
            _ => Ok(()),
        };
        for doomed in segments
            .iter()
            .rev()
            .take_while(|s| s.base_offset > keep.base_offset)
        {
            // The index first: a segment without one is scanned, an index without its segment is stray.
            remove(&self.dir.join(index_file_name(doomed.base_offset)))?;
            remove(&doomed.path)?;
            sync_dir()?;
        }
        // The index first: a saved index covering more than its segment holds would be stale.
        remove(&self.dir.join(index_file_name(keep.base_offset)))?;
        sync_dir()?;
        // Always set and synced, even at the length shown: a prepared tail of zeros goes too, and the
        // length is made durable before anything is appended after it.
        keep.file
            .set_len(len)
            .and_then(|()| keep.file.sync_data())
            .map_err(|e| Error::io("cutting back", &keep.path, e))?;
        info!(topic = %self.tp.topic, partition = self.tp.partition, offset,
            segments_removed = segments.iter().filter(|s| s.base_offset > keep.base_offset).count(),
            "WAL partition truncated");
        Ok(())
    }
}
